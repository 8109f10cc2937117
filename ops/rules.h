// Rule helpers (DESIGN.md "Core contract"): most ops need one line of derivative, not two rules.
#pragma once
#include <functional>

#include "core/autograd.h"
#include "ops/ops.h"

namespace df {

// Elementwise op with derivative d = deriv(x, y) (written with ops): JVP tx*d, VJP g*d.
// deriv gets the primal input and output so it can reuse y (exp, tanh, sigmoid ...).
using ElementwiseDeriv = std::function<Tensor(const Tensor& x, const Tensor& y, const Attrs& attrs)>;
OpDef def_elementwise(const char* name, std::function<Tensors(const Tensors&, const Attrs&)> forward,
                      ElementwiseDeriv deriv, bool deriv_uses_x, bool deriv_uses_y);

// Linear op of its inputs (reshape, permute, slice, sum, pad, cat ...): the JVP is the op itself
// applied to the tangents (undefined tangents become zeros only when some are defined), and the
// VJP is `transpose` written with ops. save_inputs/outputs off: linear VJPs need only attrs and
// shapes, which `transpose` gets through c.in when `needs_inputs` is set.
using Transpose = std::function<Tensors(const RuleCtx& c, const Tensors& grads, const std::vector<bool>& needs)>;
// `self` returns the OpDef being defined (a function-local static), so the JVP can re-apply it:
//   const OpDef& flip_op() { static OpDef op = def_linear("flip", fwd, transpose, flip_op); return op; }
OpDef def_linear(const char* name, std::function<Tensors(const Tensors&, const Attrs&)> forward,
                 Transpose transpose, const OpDef& (*self)(), bool needs_inputs = false);

// The transpose of a one-input linear op that is another op with the same attrs (slice and
// slice_scatter, upsample and sum_pool2d, flip and itself ...): def_linear(name, fwd, by_op(partner), self).
Transpose by_op(const OpDef& (*partner)());

// The JVP of a linear op: apply the op to the tangents.
Tensors linear_jvp(const OpDef& self, const RuleCtx& c, const Tensors& tangents);

// Fill undefined tensors with zeros shaped like `like`.
Tensor or_zeros(const Tensor& t, const Tensor& like);

// Differentiable gathers other families build on (ops/gather.cpp); their index errors name the
// public op. logp (B, K), labels i64 (B) -> logp[b, labels[b]] (B). x (N, C, S), idx i64 (N, C, L)
// -> x[n, c, idx[n, c, l]] (max_pool2d).
Tensor pick_labels(const Tensor& logp, const Tensor& labels);
Tensor gather_windows(const Tensor& x, const Tensor& idx);

}  // namespace df
