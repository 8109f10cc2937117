// GEMM entry points behind matmul and linear: the CPU path calls OpenBLAS, a CUDA backend plugs
// cuBLAS in through LinalgCudaHooks.
#pragma once
#include "core/tensor.h"

namespace df {

// Row-major strided-batched GEMM, the cblas RowMajor convention: for each of `batch` problems,
// C (m x n) = alpha * op(A) op(B) + beta * C, with op(A) m x k and op(B) k x n. a/b/c are views whose
// data() points at the first matrix of the batch; problem i starts stride_* elements after the
// previous one. lda/ldb/ldc are row strides of the matrices as stored (before op()).
struct LinalgCudaHooks {
  void (*gemm)(bool ta, bool tb, int64_t m, int64_t n, int64_t k, double alpha, const Tensor& a, int64_t lda,
               const Tensor& b, int64_t ldb, double beta, Tensor& c, int64_t ldc, int64_t batch, int64_t stride_a,
               int64_t stride_b, int64_t stride_c) = nullptr;
};
LinalgCudaHooks& linalg_cuda_hooks();

// Raw forwards (no autograd): a (..., n, k) @ b (..., k, m) with both at least 2-D and broadcast batch
// dims; x (..., in) @ w (out, in)^T + bias (out, or undefined).
Tensor matmul_kernel(const Tensor& a, const Tensor& b);
Tensor linear_kernel(const Tensor& x, const Tensor& w, const Tensor& bias);

}  // namespace df
