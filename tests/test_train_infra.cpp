// Tests of the training infrastructure: modules, optimizers, clipping, EMA, toy data, metrics, plots.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdio>
#include <string>

#include "models/mlp.h"
#include "models/module.h"
#include "ops/ops.h"
#include "train/optim.h"

using namespace df;

namespace {

// A module tree to check naming: net.{layers.0, layers.1}.{weight, bias}, plus a direct parameter.
struct Stack : Module {
  Stack(Generator& g) {
    scale = register_parameter("scale", ones({3}, DType::F64));
    l0 = register_module("layers.0", std::make_shared<Linear>(2, 3, true, g, DType::F64));
    l1 = register_module("layers.1", std::make_shared<Linear>(3, 1, false, g, DType::F64));
  }
  std::shared_ptr<Linear> l0, l1;
  Tensor scale;
};
struct Outer : Module {
  Outer(Generator& g) { net = register_module("net", std::make_shared<Stack>(g)); }
  std::shared_ptr<Stack> net;
};

void check_close(const std::vector<double>& got, const std::vector<double>& want, double tol) {
  REQUIRE(got.size() == want.size());
  for (size_t i = 0; i < got.size(); ++i) CHECK(got[i] == doctest::Approx(want[i]).epsilon(tol));
}

}  // namespace

TEST_CASE("module: parameter names, counts, zero_grad and strict load") {
  Generator g(1);
  Outer m(g);
  auto np = m.named_parameters();
  std::vector<std::string> names;
  for (auto& [n, p] : np) names.push_back(n);
  CHECK(names == std::vector<std::string>{"net.scale", "net.layers.0.weight", "net.layers.0.bias",
                                          "net.layers.1.weight"});
  CHECK(m.num_parameters() == 3 + 6 + 3 + 3);
  CHECK(m.parameters().size() == 4);
  for (auto& [n, p] : np) CHECK(p.requires_grad());
  // The handles share storage with the layer's members.
  CHECK(np[1].second.impl() == m.net->l0->weight.impl());

  // Init is U(-1/sqrt(in), 1/sqrt(in)) and deterministic from the generator.
  for (double w : m.net->l0->weight.to_vector()) CHECK(std::abs(w) <= 1 / std::sqrt(2.0));
  Generator g2(1);
  Outer m2(g2);
  CHECK(m2.net->l0->weight.to_vector() == m.net->l0->weight.to_vector());

  Tensor loss = sum(m.net->l1->forward(m.net->l0->forward(ones({4, 2}, DType::F64))));
  loss.backward();
  CHECK(m.net->l0->weight.grad().defined());
  m.zero_grad();
  for (auto& [n, p] : m.named_parameters()) CHECK(!p.grad().defined());

  // load_parameters writes into the existing storage.
  Tensor w_handle = m.net->l0->weight;
  std::vector<std::pair<std::string, Tensor>> vals;
  for (auto& [n, p] : np) vals.emplace_back(n, full(p.shape(), 0.25, DType::F32));
  m.load_parameters(vals);
  for (double w : w_handle.to_vector()) CHECK(w == 0.25);
  CHECK(w_handle.dtype() == DType::F64);
  vals.pop_back();
  CHECK_THROWS_WITH_AS(m.load_parameters(vals), doctest::Contains("net.layers.1.weight"), Error);
  vals.emplace_back("net.nope", zeros({1}));
  CHECK_THROWS_WITH_AS(m.load_parameters(vals), doctest::Contains("nope"), Error);
}

TEST_CASE("Linear forward matches a hand computation") {
  Generator g(3);
  Linear lin(3, 2, true, g, DType::F64);
  std::vector<double> w = {0.5, -1, 2, 0.25, 0, -0.75}, b = {0.1, -0.2};
  lin.load_parameters({{"weight", from_vector(w, {2, 3}, DType::F64)}, {"bias", from_vector(b, {2}, DType::F64)}});
  std::vector<double> x = {1, 2, 3, -1, 0.5, 4};
  Tensor y = lin.forward(from_vector(x, {2, 3}, DType::F64));
  REQUIRE(y.shape() == Shape{2, 2});
  std::vector<double> want(4);
  for (int i = 0; i < 2; ++i)
    for (int o = 0; o < 2; ++o) {
      double s = b[o];
      for (int k = 0; k < 3; ++k) s += x[i * 3 + k] * w[o * 3 + k];
      want[i * 2 + o] = s;
    }
  check_close(y.to_vector(), want, 1e-12);
  CHECK_THROWS_AS(lin.forward(zeros({2, 4}, DType::F64)), Error);
}

TEST_CASE("positional_embedding values and derivative") {
  Tensor c = from_vector({0.0, 0.3, -2.0}, {3}, DType::F64);
  Tensor e = positional_embedding(c, 8, 100);
  REQUIRE(e.shape() == Shape{3, 8});
  auto v = e.to_vector();
  std::vector<double> cs = {0.0, 0.3, -2.0};
  for (int b = 0; b < 3; ++b)
    for (int k = 0; k < 4; ++k) {
      double w = std::pow(100.0, -k / 4.0);
      CHECK(v[b * 8 + k] == doctest::Approx(std::cos(cs[b] * w)).epsilon(1e-12));
      CHECK(v[b * 8 + 4 + k] == doctest::Approx(std::sin(cs[b] * w)).epsilon(1e-12));
    }
  // d/dc of sum(emb) = sum_k w_k (cos(c w_k) - sin(c w_k)) at c = 0.3
  Tensor c1 = from_vector({0.3}, {1}, DType::F64).requires_grad_();
  sum(positional_embedding(c1, 8, 100)).backward();
  double want = 0;
  for (int k = 0; k < 4; ++k) {
    double w = std::pow(100.0, -k / 4.0);
    want += w * (std::cos(0.3 * w) - std::sin(0.3 * w));
  }
  CHECK(c1.grad().item() == doctest::Approx(want).epsilon(1e-10));
  CHECK_THROWS_AS(positional_embedding(c, 7), Error);
}

TEST_CASE("MLPDenoiser: shapes, names, gradient flows to every parameter") {
  Generator g(7);
  MLPDenoiser net(2, 16, 2, g, DType::F32, 8);
  auto np = net.named_parameters();
  CHECK(np.front().first == "emb_in.weight");
  CHECK(np.back().first == "out.bias");
  CHECK(np.size() == 2 * (3 + 2 + 1));
  CHECK(net.num_parameters() == (8 * 16 + 16) + (16 * 16 + 16) + (2 * 16 + 16) + 2 * (16 * 16 + 16) + (16 * 2 + 2));
  Generator gd(8);
  Tensor x = gd.randn({5, 2});
  Tensor c = gd.randn({5});
  Tensor y = net.forward(x, c);
  CHECK(y.shape() == Shape{5, 2});
  sum(square(y)).backward();
  for (auto& [n, p] : np) {
    INFO(n);
    REQUIRE(p.grad().defined());
    double s = 0;
    for (double v : p.grad().to_vector()) s += std::abs(v);
    CHECK(s > 0);
  }
  // The output depends on c_noise.
  Tensor y2 = net.forward(x, add(c, 1.0));
  CHECK(sum(abs(sub(y, y2))).item() > 1e-4);
  CHECK_THROWS_AS(net.forward(x, gd.randn({4})), Error);
}

// ---- optimizers: two (or eight) steps against an independent reference of PyTorch's rules ----
// Reference values from a separate implementation of torch.optim's documented algorithms, with
// p0 = (1, -2) and gradients g_t = (0.5 cos t + 0.1 t, 0.3 - 0.2 t).
namespace {
std::vector<double> run_opt(const std::function<std::unique_ptr<Optimizer>(Tensors)>& make, int steps,
                            DType dt = DType::F64) {
  Tensor p = from_vector({1.0, -2.0}, {2}, dt).requires_grad_();
  auto opt = make({p});
  for (int t = 1; t <= steps; ++t) {
    p.set_grad(from_vector({0.5 * std::cos(t) + 0.1 * t, 0.3 - 0.2 * t}, {2}, dt));
    opt->step();
  }
  CHECK(opt->step_count() == steps);
  return p.to_vector();
}
}  // namespace

TEST_CASE("optimizers match PyTorch's update rules") {
  check_close(run_opt([](Tensors ps) { return make_sgd(ps, 0.1, 0.9, 0.1); }, 2),
              {0.901948773922818, -1.9511}, 1e-12);
  check_close(run_opt([](Tensors ps) { return make_adam(ps, 0.1, 0.9, 0.999, 1e-8, 0.1); }, 2),
              {0.821209152128924, -1.80781408065722}, 1e-12);
  check_close(run_opt([](Tensors ps) { return make_adamw(ps, 0.1, 0.9, 0.999, 1e-8, 0.1); }, 2),
              {0.815733601019119, -2.05393683273158}, 1e-12);
  // RAdam with b2 = 0.9 rectifies from step 6 on, so 8 steps cover both branches.
  check_close(run_opt([](Tensors ps) { return make_radam(ps, 0.1, 0.9, 0.9, 1e-8, 0.1); }, 2),
              {0.926123773767764, -1.96952631578947}, 1e-12);
  check_close(run_opt([](Tensors ps) { return make_radam(ps, 0.1, 0.9, 0.9, 1e-8, 0.1); }, 8),
              {0.794036419004933, -1.75475616326426}, 1e-12);
  // f32 parameters get the same update to f32 precision.
  check_close(run_opt([](Tensors ps) { return make_adam(ps, 0.1, 0.9, 0.999, 1e-8, 0.1); }, 2, DType::F32),
              {0.821209152128924, -1.80781408065722}, 1e-6);
  // Adam's first step moves every coordinate by lr * sign(g), whatever the gradient's scale.
  Tensor p = from_vector({0.0, 0.0, 0.0}, {3}, DType::F64).requires_grad_();
  auto adam = make_adam({p}, 0.01);
  p.set_grad(from_vector({1e-3, -50.0, 2.0}, {3}, DType::F64));
  adam->step();
  check_close(p.to_vector(), {-0.01, 0.01, -0.01}, 1e-6);
}

TEST_CASE("optimizer: in-place update, skipped grads, state round trip") {
  Tensor a = from_vector({1.0, 2.0}, {2}, DType::F64).requires_grad_();
  Tensor b = from_vector({3.0}, {1}, DType::F64).requires_grad_();
  void* storage = a.data();
  auto opt = make_adam({a, b}, 0.1);
  sum(square(a)).backward();  // b gets no grad: skipped
  opt->step();
  CHECK(a.data() == storage);
  CHECK(b.item() == 3.0);
  CHECK(a.to_vector()[0] == doctest::Approx(0.9));
  auto st = opt->state();
  std::vector<std::string> names;
  for (auto& [n, t] : st) names.push_back(n);
  CHECK(names == std::vector<std::string>{"adam.step", "adam.m.0", "adam.m.1", "adam.v.0", "adam.v.1"});
  // A fresh optimizer loaded from the state continues identically.
  Tensor a2 = from_vector(a.to_vector(), {2}, DType::F64).requires_grad_();
  Tensor b2 = from_vector(b.to_vector(), {1}, DType::F64).requires_grad_();
  auto opt2 = make_adam({a2, b2}, 0.1);
  opt2->load_state(st);
  CHECK(opt2->step_count() == 1);
  opt->zero_grad();
  CHECK(!a.grad().defined());
  for (Tensor* p : {&a, &a2}) p->set_grad(from_vector({0.5, -0.25}, {2}, DType::F64));
  opt->step();
  opt2->step();
  CHECK(a.to_vector() == a2.to_vector());
  st.pop_back();
  CHECK_THROWS_WITH_AS(opt2->load_state(st), doctest::Contains("adam.v.1"), Error);
}

TEST_CASE("Adam minimises an ill-conditioned quadratic") {
  Tensor x = from_vector({3.0, -2.0, 1.5}, {3}, DType::F64).requires_grad_();
  Tensor scale = from_vector({1.0, 10.0, 100.0}, {3}, DType::F64);
  auto opt = make_adam({x}, 0.05);
  for (int i = 0; i < 1500; ++i) {
    opt->zero_grad();
    sum(mul(scale, square(add(x, -0.5)))).backward();
    opt->step();
  }
  for (double v : x.to_vector()) CHECK(v == doctest::Approx(0.5).epsilon(1e-3));
}

TEST_CASE("clip_grad_norm and warmup_lr") {
  Tensor a = zeros({2}, DType::F64).requires_grad_();
  Tensor b = zeros({1}, DType::F64).requires_grad_();
  Tensor c = zeros({1}, DType::F64).requires_grad_();  // no grad
  a.set_grad(from_vector({3.0, 0.0}, {2}, DType::F64));
  b.set_grad(from_vector({4.0}, {1}, DType::F64));
  CHECK(clip_grad_norm({a, b, c}, 10.0) == doctest::Approx(5.0));
  CHECK(a.grad().to_vector()[0] == 3.0);  // below the threshold: untouched
  CHECK(clip_grad_norm({a, b, c}, 1.0) == doctest::Approx(5.0));
  CHECK(a.grad().to_vector()[0] == doctest::Approx(0.6).epsilon(1e-6));
  CHECK(b.grad().to_vector()[0] == doctest::Approx(0.8).epsilon(1e-6));
  CHECK(clip_grad_norm({a, b, c}, 1.0) == doctest::Approx(1.0).epsilon(1e-5));
  CHECK(warmup_lr(1e-3, 0, 10) == doctest::Approx(1e-4));
  CHECK(warmup_lr(1e-3, 4, 10) == doctest::Approx(5e-4));
  CHECK(warmup_lr(1e-3, 50, 10) == doctest::Approx(1e-3));
  CHECK(warmup_lr(1e-3, 0, 0) == 1e-3);
}

TEST_CASE("EMA: fixed, half-life and power variants in closed form") {
  // Parameters follow p_t = t (t = 1..n); shadow starts at p_0 = 0.
  auto run = [](EMA& e, Tensor& p, int n) {
    for (int t = 1; t <= n; ++t) {
      assign_(p, full({2}, double(t), DType::F64));
      e.update({p});
    }
  };
  {
    Tensor p = zeros({2}, DType::F64).requires_grad_();
    EMA e(Tensors{p}, 0.9);
    run(e, p, 5);
    double s = 0;
    for (int t = 1; t <= 5; ++t) s = 0.9 * s + 0.1 * t;
    CHECK(e.shadow()[0].to_vector()[1] == doctest::Approx(s).epsilon(1e-12));
    CHECK(e.shadow()[0].impl()->storage != p.impl()->storage);
    // copy_to writes into the parameter storage
    e.copy_to({p});
    CHECK(p.to_vector()[0] == doctest::Approx(s).epsilon(1e-12));
  }
  {
    Tensor p = zeros({2}, DType::F64).requires_grad_();
    EMA e = EMA::halflife({p}, 1000, 100);
    double beta = std::pow(0.5, 0.1);
    CHECK(e.current_beta() == doctest::Approx(beta));
    run(e, p, 10);
    // after halflife_images / batch = 10 updates of a constant-zero start the initial weight halves
    double s = 0;
    for (int t = 1; t <= 10; ++t) s = beta * s + (1 - beta) * t;
    CHECK(e.shadow()[0].to_vector()[0] == doctest::Approx(s).epsilon(1e-12));
    CHECK(std::pow(beta, 10) == doctest::Approx(0.5));
  }
  {
    // Power EMA: beta_t = (1-1/t)^(gamma+1) telescopes, so after n updates p_i carries weight
    // (i^(gamma+1) - (i-1)^(gamma+1)) / n^(gamma+1) (the first update copies).
    Tensor p = zeros({2}, DType::F64).requires_grad_();
    double gamma = 3;
    EMA e = EMA::power({p}, gamma);
    CHECK(e.current_beta() == 0);
    run(e, p, 20);
    double want = 0;
    for (int i = 1; i <= 20; ++i) want += (std::pow(i, gamma + 1) - std::pow(i - 1, gamma + 1)) / std::pow(20, gamma + 1) * i;
    CHECK(e.shadow()[0].to_vector()[0] == doctest::Approx(want).epsilon(1e-10));
    CHECK(e.num_updates() == 20);
    // state round trip
    Tensor q = zeros({2}, DType::F64).requires_grad_();
    EMA e2 = EMA::power({q}, gamma);
    e2.load_state(e.state());
    CHECK(e2.num_updates() == 20);
    CHECK(e2.current_beta() == doctest::Approx(e.current_beta()));
    CHECK(e2.shadow()[0].to_vector() == e.shadow()[0].to_vector());
  }
  CHECK(power_ema_gamma(0.05) == doctest::Approx(16.97).epsilon(1e-3));
  CHECK(power_ema_gamma(0.10) == doctest::Approx(6.94).epsilon(1e-3));
}
