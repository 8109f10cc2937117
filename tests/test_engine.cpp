// Engine behaviour: accumulation, grad modes, detach, create_graph, dual levels, symbolic zeros,
// composition of the two modes, and error messages that name the op.
#include <doctest/doctest.h>

#include <cmath>

#include "tests/checker.h"
#include "tests/test_util.h"

using namespace df;
using df::test::contains;
using df::test::error_of;

namespace {
Tensor vec(std::vector<double> v) { return from_vector(v, {(int64_t)v.size()}, DType::F64); }
}  // namespace

TEST_CASE("gradients accumulate into leaves across backward calls") {
  Tensor x = vec({1, 2, 3}).requires_grad_();
  sum(square(x)).backward();
  sum(mul(x, 3.0)).backward();
  auto g = x.grad().to_vector();
  for (int i = 0; i < 3; ++i) CHECK(g[i] == doctest::Approx(2 * (i + 1) + 3));
  x.zero_grad();
  CHECK(!x.grad().defined());
}

TEST_CASE("a leaf used twice gets the sum of both paths") {
  Tensor x = vec({0.5, -1}).requires_grad_();
  Tensor y = sum(mul(sin(x), exp(x)));
  y.backward();
  auto g = x.grad().to_vector();
  for (int i = 0; i < 2; ++i) {
    double v = i == 0 ? 0.5 : -1;
    CHECK(g[i] == doctest::Approx(std::cos(v) * std::exp(v) + std::sin(v) * std::exp(v)));
  }
}

TEST_CASE("NoGrad records nothing; EnableGrad re-enables inside it") {
  Tensor x = vec({1, 2}).requires_grad_();
  {
    NoGrad ng;
    Tensor y = exp(x);
    CHECK(!y.requires_grad());
    {
      EnableGrad eg;
      CHECK(exp(x).requires_grad());
    }
  }
  CHECK(exp(x).requires_grad());
}

TEST_CASE("detach and stop_gradient cut the reverse path; stop_gradient's tangent is zero too") {
  Tensor x = vec({1, 2}).requires_grad_();
  CHECK(!exp(x).detach().requires_grad());
  Tensor y = sum(add(mul(stop_gradient(x), x), x));  // d/dx = sg(x) + 1
  y.backward();
  auto g = x.grad().to_vector();
  CHECK(g[0] == doctest::Approx(2));
  CHECK(g[1] == doctest::Approx(3));
  auto [p, t] = jvp([](const Tensors& v) { return Tensors{stop_gradient(square(v[0]))}; }, {vec({3})}, {vec({1})});
  CHECK(t[0].item() == 0);
}

TEST_CASE("create_graph gives differentiable gradients (double backward)") {
  Tensor x = vec({0.7}).requires_grad_();
  Tensor y = sum(mul(pow(x, 3.0), sin(x)));
  Tensor g = grad({y}, {x}, {}, false, true)[0];
  CHECK(g.requires_grad());
  Tensor h = grad({sum(g)}, {x})[0];
  double v = 0.7;
  double want = 6 * v * std::sin(v) + 6 * v * v * std::cos(v) - v * v * v * std::sin(v);
  CHECK(h.item() == doctest::Approx(want).epsilon(1e-12));
}

TEST_CASE("the graph is freed after backward unless retained") {
  Tensor x = vec({1, 2}).requires_grad_();
  Tensor y = sum(exp(x));
  y.backward();
  std::string msg = error_of([&] { y.backward(); });
  CHECK(contains(msg, "second time"));
  Tensor z = sum(exp(x));
  z.backward({}, true);
  CHECK_NOTHROW(z.backward());
}

TEST_CASE("tape nodes are released when outputs die") {
  int64_t before = live_node_count();
  {
    Tensor x = vec({1, 2}).requires_grad_();
    Tensor y = sum(exp(sin(x)));
    CHECK(live_node_count() >= before + 3);
  }
  CHECK(live_node_count() == before);
}

TEST_CASE("grad() w.r.t. intermediate tensors and allow_unused") {
  Tensor x = vec({1, 2}).requires_grad_();
  Tensor h = exp(x);
  Tensor y = sum(square(h));
  Tensor gh = grad({y}, {h}, {}, true)[0];
  auto a = gh.to_vector(), e = h.to_vector();
  for (int i = 0; i < 2; ++i) CHECK(a[i] == doctest::Approx(2 * e[i]));
  CHECK(!x.grad().defined());  // grad() does not accumulate into leaves
  Tensor unused = vec({5}).requires_grad_();
  CHECK(contains(error_of([&] { grad({y}, {unused}, {}, true); }), "not used"));
  CHECK(!grad({y}, {unused}, {}, true, false, true)[0].defined());
}

TEST_CASE("non-scalar outputs need grad_outputs") {
  Tensor x = vec({1, 2}).requires_grad_();
  Tensor y = exp(x);
  std::string msg = error_of([&] { y.backward(); });
  CHECK(contains(msg, "scalar"));
  CHECK(contains(msg, "[2]"));
  y.backward(vec({1, 10}));
  auto g = x.grad().to_vector();
  CHECK(g[1] == doctest::Approx(10 * std::exp(2.0)));
}

TEST_CASE("leaving a DualLevel erases its tangents") {
  Tensor y;
  {
    DualLevel level;
    Tensor x = make_dual(vec({1, 2}), vec({1, 1}));
    y = exp(x);
    CHECK(y.tangent(level.id()).defined());
    CHECK(live_tangent_count() >= 2);
  }
  CHECK(num_open_levels() == 0);
  CHECK(y.impl()->tangents->by_level.empty());
}

TEST_CASE("symbolic zeros: a JVP w.r.t. x allocates no tangent for parameters") {
  DualLevel level;
  Tensor w = vec({0.5, -0.25}).requires_grad_();
  Tensor b = vec({0.1, 0.2}).requires_grad_();
  Tensor x = make_dual(vec({1, 2}), vec({1, 0}));
  Tensor h = tanh(add(mul(x, w), b));
  CHECK(!w.tangent(level.id()).defined());
  CHECK(!b.tangent(level.id()).defined());
  CHECK(h.tangent(level.id()).defined());
  // a function of parameters only never gets a tangent
  CHECK(!exp(mul(w, b)).tangent(level.id()).defined());
  CHECK(!unpack_dual(exp(w)).second.defined());
}

TEST_CASE("non-differentiable tangents leave nothing on the tape") {
  Tensor w = vec({0.3, 0.7}).requires_grad_();
  int64_t before = live_node_count();
  Tensor y, t;
  {
    DualLevel level(false);
    Tensor x = make_dual(vec({1, 2}), vec({1, 1}));
    Tensor out = sum(sin(mul(x, w)));
    auto pt = unpack_dual(out);
    y = pt.first;
    t = pt.second;
  }
  CHECK(y.requires_grad());
  CHECK(!t.requires_grad());
  int64_t primal_nodes = live_node_count() - before;
  // primal: mul, sin, sum, alias(unpack) (+ make_dual alias of a constant records nothing)
  CHECK(primal_nodes <= 5);
}

TEST_CASE("nested levels give second derivatives (forward over forward)") {
  DualLevel outer;
  DualLevel inner;
  Tensor x = make_dual(make_dual(vec({0.4}), vec({1}), outer.id()), vec({1}), inner.id());
  Tensor y = sin(x);
  Tensor dy = y.tangent(inner.id());      // cos x
  Tensor d2y = dy.tangent(outer.id());    // -sin x
  CHECK(dy.item() == doctest::Approx(std::cos(0.4)));
  CHECK(d2y.item() == doctest::Approx(-std::sin(0.4)));
}

TEST_CASE("make_dual and unpack_dual are differentiable in reverse") {
  Tensor x = vec({0.3, 0.9}).requires_grad_();
  Tensor v = vec({1, 2}).requires_grad_();
  Tensor loss;
  {
    DualLevel level;
    Tensor y = exp(make_dual(x, v));
    auto [p, t] = unpack_dual(y);
    loss = add(sum(t), sum(p));  // sum(e^x v) + sum(e^x)
  }
  loss.backward();
  auto gx = x.grad().to_vector(), gv = v.grad().to_vector();
  CHECK(gx[0] == doctest::Approx(std::exp(0.3) * (1 + 1)));
  CHECK(gx[1] == doctest::Approx(std::exp(0.9) * (2 + 1)));
  CHECK(gv[0] == doctest::Approx(std::exp(0.3)));
}

TEST_CASE("transforms: grad, value_and_grad, vjp, jvp, hvp on a closed form") {
  // f(x, y) = sum(x^2 y + sin(x))
  auto f = [](const Tensors& a) { return sum(add(mul(square(a[0]), a[1]), sin(a[0]))); };
  Tensor x = vec({0.5, 1.5}), y = vec({2, -1});
  auto [val, g] = value_and_grad(f, {x, y});
  CHECK(val.item() == doctest::Approx(0.25 * 2 + std::sin(0.5) + 2.25 * -1 + std::sin(1.5)));
  CHECK(g[0].to_vector()[0] == doctest::Approx(2 * 0.5 * 2 + std::cos(0.5)));
  CHECK(g[1].to_vector()[1] == doctest::Approx(2.25));
  auto [outs, pull] = vjp([&](const Tensors& a) { return Tensors{f(a)}; }, {x, y});
  auto g2 = pull({scalar_tensor(3, DType::F64)});
  CHECK(g2[1].to_vector()[0] == doctest::Approx(3 * 0.25));
  auto [p, t] = jvp([&](const Tensors& a) { return Tensors{f(a)}; }, {x, y}, {vec({1, 0}), vec({0, 0})});
  CHECK(t[0].item() == doctest::Approx(2 * 0.5 * 2 + std::cos(0.5)));
  // H = [[2y + -sin x (diag), 2x], [2x, 0]]; H [vx; vy] with vx = (1, 0), vy = (0, 1)
  auto h = hvp(f, {x, y}, {vec({1, 0}), vec({0, 1})});
  auto hx = h[0].to_vector(), hy = h[1].to_vector();
  CHECK(hx[0] == doctest::Approx(2 * 2 - std::sin(0.5)));
  CHECK(hx[1] == doctest::Approx(2 * 1.5));
  CHECK(hy[0] == doctest::Approx(2 * 0.5));
  CHECK(hy[1] == doctest::Approx(0));
}

TEST_CASE("JVP is linear in the tangent") {
  auto f = [](const Tensors& a) { return Tensors{mul(tanh(a[0]), exp(a[0]))}; };
  Tensor x = vec({0.1, -0.4, 0.8}), v1 = vec({1, 2, 3}), v2 = vec({-1, 0.5, 0.25});
  Tensor a = jvp(f, {x}, {v1}).second[0], b = jvp(f, {x}, {v2}).second[0];
  Tensor c = jvp(f, {x}, {add(mul(v1, 2.0), mul(v2, -3.0))}).second[0];
  auto va = a.to_vector(), vb = b.to_vector(), vc = c.to_vector();
  for (int i = 0; i < 3; ++i) CHECK(vc[i] == doctest::Approx(2 * va[i] - 3 * vb[i]).epsilon(1e-12));
}

TEST_CASE("errors name the op and what was expected") {
  Tensor a = zeros({2, 3}, DType::F64), b = zeros({4}, DType::F64), c = zeros({2, 3}, DType::F32);
  std::string m = error_of([&] { add(a, b); });
  CHECK(contains(m, "add"));
  CHECK(contains(m, "[2, 3]"));
  CHECK(contains(m, "[4]"));
  m = error_of([&] { matmul(a, transpose(c, 0, 1)); });   // elementwise ops promote mixed dtypes; matmul does not
  CHECK(contains(m, "matmul"));
  CHECK(contains(m, "dtype"));
  m = error_of([&] { sum(a, {2}); });
  CHECK(contains(m, "sum"));
  CHECK(contains(m, "axis 2"));
  m = error_of([&] { reshape(a, {4, 2}); });
  CHECK(contains(m, "reshape"));
  m = error_of([&] { make_dual(a, b); });
  CHECK(contains(m, "make_dual"));
  m = error_of([&] { DualLevel l; make_dual(a, b); });
  CHECK(contains(m, "tangent shape"));
  m = error_of([&] { a.to(Device::CUDA); });
  if (!cuda_available()) CHECK(contains(m, "CUDA"));
  m = error_of([&] { Tensor x = vec({1}); x.backward(); });
  CHECK(contains(m, "does not require grad"));
}

TEST_CASE("Philox RNG: counter-based, seed-separated, right moments") {
  Tensor a = randn({10000}, 42, DType::F64), b = randn({10000}, 42, DType::F64), c = randn({10000}, 43, DType::F64);
  auto va = a.to_vector(), vb = b.to_vector(), vc = c.to_vector();
  CHECK(va == vb);
  CHECK(va != vc);
  double m = 0, s = 0;
  for (double v : va) m += v;
  m /= va.size();
  for (double v : va) s += (v - m) * (v - m);
  s /= va.size();
  CHECK(std::fabs(m) < 0.05);
  CHECK(std::fabs(s - 1) < 0.05);
  // offsets select the same stream: element 5 of offset 0 == element 0 of offset 5
  CHECK(randn({1}, 7, DType::F64, Device::CPU, 5).item() == randn({6}, 7, DType::F64).to_vector()[5]);
  Tensor u = rand({10000}, 1, DType::F64);
  auto vu = u.to_vector();
  double mu = 0;
  for (double v : vu) {
    CHECK(v > 0);
    CHECK(v <= 1);
    mu += v;
  }
  CHECK(std::fabs(mu / vu.size() - 0.5) < 0.02);
  Generator g(3);
  Tensor g1 = g.randn({3}), g2 = g.randn({3});
  CHECK(g1.to_vector() != g2.to_vector());
}

TEST_CASE("Philox RNG: the f32 normal stream (four normals per block) slices by offset and has N(0,1) moments") {
  auto v = randn({100003}, 42, DType::F32).to_vector();
  double m = 0, s = 0, k4 = 0;
  for (double x : v) m += x;
  m /= v.size();
  for (double x : v) {
    s += (x - m) * (x - m);
    k4 += std::pow(x - m, 4);
  }
  s /= v.size();
  k4 /= v.size() * s * s;
  CHECK(std::fabs(m) < 0.02);
  CHECK(std::fabs(s - 1) < 0.02);
  CHECK(std::fabs(k4 - 3) < 0.1);  // kurtosis: the radius/angle pairing is right, not just the variance
  // Every offset (aligned to a block or not) reads the same stream: element i of offset o is element
  // o + i of offset 0. bf16 is that stream rounded.
  Tensor whole = randn({64}, 7, DType::F32);
  for (uint64_t o : {1, 2, 3, 4, 5, 13}) {
    CAPTURE(o);
    auto part = randn({17}, 7, DType::F32, Device::CPU, o).to_vector();
    auto want = slice(whole, 0, int64_t(o), int64_t(o) + 17).to_vector();
    CHECK(part == want);
    CHECK(randn({17}, 7, DType::BF16, Device::CPU, o).to_vector() ==
          cast(slice(whole, 0, int64_t(o), int64_t(o) + 17), DType::BF16).to_vector());
  }
  // Cos and sin members of a pair differ; a later block is a different draw.
  CHECK(v[0] != v[1]);
  CHECK(v[1] != v[2]);
  CHECK(v[0] != v[4]);
}

TEST_CASE("views share storage") {
  Tensor x = arange(0, 6, 1, DType::F64);
  Tensor v = reshape(x, {2, 3});
  Tensor t = transpose(v, 0, 1);
  x.data_as<double>()[4] = 40;
  CHECK(t.to_vector()[3] == 40);  // t[1][1] = v[1][1] = x[4]
  CHECK(!t.is_contiguous());
  CHECK(t.contiguous().is_contiguous());
}

TEST_CASE("small MLP: reverse-over-forward and forward-over-reverse vs finite differences") {
  // f(x, W1, b1, W2, b2) = W2 silu(W1 x + b1) + b2; derivatives w.r.t. all inputs jointly.
  test::Builder mlp = [](const Tensors& a) {
    Tensor h = silu(linear(a[0], a[1], a[2]));
    return tanh(linear(h, a[3], a[4]));
  };
  Tensors x = {randn({5, 3}, 1, DType::F64), mul(randn({8, 3}, 2, DType::F64), 0.5), mul(randn({8}, 3, DType::F64), 0.1),
               mul(randn({2, 8}, 4, DType::F64), 0.4), mul(randn({2}, 5, DType::F64), 0.1)};
  CHECK(test::check_jvp(mlp, x, 7) == "");
  CHECK(test::check_vjp(mlp, x, 8) == "");
  CHECK(test::check_rev_over_fwd(mlp, x, 9) == "");
  CHECK(test::check_fwd_over_rev(mlp, x, 10) == "");
  // A wrong derivative must be caught: stop_gradient hides the x^2 term from both modes alike (so
  // <u, Jv> = <J^T u, v> still holds), and the JVP check against finite differences reports it.
  test::Builder wrong = [](const Tensors& a) { return add(a[0], stop_gradient(square(a[0]))); };
  CHECK(test::check_vjp(wrong, {randn({4}, 3, DType::F64)}, 1) == "");
  CHECK(test::check_jvp(wrong, {randn({4}, 3, DType::F64)}, 1) != "");
}

namespace {
int g_fused_calls = 0;
// y = x^3 with a one-pass (primal, tangent) kernel beside the usual rules.
const OpDef& cube_op() {
  static OpDef op = [] {
    OpDef o{"test_cube",
            [](const Tensors& in, const Attrs&) { return Tensors{mul(square(in[0]), in[0])}; },
            [](const RuleCtx& c, const Tensors& t) { return Tensors{mul(t[0], mul(square(c.in[0]), 3.0))}; },
            [](const RuleCtx& c, const Tensors& g, const std::vector<bool>&) {
              return Tensors{mul(g[0], mul(square(c.in[0]), 3.0))};
            },
            true, false};
    o.forward_with_tangents = [](const Tensors& in, const Tensors& t, const Attrs&) {
      ++g_fused_calls;
      return std::make_pair(Tensors{mul(square(in[0]), in[0])}, Tensors{mul(t[0], mul(square(in[0]), 3.0))});
    };
    return o;
  }();
  return op;
}
}  // namespace

TEST_CASE("forward_with_tangents replaces forward + jvp only when no tangent graph is wanted") {
  Tensor x = vec({0.5, -2});
  Tensor w = vec({1.5, 0.25}).requires_grad_();
  auto run = [&](bool differentiable) {
    DualLevel level(differentiable);
    Tensor y = apply1(cube_op(), {mul(make_dual(x, vec({1, 1})), w)});
    return unpack_dual(y);
  };
  g_fused_calls = 0;
  auto [p1, t1] = run(false);  // sCM case: the fused kernel, and the primal still on the tape
  CHECK(g_fused_calls == 1);
  CHECK(p1.requires_grad());
  CHECK(!t1.requires_grad());
  auto [p2, t2] = run(true);   // the tangent must be differentiable: forward + jvp rule
  CHECK(g_fused_calls == 1);
  CHECK(t2.requires_grad());
  CHECK(t1.to_vector() == t2.to_vector());
  CHECK(p1.to_vector() == p2.to_vector());
  {
    DualLevel outer, inner;  // two levels carry tangents: the rules, not the fused kernel
    Tensor xd = make_dual(make_dual(x, vec({1, 0}), outer.id()), vec({0, 1}), inner.id());
    apply1(cube_op(), {xd});
  }
  CHECK(g_fused_calls == 1);
}
