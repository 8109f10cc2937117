// Unary elementwise ops: forward through the shared functors, one derivative expression each.
#include "ops/elementwise_kernels.h"
#include "ops/rules.h"

namespace df {

namespace {

// y = f(x; a, b) where `deriv` writes f' with ops (so every order composes).
#define DF_UNARY_OP(fname, kind, uses_x, uses_y, DERIV)                                            \
  const OpDef& fname##_op() {                                                                      \
    static OpDef op = def_elementwise(                                                             \
        #fname,                                                                                    \
        [](const Tensors& in, const Attrs& at) { return Tensors{unary_kernel(UnaryKind::kind, in[0], at.a, at.b)}; }, \
        [](const Tensor& x, const Tensor& y, const Attrs& at) -> Tensor { (void)x; (void)y; (void)at; DERIV }, \
        uses_x, uses_y);                                                                           \
    return op;                                                                                     \
  }

constexpr double kSqrt2OverPi = 0.7978845608028654;
constexpr double kTwoOverSqrtPi = 1.1283791670955126;
constexpr double kInvSqrt2Pi = 0.3989422804014327;

DF_UNARY_OP(exp, Exp, false, true, return y;)
DF_UNARY_OP(expm1, Expm1, false, true, return add(y, 1.0);)
DF_UNARY_OP(log, Log, true, false, return div(ones_like(x), x);)
DF_UNARY_OP(log1p, Log1p, true, false, return 1.0 / add(x, 1.0);)
DF_UNARY_OP(erf, Erf, true, false, return mul(exp(neg(square(x))), kTwoOverSqrtPi);)
DF_UNARY_OP(sin, Sin, true, false, return cos(x);)
DF_UNARY_OP(cos, Cos, true, false, return neg(sin(x));)
DF_UNARY_OP(tan, Tan, false, true, return add(square(y), 1.0);)
DF_UNARY_OP(atan, Atan, true, false, return 1.0 / add(square(x), 1.0);)
DF_UNARY_OP(tanh, Tanh, false, true, return rsub(1.0, square(y));)
DF_UNARY_OP(sigmoid, Sigmoid, false, true, return mul(y, rsub(1.0, y));)
DF_UNARY_OP(relu, Relu, true, false, return unary_kernel(UnaryKind::Step, x.detach());)
// attrs: a = negative slope. Derivative 1 where x > 0, else the slope (also at 0, like PyTorch).
DF_UNARY_OP(leaky_relu, LeakyRelu, true, false,
            return add(mul(unary_kernel(UnaryKind::Step, x.detach()), 1.0 - at.a), at.a);)
// attrs: a = alpha. For x <= 0, y + alpha = alpha e^x: finite where e^x alone would overflow.
DF_UNARY_OP(elu, Elu, true, true, {
  Tensor step = unary_kernel(UnaryKind::Step, x.detach());
  return add(step, mul(rsub(1.0, step), add(y, at.a)));
})
// silu' is one fused kernel (the hot path of MLP training); its own derivative is composite:
// silu''(x) = s (1 - s) (2 + x (1 - 2 s)), s = sigmoid(x).
DF_UNARY_OP(silu_grad, SiluGrad, true, false, {
  Tensor s = sigmoid(x);
  return mul(mul(s, rsub(1.0, s)), add(mul(x, rsub(1.0, mul(s, 2.0))), 2.0));
})
DF_UNARY_OP(silu, Silu, true, false, return silu_grad(x);)
DF_UNARY_OP(gelu, Gelu, true, false, {
  // d/dx 0.5 x (1 + tanh u), u = k (x + c x^3): 0.5 (1 + th) + 0.5 x (1 - th^2) k (1 + 3c x^2)
  Tensor x2 = square(x);
  Tensor th = tanh(mul(mul(x, add(mul(x2, 0.044715), 1.0)), kSqrt2OverPi));
  Tensor du = mul(add(mul(x2, 3 * 0.044715), 1.0), kSqrt2OverPi);
  return add(mul(add(th, 1.0), 0.5), mul(mul(mul(x, rsub(1.0, square(th))), du), 0.5));
})
// d/dx x Phi(x) = Phi(x) + x phi(x), Phi the normal CDF 0.5 (1 + erf(x / sqrt 2)).
DF_UNARY_OP(gelu_exact, GeluExact, true, false, {
  Tensor cdf = mul(add(erf(mul(x, 0.7071067811865476)), 1.0), 0.5);
  return add(cdf, mul(mul(x, exp(mul(square(x), -0.5))), kInvSqrt2Pi));
})
DF_UNARY_OP(softplus, Softplus, true, false, return sigmoid(x);)
DF_UNARY_OP(sqrt, Sqrt, false, true, return mul(1.0 / y, 0.5);)
DF_UNARY_OP(rsqrt, Rsqrt, false, true, return mul(mul(square(y), y), -0.5);)
DF_UNARY_OP(square, Square, true, false, return mul(x, 2.0);)
DF_UNARY_OP(abs, Abs, true, false, return sign(x);)
DF_UNARY_OP(clamp, Clamp, true, false, return unary_kernel(UnaryKind::InRange, x.detach(), at.a, at.b);)
DF_UNARY_OP(pow_scalar, PowScalar, true, false, {
  if (at.a == 0) return zeros_like(x);
  return mul(pow(x, at.a - 1), at.a);
})
DF_UNARY_OP(div_scalar_by, DivScalarBy, true, true, return neg(div(y, x));)

#undef DF_UNARY_OP

// Ops whose derivative is a constant: written as linear/affine ops.
const OpDef& neg_op();
const OpDef& neg_op() {
  static OpDef op = def_linear(
      "neg", [](const Tensors& in, const Attrs&) { return Tensors{unary_kernel(UnaryKind::Neg, in[0])}; },
      [](const RuleCtx&, const Tensors& g, const std::vector<bool>&) { return Tensors{neg(g[0])}; }, neg_op);
  return op;
}
const OpDef& mul_scalar_op();
const OpDef& mul_scalar_op() {
  static OpDef op = def_linear(
      "mul_scalar",
      [](const Tensors& in, const Attrs& at) { return Tensors{unary_kernel(UnaryKind::MulScalar, in[0], at.a)}; },
      [](const RuleCtx& c, const Tensors& g, const std::vector<bool>&) { return Tensors{mul(g[0], c.attrs.a)}; },
      mul_scalar_op);
  return op;
}
// Affine ops: tangent passes (or is negated); the constant drops out.
const OpDef& add_scalar_op() {
  static OpDef op{"add_scalar",
                  [](const Tensors& in, const Attrs& at) { return Tensors{unary_kernel(UnaryKind::AddScalar, in[0], at.a)}; },
                  [](const RuleCtx&, const Tensors& t) { return Tensors{t[0]}; },
                  [](const RuleCtx&, const Tensors& g, const std::vector<bool>&) { return Tensors{g[0]}; },
                  false, false};
  return op;
}
const OpDef& rsub_scalar_op() {
  static OpDef op{"rsub_scalar",
                  [](const Tensors& in, const Attrs& at) { return Tensors{unary_kernel(UnaryKind::RsubScalar, in[0], at.a)}; },
                  [](const RuleCtx&, const Tensors& t) { return Tensors{neg(t[0])}; },
                  [](const RuleCtx&, const Tensors& g, const std::vector<bool>&) { return Tensors{neg(g[0])}; },
                  false, false};
  return op;
}

// Ops with zero derivative (masks, signs): no tape node is ever needed, but the rules say so.
#define DF_CONST_OP(fname, kind)                                                                   \
  const OpDef& fname##_op() {                                                                      \
    static OpDef op{#fname,                                                                        \
                    [](const Tensors& in, const Attrs&) { return Tensors{unary_kernel(UnaryKind::kind, in[0])}; }, \
                    [](const RuleCtx&, const Tensors&) { return Tensors{Tensor()}; },              \
                    [](const RuleCtx&, const Tensors&, const std::vector<bool>&) { return Tensors{Tensor()}; }, \
                    false, false, false};                                                                 \
    return op;                                                                                     \
  }
DF_CONST_OP(sign, Sign)
DF_CONST_OP(isfinite, IsFinite)
#undef DF_CONST_OP

Attrs scalars(double a, double b = 0) {
  Attrs at;
  at.a = a;
  at.b = b;
  return at;
}

}  // namespace

Tensor neg(const Tensor& x) { return apply1(neg_op(), {x}); }
Tensor exp(const Tensor& x) { return apply1(exp_op(), {x}); }
Tensor expm1(const Tensor& x) { return apply1(expm1_op(), {x}); }
Tensor log(const Tensor& x) { return apply1(log_op(), {x}); }
Tensor log1p(const Tensor& x) { return apply1(log1p_op(), {x}); }
Tensor erf(const Tensor& x) { return apply1(erf_op(), {x}); }
Tensor sin(const Tensor& x) { return apply1(sin_op(), {x}); }
Tensor cos(const Tensor& x) { return apply1(cos_op(), {x}); }
Tensor tan(const Tensor& x) { return apply1(tan_op(), {x}); }
Tensor atan(const Tensor& x) { return apply1(atan_op(), {x}); }
Tensor tanh(const Tensor& x) { return apply1(tanh_op(), {x}); }
Tensor sigmoid(const Tensor& x) { return apply1(sigmoid_op(), {x}); }
Tensor relu(const Tensor& x) { return apply1(relu_op(), {x}); }
Tensor leaky_relu(const Tensor& x, double slope) { return apply1(leaky_relu_op(), {x}, scalars(slope)); }
Tensor elu(const Tensor& x, double alpha) { return apply1(elu_op(), {x}, scalars(alpha)); }
Tensor silu(const Tensor& x) { return apply1(silu_op(), {x}); }
Tensor silu_grad(const Tensor& x) { return apply1(silu_grad_op(), {x}); }
Tensor gelu(const Tensor& x) { return apply1(gelu_op(), {x}); }
Tensor gelu(const Tensor& x, GeluApprox approx) {
  return apply1(approx == GeluApprox::Tanh ? gelu_op() : gelu_exact_op(), {x});
}
Tensor softplus(const Tensor& x) { return apply1(softplus_op(), {x}); }
Tensor sqrt(const Tensor& x) { return apply1(sqrt_op(), {x}); }
Tensor rsqrt(const Tensor& x) { return apply1(rsqrt_op(), {x}); }
Tensor square(const Tensor& x) { return apply1(square_op(), {x}); }
Tensor abs(const Tensor& x) { return apply1(abs_op(), {x}); }
Tensor sign(const Tensor& x) { return apply1(sign_op(), {x}); }
Tensor isfinite(const Tensor& x) { return apply1(isfinite_op(), {x}); }
Tensor clamp(const Tensor& x, double lo, double hi) {
  DF_CHECK(lo <= hi, "clamp: lower bound ", lo, " is above upper bound ", hi);
  return apply1(clamp_op(), {x}, scalars(lo, hi));
}
Tensor pow(const Tensor& x, double e) {
  if (e == 1) return x;
  if (e == 2) return square(x);
  return apply1(pow_scalar_op(), {x}, scalars(e));
}
// Tensor bounds: maximum then minimum, so the derivative goes to x inside [lo, hi] (both ends
// included: ties pick the first operand), to the active bound outside, and to hi when lo > hi.
Tensor clamp(const Tensor& x, const Tensor& lo, const Tensor& hi) {
  DF_CHECK(x.defined(), "clamp: input is undefined");
  DF_CHECK(lo.defined() || hi.defined(), "clamp: at least one of the bounds must be defined, got two undefined "
           "tensors for ", x.desc());
  Tensor y = x;
  if (lo.defined()) y = maximum(y, lo);
  if (hi.defined()) y = minimum(y, hi);
  return y;
}
Tensor add(const Tensor& x, double s) { return apply1(add_scalar_op(), {x}, scalars(s)); }
Tensor sub(const Tensor& x, double s) { return apply1(add_scalar_op(), {x}, scalars(-s)); }
Tensor mul(const Tensor& x, double s) { return apply1(mul_scalar_op(), {x}, scalars(s)); }
Tensor rsub(double s, const Tensor& x) { return apply1(rsub_scalar_op(), {x}, scalars(s)); }
Tensor operator/(double s, const Tensor& x) { return apply1(div_scalar_by_op(), {x}, scalars(s)); }

}  // namespace df
