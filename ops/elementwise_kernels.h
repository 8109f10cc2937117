// Elementwise kernels behind the unary/binary ops: CPU loops here, CUDA launchers in cuda/.
#pragma once
#include "core/tensor.h"
#include "ops/scalar_math.h"

namespace df {

// out = f(x) for contiguous-or-strided x; returns a new contiguous tensor.
Tensor unary_kernel(UnaryKind kind, const Tensor& x, double a = 0, double b = 0);
// out = f(a, b) with NumPy broadcasting.
Tensor binary_kernel(BinaryKind kind, const Tensor& a, const Tensor& b, const char* opname);
// out = cond ? a : b with broadcasting.
Tensor where_kernel(const Tensor& cond, const Tensor& a, const Tensor& b);
// Strided -> contiguous copy, also across dtypes.
Tensor copy_kernel(const Tensor& x, DType dtype);

// CUDA launchers (cuda/elementwise.cu) are registered here by the CUDA backend.
struct ElementwiseCudaHooks {
  Tensor (*unary)(UnaryKind, const Tensor&, double, double) = nullptr;
  Tensor (*binary)(BinaryKind, const Tensor&, const Tensor&) = nullptr;
  Tensor (*where)(const Tensor&, const Tensor&, const Tensor&) = nullptr;
  Tensor (*copy)(const Tensor&, DType) = nullptr;
};
ElementwiseCudaHooks& elementwise_cuda_hooks();

}  // namespace df
