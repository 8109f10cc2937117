// Per-op CUDA timings (CUDA events, warm-up then the median of many runs, random inputs) with the
// bytes or flops each op must move/do, printed as tab-separated RESULT lines for bench/gpu_check.sh
// to put beside bench/torch_ops.py. Usage: ops_bench [scale], scale 1 = the default sizes.
#include <algorithm>
#include <cmath>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "ops/ops.h"
#ifdef DF_WITH_CUDA
#include "cuda/cuda.h"
#endif

using namespace df;

#ifdef DF_WITH_CUDA
namespace {

// Median device time of `op` in ms over `reps` runs after `warm` warm-ups.
double time_op(const std::function<Tensor()>& op, int warm = 3, int reps = 25) {
  for (int i = 0; i < warm; ++i) op();
  cuda::EventTimer t;
  std::vector<double> ms;
  for (int i = 0; i < reps; ++i) {
    t.start();
    Tensor r = op();
    t.stop();
    ms.push_back(t.elapsed_ms());
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

void report_bw(const std::string& name, double ms, double bytes) {
  std::printf("RESULT\tdualflow\t%s\t%.4f\t%.1f\tGB/s\n", name.c_str(), ms, bytes / (ms * 1e-3) / 1e9);
}
[[maybe_unused]] void report_flops(const std::string& name, double ms, double flops) {
  std::printf("RESULT\tdualflow\t%s\t%.4f\t%.1f\tTFLOP/s\n", name.c_str(), ms, flops / (ms * 1e-3) / 1e12);
}

}  // namespace
#endif

int main(int argc, char** argv) {
#ifndef DF_WITH_CUDA
  std::printf("ops_bench: built without CUDA; nothing to measure\n");
  return 0;
#else
  if (!cuda_available()) {
    std::printf("ops_bench: skipped: no CUDA device\n");
    return 0;
  }
  double scale = argc > 1 ? std::atof(argv[1]) : 1.0;
  NoGrad ng;
  const Device G = Device::CUDA;
  const int64_t N = int64_t((int64_t(1) << 26) * scale);  // 64M f32 = 256 MB per operand
  const int64_t R = int64_t(8192 * std::sqrt(scale)), C = 8192;
  Tensor a = randn({N}, 1, DType::F32, G), b = randn({N}, 2, DType::F32, G);
  Tensor ab = a.to(DType::BF16), bb = b.to(DType::BF16);
  Tensor m2 = randn({R, C}, 3, DType::F32, G), v = randn({C}, 4, DType::F32, G);
  Tensor m2b = m2.to(DType::BF16);
  cuda_synchronize();
  double f4 = 4.0 * N, f2 = 2.0 * N, rc4 = 4.0 * R * C;

  report_bw("copy_f32", time_op([&] { return copy(permute(a, {0})); }), 2 * f4);
  report_bw("add_f32", time_op([&] { return add(a, b); }), 3 * f4);
  report_bw("mul_scalar_f32", time_op([&] { return mul(a, 1.5); }), 2 * f4);
  report_bw("exp_f32", time_op([&] { return exp(a); }), 2 * f4);
  report_bw("gelu_f32", time_op([&] { return gelu(a); }), 2 * f4);
  report_bw("add_bias_f32", time_op([&] { return add(m2, v); }), 2 * rc4);
  report_bw("cast_f32_bf16", time_op([&] { return cast(a, DType::BF16); }), f4 + f2);
  report_bw("add_bf16", time_op([&] { return add(ab, bb); }), 3 * f2);
  report_bw("gelu_bf16", time_op([&] { return gelu(ab); }), 2 * f2);
  report_bw("transpose_f32", time_op([&] { return copy(transpose(m2, 0, 1)); }), 2 * rc4);
  report_bw("sum_all_f32", time_op([&] { return sum(a); }), f4);
  report_bw("sum_rows_f32", time_op([&] { return sum(m2, {1}); }), rc4);
  report_bw("sum_cols_f32", time_op([&] { return sum(m2, {0}); }), rc4);
  report_bw("max_rows_f32", time_op([&] { return max(m2, {1}); }), rc4);
  report_bw("sum_rows_bf16", time_op([&] { return sum(m2b, {1}); }), rc4 / 2);
  report_bw("randn_f32", time_op([&] { return randn({N}, 5, DType::F32, G); }), f4);

#if __has_include("ops/linalg_kernels.h")
  // Matmuls: 2*M*N*K flops.
  for (int64_t n : {4096, 8192}) {
    Tensor x = randn({n, n}, 6, DType::F32, G), y = randn({n, n}, 7, DType::F32, G);
    double fl = 2.0 * n * n * n;
    std::string s = std::to_string(n);
    set_allow_tf32(false);
    report_flops("matmul_f32_" + s, time_op([&] { return matmul(x, y); }, 2, 10), fl);
    set_allow_tf32(true);
    report_flops("matmul_tf32_" + s, time_op([&] { return matmul(x, y); }, 2, 10), fl);
    set_allow_tf32(false);
    Tensor xb = x.to(DType::BF16), yb = y.to(DType::BF16);
    report_flops("matmul_bf16_" + s, time_op([&] { return matmul(xb, yb); }, 2, 10), fl);
  }
  {
    Tensor x = randn({64, 512, 512}, 8, DType::BF16, G), y = randn({64, 512, 512}, 9, DType::BF16, G);
    report_flops("bmm_bf16_64x512", time_op([&] { return matmul(x, y); }, 2, 10), 2.0 * 64 * 512 * 512 * 512);
  }
#endif

  // Host overhead per launch: many tiny ops queued back to back, timed on the host clock.
  {
    Tensor s = randn({16}, 10, DType::F32, G), t = randn({16}, 11, DType::F32, G);
    for (int i = 0; i < 100; ++i) add(s, t);
    cuda_synchronize();
    const int n = 20000;
    auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < n; ++i) add(s, t);
    auto t1 = std::chrono::steady_clock::now();
    cuda_synchronize();
    double us = std::chrono::duration<double, std::micro>(t1 - t0).count() / n;
    std::printf("RESULT\tdualflow\tlaunch_overhead_add_16\t%.4f\t%.2f\tus/op\n", us * 1e-3, us);
  }
  auto st = cuda::memory_stats();
  std::printf("ops_bench: peak allocated %.1f MB, reserved %.1f MB, cudaMalloc calls %lld\n",
              st.peak_allocated / 1e6, st.reserved / 1e6, (long long)st.num_device_mallocs);
  return 0;
#endif
}
