// Binary elementwise ops with NumPy broadcasting; cotangents are summed back to each input's shape.
#include "ops/autocast.h"
#include "ops/elementwise_kernels.h"
#include "ops/rules.h"

namespace df {

namespace {

// Tangent of one operand seen at the output's shape (broadcast when the operand was smaller).
Tensor at_shape(const Tensor& t, const Shape& shape) {
  if (!t.defined() || t.shape() == shape) return t;
  return broadcast_to(t, shape);
}

Tensor sum_tangents(const Tensor& a, const Tensor& b, const Shape& shape) {
  if (!a.defined()) return at_shape(b, shape);
  if (!b.defined()) return at_shape(a, shape);
  return add(a, b);
}

Attrs shapes_of(const Tensor& a, const Tensor& b) {
  Attrs at;
  at.dims = a.shape();
  at.dims2 = b.shape();
  return at;
}

const OpDef& add_op() {
  static OpDef op{"add",
                  [](const Tensors& in, const Attrs&) { return Tensors{binary_kernel(BinaryKind::Add, in[0], in[1], "add")}; },
                  [](const RuleCtx& c, const Tensors& t) { return Tensors{sum_tangents(t[0], t[1], c.out[0].shape())}; },
                  [](const RuleCtx& c, const Tensors& g, const std::vector<bool>& n) {
                    return Tensors{n[0] ? sum_to(g[0], c.attrs.dims) : Tensor(),
                                   n[1] ? sum_to(g[0], c.attrs.dims2) : Tensor()};
                  },
                  false, false};
  return op;
}

const OpDef& sub_op() {
  static OpDef op{"sub",
                  [](const Tensors& in, const Attrs&) { return Tensors{binary_kernel(BinaryKind::Sub, in[0], in[1], "sub")}; },
                  [](const RuleCtx& c, const Tensors& t) {
                    return Tensors{sum_tangents(t[0], t[1].defined() ? neg(t[1]) : Tensor(), c.out[0].shape())};
                  },
                  [](const RuleCtx& c, const Tensors& g, const std::vector<bool>& n) {
                    return Tensors{n[0] ? sum_to(g[0], c.attrs.dims) : Tensor(),
                                   n[1] ? sum_to(neg(g[0]), c.attrs.dims2) : Tensor()};
                  },
                  false, false};
  return op;
}

// Bilinear: JVP ta*b + a*tb.
const OpDef& mul_op() {
  static OpDef op{"mul",
                  [](const Tensors& in, const Attrs&) { return Tensors{binary_kernel(BinaryKind::Mul, in[0], in[1], "mul")}; },
                  [](const RuleCtx& c, const Tensors& t) {
                    Tensor x = t[0].defined() ? mul(t[0], c.in[1]) : Tensor();
                    Tensor y = t[1].defined() ? mul(c.in[0], t[1]) : Tensor();
                    return Tensors{sum_tangents(x, y, c.out[0].shape())};
                  },
                  [](const RuleCtx& c, const Tensors& g, const std::vector<bool>& n) {
                    return Tensors{n[0] ? sum_to(mul(g[0], c.in[1]), c.in[0].shape()) : Tensor(),
                                   n[1] ? sum_to(mul(g[0], c.in[0]), c.in[1].shape()) : Tensor()};
                  },
                  true, false};
  return op;
}

const OpDef& div_op() {
  static OpDef op{"div",
                  [](const Tensors& in, const Attrs&) { return Tensors{binary_kernel(BinaryKind::Div, in[0], in[1], "div")}; },
                  [](const RuleCtx& c, const Tensors& t) {
                    // d(a/b) = ta/b - y tb/b
                    Tensor x = t[0].defined() ? div(t[0], c.in[1]) : Tensor();
                    Tensor y = t[1].defined() ? neg(div(mul(c.out[0], t[1]), c.in[1])) : Tensor();
                    return Tensors{sum_tangents(x, y, c.out[0].shape())};
                  },
                  [](const RuleCtx& c, const Tensors& g, const std::vector<bool>& n) {
                    Tensor gb = div(g[0], c.in[1]);
                    return Tensors{n[0] ? sum_to(gb, c.in[0].shape()) : Tensor(),
                                   n[1] ? sum_to(neg(mul(gb, c.out[0])), c.in[1].shape()) : Tensor()};
                  },
                  true, true};
  return op;
}

const OpDef& pow_op() {
  static OpDef op{"pow",
                  [](const Tensors& in, const Attrs&) { return Tensors{binary_kernel(BinaryKind::Pow, in[0], in[1], "pow")}; },
                  [](const RuleCtx& c, const Tensors& t) {
                    const Tensor &a = c.in[0], &b = c.in[1], &y = c.out[0];
                    Tensor x = t[0].defined() ? mul(t[0], mul(b, pow(a, add(b, -1.0)))) : Tensor();
                    Tensor z = t[1].defined() ? mul(t[1], mul(y, log(a))) : Tensor();
                    return Tensors{sum_tangents(x, z, y.shape())};
                  },
                  [](const RuleCtx& c, const Tensors& g, const std::vector<bool>& n) {
                    const Tensor &a = c.in[0], &b = c.in[1], &y = c.out[0];
                    return Tensors{n[0] ? sum_to(mul(g[0], mul(b, pow(a, add(b, -1.0)))), a.shape()) : Tensor(),
                                   n[1] ? sum_to(mul(g[0], mul(y, log(a))), b.shape()) : Tensor()};
                  },
                  true, true};
  return op;
}

// maximum/minimum: the derivative follows the selected operand (ties pick the first).
Tensors select_jvp(const Tensor& mask, const Tensors& t, const Shape& shape) {
  Tensor x = t[0].defined() ? mul(t[0], mask) : Tensor();
  Tensor y = t[1].defined() ? mul(t[1], rsub(1.0, mask)) : Tensor();
  return Tensors{sum_tangents(x, y, shape)};
}
Tensors select_vjp(const Tensor& mask, const RuleCtx& c, const Tensor& g, const std::vector<bool>& n) {
  return Tensors{n[0] ? sum_to(mul(g, mask), c.in[0].shape()) : Tensor(),
                 n[1] ? sum_to(mul(g, rsub(1.0, mask)), c.in[1].shape()) : Tensor()};
}

const OpDef& maximum_op() {
  static OpDef op{"maximum",
                  [](const Tensors& in, const Attrs&) { return Tensors{binary_kernel(BinaryKind::Maximum, in[0], in[1], "maximum")}; },
                  [](const RuleCtx& c, const Tensors& t) { return select_jvp(ge(c.in[0], c.in[1]), t, c.out[0].shape()); },
                  [](const RuleCtx& c, const Tensors& g, const std::vector<bool>& n) { return select_vjp(ge(c.in[0], c.in[1]), c, g[0], n); },
                  true, false};
  return op;
}

const OpDef& minimum_op() {
  static OpDef op{"minimum",
                  [](const Tensors& in, const Attrs&) { return Tensors{binary_kernel(BinaryKind::Minimum, in[0], in[1], "minimum")}; },
                  [](const RuleCtx& c, const Tensors& t) { return select_jvp(ge(c.in[1], c.in[0]), t, c.out[0].shape()); },
                  [](const RuleCtx& c, const Tensors& g, const std::vector<bool>& n) { return select_vjp(ge(c.in[1], c.in[0]), c, g[0], n); },
                  true, false};
  return op;
}

// where(cond, a, b): cond carries no derivative.
const OpDef& where_op() {
  static OpDef op{"where",
                  [](const Tensors& in, const Attrs&) { return Tensors{where_kernel(in[0], in[1], in[2])}; },
                  [](const RuleCtx& c, const Tensors& t) {
                    if (!t[1].defined() && !t[2].defined()) return Tensors{Tensor()};
                    const Shape& s = c.out[0].shape();
                    Tensor ta = t[1].defined() ? t[1] : zeros_like(c.in[1]);
                    Tensor tb = t[2].defined() ? t[2] : zeros_like(c.in[2]);
                    return Tensors{at_shape(where(c.in[0], ta, tb), s)};
                  },
                  [](const RuleCtx& c, const Tensors& g, const std::vector<bool>& n) {
                    Tensor zero = zeros({}, g[0].dtype(), g[0].device());
                    return Tensors{Tensor(),
                                   n[1] ? sum_to(where(c.in[0], g[0], zero), c.in[1].shape()) : Tensor(),
                                   n[2] ? sum_to(where(c.in[0], zero, g[0]), c.in[2].shape()) : Tensor()};
                  },
                  true, false};
  return op;
}

#define DF_COMPARE_OP(fname, kind)                                                                 \
  const OpDef& fname##_op() {                                                                      \
    static OpDef op{#fname,                                                                        \
                    [](const Tensors& in, const Attrs&) { return Tensors{binary_kernel(BinaryKind::kind, in[0], in[1], #fname)}; }, \
                    [](const RuleCtx&, const Tensors&) { return Tensors{Tensor()}; },              \
                    [](const RuleCtx&, const Tensors&, const std::vector<bool>&) { return Tensors{Tensor(), Tensor()}; }, \
                    false, false, false};                                                                 \
    return op;                                                                                     \
  }
DF_COMPARE_OP(gt, Gt)
DF_COMPARE_OP(lt, Lt)
DF_COMPARE_OP(ge, Ge)
#undef DF_COMPARE_OP

// Operands of different dtypes meet in the wider one (bf16 + f32 -> f32, as in PyTorch), through the
// differentiable cast, so the narrower operand's tangent and cotangent keep its own dtype.
struct Promoted {
  Tensor a, b;
  Promoted(const Tensor& x, const Tensor& y) : a(x), b(y) {
    if (!x.defined() || !y.defined() || x.dtype() == y.dtype()) return;
    const DType t = promote_types(x.dtype(), y.dtype());
    a = cast(x, t);
    b = cast(y, t);
  }
};

}  // namespace

Tensor add(const Tensor& a, const Tensor& b) {
  Promoted p(a, b);
  return apply1(add_op(), {p.a, p.b}, shapes_of(p.a, p.b));
}
Tensor sub(const Tensor& a, const Tensor& b) {
  Promoted p(a, b);
  return apply1(sub_op(), {p.a, p.b}, shapes_of(p.a, p.b));
}
Tensor mul(const Tensor& a, const Tensor& b) { Promoted p(a, b); return apply1(mul_op(), {p.a, p.b}); }
Tensor div(const Tensor& a, const Tensor& b) { Promoted p(a, b); return apply1(div_op(), {p.a, p.b}); }
Tensor pow(const Tensor& a, const Tensor& b) { Promoted p(a, b); return apply1(pow_op(), {p.a, p.b}); }
Tensor maximum(const Tensor& a, const Tensor& b) { Promoted p(a, b); return apply1(maximum_op(), {p.a, p.b}); }
Tensor minimum(const Tensor& a, const Tensor& b) { Promoted p(a, b); return apply1(minimum_op(), {p.a, p.b}); }
Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b) {
  Promoted p(a, b);
  const Tensor c = cond.defined() && p.a.defined() && cond.dtype() != p.a.dtype() ? cast(cond, p.a.dtype()) : cond;
  return apply1(where_op(), {c, p.a, p.b});
}
Tensor gt(const Tensor& a, const Tensor& b) { Promoted p(a, b); return apply1(gt_op(), {p.a, p.b}); }
Tensor lt(const Tensor& a, const Tensor& b) { Promoted p(a, b); return apply1(lt_op(), {p.a, p.b}); }
Tensor ge(const Tensor& a, const Tensor& b) { Promoted p(a, b); return apply1(ge_op(), {p.a, p.b}); }

}  // namespace df
