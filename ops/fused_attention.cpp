// The fused attention ops: "attention_fused" (forward kernel; its JVP rule runs the one-pass JVP kernel,
// its VJP rule the fused backward) and the two helper ops behind those rules, whose own derivatives go
// through the composite below, so every order of derivative is right even where no kernel exists.
#include "ops/fused_attention.h"

#include <cmath>
#include <cstdint>

#include "ops/elementwise_kernels.h"
#include "ops/ops.h"
#include "ops/rules.h"
#ifdef DF_WITH_CUDA
#include "cuda/attention.h"
#endif

namespace df {

AttentionPathCounts& attention_path_counts() {
  static AttentionPathCounts c;
  return c;
}

namespace {

double resolve_scale(double scale, const Tensor& q) {
  return scale > 0 ? scale : 1.0 / std::sqrt(double(q.size(-1)));
}

void check_shapes(const Tensor& q, const Tensor& k, const Tensor& v) {
  DF_CHECK(q.defined() && k.defined() && v.defined(), "attention: q, k and v must be defined");
  DF_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, "attention: expected q (B, H, N, D), k (B, H, M, D), "
           "v (B, H, M, Dv), got ", q.desc(), ", ", k.desc(), ", ", v.desc());
  DF_CHECK(k.size(0) == q.size(0) && k.size(1) == q.size(1) && k.size(3) == q.size(3) && v.size(0) == q.size(0) &&
               v.size(1) == q.size(1) && v.size(2) == k.size(2),
           "attention: shapes do not match: q ", q.desc(), ", k ", k.desc(), ", v ", v.desc());
  DF_CHECK(q.dtype() == k.dtype() && q.dtype() == v.dtype() && q.device() == k.device() &&
               q.device() == v.device(),
           "attention: q, k, v need one dtype and device, got ", q.desc(), ", ", k.desc(), ", ", v.desc());
}

Tensor kT(const Tensor& x) { return transpose(x, -2, -1); }

// ---- composite (public ops only) ------------------------------------------------------------------

Tensor probs(const Tensor& q, const Tensor& k, double s) { return softmax(mul(matmul(q, kT(k)), s), -1); }

Tensor lse_f32(const Tensor& x) { return cast(x, DType::F32); }

// (o, lse), lse in f32 like the kernels'.
Tensors composite_forward(const Tensor& q, const Tensor& k, const Tensor& v, double s) {
  Tensor S = mul(matmul(q, kT(k)), s);
  return {matmul(softmax(S, -1), v), lse_f32(logsumexp(S, {-1}))};
}

// (to, tlse): the tangent of composite_forward along (tq, tk, tv), written out so it is itself a
// composite (differentiable again): tS = (tq k^T + q tk^T) s, H = P * tS, tlse = rowsum H,
// to = H v - tlse o + P tv.
Tensors composite_tangent(const Tensors& x, double s) {
  const Tensor &q = x[0], &k = x[1], &v = x[2], &tq = x[3], &tk = x[4], &tv = x[5];
  Tensor P = probs(q, k, s);
  Tensor tS = mul(add(matmul(tq, kT(k)), matmul(q, kT(tk))), s);
  Tensor H = mul(P, tS);
  Tensor tlse = sum(H, {-1}, true);
  Tensor to = add(sub(matmul(H, v), mul(tlse, matmul(P, v))), matmul(P, tv));
  return {to, lse_f32(squeeze(tlse, -1))};
}

// (dq, dk, dv): cotangents of composite_forward for cotangents (go, glse), written out the same way:
// dS = P * (go v^T - rowsum(go * o) + glse).
Tensors composite_backward(const Tensors& x, double s) {
  const Tensor &q = x[0], &k = x[1], &v = x[2], &go = x[3];
  Tensor glse = unsqueeze(cast(x[4], q.dtype()), -1);
  Tensor P = probs(q, k, s);
  Tensor o = matmul(P, v);
  Tensor dS = mul(P, add(sub(matmul(go, kT(v)), sum(mul(go, o), {-1}, true)), glse));
  return {mul(matmul(dS, k), s), mul(matmul(kT(dS), q), s), matmul(kT(P), go)};
}

// Reverse-mode rule of a fused helper: the VJP of its composite. Outside create_graph the inputs
// are detached first, so the inner graph stays small; their tangents are kept, so
// forward-over-reverse still sees them.
Tensors composite_vjp(const Fn& f, const Tensors& primals, const Tensors& cotangents) {
  const bool create_graph = grad_enabled();
  Tensors xs = primals;
  if (!create_graph)
    for (auto& x : xs) {
      Tensor d = x.detach();
      d.impl()->tangents = x.impl()->tangents;
      x = d;
    }
  return vjp(f, xs, create_graph).second(cotangents);
}

// Forward-mode rule of a fused helper: the JVP of its composite.
Tensors composite_jvp(const Fn& f, const Tensors& primals, const Tensors& tangents) {
  Tensors ts(tangents.size());
  for (size_t i = 0; i < ts.size(); ++i) ts[i] = or_zeros(tangents[i], primals[i]);
  return jvp(f, primals, ts, true).second;
}

// ---- raw forwards (CUDA kernels) ------------------------------------------------------------------

#ifdef DF_WITH_CUDA
// The kernels take contiguous tensors starting on a 16-byte boundary (cuda/attention.h); a view
// that is not both (a transpose, or a narrow at an odd element offset) is copied.
Tensor contig(const Tensor& t) {
  const bool aligned = reinterpret_cast<uintptr_t>(t.data()) % 16 == 0;
  return t.is_contiguous() && aligned ? t : copy_kernel(t, t.dtype());
}
attn::Elem elem_of(const Tensor& x) { return x.dtype() == DType::BF16 ? attn::Elem::BF16 : attn::Elem::F32; }
attn::Dims dims_of(const Tensor& q, const Tensor& k) {
  return attn::Dims{q.size(0), q.size(1), q.size(2), k.size(2), q.size(3)};
}
void count_call(int64_t& calls, int64_t& wgmma_calls, bool wgmma) {
  ++calls;
  if (wgmma) ++wgmma_calls;
}
#endif

// On CPU tensors the raw functions compute the same values with the composite (they run inside the
// op's forward, where nested ops only compute), so the op and its rules are tested on CPU too.
Tensors forward_raw(const Tensors& in, double s) {
  if (in[0].device() == Device::CPU) return composite_forward(in[0], in[1], in[2], s);
#ifdef DF_WITH_CUDA
  Tensor q = contig(in[0]), k = contig(in[1]), v = contig(in[2]);
  Tensor o = empty(q.shape(), q.dtype(), Device::CUDA);
  Tensor lse = empty({q.size(0), q.size(1), q.size(2)}, DType::F32, Device::CUDA);
  count_call(attention_path_counts().forward, attention_path_counts().forward_wgmma,
             attn::forward_uses_wgmma(elem_of(q), dims_of(q, k)));
  attn::forward(elem_of(q), dims_of(q, k), float(s), q.data(), k.data(), v.data(), o.data(), lse.data_as<float>());
  return {o, lse};
#else
  DF_FAIL("attention_fused: built without CUDA");
#endif
}

// inputs q, k, v and their tangents (undefined = zero) -> ((o, lse), (to, tlse)) in one kernel.
std::pair<Tensors, Tensors> forward_with_tangents_raw(const Tensors& in, const Tensors& t, double s) {
  if (in[0].device() == Device::CPU) {
    Tensors x = in;
    for (int i = 0; i < 3; ++i) x.push_back(t[i].defined() ? t[i] : zeros_like(in[i]));
    return {composite_forward(in[0], in[1], in[2], s), composite_tangent(x, s)};
  }
#ifdef DF_WITH_CUDA
  Tensor q = contig(in[0]), k = contig(in[1]), v = contig(in[2]);
  Tensors tc(3);
  for (int i = 0; i < 3; ++i) tc[i] = contig(t[i].defined() ? t[i] : zeros_like(in[i]));
  Tensor o = empty(q.shape(), q.dtype(), Device::CUDA), to = empty(q.shape(), q.dtype(), Device::CUDA);
  Tensor lse = empty({q.size(0), q.size(1), q.size(2)}, DType::F32, Device::CUDA);
  Tensor tlse = empty({q.size(0), q.size(1), q.size(2)}, DType::F32, Device::CUDA);
  count_call(attention_path_counts().jvp, attention_path_counts().jvp_wgmma,
             attn::forward_uses_wgmma(elem_of(q), dims_of(q, k)));
  attn::jvp(elem_of(q), dims_of(q, k), float(s), q.data(), k.data(), v.data(), tc[0].data(), tc[1].data(),
            tc[2].data(), o.data(), to.data(), lse.data_as<float>(), tlse.data_as<float>());
  return {{o, lse}, {to, tlse}};
#else
  DF_FAIL("attention_fused: built without CUDA");
#endif
}

// inputs q, k, v, tq, tk, tv -> (to, tlse)
Tensors jvp_raw(const Tensors& in, double s) {
  if (in[0].device() == Device::CPU) return composite_tangent(in, s);
#ifdef DF_WITH_CUDA
  Tensors c(6);
  for (int i = 0; i < 6; ++i) c[i] = contig(in[i]);
  const Tensor& q = c[0];
  Tensor o = empty(q.shape(), q.dtype(), Device::CUDA), to = empty(q.shape(), q.dtype(), Device::CUDA);
  Tensor tlse = empty({q.size(0), q.size(1), q.size(2)}, DType::F32, Device::CUDA);
  count_call(attention_path_counts().jvp, attention_path_counts().jvp_wgmma,
             attn::forward_uses_wgmma(elem_of(q), dims_of(q, c[1])));
  attn::jvp(elem_of(q), dims_of(q, c[1]), float(s), c[0].data(), c[1].data(), c[2].data(), c[3].data(), c[4].data(),
            c[5].data(), o.data(), to.data(), nullptr, tlse.data_as<float>());
  return {to, tlse};
#else
  DF_FAIL("attention_jvp_fused: built without CUDA");
#endif
}

// inputs q, k, v, o, lse, go, glse -> (dq, dk, dv)
Tensors backward_raw(const Tensors& in, double s) {
  if (in[0].device() == Device::CPU) return composite_backward({in[0], in[1], in[2], in[5], in[6]}, s);
#ifdef DF_WITH_CUDA
  Tensors c(7);
  for (int i = 0; i < 7; ++i) c[i] = contig(in[i]);
  const Tensor &q = c[0], &k = c[1];
  DF_CHECK(c[4].dtype() == DType::F32 && c[6].dtype() == DType::F32, "attention_backward_fused: lse and its "
           "cotangent must be f32, got ", c[4].desc(), ", ", c[6].desc());
  Tensor dq = empty(q.shape(), q.dtype(), Device::CUDA), dk = empty(k.shape(), k.dtype(), Device::CUDA);
  Tensor dv = empty(k.shape(), k.dtype(), Device::CUDA);
  Tensor dq_accum = empty(q.shape(), DType::F32, Device::CUDA);
  Tensor delta = empty({q.size(0), q.size(1), q.size(2)}, DType::F32, Device::CUDA);
  count_call(attention_path_counts().backward, attention_path_counts().backward_wgmma,
             attn::backward_uses_wgmma(elem_of(q), dims_of(q, k)));
  attn::backward(elem_of(q), dims_of(q, k), float(s), q.data(), k.data(), c[2].data(), c[3].data(),
                 c[4].data_as<float>(), c[5].data(), c[6].data_as<float>(), dq.data(), dk.data(), dv.data(),
                 dq_accum.data_as<float>(), delta.data_as<float>());
  return {dq, dk, dv};
#else
  DF_FAIL("attention_backward_fused: built without CUDA");
#endif
}

// ---- ops ------------------------------------------------------------------------------------------
// All three read attrs.a = the resolved scale.

Fn tangent_fn(double s) {
  return [s](const Tensors& x) { return composite_tangent(x, s); };
}
Fn backward_fn(double s) {
  return [s](const Tensors& x) { return composite_backward(x, s); };
}

// inputs q, k, v, tq, tk, tv -> (to, tlse).
const OpDef& attention_jvp_op() {
  static OpDef op{"attention_jvp_fused",
                  [](const Tensors& in, const Attrs& at) { return jvp_raw(in, at.a); },
                  [](const RuleCtx& c, const Tensors& t) { return composite_jvp(tangent_fn(c.attrs.a), c.in, t); },
                  [](const RuleCtx& c, const Tensors& g, const std::vector<bool>&) {
                    return composite_vjp(tangent_fn(c.attrs.a), c.in, g);
                  },
                  true, false};
  return op;
}

// inputs q, k, v, o, lse, go, glse -> (dq, dk, dv). o and lse are functions of (q, k, v) here, so
// the rules treat them as such: their own tangents and cotangents are not separate paths (a caller
// holding o fixed while moving q would need the partial derivatives, which this op does not give).
const OpDef& attention_backward_op() {
  static OpDef op{"attention_backward_fused",
                  [](const Tensors& in, const Attrs& at) { return backward_raw(in, at.a); },
                  [](const RuleCtx& c, const Tensors& t) {
                    return composite_jvp(backward_fn(c.attrs.a), {c.in[0], c.in[1], c.in[2], c.in[5], c.in[6]},
                                         {t[0], t[1], t[2], t[5], t[6]});
                  },
                  [](const RuleCtx& c, const Tensors& g, const std::vector<bool>&) {
                    Tensors r = composite_vjp(backward_fn(c.attrs.a), {c.in[0], c.in[1], c.in[2], c.in[5], c.in[6]}, g);
                    return Tensors{r[0], r[1], r[2], Tensor(), Tensor(), r[3], r[4]};
                  },
                  true, false};
  return op;
}

// inputs q, k, v -> (o, lse). Under a JVP that needs no tangent graph (the sCM case) apply() calls
// forward_with_tangents: the JVP kernel alone yields o and its tangent, so o is not computed twice.
const OpDef& attention_fused_op() {
  static OpDef op = [] {
    OpDef o{"attention_fused",
            [](const Tensors& in, const Attrs& at) { return forward_raw(in, at.a); },
            [](const RuleCtx& c, const Tensors& t) {
              return apply(attention_jvp_op(), {c.in[0], c.in[1], c.in[2], or_zeros(t[0], c.in[0]),
                                                or_zeros(t[1], c.in[1]), or_zeros(t[2], c.in[2])},
                           c.attrs);
            },
            [](const RuleCtx& c, const Tensors& g, const std::vector<bool>&) {
              return apply(attention_backward_op(), {c.in[0], c.in[1], c.in[2], c.out[0], c.out[1], g[0], g[1]},
                           c.attrs);
            },
            true, true};
    o.forward_with_tangents = [](const Tensors& in, const Tensors& t, const Attrs& at) {
      return forward_with_tangents_raw(in, t, at.a);
    };
    return o;
  }();
  return op;
}

}  // namespace

bool fused_attention_available(const Tensor& q, const Tensor& k, const Tensor& v) {
#ifdef DF_WITH_CUDA
  if (!q.defined() || !k.defined() || !v.defined() || q.dim() != 4 || k.dim() != 4 || v.dim() != 4) return false;
  if (q.device() != Device::CUDA || k.device() != Device::CUDA || v.device() != Device::CUDA) return false;
  if (q.dtype() != k.dtype() || q.dtype() != v.dtype() || q.dtype() == DType::F64) return false;
  if (!attn::supported_head_dim(q.size(3)) || v.size(3) != q.size(3)) return false;
  if (k.shape() != v.shape() || k.size(0) != q.size(0) || k.size(1) != q.size(1) || k.size(3) != q.size(3))
    return false;
  return q.size(2) >= 1 && k.size(2) >= 1 && q.size(0) * q.size(1) <= 65535;
#else
  return false;
#endif
}

Tensor attention_composite(const Tensor& q, const Tensor& k, const Tensor& v, double scale) {
  check_shapes(q, k, v);
  return matmul(probs(q, k, resolve_scale(scale, q)), v);
}

Tensors fused_attention_with_lse(const Tensor& q, const Tensor& k, const Tensor& v, double scale) {
  check_shapes(q, k, v);
  const double s = resolve_scale(scale, q);
  if (!fused_attention_available(q, k, v)) {
    if (q.device() == Device::CUDA) ++attention_path_counts().composite;
    return composite_forward(q, k, v, s);
  }
  Attrs at;
  at.a = s;
  return apply(attention_fused_op(), {q, k, v}, at);
}

Tensors fused_attention_op_with_lse(const Tensor& q, const Tensor& k, const Tensor& v, double scale) {
  check_shapes(q, k, v);
  Attrs at;
  at.a = resolve_scale(scale, q);
  return apply(attention_fused_op(), {q, k, v}, at);
}

Tensor fused_attention(const Tensor& q, const Tensor& k, const Tensor& v, double scale) {
  check_shapes(q, k, v);
  if (!fused_attention_available(q, k, v)) {
    if (q.device() == Device::CUDA) ++attention_path_counts().composite;
    return attention_composite(q, k, v, scale);
  }
  return fused_attention_with_lse(q, k, v, scale)[0];
}

}  // namespace df
