// Scaled dot-product attention on (B, H, N, D) tensors. attention_reference is the composite
// (matmul, softmax, matmul) whose rules come from those ops; attention() is the entry point models use,
// kept a thin forwarder so a fused (e.g. CUDA flash) op can replace its body in one line.
#include <cmath>

#include "ops/autocast.h"
#include "ops/cpu_kernels.h"
#include "ops/fused_attention.h"
#include "ops/ops.h"

namespace df {

namespace {

// Checks q (B, H, N, D), k (B, H, M, D), v (B, H, M, Dv) and returns the effective scale.
double attention_scale(const Tensor& q, const Tensor& k, const Tensor& v, double scale, const char* op) {
  DF_CHECK(q.defined() && k.defined() && v.defined(), op, ": q, k or v is undefined");
  DF_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, op, ": expected q (B, H, N, D), k (B, H, M, D), ",
           "v (B, H, M, Dv), got q ", q.desc(), ", k ", k.desc(), ", v ", v.desc());
  DF_CHECK(q.size(0) == k.size(0) && q.size(1) == k.size(1) && k.size(0) == v.size(0) && k.size(1) == v.size(1),
           op, ": batch and head dims differ: q ", q.desc(), ", k ", k.desc(), ", v ", v.desc());
  DF_CHECK(q.size(3) == k.size(3), op, ": q ", q.desc(), " and k ", k.desc(), " differ in the head dim D");
  DF_CHECK(k.size(2) == v.size(2), op, ": k ", k.desc(), " and v ", v.desc(), " differ in the key count M");
  DF_CHECK(q.dtype() == k.dtype() && k.dtype() == v.dtype() && q.device() == k.device() && k.device() == v.device(),
           op, ": dtype/device differ: q ", q.desc(), ", k ", k.desc(), ", v ", v.desc());
  return scale > 0 ? scale : 1.0 / std::sqrt(double(q.size(3)));
}

}  // namespace

Tensor attention_reference(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in, double scale) {
  const Tensor q = autocast_compute(q_in, "attention_reference"), k = autocast_compute(k_in, "attention_reference");
  const Tensor v = autocast_compute(v_in, "attention_reference");
  double s = attention_scale(q, k, v, scale, "attention_reference");
  Tensor logits = mul(matmul(q, transpose(k, 2, 3)), s);
  return matmul(softmax(logits, -1), v);
}

Tensor attention(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in, double scale) {
  // Under a bf16 policy the cast comes first, so the bf16 tensor-core kernels are the ones chosen.
  const Tensor q = autocast_compute(q_in, "attention"), k = autocast_compute(k_in, "attention");
  const Tensor v = autocast_compute(v_in, "attention");
  attention_scale(q, k, v, scale, "attention");
  for (const Tensor* t : {&q, &k, &v}) check_floating(*t, "attention");
  // The fused CUDA kernels (forward, backward, one-pass JVP) when they cover the inputs; the
  // composite otherwise (CPU, f64, unsupported head dims).
  if (fused_attention_available(q, k, v)) return fused_attention(q, k, v, scale);
  if (q.device() == Device::CUDA) ++attention_path_counts().composite;
  return attention_reference(q, k, v, scale);
}

}  // namespace df
