// Internals shared by the CUDA translation units: error checks, the one stream, dtype conversion
// for loads/stores, block reductions, and strided index math (dims collapsed on the host, divisions
// on the device).
#pragma once
#include <cuda_runtime.h>

#include <array>
#include <cmath>
#include <cstdint>

#include "core/tensor.h"

#define DF_CUDA_CHECK(expr, opname)                                                         \
  do {                                                                                      \
    cudaError_t df_err_ = (expr);                                                           \
    if (df_err_ != cudaSuccess) DF_FAIL(opname, ": CUDA error ", cudaGetErrorString(df_err_)); \
  } while (0)
// Launch errors (bad configuration) are reported without synchronising the stream.
#define DF_CUDA_LAUNCHED(opname) DF_CUDA_CHECK(cudaGetLastError(), opname)

namespace df::cudak {

cudaStream_t stream();
int sm_count();
// Blocks for a grid-stride loop over n items of `per_block` each: enough to fill the GPU.
inline unsigned grid_for(int64_t n, int64_t per_block) {
  int64_t b = (n + per_block - 1) / per_block;
  int64_t cap = int64_t(sm_count()) * 16;
  return unsigned(b < 1 ? 1 : (b > cap ? cap : b));
}

void register_elementwise();
void register_reduce();
void register_linalg();
void register_shape_index();
void register_nn();
void register_image();
void register_optim();

// Arithmetic type of a storage type: bf16 computes (and accumulates) in f32.
template <class T> struct Compute { using type = T; };
template <> struct Compute<bf16> { using type = float; };
template <class T> using compute_t = typename Compute<T>::type;

template <class C, class T> __device__ __forceinline__ C load_as(T v) { return C(v); }
template <> __device__ __forceinline__ float load_as<float, bf16>(bf16 v) { return v.to_float(); }
template <> __device__ __forceinline__ double load_as<double, bf16>(bf16 v) { return v.to_float(); }
template <class T, class C> __device__ __forceinline__ T store_as(C v) { return T(v); }
// One cvt.rn instruction on sm_80+: rounds to nearest even exactly like bf16::from_float (a NaN
// stays a NaN, its payload may differ), instead of the integer rounding sequence.
template <> __device__ __forceinline__ bf16 store_as<bf16, float>(float v) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  bf16 r;
  asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r.bits) : "f"(v));
  return r;
#else
  return bf16::from_float(v);
#endif
}
template <> __device__ __forceinline__ bf16 store_as<bf16, double>(double v) { return bf16::from_float(float(v)); }
template <> __device__ __forceinline__ bf16 store_as<bf16, bf16>(bf16 v) { return v; }
template <> __device__ __forceinline__ bf16 load_as<bf16, bf16>(bf16 v) { return v; }
// Into i64 (index tensors): truncation with the CPU's rule for NaN and out-of-range values.
template <> __device__ __forceinline__ int64_t store_as<int64_t, double>(double v) { return float_to_i64(v); }
template <> __device__ __forceinline__ int64_t store_as<int64_t, float>(float v) { return float_to_i64(v); }

// Block-wide sum and max; every thread gets the result. smem holds one value per warp (32 suffice).
// The warps' values are combined in warp order, so the result does not depend on scheduling.
template <class A>
__device__ __forceinline__ A block_sum(A v, A* smem) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nw = blockDim.x >> 5;
  __syncthreads();  // smem may still be read from a previous call
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  A t = 0;
  for (int w = 0; w < nw; ++w) t += smem[w];
  return t;
}

template <class A>
__device__ __forceinline__ A block_max(A v, A* smem) {
  for (int o = 16; o > 0; o >>= 1) v = fmax(v, __shfl_xor_sync(0xffffffffu, v, o));
  int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nw = blockDim.x >> 5;
  __syncthreads();
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  A t = -INFINITY;
  for (int w = 0; w < nw; ++w) t = fmax(t, smem[w]);
  return t;
}

// 16 bytes of T, for vector loads/stores.
template <class T> struct alignas(16) Vec16 {
  static constexpr int N = 16 / sizeof(T);
  T v[N];
};

constexpr int kMaxDims = 8;

// Maps a linear (row-major) output index to element offsets of K operands. Built on the host
// from the output shape and each operand's (broadcast) strides, with mergeable dims collapsed.
template <int K>
struct Indexer {
  int ndim = 0;
  bool narrow = true;  // every index fits in 32 bits: cheaper division
  int64_t size[kMaxDims];
  int64_t stride[K][kMaxDims];

  __device__ __forceinline__ void offsets(int64_t i, int64_t (&off)[K]) const {
#pragma unroll
    for (int k = 0; k < K; ++k) off[k] = 0;
    if (narrow) {
      uint32_t r = uint32_t(i);
      for (int d = ndim - 1; d > 0; --d) {
        uint32_t s = uint32_t(size[d]);
        uint32_t q = r / s, m = r - q * s;
#pragma unroll
        for (int k = 0; k < K; ++k) off[k] += int64_t(m) * stride[k][d];
        r = q;
      }
      if (ndim > 0) {
#pragma unroll
        for (int k = 0; k < K; ++k) off[k] += int64_t(r) * stride[k][0];
      }
    } else {
      int64_t r = i;
      for (int d = ndim - 1; d > 0; --d) {
        int64_t q = r / size[d], m = r - q * size[d];
#pragma unroll
        for (int k = 0; k < K; ++k) off[k] += m * stride[k][d];
        r = q;
      }
      if (ndim > 0) {
#pragma unroll
        for (int k = 0; k < K; ++k) off[k] += r * stride[k][0];
      }
    }
  }
};

// Host side: collapse dims of `shape` where every operand steps contiguously across the pair,
// drop size-1 dims, and fill an Indexer. `strides[k]` has one entry per dim of `shape`.
template <int K>
Indexer<K> make_indexer(const Shape& shape, const std::array<Shape, K>& strides, const char* op) {
  Indexer<K> ix;
  std::vector<int64_t> sz;
  std::array<std::vector<int64_t>, K> st;
  for (size_t d = 0; d < shape.size(); ++d) {
    if (shape[d] == 1) continue;
    bool merge = !sz.empty();
    for (int k = 0; k < K && merge; ++k) merge = st[k].back() == strides[k][d] * shape[d];
    if (merge) {
      sz.back() *= shape[d];
      for (int k = 0; k < K; ++k) st[k].back() = strides[k][d];
    } else {
      sz.push_back(shape[d]);
      for (int k = 0; k < K; ++k) st[k].push_back(strides[k][d]);
    }
  }
  DF_CHECK((int)sz.size() <= kMaxDims, op, ": CUDA kernels handle at most ", kMaxDims,
           " non-mergeable dims, got shape ", shape_str(shape));
  ix.ndim = (int)sz.size();
  int64_t n = 1;
  for (int d = 0; d < ix.ndim; ++d) {
    ix.size[d] = sz[d];
    n *= sz[d];
    for (int k = 0; k < K; ++k) ix.stride[k][d] = st[k][d];
  }
  ix.narrow = n < (int64_t(1) << 31);
  return ix;
}

}  // namespace df::cudak
