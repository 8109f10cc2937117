// Op-table rows: unary and binary elementwise ops (with broadcasting and size-1 dims).
#include <cmath>

#include "tests/checker.h"

using namespace df;
using namespace df::test;

namespace {

OpRow unary(const char* name, Tensor (*f)(const Tensor&), double (*g)(double), double lo, double hi) {
  OpRow r;
  r.name = name;
  r.fn = [f](const Tensors& x) { return f(x[0]); };
  r.shapes = {{3, 4}};
  r.lo = lo;
  r.hi = hi;
  r.reference = [g](const std::vector<std::vector<double>>& v, const std::vector<Shape>&) { return ref_unary(v[0], g); };
  return r;
}

OpRow binary(std::string name, Tensor (*f)(const Tensor&, const Tensor&), double (*g)(double, double), Shape sa,
             Shape sb, double lo, double hi) {
  OpRow r;
  r.name = name + " " + shape_str(sa) + " " + shape_str(sb);
  r.fn = [f](const Tensors& x) { return f(x[0], x[1]); };
  r.shapes = {sa, sb};
  r.lo = lo;
  r.hi = hi;
  r.reference = [g](const std::vector<std::vector<double>>& v, const std::vector<Shape>& s) {
    return ref_broadcast_binary(v[0], s[0], v[1], s[1], g);
  };
  return r;
}

double gelu_ref(double x) { return 0.5 * x * (1 + std::tanh(std::sqrt(2 / M_PI) * (x + 0.044715 * x * x * x))); }

// A unary row whose op takes a parameter (captured in fn and reference).
OpRow unary_fn(std::string name, Builder fn, std::function<double(double)> g, double lo, double hi) {
  OpRow r;
  r.name = std::move(name);
  r.fn = std::move(fn);
  r.shapes = {{3, 4}};
  r.lo = lo;
  r.hi = hi;
  r.reference = [g](const std::vector<std::vector<double>>& v, const std::vector<Shape>&) { return ref_unary(v[0], g); };
  return r;
}

// clamp with tensor bounds: x (3, 4), lo (4) in [-1, -0.5], hi (3, 1) in [0.4, 1]; an x within 0.1
// of its bound is moved 0.2 past it, so finite differences never straddle a kink.
Tensors clamp_inputs(uint64_t seed, bool with_lo, bool with_hi) {
  NoGrad ng;
  std::vector<double> x = add(mul(rand({3, 4}, seed, DType::F64), 4.0), -2.0).to_vector();
  std::vector<double> lo = add(mul(rand({4}, seed, DType::F64, Device::CPU, 100), 0.5), -1.0).to_vector();
  std::vector<double> hi = add(mul(rand({3, 1}, seed, DType::F64, Device::CPU, 200), 0.6), 0.4).to_vector();
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 4; ++j) {
      double& v = x[i * 4 + j];
      if (with_lo && std::fabs(v - lo[j]) < 0.1) v -= 0.2;
      if (with_hi && std::fabs(v - hi[i]) < 0.1) v += 0.2;
    }
  Tensors in{from_vector(x, {3, 4}, DType::F64)};
  if (with_lo) in.push_back(from_vector(lo, {4}, DType::F64));
  if (with_hi) in.push_back(from_vector(hi, {3, 1}, DType::F64));
  return in;
}

OpRow clamp_tensor_row(bool with_lo, bool with_hi) {
  OpRow r;
  r.name = std::string("clamp tensor bounds [3, 4]") + (with_lo ? " lo [4]" : "") + (with_hi ? " hi [3, 1]" : "");
  r.shapes = {{3, 4}};
  if (with_lo) r.shapes.push_back({4});
  if (with_hi) r.shapes.push_back({3, 1});
  r.make_inputs = [with_lo, with_hi](uint64_t seed) { return clamp_inputs(seed, with_lo, with_hi); };
  r.fn = [with_lo, with_hi](const Tensors& x) {
    return clamp(x[0], with_lo ? x[1] : Tensor(), with_hi ? x[with_lo ? 2 : 1] : Tensor());
  };
  r.reference = [with_lo, with_hi](const std::vector<std::vector<double>>& v, const std::vector<Shape>&) {
    std::vector<double> out(12);
    for (int i = 0; i < 3; ++i)
      for (int j = 0; j < 4; ++j) {
        double y = v[0][i * 4 + j];
        if (with_lo) y = std::max(y, v[1][j]);
        if (with_hi) y = std::min(y, v[with_lo ? 2 : 1][i]);
        out[i * 4 + j] = y;
      }
    return out;
  };
  return r;
}

std::vector<OpRow> rows() {
  std::vector<OpRow> r = {
      unary("neg", neg, [](double x) { return -x; }, -2, 2),
      unary("exp", exp, [](double x) { return std::exp(x); }, -2, 2),
      unary("log", log, [](double x) { return std::log(x); }, 0.5, 3),
      unary("sin", sin, [](double x) { return std::sin(x); }, -3, 3),
      unary("cos", cos, [](double x) { return std::cos(x); }, -3, 3),
      unary("tan", tan, [](double x) { return std::tan(x); }, -1.2, 1.2),
      unary("atan", atan, [](double x) { return std::atan(x); }, -3, 3),
      unary("tanh", tanh, [](double x) { return std::tanh(x); }, -2, 2),
      unary("sigmoid", sigmoid, [](double x) { return 1 / (1 + std::exp(-x)); }, -4, 4),
      unary("relu", relu, [](double x) { return x > 0 ? x : 0; }, 0.1, 2),
      unary("relu (negative side)", relu, [](double x) { return x > 0 ? x : 0; }, -2, -0.1),
      unary("silu", silu, [](double x) { return x / (1 + std::exp(-x)); }, -4, 4),
      unary("silu_grad", silu_grad, [](double x) { double s = 1 / (1 + std::exp(-x)); return s * (1 + x * (1 - s)); }, -4, 4),
      unary("gelu", gelu, gelu_ref, -3, 3),
      unary("softplus", softplus, [](double x) { return std::log1p(std::exp(x)); }, -4, 4),
      unary("sqrt", sqrt, [](double x) { return std::sqrt(x); }, 0.3, 3),
      unary("rsqrt", rsqrt, [](double x) { return 1 / std::sqrt(x); }, 0.3, 3),
      unary("square", square, [](double x) { return x * x; }, -2, 2),
      unary("abs", abs, [](double x) { return std::fabs(x); }, 0.2, 2),
      unary("abs (negative side)", abs, [](double x) { return std::fabs(x); }, -2, -0.2),
      binary("add", add, [](double a, double b) { return a + b; }, {3, 4}, {3, 4}, -2, 2),
      binary("add", add, [](double a, double b) { return a + b; }, {2, 3, 4}, {4}, -2, 2),
      binary("add", add, [](double a, double b) { return a + b; }, {3, 1}, {1, 4}, -2, 2),
      binary("sub", sub, [](double a, double b) { return a - b; }, {2, 1, 4}, {3, 1}, -2, 2),
      binary("mul", mul, [](double a, double b) { return a * b; }, {3, 4}, {3, 4}, -2, 2),
      binary("mul", mul, [](double a, double b) { return a * b; }, {2, 3, 4}, {3, 1}, -2, 2),
      binary("mul", mul, [](double a, double b) { return a * b; }, {}, {2, 3}, -2, 2),
      binary("div", div, [](double a, double b) { return a / b; }, {3, 4}, {4}, 0.5, 2),
      binary("div", div, [](double a, double b) { return a / b; }, {1, 4}, {3, 1}, 0.5, 2),
      binary("pow", pow, [](double a, double b) { return std::pow(a, b); }, {3, 4}, {4}, 0.5, 2),
      binary("maximum", maximum, [](double a, double b) { return a >= b ? a : b; }, {3, 4}, {1, 4}, -2, 2),
      binary("minimum", minimum, [](double a, double b) { return a <= b ? a : b; }, {2, 3, 4}, {3, 4}, -2, 2),
  };
  {
    OpRow c = unary("clamp", nullptr, nullptr, -2, 2);
    c.fn = [](const Tensors& x) { return clamp(x[0], -0.7, 0.9); };
    c.reference = [](const std::vector<std::vector<double>>& v, const std::vector<Shape>&) {
      return ref_unary(v[0], [](double x) { return std::min(0.9, std::max(-0.7, x)); });
    };
    // keep inputs away from the two kinks
    c.make_inputs = [](uint64_t seed) {
      Tensor u = rand({3, 4}, seed, DType::F64);
      NoGrad ng;
      Tensor x = add(mul(u, 3.6), -1.8);
      Tensor near = add(mul(gt(abs(add(x, 0.7)), full({}, 0.05, DType::F64)), 0.0), 0.0);
      (void)near;
      return Tensors{where(lt(abs(add(x, 0.7)), full({}, 0.05, DType::F64)), add(x, 0.2),
                           where(lt(abs(add(x, -0.9)), full({}, 0.05, DType::F64)), add(x, 0.2), x))};
    };
    r.push_back(c);
  }
  // The ops of issue 16: log1p, expm1, erf, exact gelu, leaky_relu and elu on both sides of their
  // kink, tensor-bound clamp (broadcast bounds, each bound alone), x - s.
  r.push_back(unary("log1p", log1p, [](double x) { return std::log1p(x); }, -0.6, 2));
  r.push_back(unary("expm1", expm1, [](double x) { return std::expm1(x); }, -2, 2));
  r.push_back(unary("erf", erf, [](double x) { return std::erf(x); }, -2, 2));
  r.push_back(unary_fn("gelu exact", [](const Tensors& x) { return gelu(x[0], GeluApprox::None); },
                       [](double x) { return 0.5 * x * (1 + std::erf(x / std::sqrt(2.0))); }, -3, 3));
  r.push_back(unary_fn("leaky_relu 0.2", [](const Tensors& x) { return leaky_relu(x[0], 0.2); },
                       [](double x) { return x > 0 ? x : 0.2 * x; }, 0.1, 2));
  r.push_back(unary_fn("leaky_relu 0.2 (negative side)", [](const Tensors& x) { return leaky_relu(x[0], 0.2); },
                       [](double x) { return x > 0 ? x : 0.2 * x; }, -2, -0.1));
  r.push_back(unary_fn("leaky_relu default (negative side)", [](const Tensors& x) { return leaky_relu(x[0]); },
                       [](double x) { return x > 0 ? x : 0.01 * x; }, -2, -0.1));
  r.push_back(unary_fn("elu 1.5", [](const Tensors& x) { return elu(x[0], 1.5); },
                       [](double x) { return x > 0 ? x : 1.5 * std::expm1(x); }, 0.1, 2));
  r.push_back(unary_fn("elu 1.5 (negative side)", [](const Tensors& x) { return elu(x[0], 1.5); },
                       [](double x) { return x > 0 ? x : 1.5 * std::expm1(x); }, -3, -0.1));
  r.push_back(unary_fn("elu default (negative side)", [](const Tensors& x) { return elu(x[0]); },
                       [](double x) { return x > 0 ? x : std::expm1(x); }, -3, -0.1));
  r.push_back(unary_fn("sub scalar", [](const Tensors& x) { return sub(x[0], 1.25); },
                       [](double x) { return x - 1.25; }, -2, 2));
  r.push_back(clamp_tensor_row(true, true));
  r.push_back(clamp_tensor_row(true, false));
  r.push_back(clamp_tensor_row(false, true));
  {
    OpRow p = unary("pow scalar", nullptr, nullptr, 0.5, 2);
    p.fn = [](const Tensors& x) { return pow(x[0], 2.5); };
    p.reference = [](const std::vector<std::vector<double>>& v, const std::vector<Shape>&) {
      return ref_unary(v[0], [](double x) { return std::pow(x, 2.5); });
    };
    r.push_back(p);
  }
  {
    OpRow p = unary("scalar arithmetic", nullptr, nullptr, 0.5, 2);
    p.fn = [](const Tensors& x) { return (3.0 - x[0] * 2.0 + 1.5) / 4.0 + 2.0 / x[0]; };
    p.reference = [](const std::vector<std::vector<double>>& v, const std::vector<Shape>&) {
      return ref_unary(v[0], [](double x) { return (3.0 - x * 2.0 + 1.5) / 4.0 + 2.0 / x; });
    };
    r.push_back(p);
  }
  {
    OpRow w = binary("where", nullptr, nullptr, {3, 4}, {4}, -2, 2);
    w.fn = [](const Tensors& x) { return where(gt(x[0], zeros({}, x[0].dtype(), x[0].device())), x[0], x[1]); };
    w.reference = [](const std::vector<std::vector<double>>& v, const std::vector<Shape>& s) {
      return ref_broadcast_binary(v[0], s[0], v[1], s[1], [](double a, double b) { return a > 0 ? a : b; });
    };
    r.push_back(w);
  }
  return r;
}

RegisterRows reg(rows());

}  // namespace
