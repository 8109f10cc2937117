// Mixed precision as a thread-local scoped policy, in the spirit of torch.autocast: inside an
// `Autocast amp(DType::BF16)` scope the compute-heavy ops run in bf16 and the precision-sensitive ones
// in f32, whatever dtype their inputs arrive in. Parameters stay f32 (master weights).
#pragma once
#include "core/tensor.h"

namespace df {

// The policy in force on this thread. `compute`: dtype of matmul, linear, conv2d and attention
// (and the attention reference); `full`: dtype of softmax, log_softmax, layer_norm, rms_norm,
// group_norm, pixel_norm and the losses. Everything else (elementwise ops, reductions, views) runs
// in its inputs' dtype; binary ops on mixed dtypes promote to the wider one with or without a policy.
struct AutocastPolicy {
  bool enabled = false;
  DType compute = DType::BF16;
  DType full = DType::F32;
};
AutocastPolicy autocast_policy();

// RAII scope: sets the policy until destruction, then restores the enclosing one (scopes nest;
// `Autocast off(DType::F32, DType::F32, false)` switches the policy off inside another scope).
// Autocast(DType::BF16) is the mixed-precision mode of the trainer (config "precision": "bf16");
// Autocast(DType::F32, DType::F64) is the same policy one level up, which the CPU tests use on f64
// models because the CPU kernels have no bf16.
class Autocast {
 public:
  explicit Autocast(DType compute = DType::BF16, DType full = DType::F32, bool enabled = true);
  ~Autocast();
  Autocast(const Autocast&) = delete;
  Autocast& operator=(const Autocast&) = delete;

 private:
  AutocastPolicy prev_;
};

// What the ops' public functions call (one line each). Both go through the differentiable cast op,
// so a tangent follows its primal down to bf16 and a cotangent goes back up to the f32 master weight.
// An undefined tensor (absent bias) passes through.
//   autocast_compute: a floating input wider than policy.compute is cast down to it. `op` names the
//     caller in the error for bf16 on CPU (the CPU kernels are f32/f64 only).
//   autocast_full: an input narrower than policy.full is cast up to it.
Tensor autocast_compute(const Tensor& x, const char* op);
Tensor autocast_full(const Tensor& x);

// The dtype two operands of a binary op meet in: the wider of the two (bf16 < f32 < f64).
DType promote_types(DType a, DType b);

// apply() and the backward pass hold one while an op's forward, JVP rule or VJP rule runs: rules
// compute in the dtypes the forward chose (a bf16 matmul's backward is bf16, a layer_norm's f32),
// and ops that call other ops inside their forward are not re-cast.
class AutocastSuspend {
 public:
  AutocastSuspend();
  ~AutocastSuspend();
  AutocastSuspend(const AutocastSuspend&) = delete;
  AutocastSuspend& operator=(const AutocastSuspend&) = delete;

 private:
  bool prev_;
};

}  // namespace df
