// Reduction kernels shared by the reduce ops and other families (norms, losses).
#pragma once
#include "core/tensor.h"

namespace df {

// Max and Min propagate NaN: a reduced set that contains a NaN gives NaN (as PyTorch).
enum class ReduceKind { Sum, Max, Min };
inline const char* reduce_name(ReduceKind k) { return k == ReduceKind::Sum ? "sum" : k == ReduceKind::Max ? "max" : "min"; }

// Reduce the sorted, normalised `axes` of x (empty = all); result has the non-keepdim shape.
Tensor reduce_kernel(ReduceKind kind, const Tensor& x, const Shape& axes);
Shape normalize_axes(const Shape& axes, int64_t rank, const char* op);
Shape reduced_shape(const Shape& shape, const Shape& axes, bool keepdim);

// CUDA: reduce a contiguous (O, R, I) tensor over R into a new contiguous (O, I) tensor.
struct ReduceCudaHooks {
  Tensor (*reduce)(ReduceKind, const Tensor& x, int64_t O, int64_t R, int64_t I) = nullptr;
};
ReduceCudaHooks& reduce_cuda_hooks();

}  // namespace df
