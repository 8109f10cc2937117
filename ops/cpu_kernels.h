// CPU kernel helpers: dtype dispatch and strided/broadcast iteration. Kernels only, no autograd.
#pragma once
#include <array>
#include <vector>

#include "core/tensor.h"

namespace df {

// Run BODY with scalar_t bound to the C++ type of a CPU float dtype.
#define DF_DISPATCH_FLOAT(dtype, opname, ...)                                                  \
  do {                                                                                         \
    switch (dtype) {                                                                           \
      case ::df::DType::F32: { using scalar_t = float; __VA_ARGS__; break; }                   \
      case ::df::DType::F64: { using scalar_t = double; __VA_ARGS__; break; }                  \
      case ::df::DType::I64: DF_FAIL(opname, ": expected a floating dtype (f32 or f64 on CPU), got i64"); \
      default: DF_FAIL(opname, ": dtype ", ::df::dtype_name(dtype), " is not supported on CPU " \
                       "(use f32 or f64)");                                                    \
    }                                                                                          \
  } while (0)

// Ops compute in floating dtypes; i64 tensors hold indices. Every kernel entry point (the functions
// that pick the CPU loop or the CUDA launcher) calls this first, so an index tensor given to any
// other op fails the same way on both devices instead of being read as floats.
inline void check_floating(const Tensor& x, const char* op) {
  DF_CHECK(!x.defined() || is_floating(x.dtype()), op, ": expected a floating dtype (f32, f64 or bf16), got ",
           x.desc());
}

// Strides of `t` seen as a tensor of `shape` (t's shape broadcast to it): 0 along broadcast axes.
Shape broadcast_strides(const Tensor& t, const Shape& shape);
// NumPy broadcasting of two shapes; the error names the op.
Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op);
int64_t normalize_axis(int64_t axis, int64_t rank, const char* op);

// Visit every element of `shape` in row-major order; `fn(offsets)` gets, for each operand, the
// element offset computed from its strides. The last axis runs in a tight inner loop.
template <int K, class Fn>
void for_each_strided(const Shape& shape, const std::array<const int64_t*, K>& strides, Fn fn) {
  int64_t rank = (int64_t)shape.size();
  int64_t n = shape_numel(shape);
  if (n == 0) return;
  if (rank == 0) {
    std::array<int64_t, K> off{};
    fn(off, 1, std::array<int64_t, K>{});
    return;
  }
  int64_t inner = shape[rank - 1];
  std::array<int64_t, K> inner_stride;
  for (int k = 0; k < K; ++k) inner_stride[k] = strides[k][rank - 1];
  std::vector<int64_t> idx(rank, 0);
  std::array<int64_t, K> off{};
  int64_t outer = n / inner;
  for (int64_t o = 0; o < outer; ++o) {
    fn(off, inner, inner_stride);
    // advance the outer index (axes rank-2 .. 0)
    for (int64_t d = rank - 2; d >= 0; --d) {
      ++idx[d];
      for (int k = 0; k < K; ++k) off[k] += strides[k][d];
      if (idx[d] < shape[d]) break;
      for (int k = 0; k < K; ++k) off[k] -= strides[k][d] * shape[d];
      idx[d] = 0;
    }
  }
}

}  // namespace df
