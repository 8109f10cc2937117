// CUDA elementwise kernels: unary/binary through the shared functors of ops/scalar_math.h
// (one formula for both backends), where, and strided copy/cast between f32, f64 and bf16.
// Contiguous aligned operands take 16-byte vector loads; everything else goes through Indexer.
#include <algorithm>
#include <cstdint>

#include "cuda/common.cuh"
#include "ops/cpu_kernels.h"
#include "ops/elementwise_kernels.h"

namespace df::cudak {
namespace {

constexpr int kThreads = 256;
constexpr int kUnroll = 4;  // vectors in flight per thread before the first use

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

// y = f(x), x and y contiguous and 16-byte aligned.
template <class T, class F>
__global__ void unary_vec_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t n, F f) {
  using C = compute_t<T>;
  using V = Vec16<T>;
  const V* xv = reinterpret_cast<const V*>(x);
  V* yv = reinterpret_cast<V*>(y);
  int64_t nv = n / V::N;
  int64_t step = int64_t(gridDim.x) * blockDim.x * kUnroll;
  for (int64_t base = int64_t(blockIdx.x) * blockDim.x * kUnroll + threadIdx.x; base < nv; base += step) {
    V a[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      int64_t i = base + int64_t(u) * blockDim.x;
      if (i < nv) a[u] = xv[i];
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      int64_t i = base + int64_t(u) * blockDim.x;
      if (i < nv) {
        V r;
#pragma unroll
        for (int j = 0; j < V::N; ++j) r.v[j] = store_as<T, C>(f(load_as<C>(a[u].v[j])));
        yv[i] = r;
      }
    }
  }
  for (int64_t i = nv * V::N + blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    y[i] = store_as<T, C>(f(load_as<C>(x[i])));
}

// out = f(a, b), out contiguous. mode 0: a, b contiguous and aligned like out; mode 1: a is one
// element; mode 2: b is one element; mode 3: b is a contiguous block of `inner` elements repeated
// along the leading dims (a bias); mode 4: the same for a. inner is a multiple of the vector width.
template <class T, class F>
__global__ void binary_vec_kernel(const T* __restrict__ a, const T* __restrict__ b, T* __restrict__ out,
                                  int64_t n, int mode, int64_t inner, F f) {
  using C = compute_t<T>;
  using V = Vec16<T>;
  const V* av = reinterpret_cast<const V*>(a);
  const V* bv = reinterpret_cast<const V*>(b);
  V* ov = reinterpret_cast<V*>(out);
  C as = mode == 1 ? load_as<C>(a[0]) : C(0), bs = mode == 2 ? load_as<C>(b[0]) : C(0);
  int64_t nv = n / V::N;
  uint32_t inner_v = uint32_t(inner / V::N);
  bool narrow = nv < (int64_t(1) << 32);
  auto rep = [&](int64_t i) -> int64_t { return narrow ? int64_t(uint32_t(i) % inner_v) : i % int64_t(inner_v); };
  int64_t step = int64_t(gridDim.x) * blockDim.x * kUnroll;
  for (int64_t base = int64_t(blockIdx.x) * blockDim.x * kUnroll + threadIdx.x; base < nv; base += step) {
    V x[kUnroll], y[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      int64_t i = base + int64_t(u) * blockDim.x;
      if (i < nv) {
        if (mode != 1) x[u] = av[mode == 4 ? rep(i) : i];
        if (mode != 2) y[u] = bv[mode == 3 ? rep(i) : i];
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      int64_t i = base + int64_t(u) * blockDim.x;
      if (i < nv) {
        V r;
#pragma unroll
        for (int j = 0; j < V::N; ++j) {
          C xa = mode == 1 ? as : load_as<C>(x[u].v[j]);
          C yb = mode == 2 ? bs : load_as<C>(y[u].v[j]);
          r.v[j] = store_as<T, C>(f(xa, yb));
        }
        ov[i] = r;
      }
    }
  }
  for (int64_t i = nv * V::N + blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    C xa = mode == 1 ? as : load_as<C>(a[mode == 4 ? i % inner : i]);
    C yb = mode == 2 ? bs : load_as<C>(b[mode == 3 ? i % inner : i]);
    out[i] = store_as<T, C>(f(xa, yb));
  }
}

template <class T, class F>
__global__ void binary_strided_kernel(const T* __restrict__ a, const T* __restrict__ b, T* __restrict__ out,
                                      int64_t n, Indexer<2> ix, F f) {
  using C = compute_t<T>;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    int64_t off[2];
    ix.offsets(i, off);
    out[i] = store_as<T, C>(f(load_as<C>(a[off[0]]), load_as<C>(b[off[1]])));
  }
}

template <class T>
__global__ void where_kernel(const T* __restrict__ c, const T* __restrict__ a, const T* __restrict__ b,
                             T* __restrict__ out, int64_t n, Indexer<3> ix) {
  using C = compute_t<T>;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    int64_t off[3];
    ix.offsets(i, off);
    out[i] = load_as<C>(c[off[0]]) != C(0) ? a[off[1]] : b[off[2]];
  }
}

template <class S, class D>
__device__ __forceinline__ D convert(S v) {
  if constexpr (std::is_same<S, D>::value) return v;
  else return store_as<D, double>(load_as<double>(v));
}

template <class S, class D>
__global__ void copy_contig_kernel(const S* __restrict__ x, D* __restrict__ out, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = convert<S, D>(x[i]);
}

template <class S, class D>
__global__ void copy_strided_kernel(const S* __restrict__ x, D* __restrict__ out, int64_t n, Indexer<1> ix) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    int64_t off[1];
    ix.offsets(i, off);
    out[i] = convert<S, D>(x[off[0]]);
  }
}

// ---- launchers ----

template <class S, class D>
void launch_copy(const Tensor& x, Tensor& out) {
  int64_t n = x.numel();
  unsigned g = grid_for(n, kThreads * 4);
  if (x.is_contiguous()) {
    copy_contig_kernel<S, D><<<g, kThreads, 0, stream()>>>(x.data_as<S>(), out.data_as<D>(), n);
  } else {
    Indexer<1> ix = make_indexer<1>(x.shape(), {x.strides()}, "copy");
    copy_strided_kernel<S, D><<<g, kThreads, 0, stream()>>>(x.data_as<S>(), out.data_as<D>(), n, ix);
  }
  DF_CUDA_LAUNCHED("copy");
}

template <class S>
void copy_from(const Tensor& x, Tensor& out) {
  switch (out.dtype()) {
    case DType::F32: launch_copy<S, float>(x, out); break;
    case DType::F64: launch_copy<S, double>(x, out); break;
    case DType::BF16: launch_copy<S, bf16>(x, out); break;
  }
}

Tensor copy_cuda(const Tensor& x, DType dtype) {
  Tensor out = empty(x.shape(), dtype, Device::CUDA);
  int64_t n = x.numel();
  if (n == 0) return out;
  if (dtype == x.dtype() && x.is_contiguous()) {
    DF_CUDA_CHECK(cudaMemcpyAsync(out.data(), x.data(), n * dtype_size(dtype), cudaMemcpyDeviceToDevice, stream()),
                  "copy");
    return out;
  }
  switch (x.dtype()) {
    case DType::F32: copy_from<float>(x, out); break;
    case DType::F64: copy_from<double>(x, out); break;
    case DType::BF16: copy_from<bf16>(x, out); break;
  }
  return out;
}

// Run BODY with T bound to the storage type of a CUDA dtype.
#define DF_CUDA_DISPATCH(dtype, ...)                            \
  switch (dtype) {                                              \
    case DType::F32: { using T = float; __VA_ARGS__; break; }   \
    case DType::F64: { using T = double; __VA_ARGS__; break; }  \
    case DType::BF16: { using T = bf16; __VA_ARGS__; break; }   \
  }

template <class F>
Tensor unary_launch(const Tensor& x0, F f, const char* name) {
  Tensor x = x0;
  if (!x.is_contiguous() || !aligned16(x.data())) x = copy_cuda(x, x.dtype());
  Tensor out = empty(x.shape(), x.dtype(), Device::CUDA);
  int64_t n = x.numel();
  if (n == 0) return out;
  DF_CUDA_DISPATCH(x.dtype(), {
    unsigned g = grid_for(n / Vec16<T>::N + 1, kThreads * kUnroll);
    unary_vec_kernel<T, F><<<g, kThreads, 0, stream()>>>(x.data_as<T>(), out.data_as<T>(), n, f);
  });
  DF_CUDA_LAUNCHED(name);
  return out;
}

Tensor unary_cuda(UnaryKind kind, const Tensor& x, double a, double b) {
  switch (kind) {
#define DF_CASE(name, expr) case UnaryKind::name: return unary_launch(x, name##F{a, b}, #name);
    DF_UNARY_FUNCTORS(DF_CASE)
#undef DF_CASE
  }
  DF_FAIL("unary (CUDA): unknown kind");
}

// t is contiguous, aligned, and equal to the trailing dims of `shape` (leading 1s aside), with a
// size that keeps 16-byte vectors inside one repetition.
bool trailing_block(const Tensor& t, const Shape& shape, int64_t vec) {
  if (!t.is_contiguous() || !aligned16(t.data()) || t.numel() < vec || t.numel() % vec) return false;
  Shape ts = t.shape();
  while (!ts.empty() && ts.front() == 1) ts.erase(ts.begin());
  if (ts.size() > shape.size()) return false;
  return std::equal(ts.begin(), ts.end(), shape.end() - ts.size());
}

template <class F>
Tensor binary_launch(const Tensor& a, const Tensor& b, F f, const char* name) {
  Shape shape = broadcast_shapes(a.shape(), b.shape(), name);
  Tensor out = empty(shape, a.dtype(), Device::CUDA);
  int64_t n = out.numel();
  if (n == 0) return out;
  bool a_full = a.shape() == shape && a.is_contiguous() && aligned16(a.data());
  bool b_full = b.shape() == shape && b.is_contiguous() && aligned16(b.data());
  int mode = -1;
  int64_t vec = 16 / int64_t(dtype_size(a.dtype()));
  if (a_full && b_full) mode = 0;
  else if (b_full && a.numel() == 1) mode = 1;
  else if (a_full && b.numel() == 1) mode = 2;
  else if (a_full && trailing_block(b, shape, vec)) mode = 3;
  else if (b_full && trailing_block(a, shape, vec)) mode = 4;
  int64_t inner = mode == 3 ? b.numel() : mode == 4 ? a.numel() : 1;
  DF_CUDA_DISPATCH(a.dtype(), {
    if (mode >= 0) {
      unsigned g = grid_for(n / Vec16<T>::N + 1, kThreads * kUnroll);
      binary_vec_kernel<T, F><<<g, kThreads, 0, stream()>>>(a.data_as<T>(), b.data_as<T>(), out.data_as<T>(), n,
                                                            mode, inner, f);
    } else {
      Indexer<2> ix = make_indexer<2>(shape, {broadcast_strides(a, shape), broadcast_strides(b, shape)}, name);
      binary_strided_kernel<T, F><<<grid_for(n, kThreads * 4), kThreads, 0, stream()>>>(
          a.data_as<T>(), b.data_as<T>(), out.data_as<T>(), n, ix, f);
    }
  });
  DF_CUDA_LAUNCHED(name);
  return out;
}

Tensor binary_cuda(BinaryKind kind, const Tensor& a, const Tensor& b) {
  switch (kind) {
#define DF_CASE(name, expr) case BinaryKind::name: return binary_launch(a, b, name##BF{}, #name);
    DF_BINARY_FUNCTORS(DF_CASE)
#undef DF_CASE
  }
  DF_FAIL("binary (CUDA): unknown kind");
}

Tensor where_cuda(const Tensor& c, const Tensor& a, const Tensor& b) {
  Shape shape = broadcast_shapes(broadcast_shapes(c.shape(), a.shape(), "where"), b.shape(), "where");
  Tensor out = empty(shape, a.dtype(), Device::CUDA);
  int64_t n = out.numel();
  if (n == 0) return out;
  Indexer<3> ix = make_indexer<3>(
      shape, {broadcast_strides(c, shape), broadcast_strides(a, shape), broadcast_strides(b, shape)}, "where");
  DF_CUDA_DISPATCH(a.dtype(), {
    where_kernel<T><<<grid_for(n, kThreads * 4), kThreads, 0, stream()>>>(c.data_as<T>(), a.data_as<T>(),
                                                                         b.data_as<T>(), out.data_as<T>(), n, ix);
  });
  DF_CUDA_LAUNCHED("where");
  return out;
}

}  // namespace

void register_elementwise() {
  ElementwiseCudaHooks& h = elementwise_cuda_hooks();
  h.unary = unary_cuda;
  h.binary = binary_cuda;
  h.where = where_cuda;
  h.copy = copy_cuda;
}

}  // namespace df::cudak
