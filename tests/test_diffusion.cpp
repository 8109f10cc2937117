// Diffusion objectives and samplers checked against closed forms (ALGORITHMS.md 13.0-13.5): exact
// denoisers of a Gaussian and of a Gaussian mixture give the analytic minimum losses, samplers converge
// to the exact PF-ODE map at their order, and conversions are exact identities. All in f64.
#include <doctest/doctest.h>

#include <array>
#include <cmath>
#include <cstdlib>
#include <functional>

#include "models/mlp.h"
#include "train/diffusion.h"
#include "train/metrics.h"
#include "train/optim.h"
#include "train/toy_data.h"

using namespace df;

namespace {
constexpr DType F64 = DType::F64;

double max_abs_diff(const Tensor& a, const Tensor& b) {
  auto u = a.to_vector(), v = b.to_vector();
  REQUIRE(u.size() == v.size());
  double m = 0;
  for (size_t i = 0; i < u.size(); ++i) m = std::max(m, std::abs(u[i] - v[i]));
  return m;
}
double max_abs(const Tensor& a) {
  double m = 0;
  for (double v : a.to_vector()) m = std::max(m, std::abs(v));
  return m;
}

// 13.0 A: x0 ~ N(mu, s^2 I); D*(x; sigma) = mu + s^2/(s^2+sigma^2)(x - mu).
struct Gauss {
  double mu, s;
  Denoiser D() const {
    Gauss g = *this;
    return [g](const Tensor& x, const Tensor& sigma) {
      Tensor sb = per_sample(sigma.dim() ? sigma : broadcast_to(sigma, {x.size(0)}), x);
      return (x - g.mu) * (g.s * g.s) / (sb * sb + g.s * g.s) + g.mu;
    };
  }
  double post_var(double sigma) const { return s * s * sigma * sigma / (s * s + sigma * sigma); }
  // Exact PF-ODE map from EDM noise level sigma_a to sigma_b.
  double flow_edm(double x, double sa, double sb) const {
    return mu + std::sqrt(s * s + sb * sb) / std::sqrt(s * s + sa * sa) * (x - mu);
  }
};

// 13.0 B: an isotropic 2-D mixture with a host-side denoiser and posterior variance (an independent
// reference: log-sum-exp responsibilities computed in plain loops).
struct RefGMM {
  std::vector<double> w{0.5, 0.3, 0.2};
  std::vector<std::array<double, 2>> m{{-1.0, 0.0}, {1.0, 0.5}, {0.0, -1.0}};
  std::vector<double> s{0.3, 0.5, 0.2};
  // Returns D (2 entries) and the trace of Var[x0 | x].
  std::pair<std::array<double, 2>, double> posterior(const double* x, double sigma) const {
    size_t K = w.size();
    std::vector<double> lg(K);
    double mx = -1e300;
    for (size_t k = 0; k < K; ++k) {
      double v = s[k] * s[k] + sigma * sigma, d2 = 0;
      for (int j = 0; j < 2; ++j) d2 += (x[j] - m[k][j]) * (x[j] - m[k][j]);
      lg[k] = std::log(w[k]) - d2 / (2 * v) - std::log(v);   // 2-D: -dim/2 ln v
      mx = std::max(mx, lg[k]);
    }
    double z = 0;
    for (auto& l : lg) z += (l = std::exp(l - mx));
    std::array<double, 2> D{0, 0};
    double second = 0;
    for (size_t k = 0; k < K; ++k) {
      double g = lg[k] / z, v = s[k] * s[k] + sigma * sigma, a = s[k] * s[k] / v;
      double pv = s[k] * s[k] * sigma * sigma / v;
      for (int j = 0; j < 2; ++j) {
        double mk = m[k][j] + a * (x[j] - m[k][j]);
        D[j] += g * mk;
        second += g * (pv + mk * mk);
      }
    }
    return {D, second - D[0] * D[0] - D[1] * D[1]};
  }
  Denoiser D() const {
    RefGMM self = *this;
    return [self](const Tensor& x, const Tensor& sigma) {
      auto xv = x.to_vector();
      int64_t B = x.size(0);
      auto sv = sigma.dim() ? sigma.to_vector() : std::vector<double>(B, sigma.item());
      std::vector<double> out(xv.size());
      for (int64_t i = 0; i < B; ++i) {
        auto D = self.posterior(&xv[2 * i], sv[i]).first;
        out[2 * i] = D[0];
        out[2 * i + 1] = D[1];
      }
      return from_vector(out, x.shape(), x.dtype());
    };
  }
  std::array<double, 2> sample(Generator& g) const {
    double u = g.uniform(), c = 0;
    size_t k = 0;
    for (; k + 1 < w.size(); ++k) if (u < (c += w[k])) break;
    return {m[k][0] + s[k] * g.normal(), m[k][1] + s[k] * g.normal()};
  }
  Tensor sample(int64_t n, Generator& g) const {
    std::vector<double> v;
    for (int64_t i = 0; i < n; ++i) {
      auto p = sample(g);
      v.push_back(p[0]);
      v.push_back(p[1]);
    }
    return from_vector(v, {n, 2}, F64);
  }
};

// E over n ~ N(0,1) of f(n), composite Simpson on [-10, 10].
double expect_normal(const std::function<double(double)>& f) {
  const int N = 20000;
  double h = 20.0 / N, acc = 0;
  for (int i = 0; i <= N; ++i) {
    double n = -10 + i * h, wt = (i == 0 || i == N) ? 1 : (i % 2 ? 4 : 2);
    acc += wt * f(n) * std::exp(-0.5 * n * n) / std::sqrt(2 * M_PI);
  }
  return acc * h / 3;
}
double integrate01(const std::function<double(double)>& f) {
  const int N = 20000;
  double h = 1.0 / N, acc = 0;
  for (int i = 0; i <= N; ++i) acc += ((i == 0 || i == N) ? 1 : (i % 2 ? 4 : 2)) * f(i * h);
  return acc * h / 3;
}

// Raw networks that output each objective's exact target, built from an exact denoiser D*.
Net oracle_ddpm(const DDPM& obj, const Denoiser& D) {
  TimeModel eps = obj.eps_from_denoiser(D);
  return [eps](const Tensor& x_t, const Tensor& c) { return eps(x_t, c + 1.0); };
}
Net oracle_edm(const EDM& obj, const Denoiser& D) {
  double sd = obj.pre.sigma_d;
  return [D, sd](const Tensor& x_in, const Tensor& c) {
    Tensor sigma = exp(c * 4.0), sb = per_sample(sigma, x_in);
    Tensor x = x_in * sqrt(sb * sb + sd * sd);
    Tensor c_skip = (sd * sd) / (sb * sb + sd * sd), c_out = sb * sd / sqrt(sb * sb + sd * sd);
    return (D(x, sigma) - c_skip * x) / c_out;
  };
}
Net oracle_fm(const FlowMatching& obj, const Denoiser& D) {
  TimeModel v = fm_velocity_from_denoiser(D);
  double sc = obj.c_noise_scale;
  return [v, sc](const Tensor& x_t, const Tensor& c) { return v(x_t, c / sc); };
}
Net oracle_trig(const TrigFlow& obj, const Denoiser& D) {
  TimeModel F = trig_F_from_denoiser(D, obj.sigma_d);
  double sd = obj.sigma_d, sc = obj.c_noise_scale;
  return [F, sd, sc](const Tensor& x_in, const Tensor& c) { return F(x_in * sd, c / sc); };
}

// Mean and standard error of `reps` independent loss evaluations.
std::pair<double, double> mc_loss(const DiffusionObjective& obj, const Net& net,
                                  const std::function<Tensor(Generator&)>& data, int reps, uint64_t seed) {
  Generator g(seed);
  double s1 = 0, s2 = 0;
  for (int r = 0; r < reps; ++r) {
    double l = obj.loss(net, data(g), g).item();
    s1 += l;
    s2 += l * l;
  }
  double m = s1 / reps, var = s2 / reps - m * m;
  return {m, std::sqrt(std::max(var, 0.0) / (reps - 1))};
}
}  // namespace

TEST_CASE("diffusion: schedules and conversions (13.1)") {
  DDPMSchedule s;
  CHECK(s.abar[1000] == doctest::Approx(4.0358e-5).epsilon(1e-4));
  CHECK(std::sqrt(s.abar[1000]) == doctest::Approx(0.0063528).epsilon(1e-4));
  CHECK(s.sigma(1) == doctest::Approx(0.010000).epsilon(1e-4));
  CHECK(s.sigma(1000) == doctest::Approx(157.41).epsilon(1e-4));
  CHECK(s.beta_tilde(1) == 0.0);
  for (int t : {1, 2, 17, 500, 999, 1000}) CHECK(s.t_from_sigma(s.sigma(t)) == doctest::Approx(t).epsilon(1e-12));
  // Round trips of the time maps, exact in f64.
  for (double t : {1e-4, 0.1, 0.5, 0.9, 1.5, 1.5645464}) {
    CHECK(trig_t_from_sigma(trig_sigma_from_t(t, 0.5), 0.5) == doctest::Approx(t).epsilon(1e-13));
    CHECK(trig_t_from_fm_t(fm_t_from_trig_t(t)) == doctest::Approx(t).epsilon(1e-13));
  }
  for (double t : {1e-4, 0.1, 0.5, 0.9, 0.999}) {
    CHECK(fm_t_from_sigma(fm_sigma_from_t(t)) == doctest::Approx(t).epsilon(1e-13));
    double abar = 1 - t;
    CHECK(vp_abar_from_sigma(vp_sigma_from_abar(abar)) == doctest::Approx(abar).epsilon(1e-13));
  }
  CHECK(trig_t_from_sigma(80, 0.5) == doctest::Approx(1.5645464).epsilon(1e-7));
  CHECK(trig_sigma_from_t(1.1, 0.5) == doctest::Approx(0.98238).epsilon(1e-5));
  CHECK(fm_shift(0, 3) == 0.0);
  CHECK(fm_shift(1, 3) == 1.0);

  // Prediction round trips on random tensors.
  Tensor x = randn({64, 3}, 1, F64), p = randn({64, 3}, 2, F64);
  Tensor t = rand({64}, 3, F64) * 1.5 + 0.01, a = rand({64}, 4, F64) + 0.1, sg = rand({64}, 5, F64) + 0.1;
  CHECK(max_abs_diff(x0_from_eps(x, eps_from_x0(x, p, a, sg), a, sg), p) < 1e-12);
  CHECK(max_abs_diff(fm_x0_from_v(x, fm_v_from_x0(x, p, t / 1.6), t / 1.6), p) < 1e-12);
  CHECK(max_abs_diff(trig_x0_from_F(x, trig_F_from_x0(x, p, t, 0.5), t, 0.5), p) < 1e-12);
  // score = -eps_hat / s
  CHECK(max_abs_diff(score_from_x0(x, p, a, sg), -eps_from_x0(x, p, a, sg) / per_sample(sg, x)) < 1e-12);
}

TEST_CASE("diffusion: every parameterization implies the same exact denoiser (13.0, 13.1)") {
  Gauss G{0.3, 0.7};
  double sd = 0.5;
  Tensor x = randn({32, 2}, 7, F64) * 1.3;
  Tensor t = rand({32}, 8, F64) * 1.5 + 0.02;              // TrigFlow time in (0, pi/2)
  Tensor tb = per_sample(t, x);
  // TrigFlow closed forms: sigma_d F* = sin t cos t (sd^2 - s^2)/std_t^2 (x - m_t) - sin t mu.
  Tensor std2 = cos(tb) * cos(tb) * (G.s * G.s) + sin(tb) * sin(tb) * (sd * sd);
  Tensor m_t = cos(tb) * G.mu;
  Tensor F_closed = (sin(tb) * cos(tb) * (sd * sd - G.s * G.s) / std2 * (x - m_t) - sin(tb) * G.mu) / sd;
  Tensor F_from_D = trig_F_from_denoiser(G.D(), sd)(x, t);
  CHECK(max_abs_diff(F_from_D, F_closed) < 1e-12);
  // FM closed form D* = mu + (1-t) s^2/((1-t)^2 s^2 + t^2)(x - (1-t) mu), v* = (x - D*)/t.
  Tensor u = rand({32}, 9, F64) * 0.98 + 0.01, ub = per_sample(u, x);
  Tensor D_fm = G.mu + (1.0 - ub) * (G.s * G.s) / ((1.0 - ub) * (1.0 - ub) * (G.s * G.s) + ub * ub) *
                           (x - (1.0 - ub) * G.mu);
  CHECK(max_abs_diff(fm_velocity_from_denoiser(G.D())(x, u), (x - D_fm) / ub) < 1e-12);
  // DDPM closed form eps* = sqrt(1-abar)(x_t - sqrt(abar) mu)/(abar s^2 + 1 - abar).
  DDPM ddpm;
  for (int tt : {1, 10, 300, 1000}) {
    double ab = ddpm.sched.abar[tt];
    Tensor e = ddpm.eps_from_denoiser(G.D())(x, full({32}, tt, F64));
    CHECK(max_abs_diff(e, (x - std::sqrt(ab) * G.mu) * (std::sqrt(1 - ab) / (ab * G.s * G.s + 1 - ab))) < 1e-12);
  }
  // 4.5: TrigFlow F from the exact FM velocity of data/sigma_d equals the exact TrigFlow F (mixture too).
  RefGMM M;
  for (double sdv : {1.0, 0.5}) {
    Gauss Gs{G.mu / sdv, G.s / sdv};
    Tensor t_fm = sin(t) / (sin(t) + cos(t));
    Tensor x_fm = fm_x_from_trig_x(x, t, sdv);
    Tensor F = trig_F_from_fm_v(x, fm_velocity_from_denoiser(Gs.D())(x_fm, t_fm), t, sdv);
    Tensor F_ref = trig_F_from_denoiser(Gauss{G.mu, G.s}.D(), sdv)(x, t);
    CHECK(max_abs_diff(F, F_ref) < 1e-10);
  }
  {
    // Mixture with sigma_d = 1: same object through both routes.
    Tensor t_fm = sin(t) / (sin(t) + cos(t));
    Tensor F = trig_F_from_fm_v(x, fm_velocity_from_denoiser(M.D())(fm_x_from_trig_x(x, t, 1), t_fm), t, 1);
    CHECK(max_abs_diff(F, trig_F_from_denoiser(M.D(), 1)(x, t)) < 1e-10);
  }
}

TEST_CASE("diffusion: each objective's adapter to D(x; sigma) inverts the oracle network") {
  // The oracle raw networks built from D* must map back to D* through each objective's denoiser().
  RefGMM M;
  Tensor x = randn({40, 2}, 11, F64) * 2;
  Tensor sigma = exp(randn({40}, 12, F64) * 1.5 - 0.5);
  Tensor want = M.D()(x, sigma);
  DDPM ddpm;
  EDM edm;
  FlowMatching fm;
  TrigFlow trig(0.7);
  CHECK(max_abs_diff(edm.denoiser(oracle_edm(edm, M.D()))(x, sigma), want) < 1e-10);
  CHECK(max_abs_diff(fm.denoiser(oracle_fm(fm, M.D()))(x, sigma), want) < 1e-10);
  CHECK(max_abs_diff(trig.denoiser(oracle_trig(trig, M.D()))(x, sigma), want) < 1e-10);
  // DDPM's adapter sees fractional t; at the schedule's own sigmas it is exact.
  std::vector<double> sv;
  for (int i = 0; i < 40; ++i) sv.push_back(ddpm.sched.sigma(1 + 25 * i));
  Tensor s_grid = from_vector(sv, {40}, F64);
  CHECK(max_abs_diff(ddpm.denoiser(oracle_ddpm(ddpm, M.D()))(x, s_grid), M.D()(x, s_grid)) < 1e-9);
}

TEST_CASE("diffusion: EDM preconditioning and TrigFlow unit scale (13.3, 13.5)") {
  EDMPrecond p;
  for (double s : {0.002, 0.1, 0.5, 3.0, 80.0}) CHECK(p.lambda(s) * p.c_out(s) * p.c_out(s) == doctest::Approx(1).epsilon(1e-13));
  CHECK(p.c_skip(1e-8) == doctest::Approx(1));
  CHECK(p.c_out(1e-8) < 1e-7);
  CHECK(p.c_skip(1e8) < 1e-15);
  CHECK(p.c_out(1e8) == doctest::Approx(0.5));
  const int64_t B = 100000;
  double sd = 0.5;
  // Gaussian, uniform and Rademacher data, each with per-entry variance sd^2.
  std::vector<Tensor> datas = {randn({B}, 21, F64) * sd, (rand({B}, 22, F64) - 0.5) * (sd * std::sqrt(12.0)),
                               sign(rand({B}, 23, F64) - 0.5) * sd};
  double tol = 5 * std::sqrt(2.0 / B) * 3;     // 5 sigma for a variance estimate of a non-Gaussian variable
  for (auto& x0 : datas) {
    Tensor n = randn({B}, 24, F64);
    for (double s : {0.01, 0.3, 1.0, 20.0}) {
      Tensor x = x0 + n * s;
      CHECK(var(x * p.c_in(s)).item() == doctest::Approx(1).epsilon(tol));
      CHECK(var((x0 - x * p.c_skip(s)) / p.c_out(s)).item() == doctest::Approx(1).epsilon(tol));
    }
    Tensor z = n * sd;
    for (double t : {0.05, 0.7, 1.5}) {
      Tensor x_t = x0 * std::cos(t) + z * std::sin(t), v_t = z * std::cos(t) - x0 * std::sin(t);
      CHECK(var(x_t / sd).item() == doctest::Approx(1).epsilon(tol));
      CHECK(var(v_t / sd).item() == doctest::Approx(1).epsilon(tol));
      CHECK(std::abs(mean(x_t * v_t).item() / (sd * sd)) < tol);
    }
  }
}

TEST_CASE("diffusion: TrigFlow boundary, EDM equivalence and the DDIM freeze-D form (4.2-4.6, 13.5)") {
  double sd = 0.5;
  Tensor x = randn({16, 3}, 31, F64), F = randn({16, 3}, 32, F64) * 1e3;
  // f(x, 0) == x bit-exactly for any F.
  CHECK(max_abs_diff(trig_consistency_fn(x, F, zeros({16}, F64), sd), x) == 0.0);
  CHECK(max_abs_diff(trig_consistency_fn(cast(x, DType::F32), cast(F, DType::F32), zeros({16}), sd),
                     cast(x, DType::F32)) == 0.0);
  // The same raw network read as EDM F and (negated) as TrigFlow F gives the same D (4.4: F_Trig = -F_EDM).
  Net raw = [](const Tensor& x_in, const Tensor& c) { return sin(x_in * 1.7 + per_sample(c, x_in)) * 0.8; };
  EDM edm(sd);
  TrigFlow trig(sd);
  trig.c_noise_scale = 1;
  Net neg_raw_trig = [raw, sd](const Tensor& x_in, const Tensor& t) {
    return -raw(x_in, log(tan(t) * sd) * 0.25);   // EDM's c_noise at sigma = sd tan t
  };
  Tensor sigma = exp(randn({16}, 33, F64));
  CHECK(max_abs_diff(edm.denoiser(raw)(x, sigma), trig.denoiser(neg_raw_trig)(x, sigma)) < 1e-12);
  // lambda ||D - x0||^2 == ||F_trig - v_t/sd||^2 for matched (x0, n, sigma) (4.2).
  Tensor x0 = randn({16, 3}, 34, F64), n = randn({16, 3}, 35, F64);
  Tensor sb = per_sample(sigma, x0), t = atan(sigma / sd), tb = per_sample(t, x0);
  Tensor xe = x0 + sb * n, D = edm.denoiser(raw)(xe, sigma);
  Tensor lam = (sb * sb + sd * sd) / (sb * sb * sd * sd);
  Tensor lhs = lam * square(D - x0);
  Tensor z = n * sd, x_t = cos(tb) * x0 + sin(tb) * z, v_t = cos(tb) * z - sin(tb) * x0;
  Tensor rhs = square(trig.F_model(neg_raw_trig)(x_t, t) - v_t / sd);
  CHECK(max_abs_diff(lhs, rhs) < 1e-9);
  // DDIM step == cos t D + sin t (x_s - cos s D)/sin s with D = cos s x_s - sd sin s F.
  double s = 1.2, tt = 0.4;
  Tensor Fs = randn({16, 3}, 36, F64);
  Tensor Ds = x * std::cos(s) - Fs * (sd * std::sin(s));
  CHECK(max_abs_diff(trig_ddim_step(x, Fs, s, tt, sd),
                     Ds * std::cos(tt) + (x - Ds * std::cos(s)) * (std::sin(tt) / std::sin(s))) < 1e-13);
  // mu = 0, s = sd: F* == 0 and trajectories are constant; DDIM's error per step is (1 - cos h) x.
  Tensor F0 = trig_F_from_denoiser(Gauss{0, sd}.D(), sd)(x, full({16}, 0.9, F64));
  CHECK(max_abs(F0) < 1e-14);
  CHECK(max_abs_diff(trig_ddim_step(x, F0, 0.9, 0.5, sd), x * std::cos(0.4)) < 1e-14);
}

TEST_CASE("diffusion: DDPM ancestral/DDIM identities (13.2)") {
  DDPMSchedule s;
  Tensor x = randn({8, 2}, 41, F64), e = randn({8, 2}, 42, F64), n = randn({8, 2}, 43, F64);
  double worst = 0, worst_post = 0;
  for (int t = 1; t <= s.T; ++t) {
    // DDIM with eta = 1 and t' = t-1 is the ancestral step with sigma^2 = beta_tilde.
    worst = std::max(worst, max_abs_diff(ddim_step(s, x, e, t, t - 1, 1.0, n), ddpm_ancestral_step(s, x, e, t, n, true)));
    // Posterior identity: the ancestral mean equals mu_tilde(x_t, x0_hat).
    Tensor x0 = (x - e * std::sqrt(1 - s.abar[t])) / std::sqrt(s.abar[t]);
    Tensor mu_t = x0 * (std::sqrt(s.abar[t - 1]) * s.beta[t] / (1 - s.abar[t])) +
                  x * (std::sqrt(s.alpha[t]) * (1 - s.abar[t - 1]) / (1 - s.abar[t]));
    worst_post = std::max(worst_post, max_abs_diff(ddpm_ancestral_step(s, x, e, t, Tensor(), true), mu_t) /
                                          std::max(1.0, max_abs(mu_t)));
  }
  CHECK(worst < 1e-9);
  CHECK(worst_post < 1e-9);
  CHECK(ddim_timesteps(s, 10).front() == 1000);
  CHECK(ddim_timesteps(s, 10).back() == 1);
  CHECK(ddim_timesteps(s, 1000).size() == 1000);
}

TEST_CASE("diffusion: exact denoisers reach the analytic minimum loss of every objective (13.0, 13.2-13.5)") {
  Gauss G{0.3, 0.7};
  RefGMM M;
  const int64_t B = 10000;
  const int reps = 16;
  DDPM ddpm;
  EDM edm(0.5);
  FlowMatching fm;
  TrigFlow trig(0.5);
  auto gauss_data = [&](Generator& g) { return g.randn({B, 2}, F64) * G.s + G.mu; };
  auto gmm_data = [&](Generator& g) { return M.sample(B, g); };

  // Gaussian minima per entry: E[w(sigma) Var[x0|x]] with the x0-space weight of each objective.
  double ddpm_min = 0;
  for (int t = 1; t <= 1000; ++t) ddpm_min += G.post_var(ddpm.sched.sigma(t)) / std::pow(ddpm.sched.sigma(t), 2) / 1000;
  double edm_min = expect_normal([&](double n) {
    double s = std::exp(edm.P_mean + edm.P_std * n);
    return edm.pre.lambda(s) * G.post_var(s);
  });
  double fm_min = integrate01([&](double t) { return G.s * G.s / ((1 - t) * (1 - t) * G.s * G.s + t * t); });
  double trig_min = expect_normal([&](double n) {
    double t = std::atan(std::exp(trig.P_mean + trig.P_std * n) / trig.sigma_d);
    return G.s * G.s / (G.s * G.s * std::cos(t) * std::cos(t) + std::pow(trig.sigma_d * std::sin(t), 2));
  });
  struct Case { const DiffusionObjective* obj; Net net; double want; };
  std::vector<Case> cases = {{&ddpm, oracle_ddpm(ddpm, G.D()), ddpm_min}, {&edm, oracle_edm(edm, G.D()), edm_min},
                             {&fm, oracle_fm(fm, G.D()), fm_min}, {&trig, oracle_trig(trig, G.D()), trig_min}};
  for (auto& c : cases) {
    CAPTURE(c.obj->name());
    auto [m, se] = mc_loss(*c.obj, c.net, gauss_data, reps, 100);
    CAPTURE(m);
    CAPTURE(se);
    CHECK(std::abs(m - c.want) < 5 * se);
  }
  // A denoiser evaluated at the wrong noise level (a classic conversion bug) must be visibly worse.
  Denoiser off = [&](const Tensor& x, const Tensor& s) { return G.D()(x, s * 1.3); };
  CHECK(mc_loss(trig, oracle_trig(trig, off), gauss_data, reps, 100).first > trig_min * 1.02);

  // Mixture: the minimum is E[w(sigma) tr Var[x0|x]]/2, estimated with the reference posterior
  // (Rao-Blackwellised MC, independent of the objectives' code).
  Generator h(5);
  const int NR = 50000;
  auto rb = [&](const std::function<std::pair<double, double>(Generator&)>& draw) {
    double s1 = 0, s2 = 0;
    for (int i = 0; i < NR; ++i) {
      auto [sigma, w] = draw(h);
      auto x0 = M.sample(h);
      double x[2] = {x0[0] + sigma * h.normal(), x0[1] + sigma * h.normal()};
      double v = w * M.posterior(x, sigma).second / 2;
      s1 += v;
      s2 += v * v;
    }
    double m = s1 / NR;
    return std::make_pair(m, std::sqrt((s2 / NR - m * m) / NR));
  };
  auto r_ddpm = rb([&](Generator& g) {
    double s = ddpm.sched.sigma(1 + int(g.next_u64() % 1000));
    return std::make_pair(s, 1 / (s * s));
  });
  auto r_edm = rb([&](Generator& g) {
    double s = std::exp(edm.P_mean + edm.P_std * g.normal());
    return std::make_pair(s, edm.pre.lambda(s));
  });
  auto r_fm = rb([&](Generator& g) {
    double t = g.uniform();
    return std::make_pair(fm_sigma_from_t(t), 1 / (t * t));
  });
  auto r_trig = rb([&](Generator& g) {
    double s = std::exp(trig.P_mean + trig.P_std * g.normal()), t = trig_t_from_sigma(s, trig.sigma_d);
    return std::make_pair(s, 1 / std::pow(trig.sigma_d * std::sin(t), 2));
  });
  std::vector<std::pair<Case, std::pair<double, double>>> mcases = {
      {{&ddpm, oracle_ddpm(ddpm, M.D()), 0}, r_ddpm}, {{&edm, oracle_edm(edm, M.D()), 0}, r_edm},
      {{&fm, oracle_fm(fm, M.D()), 0}, r_fm}, {{&trig, oracle_trig(trig, M.D()), 0}, r_trig}};
  for (auto& [c, ref] : mcases) {
    CAPTURE(c.obj->name());
    auto [m, se] = mc_loss(*c.obj, c.net, gmm_data, 8, 200);
    CAPTURE(m);
    CAPTURE(ref.first);
    CHECK(std::abs(m - ref.first) < 5 * std::sqrt(se * se + ref.second * ref.second));
  }
}

TEST_CASE("diffusion: samplers with the exact denoiser converge to the PF-ODE map at their order (13.2-13.5)") {
  Gauss G{0.3, 0.7};
  // EDM Heun, x_T = 120 at sigma_max = 80: errors 0.0523, 0.0116, 0.0027 (13.3, checked).
  {
    Tensor xT = full({1, 1}, 120.0, F64);
    double want = G.flow_edm(120, 80, 0);
    std::vector<double> err;
    for (int N : {18, 36, 72}) {
      int calls = 0;
      Denoiser D = [&](const Tensor& x, const Tensor& s) { ++calls; return G.D()(x, s); };
      EDMSampler opt;
      opt.steps = N;
      Generator g(1);
      err.push_back(std::abs(edm_heun_sample(D, xT, opt, g).item() - want));
      CHECK(calls == 2 * N - 1);
    }
    CHECK(err[0] == doctest::Approx(0.0523).epsilon(0.02));
    CHECK(err[1] == doctest::Approx(0.0116).epsilon(0.02));
    CHECK(err[2] == doctest::Approx(0.0027).epsilon(0.04));
    for (int i = 0; i < 2; ++i) {
      CHECK(err[i] / err[i + 1] > 3.5);
      CHECK(err[i] / err[i + 1] < 5);
    }
    // Euler on the same grid is first order.
    double e1 = std::abs(edm_heun_on_grid(G.D(), xT, edm_sigma_grid(64, 0.002, 80, 7), false).item() - want);
    double e2 = std::abs(edm_heun_on_grid(G.D(), xT, edm_sigma_grid(128, 0.002, 80, 7), false).item() - want);
    CHECK(e1 / e2 > 1.6);
    CHECK(e1 / e2 < 2.5);
  }
  Tensor x0 = from_vector({-1.5, -0.2, 0.4, 1.1, 2.0}, {5, 1}, F64);
  auto err_of = [](const Tensor& got, const std::vector<double>& want) {
    auto g = got.to_vector();
    double m = 0;
    for (size_t i = 0; i < g.size(); ++i) m = std::max(m, std::abs(g[i] - want[i]));
    return m;
  };
  auto check_order = [](const std::vector<double>& e, double lo, double hi) {
    for (size_t i = 0; i + 1 < e.size(); ++i) {
      CAPTURE(i);
      CAPTURE(e[i]);
      CHECK(e[i] / e[i + 1] > lo);
      CHECK(e[i] / e[i + 1] < hi);
    }
  };
  // DDIM (eta = 0): exact map from sigma_T to sigma_1 along the ODE, then x0_hat = D*(x_1; sigma_1).
  {
    DDPM ddpm;
    auto& s = ddpm.sched;
    TimeModel eps = ddpm.eps_from_denoiser(G.D());
    std::vector<double> want;
    for (double v : x0.to_vector()) {
      double x_edm = G.flow_edm(v / std::sqrt(s.abar[1000]), s.sigma(1000), s.sigma(1));
      want.push_back(G.mu + G.s * G.s / (G.s * G.s + s.sigma(1) * s.sigma(1)) * (x_edm - G.mu));
    }
    std::vector<double> e;
    Generator g(3);
    for (int n : {25, 50, 100, 200}) e.push_back(err_of(ddim_sample(s, eps, x0, n, 0.0, g), want));
    check_order(e, 1.6, 2.5);
    // Ancestral sampling with exact eps*: sample mean mu and variance s^2.
    const int64_t B = 20000;
    Tensor xs = ddpm_ancestral_sample(s, eps, g.randn({B, 1}, F64), g);
    double se_m = G.s / std::sqrt(B), se_v = G.s * G.s * std::sqrt(2.0 / B);
    CHECK(std::abs(mean(xs).item() - G.mu) < 5 * se_m);
    CHECK(std::abs(var(xs).item() - G.s * G.s) < 5 * se_v);
  }
  // FM Euler from t = 1 with the closed-form v*: f*(x, 1) = mu + s x.
  {
    TimeModel v = [&](const Tensor& x, const Tensor& t) {
      Tensor tb = per_sample(t, x);
      Tensor D = G.mu + (1.0 - tb) * (G.s * G.s) / ((1.0 - tb) * (1.0 - tb) * (G.s * G.s) + tb * tb) *
                            (x - (1.0 - tb) * G.mu);
      return (x - D) / tb;
    };
    std::vector<double> want;
    for (double u : x0.to_vector()) want.push_back(G.mu + G.s * u);
    std::vector<double> e;
    for (int n : {16, 32, 64, 128}) e.push_back(err_of(fm_euler_sample(v, x0, fm_time_grid(n)), want));
    check_order(e, 1.6, 2.5);
    for (int n : {16, 64}) CHECK(err_of(fm_euler_sample(v, x0, fm_time_grid(n, 3.0)), want) < 0.2);
  }
  // TrigFlow DDIM (first order) and DPM-Solver++(2M) (second order) from t_max; f* = mu + s(x - cos t mu)/std_t.
  {
    double sd = 0.5, tmax = trig_t_from_sigma(80, sd);
    TimeModel F = trig_F_from_denoiser(G.D(), sd);
    double std_t = std::sqrt(std::pow(std::cos(tmax) * G.s, 2) + std::pow(std::sin(tmax) * sd, 2));
    std::vector<double> want;
    for (double u : x0.to_vector()) want.push_back(G.mu + G.s * (u - std::cos(tmax) * G.mu) / std_t);
    std::vector<double> e1, e2;
    for (int n : {16, 32, 64, 128}) {
      e1.push_back(err_of(trig_ddim_sample(F, x0, trig_time_grid(n, sd), sd), want));
      e2.push_back(err_of(trig_dpm2m_sample(F, x0, trig_time_grid(n, sd), sd), want));
    }
    check_order(e1, 1.6, 2.5);
    check_order(e2, 3.0, 5.5);   // measured 4.8, 4.5, 4.2
    CHECK(e2.back() < e1.back() / 10);
  }
}

TEST_CASE("diffusion: Heun with churn and the exact mixture denoiser recovers the mixture weights (13.3)") {
  RefGMM M;
  M.s = {0.1, 0.1, 0.1};                          // well separated
  Generator g(9);
  const int64_t B = 4000;
  EDMSampler opt;
  opt.steps = 18;
  opt.S_churn = 10;
  opt.S_min = 0.05;
  opt.S_max = 50;
  Tensor x = edm_heun_sample(M.D(), g.randn({B, 2}, F64) * 80.0, opt, g);
  auto xv = x.to_vector();
  std::vector<double> count(3, 0), sq(3, 0);
  for (int64_t i = 0; i < B; ++i) {
    int best = 0;
    double bd = 1e300;
    for (int k = 0; k < 3; ++k) {
      double d = std::pow(xv[2 * i] - M.m[k][0], 2) + std::pow(xv[2 * i + 1] - M.m[k][1], 2);
      if (d < bd) bd = d, best = k;
    }
    count[best] += 1;
    sq[best] += bd;
  }
  for (int k = 0; k < 3; ++k) {
    double p = count[k] / B, se = std::sqrt(M.w[k] * (1 - M.w[k]) / B);
    CHECK(std::abs(p - M.w[k]) < 5 * se);
    CHECK(sq[k] / count[k] / 2 == doctest::Approx(0.01).epsilon(0.15));   // per-entry variance s_k^2
  }
}

// ---- short training runs: each objective trains an MLPDenoiser on a 2-D mixture (f32, CPU) ----------

TEST_CASE("diffusion: the reference mixture denoiser agrees with GaussianMixture::denoise") {
  RefGMM M;
  GaussianMixture gm;
  gm.dim = 2;
  gm.weights = M.w;
  for (auto& m : M.m) gm.means.push_back({m[0], m[1]});
  gm.stds = M.s;
  Tensor x = randn({50, 2}, 61, F64) * 2;
  Tensor sigma = exp(randn({50}, 62, F64) * 2);
  CHECK(max_abs_diff(gm.denoise(x, sigma), M.D()(x, sigma)) < 1e-10);
}

namespace {
// Trains `obj` for `steps` Adam steps (lr 2e-3, 100-step warm-up, decay over the last third, batch 256,
// EMA 0.995) and
// returns sliced W2(generated, data) / sliced W2(data, data), each averaged over 10 independent pairs of
// 2000-point sets. One pair's value has a std of ~75% of its mean on this mixture (it is dominated by the
// multinomial fluctuation of the component counts), far too noisy for a 1.5x bound without averaging.
double train_ratio(const DiffusionObjective& obj, int steps, int sampler_steps, uint64_t seed) {
  if (const char* e = std::getenv("DF_SEED_SHIFT")) seed += std::atoi(e);   // robustness probe: other seeds
  GaussianMixture gmm = simple_gmm_2d();
  Generator g(seed);
  MLPDenoiser net(2, 128, 3, g);
  auto opt = make_adam(net.parameters(), 2e-3);
  EMA ema(net.parameters(), 0.995);
  Net f = [&](const Tensor& x, const Tensor& c) { return net.forward(x, c); };
  for (int i = 0; i < steps; ++i) {
    opt->zero_grad();
    obj.loss(f, gmm.sample(256, g, DType::F32), g).backward();
    // Warm-up, then a linear decay to 0 over the last third: the final weights average out the
    // gradient noise that dominates a 3000-step run at this lr.
    opt->lr = warmup_lr(2e-3, i, 100) * std::min(1.0, 3.0 * (steps - i) / steps);
    opt->step();
    ema.update(net.parameters());
  }
  ema.copy_to(net.parameters());
  NoGrad ng;
  const int64_t N = 2000;
  const int K = 10;
  Tensor xs = obj.sample(f, {K * N, 2}, sampler_steps, g, DType::F32);   // one batched draw, split below
  REQUIRE(std::isfinite(sum(xs).item()));
  double floor_ = 0, model = 0;
  for (int r = 0; r < K; ++r) {
    Tensor a = gmm.sample(N, g, DType::F32), b = gmm.sample(N, g, DType::F32);
    floor_ += sliced_w2(a, b, 128, 100 + r);
    model += sliced_w2(narrow(xs, 0, r * N, N), b, 128, 100 + r);
  }
  MESSAGE(obj.name(), " sliced W2 ratio to the data floor: ", model / floor_);
  return model / floor_;
}
// EDM's P_mean = -1.2 was tuned for sigma_d = 0.5; shifting ln sigma by ln(sigma_d/0.5) keeps the same
// distribution of sigma/sigma_d for data of another scale (the mixture's per-entry std is about 1.2).
constexpr double kToySigmaD = 1.2;
// DF_STEPS overrides the training length (to probe the budget); 3000 steps is ~13 s CPU per method.
const int kSteps = std::getenv("DF_STEPS") ? std::atoi(std::getenv("DF_STEPS")) : 3000;
const double kToyPMean = -1.2 + std::log(kToySigmaD / 0.5);
}  // namespace

TEST_CASE("diffusion training: DDPM (DDIM 50 steps) reaches 1.5x the data floor") {
  DDPM obj;
  CHECK(train_ratio(obj, kSteps, 50, 1) < 1.5);
}
TEST_CASE("diffusion training: EDM (Heun 18 steps) reaches 1.5x the data floor") {
  EDM obj(kToySigmaD);
  obj.P_mean = kToyPMean;
  CHECK(train_ratio(obj, kSteps, 18, 2) < 1.5);
}
TEST_CASE("diffusion training: flow matching (Euler 50 steps) reaches 1.5x the data floor") {
  FlowMatching obj;
  CHECK(train_ratio(obj, kSteps, 50, 3) < 1.5);
}
TEST_CASE("diffusion training: TrigFlow (DPM-Solver++ 2M, 18 steps) reaches 1.5x the data floor") {
  TrigFlow obj(kToySigmaD);
  obj.P_mean = kToyPMean;
  CHECK(train_ratio(obj, kSteps, 18, 4) < 1.5);
}
