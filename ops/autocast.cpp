// The mixed-precision policy (ops/autocast.h): thread-local state, its scopes, and the two casts the
// ops' public functions apply.
#include "ops/autocast.h"

#include "ops/ops.h"

namespace df {

namespace {

thread_local AutocastPolicy g_policy;

// Precision order of the floating dtypes: bf16 < f32 < f64.
int rank_of(DType t) { return t == DType::BF16 ? 0 : t == DType::F32 ? 1 : 2; }

}  // namespace

AutocastPolicy autocast_policy() { return g_policy; }

Autocast::Autocast(DType compute, DType full, bool enabled) : prev_(g_policy) {
  DF_CHECK(!enabled || rank_of(compute) <= rank_of(full), "Autocast: the compute dtype (", dtype_name(compute),
           ") must not be wider than the full-precision dtype (", dtype_name(full), ")");
  g_policy.enabled = enabled;
  g_policy.compute = compute;
  g_policy.full = full;
}

Autocast::~Autocast() { g_policy = prev_; }

AutocastSuspend::AutocastSuspend() : prev_(g_policy.enabled) { g_policy.enabled = false; }
AutocastSuspend::~AutocastSuspend() { g_policy.enabled = prev_; }

DType promote_types(DType a, DType b) { return rank_of(a) >= rank_of(b) ? a : b; }

Tensor autocast_compute(const Tensor& x, const char* op) {
  if (!g_policy.enabled || !x.defined() || rank_of(x.dtype()) <= rank_of(g_policy.compute)) return x;
  DF_CHECK(!(g_policy.compute == DType::BF16 && x.device() == Device::CPU), op, ": autocast to bf16 needs CUDA ",
           "tensors (the CPU kernels are f32/f64 only), got ", x.desc(), "; train with \"precision\": \"f32\" on "
           "the CPU");
  return cast(x, g_policy.compute);
}

Tensor autocast_full(const Tensor& x) {
  if (!g_policy.enabled || !x.defined() || rank_of(x.dtype()) >= rank_of(g_policy.full)) return x;
  return cast(x, g_policy.full);
}

}  // namespace df
