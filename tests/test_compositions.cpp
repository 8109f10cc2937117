// Transforms applied to each other on composite functions: the reproductions of nested forward mode,
// jvp over hvp and vjp with constant outputs, stop_gradient in both modes, dense Jacobians and
// Hessians, and the generic checker run on whole blocks (a transformer block, a conv net with group
// norm, a numerically hard log-sigmoid, the fused attention op's own rules on CPU).
#include <doctest/doctest.h>

#include <cmath>

#include "ops/fused_attention.h"
#include "tests/checker.h"
#include "tests/test_util.h"

using namespace df;
using namespace df::test;

namespace {

Tensor vec(std::vector<double> v) { return from_vector(v, {(int64_t)v.size()}, DType::F64); }

void check_close(const Tensor& got, const std::vector<double>& want, double tol = 1e-10) {
  auto g = got.to_vector();
  REQUIRE(g.size() == want.size());
  for (size_t i = 0; i < g.size(); ++i) CHECK(g[i] == doctest::Approx(want[i]).epsilon(tol).scale(1));
}

Tensor pick(const Tensor& t, int64_t axis, int64_t i) { return squeeze(slice(t, axis, i, i + 1), axis); }

Tensor rnd(const Shape& s, uint64_t seed, double scale = 1) {
  NoGrad ng;
  return mul(randn(s, seed, DType::F64), scale);
}

}  // namespace

TEST_CASE("nested dual levels: the mixed tangent is right whichever level is read first") {
  // y = exp(x): d2y[v1, v2] = exp(x) v1 v2, for every op whose JVP reads its own output too.
  struct Case {
    const char* name;
    std::function<Tensor(const Tensor&)> f;
    std::function<double(double)> d2;
  };
  std::vector<Case> cases = {
      {"exp", [](const Tensor& x) { return exp(x); }, [](double x) { return std::exp(x); }},
      {"tanh", [](const Tensor& x) { return tanh(x); },
       [](double x) { double t = std::tanh(x); return -2 * t * (1 - t * t); }},
      {"sigmoid", [](const Tensor& x) { return sigmoid(x); },
       [](double x) { double s = 1 / (1 + std::exp(-x)); return s * (1 - s) * (1 - 2 * s); }},
      {"sqrt", [](const Tensor& x) { return sqrt(x); }, [](double x) { return -0.25 * std::pow(x, -1.5); }},
      {"rsqrt", [](const Tensor& x) { return rsqrt(x); }, [](double x) { return 0.75 * std::pow(x, -2.5); }},
      {"tan", [](const Tensor& x) { return tan(x); },
       [](double x) { double t = std::tan(x); return 2 * t * (1 + t * t); }},
  };
  const std::vector<double> xs = {0.3, 0.8}, v1 = {1.5, -0.5}, v2 = {0.25, 2.0};
  for (auto& c : cases) {
    CAPTURE(c.name);
    DualLevel outer, inner;
    Tensor x = make_dual(make_dual(vec(xs), vec(v1), outer.id()), vec(v2), inner.id());
    Tensor y = c.f(x);
    Tensor a = unpack_dual(unpack_dual(y, outer.id()).second, inner.id()).second;
    Tensor b = unpack_dual(unpack_dual(y, inner.id()).second, outer.id()).second;
    REQUIRE(a.defined());
    REQUIRE(b.defined());
    std::vector<double> want;
    for (int i = 0; i < 2; ++i) want.push_back(c.d2(xs[i]) * v1[i] * v2[i]);
    check_close(a, want);
    check_close(b, want);
  }
}

TEST_CASE("nested dual levels: softmax and log_softmax mixed tangents in both orders match nested jvp()") {
  Tensor x = rnd({2, 5}, 3), v1 = rnd({2, 5}, 4), v2 = rnd({2, 5}, 5);
  for (int which = 0; which < 2; ++which) {
    auto f = [&](const Tensor& t) { return which ? log_softmax(t, -1) : softmax(t, -1); };
    auto ref = jvp([&](const Tensors& a) {
                 return Tensors{jvp([&](const Tensors& b) { return Tensors{f(b[0])}; }, a, {v1}).second[0]};
               },
               {x}, {v2}).second[0];
    DualLevel outer, inner;
    Tensor y = f(make_dual(make_dual(x, v1, outer.id()), v2, inner.id()));
    check_close(unpack_dual(unpack_dual(y, outer.id()).second, inner.id()).second, ref.to_vector(), 1e-12);
    check_close(unpack_dual(unpack_dual(y, inner.id()).second, outer.id()).second, ref.to_vector(), 1e-12);
  }
}

TEST_CASE("nested dual levels leave the inputs' tangents untouched") {
  Tensor v1 = vec({1, 2}), v2 = vec({3, 4});
  DualLevel outer, inner;
  Tensor x = make_dual(make_dual(vec({0.1, 0.2}), v1, outer.id()), v2, inner.id());
  Tensor y = add(x, exp(x));  // add's rule can return an input tangent as the output's
  (void)y;
  CHECK(!v1.tangent(inner.id()).defined());
  CHECK(!v2.tangent(outer.id()).defined());
}

TEST_CASE("jvp over hvp is the third derivative, and hvp's result is differentiable in reverse") {
  // f(x) = sum(x^4 / 12): H v = x^2 v, d/dx (H v) along w = 2 x v w.
  auto f = [](const Tensors& a) { return sum(mul(pow(a[0], 4.0), 1.0 / 12)); };
  Tensor x = vec({0.5, -1.5}), v = vec({2, 3}), w = vec({1, -1});
  auto [hv, dhv] = jvp([&](const Tensors& a) { return hvp(f, a, {v}); }, {x}, {w});
  check_close(hv[0], {0.25 * 2, 2.25 * 3});
  check_close(dhv[0], {2 * 0.5 * 2 * 1, 2 * -1.5 * 3 * -1});
  // Reverse: grad of sum(H v) = 2 x v.
  Tensor xl = vec({0.5, -1.5}).requires_grad_();
  Tensor s = sum(hvp(f, {xl}, {v})[0]);
  REQUIRE(s.requires_grad());
  s.backward();
  check_close(xl.grad(), {2 * 0.5 * 2, 2 * -1.5 * 3});
}

TEST_CASE("vjp's pullback gives zero cotangents for outputs that do not depend on the inputs") {
  Tensor x = vec({0.2, 0.4});
  auto [outs, pullback] = vjp([](const Tensors& a) { return Tensors{sin(a[0]), ones({2}, DType::F64)}; }, {x});
  Tensors g = pullback({vec({1, 1}), vec({5, 7})});
  check_close(g[0], {std::cos(0.2), std::cos(0.4)});
  // vjp over the jvp of linear functions: the tangent does not depend on x, so the cotangent is 0.
  std::vector<std::pair<const char*, std::function<Tensor(const Tensor&)>>> linear = {
      {"x - mean x", [](const Tensor& t) { return sub(t, mean(t)); }},
      {"reshape", [](const Tensor& t) { return reshape(t, {2, 2}); }},
      {"avg_pool", [](const Tensor& t) { return avg_pool2d(reshape(t, {1, 1, 2, 2}), 2); }},
      {"slice then sum", [](const Tensor& t) { return sum(slice(t, 0, 1, 3)); }},
      {"2a", [](const Tensor& t) { return mul(t, 2.0); }},
  };
  Tensor x4 = vec({0.1, 0.2, 0.3, 0.4}), v4 = vec({1, 2, 3, 4});
  for (auto& [name, f] : linear) {
    CAPTURE(name);
    auto G = [&, f = f](const Tensors& a) { return jvp([&](const Tensors& b) { return Tensors{f(b[0])}; }, a, {v4}).second; };
    auto [o, pb] = vjp(G, {x4});
    Tensors ct;
    CHECK_NOTHROW(ct = pb({ones_like(o[0])}));
    for (double e : ct[0].to_vector()) CHECK(e == 0);
  }
}

TEST_CASE("stop_gradient is a constant in both modes, so its JVP and VJP are transposes") {
  Tensor x = vec({0.3, -0.7});
  auto f = [](const Tensors& a) { return mul(stop_gradient(square(a[0])), sin(a[0])); };
  auto [p, t] = jvp([&](const Tensors& a) { return Tensors{f(a)}; }, {x}, {vec({1, 1})});
  // d/dx [sg(x^2) sin x] = x^2 cos x in both modes.
  check_close(t[0], {0.09 * std::cos(0.3), 0.49 * std::cos(-0.7)});
  CHECK(check_vjp([&](const Tensors& a) { return f(a); }, {x}, 7) == "");
  CHECK(check_jvp([&](const Tensors& a) { return f(a); }, {x}, 8).find("mismatch") != std::string::npos);
}

TEST_CASE("jacfwd, jacrev and hessian: closed forms, shapes, and agreement") {
  // f(x) = (x0 x1, sin x0, x1^2): J = [[x1, x0], [cos x0, 0], [0, 2 x1]]
  auto f = [](const Tensor& x) {
    Tensor a = slice(x, 0, 0, 1), b = slice(x, 0, 1, 2);
    return cat({mul(a, b), sin(a), square(b)}, int64_t{0});
  };
  Tensor x = vec({0.5, 2.0});
  Tensor Jf = jacfwd(f, x), Jr = jacrev(f, x);
  CHECK(Jf.shape() == Shape{3, 2});
  CHECK(Jr.shape() == Shape{3, 2});
  std::vector<double> want = {2.0, 0.5, std::cos(0.5), 0, 0, 4.0};
  check_close(Jf, want);
  check_close(Jr, want);
  // Hessian of g(x) = x0^2 x1 + exp(x1): [[2 x1, 2 x0], [2 x0, exp(x1)]]
  auto g = [](const Tensor& t) { return add(mul(square(slice(t, 0, 0, 1)), slice(t, 0, 1, 2)), exp(slice(t, 0, 1, 2))); };
  Tensor H = hessian([&](const Tensor& t) { return sum(g(t)); }, x);
  CHECK(H.shape() == Shape{2, 2});
  check_close(H, {4.0, 1.0, 1.0, std::exp(2.0)});
  // jacrev of the gradient equals the Hessian; multi-dimensional shapes are out.shape + in.shape.
  Tensor H2 = jacrev([&](const Tensor& t) { return grad_of([&](const Tensors& a) { return sum(g(a[0])); }, {t})[0]; }, x);
  check_close(H2, H.to_vector());
  Tensor m = rnd({2, 3}, 9);
  Tensor Jm = jacrev([](const Tensor& t) { return sum(square(t), {1}); }, m);
  CHECK(Jm.shape() == Shape{2, 2, 3});
  Tensor Jm2 = jacfwd([](const Tensor& t) { return sum(square(t), {1}); }, m);
  check_close(Jm2, Jm.to_vector());
  // A transform of a transform of a transform: the Hessian is differentiable in reverse.
  Tensor xl = vec({0.5, 2.0}).requires_grad_();
  Tensor tr = sum(hessian([&](const Tensor& t) { return sum(g(t)); }, xl));  // 2 x1 + 4 x0 + exp(x1)
  tr.backward();
  check_close(xl.grad(), {4.0, 2 + std::exp(2.0)});
}

TEST_CASE("a VJP rule that reads an output the op does not save fails naming the op") {
  static OpDef bad{"exp_forgets_outputs",
                   [](const Tensors& in, const Attrs&) {
                     NoGrad ng;
                     return Tensors{exp(in[0]).detach()};
                   },
                   [](const RuleCtx& c, const Tensors& t) { return Tensors{mul(t[0], c.out[0])}; },
                   [](const RuleCtx& c, const Tensors& g, const std::vector<bool>&) { return Tensors{mul(g[0], c.out[0])}; },
                   true, /*save_outputs=*/false};
  Tensor x = vec({0.1}).requires_grad_();
  Tensor y = apply1(bad, {x});
  std::string msg = error_of([&] { y.backward(); });
  CHECK(contains(msg, "exp_forgets_outputs"));
  CHECK(contains(msg, "save_outputs"));
}

// ---- the checker on whole blocks --------------------------------------------------------------

namespace {
void check_block(const std::string& name, const Builder& f, const Tensors& x, CheckTol tol = {}) {
  CAPTURE(name);
  CHECK_MESSAGE(check_all(f, x, 201, tol) == "", name);
  CHECK_MESSAGE(check_compositions(f, x, 202, tol) == "", name);
}
}  // namespace

TEST_CASE("whole blocks through every transform pair: transformer block, conv net with group norm") {
  // Transformer block (pre-norm): x + proj(attn(ln x)), then + mlp(ln .), heads 2 of 2.
  auto block = [](const Tensors& a) {
    const Tensor &x = a[0], &wqkv = a[1], &wproj = a[2], &w1 = a[3], &w2 = a[4];
    const int64_t B = 2, N = 3, C = 4, H = 2, D = 2;
    Tensor h = layer_norm(x, 1);
    Tensor qkv = reshape(linear(h, wqkv), {B, N, 3, H, D});
    Tensor q = permute(pick(qkv, 2, 0), {0, 2, 1, 3}), k = permute(pick(qkv, 2, 1), {0, 2, 1, 3}),
           v = permute(pick(qkv, 2, 2), {0, 2, 1, 3});
    Tensor o = reshape(permute(attention(q, k, v), {0, 2, 1, 3}), {B, N, C});
    Tensor x1 = add(x, linear(o, wproj));
    return sum(mul(add(x1, linear(gelu(linear(layer_norm(x1, 1), w1)), w2)), 0.5));
  };
  Tensors tx = {rnd({2, 3, 4}, 11), rnd({12, 4}, 12, 0.5), rnd({4, 4}, 13, 0.5), rnd({8, 4}, 14, 0.5),
                rnd({4, 8}, 15, 0.5)};
  check_block("transformer block", block, tx);

  auto convnet = [](const Tensors& a) {
    Tensor h = conv2d(a[0], a[1], a[2], 1, 1);
    h = silu(group_norm(h, 2, a[3]));
    h = conv2d(h, a[4], Tensor(), 2, 1);
    return mean(square(h));
  };
  Tensors cx = {rnd({2, 2, 4, 4}, 21), rnd({4, 2, 3, 3}, 22, 0.4), rnd({4}, 23, 0.1), add(rnd({4}, 24, 0.1), 1.0),
                rnd({2, 4, 3, 3}, 25, 0.4)};
  check_block("conv net with group norm", convnet, cx);
}

TEST_CASE("a numerically hard case through every transform pair: log(sigmoid(x)) at |x| ~ 300") {
  auto f = [](const Tensors& a) { return log(sigmoid(a[0])); };
  Tensor x = vec({-300, -290.5, 295, 300});
  auto y = f({x}).to_vector();
  CHECK(y[0] == doctest::Approx(-300).epsilon(1e-14));
  CHECK(y[3] == doctest::Approx(0).scale(1e-100));
  check_block("log(sigmoid(x))", f, {x}, CheckTol{1e-4, 1e-6, 1e-12});
}

TEST_CASE("the fused attention op's own rules on CPU match the composite reference at every order") {
  Tensor q = rnd({1, 2, 3, 4}, 31), k = rnd({1, 2, 5, 4}, 32), v = rnd({1, 2, 5, 4}, 33);
  auto fused = [](const Tensors& a) { return fused_attention_op_with_lse(a[0], a[1], a[2])[0]; };
  auto fused_lse = [](const Tensors& a) { return cast(fused_attention_op_with_lse(a[0], a[1], a[2])[1], DType::F64); };
  auto ref = [](const Tensors& a) { return attention_reference(a[0], a[1], a[2]); };
  check_close(fused({q, k, v}), ref({q, k, v}).to_vector(), 1e-12);
  Tensors tv = {rnd({1, 2, 3, 4}, 34), rnd({1, 2, 5, 4}, 35), rnd({1, 2, 5, 4}, 36)};
  // The op's JVP rule (the one-pass kernel's composite) against the reference's JVP.
  auto a = jvp([&](const Tensors& x) { return Tensors{fused(x)}; }, {q, k, v}, tv).second[0];
  auto b = jvp([&](const Tensors& x) { return Tensors{ref(x)}; }, {q, k, v}, tv).second[0];
  check_close(a, b.to_vector(), 1e-12);
  check_block("fused attention op (o)", fused, {q, k, v});
  // lse is f32 by design (the kernels' layout), so its checks use f32-sized steps and tolerances.
  check_block("fused attention op (lse)", fused_lse, {q, k, v}, CheckTol{1e-2, 2e-3, 1e-4});
}
