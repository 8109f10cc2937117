// Fused optimizer updates on the device: one kernel per parameter instead of a chain of a dozen
// elementwise ops (a training step of a small model is bound by the host's op launches, and the
// optimizer was most of them). Registered by the CUDA backend; without it the optimizers use ops.
#pragma once
#include <vector>

#include "core/tensor.h"

namespace df {

// Adam, AdamW and RAdam in one form (u = g + l2 p):
//   m = b1 m + (1 - b1) u;  v = b2 v + (1 - b2) u^2
//   p = decay p - step m / (sqrt(v) denom_scale + eps)   (use_denom)
//   p = decay p - step m                                  (otherwise: RAdam before rectification)
struct AdamUpdate {
  double b1 = 0.9, b2 = 0.999, eps = 1e-8, l2 = 0, decay = 1, step = 0, denom_scale = 1;
  bool use_denom = true;
};

struct OptimCudaHooks {
  // In place on p, m, v (contiguous, one dtype, on the device); g contiguous, same dtype and shape.
  void (*adam)(const Tensor& p, const Tensor& g, const Tensor& m, const Tensor& v, const AdamUpdate& u) = nullptr;
  // shadow = beta shadow + (1 - beta) p, in place; both contiguous, same dtype.
  void (*ema)(const Tensor& shadow, const Tensor& p, double beta) = nullptr;
  // sum over all tensors of sum(x^2), accumulated in f32 in a fixed order (deterministic): a scalar
  // f32 tensor on the device. Tensors contiguous, on the device, any float dtype.
  Tensor (*sum_squares)(const std::vector<Tensor>& xs) = nullptr;
};
OptimCudaHooks& optim_cuda_hooks();

}  // namespace df
