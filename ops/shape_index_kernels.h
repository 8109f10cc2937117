// Kernels behind slice/cat/pad/flip/index_select and gather/scatter_add: CPU loops in
// ops/shape_index.cpp and ops/gather.cpp, CUDA launchers registered through ShapeIndexCudaHooks.
#pragma once
#include <vector>

#include "core/tensor.h"

namespace df {

// Write src into the (possibly strided) view dst of the same shape and dtype.
void assign_kernel(const Tensor& dst, const Tensor& src);
// x viewed as contiguous (O, A, I): out (O, K, I) with out[o, k, i] = x[o, index[k], i].
Tensor index_select_kernel(const Tensor& x, int64_t axis, const std::vector<int64_t>& index);
// g (O, K, I) into zeros `out_shape` (O, A, I): out[o, index[k], i] += g[o, k, i].
Tensor index_add_kernel(const Tensor& g, int64_t axis, const std::vector<int64_t>& index, const Shape& out_shape);

// Tensor-indexed kernels (ops/gather.cpp). index is i64 with x's rank; both walk index's shape p:
// gather: out[p] = x[p with p[axis] = index[p]] (out contiguous, index's shape);
// scatter_add: out = x (a contiguous copy), then out[p with p[axis] = index[p]] += src[p].
// An index outside [0, x.size(axis)) is an error naming `op`, the value and the bound.
Tensor gather_kernel(const Tensor& x, int64_t axis, const Tensor& index, const char* op);
Tensor scatter_add_kernel(const Tensor& x, int64_t axis, const Tensor& index, const Tensor& src, const char* op);
[[noreturn]] void index_out_of_range(const char* op, int64_t value, int64_t axis, const Tensor& x);

struct ShapeIndexCudaHooks {
  void (*assign)(const Tensor& dst, const Tensor& src) = nullptr;
  Tensor (*index_select)(const Tensor& x, int64_t O, int64_t A, int64_t I, const std::vector<int64_t>& index) = nullptr;
  Tensor (*index_add)(const Tensor& g, int64_t O, int64_t A, int64_t I, const std::vector<int64_t>& index) = nullptr;
  // Any strides; same contracts as gather_kernel / scatter_add_kernel (atomics: order not fixed).
  Tensor (*gather)(const Tensor& x, int64_t axis, const Tensor& index, const char* op) = nullptr;
  Tensor (*scatter_add)(const Tensor& x, int64_t axis, const Tensor& index, const Tensor& src, const char* op) = nullptr;
};
ShapeIndexCudaHooks& shape_index_cuda_hooks();

}  // namespace df
