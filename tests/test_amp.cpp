// Mixed precision on the CPU (ops/autocast.h). The CPU kernels have no bf16, so the policy's logic is
// tested one level up: f64 master weights with Autocast(F32, F64) (compute ops in f32, normalisation
// and losses in f64) against plain f64, plus the clear errors for bf16 on the CPU.
#include <doctest/doctest.h>

#include <cmath>

#include "tests/amp_harness.h"
#include "tests/test_util.h"

using namespace df;
using namespace df::test;
using json = nlohmann::json;

namespace {

Tensor rnd(const Shape& s, uint64_t seed, DType t = DType::F64) { return randn(s, seed, t); }

double max_abs_diff(const Tensor& a, const Tensor& b) {
  auto x = a.to_vector(), y = b.to_vector();
  REQUIRE(x.size() == y.size());
  double m = 0;
  for (size_t i = 0; i < x.size(); ++i) m = std::max(m, std::fabs(x[i] - y[i]));
  return m;
}

double max_abs(const Tensor& a) {
  double m = 0;
  for (double v : a.to_vector()) m = std::max(m, std::fabs(v));
  return m;
}

// Small models on 16x16 single-channel images, every layer live (no zero init).
json small_dit() {
  return json::parse(R"({"arch": "dit", "patch": 4, "width": 32, "depth": 1, "heads": 2, "freq_dim": 16,
                         "zero_init": false})");
}
json small_unet() {
  return json::parse(R"({"name": "UNet-tiny", "base_channels": 16, "norm_groups": 4, "attn_resolutions": [8],
                         "zero_init": false})");
}

std::shared_ptr<ImageDenoiser> build(const json& cfg, uint64_t seed = 2) {
  Generator g(seed);
  return make_model(model_config_from_json(cfg, 1, 16), g, DType::F64);
}

}  // namespace

TEST_CASE("amp: compute ops go down, normalisation and losses go up, everything else keeps its dtype") {
  Tensor x = rnd({2, 3, 4, 4}, 1), w = rnd({5, 3, 3, 3}, 2), b = rnd({5}, 3);
  Tensor m = rnd({6, 8}, 4), wl = rnd({4, 8}, 5), bl = rnd({4}, 6);
  Tensor q = rnd({1, 2, 5, 4}, 7), f32 = rnd({6, 8}, 8, DType::F32);
  {
    Autocast amp(DType::F32, DType::F64);
    CHECK(autocast_policy().enabled);
    CHECK(linear(m, wl, bl).dtype() == DType::F32);
    CHECK(matmul(m, transpose(wl, 0, 1)).dtype() == DType::F32);
    CHECK(conv2d(x, w, b, 1, 1).dtype() == DType::F32);
    CHECK(attention(q, q, q).dtype() == DType::F32);
    CHECK(attention_reference(q, q, q).dtype() == DType::F32);
    CHECK(layer_norm(f32, 1).dtype() == DType::F64);
    CHECK(rms_norm(f32, 1).dtype() == DType::F64);
    CHECK(softmax(f32).dtype() == DType::F64);
    CHECK(log_softmax(f32).dtype() == DType::F64);
    CHECK(group_norm(reshape(f32, {2, 4, 6}), 2).dtype() == DType::F64);
    CHECK(pixel_norm(f32).dtype() == DType::F64);
    CHECK(mse_loss(f32, f32).dtype() == DType::F64);
    CHECK(pseudo_huber_loss(f32, f32, 0.1).dtype() == DType::F64);
    CHECK(cross_entropy(f32, {0, 1, 2, 3, 4, 5}).dtype() == DType::F64);
    // Elementwise ops, reductions and views follow their input.
    CHECK(exp(f32).dtype() == DType::F32);
    CHECK(sum(f32).dtype() == DType::F32);
    CHECK(transpose(f32, 0, 1).dtype() == DType::F32);
    // Values: the f32 compute of f64 inputs, not something else.
    CHECK(max_abs_diff(linear(m, wl, bl), linear(cast(m, DType::F32), cast(wl, DType::F32), cast(bl, DType::F32))) == 0);
    // Inputs already in the compute dtype are not cast again (the op reads the caller's tensor).
    Tensor xf = f32.detach().requires_grad_();
    Tensor y = linear(xf, cast(wl, DType::F32));
    REQUIRE(y.grad_fn());
    CHECK(y.grad_fn()->name() == "linear");
    CHECK(y.grad_fn()->next[0].is_leaf);
    {
      Autocast off(DType::F32, DType::F32, false);   // nested: the policy off inside
      CHECK_FALSE(autocast_policy().enabled);
      CHECK(linear(m, wl, bl).dtype() == DType::F64);
      CHECK(layer_norm(f32, 1).dtype() == DType::F32);
    }
    CHECK(autocast_policy().enabled);
    CHECK(linear(m, wl, bl).dtype() == DType::F32);
  }
  CHECK_FALSE(autocast_policy().enabled);
  CHECK(linear(m, wl, bl).dtype() == DType::F64);
  CHECK(layer_norm(f32, 1).dtype() == DType::F32);
  CHECK(error_of([] { Autocast bad(DType::F64, DType::F32); }).find("must not be wider") != std::string::npos);
}

TEST_CASE("amp: binary ops promote mixed dtypes; each operand's gradient keeps its own dtype") {
  Tensor a = rnd({3, 4}, 1, DType::F32).requires_grad_(), b = rnd({4}, 2, DType::F64).requires_grad_();
  Tensor y = add(a, b);
  CHECK(y.dtype() == DType::F64);
  CHECK(max_abs_diff(y, add(cast(a.detach(), DType::F64), b.detach())) == 0);
  for (Tensor z : {sub(a, b), mul(a, b), div(a, add(b, 3.0)), maximum(a, b), minimum(b, a), pow(add(abs(a), 1.0), b),
                   where(gt(a, b), a, b), gt(a, b), lt(b, a), ge(a, b)})
    CHECK(z.dtype() == DType::F64);
  sum(mul(square(y), where(lt(a, b), a, b))).backward();
  REQUIRE(a.grad().defined());
  REQUIRE(b.grad().defined());
  CHECK(a.grad().dtype() == DType::F32);
  CHECK(b.grad().dtype() == DType::F64);
  // Forward mode: the f32 operand's tangent stays f32 up to the promotion.
  DualLevel level;
  Tensor ad = make_dual(a.detach(), ones_like(a.detach()));
  auto [p, t] = unpack_dual(mul(ad, b.detach()));
  CHECK(t.dtype() == DType::F64);
  CHECK(max_abs_diff(t, broadcast_to(b.detach(), {3, 4})) == 0);
}

TEST_CASE("amp: dtypes of every op in a DiT and a U-Net forward under the policy") {
  for (const json& cfg : {small_dit(), small_unet()}) {
    CAPTURE(cfg.dump());
    auto model = build(cfg);
    Tensor x = rnd({2, 1, 16, 16}, 3), c = rnd({2}, 4);
    Autocast amp(DType::F32, DType::F64);
    Tensor y = model->forward(x, c);
    CHECK(y.dtype() == DType::F32);   // the last layer (linear / conv2d) computes in f32
    auto d = graph_dtypes(y);
    const std::set<DType> low{DType::F32}, high{DType::F64};
    int compute_ops = 0, norm_ops = 0;
    for (const char* op : {"linear", "matmul", "conv2d"})
      if (d.count(op)) {
        CHECK_MESSAGE(d[op] == low, op);
        ++compute_ops;
      }
    for (const char* op : {"layer_norm", "group_norm", "softmax"})
      if (d.count(op)) {
        CHECK_MESSAGE(d[op] == high, op);
        ++norm_ops;
      }
    // The trainer's network boundary hands the objective the data's dtype back (losses in full precision).
    CHECK(model_net(*model)(x, c).dtype() == DType::F64);
    CHECK(compute_ops >= 2);          // linear + matmul (DiT), conv2d + linear + matmul (U-Net)
    CHECK(norm_ops >= 2);             // layer_norm + softmax (DiT), group_norm + softmax (U-Net)
    REQUIRE(d.count("cast"));
    CHECK(d["cast"] == std::set<DType>{DType::F32, DType::F64});   // down for compute, up for norms
    for (auto& [op, ts] : d) CHECK_MESSAGE(!ts.count(DType::BF16), op);
  }
}

TEST_CASE("amp: gradients reach the master weights in their dtype and match full precision") {
  for (const json& cfg : {small_dit(), small_unet()}) {
    CAPTURE(cfg.dump());
    auto model = build(cfg);
    Tensor x = rnd({2, 1, 16, 16}, 3), c = rnd({2}, 4), r = rnd({2, 1, 16, 16}, 5);
    auto grads = [&](bool amp_on) {
      model->zero_grad();
      {
        Autocast amp(DType::F32, DType::F64, amp_on);
        sum(mul(model->forward(x, c), r)).backward();
      }
      Tensors gs;
      for (auto& p : model->parameters()) gs.push_back(p.grad());
      return gs;
    };
    Tensors full = grads(false), mixed = grads(true);
    REQUIRE(full.size() == mixed.size());
    int compared = 0;
    for (size_t i = 0; i < full.size(); ++i) {
      REQUIRE(mixed[i].defined());
      CHECK(mixed[i].dtype() == DType::F64);
      double scale = std::max(max_abs(full[i]), 1e-3);
      CHECK(max_abs_diff(mixed[i], full[i]) / scale < 1e-4);   // f32 rounding, not an f64 match...
      if (max_abs_diff(mixed[i], full[i]) > 0) ++compared;     // ...and not f64 compute either
    }
    CHECK(compared > int(full.size()) / 2);
  }
}

TEST_CASE("amp: reverse-over-forward under the policy equals full precision within f32 tolerance") {
  auto model = build(small_dit());
  Tensor x = rnd({2, 1, 16, 16}, 3), c = rnd({2}, 4), v = rnd({2, 1, 16, 16}, 5);
  // d/dtheta of ||J_x F(x, c) v||^2: the tangent graph is differentiated (a DualLevel with
  // differentiable tangents, as in the sCM loss's gradient through the JVP).
  auto run = [&](bool amp_on) {
    model->zero_grad();
    Autocast amp(DType::F32, DType::F64, amp_on);
    DualLevel level;
    Tensor y = model->forward(make_dual(x, v), c);
    auto [p, t] = unpack_dual(y);
    REQUIRE(t.defined());
    CHECK(t.dtype() == y.dtype());   // tangents follow their primal (f32 under the policy)
    sum(square(t)).backward();
    Tensors gs;
    for (auto& q : model->parameters()) gs.push_back(q.grad());
    return gs;
  };
  Tensors full = run(false), mixed = run(true);
  int checked = 0;
  for (size_t i = 0; i < full.size(); ++i) {
    if (!full[i].defined()) continue;
    REQUIRE(mixed[i].defined());
    CHECK(mixed[i].dtype() == DType::F64);
    CHECK(max_abs_diff(mixed[i], full[i]) / std::max(max_abs(full[i]), 1e-3) < 1e-3);
    ++checked;
  }
  CHECK(checked > 5);
}

TEST_CASE("amp: derivative rules run in their forward's dtypes, not the policy in force at backward time") {
  auto model = build(small_unet());
  Tensor x = rnd({2, 1, 16, 16}, 3), c = rnd({2}, 4);
  Tensor loss = sum(square(model->forward(x, c)));   // recorded in f64, outside any policy
  Tensors ps = model->parameters();
  Tensors outside = grad({loss}, ps, {}, /*retain_graph=*/true);
  Tensors inside;
  {
    Autocast amp(DType::F32, DType::F64);
    inside = grad({loss}, ps);
  }
  for (size_t i = 0; i < ps.size(); ++i) {
    CHECK(inside[i].dtype() == DType::F64);
    CHECK(max_abs_diff(inside[i], outside[i]) == 0);   // bit for bit: no f32 GEMM in the backward
  }
}

namespace {
// An op whose forward and JVP rule call the public linear(): the policy casts only at the entry of
// the op the user calls, so the inner calls compute in the dtypes the op was given.
const OpDef& linear_inside_op() {
  static OpDef op{"linear_inside", [](const Tensors& in, const Attrs&) { return Tensors{linear(in[0], in[1])}; },
                  [](const RuleCtx& c, const Tensors& t) { return Tensors{t[0].defined() ? linear(t[0], c.in[1]) : Tensor()}; },
                  [](const RuleCtx& c, const Tensors& g, const std::vector<bool>&) {
                    return Tensors{matmul(g[0], c.in[1]), Tensor()};
                  },
                  true, false};
  return op;
}
}  // namespace

TEST_CASE("amp: an op's forward and JVP rule are not re-cast by the policy (apply() suspends it)") {
  Tensor x = rnd({3, 8}, 1), w = rnd({4, 8}, 2), v = rnd({3, 8}, 3);
  Autocast amp(DType::F32, DType::F64);
  DualLevel level;
  Tensor y = apply1(linear_inside_op(), {make_dual(x, v), w});
  CHECK(y.dtype() == DType::F64);
  Autocast off(DType::F32, DType::F64, false);
  CHECK(max_abs_diff(y, linear(x, w)) == 0);
  Tensor t = unpack_dual(y).second;
  REQUIRE(t.defined());
  CHECK(t.dtype() == DType::F64);
  CHECK(max_abs_diff(t, linear(v, w)) == 0);
  // A rule that hands back a tangent in another dtype than its output is an error naming the op.
  static OpDef bad{"bad_tangent_dtype", [](const Tensors& in, const Attrs&) { return Tensors{copy(in[0])}; },
                   [](const RuleCtx&, const Tensors& tg) { return Tensors{cast(tg[0], DType::F32)}; }, nullptr,
                   false, false};
  std::string e = error_of([&] { apply1(bad, {make_dual(x, v)}); });
  CHECK(contains(e, "bad_tangent_dtype"));
  CHECK(contains(e, "tangents follow their primal"));
}

TEST_CASE("amp: bf16 on the CPU is a clear error naming the op or the config key") {
  Tensor m = rnd({6, 8}, 4, DType::F32), w = rnd({4, 8}, 5, DType::F32);
  {
    Autocast amp(DType::BF16);
    std::string e = error_of([&] { linear(m, w); });
    CHECK(contains(e, "linear"));
    CHECK(contains(e, "bf16"));
    CHECK(contains(e, "CUDA"));
    CHECK(contains(error_of([&] { conv2d(rnd({1, 2, 4, 4}, 1, DType::F32), rnd({3, 2, 3, 3}, 2, DType::F32)); }),
                   "conv2d"));
    CHECK(contains(error_of([&] { attention(reshape(m, {1, 2, 3, 8}), reshape(m, {1, 2, 3, 8}), reshape(m, {1, 2, 3, 8})); }),
                   "attention"));
    // Precision-sensitive and elementwise ops of f32 CPU tensors still work under it.
    CHECK(layer_norm(m, 1).dtype() == DType::F32);
    CHECK(exp(m).dtype() == DType::F32);
  }
  json j = {{"model", small_unet()}, {"objective", {{"name", "trigflow"}}}, {"precision", "bf16"}};
  TrainConfig cfg = parse_config(j);
  CHECK(cfg.precision == "bf16");
  Generator g(0);
  auto model = make_model(model_config_from_json(small_unet(), 1, 16), g);
  std::string e = error_of([&] { make_method(cfg, *model); });
  CHECK(contains(e, "config: precision"));
  CHECK(contains(e, "cuda"));
  // A bf16 run's checkpoint is still sampled on the CPU (sampling-only methods compute in f32).
  CHECK(make_method(cfg, *model, /*with_teacher=*/false) != nullptr);
  j["precision"] = "fp16";
  CHECK(contains(error_of([&] { parse_config(j); }), "precision"));
  j["precision"] = "bf16";
  j["dtype"] = "f64";
  CHECK(contains(error_of([&] { parse_config(j); }), "config: precision"));
}

// Each objective through make_method (the trainer's path) for a few Adam steps from the same seed,
// with and without the policy. Tolerance: 1e-4 relative per step's loss (f32 compute against f64;
// observed differences are around 1e-7..1e-6). rCM alternates student and critic steps.
TEST_CASE("amp: short runs of every objective agree with full precision (f32 compute, f64 masters)") {
  std::string dir = temp_dir("amp_cpu");
  struct Case {
    const char* objective;
    json model;
  };
  for (const Case& k : {Case{"trigflow", small_unet()}, Case{"edm", small_unet()}, Case{"sct", small_unet()},
                        Case{"scd", small_unet()}, Case{"rcm", small_unet()}, Case{"trigflow", small_dit()},
                        Case{"sct", small_dit()}}) {
    const std::string name = k.objective, model = k.model.dump();
    CAPTURE(name);
    CAPTURE(model);
    AmpRun r;
    r.objective = k.objective;
    r.model = k.model;
    r.dir = dir;
    r.steps = 4;
    std::vector<double> full = amp_losses(r);
    r.autocast_f32 = true;
    std::vector<double> mixed = amp_losses(r);
    REQUIRE(full.size() == 4);
    double d = max_rel_diff(mixed, full);
    MESSAGE(name, ": losses ", full[0], " ... ", full[3], ", max relative difference ", d);
    for (double l : full) CHECK(std::isfinite(l));
    CHECK(d < 1e-4);
    CHECK(d > 0);   // the policy did change the arithmetic
  }
}
