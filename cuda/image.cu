// CUDA kernels behind ImageCudaHooks: conv2d and its two adjoints as im2col / col2im plus cuBLAS
// (through the linalg GEMM hook, so TF32 policy and the handle are shared), group_norm, the 2-D
// resampling ops (upsample, sum/avg pooling and its adjoint) and dropout's device-side Philox mask.
#include <algorithm>
#include <cmath>

#include "core/philox.h"
#include "cuda/common.cuh"
#include "ops/image_kernels.h"
#include "ops/linalg_kernels.h"

namespace df::cudak {
namespace {

constexpr int kThreads = 256;
// Column buffers hold at most about this many elements (256 MiB in f32); larger problems run in
// chunks of images. One image never splits, so a huge single image still gets its full buffer.
constexpr int64_t kColumnBudget = int64_t(1) << 26;

#define DF_IMG_DISPATCH(dtype, ...)                             \
  switch (dtype) {                                              \
    case DType::F32: { using T = float; __VA_ARGS__; break; }   \
    case DType::F64: { using T = double; __VA_ARGS__; break; }  \
    case DType::BF16: { using T = bf16; __VA_ARGS__; break; }   \
    default: DF_FAIL("image op (CUDA): expected a floating dtype, got ", dtype_name(dtype)); \
  }

#define DF_GRID_STRIDE(i, n) \
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < (n); i += int64_t(gridDim.x) * blockDim.x)

template <class T> __device__ __forceinline__ T zero_of() { return store_as<T, compute_t<T>>(compute_t<T>(0)); }

// ---- convolution --------------------------------------------------------------------------------

// Images n0 .. n0 + nb - 1 of x (N, C, H, W) -> col: element (j, r, l) lands at j * sj + r * sr + l,
// with r = (c * kh + ki) * kw + kj over all C channels (group gr owns rows gr*K .. gr*K + K - 1) and
// l = oh * Wo + ow. Padding positions read 0. (sj, sr) = (R*L, L) gives per-image (R, L) blocks for
// batched GEMMs; (L, nb*L) gives one wide (R, nb*L) matrix.
template <class T>
__global__ void im2col_kernel(const T* __restrict__ x, T* __restrict__ col, ConvGeom g, int64_t n0, int64_t nb,
                              int64_t sj, int64_t sr) {
  const int64_t L = g.Ho * g.Wo, R = g.C * g.kh * g.kw, total = nb * R * L;
  DF_GRID_STRIDE(i, total) {
    int64_t l = i % L, t = i / L;
    int64_t r = t % R, j = t / R;
    int64_t ow = l % g.Wo, oh = l / g.Wo;
    int64_t kj = r % g.kw, t2 = r / g.kw;
    int64_t ki = t2 % g.kh, c = t2 / g.kh;
    int64_t ih = oh * g.stride - g.pad + ki, iw = ow * g.stride - g.pad + kj;
    T v = zero_of<T>();
    if (ih >= 0 && ih < g.H && iw >= 0 && iw < g.W) v = x[(((n0 + j) * g.C + c) * g.H + ih) * g.W + iw];
    col[j * sj + r * sr + l] = v;
  }
}

// The adjoint of im2col as a gather: every gx element of images n0 .. n0 + nb - 1 sums the column
// entries that read it, so each output is written exactly once (no atomics, no zero fill).
// col holds per-image (R, L) blocks, image j at j * R * L.
template <class T>
__global__ void col2im_kernel(const T* __restrict__ col, T* __restrict__ gx, ConvGeom g, int64_t n0, int64_t nb) {
  using A = compute_t<T>;
  const int64_t L = g.Ho * g.Wo, R = g.C * g.kh * g.kw, HW = g.H * g.W, total = nb * g.C * HW;
  DF_GRID_STRIDE(i, total) {
    int64_t iw = i % g.W, t = i / g.W;
    int64_t ih = t % g.H, t2 = t / g.H;
    int64_t c = t2 % g.C, j = t2 / g.C;
    const T* cj = col + j * R * L + c * g.kh * g.kw * L;
    A s = A(0);
    for (int64_t ki = 0; ki < g.kh; ++ki) {
      int64_t th = ih + g.pad - ki;  // = oh * stride when tap ki of output row oh reads ih
      if (th < 0) break;
      if (th % g.stride != 0) continue;
      int64_t oh = th / g.stride;
      if (oh >= g.Ho) continue;
      for (int64_t kj = 0; kj < g.kw; ++kj) {
        int64_t tw = iw + g.pad - kj;
        if (tw < 0) break;
        if (tw % g.stride != 0) continue;
        int64_t ow = tw / g.stride;
        if (ow >= g.Wo) continue;
        s += load_as<A>(cj[(ki * g.kw + kj) * L + oh * g.Wo + ow]);
      }
    }
    gx[(n0 * g.C) * HW + i] = store_as<T, A>(s);
  }
}

// gy images n0 .. n0 + nb - 1, (nb, O, L), transposed to the wide layout (O, nb * L).
template <class T>
__global__ void gather_planes_kernel(const T* __restrict__ gy, T* __restrict__ dst, int64_t n0, int64_t nb,
                                     int64_t O, int64_t L) {
  const int64_t total = nb * O * L;
  DF_GRID_STRIDE(i, total) {
    int64_t l = i % L, t = i / L;
    int64_t j = t % nb, o = t / nb;
    dst[i] = gy[((n0 + j) * O + o) * L + l];
  }
}

// out (N, O, L) = b[o] everywhere; the GEMMs then add onto it with beta = 1.
template <class T>
__global__ void fill_bias_kernel(const T* __restrict__ b, T* __restrict__ out, int64_t total, int64_t O, int64_t L) {
  DF_GRID_STRIDE(i, total) out[i] = b[(i / L) % O];
}

bool is_pointwise(const ConvGeom& g) { return g.kh == 1 && g.kw == 1 && g.stride == 1 && g.pad == 0; }

// A 1-D view of t starting `off` elements past its first element, for handing sub-matrices to the
// GEMM hook (which only reads data() and the dtype).
Tensor at(const Tensor& t, int64_t off) {
  return make_view(t, {std::max<int64_t>(t.numel() - off, 0)}, {1}, t.offset() + off);
}

void gemm(const char* op, bool ta, bool tb, int64_t m, int64_t n, int64_t k, const Tensor& a, int64_t lda,
          const Tensor& b, int64_t ldb, double beta, Tensor c, int64_t ldc, int64_t batch, int64_t sa, int64_t sb,
          int64_t sc) {
  auto fn = linalg_cuda_hooks().gemm;
  DF_CHECK(fn, op, ": the CUDA GEMM hook is not registered");
  fn(ta, tb, m, n, k, 1.0, a, lda, b, ldb, beta, c, ldc, batch, sa, sb, sc);
}

void zero_fill(const Tensor& t, const char* op) {
  if (t.numel() == 0) return;
  DF_CUDA_CHECK(cudaMemsetAsync(t.data(), 0, size_t(t.numel()) * dtype_size(t.dtype()), stream()), op);
}

int64_t images_per_chunk(int64_t N, int64_t per_image) {
  return std::max<int64_t>(1, std::min<int64_t>(N, kColumnBudget / std::max<int64_t>(1, per_image)));
}

void check_conv_operands(const char* op, const Tensor& a, const Tensor& b) {
  DF_CHECK(a.dtype() == b.dtype() && a.device() == Device::CUDA && b.device() == Device::CUDA, op,
           " (CUDA): operands ", a.desc(), " and ", b.desc(), " differ in dtype or device");
}

// out_g (Og, L) of image n = W_g (Og, K) @ col_g(n) (K, L): one strided-batched GEMM per group and
// chunk of images, with W shared across the batch (stride 0).
Tensor conv2d_cuda(const Tensor& x, const Tensor& w, const Tensor& b, const ConvGeom& g) {
  const char* op = "conv2d";
  check_conv_operands(op, x, w);
  Tensor out = empty({g.N, g.O, g.Ho, g.Wo}, x.dtype(), Device::CUDA);
  const int64_t L = g.L(), K = g.K(), Og = g.Og(), R = g.C * g.kh * g.kw, total = out.numel();
  if (total == 0) return out;
  if (b.defined()) {
    check_conv_operands(op, x, b);
    DF_IMG_DISPATCH(x.dtype(), {
      fill_bias_kernel<T><<<grid_for(total, kThreads), kThreads, 0, stream()>>>(b.data_as<T>(), out.data_as<T>(),
                                                                                 total, g.O, L);
    });
    DF_CUDA_LAUNCHED(op);
  } else if (K == 0) {
    zero_fill(out, op);
  }
  if (K == 0) return out;
  double beta = b.defined() ? 1.0 : 0.0;
  if (is_pointwise(g)) {
    for (int64_t gr = 0; gr < g.groups; ++gr)
      gemm(op, false, false, Og, L, K, at(w, gr * Og * K), K, at(x, gr * K * L), L, beta, at(out, gr * Og * L), L,
           g.N, 0, g.C * L, g.O * L);
    return out;
  }
  int64_t nb_max = images_per_chunk(g.N, R * L);
  Tensor col = empty({nb_max * R * L}, x.dtype(), Device::CUDA);
  for (int64_t n0 = 0; n0 < g.N; n0 += nb_max) {
    int64_t nb = std::min(nb_max, g.N - n0);
    DF_IMG_DISPATCH(x.dtype(), {
      im2col_kernel<T><<<grid_for(nb * R * L, kThreads), kThreads, 0, stream()>>>(x.data_as<T>(), col.data_as<T>(),
                                                                                   g, n0, nb, R * L, L);
    });
    DF_CUDA_LAUNCHED(op);
    for (int64_t gr = 0; gr < g.groups; ++gr)
      gemm(op, false, false, Og, L, K, at(w, gr * Og * K), K, at(col, gr * K * L), L, beta,
           at(out, (n0 * g.O + gr * Og) * L), L, nb, 0, R * L, g.O * L);
  }
  return out;
}

// col_g(n) (K, L) = W_g^T (K, Og) @ gy_g(n) (Og, L), then col2im into gx.
Tensor conv2d_input_grad_cuda(const Tensor& gy, const Tensor& w, const ConvGeom& g) {
  const char* op = "conv2d_input_grad";
  check_conv_operands(op, gy, w);
  Tensor gx = empty({g.N, g.C, g.H, g.W}, gy.dtype(), Device::CUDA);
  const int64_t L = g.L(), K = g.K(), Og = g.Og(), R = g.C * g.kh * g.kw;
  if (gx.numel() == 0) return gx;
  if (Og == 0 || L == 0) {
    zero_fill(gx, op);
    return gx;
  }
  if (is_pointwise(g)) {
    for (int64_t gr = 0; gr < g.groups; ++gr)
      gemm(op, true, false, K, L, Og, at(w, gr * Og * K), K, at(gy, gr * Og * L), L, 0.0, at(gx, gr * K * L), L,
           g.N, 0, g.O * L, g.C * L);
    return gx;
  }
  int64_t nb_max = images_per_chunk(g.N, R * L);
  Tensor col = empty({nb_max * R * L}, gy.dtype(), Device::CUDA);
  for (int64_t n0 = 0; n0 < g.N; n0 += nb_max) {
    int64_t nb = std::min(nb_max, g.N - n0);
    for (int64_t gr = 0; gr < g.groups; ++gr)
      gemm(op, true, false, K, L, Og, at(w, gr * Og * K), K, at(gy, (n0 * g.O + gr * Og) * L), L, 0.0,
           at(col, gr * K * L), L, nb, 0, g.O * L, R * L);
    DF_IMG_DISPATCH(gy.dtype(), {
      col2im_kernel<T><<<grid_for(nb * g.C * g.H * g.W, kThreads), kThreads, 0, stream()>>>(
          col.data_as<T>(), gx.data_as<T>(), g, n0, nb);
    });
    DF_CUDA_LAUNCHED(op);
  }
  return gx;
}

// gw_g (Og, K) = sum over chunks of gy_g (Og, nb*L) @ col_g^T (nb*L, K), images side by side in the
// wide layout so each chunk is one GEMM per group, accumulated with beta = 1 after the first.
Tensor conv2d_weight_grad_cuda(const Tensor& x, const Tensor& gy, const ConvGeom& g) {
  const char* op = "conv2d_weight_grad";
  check_conv_operands(op, x, gy);
  Tensor gw = empty({g.O, g.Cg(), g.kh, g.kw}, x.dtype(), Device::CUDA);
  const int64_t L = g.L(), K = g.K(), Og = g.Og(), R = g.C * g.kh * g.kw;
  if (gw.numel() == 0) return gw;
  if (g.N == 0 || L == 0) {
    zero_fill(gw, op);
    return gw;
  }
  int64_t nb_max = images_per_chunk(g.N, (R + g.O) * L);
  Tensor col = empty({nb_max * R * L}, x.dtype(), Device::CUDA);
  Tensor gyt = nb_max > 1 ? empty({nb_max * g.O * L}, x.dtype(), Device::CUDA) : Tensor();
  for (int64_t n0 = 0; n0 < g.N; n0 += nb_max) {
    int64_t nb = std::min(nb_max, g.N - n0), wide = nb * L;
    DF_IMG_DISPATCH(x.dtype(), {
      im2col_kernel<T><<<grid_for(nb * R * L, kThreads), kThreads, 0, stream()>>>(x.data_as<T>(), col.data_as<T>(),
                                                                                   g, n0, nb, L, wide);
    });
    DF_CUDA_LAUNCHED(op);
    // One image's gy planes are already (O, L) rows; several need the transpose to (O, nb*L).
    Tensor gsrc = gy;
    int64_t gbase = n0 * g.O * L;
    if (nb > 1) {
      DF_IMG_DISPATCH(x.dtype(), {
        gather_planes_kernel<T><<<grid_for(nb * g.O * L, kThreads), kThreads, 0, stream()>>>(
            gy.data_as<T>(), gyt.data_as<T>(), n0, nb, g.O, L);
      });
      DF_CUDA_LAUNCHED(op);
      gsrc = gyt;
      gbase = 0;
    }
    for (int64_t gr = 0; gr < g.groups; ++gr)
      gemm(op, false, true, Og, K, wide, at(gsrc, gbase + gr * Og * wide), wide, at(col, gr * K * wide), wide,
           n0 == 0 ? 0.0 : 1.0, at(gw, gr * Og * K), K, 1, 0, 0, 0);
  }
  return gw;
}

// ---- group_norm ---------------------------------------------------------------------------------

// One block per (n, group) row of M = Cg * S contiguous values: mean, then squared deviations
// (two passes, in double like the CPU), then y = x * a + shift per channel.
template <class T>
__global__ void group_norm_kernel(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ b,
                                  T* __restrict__ y, int64_t S, int64_t G, int64_t Cg, double eps) {
  __shared__ double smem[32];
  const int64_t M = Cg * S, blk = blockIdx.x;
  const T* xb = x + blk * M;
  T* yb = y + blk * M;
  double mu = 0;
  for (int64_t i = threadIdx.x; i < M; i += blockDim.x) mu += load_as<double>(xb[i]);
  mu = block_sum(mu, smem) / double(M);
  double ss = 0;
  for (int64_t i = threadIdx.x; i < M; i += blockDim.x) {
    double d = load_as<double>(xb[i]) - mu;
    ss += d * d;
  }
  ss = block_sum(ss, smem);
  double rs = 1.0 / sqrt(ss / double(M) + eps);
  int64_t c0 = (blk % G) * Cg;
  for (int64_t i = threadIdx.x; i < M; i += blockDim.x) {
    int64_t c = c0 + i / S;
    double a = rs * (w ? load_as<double>(w[c]) : 1.0);
    double sh = (b ? load_as<double>(b[c]) : 0.0) - mu * a;
    yb[i] = store_as<T, double>(load_as<double>(xb[i]) * a + sh);
  }
}

Tensor group_norm_cuda(const Tensor& x, const Tensor& w, const Tensor& b, int64_t N, int64_t C, int64_t S,
                       int64_t groups, double eps) {
  Tensor y = empty(x.shape(), x.dtype(), Device::CUDA);
  int64_t rows = N * groups, M = (C / groups) * S;
  if (y.numel() == 0 || rows == 0 || M == 0) return y;
  DF_CHECK(rows < (int64_t(1) << 31), "group_norm (CUDA): too many (n, group) rows for ", x.desc());
  DF_CHECK(rows * M == x.numel(), "group_norm (CUDA): ", x.desc(), " is not (", N, ", ", C, ", ", S, ")");
  for (const Tensor* p : {&w, &b})
    if (p->defined())
      DF_CHECK(p->dtype() == x.dtype() && p->device() == Device::CUDA && p->numel() == C,
               "group_norm (CUDA): weight/bias ", p->desc(), " does not match ", x.desc());
  int threads = 1024;
  while (threads > 32 && threads * 4 > M) threads >>= 1;
  DF_IMG_DISPATCH(x.dtype(), {
    group_norm_kernel<T><<<unsigned(rows), threads, 0, stream()>>>(
        x.data_as<T>(), w.defined() ? w.data_as<T>() : nullptr, b.defined() ? b.data_as<T>() : nullptr,
        y.data_as<T>(), S, groups, C / groups, eps);
  });
  DF_CUDA_LAUNCHED("group_norm");
  return y;
}

// ---- resampling ---------------------------------------------------------------------------------

// All planes are (P = N*C) contiguous H x W images; one thread per output element.
template <class T>
__global__ void upsample_kernel(const T* __restrict__ x, T* __restrict__ out, int64_t P, int64_t H, int64_t W,
                                int64_t f) {
  const int64_t Wo = W * f, Ho = H * f, total = P * Ho * Wo;
  DF_GRID_STRIDE(i, total) {
    int64_t ow = i % Wo, t = i / Wo;
    int64_t oh = t % Ho, p = t / Ho;
    out[i] = x[(p * H + oh / f) * W + ow / f];
  }
}

// out (P, Ho, Wo) = scale * sum of each k x k window at stride s of x (P, H, W).
template <class T>
__global__ void window_sum_kernel(const T* __restrict__ x, T* __restrict__ out, int64_t P, int64_t H, int64_t W,
                                  int64_t Ho, int64_t Wo, int64_t k, int64_t s, double scale) {
  using A = compute_t<T>;
  const int64_t total = P * Ho * Wo;
  DF_GRID_STRIDE(i, total) {
    int64_t ow = i % Wo, t = i / Wo;
    int64_t oh = t % Ho, p = t / Ho;
    const T* xp = x + (p * H + oh * s) * W + ow * s;
    A acc = A(0);
    for (int64_t a = 0; a < k; ++a)
      for (int64_t c = 0; c < k; ++c) acc += load_as<A>(xp[a * W + c]);
    out[i] = store_as<T, A>(acc * A(scale));
  }
}

// The adjoint of window_sum as a gather: x element (ih, iw) sums the outputs whose window covers
// it, oh in [ceil((ih - k + 1) / s), floor(ih / s)] within [0, Ho); uncovered edge pixels get 0.
template <class T>
__global__ void window_scatter_kernel(const T* __restrict__ g, T* __restrict__ out, int64_t P, int64_t H,
                                      int64_t W, int64_t Ho, int64_t Wo, int64_t k, int64_t s, double scale) {
  using A = compute_t<T>;
  const int64_t total = P * H * W;
  DF_GRID_STRIDE(i, total) {
    int64_t iw = i % W, t = i / W;
    int64_t ih = t % H, p = t / H;
    int64_t oh_lo = ih - k + 1 <= 0 ? 0 : (ih - k + 1 + s - 1) / s;
    int64_t oh_hi = min(ih / s, Ho - 1);
    int64_t ow_lo = iw - k + 1 <= 0 ? 0 : (iw - k + 1 + s - 1) / s;
    int64_t ow_hi = min(iw / s, Wo - 1);
    const T* gp = g + p * Ho * Wo;
    A acc = A(0);
    for (int64_t oh = oh_lo; oh <= oh_hi; ++oh)
      for (int64_t ow = ow_lo; ow <= ow_hi; ++ow) acc += load_as<A>(gp[oh * Wo + ow]);
    out[i] = store_as<T, A>(acc * A(scale));
  }
}

Tensor upsample_cuda(const Tensor& x, int64_t f) {
  int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  Tensor out = empty({N, C, H * f, W * f}, x.dtype(), Device::CUDA);
  int64_t total = out.numel();
  if (total == 0) return out;
  DF_IMG_DISPATCH(x.dtype(), {
    upsample_kernel<T><<<grid_for(total, kThreads), kThreads, 0, stream()>>>(x.data_as<T>(), out.data_as<T>(),
                                                                             N * C, H, W, f);
  });
  DF_CUDA_LAUNCHED("upsample_nearest2d");
  return out;
}

// Shared launcher: windows of k at stride s over x (N, C, H, W), scaled.
Tensor pool_cuda(const Tensor& x, int64_t k, int64_t s, double scale, const char* op) {
  int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  int64_t Ho = H >= k ? (H - k) / s + 1 : 0, Wo = W >= k ? (W - k) / s + 1 : 0;
  Tensor out = empty({N, C, Ho, Wo}, x.dtype(), Device::CUDA);
  int64_t total = out.numel();
  if (total == 0) return out;
  DF_IMG_DISPATCH(x.dtype(), {
    window_sum_kernel<T><<<grid_for(total, kThreads), kThreads, 0, stream()>>>(x.data_as<T>(), out.data_as<T>(),
                                                                               N * C, H, W, Ho, Wo, k, s, scale);
  });
  DF_CUDA_LAUNCHED(op);
  return out;
}

// sum_pool2d tiles the image with f x f blocks (the CPU and the composite assume H, W divide by f).
Tensor sum_pool_cuda(const Tensor& x, int64_t f) { return pool_cuda(x, f, f, 1.0, "sum_pool2d"); }

Tensor avg_pool_cuda(const Tensor& x, int64_t k, int64_t s) {
  return pool_cuda(x, k, s, 1.0 / double(k * k), "avg_pool2d");
}

Tensor avg_pool_backward_cuda(const Tensor& g, const Shape& xs, int64_t k, int64_t s) {
  int64_t N = xs[0], C = xs[1], H = xs[2], W = xs[3];
  int64_t Ho = H >= k ? (H - k) / s + 1 : 0, Wo = W >= k ? (W - k) / s + 1 : 0;
  DF_CHECK(g.dim() == 4 && g.size(0) == N && g.size(1) == C && g.size(2) == Ho && g.size(3) == Wo,
           "avg_pool2d_backward (CUDA): gradient ", g.desc(), " does not match the pooled shape of ", shape_str(xs));
  Tensor out = empty(xs, g.dtype(), Device::CUDA);
  int64_t total = out.numel();
  if (total == 0) return out;
  if (Ho == 0 || Wo == 0) {
    zero_fill(out, "avg_pool2d_backward");
    return out;
  }
  DF_IMG_DISPATCH(g.dtype(), {
    window_scatter_kernel<T><<<grid_for(total, kThreads), kThreads, 0, stream()>>>(
        g.data_as<T>(), out.data_as<T>(), N * C, H, W, Ho, Wo, k, s, 1.0 / double(k * k));
  });
  DF_CUDA_LAUNCHED("avg_pool2d_backward");
  return out;
}

// ---- dropout ------------------------------------------------------------------------------------

// The same per-element draw as the CPU (philox_uniform in double), so the mask is bit-identical;
// the kept value is x * keep with keep rounded to the arithmetic type first, as the CPU does.
template <class T>
__global__ void dropout_kernel(const T* __restrict__ x, T* __restrict__ out, int64_t n, double p, uint64_t seed,
                               uint64_t offset) {
  using A = compute_t<T>;
  const A keep = A(p < 1 ? 1.0 / (1.0 - p) : 0.0);
  DF_GRID_STRIDE(i, n) {
    bool drop = philox_uniform(seed, offset + uint64_t(i)) < p;
    out[i] = drop ? zero_of<T>() : store_as<T, A>(load_as<A>(x[i]) * keep);
  }
}

Tensor dropout_cuda(const Tensor& x, double p, uint64_t seed, uint64_t offset) {
  Tensor out = empty(x.shape(), x.dtype(), Device::CUDA);
  int64_t n = out.numel();
  if (n == 0) return out;
  DF_IMG_DISPATCH(x.dtype(), {
    dropout_kernel<T><<<grid_for(n, kThreads), kThreads, 0, stream()>>>(x.data_as<T>(), out.data_as<T>(), n, p, seed,
                                                                        offset);
  });
  DF_CUDA_LAUNCHED("dropout");
  return out;
}

// ---- max_pool2d's window argmax ---------------------------------------------------------------------

// One thread per output: the flat h * W + w of the window's first maximum (first NaN wins), the
// same scan order as the CPU loop, so ties and NaNs resolve identically.
template <class T>
__global__ void max_pool2d_indices_kernel(const T* __restrict__ x, int64_t* __restrict__ out, int64_t planes,
                                          int64_t H, int64_t W, int64_t Ho, int64_t Wo, int64_t k, int64_t s,
                                          int64_t pad) {
  using A = compute_t<T>;
  DF_GRID_STRIDE(i, planes * Ho * Wo) {
    int64_t ow = i % Wo, t = i / Wo, oh = t % Ho, p = t / Ho;
    const T* xq = x + p * H * W;
    int64_t h0 = oh * s - pad, w0 = ow * s - pad;
    int64_t best = -1;
    A bv = A(0);
    for (int64_t h = max(h0, int64_t(0)); h < min(h0 + k, H); ++h)
      for (int64_t w = max(w0, int64_t(0)); w < min(w0 + k, W); ++w) {
        A v = load_as<A>(xq[h * W + w]);
        if (best < 0 || v > bv || (v != v && bv == bv)) {
          best = h * W + w;
          bv = v;
        }
      }
    out[i] = best;
  }
}

Tensor max_pool2d_indices_cuda(const Tensor& x, int64_t k, int64_t s, int64_t pad) {
  int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  int64_t Ho = (H + 2 * pad - k) / s + 1, Wo = (W + 2 * pad - k) / s + 1;
  Tensor out = empty({N, C, Ho, Wo}, DType::I64, Device::CUDA);
  int64_t n = out.numel();
  if (n == 0) return out;
  DF_IMG_DISPATCH(x.dtype(), {
    max_pool2d_indices_kernel<T><<<grid_for(n, kThreads), kThreads, 0, stream()>>>(
        x.data_as<T>(), out.data_as<int64_t>(), N * C, H, W, Ho, Wo, k, s, pad);
  });
  DF_CUDA_LAUNCHED("max_pool2d");
  return out;
}

}  // namespace

void register_image() {
  ImageCudaHooks& h = image_cuda_hooks();
  h.conv2d = conv2d_cuda;
  h.conv2d_input_grad = conv2d_input_grad_cuda;
  h.conv2d_weight_grad = conv2d_weight_grad_cuda;
  h.group_norm = group_norm_cuda;
  h.upsample_nearest2d = upsample_cuda;
  h.sum_pool2d = sum_pool_cuda;
  h.avg_pool2d = avg_pool_cuda;
  h.avg_pool2d_backward = avg_pool_backward_cuda;
  h.dropout = dropout_cuda;
  h.max_pool2d_indices = max_pool2d_indices_cuda;
}

}  // namespace df::cudak
