// Tests of the training infrastructure: modules, optimizers, clipping, EMA, toy data, metrics, plots.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdio>
#include <string>
#include <unistd.h>

#include "models/mlp.h"
#include "models/module.h"
#include "ops/ops.h"
#include "train/metrics.h"
#include "train/optim.h"
#include "train/plot.h"
#include "train/toy_data.h"

#include <stb/stb_image.h>

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

TEST_CASE("MLPDenoiser: forward-mode JVP in (x, c_noise) matches central differences (f64)") {
  Generator g(21);
  MLPDenoiser net(2, 8, 1, g, DType::F64, 8);
  Generator gd(22);
  Tensor x = gd.randn({3, 2}, DType::F64), c = gd.randn({3}, DType::F64);
  Tensor dx = gd.randn({3, 2}, DType::F64), dc = gd.randn({3}, DType::F64);
  auto f = [&](const Tensors& in) { return Tensors{net.forward(in[0], in[1])}; };
  auto [out, tan] = jvp(f, {x, c}, {dx, dc}, false);
  double h = 1e-5;
  NoGrad ng;
  auto yp = net.forward(add(x, mul(dx, h)), add(c, mul(dc, h))).to_vector();
  auto ym = net.forward(add(x, mul(dx, -h)), add(c, mul(dc, -h))).to_vector();
  auto t = tan[0].to_vector();
  for (size_t i = 0; i < t.size(); ++i) CHECK(t[i] == doctest::Approx((yp[i] - ym[i]) / (2 * h)).epsilon(1e-6));
}

TEST_CASE("MLPDenoiser + Adam + EMA learn the exact mixture denoiser") {
  // Regress D*(x; sigma) of the 2-D mixture over log-uniform sigma; the fit must improve a lot.
  Generator g(31);
  MLPDenoiser net(2, 32, 1, g);
  GaussianMixture m = simple_gmm_2d();
  auto opt = make_adam(net.parameters(), 3e-3);
  EMA ema(net.parameters(), 0.95);
  auto batch_loss = [&](Generator& gb, bool train) {
    Tensor x0 = m.sample(256, gb, DType::F32);
    Tensor sigma = exp(add(mul(gb.rand({256}), std::log(100.0)), std::log(0.05)));  // [0.05, 5]
    Tensor x = add(x0, mul(gb.randn({256, 2}), unsqueeze(sigma, 1)));
    Tensor target, loss;
    {
      NoGrad ng;
      target = m.denoise(x, sigma);
    }
    if (!train) {
      NoGrad ng;
      return mean(square(sub(net.forward(x, mul(log(sigma), 0.25)), target))).item();
    }
    loss = mean(square(sub(net.forward(x, mul(log(sigma), 0.25)), target)));
    opt->zero_grad();
    loss.backward();
    clip_grad_norm(net.parameters(), 10.0);
    opt->step();
    ema.update(net.parameters());
    return loss.item();
  };
  Generator geval(99), gtrain(32);
  double before = batch_loss(geval, false);
  for (int i = 0; i < 400; ++i) batch_loss(gtrain, true);
  Generator geval2(99);
  double after = batch_loss(geval2, false);
  ema.copy_to(net.parameters());
  Generator geval3(99);
  double after_ema = batch_loss(geval3, false);
  INFO("before ", before, " after ", after, " ema ", after_ema);
  CHECK(after < before / 20);
  CHECK(after_ema < before / 20);
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

// ---- toy data: Gaussian-mixture closed forms ----

TEST_CASE("GaussianMixture log_prob: direct formula and total mass 1") {
  GaussianMixture m = simple_gmm_2d();
  std::vector<double> pts = {0.0, 0.0, -1.4, -0.6, 1.1, 1.0, 3.0, -2.0};
  Tensor lp = m.log_prob(from_vector(pts, {4, 2}, DType::F64));
  REQUIRE(lp.shape() == Shape{4});
  auto v = lp.to_vector();
  for (int i = 0; i < 4; ++i) {
    double p = 0;
    for (size_t k = 0; k < 3; ++k) {
      double s2 = m.stds[k] * m.stds[k];
      double dx = pts[2 * i] - m.means[k][0], dy = pts[2 * i + 1] - m.means[k][1];
      p += m.weights[k] / (2 * M_PI * s2) * std::exp(-(dx * dx + dy * dy) / (2 * s2));
    }
    CHECK(v[i] == doctest::Approx(std::log(p)).epsilon(1e-12));
  }
  // midpoint rule over [-6, 6]^2
  const int n = 400;
  const double h = 12.0 / n;
  std::vector<double> grid;
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < n; ++j) grid.push_back(-6 + (i + 0.5) * h), grid.push_back(-6 + (j + 0.5) * h);
  double mass = sum(exp(m.log_prob(from_vector(grid, {n * n, 2}, DType::F64)))).item() * h * h;
  CHECK(mass == doctest::Approx(1.0).epsilon(1e-4));
}

TEST_CASE("GaussianMixture denoiser: one-component closed form and Monte-Carlo for a mixture") {
  GaussianMixture one{{1.0}, {{0.3, -0.5}}, {0.7}, 2};
  std::vector<double> xs = {1.0, 2.0, -0.5, 0.25, 3.0, -3.0};
  std::vector<double> sig = {0.1, 1.0, 5.0};
  Tensor D = one.denoise(from_vector(xs, {3, 2}, DType::F64), from_vector(sig, {3}, DType::F64));
  auto d = D.to_vector();
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 2; ++j) {
      double mu = one.means[0][j], s2 = 0.49;
      CHECK(d[2 * i + j] == doctest::Approx(mu + s2 / (s2 + sig[i] * sig[i]) * (xs[2 * i + j] - mu)).epsilon(1e-12));
    }
  // scalar sigma broadcasts over the batch
  Tensor D0 = one.denoise(from_vector(xs, {3, 2}, DType::F64), scalar_tensor(1.0, DType::F64));
  CHECK(D0.to_vector()[2] == doctest::Approx(0.3 + 0.49 / 1.49 * (-0.5 - 0.3)).epsilon(1e-12));

  // Mixture: E[x0 | x] by self-normalised importance weights N(x; x0_i, sigma^2) over samples.
  GaussianMixture m = simple_gmm_2d();
  Generator g(11);
  auto s = m.sample(200000, g).to_vector();
  double x[2] = {0.2, -0.4}, sigma = 0.8, num[2] = {0, 0}, den = 0;
  for (size_t i = 0; i < s.size(); i += 2) {
    double dx = x[0] - s[i], dy = x[1] - s[i + 1];
    double w = std::exp(-(dx * dx + dy * dy) / (2 * sigma * sigma));
    num[0] += w * s[i], num[1] += w * s[i + 1], den += w;
  }
  auto dm = m.denoise(from_vector({x[0], x[1]}, {1, 2}, DType::F64), scalar_tensor(sigma, DType::F64)).to_vector();
  CHECK(dm[0] == doctest::Approx(num[0] / den).epsilon(0.02));
  CHECK(dm[1] == doctest::Approx(num[1] / den).epsilon(0.02));
}

TEST_CASE("GaussianMixture score equals the autodiff gradient of the noised log density") {
  GaussianMixture m = simple_gmm_2d();
  double sigma = 0.6;
  GaussianMixture noised = m;
  for (double& s : noised.stds) s = std::sqrt(s * s + sigma * sigma);
  Tensor x = from_vector({0.1, 0.2, -1.0, -0.3, 2.0, -1.5}, {3, 2}, DType::F64).requires_grad_();
  sum(noised.log_prob(x)).backward();
  auto want = x.grad().to_vector();
  auto got = m.score(x.detach(), full({3}, sigma, DType::F64)).to_vector();
  check_close(got, want, 1e-10);
  // log_prob_noisy is that same density
  check_close(m.log_prob_noisy(x.detach(), scalar_tensor(sigma, DType::F64)).to_vector(),
              noised.log_prob(x.detach()).to_vector(), 1e-12);
  CHECK_THROWS_AS(m.score(x.detach(), full({2}, sigma, DType::F64)), Error);
}

TEST_CASE("toy samplers: shapes, determinism, ranges, mixture statistics") {
  for (const std::string& name : toy_names()) {
    INFO(name);
    Generator g1(5), g2(5);
    Tensor a = sample_toy(name, 2000, g1);
    Tensor b = sample_toy(name, 2000, g2);
    REQUIRE(a.shape() == Shape{2000, 2});
    CHECK(a.dtype() == DType::F32);
    auto va = a.to_vector();
    CHECK(va == b.to_vector());
    double mx = 0, mean0 = 0;
    for (size_t i = 0; i < va.size(); ++i) mx = std::max(mx, std::abs(va[i]));
    for (size_t i = 0; i < va.size(); i += 2) mean0 += va[i] / 2000;
    CHECK(mx < 4.0);
    CHECK(mx > 1.0);
    CHECK(std::abs(mean0) < 1.0);
  }
  CHECK_THROWS_WITH_AS(sample_toy("spiral", 10, *std::make_unique<Generator>(1)),
                       doctest::Contains("8gaussians, moons, swissroll, checkerboard, gmm"), Error);
  // 8gaussians: points lie near radius 2 at one of the 8 angles
  Generator g(3);
  auto e = sample_toy("8gaussians", 4000, g, DType::F64).to_vector();
  double rmean = 0;
  for (size_t i = 0; i < e.size(); i += 2) rmean += std::hypot(e[i], e[i + 1]) / 4000;
  CHECK(rmean == doctest::Approx(2.0).epsilon(0.01));
  // gmm: the sample mean approaches sum_k w_k mu_k
  GaussianMixture m = simple_gmm_2d();
  auto s = m.sample(40000, g).to_vector();
  double mx = 0, my = 0;
  for (size_t i = 0; i < s.size(); i += 2) mx += s[i] / 40000, my += s[i + 1] / 40000;
  CHECK(mx == doctest::Approx(0.5 * -1.5 + 0.3 * 1.0 + 0.2 * 1.5).epsilon(0.03).scale(0.1));
  CHECK(my == doctest::Approx(0.5 * -0.5 + 0.3 * 1.2 + 0.2 * -1.3).epsilon(0.03).scale(0.1));
  // checkerboard: no point falls in a "white" cell
  auto c = sample_toy("checkerboard", 2000, g, DType::F64).to_vector();
  int bad = 0;
  for (size_t i = 0; i < c.size(); i += 2) {
    int col = int(std::floor((c[i] + 3) / 1.5)), row = int(std::floor((c[i + 1] + 3) / 1.5));
    bad += (row + col) % 2 != 0;
  }
  CHECK(bad == 0);
}

// ---- metrics ----

TEST_CASE("sliced W2: zero for identical sets, |shift| / sqrt(2) for a shifted copy in 2-D") {
  Generator g(9);
  Tensor a = sample_toy("moons", 1000, g, DType::F64);
  CHECK(sliced_w2(a, a, 50, 1) == doctest::Approx(0.0));
  Tensor shift = from_vector({0.6, -0.8}, {1, 2}, DType::F64);  // |shift|^2 = 1
  // each projection of the copy is shifted by w.shift, so W2^2 = (w.shift)^2 exactly; over
  // random unit directions its mean is |shift|^2 / 2, and SW2 is the square root of that mean
  double sw = sliced_w2(a, add(a, shift), 4000, 2);
  CHECK(sw == doctest::Approx(std::sqrt(0.5)).epsilon(0.03));
  // unequal sizes go through quantiles: a larger sample of the same set stays close
  Tensor b = sample_toy("moons", 1500, g, DType::F64);
  double same = sliced_w2(a, b, 200, 3), shifted = sliced_w2(a, add(b, shift), 200, 3);
  CHECK(same < 0.1);
  CHECK(shifted == doctest::Approx(std::sqrt(0.5)).epsilon(0.08));
  CHECK_THROWS_AS(sliced_w2(a, zeros({5, 3}, DType::F64), 10, 1), Error);
}

TEST_CASE("energy distance and mean log-likelihood") {
  Generator g(12);
  Tensor a = sample_toy("gmm", 800, g, DType::F64);
  Tensor b = sample_toy("gmm", 800, g, DType::F64);
  CHECK(std::abs(energy_distance(a, a)) < 1e-12);
  double same = energy_distance(a, b);
  double shifted = energy_distance(a, add(b, 1.0));
  CHECK(same >= 0);
  CHECK(shifted > 0.3);
  CHECK(same < shifted / 20);
  // For N(0, s^2 I) in 2-D, E[log p] = -log(2 pi s^2) - 1.
  GaussianMixture one{{1.0}, {{0.0, 0.0}}, {0.5}, 2};
  Tensor x = one.sample(20000, g, DType::F32);
  CHECK(mean_log_likelihood(one, x) == doctest::Approx(-std::log(2 * M_PI * 0.25) - 1).epsilon(0.02));
  // Samples from the mixture itself score higher than samples from another set.
  GaussianMixture m = simple_gmm_2d();
  CHECK(mean_log_likelihood(m, a) > mean_log_likelihood(m, sample_toy("8gaussians", 800, g)) + 1);
}

// ---- plots ----

TEST_CASE("plots write PNGs that read back with the documented sizes") {
  std::string dir = "/tmp";
  std::string p1 = dir + "/dualflow_test_scatter_" + std::to_string(::getpid()) + ".png";
  std::string p2 = dir + "/dualflow_test_loss_" + std::to_string(::getpid()) + ".png";
  Generator g(4);
  GaussianMixture m = eight_gaussians();
  auto density = [&](double x, double y) {
    return std::exp(m.log_prob(from_vector({x, y}, {1, 2}, DType::F64)).item());
  };
  write_scatter_panels(p1, {{"data (8gaussians)", sample_toy("8gaussians", 500, g)},
                            {"Moons: step 100", sample_toy("moons", 500, g)}},
                       density, 4.0);
  int w = 0, h = 0, ch = 0;
  unsigned char* img = stbi_load(p1.c_str(), &w, &h, &ch, 3);
  REQUIRE(img != nullptr);
  CHECK(w == 10 + 330 * 2);
  CHECK(h == 356);
  // The background is darker at a mode (2, 0) than far away (-3.5, 3.5), in the first panel;
  // world (x, y) maps to pixel (10 + (x + 4) * 40, 26 + (4 - y) * 40). Points are blue.
  auto at = [&](int px, int py, int c) { return int(img[(size_t(py) * w + px) * 3 + c]); };
  int blue = 0;
  for (int i = 0; i < w * h; ++i) blue += img[3 * i + 2] > 150 && img[3 * i] < 80;
  CHECK(blue > 200);
  int mode_x = 10 + 6 * 40 + 6, mode_y = 26 + 4 * 40 + 6;  // a little off the mode's centre
  CHECK(at(10 + 20, 26 + 20, 0) > 240);
  CHECK(at(mode_x, mode_y, 0) < at(10 + 20, 26 + 20, 0));
  stbi_image_free(img);

  std::vector<double> c1, c2;
  for (int i = 0; i < 300; ++i) c1.push_back(std::exp(-i / 50.0)), c2.push_back(0.5 / (1 + i));
  c2[10] = NAN;  // skipped
  write_loss_curves(p2, {{"train loss", c1}, {"ema", c2}});
  img = stbi_load(p2.c_str(), &w, &h, &ch, 3);
  REQUIRE(img != nullptr);
  CHECK(w == 760);
  CHECK(h == 440);
  int orange = 0;
  for (int i = 0; i < w * h; ++i) orange += img[3 * i] == 255 && img[3 * i + 1] == 127 && img[3 * i + 2] == 14;
  CHECK(orange > 100);
  stbi_image_free(img);
  // Negative losses (sCT's adaptive weighting) switch to a linear axis instead of vanishing; the
  // curve spans the plot's height (from about -1 to 0) and its x axis is in steps.
  std::vector<double> c3;
  for (int i = 0; i < 300; ++i) c3.push_back(std::exp(-i / 50.0) - 1);
  write_loss_curves(p2, {{"sct loss", c3}}, 50);
  img = stbi_load(p2.c_str(), &w, &h, &ch, 3);
  REQUIRE(img != nullptr);
  int line_px = 0, ymin = h, ymax = 0;
  for (int i = 0; i < w * h; ++i)
    if (img[3 * i] == 31 && img[3 * i + 1] == 119 && img[3 * i + 2] == 180 && i % w < 760 - 190) {
      ++line_px;
      ymin = std::min(ymin, i / w), ymax = std::max(ymax, i / w);
    }
  CHECK(line_px > 100);
  CHECK(ymax - ymin > 300);
  stbi_image_free(img);
  CHECK_THROWS_AS(write_loss_curves(p2, {{"x", c3}}, 0), Error);
  std::remove(p1.c_str());
  std::remove(p2.c_str());
  CHECK_THROWS_AS(write_scatter_panels("/nonexistent-dir/x.png", {{"a", zeros({3, 2})}}), Error);
}
