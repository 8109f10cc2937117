// CUDA kernels behind slice/cat/pad/flip/index_select and gather/scatter_add (ShapeIndexCudaHooks):
// strided assign, row gather, and scatter-add (atomics, so repeated indices accumulate; order is not
// fixed). The tensor-indexed kernels flag an out-of-range index on the device; the launcher reads
// the flag back (one synchronisation) and raises the error the CPU path gives.
#include <cuda_bf16.h>

#include "cuda/common.cuh"
#include "ops/elementwise_kernels.h"
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

// The first out-of-range index seen: err[0] becomes 1 once, err[1] holds the value.
__device__ __forceinline__ void flag_index(unsigned long long* err, int64_t k) {
  if (atomicCAS(err, 0ull, 1ull) == 0ull) err[1] = static_cast<unsigned long long>(k);
}

// out[i] = x[off_x + index[off_i] * xa] over index's shape (Indexer operands: index, x with the axis
// stride zeroed). A bad index writes 0 and raises the flag.
template <class T>
__global__ void gather_index_kernel(const T* __restrict__ x, const int64_t* __restrict__ index, T* __restrict__ out,
                                    int64_t n, Indexer<2> ix, int64_t A, int64_t xa, unsigned long long* err) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    int64_t off[2];
    ix.offsets(i, off);
    int64_t k = index[off[0]];
    if (k < 0 || k >= A) {
      flag_index(err, k);
      out[i] = store_as<T, float>(0.f);
      continue;
    }
    out[i] = x[off[1] + k * xa];
  }
}

// out[off_o + index[off_i] * oa] += src[off_s] (Indexer operands: index, src, out with the axis
// stride zeroed).
template <class T>
__global__ void scatter_add_index_kernel(T* __restrict__ out, const int64_t* __restrict__ index,
                                         const T* __restrict__ src, int64_t n, Indexer<3> ix, int64_t A, int64_t oa,
                                         unsigned long long* err) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    int64_t off[3];
    ix.offsets(i, off);
    int64_t k = index[off[0]];
    if (k < 0 || k >= A) {
      flag_index(err, k);
      continue;
    }
    atomic_add(&out[off[2] + k * oa], src[off[1]]);
  }
}

#define DF_CUDA_DISPATCH(dtype, ...)                            \
  switch (dtype) {                                              \
    case DType::F32: { using T = float; __VA_ARGS__; break; }   \
    case DType::F64: { using T = double; __VA_ARGS__; break; }  \
    case DType::BF16: { using T = bf16; __VA_ARGS__; break; }   \
    default: DF_FAIL("index op (CUDA): expected a floating dtype, got ", dtype_name(dtype)); \
  }

// A plain copy, moved as same-size words, so every dtype (i64 too) takes this path.
void assign_cuda(const Tensor& dst, const Tensor& src) {
  int64_t n = dst.numel();
  if (n == 0) return;
  Indexer<2> ix = make_indexer<2>(dst.shape(), {dst.strides(), src.strides()}, "assign");
  auto launch = [&](auto word) {
    using W = decltype(word);
    assign_kernel<W><<<grid_for(n, 1024), 256, 0, stream()>>>(dst.data_as<W>(), src.data_as<W>(), n, ix);
  };
  switch (dtype_size(dst.dtype())) {
    case 2: launch(uint16_t()); break;
    case 4: launch(uint32_t()); break;
    case 8: launch(uint64_t()); break;
    default: DF_FAIL("assign (CUDA): unexpected element size for ", dst.desc());
  }
  DF_CUDA_LAUNCHED("assign");
}

// A zeroed two-word flag for the index kernels, and the check after them (reads it back: a sync).
Tensor index_flag() {
  Tensor err = empty({2}, DType::I64, Device::CUDA);
  DF_CUDA_CHECK(cudaMemsetAsync(err.data(), 0, 2 * sizeof(int64_t), stream()), "index flag");
  return err;
}
void check_index_flag(const Tensor& err, const char* op, int64_t axis, const Tensor& x) {
  int64_t host[2] = {0, 0};
  DF_CUDA_CHECK(cudaMemcpyAsync(host, err.data(), sizeof host, cudaMemcpyDeviceToHost, stream()), op);
  DF_CUDA_CHECK(cudaStreamSynchronize(stream()), op);
  if (host[0]) index_out_of_range(op, host[1], axis, x);
}

Shape strides_without(const Tensor& t, int64_t axis) {
  Shape s = t.strides();
  s[axis] = 0;
  return s;
}

Tensor gather_cuda(const Tensor& x, int64_t axis, const Tensor& index, const char* op) {
  Tensor out = empty(index.shape(), x.dtype(), Device::CUDA);
  int64_t n = out.numel();
  if (n == 0) return out;
  Indexer<2> ix = make_indexer<2>(index.shape(), {index.strides(), strides_without(x, axis)}, op);
  Tensor err = index_flag();
  auto* ep = static_cast<unsigned long long*>(err.data());
  DF_CUDA_DISPATCH(x.dtype(), {
    gather_index_kernel<T><<<grid_for(n, 1024), 256, 0, stream()>>>(
        x.data_as<T>(), index.data_as<int64_t>(), out.data_as<T>(), n, ix, x.shape()[axis], x.strides()[axis], ep);
  });
  DF_CUDA_LAUNCHED(op);
  check_index_flag(err, op, axis, x);
  return out;
}

Tensor scatter_add_cuda(const Tensor& x, int64_t axis, const Tensor& index, const Tensor& src, const char* op) {
  Tensor out = elementwise_cuda_hooks().copy(x, x.dtype());
  int64_t n = index.numel();
  if (n == 0) return out;
  Indexer<3> ix = make_indexer<3>(index.shape(), {index.strides(), src.strides(), strides_without(out, axis)}, op);
  Tensor err = index_flag();
  auto* ep = static_cast<unsigned long long*>(err.data());
  DF_CUDA_DISPATCH(x.dtype(), {
    scatter_add_index_kernel<T><<<grid_for(n, 1024), 256, 0, stream()>>>(
        out.data_as<T>(), index.data_as<int64_t>(), src.data_as<T>(), n, ix, out.shape()[axis], out.strides()[axis],
        ep);
  });
  DF_CUDA_LAUNCHED(op);
  check_index_flag(err, op, axis, x);
  return out;
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
  h.gather = gather_cuda;
  h.scatter_add = scatter_add_cuda;
}

}  // namespace df::cudak
