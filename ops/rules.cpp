// Rule helpers shared by the op family files.
#include "ops/rules.h"

namespace df {

Tensor or_zeros(const Tensor& t, const Tensor& like) { return t.defined() ? t : zeros_like(like); }

OpDef def_elementwise(const char* name, std::function<Tensors(const Tensors&, const Attrs&)> forward,
                      ElementwiseDeriv deriv, bool uses_x, bool uses_y) {
  OpDef op;
  op.name = name;
  op.forward = std::move(forward);
  op.jvp = [deriv](const RuleCtx& c, const Tensors& t) {
    return Tensors{mul(t[0], deriv(c.in[0], c.out[0], c.attrs))};
  };
  op.vjp = [deriv](const RuleCtx& c, const Tensors& g, const std::vector<bool>&) {
    Tensor x = c.in.empty() ? Tensor() : c.in[0];
    Tensor y = c.out.empty() ? Tensor() : c.out[0];
    return Tensors{mul(g[0], deriv(x, y, c.attrs))};
  };
  op.save_inputs = uses_x;
  op.save_outputs = uses_y;
  return op;
}

Tensors linear_jvp(const OpDef& self, const RuleCtx& c, const Tensors& t) {
  Tensors ts(t.size());
  for (size_t i = 0; i < t.size(); ++i) ts[i] = c.in[i].defined() ? or_zeros(t[i], c.in[i]) : Tensor();
  return apply(self, ts, c.attrs);
}

Transpose by_op(const OpDef& (*partner)()) {
  return [partner](const RuleCtx& c, const Tensors& g, const std::vector<bool>&) {
    return Tensors{apply1(partner(), {g[0]}, c.attrs)};
  };
}

OpDef def_linear(const char* name, std::function<Tensors(const Tensors&, const Attrs&)> forward,
                 Transpose transpose, const OpDef& (*self)(), bool needs_inputs) {
  OpDef op;
  op.name = name;
  op.forward = std::move(forward);
  op.jvp = [self](const RuleCtx& c, const Tensors& t) { return linear_jvp(self(), c, t); };
  op.vjp = std::move(transpose);
  op.save_inputs = needs_inputs;
  op.save_outputs = false;
  return op;
}

}  // namespace df
