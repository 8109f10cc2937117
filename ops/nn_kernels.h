// Fused kernels behind softmax, log_softmax, layer_norm and rms_norm: CPU loops in ops/nn.cpp, CUDA
// launchers registered by the backend (when none is, CUDA falls back to a composite of core ops).
#pragma once
#include "core/tensor.h"

namespace df {

// x is contiguous and viewed as (O, R, I) for softmax (reduction over R) or (O, R) for the norms
// (normalised over R); weight/bias are contiguous (R) or undefined. Each returns a new contiguous
// tensor shaped like x.
struct NnCudaHooks {
  Tensor (*softmax)(const Tensor& x, int64_t O, int64_t R, int64_t I, bool log) = nullptr;
  Tensor (*layer_norm)(const Tensor& x, const Tensor& weight, const Tensor& bias, int64_t O, int64_t R,
                       double eps) = nullptr;
  Tensor (*rms_norm)(const Tensor& x, const Tensor& weight, int64_t O, int64_t R, double eps) = nullptr;
};
NnCudaHooks& nn_cuda_hooks();

}  // namespace df
