// Mixed precision on the GPU (ops/autocast.h): the bf16 casts of the compute ops against the CPU on the
// same rounded inputs, bf16 vs f32 short runs of every objective, reverse-over-forward under the
// policy, which attention kernels a DiT and a U-Net reach, and the trainer's "precision": "bf16".
// Without a device every case returns after one visible skip message.
#include <doctest/doctest.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "ops/fused_attention.h"
#include "tests/amp_harness.h"
#include "tests/test_util.h"
#include "train/trainer.h"
#ifdef DF_WITH_CUDA
#include "cuda/attention.h"
#include "cuda/cuda.h"
#endif

using namespace df;
using namespace df::test;
using json = nlohmann::json;

TEST_CASE("amp_cuda: mixed precision on the GPU present or visibly skipped") {
  if (!have_cuda()) {
    MESSAGE("skipped: no CUDA device (all amp_cuda tests are skipped in this run)");
    return;
  }
  Autocast amp(DType::BF16);
  Tensor x = ones({2, 4}, DType::F32, Device::CUDA);
  CHECK(linear(x, ones({3, 4}, DType::F32, Device::CUDA)).dtype() == DType::BF16);
}

#ifdef DF_WITH_CUDA

namespace {

Tensor dev_randn(const Shape& s, uint64_t seed) { return randn(s, seed, DType::F32, Device::CUDA); }
// The CPU f32 copy of a tensor rounded through bf16: what the bf16 kernels actually read.
Tensor bf16_rounded_cpu(const Tensor& x) { return cast(cast(x.detach().to(Device::CPU), DType::BF16), DType::F32); }

// max |a - b| / max |b|, both read on the host as f64.
double rel_err(const Tensor& a, const Tensor& b) {
  auto x = a.to_vector(), y = b.to_vector();
  REQUIRE(x.size() == y.size());
  double num = 0, den = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    num = std::max(num, std::fabs(x[i] - y[i]));
    den = std::max(den, std::fabs(y[i]));
  }
  return num / std::max(den, 1e-12);
}

// Norm of the difference over the norm of the reference, over a list of tensors.
double rel_norm_err(const Tensors& a, const Tensors& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!b[i].defined()) continue;
    REQUIRE(a[i].defined());
    auto x = a[i].to_vector(), y = b[i].to_vector();
    for (size_t j = 0; j < x.size(); ++j) {
      num += (x[j] - y[j]) * (x[j] - y[j]);
      den += y[j] * y[j];
    }
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

// Models on 16x16x3 images whose attention has head dim 64 (the wgmma kernels' case).
json cuda_dit() {
  return json::parse(R"({"arch": "dit", "patch": 2, "width": 128, "depth": 2, "heads": 2, "freq_dim": 64,
                         "zero_init": false})");
}
json cuda_unet() {
  return json::parse(R"({"name": "UNet-tiny", "base_channels": 64, "norm_groups": 8, "heads": 2,
                         "attn_resolutions": [8], "zero_init": false})");
}
// Attention layers of the two models above: DiT depth 2; U-Net: one down and two up blocks at 8x8, mid.
int attention_layers(const json& m) { return m.contains("arch") ? 2 : 4; }

std::shared_ptr<ImageDenoiser> build_cuda(const json& cfg) {
  Generator g(2);
  auto m = make_model(model_config_from_json(cfg, 3, 16), g, DType::F32);
  m->to(Device::CUDA);
  return m;
}

}  // namespace

TEST_CASE("amp_cuda: autocast ops and mixed-dtype ops on the device match the CPU on bf16-rounded inputs") {
  if (!have_cuda()) return;
  set_allow_tf32(false);
  Tensor x = dev_randn({64, 96}, 1), w = dev_randn({48, 96}, 2), b = dev_randn({48}, 3), r = dev_randn({64, 48}, 4);
  Tensor xr = bf16_rounded_cpu(x), wr = bf16_rounded_cpu(w), br = bf16_rounded_cpu(b), rr = bf16_rounded_cpu(r);
  SUBCASE("linear forward and gradients") {
    Tensor xg = x.detach().requires_grad_(), wg = w.detach().requires_grad_();
    Tensor y;
    {
      Autocast amp(DType::BF16);
      y = linear(xg, wg, b);
      CHECK(y.dtype() == DType::BF16);
      sum(mul(y, r)).backward();   // bf16 * f32 promotes to f32: the cotangent of y is r rounded to bf16
    }
    CHECK(rel_err(y.to(DType::F32), linear(xr, wr, br)) < 1e-2);
    REQUIRE(xg.grad().defined());
    CHECK(xg.grad().dtype() == DType::F32);   // back up to the f32 master through cast's VJP
    CHECK(wg.grad().dtype() == DType::F32);
    CHECK(rel_err(xg.grad(), matmul(rr, wr)) < 1e-2);
    CHECK(rel_err(wg.grad(), matmul(transpose(rr, 0, 1), xr)) < 1e-2);
  }
  SUBCASE("conv2d") {
    Tensor xi = dev_randn({2, 8, 9, 9}, 5), wi = dev_randn({16, 8, 3, 3}, 6), bi = dev_randn({16}, 7);
    Tensor y;
    {
      Autocast amp(DType::BF16);
      y = conv2d(xi, wi, bi, 1, 1);
    }
    CHECK(y.dtype() == DType::BF16);
    CHECK(rel_err(y.to(DType::F32), conv2d(bf16_rounded_cpu(xi), bf16_rounded_cpu(wi), bf16_rounded_cpu(bi), 1, 1)) < 1e-2);
  }
  SUBCASE("attention (the bf16 fused kernels)") {
    Tensor q = dev_randn({2, 2, 80, 64}, 8), k = dev_randn({2, 2, 80, 64}, 9), v = dev_randn({2, 2, 80, 64}, 10);
    Tensor o;
    {
      Autocast amp(DType::BF16);
      reset_attention_path_counts();
      o = attention(q, k, v);
    }
    CHECK(o.dtype() == DType::BF16);
    CHECK(attention_path_counts().forward == 1);
    CHECK(attention_path_counts().composite == 0);
    Tensor ref = attention_reference(bf16_rounded_cpu(q), bf16_rounded_cpu(k), bf16_rounded_cpu(v));
    CHECK(rel_err(o.to(DType::F32), ref) < 2e-2);
  }
  SUBCASE("normalisation of bf16 inputs runs in f32") {
    Tensor h = cast(dev_randn({16, 64}, 11), DType::BF16);
    Autocast amp(DType::BF16);
    Tensor y = layer_norm(h, 1);
    CHECK(y.dtype() == DType::F32);
    CHECK(rel_err(y, layer_norm(cast(h.to(Device::CPU), DType::F32), 1)) < 1e-5);
    Tensor g = group_norm(reshape(h, {4, 8, 32}), 4);
    CHECK(g.dtype() == DType::F32);
    CHECK(rel_err(g, group_norm(reshape(cast(h.to(Device::CPU), DType::F32), {4, 8, 32}), 4)) < 1e-5);
    CHECK(softmax(h).dtype() == DType::F32);
  }
  SUBCASE("mixed bf16 / f32 elementwise ops promote to f32 exactly as on the CPU") {
    Tensor a = cast(dev_randn({33, 7}, 12), DType::BF16), c = dev_randn({7}, 13);
    Tensor ac = a.to(Device::CPU), cc = c.to(Device::CPU);
    for (auto f : {+[](const Tensor& p, const Tensor& q) { return add(p, q); },
                   +[](const Tensor& p, const Tensor& q) { return mul(p, q); },
                   +[](const Tensor& p, const Tensor& q) { return sub(q, p); }}) {
      Tensor y = f(a, c);
      CHECK(y.dtype() == DType::F32);
      CHECK(rel_err(y, f(cast(ac, DType::F32), cc)) == 0);
    }
  }
}

// bf16 vs f32 (TF32 off) from the same seed, model, batch and noise: every step's loss within 5% of
// the f32 loss (relative, floor 1e-3). bf16 rounds each matmul input to 8 significant bits (0.4%);
// through a few layers and four Adam steps the losses were expected to differ by about 1%.
TEST_CASE("amp_cuda: bf16 short runs of every objective stay within 5% of f32") {
  if (!have_cuda()) return;
  set_allow_tf32(false);
  std::string dir = temp_dir("amp_cuda");
  struct Case {
    const char* objective;
    json model;
  };
  for (const Case& k : {Case{"trigflow", cuda_unet()}, Case{"edm", cuda_unet()}, Case{"sct", cuda_unet()},
                        Case{"scd", cuda_unet()}, Case{"rcm", cuda_unet()}, Case{"trigflow", cuda_dit()},
                        Case{"edm", cuda_dit()}, Case{"sct", cuda_dit()}, Case{"scd", cuda_dit()},
                        Case{"rcm", cuda_dit()}}) {
    const std::string name = k.objective, model = k.model.dump();
    CAPTURE(name);
    CAPTURE(model);
    AmpRun r;
    r.objective = k.objective;
    r.model = k.model;
    r.device = Device::CUDA;
    r.master = DType::F32;
    r.channels = 3;
    r.batch = 8;
    r.steps = 4;
    r.dir = dir;
    std::vector<double> f32 = amp_losses(r);
    r.precision = "bf16";
    reset_attention_path_counts();
    std::vector<double> bf16 = amp_losses(r);
    const AttentionPathCounts a = attention_path_counts();
    double d = max_rel_diff(bf16, f32);
    MESSAGE("amp_cuda ", name, (k.model.contains("arch") ? " DiT" : " U-Net"), ": f32 losses ", f32[0], " ",
            f32[1], " ", f32[2], " ", f32[3], "; bf16 ", bf16[0], " ", bf16[1], " ", bf16[2], " ", bf16[3],
            "; max relative difference ", d);
    for (double l : bf16) CHECK(std::isfinite(l));
    CHECK(d < 0.05);
    CHECK(d > 0);                 // bf16 really ran
    CHECK(a.composite == 0);      // every attention call took a fused kernel
    CHECK(a.forward + a.jvp > 0);
  }
}

TEST_CASE("amp_cuda: under bf16 the DiT and U-Net attention reaches the fused kernels (wgmma on sm_90)") {
  if (!have_cuda()) return;
  const bool wgmma = attn::wgmma_available() && !(std::getenv("DF_ATTN_WGMMA") && std::string(std::getenv("DF_ATTN_WGMMA")) == "0");
  if (!wgmma) MESSAGE("wgmma: not available here (not sm_90 or DF_ATTN_WGMMA=0): checking the fused kernels only");
  for (const json& cfg : {cuda_dit(), cuda_unet()}) {
    CAPTURE(cfg.dump());
    const int L = attention_layers(cfg);
    auto model = build_cuda(cfg);
    Tensor x = dev_randn({4, 3, 16, 16}, 1), c = rand({4}, 2, DType::F32, Device::CUDA);
    {
      // Diffusion step: forward (lse saved) and backward.
      Autocast amp(DType::BF16);
      reset_attention_path_counts();
      sum(model->forward(x, c)).backward();
      AttentionPathCounts a = attention_path_counts();
      CHECK(a.forward == L);
      CHECK(a.backward == L);
      CHECK(a.jvp == 0);
      CHECK(a.composite == 0);
      if (wgmma) {
        CHECK(a.forward_wgmma == L);
        CHECK(a.backward_wgmma == L);
      }
    }
    {
      // sCT step: one forward carrying tangents (non-differentiable level, primal on the tape), then
      // backward of the primal: the one-pass JVP kernel replaces the forward kernel.
      Autocast amp(DType::BF16);
      reset_attention_path_counts();
      Tensor y;
      {
        DualLevel level(false);
        Tensor out = model->forward(make_dual(x, dev_randn({4, 3, 16, 16}, 3)), make_dual(c, ones_like(c)));
        auto [p, t] = unpack_dual(out);
        REQUIRE(t.defined());
        CHECK(t.dtype() == p.dtype());
        y = p;
      }
      sum(y).backward();
      AttentionPathCounts a = attention_path_counts();
      CHECK(a.jvp == L);
      CHECK(a.forward == 0);
      CHECK(a.backward == L);
      CHECK(a.composite == 0);
      if (wgmma) {
        CHECK(a.jvp_wgmma == L);
        CHECK(a.backward_wgmma == L);
      }
    }
    {
      // Without the policy the f32 model runs the f32 (SIMT) kernels: the policy is what selects bf16.
      reset_attention_path_counts();
      NoGrad ng;
      model->forward(x, c);
      CHECK(attention_path_counts().forward == L);
      CHECK(attention_path_counts().forward_wgmma == 0);
    }
  }
}

// d/dtheta ||J_x F v||^2 with differentiable tangents (the reverse-over-forward of the sCM gradient
// through a JVP): the attention JVP kernel runs as the JVP rule, and the gradient of its tangent goes
// through the composite in bf16. Tolerance: 10% of the gradient's norm (a dropped or wrong term of the
// rule is an O(1) error; bf16 rounding through two blocks, their JVP and its gradient is a few %).
TEST_CASE("amp_cuda: reverse-over-forward under bf16 matches f32") {
  if (!have_cuda()) return;
  set_allow_tf32(false);
  auto model = build_cuda(cuda_dit());
  Tensor x = dev_randn({4, 3, 16, 16}, 1), c = rand({4}, 2, DType::F32, Device::CUDA), v = dev_randn({4, 3, 16, 16}, 3);
  auto run = [&](bool bf16) {
    model->zero_grad();
    Autocast amp(DType::BF16, DType::F32, bf16);
    DualLevel level;
    Tensor out = model->forward(make_dual(x, v), c);
    auto [p, t] = unpack_dual(out);
    REQUIRE(t.defined());
    CHECK(t.dtype() == (bf16 ? DType::BF16 : DType::F32));
    sum(square(cast(t, DType::F32))).backward();
    Tensors gs;
    for (auto& q : model->parameters()) {
      if (q.grad().defined()) CHECK(q.grad().dtype() == DType::F32);
      gs.push_back(q.grad());
    }
    return gs;
  };
  Tensors f32 = run(false), bf16 = run(true);
  double e = rel_norm_err(bf16, f32);
  MESSAGE("amp_cuda reverse-over-forward: relative gradient error bf16 vs f32 ", e);
  CHECK(e < 0.1);
  CHECK(e > 0);
}

TEST_CASE("amp_cuda: the trainer with \"precision\": \"bf16\" trains, keeps f32 weights and tracks the f32 loss") {
  if (!have_cuda()) return;
  std::string d = fmnist_dir();
  if (!std::filesystem::exists(d + "/train-images-idx3-ubyte.gz") && !std::filesystem::exists(d + "/train-images-idx3-ubyte")) {
    MESSAGE("skipped: Fashion-MNIST not found in " << d << " (set DF_FASHION_MNIST_DIR)");
    return;
  }
  std::string dir = temp_dir("amp_trainer");
  auto run = [&](const std::string& precision) {
    json j = {{"model", cuda_unet()},
              {"objective", {{"name", "sct"}, {"sample_steps", 1}}},
              {"data", {{"name", "fashion_mnist"}, {"batch", 8}, {"subset", 64}}},
              {"schedule", {{"steps", 3}, {"log_every", 1}, {"sample_n", 4}}},
              {"precision", precision},
              {"device", "cuda"},
              {"seed", 5}};
    if (std::getenv("DF_FASHION_MNIST_DIR")) j["data"]["path"] = d;
    TrainOptions o;
    o.out_dir = dir + "/" + precision;
    o.verbose = false;
    Trainer t(parse_config(j), o);
    t.train();
    std::ifstream m(o.out_dir + "/metrics.jsonl");
    std::vector<double> losses;
    std::string line;
    while (std::getline(m, line)) losses.push_back(json::parse(line)["loss"].get<double>());
    Checkpoint ck = load_safetensors(o.out_dir + "/checkpoint.safetensors");
    for (auto& [n, v] : ck.tensors) CHECK_MESSAGE(v.dtype() != DType::BF16, n);
    return losses;
  };
  std::vector<double> f32 = run("f32"), bf16 = run("bf16");
  REQUIRE(bf16.size() == 3);
  MESSAGE("amp_cuda trainer sCT: f32 losses ", f32[0], " ", f32[1], " ", f32[2], "; bf16 ", bf16[0], " ", bf16[1], " ", bf16[2]);
  for (double l : bf16) CHECK(std::isfinite(l));
  CHECK(max_rel_diff(bf16, f32) < 0.05);
  std::filesystem::remove_all(dir);
}

#endif
