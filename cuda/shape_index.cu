// CUDA kernels behind slice/cat/pad/flip/index_select (ShapeIndexCudaHooks): strided assign,
// row gather, and scatter-add (atomics, so repeated indices accumulate; order is not fixed).
#include <cuda_bf16.h>

#include "cuda/common.cuh"
#include "ops/shape_index_kernels.h"

namespace df::cudak {
namespace {

template <class T>
__global__ void assign_kernel(T* __restrict__ dst, const T* __restrict__ src, int64_t n, Indexer<2> ix) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    int64_t off[2];
    ix.offsets(i, off);
    dst[off[0]] = src[off[1]];
  }
}

template <class T>
__global__ void gather_kernel(const T* __restrict__ x, T* __restrict__ out, const int64_t* __restrict__ idx,
                              int64_t K, int64_t A, int64_t I, int64_t n) {
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < n; t += int64_t(gridDim.x) * blockDim.x) {
    int64_t i = t % I, ok = t / I, k = ok % K, o = ok / K;
    out[t] = x[(o * A + idx[k]) * I + i];
  }
}

__device__ __forceinline__ void atomic_add(float* p, float v) { atomicAdd(p, v); }
__device__ __forceinline__ void atomic_add(double* p, double v) { atomicAdd(p, v); }
__device__ __forceinline__ void atomic_add(bf16* p, bf16 v) {
  atomicAdd(reinterpret_cast<__nv_bfloat16*>(p), __ushort_as_bfloat16(v.bits));
}

template <class T>
__global__ void scatter_add_kernel(const T* __restrict__ g, T* __restrict__ out, const int64_t* __restrict__ idx,
                                   int64_t K, int64_t A, int64_t I, int64_t n) {
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < n; t += int64_t(gridDim.x) * blockDim.x) {
    int64_t i = t % I, ok = t / I, k = ok % K, o = ok / K;
    atomic_add(&out[(o * A + idx[k]) * I + i], g[t]);
  }
}

#define DF_CUDA_DISPATCH(dtype, ...)                            \
  switch (dtype) {                                              \
    case DType::F32: { using T = float; __VA_ARGS__; break; }   \
    case DType::F64: { using T = double; __VA_ARGS__; break; }  \
    case DType::BF16: { using T = bf16; __VA_ARGS__; break; }   \
  }

void assign_cuda(const Tensor& dst, const Tensor& src) {
  int64_t n = dst.numel();
  if (n == 0) return;
  Indexer<2> ix = make_indexer<2>(dst.shape(), {dst.strides(), src.strides()}, "assign");
  DF_CUDA_DISPATCH(dst.dtype(), {
    assign_kernel<T><<<grid_for(n, 1024), 256, 0, stream()>>>(dst.data_as<T>(), src.data_as<T>(), n, ix);
  });
  DF_CUDA_LAUNCHED("assign");
}

// The index list goes to the device through the async copy (pageable source, staged at once).
Tensor device_index(const std::vector<int64_t>& index, int64_t A, const char* op) {
  for (auto v : index) DF_CHECK(v >= 0 && v < A, op, ": index ", v, " out of range for axis of size ", A);
  Tensor t = empty({(int64_t)index.size()}, DType::F64, Device::CUDA);  // 8-byte slots hold int64
  if (!index.empty())
    device_hooks().copy(t.data(), Device::CUDA, index.data(), Device::CPU, index.size() * sizeof(int64_t));
  return t;
}

Tensor index_select_cuda(const Tensor& x, int64_t O, int64_t A, int64_t I, const std::vector<int64_t>& index) {
  int64_t K = (int64_t)index.size(), n = O * K * I;
  Tensor out = empty({O, K, I}, x.dtype(), Device::CUDA);
  if (n == 0) return out;
  Tensor idx = device_index(index, A, "index_select");
  DF_CUDA_DISPATCH(x.dtype(), {
    gather_kernel<T><<<grid_for(n, 1024), 256, 0, stream()>>>(x.data_as<T>(), out.data_as<T>(),
                                                               static_cast<const int64_t*>(idx.data()), K, A, I, n);
  });
  DF_CUDA_LAUNCHED("index_select");
  return out;
}

Tensor index_add_cuda(const Tensor& g, int64_t O, int64_t A, int64_t I, const std::vector<int64_t>& index) {
  int64_t K = (int64_t)index.size(), n = O * K * I;
  Tensor out = empty({O, A, I}, g.dtype(), Device::CUDA);
  if (out.numel() > 0)
    DF_CUDA_CHECK(cudaMemsetAsync(out.data(), 0, out.numel() * dtype_size(g.dtype()), stream()), "index_add");
  if (n == 0) return out;
  Tensor idx = device_index(index, A, "index_add");
  DF_CUDA_DISPATCH(g.dtype(), {
    scatter_add_kernel<T><<<grid_for(n, 1024), 256, 0, stream()>>>(g.data_as<T>(), out.data_as<T>(),
                                                                   static_cast<const int64_t*>(idx.data()), K, A, I, n);
  });
  DF_CUDA_LAUNCHED("index_add");
  return out;
}

}  // namespace

void register_shape_index() {
  ShapeIndexCudaHooks& h = shape_index_cuda_hooks();
  h.assign = assign_cuda;
  h.index_select = index_select_cuda;
  h.index_add = index_add_cuda;
}

}  // namespace df::cudak
