// Fused optimizer kernels (OptimCudaHooks): Adam-family update, EMA update and a deterministic sum
// of squares over many tensors (for gradient clipping). f32 math for f32/bf16, f64 for f64.
#if __has_include("train/optim_kernels.h")
#include "cuda/common.cuh"
#include "train/optim_kernels.h"

namespace df::cudak {
namespace {

struct AdamK {
  double b1, b2, eps, l2, decay, step, denom_scale;
  bool use_denom;
};

template <class T>
__global__ void adam_kernel(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ m, T* __restrict__ v,
                            int64_t n, AdamK u) {
  using C = compute_t<T>;
  const C b1 = C(u.b1), b2 = C(u.b2), eps = C(u.eps), l2 = C(u.l2), decay = C(u.decay), step = C(u.step),
          ds = C(u.denom_scale);
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    C pj = load_as<C>(p[i]);
    C gj = load_as<C>(g[i]) + l2 * pj;
    C mj = b1 * load_as<C>(m[i]) + (C(1) - b1) * gj;
    C vj = b2 * load_as<C>(v[i]) + (C(1) - b2) * gj * gj;
    m[i] = store_as<T, C>(mj);
    v[i] = store_as<T, C>(vj);
    C upd = u.use_denom ? step * mj / (sqrt(vj) * ds + eps) : step * mj;
    p[i] = store_as<T, C>(pj * decay - upd);
  }
}

template <class T>
__global__ void ema_kernel(T* __restrict__ s, const T* __restrict__ p, int64_t n, double beta) {
  using C = compute_t<T>;
  const C b = C(beta), a = C(1 - beta);
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    s[i] = store_as<T, C>(b * load_as<C>(s[i]) + a * load_as<C>(p[i]));
}

constexpr int kSqBlocks = 32, kSqThreads = 256;

// Block b writes the sum of its grid-stride share of x (of its squares when Square) to out[b]. Sums of
// squares use a fixed grid per tensor and one block for the partials: fixed reduction orders, so the
// total does not depend on scheduling.
template <class T, bool Square>
__global__ void block_sums_kernel(const T* __restrict__ x, int64_t n, float* __restrict__ out) {
  __shared__ float sm[32];
  float acc = 0;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    float a = float(load_as<compute_t<T>>(x[i]));
    acc += Square ? a * a : a;
  }
  acc = block_sum(acc, sm);
  if (threadIdx.x == 0) out[blockIdx.x] = acc;
}

void check_same(const char* who, const Tensor& a, const Tensor& b) {
  DF_CHECK(a.device() == Device::CUDA && b.device() == Device::CUDA && a.is_contiguous() && b.is_contiguous() &&
               a.dtype() == b.dtype() && a.numel() == b.numel(),
           who, ": expected contiguous CUDA tensors of one dtype and size, got ", a.desc(), " and ", b.desc());
}

#define DF_OPTIM_DISPATCH(dtype, LAUNCH)          \
  switch (dtype) {                                \
    case DType::F32: { using T = float; LAUNCH; break; }  \
    case DType::F64: { using T = double; LAUNCH; break; } \
    case DType::BF16: { using T = bf16; LAUNCH; break; }  \
    default: DF_FAIL("optimizer (CUDA): expected a floating dtype, got ", dtype_name(dtype)); \
  }

void adam_cuda(const Tensor& p, const Tensor& g, const Tensor& m, const Tensor& v, const AdamUpdate& u) {
  check_same("adam (fused)", p, g);
  check_same("adam (fused)", p, m);
  check_same("adam (fused)", p, v);
  const int64_t n = p.numel();
  if (n == 0) return;
  AdamK k{u.b1, u.b2, u.eps, u.l2, u.decay, u.step, u.denom_scale, u.use_denom};
  DF_OPTIM_DISPATCH(p.dtype(), (adam_kernel<T><<<grid_for(n, 256), 256, 0, stream()>>>(
                                   p.data_as<T>(), g.data_as<T>(), m.data_as<T>(), v.data_as<T>(), n, k)));
  DF_CUDA_LAUNCHED("adam (fused)");
}

void ema_cuda(const Tensor& s, const Tensor& p, double beta) {
  check_same("EMA::update (fused)", s, p);
  const int64_t n = s.numel();
  if (n == 0) return;
  DF_OPTIM_DISPATCH(s.dtype(), (ema_kernel<T><<<grid_for(n, 256), 256, 0, stream()>>>(s.data_as<T>(),
                                                                                     p.data_as<T>(), n, beta)));
  DF_CUDA_LAUNCHED("EMA::update (fused)");
}

Tensor sum_squares_cuda(const std::vector<Tensor>& xs) {
  Tensor partial = empty({int64_t(xs.size()) * kSqBlocks}, DType::F32, Device::CUDA);
  float* part = partial.data_as<float>();
  for (size_t k = 0; k < xs.size(); ++k) {
    const Tensor& x = xs[k];
    DF_CHECK(x.device() == Device::CUDA && x.is_contiguous(), "sum_squares: expected contiguous CUDA tensors, got ",
             x.desc());
    float* slot = part + k * kSqBlocks;
    if (x.numel() == 0) {
      DF_CUDA_CHECK(cudaMemsetAsync(slot, 0, kSqBlocks * sizeof(float), stream()), "sum_squares");
      continue;
    }
    DF_OPTIM_DISPATCH(x.dtype(), (block_sums_kernel<T, true><<<kSqBlocks, kSqThreads, 0, stream()>>>(x.data_as<T>(),
                                                                                             x.numel(), slot)));
    DF_CUDA_LAUNCHED("sum_squares");
  }
  Tensor out = empty({}, DType::F32, Device::CUDA);
  block_sums_kernel<float, false><<<1, kSqThreads, 0, stream()>>>(part, int64_t(xs.size()) * kSqBlocks,
                                                                  out.data_as<float>());
  DF_CUDA_LAUNCHED("sum_squares");
  return out;
}

}  // namespace

void register_optim() {
  OptimCudaHooks& h = optim_cuda_hooks();
  h.adam = adam_cuda;
  h.ema = ema_cuda;
  h.sum_squares = sum_squares_cuda;
}

}  // namespace df::cudak

#else
namespace df::cudak {
void register_optim() {}
}  // namespace df::cudak
#endif
