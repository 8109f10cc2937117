// cuBLAS GEMM behind matmul/linear (LinalgCudaHooks): strided-batched, row-major callers mapped
// onto column-major cuBLAS by computing C^T = op(B)^T op(A)^T. f32 may use TF32 when allowed;
// bf16 accumulates in f32; f64 in f64.
#include <cublas_v2.h>

#include <atomic>

#include "cuda/common.cuh"
#include "cuda/cuda.h"

#if __has_include("ops/linalg_kernels.h")
#include "ops/linalg_kernels.h"
#define DF_HAVE_LINALG_HOOKS 1
#endif

namespace df {

namespace {
std::atomic<bool> g_allow_tf32{false};
}
void set_allow_tf32(bool on) { g_allow_tf32 = on; }
bool allow_tf32() { return g_allow_tf32; }

namespace cudak {
namespace {

#define DF_CUBLAS_CHECK(expr, opname)                                                     \
  do {                                                                                    \
    cublasStatus_t df_st_ = (expr);                                                       \
    if (df_st_ != CUBLAS_STATUS_SUCCESS)                                                  \
      DF_FAIL(opname, ": cuBLAS error ", cublasGetStatusName(df_st_), " (", int(df_st_), ")"); \
  } while (0)

#ifdef DF_HAVE_LINALG_HOOKS
constexpr size_t kWorkspaceBytes = size_t(32) << 20;

// The handle runs on the backend's stream with a workspace from our allocator, so GEMMs never
// cudaMalloc in a steady state.
cublasHandle_t handle() {
  static cublasHandle_t h = [] {
    cublasHandle_t hh;
    DF_CUBLAS_CHECK(cublasCreate(&hh), "matmul");
    DF_CUBLAS_CHECK(cublasSetStream(hh, stream()), "matmul");
    void* ws = device_hooks().alloc(kWorkspaceBytes);  // held for the life of the process
    DF_CUBLAS_CHECK(cublasSetWorkspace(hh, ws, kWorkspaceBytes), "matmul");
    return hh;
  }();
  return h;
}

void gemm_cuda(bool ta, bool tb, int64_t m, int64_t n, int64_t k, double alpha, const Tensor& a, int64_t lda,
               const Tensor& b, int64_t ldb, double beta, Tensor& c, int64_t ldc, int64_t batch, int64_t stride_a,
               int64_t stride_b, int64_t stride_c) {
  DF_CHECK(a.dtype() == b.dtype() && b.dtype() == c.dtype(), "matmul (CUDA): dtype mismatch ", a.desc(), ", ",
           b.desc(), ", ", c.desc());
  if (m == 0 || n == 0 || batch == 0) return;
  const int64_t lim = (int64_t(1) << 31) - 1;
  DF_CHECK(m <= lim && n <= lim && k <= lim && lda <= lim && ldb <= lim && ldc <= lim && batch <= lim,
           "matmul (CUDA): dimensions exceed 32-bit cuBLAS limits: m=", m, " n=", n, " k=", k);
  cublasOperation_t opa = ta ? CUBLAS_OP_T : CUBLAS_OP_N, opb = tb ? CUBLAS_OP_T : CUBLAS_OP_N;
  cudaDataType_t dt;
  cublasComputeType_t ct;
  float af = float(alpha), bf = float(beta);
  const void *pa = &af, *pb = &bf;
  switch (c.dtype()) {
    case DType::F32:
      dt = CUDA_R_32F;
      ct = allow_tf32() ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
      break;
    case DType::BF16:
      dt = CUDA_R_16BF;
      ct = CUBLAS_COMPUTE_32F;
      break;
    case DType::F64:
      dt = CUDA_R_64F;
      ct = CUBLAS_COMPUTE_64F;
      pa = &alpha;
      pb = &beta;
      break;
    default:
      DF_FAIL("matmul (CUDA): expected a floating dtype, got ", c.desc());
  }
  DF_CUBLAS_CHECK(cublasGemmStridedBatchedEx(handle(), opb, opa, int(n), int(m), int(k), pa, b.data(), dt, int(ldb),
                                             stride_b, a.data(), dt, int(lda), stride_a, pb, c.data(), dt, int(ldc),
                                             stride_c, int(batch), ct, CUBLAS_GEMM_DEFAULT),
                  "matmul");
}
#endif

}  // namespace

void register_linalg() {
#ifdef DF_HAVE_LINALG_HOOKS
  linalg_cuda_hooks().gemm = gemm_cuda;
#endif
}

}  // namespace cudak
}  // namespace df
