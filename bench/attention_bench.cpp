// Fused attention timings (CUDA events, warm-up, median) at B=8, H=8, N in {256, 1024, 4096}, D in
// {64, 128}, bf16 and f32: forward, forward+backward, backward alone and the one-pass JVP, as kernels and through the
// engine (with peak extra memory). Prints tab-separated RESULT lines for bench/attention_gpu.sh.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "ops/fused_attention.h"
#include "ops/ops.h"
#ifdef DF_WITH_CUDA
#include "cuda/attention.h"
#include "cuda/cuda.h"
#endif

using namespace df;

#ifdef DF_WITH_CUDA
namespace {

// Median device time of fn in ms: 3 warm-ups, then runs until ~150 ms or 40 samples (at least 5).
double time_ms(const std::function<void()>& fn) {
  for (int i = 0; i < 3; ++i) fn();
  cuda::EventTimer t;
  std::vector<double> ms;
  double total = 0;
  while ((int)ms.size() < 40 && (total < 150 || (int)ms.size() < 5)) {
    t.start();
    fn();
    t.stop();
    ms.push_back(t.elapsed_ms());
    total += ms.back();
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

// Extra device memory fn needs at its peak, beyond what was allocated before it, in MB.
double peak_mb(const std::function<void()>& fn) {
  cuda_synchronize();
  const size_t base = cuda::memory_stats().allocated;
  cuda::reset_peak_memory_stats();
  fn();
  cuda_synchronize();
  return double(cuda::memory_stats().peak_allocated - base) / 1e6;
}

void result(const std::string& who, const std::string& cfg, const char* what, double ms, double flops, double mb) {
  std::printf("RESULT\t%s\t%s\t%s\t%.4f\t%.1f\t%.1f\n", who.c_str(), cfg.c_str(), what, ms, flops / (ms * 1e-3) / 1e12,
              mb);
  std::fflush(stdout);
}

// DF_BENCH_ONLY=name,name,... keeps those rows alone (A/B runs: bench/attention_ab.sh).
bool wanted(const std::string& who) {
  const char* only = std::getenv("DF_BENCH_ONLY");
  return !only || !*only || (std::string(",") + only + ",").find("," + who + ",") != std::string::npos;
}

}  // namespace
#endif

int main(int argc, char** argv) {
#ifndef DF_WITH_CUDA
  std::printf("attention_bench: built without CUDA; nothing to measure\n");
  return 0;
#else
  if (!cuda_available()) {
    std::printf("attention_bench: skipped: no CUDA device\n");
    return 0;
  }
  // Optional first argument: the largest N (default 4096), to keep quick runs short.
  const int64_t nmax = argc > 1 ? std::atoll(argv[1]) : 4096;
  const Device G = Device::CUDA;
  const int64_t B = 8, H = 8;
  // Optional second argument "bf16": skip the f32 configurations (quick runs); optional third: the
  // smallest N (e.g. 4096 alone, for a profiler).
  const bool bf16_only = argc > 2 && std::string(argv[2]) == "bf16";
  const int64_t nmin = argc > 3 ? std::atoll(argv[3]) : 0;
  for (DType dt : {DType::BF16, DType::F32})
    for (int64_t D : {64, 128})
      for (int64_t N : {256, 1024, 4096}) {
        if (N > nmax || N < nmin || (bf16_only && dt != DType::BF16)) continue;
        const std::string cfg = std::string(dtype_name(dt)) + " D" + std::to_string(D) + " N" + std::to_string(N);
        const attn::Elem e = dt == DType::BF16 ? attn::Elem::BF16 : attn::Elem::F32;
        const attn::Dims d{B, H, N, N, D};
        const float scale = float(1.0 / std::sqrt(double(D)));
        const double fwd_flops = 4.0 * double(N) * double(N) * double(D) * double(B * H);
        Shape s{B, H, N, D}, rs{B, H, N};
        Tensor q, k, v, tq, tk, tv, go;
        {
          NoGrad ng;
          q = randn(s, 1, dt, G);
          k = randn(s, 2, dt, G);
          v = randn(s, 3, dt, G);
          tq = randn(s, 4, dt, G);
          tk = randn(s, 5, dt, G);
          tv = randn(s, 6, dt, G);
          go = randn(s, 7, dt, G);
        }
        Tensor o = empty(s, dt, G), to = empty(s, dt, G), dq = empty(s, dt, G), dk = empty(s, dt, G),
               dv = empty(s, dt, G);
        Tensor lse = empty(rs, DType::F32, G), acc = empty(s, DType::F32, G), delta = empty(rs, DType::F32, G);

        auto fwd = [&] { attn::forward(e, d, scale, q.data(), k.data(), v.data(), o.data(), lse.data_as<float>()); };
        auto fwd_bwd = [&] {
          fwd();
          attn::backward(e, d, scale, q.data(), k.data(), v.data(), o.data(), lse.data_as<float>(), go.data(), nullptr,
                         dq.data(), dk.data(), dv.data(), acc.data_as<float>(), delta.data_as<float>());
        };
        auto bwd_only = [&] {  // o and lse from a forward of the same variant, run before timing
          attn::backward(e, d, scale, q.data(), k.data(), v.data(), o.data(), lse.data_as<float>(), go.data(), nullptr,
                         dq.data(), dk.data(), dv.data(), acc.data_as<float>(), delta.data_as<float>());
        };
        auto jvp_k = [&] {
          attn::jvp(e, d, scale, q.data(), k.data(), v.data(), tq.data(), tk.data(), tv.data(), o.data(), to.data(),
                    nullptr, nullptr);
        };
        // Kernel-level memory: lse for the forward; lse, dq accumulator and delta for the backward.
        const double mb_f = double(B * H * N) * 4 / 1e6;
        const double mb_fb = mb_f + double(B * H * N) * 4 / 1e6 + double(B * H * N * D) * 4 / 1e6;
        struct Version {
          std::string who;
          attn::Variant variant;
          int warps;
        };
        std::vector<Version> versions{{"dualflow", attn::Variant::Auto, 0}};
        if (dt == DType::BF16) {
          // Both block sizes of the tensor-core kernels, and the SIMT kernels as the first version
          // (skipped at 4096: seconds of device time).
          versions.push_back({"dualflow-w4", attn::Variant::TensorCore, 4});
          versions.push_back({"dualflow-w8", attn::Variant::TensorCore, 8});
          if (N <= 1024) versions.push_back({"dualflow-simt", attn::Variant::Simt, 0});
          // Hopper wgmma forward, JVP and backward (also the "dualflow" row, Auto, on an sm_90
          // device; DF_ATTN_WGMMA_BWD=0 gives that row the mma.sync backward).
          // For the wgmma kernels "warps" is the config (block shape and main loop; 0 the default;
          // the backward has two shapes: configs 1 and 3 one warpgroup, the others two).
          if (attn::wgmma_available()) {
            for (int c = 0; c < attn::kWgmmaConfigs; ++c)
              versions.push_back({c ? "dualflow-wgmma-c" + std::to_string(c) : "dualflow-wgmma", attn::Variant::Wgmma, c});
          }
        }
        versions.erase(std::remove_if(versions.begin(), versions.end(), [](const Version& v) { return !wanted(v.who); }),
                       versions.end());
        for (const Version& ver : versions) {
          attn::set_variant(ver.variant);
          const bool wg = ver.variant == attn::Variant::Wgmma;
          attn::set_tc_block_warps(wg ? 0 : ver.warps);
          attn::set_wgmma_config(wg ? ver.warps : 0);
          result(ver.who, cfg, "fwd", time_ms(fwd), fwd_flops, mb_f);
          result(ver.who, cfg, "fwd+bwd", time_ms(fwd_bwd), 3.5 * fwd_flops, mb_fb);
          fwd();
          result(ver.who, cfg, "bwd", time_ms(bwd_only), 2.5 * fwd_flops, mb_fb - mb_f);
          result(ver.who, cfg, "jvp", time_ms(jvp_k), 3.0 * fwd_flops, 0.0);
        }
        attn::set_variant(attn::Variant::Auto);
        attn::set_tc_block_warps(0);
        attn::set_wgmma_config(0);

        // Through the engine: what a model sees (allocations, the saved lse, zero cotangent of lse;
        // jvp() runs the forward kernel and then the JVP kernel).
        auto op_fwd = [&] {
          NoGrad ng;
          Tensor r = fused_attention(q, k, v);
        };
        auto op_fb = [&] {
          Tensor qa = q.detach().requires_grad_(), ka = k.detach().requires_grad_(), va = v.detach().requires_grad_();
          Tensor r = fused_attention(qa, ka, va);
          Tensors g = grad({r}, {qa, ka, va}, {go});
        };
        auto op_jvp = [&] {
          auto r = jvp([](const Tensors& x) { return Tensors{fused_attention(x[0], x[1], x[2])}; }, {q, k, v},
                       {tq, tk, tv}, false);
        };
        if (!wanted("dualflow-op")) continue;
        result("dualflow-op", cfg, "fwd", time_ms(op_fwd), fwd_flops, peak_mb(op_fwd));
        result("dualflow-op", cfg, "fwd+bwd", time_ms(op_fb), 3.5 * fwd_flops, peak_mb(op_fb));
        result("dualflow-op", cfg, "jvp", time_ms(op_jvp), 3.0 * fwd_flops, peak_mb(op_jvp));
      }
  return 0;
#endif
}
