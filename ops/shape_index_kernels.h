// Kernels behind slice/cat/pad/flip/index_select: CPU loops in ops/shape_index.cpp, CUDA launchers
// registered through ShapeIndexCudaHooks by the CUDA backend.
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

struct ShapeIndexCudaHooks {
  void (*assign)(const Tensor& dst, const Tensor& src) = nullptr;
  Tensor (*index_select)(const Tensor& x, int64_t O, int64_t A, int64_t I, const std::vector<int64_t>& index) = nullptr;
  Tensor (*index_add)(const Tensor& g, int64_t O, int64_t A, int64_t I, const std::vector<int64_t>& index) = nullptr;
};
ShapeIndexCudaHooks& shape_index_cuda_hooks();

}  // namespace df
