// CUDA softmax/log_softmax over R of (O, R, I) and layer/RMS norm over rows of (O, R)
// (NnCudaHooks). One block per row when I == 1, one thread per (o, i) column otherwise; f32 math
// for f32/bf16, f64 for f64. Without ops/nn_kernels.h this file registers nothing.
#if __has_include("ops/nn_kernels.h")
#include <cmath>

#include "cuda/common.cuh"
#include "ops/nn_kernels.h"

namespace df::cudak {
namespace {

template <class T>
__global__ void softmax_rows_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t R, bool log) {
  using A = compute_t<T>;
  __shared__ A smem[32];
  const T* xr = x + blockIdx.x * R;
  T* yr = y + blockIdx.x * R;
  A m = -INFINITY;
  for (int64_t r = threadIdx.x; r < R; r += blockDim.x) m = fmax(m, load_as<A>(xr[r]));
  m = block_max(m, smem);
  if (!isfinite(m)) m = 0;
  A s = 0;
  for (int64_t r = threadIdx.x; r < R; r += blockDim.x) s += exp(load_as<A>(xr[r]) - m);
  s = block_sum(s, smem);
  if (log) {
    A shift = m + ::log(s);
    for (int64_t r = threadIdx.x; r < R; r += blockDim.x) yr[r] = store_as<T, A>(load_as<A>(xr[r]) - shift);
  } else {
    A inv = A(1) / s;
    for (int64_t r = threadIdx.x; r < R; r += blockDim.x) yr[r] = store_as<T, A>(exp(load_as<A>(xr[r]) - m) * inv);
  }
}

template <class T>
__global__ void softmax_cols_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t O, int64_t R, int64_t I,
                                    bool log) {
  using A = compute_t<T>;
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < O * I; t += int64_t(gridDim.x) * blockDim.x) {
    int64_t o = t / I, i = t - o * I;
    const T* xc = x + o * R * I + i;
    T* yc = y + o * R * I + i;
    A m = -INFINITY, s = 0;
    for (int64_t r = 0; r < R; ++r) m = fmax(m, load_as<A>(xc[r * I]));
    if (!isfinite(m)) m = 0;
    for (int64_t r = 0; r < R; ++r) s += exp(load_as<A>(xc[r * I]) - m);
    A shift = m + ::log(s), inv = A(1) / s;
    for (int64_t r = 0; r < R; ++r) {
      A v = load_as<A>(xc[r * I]);
      yc[r * I] = store_as<T, A>(log ? v - shift : exp(v - m) * inv);
    }
  }
}

// Two passes over the row for the statistics (mean, then squared deviations) as on the CPU.
template <class T>
__global__ void norm_rows_kernel(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ b,
                                 T* __restrict__ y, int64_t R, double eps, bool rms) {
  using A = compute_t<T>;
  __shared__ A smem[32];
  const T* xr = x + blockIdx.x * R;
  T* yr = y + blockIdx.x * R;
  A mu = 0;
  if (!rms) {
    for (int64_t r = threadIdx.x; r < R; r += blockDim.x) mu += load_as<A>(xr[r]);
    mu = block_sum(mu, smem) / A(R);
  }
  A ss = 0;
  for (int64_t r = threadIdx.x; r < R; r += blockDim.x) {
    A d = load_as<A>(xr[r]) - mu;
    ss += d * d;
  }
  ss = block_sum(ss, smem);
  A scale = A(1) / sqrt(ss / A(R) + A(eps));
  for (int64_t r = threadIdx.x; r < R; r += blockDim.x) {
    A v = (load_as<A>(xr[r]) - mu) * scale;
    if (w) v *= load_as<A>(w[r]);
    if (b) v += load_as<A>(b[r]);
    yr[r] = store_as<T, A>(v);
  }
}

#define DF_CUDA_DISPATCH(dtype, ...)                            \
  switch (dtype) {                                              \
    case DType::F32: { using T = float; __VA_ARGS__; break; }   \
    case DType::F64: { using T = double; __VA_ARGS__; break; }  \
    case DType::BF16: { using T = bf16; __VA_ARGS__; break; }   \
    default: DF_FAIL("nn op (CUDA): expected a floating dtype, got ", dtype_name(dtype)); \
  }

int row_threads(int64_t R) {
  int t = 512;
  while (t > 32 && t * 4 > R) t >>= 1;
  return t;
}

Tensor softmax_cuda(const Tensor& x, int64_t O, int64_t R, int64_t I, bool log) {
  Tensor y = empty(x.shape(), x.dtype(), Device::CUDA);
  if (O * R * I == 0) return y;
  DF_CHECK(O < (int64_t(1) << 31), "softmax (CUDA): too many rows, ", x.desc());
  DF_CUDA_DISPATCH(x.dtype(), {
    if (I == 1)
      softmax_rows_kernel<T><<<unsigned(O), row_threads(R), 0, stream()>>>(x.data_as<T>(), y.data_as<T>(), R, log);
    else
      softmax_cols_kernel<T><<<grid_for(O * I, 256), 256, 0, stream()>>>(x.data_as<T>(), y.data_as<T>(), O, R, I, log);
  });
  DF_CUDA_LAUNCHED(log ? "log_softmax" : "softmax");
  return y;
}

Tensor norm_cuda(const Tensor& x, const Tensor& w, const Tensor& b, int64_t O, int64_t R, double eps, bool rms) {
  Tensor y = empty(x.shape(), x.dtype(), Device::CUDA);
  if (O * R == 0) return y;
  const char* name = rms ? "rms_norm" : "layer_norm";
  DF_CHECK(O < (int64_t(1) << 31), name, " (CUDA): too many rows, ", x.desc());
  for (const Tensor* p : {&w, &b})
    if (p->defined())
      DF_CHECK(p->dtype() == x.dtype() && p->device() == Device::CUDA && p->numel() == R, name,
               ": weight/bias ", p->desc(), " does not match ", x.desc());
  DF_CUDA_DISPATCH(x.dtype(), {
    norm_rows_kernel<T><<<unsigned(O), row_threads(R), 0, stream()>>>(
        x.data_as<T>(), w.defined() ? w.data_as<T>() : nullptr, b.defined() ? b.data_as<T>() : nullptr,
        y.data_as<T>(), R, eps, rms);
  });
  DF_CUDA_LAUNCHED(name);
  return y;
}

Tensor layer_norm_cuda(const Tensor& x, const Tensor& w, const Tensor& b, int64_t O, int64_t R, double eps) {
  return norm_cuda(x, w, b, O, R, eps, false);
}
Tensor rms_norm_cuda(const Tensor& x, const Tensor& w, int64_t O, int64_t R, double eps) {
  return norm_cuda(x, w, Tensor(), O, R, eps, true);
}

}  // namespace

void register_nn() {
  NnCudaHooks& h = nn_cuda_hooks();
  h.softmax = softmax_cuda;
  h.layer_norm = layer_norm_cuda;
  h.rms_norm = rms_norm_cuda;
}

}  // namespace df::cudak

#else
namespace df::cudak {
void register_nn() {}
}  // namespace df::cudak
#endif
