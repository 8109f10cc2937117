// CUDA elementwise kernels: unary/binary through the shared functors of ops/scalar_math.h
// (one formula for both backends), where, and strided copy/cast between f32, f64 and bf16.
// Contiguous aligned operands take 16-byte vector loads (bf16: 8 per load, f32 math); copies of
// views with the last two dims swapped take a shared-memory tiled transpose; the rest uses Indexer.
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

// Blocks for the vector kernels: one chunk of kThreads * kUnroll vectors per block. Many short
// blocks let the hardware balance the tail, where a grid sized to the GPU leaves some SMs a whole
// extra loop iteration; the kernels still stride, so a cap on the grid stays correct.
unsigned chunk_grid(int64_t vectors) {
  int64_t per_block = int64_t(kThreads) * kUnroll;
  int64_t b = (vectors + per_block - 1) / per_block;
  return unsigned(std::max<int64_t>(1, std::min<int64_t>(b, int64_t(1) << 30)));
}

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

// Where the operands of a vectorised binary op come from; out is contiguous and 16-byte aligned.
// Same: a and b contiguous, aligned, of out's shape. ScalarA/ScalarB: that operand is one element.
// BlockB/BlockA: that operand is a contiguous block of `inner` elements repeated along the leading
// dims (a bias), inner a multiple of the vector width. A template argument, so each kernel holds
// only its own loads and no per-element branch.
enum class BinMode { Same, ScalarA, ScalarB, BlockB, BlockA };

template <BinMode M, class T, class F>
__global__ void binary_vec_kernel(const T* __restrict__ a, const T* __restrict__ b, T* __restrict__ out,
                                  int64_t n, int64_t inner, F f) {
  using C = compute_t<T>;
  using V = Vec16<T>;
  constexpr bool a_vec = M != BinMode::ScalarA, b_vec = M != BinMode::ScalarB;
  const V* av = reinterpret_cast<const V*>(a);
  const V* bv = reinterpret_cast<const V*>(b);
  V* ov = reinterpret_cast<V*>(out);
  const C as = a_vec ? C(0) : load_as<C>(a[0]), bs = b_vec ? C(0) : load_as<C>(b[0]);
  int64_t nv = n / V::N;
  uint32_t inner_v = uint32_t(inner / V::N);
  bool narrow = nv < (int64_t(1) << 32);
  auto rep = [&](int64_t i) -> int64_t { return narrow ? int64_t(uint32_t(i) % inner_v) : i % int64_t(inner_v); };
  auto a_at = [&](int64_t i) { return M == BinMode::BlockA ? rep(i) : i; };
  auto b_at = [&](int64_t i) { return M == BinMode::BlockB ? rep(i) : i; };
  int64_t step = int64_t(gridDim.x) * blockDim.x * kUnroll;
  for (int64_t base = int64_t(blockIdx.x) * blockDim.x * kUnroll + threadIdx.x; base < nv; base += step) {
    V x[kUnroll], y[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      int64_t i = base + int64_t(u) * blockDim.x;
      if (i < nv) {
        if constexpr (a_vec) x[u] = av[a_at(i)];
        if constexpr (b_vec) y[u] = bv[b_at(i)];
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      int64_t i = base + int64_t(u) * blockDim.x;
      if (i < nv) {
        V r;
#pragma unroll
        for (int j = 0; j < V::N; ++j) {
          C xa, yb;
          if constexpr (a_vec) xa = load_as<C>(x[u].v[j]); else xa = as;
          if constexpr (b_vec) yb = load_as<C>(y[u].v[j]); else yb = bs;
          r.v[j] = store_as<T, C>(f(xa, yb));
        }
        ov[i] = r;
      }
    }
  }
  for (int64_t i = nv * V::N + blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    C xa = a_vec ? load_as<C>(a[M == BinMode::BlockA ? i % inner : i]) : as;
    C yb = b_vec ? load_as<C>(b[M == BinMode::BlockB ? i % inner : i]) : bs;
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

// Exact for every float pair: f32 and bf16 meet in f32 (a bf16 store is one cvt), anything with f64
// in f64. From i64 one rounding as on the CPU (bf16 through f32); into i64 the CPU's truncation rule.
template <class S, class D>
__device__ __forceinline__ D convert(S v) {
  if constexpr (std::is_same<S, D>::value) return v;
  else if constexpr (std::is_same<D, int64_t>::value) return store_as<int64_t, double>(load_as<double>(v));
  else if constexpr (std::is_same<S, int64_t>::value && std::is_same<D, bf16>::value) return store_as<bf16, float>(float(v));
  else if constexpr (std::is_same<S, int64_t>::value) return D(v);
  else if constexpr (std::is_same<S, double>::value || std::is_same<D, double>::value)
    return store_as<D, double>(load_as<double>(v));
  else return store_as<D, float>(load_as<float>(v));
}

template <class S, class D>
__global__ void copy_contig_kernel(const S* __restrict__ x, D* __restrict__ out, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = convert<S, D>(x[i]);
}

// Eight elements per thread, read and written as whole packs (16 or 32 bytes: vector loads and
// stores); used when both pointers are aligned to their pack size. The tail goes element by element.
template <class T>
struct alignas(8 * sizeof(T)) Pack8 {
  T v[8];
};

template <class S, class D>
__global__ void copy_pack8_kernel(const S* __restrict__ x, D* __restrict__ out, int64_t n) {
  const int64_t packs = n / 8;
  const Pack8<S>* xp = reinterpret_cast<const Pack8<S>*>(x);
  Pack8<D>* op = reinterpret_cast<Pack8<D>*>(out);
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < packs; i += int64_t(gridDim.x) * blockDim.x) {
    Pack8<S> a = xp[i];
    Pack8<D> b;
#pragma unroll
    for (int k = 0; k < 8; ++k) b.v[k] = convert<S, D>(a.v[k]);
    op[i] = b;
  }
  const int64_t t = packs * 8 + blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (t < n) out[t] = convert<S, D>(x[t]);
}

template <class S, class D>
__global__ void copy_strided_kernel(const S* __restrict__ x, D* __restrict__ out, int64_t n, Indexer<1> ix) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    int64_t off[1];
    ix.offsets(i, off);
    out[i] = convert<S, D>(x[off[0]]);
  }
}

constexpr int kTile = 64;     // a transpose block turns one kTile x kTile tile
constexpr int kTileRows = 8;  // with 32 x kTileRows threads, 16 elements each

// out[b][r][c] = x[b * batch_stride + c * ld + r], out contiguous (batch, rows, cols). Reads along r
// and writes along c are both coalesced; the turn goes through shared memory, whose rows are padded
// by one element so reading a tile column hits 32 different banks.
template <class S, class D>
__global__ void transpose_kernel(const S* __restrict__ x, D* __restrict__ out, int64_t batch,
                                 int64_t batch_stride, int64_t rows, int64_t cols, int64_t ld) {
  using C = compute_t<S>;
  __shared__ C tile[kTile][kTile + 1];  // tile[c - c0][r - r0]
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t r0 = int64_t(blockIdx.x) * kTile, c0 = int64_t(blockIdx.y) * kTile;
  for (int64_t b = blockIdx.z; b < batch; b += gridDim.z) {
    const S* xb = x + b * batch_stride;
    D* ob = out + b * rows * cols;
#pragma unroll
    for (int k = 0; k < kTile; k += kTileRows)
#pragma unroll
      for (int h = 0; h < kTile; h += 32) {
        int64_t c = c0 + ty + k, r = r0 + tx + h;
        if (c < cols && r < rows) tile[ty + k][tx + h] = load_as<C>(xb[c * ld + r]);
      }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < kTile; k += kTileRows)
#pragma unroll
      for (int h = 0; h < kTile; h += 32) {
        int64_t r = r0 + ty + k, c = c0 + tx + h;
        if (r < rows && c < cols) ob[r * cols + c] = convert<C, D>(tile[tx + h][ty + k]);
      }
    __syncthreads();  // the tile is refilled for the next batch entry
  }
}

// x as a batch of transposed matrices: dims -2, -1 of size (rows, cols) with strides (1, ld), the
// leading dims collapsing into one batch dim of one stride. That is a contiguous (..., C, R) tensor
// with its last two dims swapped (or a row slice of one), the case the tiled kernel serves.
struct TransposedView {
  int64_t batch = 1, batch_stride = 0, rows = 0, cols = 0, ld = 0;
};

bool as_transposed(const Tensor& x, TransposedView& t) {
  const Shape& sh = x.shape();
  const Shape& st = x.strides();
  int nd = int(sh.size());
  if (nd < 2) return false;
  t.rows = sh[nd - 2];
  t.cols = sh[nd - 1];
  t.ld = st[nd - 1];
  // Thinner matrices waste most of a tile; the strided copy serves them.
  if (t.rows < 16 || t.cols < 16 || st[nd - 2] != 1 || t.ld < t.rows) return false;
  if ((t.cols + kTile - 1) / kTile > 65535) return false;  // gridDim.y
  bool any = false;
  for (int d = nd - 3; d >= 0; --d) {
    if (sh[d] == 1) continue;
    if (!any) {
      t.batch = sh[d];
      t.batch_stride = st[d];
      any = true;
    } else if (st[d] == t.batch_stride * t.batch) {
      t.batch *= sh[d];
    } else {
      return false;
    }
  }
  return true;
}

// ---- launchers ----

template <class S, class D>
void launch_copy(const Tensor& x, Tensor& out) {
  int64_t n = x.numel();
  unsigned g = grid_for(n, kThreads * 4);
  TransposedView t;
  const bool packs = sizeof(S) <= 4 && sizeof(D) <= 4 &&
                     reinterpret_cast<uintptr_t>(x.data()) % (8 * sizeof(S)) == 0 &&
                     reinterpret_cast<uintptr_t>(out.data()) % (8 * sizeof(D)) == 0;
  if (x.is_contiguous() && packs) {
    // One pack per thread in short blocks (as chunk_grid's kernels): no block gets an extra pass.
    const unsigned blocks = unsigned(std::max<int64_t>(1, std::min<int64_t>((n / 8 + kThreads - 1) / kThreads, 1 << 30)));
    copy_pack8_kernel<S, D><<<blocks, kThreads, 0, stream()>>>(
        x.data_as<S>(), out.data_as<D>(), n);
  } else if (x.is_contiguous()) {
    copy_contig_kernel<S, D><<<g, kThreads, 0, stream()>>>(x.data_as<S>(), out.data_as<D>(), n);
  } else if (as_transposed(x, t)) {
    dim3 grid(unsigned((t.rows + kTile - 1) / kTile), unsigned((t.cols + kTile - 1) / kTile),
              unsigned(std::min<int64_t>(t.batch, 65535)));
    transpose_kernel<S, D><<<grid, dim3(32, kTileRows), 0, stream()>>>(x.data_as<S>(), out.data_as<D>(), t.batch,
                                                                       t.batch_stride, t.rows, t.cols, t.ld);
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
    case DType::I64: launch_copy<S, int64_t>(x, out); break;
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
    case DType::I64: copy_from<int64_t>(x, out); break;
  }
  return out;
}

// Run BODY with T bound to the storage type of a CUDA float dtype (ops/ rejects i64 before this).
#define DF_CUDA_DISPATCH(dtype, ...)                            \
  switch (dtype) {                                              \
    case DType::F32: { using T = float; __VA_ARGS__; break; }   \
    case DType::F64: { using T = double; __VA_ARGS__; break; }  \
    case DType::BF16: { using T = bf16; __VA_ARGS__; break; }   \
    default: DF_FAIL("elementwise (CUDA): expected a floating dtype, got ", dtype_name(dtype)); \
  }

template <class F>
Tensor unary_launch(const Tensor& x0, F f, const char* name) {
  Tensor x = x0;
  if (!x.is_contiguous() || !aligned16(x.data())) x = copy_cuda(x, x.dtype());
  Tensor out = empty(x.shape(), x.dtype(), Device::CUDA);
  int64_t n = x.numel();
  if (n == 0) return out;
  DF_CUDA_DISPATCH(x.dtype(), {
    unary_vec_kernel<T, F><<<chunk_grid(n / Vec16<T>::N + 1), kThreads, 0, stream()>>>(x.data_as<T>(),
                                                                                     out.data_as<T>(), n, f);
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

template <BinMode M, class T, class F>
void launch_binary_vec(const Tensor& a, const Tensor& b, Tensor& out, int64_t inner, F f) {
  int64_t n = out.numel();
  binary_vec_kernel<M, T, F><<<chunk_grid(n / Vec16<T>::N + 1), kThreads, 0, stream()>>>(
      a.data_as<T>(), b.data_as<T>(), out.data_as<T>(), n, inner, f);
}

template <class F>
Tensor binary_launch(const Tensor& a, const Tensor& b, F f, const char* name) {
  Shape shape = broadcast_shapes(a.shape(), b.shape(), name);
  Tensor out = empty(shape, a.dtype(), Device::CUDA);
  int64_t n = out.numel();
  if (n == 0) return out;
  bool a_full = a.shape() == shape && a.is_contiguous() && aligned16(a.data());
  bool b_full = b.shape() == shape && b.is_contiguous() && aligned16(b.data());
  int64_t vec = 16 / int64_t(dtype_size(a.dtype()));
  DF_CUDA_DISPATCH(a.dtype(), {
    if (a_full && b_full) launch_binary_vec<BinMode::Same, T>(a, b, out, 1, f);
    else if (b_full && a.numel() == 1) launch_binary_vec<BinMode::ScalarA, T>(a, b, out, 1, f);
    else if (a_full && b.numel() == 1) launch_binary_vec<BinMode::ScalarB, T>(a, b, out, 1, f);
    else if (a_full && trailing_block(b, shape, vec)) launch_binary_vec<BinMode::BlockB, T>(a, b, out, b.numel(), f);
    else if (b_full && trailing_block(a, shape, vec)) launch_binary_vec<BinMode::BlockA, T>(a, b, out, a.numel(), f);
    else {
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
