// Whole training steps on the GPU (issue 17): DiT-S/2 and UNet-128, batch 128, 32x32x3 random images
// already on the device; TrigFlow diffusion step and sCT step (one forward carrying the JVP tangent,
// then backward), Adam, EMA, gradient clipping; in tf32 and in bf16 mixed precision. Prints tab-separated
// RESULT lines for bench/step_gpu.sh (beside bench/torch_step.py). Usage:
//   build/bench/step [--models dit,unet] [--kinds diffusion,sct] [--precisions tf32,bf16]
//                    [--warmup 5] [--steps 15] [--batch 128]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "models/registry.h"
#include "ops/fused_attention.h"
#include "ops/ops.h"
#include "train/methods.h"
#include "train/optim.h"
#ifdef DF_WITH_CUDA
#include "cuda/cuda.h"
#endif

using namespace df;

namespace {

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) out.push_back(item);
  return out;
}

struct Options {
  std::vector<std::string> models{"dit", "unet"}, kinds{"diffusion", "sct"}, precisions{"tf32", "bf16"};
  int warmup = 5, steps = 15;
  int64_t batch = 128;
};

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string k = argv[i], v = argv[i + 1];
    if (k == "--models") o.models = split(v);
    else if (k == "--kinds") o.kinds = split(v);
    else if (k == "--precisions") o.precisions = split(v);
    else if (k == "--warmup") o.warmup = std::atoi(v.c_str());
    else if (k == "--steps") o.steps = std::atoi(v.c_str());
    else if (k == "--batch") o.batch = std::atoll(v.c_str());
    else DF_FAIL("step: unknown option ", k, " (--models, --kinds, --precisions, --warmup, --steps, --batch)");
  }
  DF_CHECK(o.warmup >= 1 && o.steps >= 3 && o.batch >= 1, "step: need --warmup >= 1, --steps >= 3, --batch >= 1");
  return o;
}

#ifdef DF_WITH_CUDA

const char* model_name(const std::string& m) { return m == "dit" ? "DiT-S/2" : "UNet-128"; }

// U-Net FLOPs of one forward: every conv at its resolution (k*k*Cin*Cout*H*W multiply-adds), the
// attention projections and scores; the time MLP and embedding projections are negligible.
double unet_flops(const UNetConfig& u, int64_t B) {
  double macs = 0;
  auto conv = [&](int64_t cin, int64_t cout, int64_t k, int64_t r) { macs += double(k * k * cin * cout) * r * r; };
  auto attn = [&](int64_t ch, int64_t r) {
    const double n = double(r) * r;
    macs += n * (3.0 * ch * ch + double(ch) * ch) + 2 * n * n * ch;
  };
  auto res = [&](int64_t cin, int64_t cout, int64_t r) {
    conv(cin, cout, 3, r);
    conv(cout, cout, 3, r);
    if (cin != cout) conv(cin, cout, 1, r);
  };
  auto has = [&](int64_t r) { return std::find(u.attn_resolutions.begin(), u.attn_resolutions.end(), r) != u.attn_resolutions.end(); };
  const int64_t L = (int64_t)u.channel_mults.size();
  int64_t ch = u.base_channels, r = u.resolution;
  conv(u.in_channels, ch, 3, r);
  std::vector<int64_t> skips{ch};
  for (int64_t l = 0; l < L; ++l) {
    const int64_t out = u.base_channels * u.channel_mults[l];
    for (int64_t i = 0; i < u.res_blocks; ++i) {
      res(ch, out, r);
      ch = out;
      if (has(r)) attn(ch, r);
      skips.push_back(ch);
    }
    if (l + 1 < L) {
      conv(ch, ch, 3, r / 2);
      skips.push_back(ch);
      r /= 2;
    }
  }
  res(ch, ch, r);
  if (u.mid_attention) attn(ch, r);
  res(ch, ch, r);
  for (int64_t l = L - 1; l >= 0; --l) {
    const int64_t out = u.base_channels * u.channel_mults[l];
    for (int64_t i = 0; i <= u.res_blocks; ++i) {
      res(ch + skips.back(), out, r);
      skips.pop_back();
      ch = out;
      if (has(r)) attn(ch, r);
    }
    if (l > 0) {
      r *= 2;
      conv(ch, ch, 3, r);
    }
  }
  conv(ch, u.in_channels, 3, r);
  return 2 * macs * B;
}

// FLOPs of one network forward pass at batch B (2 x the multiply-adds of the matmuls, convolutions
// and attention; elementwise work not counted): the denominators of bench/step_notes.md.
double forward_flops(const ModelConfig& cfg, int64_t B) {
  if (cfg.arch != "dit") return unet_flops(cfg.unet, B);
  const DiTConfig& d = cfg.dit;
  const double N = double(d.resolution / d.patch) * double(d.resolution / d.patch), W = double(d.width);
  const double hidden = double(std::llround(d.width * d.mlp_ratio)), patch_dim = double(d.in_channels * d.patch * d.patch);
  const double tokens = N * (4 * W * W + 2 * W * hidden) + 2 * N * N * W;   // qkv, proj, MLP; QK^T and PV
  const double per_sample = d.depth * (tokens + 6 * W * W) + 2 * N * W * patch_dim + 2 * W * W;  // + adaLN, in/out
  return 2 * B * per_sample;
}

double median_of(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

void run_case(const std::string& m, const std::string& kind, const std::string& precision, const Options& o) {
  const std::string label = std::string(model_name(m)) + " " + kind + " " + precision;
  cuda::empty_cache();
  cuda::reset_peak_memory_stats();
  set_allow_tf32(true);   // tf32 for the f32 matmuls of both modes (the bf16 mode has nearly none left)
  ModelConfig mc = model_config(model_name(m), 3, 32);
  Generator init(0);
  auto model = make_model(mc, init, DType::F32);
  model->to(Device::CUDA);
  TrainConfig cfg;
  cfg.objective.name = kind == "sct" ? "sct" : "trigflow";
  cfg.objective.adaptive_weight = false;   // torch_step.py has no weight head either
  cfg.precision = precision == "bf16" ? "bf16" : "f32";
  cfg.device = "cuda";
  auto method = make_method(cfg, *model);
  Tensors params = model->parameters();
  auto opt = make_adam(params, 1e-4);
  EMA ema(params, 0.9999);
  Tensor x0 = add(mul(rand({o.batch, 3, 32, 32}, 1, DType::F32, Device::CUDA), 2.0), -1.0);
  Generator g(2);
  int64_t step = 0;
  Tensor last_loss;
  auto one_step = [&] {
    opt->zero_grad();
    Method::StepOut r = method->forward_backward(*model, x0, step++, g);
    clip_grad_norm_async(params, 1.0);
    opt->step();
    ema.update(params);
    last_loss = r.loss;
  };
  for (int i = 0; i < o.warmup; ++i) one_step();
  cuda_synchronize();
  const double loss0 = last_loss.item();
  reset_attention_path_counts();
  std::vector<double> ms;
  auto wall0 = std::chrono::steady_clock::now();
  for (int i = 0; i < o.steps; ++i) {
    cuda::EventTimer t;
    t.start();
    one_step();
    t.stop();
    ms.push_back(t.elapsed_ms());   // waits for this step: the next one starts from an idle GPU
  }
  const double wall = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - wall0).count();
  // The same steps back to back, as the trainer runs them (the host may run ahead of the GPU).
  double pipelined = 0;
  {
    cuda::EventTimer t;
    t.start();
    for (int i = 0; i < o.steps; ++i) one_step();
    t.stop();
    pipelined = t.elapsed_ms() / o.steps;
  }
  const double loss1 = last_loss.item();
  const auto mem = cuda::memory_stats();
  const AttentionPathCounts a = attention_path_counts();
  std::sort(ms.begin(), ms.end());
  const double med = median_of(ms), lo = ms.front(), hi = ms.back();
  // diffusion: forward + backward = 3 forwards; sCT: one forward carrying tangents (2: the tangent
  // GEMMs equal the primal ones, the weights have no tangent) + backward of the primal (2) = 4.
  const double step_flops = forward_flops(mc, o.batch) * (kind == "sct" ? 4.0 : 3.0);
  std::printf("%-28s median %8.2f ms  (min %.2f, max %.2f, %d steps; wall %.2f ms/step; back to back %.2f "
              "ms/step)  peak %.2f GiB  %.0f TFLOP/s on %.2f TFLOP  loss %.4g -> %.4g\n",
              label.c_str(), med, lo, hi, o.steps, wall / o.steps, pipelined, mem.peak_allocated / 1073741824.0,
              step_flops / (med * 1e-3) / 1e12, step_flops / 1e12, loss0, loss1);
  std::printf("%-28s attention calls per step: forward %.1f (wgmma %.1f), jvp %.1f (wgmma %.1f), backward %.1f "
              "(wgmma %.1f), composite %.1f\n",
              "", a.forward / double(o.steps), a.forward_wgmma / double(o.steps), a.jvp / double(o.steps),
              a.jvp_wgmma / double(o.steps), a.backward / double(o.steps), a.backward_wgmma / double(o.steps),
              a.composite / double(o.steps));
  std::printf("RESULT\tdualflow\t%s\t%.4f\t%.4f\tGiB\t%.4f\t%.4f\t%lld\t%.4f\t%.4f\n", label.c_str(), med,
              mem.peak_allocated / 1073741824.0, lo, hi, (long long)model->num_parameters(), step_flops / 1e12,
              pipelined);
  std::fflush(stdout);
  if (!std::isfinite(loss1)) std::printf("step: WARNING %s: non-finite loss %g\n", label.c_str(), loss1);
}

#endif

}  // namespace

int main(int argc, char** argv) {
  Options o = parse(argc, argv);
#ifndef DF_WITH_CUDA
  std::printf("step: built without CUDA; nothing to measure\n");
  return 0;
#else
  if (!cuda_init()) {
    std::printf("step: skipped: no CUDA device\n");
    return 0;
  }
  std::printf("step: batch %lld, 32x32x3, warm-up %d, timed %d steps per row (CUDA events per step)\n",
              (long long)o.batch, o.warmup, o.steps);
  std::printf("RESULT format: RESULT who label median_ms peak_GiB GiB min_ms max_ms params step_TFLOP "
              "back_to_back_ms\n");
  int failures = 0;
  for (const auto& m : o.models)
    for (const auto& p : o.precisions)
      for (const auto& k : o.kinds) {
        try {
          run_case(m, k, p, o);
        } catch (const Error& e) {
          std::printf("step: %s %s %s failed: %s\n", m.c_str(), k.c_str(), p.c_str(), e.what());
          ++failures;
        }
      }
  return failures ? 1 : 0;
#endif
}
