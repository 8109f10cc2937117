// Consistency-model tests (ALGORITHMS.md 13.6-13.8): sCM tangent vs the Gaussian closed form, the sCM
// gradient's closed form, memory boundedness of the JVP pass, CT/CD/DMD invariants, rCM schedule and
// rollouts, samplers, and a short sCD distillation run.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <array>

#include "train/consistency.h"

using namespace df;

namespace {

// x (B, in) W^T (out, in) + b, written with broadcasting so the test depends only on core ops.
Tensor dense(const Tensor& x, const Tensor& W, const Tensor& b = Tensor()) {
  Tensor y = sum(unsqueeze(x, 1) * W, Shape{2});
  return b.defined() ? y + b : y;
}

// A small time-conditioned MLP F(u, c): h = silu(W1 u + Wt emb(c) + b1), out = W2 h + b2.
struct TinyNet {
  Tensor W1, Wt, b1, W2, b2;
  int64_t emb;
  TinyNet(int64_t D, int64_t H, int64_t E, Generator& g, DType dt, double out_scale = 1.0) : emb(E) {
    W1 = (g.randn({H, D}, dt) * (1.0 / std::sqrt(double(D)))).detach().requires_grad_();
    Wt = (g.randn({H, E}, dt) * (1.0 / std::sqrt(double(E)))).detach().requires_grad_();
    b1 = (g.randn({H}, dt) * 0.1).detach().requires_grad_();
    W2 = (g.randn({D, H}, dt) * (out_scale / std::sqrt(double(H)))).detach().requires_grad_();
    b2 = zeros({D}, dt).requires_grad_();
  }
  Tensor operator()(const Tensor& u, const Tensor& c) const {
    return dense(silu(dense(u, W1, b1) + dense(cm_time_embedding(c, emb), Wt)), W2, b2);
  }
  NetFn fn() const { return [this](const Tensor& u, const Tensor& c) { return (*this)(u, c); }; }
  Tensors params() const { return {W1, Wt, b1, W2, b2}; }
};

// Gaussian data N(mu, s^2) per dimension (13.0 A), TrigFlow with sigma_d.
struct Gauss {
  double mu = 0.3, s = 0.7, sd = 0.5;
  // F*_CM(u, t) = (cos t x - f*(x, t))/(sigma_d sin t), f* = mu + s (x - cos t mu)/std_t.
  NetFn F_cm() const {
    return [*this](const Tensor& u, const Tensor& t) {
      Tensor tc = per_sample(t, u.dim());
      Tensor x = u * sd;
      Tensor stdt = sqrt(square(cos(tc)) * (s * s) + square(sin(tc)) * (sd * sd));
      Tensor f = mu + s * (x - cos(tc) * mu) / stdt;
      return (cos(tc) * x - f) / (sd * sin(tc));
    };
  }
  // The exact TrigFlow diffusion F*: sigma_d F = v*.
  NetFn F_diff() const {
    return [*this](const Tensor& u, const Tensor& t) {
      Tensor tc = per_sample(t, u.dim());
      Tensor x = u * sd;
      Tensor var = square(cos(tc)) * (s * s) + square(sin(tc)) * (sd * sd);
      Tensor v = sin(tc) * cos(tc) * (sd * sd - s * s) / var * (x - cos(tc) * mu) - sin(tc) * mu;
      return v / sd;
    };
  }
  double stdt(double t) const {
    return std::sqrt(std::cos(t) * std::cos(t) * s * s + std::sin(t) * std::sin(t) * sd * sd);
  }
  double f(double x, double t) const { return mu + s * (x - std::cos(t) * mu) / stdt(t); }
  // d/dt f*(x(t), t) along dx/dt = v.
  double dfdt(double x, double t, double v) const {
    const double st = stdt(t), dst = std::sin(t) * std::cos(t) * (sd * sd - s * s) / st;
    return s * v / st + s * std::sin(t) * mu / st - s * (x - std::cos(t) * mu) * dst / (st * st);
  }
};

std::vector<double> vec(const Tensor& t) { return t.to_vector(); }

double max_abs_diff(const std::vector<double>& a, const std::vector<double>& b) {
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::fabs(a[i] - b[i]));
  return m;
}

}  // namespace

TEST_CASE("sCM tangent: engine JVP matches the Gaussian closed form and finite differences (f64)") {
  Gauss G;
  const int64_t B = 6, D = 3;
  Generator g(1);
  Tensor x = g.randn({B, D}, DType::F64) * 0.6 + 0.2;
  Tensor v = g.randn({B, D}, DType::F64);
  std::vector<double> tv{1e-3, 0.1, 0.5, 0.9, 1.3, 1.55};
  Tensor t = from_vector(tv, {B}, DType::F64);
  SCMConfig cfg;
  cfg.sigma_d = G.sd;
  cfg.normalize = false;
  SCMTangentOut out = scm_tangent(G.F_cm(), x, t, v, 1.0, cfg);
  // g = cos t df/dt (6.1 item 6).
  auto xs = vec(x), vs = vec(v), gs = vec(out.g);
  double err = 0, scale = 0;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t d = 0; d < D; ++d) {
      const double ref = std::cos(tv[b]) * G.dfdt(xs[b * D + d], tv[b], vs[b * D + d]);
      err = std::max(err, std::fabs(gs[b * D + d] - ref));
      scale = std::max(scale, std::fabs(ref));
    }
  CHECK(scale > 0.1);
  CHECK(err < 1e-9 * std::max(1.0, scale));

  // Zero tangent at the optimum (13.7.3): exact teacher velocity and F = F*_CM give g == 0.
  Tensor vstar = G.sd * G.F_diff()(x / G.sd, t);
  SCMTangentOut opt = scm_tangent(G.F_cm(), x, t, vstar, 1.0, cfg);
  for (double e : vec(opt.g)) CHECK(std::fabs(e) < 1e-10);
  // With r < 1: g = (1 - r) cos t sin t (x_t + sigma_d dF/dt) = (1 - r)(c1 x_t + J).
  SCMTangentOut half = scm_tangent(G.F_cm(), x, t, vstar, 0.25, cfg);
  Tensor expect = 0.75 * (per_sample(cos(t) * sin(t), 2) * x + half.J);
  CHECK(max_abs_diff(vec(half.g), vec(expect)) < 1e-10);

  // Central finite differences of the consistency function along (v, 1) converge at second order.
  std::vector<double> errs;
  for (double h : {1e-2, 5e-3, 2.5e-3}) {
    std::vector<double> fd(B * D);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t d = 0; d < D; ++d) {
        const double xb = xs[b * D + d], vb = vs[b * D + d], tb = std::max(tv[b], h);
        fd[b * D + d] = std::cos(tb) * (G.f(xb + h * vb, tb + h) - G.f(xb - h * vb, tb - h)) / (2 * h);
      }
    // compare where t >= h (the smallest t is checked analytically above)
    double e = 0;
    for (int64_t b = 1; b < B; ++b)
      for (int64_t d = 0; d < D; ++d) e = std::max(e, std::fabs(fd[b * D + d] - gs[b * D + d]));
    errs.push_back(e);
  }
  CHECK(errs[0] / errs[1] > 3.5);
  CHECK(errs[1] / errs[2] > 3.5);

  // The discrete dsCM tangent (6.10) approaches the JVP tangent at first order.
  std::vector<double> derr;
  for (double h : {2e-2, 1e-2, 5e-3}) {
    SCMConfig c2 = cfg;
    c2.tangent = SCMTangent::Discrete;
    c2.fd_h = h;
    Tensor tt = from_vector({0.1, 0.5, 0.9, 1.3, 1.5, 0.7}, {B}, DType::F64);
    SCMTangentOut ref = scm_tangent(G.F_cm(), x, tt, v, 1.0, cfg);
    SCMTangentOut dis = scm_tangent(G.F_cm(), x, tt, v, 1.0, c2);
    derr.push_back(max_abs_diff(vec(ref.g), vec(dis.g)));
  }
  CHECK(derr[0] / derr[1] > 1.7);
  CHECK(derr[1] / derr[2] > 1.7);
  CHECK(derr[2] < 0.05);

  // The semi-discrete tangent (JVP in x, difference in t) also converges to it.
  SCMConfig c3 = cfg;
  c3.tangent = SCMTangent::SemiDiscrete;
  c3.fd_h = 1e-5;
  SCMTangentOut semi = scm_tangent(G.F_cm(), x, t, v, 1.0, c3);
  CHECK(max_abs_diff(vec(semi.g), gs) < 1e-3);
}

TEST_CASE("sCM loss value and gradient equal their closed forms on a small MLP") {
  const int64_t B = 5, D = 3;
  Generator g(7);
  TinyNet net(D, 16, 8, g, DType::F64);
  AdaptiveWeight wnet(8, DType::F64);
  {
    NoGrad ng;   // a non-zero weight head so e^w matters
    Tensor wv = g.randn({8}, DType::F64);
    std::copy_n(wv.data_as<double>(), 8, wnet.weight.data_as<double>());
    wnet.bias.data_as<double>()[0] = 0.3;
  }
  SCMConfig cfg;
  Tensor x0 = g.randn({B, D}, DType::F64) * 0.5;
  Generator g2(11);
  SCMLoss L = sct_loss(net.fn(), wnet.fn(), x0, /*iter=*/500, cfg, g2);
  L.loss.backward();
  // Value: mean_b(e^w ||g_hat||^2/D - w).
  auto w = vec(L.w);
  auto gh = vec(L.g_hat);
  double val = 0;
  std::vector<double> ew(B), gn2(B);
  for (int64_t b = 0; b < B; ++b) {
    gn2[b] = 0;
    for (int64_t d = 0; d < D; ++d) gn2[b] += gh[b * D + d] * gh[b * D + d];
    ew[b] = std::exp(w[b]);
    val += (ew[b] * gn2[b] / D - w[b]) / B;
    CHECK(std::sqrt(gn2[b]) < 1.0);   // ||g_hat|| < 1 (13.7.8)
  }
  CHECK(L.value() == doctest::Approx(val).epsilon(1e-12));
  // Gradient: -(2 e^w/(D B)) g_hat^T dF/dtheta, via reverse mode on a plain forward with that cotangent.
  Generator g3(11);
  Tensor z = g3.randn(x0.shape(), DType::F64) * cfg.sigma_d;
  Tensor t = trigflow_sample_t(B, g3, cfg.P_mean, cfg.P_std, cfg.sigma_d, DType::F64);
  Tensor xt = per_sample(cos(t), 2) * x0 + per_sample(sin(t), 2) * z;
  Tensor F = net(xt / cfg.sigma_d, t);
  std::vector<double> cot(B * D);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t d = 0; d < D; ++d) cot[b * D + d] = -2.0 * ew[b] / double(D * B) * gh[b * D + d];
  Tensors ref = grad({F}, net.params(), {from_vector(cot, {B, D}, DType::F64)});
  Tensors ps = net.params();
  for (size_t i = 0; i < ps.size(); ++i) {
    double scale = 0;
    for (double e : vec(ref[i])) scale = std::max(scale, std::fabs(e));
    CHECK(scale > 1e-6);
    CHECK(max_abs_diff(vec(ps[i].grad()), vec(ref[i])) < 1e-12 * std::max(1.0, scale));
  }
  // Weight head: dL/dbias = mean_b(e^w ||g_hat||^2/D - 1).
  double db = 0;
  for (int64_t b = 0; b < B; ++b) db += (ew[b] * gn2[b] / D - 1) / B;
  CHECK(wnet.bias.grad().item() == doctest::Approx(db).epsilon(1e-12));

  // Linear head F = W u (13.7.7): dL/dW = -(2/D) mean_b g_hat u^T without a weight network.
  Tensor W = (g.randn({D, D}, DType::F64) * 0.5).detach().requires_grad_();
  NetFn lin = [&](const Tensor& u, const Tensor& c) { return dense(u, W) * per_sample(c, 2); };
  SCMConfig c2;
  SCMLoss L2 = scm_loss(lin, nullptr, xt, t, z, 1.0, c2);
  L2.loss.backward();
  auto u = vec(xt / c2.sigma_d), gh2 = vec(L2.g_hat), tv = vec(t), gw = vec(W.grad());
  double e = 0;
  for (int64_t i = 0; i < D; ++i)
    for (int64_t j = 0; j < D; ++j) {
      double r = 0;
      for (int64_t b = 0; b < B; ++b) r += -2.0 / D * gh2[b * D + i] * u[b * D + j] * tv[b] / B;
      e = std::max(e, std::fabs(r - gw[i * D + j]));
    }
  CHECK(e < 1e-12);
}

TEST_CASE("sCT step keeps no tangent graph: tape nodes and tangents stay bounded over 50 steps") {
  const int64_t B = 16, D = 2;
  Generator g(3);
  TinyNet net(D, 16, 8, g, DType::F32);
  AdaptiveWeight wnet(8);
  SCMConfig cfg;
  cfg.warmup_iters = 10;
  // Reference: tape nodes of one plain forward of F (what the JVP pass may keep).
  int64_t base = live_node_count();
  int64_t plain_nodes;
  {
    Tensor u = g.randn({B, D}), t = full({B}, 0.7f);
    Tensor y = net(u, t);
    plain_nodes = live_node_count() - base;
  }
  CHECK(live_node_count() == base);
  std::vector<int64_t> nodes;
  std::vector<size_t> tangents;
  Generator gd(5);
  for (int it = 0; it < 50; ++it) {
    {
      Tensor x0 = gd.randn({B, D}) * 0.5;
      SCMLoss L = sct_loss(net.fn(), wnet.fn(), x0, it, cfg, gd);
      nodes.push_back(L.tape_nodes_after_forward - base);
      tangents.push_back(L.live_tangents_in_jvp);
      L.loss.backward();
    }
    NoGrad ng;
    for (auto& p : net.params()) {
      Tensor np = p - 1e-3 * p.grad();
      std::copy_n(np.data_as<float>(), p.numel(), p.data_as<float>());
      p.zero_grad();
    }
    for (auto& p : wnet.parameters()) p.zero_grad();
    CHECK(live_node_count() == base);   // nothing outlives the step
    CHECK(live_tangent_count() == 0);
  }
  // The JVP pass adds to the tape exactly what a plain forward would: the tangent graph is not kept.
  CHECK(nodes.front() == plain_nodes + 1);   // + the alias unpack_dual returns
  CHECK(*std::max_element(nodes.begin(), nodes.end()) == *std::min_element(nodes.begin(), nodes.end()));
  CHECK(*std::max_element(tangents.begin(), tangents.end()) == *std::min_element(tangents.begin(), tangents.end()));
  // With differentiable tangents the tape would also hold the tangent computation.
  {
    Tensor u = g.randn({B, D}), t = full({B}, 0.7f);
    DualLevel lvl(true);
    Tensor y = net(make_dual(u, ones_like(u)), make_dual(t, ones_like(t)));
    CHECK(live_node_count() - base >= plain_nodes + 5);
  }
}

TEST_CASE("sCM: NaN masking, warm-up, normalisation, boundary and time sampler") {
  const int64_t B = 4, D = 2;
  Generator g(9);
  Tensor xt = g.randn({B, D}, DType::F64), v = g.randn({B, D}, DType::F64);
  Tensor t = from_vector({0.3, 0.6, 0.9, 1.2}, {B}, DType::F64);
  // A network whose tangent is NaN for sample 2 only (sqrt of 0 has an infinite derivative... use log at 0).
  Tensor W = from_vector({0.5, -0.2, 0.1, 0.3}, {D, D}, DType::F64).requires_grad_();
  NetFn F = [&](const Tensor& u, const Tensor& c) {
    Tensor mask = per_sample(from_vector({1, 1, 0, 1}, {B}, DType::F64), 2);
    return dense(u, W) + sqrt(square(u) * mask) * 0.0 + 0.0 * per_sample(c, 2);
  };
  SCMConfig cfg;
  SCMLoss L = scm_loss(F, nullptr, xt, t, v, 1.0, cfg);
  CHECK(L.nan_samples() == 1);
  CHECK(std::isfinite(L.value()));
  L.loss.backward();
  for (double e : vec(W.grad())) CHECK(std::isfinite(e));
  // Warm-up schedule (13.7.11) and r = 0 independence of J and x_t.
  CHECK(scm_warmup_r(0, 100) == 0.0);
  CHECK(scm_warmup_r(50, 100) == 0.5);
  CHECK(scm_warmup_r(150, 100) == 1.0);
  Gauss G;
  SCMConfig raw;
  raw.normalize = false;
  SCMTangentOut a = scm_tangent(G.F_cm(), xt, t, v, 0.0, raw);
  SCMTangentOut b = scm_tangent(G.F_cm(), xt * 2.0, t, v, 0.0, raw);
  Tensor expect = -square(per_sample(cos(t), 2)) * (0.5 * G.F_cm()(xt / 0.5, t) - v);
  CHECK(max_abs_diff(vec(a.g), vec(expect)) < 1e-12);
  CHECK(max_abs_diff(vec(a.g), vec(b.g)) > 1e-3);   // F^- still depends on x_t; only the J/x_t term vanishes
  // Boundary f(x, 0) == x bit-exactly for any network.
  TinyNet net(D, 8, 8, g, DType::F64);
  Tensor f0 = trigflow_consistency(net.fn(), xt, zeros({B}, DType::F64), 0.5);
  CHECK(max_abs_diff(vec(f0), vec(xt)) == 0.0);
  // Finiteness at the ends (13.7.10).
  Tensor te = from_vector({1e-6, M_PI / 2 - 1e-6, 1e-6, M_PI / 2 - 1e-6}, {B}, DType::F64);
  SCMLoss Le = scm_loss(G.F_cm(), nullptr, xt, te, v, 1.0, cfg);
  CHECK(Le.nan_samples() == 0);
  CHECK(std::isfinite(Le.value()));
  // Time sampler: t in (0, pi/2) and log(sigma_d tan t) has the proposal's moments.
  Generator gt(2);
  Tensor ts = trigflow_sample_t(20000, gt, -1.0, 1.4, 0.5, DType::F64);
  double m = 0, s2 = 0;
  for (double e : vec(ts)) {
    CHECK((e > 0 && e < M_PI / 2));
    double l = std::log(0.5 * std::tan(e));
    m += l / 20000;
    s2 += l * l / 20000;
  }
  CHECK(std::fabs(m + 1.0) < 5 * 1.4 / std::sqrt(20000.0));
  CHECK(std::fabs(std::sqrt(s2 - m * m) - 1.4) < 0.05);
}

TEST_CASE("sCM samplers with the exact consistency function give the data distribution") {
  Gauss G;
  const int64_t n = 40000;
  for (int steps : {1, 2}) {
    Generator g(100 + steps);
    std::vector<double> ts{M_PI / 2};
    if (steps == 2) ts.push_back(1.1);
    // f*(x, pi/2) needs the limit sin t -> 1 only: F_cm is finite there.
    Tensor x = trigflow_consistency_sample(G.F_cm(), n, 1, ts, G.sd, g, DType::F64);
    double m = 0, s2 = 0;
    for (double e : vec(x)) { m += e / n; s2 += e * e / n; }
    CHECK(std::fabs(m - G.mu) < 5 * G.s / std::sqrt(double(n)));
    CHECK(std::fabs(std::sqrt(s2 - m * m) - G.s) < 0.02);
  }
  auto t1 = scm_sampler_times(1, 0.5), t2 = scm_sampler_times(2, 0.5);
  CHECK(t1.size() == 1);
  CHECK(t1[0] == doctest::Approx(1.5645464).epsilon(1e-6));
  CHECK(t2[1] == 1.1);
}

namespace {
// Gaussian N(mu, s^2) in EDM units with CM's shifted boundary at eps (13.0 A).
struct GaussEDM {
  double mu = 0.3, s = 0.7;
  CMConfig cm;
  double f(double x, double sig) const {
    return mu + std::sqrt(s * s + cm.sigma_min * cm.sigma_min) * (x - mu) / std::sqrt(s * s + sig * sig);
  }
  DenoiserFn D() const {
    return [*this](const Tensor& x, const Tensor& sig) {
      Tensor sg = per_sample(sig, x.dim());
      return mu + (s * s) / (s * s + square(sg)) * (x - mu);
    };
  }
  // The network that makes cm_denoise equal to f*, plus theta * tanh(input).
  NetFn F(const Tensor& theta) const {
    return [*this, theta](const Tensor& in, const Tensor& cn) {
      const double sd = cm.sigma_d, eps = cm.sigma_min;
      Tensor sig = per_sample(exp(4.0 * cn), in.dim());
      Tensor x = in * sqrt(square(sig) + sd * sd);
      Tensor c_skip = (sd * sd) / (square(sig - eps) + sd * sd);
      Tensor c_out = maximum(sd * (sig - eps) * rsqrt(square(sig) + sd * sd), full_like(sig, 1e-300));
      Tensor fs = mu + std::sqrt(s * s + eps * eps) * (x - mu) * rsqrt(s * s + square(sig));
      Tensor out = (fs - c_skip * x) / c_out;
      return theta.defined() ? out + theta * tanh(in) : out;
    };
  }
};
}  // namespace

TEST_CASE("discrete CM: boundary, grids, curricula, ECT mapping") {
  Generator g(4);
  TinyNet net(2, 8, 8, g, DType::F64);
  CMConfig cm;
  Tensor x = g.randn({3, 2}, DType::F64);
  Tensor f = cm_denoise(net.fn(), x, full({3}, cm.sigma_min, DType::F64), cm);
  CHECK(max_abs_diff(vec(f), vec(x)) == 0.0);
  auto grid = karras_grid(18, 0.002, 80, 7);
  CHECK(grid.front() == 0.002);
  CHECK(grid.back() == 80);
  for (size_t i = 1; i < grid.size(); ++i) CHECK(grid[i] > grid[i - 1]);
  CHECK(cm_num_steps(0, 1000, 2, 150) == 2);
  CHECK(cm_num_steps(1000, 1000, 2, 150) == 151);
  double prev = 0;
  for (int64_t k = 0; k <= 1000; k += 100) {
    double mu = cm_target_mu(k, 1000, 2, 150, 0.9);
    CHECK((mu > 0 && mu < 1 && mu >= prev));
    prev = mu;
  }
  std::vector<int64_t> seen;
  for (int64_t k = 0; k < 8000; k += 1000) seen.push_back(ict_num_steps(k, 8000));
  CHECK(seen == std::vector<int64_t>{11, 21, 41, 81, 161, 321, 641, 1281});
  auto sig = karras_grid(1281, 0.002, 80, 7);
  auto p = ict_index_probs(sig);
  CHECK(std::accumulate(p.begin(), p.end(), 0.0) == doctest::Approx(1.0));
  // Per unit of ln sigma the index probabilities peak at e^P_mean ~= 0.33.
  std::vector<double> dens(p.size());
  for (size_t i = 0; i < p.size(); ++i) dens[i] = p[i] / std::log(sig[i + 1] / sig[i]);
  size_t mode = std::max_element(dens.begin(), dens.end()) - dens.begin();
  CHECK(sig[mode] == doctest::Approx(std::exp(-1.1)).epsilon(0.02));
  for (double e : p) CHECK(e > 0);
  CHECK(pseudo_huber_c(3072) == doctest::Approx(0.0299).epsilon(0.01));
  CHECK(ect_r(std::log(7.0) - 1e-3, 0) == 0.0);
  CHECK(ect_r(std::log(7.0) + 1e-3, 0) > 0.0);
  CHECK(ect_r(std::log(5.0 / 3.0) - 1e-3, 1) == 0.0);
  CHECK(ect_r(std::log(5.0 / 3.0) + 1e-3, 1) > 0.0);
  for (double t : {1e-3, 0.1, 1.0, 10.0}) {
    CHECK(ect_r(t, 2) > 0.0);
    CHECK(ect_r(t, 5) < t);
  }
  // ECT loss: finite, differentiable, and at stage 0 with the plain EDM parameterization the
  // exact denoiser-as-network (F = 0 for N(0, sigma_d^2) data: f = c_skip x) beats a perturbed one.
  CTConfig ect;
  ect.cm.shifted_boundary = false;
  ect.huber_c = 0.0;
  Tensor x0 = g.randn({4000, 2}, DType::F64) * 0.5;
  Tensor th = zeros({}, DType::F64).requires_grad_();
  NetFn zero_net = [&](const Tensor& in, const Tensor& cn) { return in * th; };
  NetFn off_net = [&](const Tensor& in, const Tensor& cn) { return in * 0.3; };
  Generator ge1(5), ge2(5);
  CMLoss Le = ect_loss(zero_net, x0, 0, ect, ge1);
  CMLoss Lo = ect_loss(off_net, x0, 0, ect, ge2);
  CHECK(std::isfinite(Le.value()));
  CHECK(Le.value() < Lo.value());
  Le.loss.backward();
  CHECK(std::isfinite(th.grad().item()));
}

TEST_CASE("CT has zero expected gradient at the exact consistency function; CD loss vanishes there") {
  GaussEDM G;
  CTConfig cfg;
  cfg.metric = CMMetric::L2;
  cfg.ict_weighting = false;
  const int64_t N = 200;
  // MC over batches: the mean theta-gradient at f* is within 5 standard errors of 0, while a model
  // off the optimum by 0.05 gives a clearly non-zero mean gradient with the same estimator.
  auto grad_stats = [&](double th_online) {
    std::vector<double> gs;
    Generator g(21);
    for (int rep = 0; rep < 20; ++rep) {
      Tensor theta = full({}, th_online, DType::F64).requires_grad_();
      Tensor x0 = g.randn({2000, 1}, DType::F64) * G.s + G.mu;
      CMLoss L = cm_discrete_loss(G.F(theta), G.F(Tensor()), nullptr, x0, N, cfg, g);
      L.loss.backward();
      gs.push_back(theta.grad().item());
    }
    double m = 0, v = 0;
    for (double e : gs) m += e / gs.size();
    for (double e : gs) v += (e - m) * (e - m) / (gs.size() - 1);
    return std::make_pair(m, std::sqrt(v / gs.size()));
  };
  auto [m0, se0] = grad_stats(0.0);
  CHECK(std::fabs(m0) < 5 * se0);
  auto [m1, se1] = grad_stats(0.05);
  CHECK(std::fabs(m1) > 5 * se1);

  // Per pair with the ideal-denoiser-implied target (the Euler step with D*), the gradient is
  // O(dsigma^2): divided by dsigma it shrinks linearly.
  std::vector<double> r;
  Generator g(5);
  Tensor x0 = g.randn({512, 1}, DType::F64) * G.s + G.mu;
  Tensor z = g.randn({512, 1}, DType::F64);
  for (double ds : {0.2, 0.1, 0.05}) {
    const double hi = 1.0, lo = 1.0 - ds;
    Tensor x = x0 + hi * z;
    Tensor xe = x + (lo - hi) * (x - G.D()(x, full({512}, hi, DType::F64))) / hi;
    Tensor tgt = cm_denoise(G.F(Tensor()), xe, full({512}, lo, DType::F64), G.cm);
    Tensor theta = zeros({}, DType::F64).requires_grad_();
    Tensor pred = cm_denoise(G.F(theta), x, full({512}, hi, DType::F64), G.cm);
    mean(sum_sq_per_sample(pred - tgt)).backward();
    r.push_back(std::fabs(theta.grad().item()) / ds);
  }
  CHECK(r[0] / r[1] > 1.8);
  CHECK(r[1] / r[2] > 1.8);

  // CD with the exact teacher and f*: the loss is only the Heun error, far below an off-optimum model.
  Generator gc(8);
  Tensor xc = gc.randn({4000, 1}, DType::F64) * G.s + G.mu;
  CTConfig cd = cfg;
  cd.time_sampling = CMTimeSampling::Uniform;
  Generator gc1(9), gc2(9);
  CMLoss L0 = cm_discrete_loss(G.F(Tensor()), G.F(Tensor()), G.D(), xc, 40, cd, gc1);
  CMLoss L1 = cm_discrete_loss(G.F(full({}, 0.05, DType::F64)), G.F(Tensor()), G.D(), xc, 40, cd, gc2);
  CHECK(L0.value() < 1e-2 * L1.value());
  Generator gc3(9);
  CMLoss L0b = cm_discrete_loss(G.F(Tensor()), G.F(Tensor()), G.D(), xc, 80, cd, gc3);
  CHECK(L0b.value() < L0.value() / 10);   // Heun's local error shrinks fast with the step
  // Multistep sampler with f* gives N(mu, s^2).
  Generator gs(10);
  Tensor xs = cm_multistep_sample(G.F(Tensor()), 40000, 1, {80.0, 0.8}, G.cm, gs, DType::F64);
  double m = 0, s2 = 0;
  for (double e : vec(xs)) { m += e / 40000; s2 += e * e / 40000; }
  CHECK(std::fabs(m - G.mu) < 5 * G.s / 200.0);
  CHECK(std::fabs(std::sqrt(s2 - m * m) - G.s) < 0.02);
}

TEST_CASE("DMD and rCM: vanishing DMD gradient, critic identity, warm-up form, schedule, rollout") {
  const int64_t B = 8, D = 2;
  Generator g(12);
  Tensor Wg = (g.randn({D, D}, DType::F64) * 0.5).detach().requires_grad_();
  Tensor zin = g.randn({B, D}, DType::F64);
  Gauss Gs;
  Gs.sd = 1.0;
  // The exact TrigFlow denoiser of N(mu, s^2) data at sigma_d = 1.
  DenoiserFn teacher = [&](const Tensor& x, const Tensor& tt) { return trigflow_consistency(Gs.F_diff(), x, tt, 1.0); };
  Tensor t = from_vector({0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4, 1.5}, {B}, DType::F64);
  {
    Generator gd(1);
    DMDLoss L = dmd_loss(dense(zin, Wg), teacher, teacher, t, 1.0, gd);
    CHECK(L.nan_samples() == 0);
    for (double e : vec(L.grad)) CHECK(e == 0.0);
    L.loss.backward();
    for (double e : vec(Wg.grad())) CHECK(e == 0.0);
  }
  {
    // With a different fake score, d L/d x0 = 2 grad / B (sum over D, mean over the batch).
    DenoiserFn fake = [&](const Tensor& x, const Tensor& tt) { return teacher(x, tt) * 0.9 + 0.05; };
    Tensor x0 = (dense(zin, Wg)).detach().requires_grad_();
    Generator gd(1);
    DMDLoss L = dmd_loss(x0, teacher, fake, t, 1.0, gd);
    CHECK(L.nan_samples() == 0);
    L.loss.backward();
    auto gx = vec(x0.grad()), dir = vec(L.grad);
    double mx = 0;
    for (size_t i = 0; i < gx.size(); ++i) {
      CHECK(gx[i] == doctest::Approx(2.0 * dir[i] / B).epsilon(1e-12));
      mx = std::max(mx, std::fabs(dir[i]));
    }
    CHECK(mx > 1e-3);
  }
  {
    // Critic identity (sigma_d = 1): ||x0 - f_fake||^2/sin^2 t == ||F_fake - (cos t eps - sin t x0)||^2.
    TinyNet fake(D, 8, 8, g, DType::F64);
    Tensor x0 = g.randn({B, D}, DType::F64);
    Generator g1(3), g2(3);
    Tensor Lc = critic_flow_loss(fake.fn(), x0, t, 1.0, g1);
    Tensor eps = g2.randn({B, D}, DType::F64);
    Tensor tc = per_sample(t, 2);
    Tensor xt = cos(tc) * x0 + sin(tc) * eps;
    Tensor ff = trigflow_consistency(fake.fn(), xt, t, 1.0);
    Tensor alt = mean(sum_sq_per_sample(x0 - ff) / square(sin(t)));
    CHECK(Lc.item() == doctest::Approx(alt.item()).epsilon(1e-12));
  }
  {
    // rCM tangent warm-up: r = 1 equals sCM's g; r = 0 keeps the JVP term but drops x_t.
    Tensor xt = g.randn({B, D}, DType::F64), v = g.randn({B, D}, DType::F64);
    TinyNet net(D, 8, 8, g, DType::F64);
    SCMConfig a, b;
    a.sigma_d = b.sigma_d = 1.0;
    a.normalize = b.normalize = false;
    b.warmup_form = SCMWarmup::RCM;
    SCMTangentOut ga = scm_tangent(net.fn(), xt, t, v, 1.0, a), gb = scm_tangent(net.fn(), xt, t, v, 1.0, b);
    CHECK(max_abs_diff(vec(ga.g), vec(gb.g)) < 1e-12);
    SCMTangentOut g0 = scm_tangent(net.fn(), xt, t, v, 0.0, b);
    Tensor expect = -per_sample(cos(t), 2) * (g0.F.detach() - v) - g0.J;
    CHECK(max_abs_diff(vec(g0.g), vec(expect)) < 1e-12);
  }
  // Schedule: H + ceil((I - H)/F) student steps; the effective iteration advances only on them.
  for (auto [I, H, F] : std::vector<std::array<int64_t, 3>>{{100, 0, 5}, {103, 10, 5}, {57, 20, 10}}) {
    int64_t students = 0;
    for (int64_t i = 0; i < I; ++i) students += rcm_is_student_step(i, H, F);
    CHECK(students == H + (I - H + F - 1) / F);
    CHECK(rcm_effective_iter(I - 1, H, F) == students - 1);
  }
  // Rollout: t_1 = t_max, non-increasing times, and only the last f_theta call is on the tape.
  TinyNet stu(D, 8, 8, g, DType::F64);
  RCMConfig rc;
  rc.scm.sigma_d = 1.0;
  int64_t base = live_node_count();
  int64_t nodes1, nodes3;
  {
    Generator gr(4);
    Tensor x = rcm_rollout(stu.fn(), B, D, 1, 1.5, rc, gr, DType::F64);
    nodes1 = live_node_count() - base;
  }
  {
    Generator gr(4);
    std::vector<Tensor> ts;
    Tensor x = rcm_rollout(stu.fn(), B, D, 4, 1.5, rc, gr, DType::F64, &ts);
    nodes3 = live_node_count() - base;
    CHECK(ts.size() == 4);
    for (double e : vec(ts[0])) CHECK(e == 1.5);
    for (size_t k = 1; k < ts.size(); ++k) {
      auto a = vec(ts[k - 1]), b = vec(ts[k]);
      for (int64_t i = 0; i < B; ++i) CHECK(b[i] <= a[i]);
    }
  }
  CHECK(nodes1 > 5);
  CHECK(nodes3 == nodes1);
  RCMConfig cyc;
  cyc.random_rollout = false;
  Generator gn(1);
  std::vector<int> hist(5, 0);
  for (int64_t e = 0; e < 400; ++e) {
    CHECK(rcm_rollout_steps(e, cyc, gn) == e % 4 + 1);
    hist[rcm_rollout_steps(e, rc, gn)]++;
  }
  CHECK(hist[0] == 0);
  for (int k = 1; k <= 4; ++k) CHECK(hist[k] > 60);
  auto rt = rcm_sampler_times(4, 1.0, 80);
  CHECK(rt[0] == doctest::Approx(1.5582970).epsilon(1e-6));
  CHECK(rt[3] == 0.6);
}

#include "models/mlp.h"
#include "train/metrics.h"
#include "train/optim.h"

namespace {
// Four well-separated blobs with per-dimension std ~ 0.5 (= sigma_d).
Tensor four_blobs(int64_t n, Generator& g) {
  Tensor c = g.rand({n, 2}, DType::F32);
  Tensor sgn = sign(c - 0.5f);
  return sgn * 0.5f + g.randn({n, 2}, DType::F32) * 0.12f;
}
// First-order TrigFlow (DDIM) sampler on the EDM rho grid mapped to t = atan(sigma/sigma_d).
Tensor trigflow_ddim(const NetFn& F, int64_t n, int steps, double sd, Generator& g) {
  NoGrad ng;
  auto sig = karras_grid(steps, 0.002, 80, 7);
  std::vector<double> ts;
  for (int i = steps - 1; i >= 0; --i) ts.push_back(std::atan(sig[i] / sd));
  ts.push_back(0);
  Tensor x = g.randn({n, 2}) * sd;
  for (size_t k = 0; k + 1 < ts.size(); ++k) {
    const double s = ts[k], t = ts[k + 1];
    x = (std::cos(s - t) * x - std::sin(s - t) * sd * F(x / sd, full({n}, s))).detach();
  }
  return x;
}
}  // namespace

TEST_CASE("sCD distils a TrigFlow teacher on a 2-D mixture: 1-step and 2-step close to the teacher") {
  const double sd = 0.5;
  Generator g(42);
  MLPDenoiser teacher(2, 64, 2, g, DType::F32, 32);
  NetFn Ft = [&](const Tensor& u, const Tensor& t) { return teacher.forward(u, t); };
  {
    auto opt = make_adam(teacher.parameters(), 2e-3);
    for (int it = 0; it < 2000; ++it) {
      Tensor x0 = four_blobs(256, g);
      Tensor t = trigflow_sample_t(256, g, -0.8, 1.6, sd, DType::F32);
      Tensor L = critic_flow_loss(Ft, x0, t, sd, g);
      opt->zero_grad();
      L.backward();
      opt->step();
    }
  }
  Generator ge(7);
  Tensor ref = four_blobs(10000, ge);
  Tensor xt = trigflow_ddim(Ft, 10000, 32, sd, ge);
  const double w_teacher = sliced_w2(xt, ref, 64, 1);
  MESSAGE("teacher sliced W2 " << w_teacher << " (data vs data " << sliced_w2(four_blobs(10000, ge), ref, 64, 1) << ")");

  MLPDenoiser student(2, 64, 2, g, DType::F32, 32);
  student.load_parameters(teacher.named_parameters());
  AdaptiveWeight wnet(32);
  NetFn Fs = [&](const Tensor& u, const Tensor& t) { return student.forward(u, t); };
  Tensors ps = student.parameters();
  for (auto& p : wnet.parameters()) ps.push_back(p);
  auto opt = make_adam(ps, 5e-4, 0.9, 0.99);
  SCMConfig cfg;
  cfg.sigma_d = sd;
  cfg.warmup_iters = 300;
  teacher.set_requires_grad(false);
  EMA ema(student.parameters(), 0.995);   // sampling uses the EMA weights, as in the paper
  for (int it = 0; it < 2000; ++it) {
    Tensor x0 = four_blobs(256, g);
    SCMLoss L = scd_loss(Fs, wnet.fn(), Ft, x0, it, cfg, g);
    opt->zero_grad();
    L.loss.backward();
    opt->step();
    ema.update(student.parameters());
  }
  ema.copy_to(student.parameters());
  Tensor x1 = trigflow_consistency_sample(Fs, 10000, 2, scm_sampler_times(1, sd), sd, ge, DType::F32);
  Tensor x2 = trigflow_consistency_sample(Fs, 10000, 2, scm_sampler_times(2, sd), sd, ge, DType::F32);
  const double w1 = sliced_w2(x1, ref, 64, 1), w2 = sliced_w2(x2, ref, 64, 1);
  MESSAGE("sCD 1-step " << w1 << " 2-step " << w2);
  CHECK(w1 < 1.5 * w_teacher);
  CHECK(w2 < 1.2 * w_teacher);
}

TEST_CASE("sCT tangent is unbiased for the sCD tangent before normalisation (Gaussian posterior)") {
  // For fixed x_t, average g_sCT over (x0, z) drawn from the posterior given x_t; with F = F*_CM the
  // sCD tangent is 0, so the average must vanish within Monte-Carlo error (13.7.4).
  Gauss G;
  const int64_t M = 20000;
  const double t = 0.8, x = 0.9;
  const double var_t = std::pow(std::cos(t) * G.s, 2) + std::pow(std::sin(t) * G.sd, 2);
  const double post_mean = G.mu + std::cos(t) * G.s * G.s / var_t * (x - std::cos(t) * G.mu);
  const double post_var = G.s * G.s * std::pow(std::sin(t) * G.sd, 2) / var_t;
  Generator g(31);
  Tensor x0 = g.randn({M, 1}, DType::F64) * std::sqrt(post_var) + post_mean;
  Tensor xt = full({M, 1}, x, DType::F64);
  Tensor z = (xt - std::cos(t) * x0) / std::sin(t);
  Tensor v = std::cos(t) * z - std::sin(t) * x0;
  SCMConfig cfg;
  cfg.normalize = false;
  SCMTangentOut out = scm_tangent(G.F_cm(), xt, full({M}, t, DType::F64), v, 1.0, cfg);
  double m = 0, s2 = 0;
  for (double e : vec(out.g)) { m += e / M; s2 += e * e / M; }
  const double se = std::sqrt((s2 - m * m) / M);
  CHECK(se > 0);
  CHECK(std::fabs(m) < 5 * se);
  // A biased velocity (shifted by 0.1) is detected by the same estimator.
  SCMTangentOut bad = scm_tangent(G.F_cm(), xt, full({M}, t, DType::F64), v + 0.1, 1.0, cfg);
  double mb = 0;
  for (double e : vec(bad.g)) mb += e / M;
  CHECK(std::fabs(mb) > 10 * se);
}

TEST_CASE("sct_loss and scd_loss through their entry points equal the Gaussian closed form per sample") {
  // With F = F*_CM of Gaussian data, g = cos t d/dt f*(x_t, t) along dx_t/dt, whose closed form is
  // Gauss::dfdt. sCT's velocity is cos t z - sin t x0 for the (x0, z) the loss drew; sCD's is the
  // exact teacher's, which makes g vanish. The draws are replayed from a copy of the generator.
  Gauss G;
  const int64_t B = 64, D = 2;
  Generator gd(5);
  Tensor x0 = gd.randn({B, D}, DType::F64) * G.s + G.mu;
  SCMConfig cfg;
  cfg.sigma_d = G.sd;
  cfg.normalize = false;
  cfg.warmup_iters = 0;
  Generator g1(77), g2(77);
  SCMLoss L = sct_loss(G.F_cm(), nullptr, x0, /*iter=*/0, cfg, g1);
  Tensor z = g2.randn(x0.shape(), DType::F64) * cfg.sigma_d;
  Tensor t = trigflow_sample_t(B, g2, cfg.P_mean, cfg.P_std, cfg.sigma_d, DType::F64);
  auto xs = vec(x0), zs = vec(z), ts = vec(t), gs = vec(L.g_hat);
  double err = 0, scale = 0, loss = 0;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t d = 0; d < D; ++d) {
      const double tb = ts[b], c = std::cos(tb), s = std::sin(tb);
      const double x0b = xs[b * D + d], zb = zs[b * D + d];
      const double xt = c * x0b + s * zb, v = c * zb - s * x0b;
      const double ref = c * G.dfdt(xt, tb, v);
      err = std::max(err, std::fabs(gs[b * D + d] - ref));
      scale = std::max(scale, std::fabs(ref));
      loss += ref * ref / (D * B);   // F - sg(F) = 0, so L = mean_b ||g||^2 / D
    }
  CHECK(scale > 0.1);
  CHECK(err < 1e-9 * scale);
  CHECK(L.value() == doctest::Approx(loss).epsilon(1e-9));

  Generator g3(78);
  SCMLoss Ld = scd_loss(G.F_cm(), nullptr, G.F_diff(), x0, 0, cfg, g3);
  for (double e : vec(Ld.g_hat)) CHECK(std::fabs(e) < 1e-9);
  CHECK(Ld.value() < 1e-18);
  // ... and a teacher that is off by a known velocity shift gives g = cos t (df/dx) shift.
  NetFn off = [&](const Tensor& u, const Tensor& tt) { return G.F_diff()(u, tt) + 0.2 / G.sd; };
  Generator g4(78), g5(78);
  SCMLoss Lo = scd_loss(G.F_cm(), nullptr, off, x0, 0, cfg, g4);
  g5.randn(x0.shape(), DType::F64);
  Tensor t5 = trigflow_sample_t(B, g5, cfg.P_mean, cfg.P_std, cfg.sigma_d, DType::F64);
  auto t5s = vec(t5), gos = vec(Lo.g_hat);
  for (int64_t b = 0; b < B; ++b) {
    const double want = std::cos(t5s[b]) * G.s / G.stdt(t5s[b]) * 0.2;
    for (int64_t d = 0; d < D; ++d) CHECK(gos[b * D + d] == doctest::Approx(want).epsilon(1e-8));
  }
}
