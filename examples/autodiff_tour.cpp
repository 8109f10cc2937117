// A tour of dualflow's autodiff: grad, jvp, vjp, hvp, the gradient of a loss that contains a JVP
// (reverse over forward, the shape of the sCM loss), dense Jacobians and Hessians, a third-order
// derivative and nested dual levels. Each result is printed beside its closed form.
#include <cmath>
#include <cstdio>

#include "ops/ops.h"

using namespace df;

static void show(const char* what, double got, double want) {
  std::printf("  %-44s %+.12f   analytic %+.12f   %s\n", what, got, want,
              std::fabs(got - want) <= 1e-9 * (1 + std::fabs(want)) ? "ok" : "MISMATCH");
}

int main() {
  std::printf("dualflow autodiff tour (f64, CPU)\n\n");
  // f(x) = sum(sin(x) * x^2) at x = (0.5, 1.5)
  auto f = [](const Tensors& a) { return sum(mul(sin(a[0]), square(a[0]))); };
  Tensor x = from_vector({0.5, 1.5}, {2}, DType::F64);
  auto df = [](double v) { return std::cos(v) * v * v + 2 * v * std::sin(v); };
  auto d2f = [](double v) { return -std::sin(v) * v * v + 4 * v * std::cos(v) + 2 * std::sin(v); };

  std::printf("grad: reverse mode through the tape\n");
  Tensor g = grad_of(f, {x})[0];
  show("df/dx0", g.to_vector()[0], df(0.5));
  show("df/dx1", g.to_vector()[1], df(1.5));

  std::printf("jvp: forward mode with dual numbers, tangent v = (1, -2)\n");
  Tensor v = from_vector({1, -2}, {2}, DType::F64);
  auto [y, ty] = jvp([&](const Tensors& a) { return Tensors{f(a)}; }, {x}, {v});
  show("J v", ty[0].item(), df(0.5) - 2 * df(1.5));

  std::printf("vjp: a pullback, called with cotangent 3\n");
  auto [outs, pullback] = vjp([&](const Tensors& a) { return Tensors{f(a)}; }, {x});
  Tensor ct = pullback({scalar_tensor(3, DType::F64)})[0];
  show("3 * df/dx1", ct.to_vector()[1], 3 * df(1.5));

  std::printf("hvp: forward over reverse, H v with v = (1, -2)\n");
  Tensor hv = hvp(f, {x}, {v})[0];
  show("(H v)_0", hv.to_vector()[0], d2f(0.5) * 1);
  show("(H v)_1", hv.to_vector()[1], d2f(1.5) * -2);

  std::printf("gradient of a loss containing a JVP: L(w) = (d/dt tanh(w t))^2 at t = 0.8\n");
  // d/dt tanh(w t) = w (1 - tanh^2(w t)); L = that squared; dL/dw in closed form below.
  Tensor w = from_vector({0.7}, {1}, DType::F64).requires_grad_();
  Tensor t = from_vector({0.8}, {1}, DType::F64);
  auto [out, tangent] = jvp([&](const Tensors& a) { return Tensors{tanh(mul(w, a[0]))}; }, {t},
                            {ones({1}, DType::F64)});
  Tensor loss = sum(square(tangent[0]));
  loss.backward();
  double th = std::tanh(0.7 * 0.8), s = 1 - th * th;
  double dldw = 2 * (0.7 * s) * (s + 0.7 * (-2 * th * s * 0.8));
  show("dL/dw (reverse over forward)", w.grad().item(), dldw);

  std::printf("transforms of transforms: jacrev, hessian, jvp over hvp (third order)\n");
  // g(x) = sin(x) x elementwise: J = diag(cos(x) x + sin(x)); h(x) = sum(exp(x) x): H = diag((x + 2) e^x).
  Tensor J = jacrev([](const Tensor& a) { return sin(a) * a; }, x);
  show("J[1][1]", J.to_vector()[3], std::cos(1.5) * 1.5 + std::sin(1.5));
  Tensor H = hessian([](const Tensor& a) { return sum(exp(a) * a); }, x);
  show("H[0][0]", H.to_vector()[0], 2.5 * std::exp(0.5));
  auto d3f = [](double u) { return -std::cos(u) * u * u - 6 * u * std::sin(u) + 6 * std::cos(u); };
  auto [hv2, dhv] = jvp([&](const Tensors& a) { return hvp(f, a, {v}); }, {x}, {v});
  show("d/dx (H v) . v, component 1", dhv[0].to_vector()[1], d3f(1.5) * 4);

  std::printf("nested forward mode: the mixed tangent in either reading order\n");
  {
    DualLevel outer, inner;
    Tensor xd = make_dual(make_dual(x, v, outer.id()), v, inner.id());
    Tensor yd = exp(xd);
    Tensor d2a = unpack_dual(unpack_dual(yd, outer.id()).second, inner.id()).second;
    Tensor d2b = unpack_dual(unpack_dual(yd, inner.id()).second, outer.id()).second;
    show("outer then inner, component 1", d2a.to_vector()[1], std::exp(1.5) * 4);
    show("inner then outer, component 1", d2b.to_vector()[1], std::exp(1.5) * 4);
  }
  return 0;
}
