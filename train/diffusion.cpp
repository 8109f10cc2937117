// Diffusion objectives (DDPM, EDM, Flow Matching, TrigFlow), their samplers and parameterization
// conversions. Schedules and grids are computed on the host in f64; tensors keep the caller's dtype.
#include "train/diffusion.h"

#include <algorithm>
#include <cmath>

namespace df {

namespace {
int64_t batch_of(const Tensor& x) { return x.size(0); }
// A (B) tensor holding one value per sample, in x's dtype.
Tensor fill_b(const Tensor& x, double v) { return full({batch_of(x)}, v, x.dtype(), x.device()); }
// sigma given as 0-dim or (B) -> (B).
Tensor as_batch(const Tensor& s, const Tensor& x) {
  if (s.dim() == 0) return broadcast_to(s, {batch_of(x)});
  return s;
}
Tensor from_host(const std::vector<double>& v, const Tensor& like) {
  return from_vector(v, {(int64_t)v.size()}, like.dtype(), like.device());
}
}  // namespace

Tensor per_sample(const Tensor& s, const Tensor& x) {
  if (s.dim() == 0 || x.dim() <= 1) return s;
  DF_CHECK(s.dim() == 1 && s.size(0) == x.size(0), "per_sample", ": expected (B) for x ", x.desc(),
           ", got ", s.desc());
  Shape sh(x.dim(), 1);
  sh[0] = s.size(0);
  return reshape(s, sh);
}

// ---- conversions (ALGORITHMS 0.1, 4.4, 4.5) ---------------------------------------------------------
double fm_sigma_from_t(double t) { return t / (1 - t); }
double fm_t_from_sigma(double sigma) { return sigma / (1 + sigma); }
double trig_sigma_from_t(double t, double sd) { return sd * std::tan(t); }
double trig_t_from_sigma(double sigma, double sd) { return std::atan(sigma / sd); }
double vp_sigma_from_abar(double abar) { return std::sqrt((1 - abar) / abar); }
double vp_abar_from_sigma(double sigma) { return 1 / (1 + sigma * sigma); }
Tensor fm_sigma_from_t(const Tensor& t) { return t / (1.0 - t); }
Tensor fm_t_from_sigma(const Tensor& sigma) { return sigma / (sigma + 1.0); }
Tensor trig_sigma_from_t(const Tensor& t, double sd) { return tan(t) * sd; }
Tensor trig_t_from_sigma(const Tensor& sigma, double sd) { return atan(sigma / sd); }
double fm_t_from_trig_t(double t) { return std::sin(t) / (std::sin(t) + std::cos(t)); }
double trig_t_from_fm_t(double t_fm) { return std::atan2(t_fm, 1 - t_fm); }

Tensor eps_from_x0(const Tensor& x_t, const Tensor& x0, const Tensor& alpha, const Tensor& s) {
  return (x_t - per_sample(alpha, x_t) * x0) / per_sample(s, x_t);
}
Tensor x0_from_eps(const Tensor& x_t, const Tensor& eps, const Tensor& alpha, const Tensor& s) {
  return (x_t - per_sample(s, x_t) * eps) / per_sample(alpha, x_t);
}
Tensor score_from_x0(const Tensor& x_t, const Tensor& x0, const Tensor& alpha, const Tensor& s) {
  Tensor sb = per_sample(s, x_t);
  return (per_sample(alpha, x_t) * x0 - x_t) / (sb * sb);
}
Tensor fm_v_from_x0(const Tensor& x_t, const Tensor& x0, const Tensor& t) {
  return (x_t - x0) / per_sample(t, x_t);
}
Tensor fm_x0_from_v(const Tensor& x_t, const Tensor& v, const Tensor& t) {
  return x_t - per_sample(t, x_t) * v;
}
Tensor trig_F_from_x0(const Tensor& x_t, const Tensor& x0, const Tensor& t, double sd) {
  Tensor tb = per_sample(t, x_t);
  return (cos(tb) * x_t - x0) / (sin(tb) * sd);
}
Tensor trig_x0_from_F(const Tensor& x_t, const Tensor& F, const Tensor& t, double sd) {
  Tensor tb = per_sample(t, x_t);
  return cos(tb) * x_t - sin(tb) * F * sd;
}
Tensor fm_x_from_trig_x(const Tensor& x_t, const Tensor& t, double sd) {
  Tensor tb = per_sample(t, x_t);
  return x_t / (sd * (sin(tb) + cos(tb)));
}
// 4.5: the FM model here is one trained on data / sigma_d (x_FM = (1 - t_FM) x0/sigma_d + t_FM eps).
Tensor trig_F_from_fm_v(const Tensor& x_t, const Tensor& v_fm, const Tensor& t, double sd) {
  Tensor tb = per_sample(t, x_t);
  Tensor sc = sin(tb) + cos(tb);          // 1/N(t)
  Tensor tf = sin(tb) / sc;
  Tensor x_fm = x_t / (sc * sd);
  return ((1.0 - 2.0 * tf) * x_fm + (1.0 - 2.0 * tf + 2.0 * tf * tf) * v_fm) * sc;
}

// ---- DDPM (ALGORITHMS 1) ----------------------------------------------------------------------------
DDPMSchedule::DDPMSchedule(int T_, double b0, double b1) : T(T_) {
  beta.assign(T + 1, 0.0);
  alpha.assign(T + 1, 1.0);
  abar.assign(T + 1, 1.0);
  for (int t = 1; t <= T; ++t) {
    beta[t] = T == 1 ? b0 : b0 + (b1 - b0) * (t - 1) / double(T - 1);
    alpha[t] = 1 - beta[t];
    abar[t] = abar[t - 1] * alpha[t];
  }
}
double DDPMSchedule::beta_tilde(int t) const { return beta[t] * (1 - abar[t - 1]) / (1 - abar[t]); }
double DDPMSchedule::t_from_sigma(double sigma) const {
  if (sigma <= this->sigma(1)) return 1;
  if (sigma >= this->sigma(T)) return T;
  int lo = 1, hi = T;                      // sigma(lo) <= sigma < sigma(hi)
  while (hi - lo > 1) {
    int mid = (lo + hi) / 2;
    (this->sigma(mid) <= sigma ? lo : hi) = mid;
  }
  double a = std::log(this->sigma(lo)), b = std::log(this->sigma(hi));
  return lo + (std::log(sigma) - a) / (b - a);
}
namespace {
// ln sigma interpolated linearly between integer steps (the inverse of t_from_sigma).
double ddpm_sigma_at(const DDPMSchedule& s, double t) {
  int lo = std::clamp((int)std::floor(t), 1, s.T - 1);
  double f = t - lo;
  return std::exp((1 - f) * std::log(s.sigma(lo)) + f * std::log(s.sigma(lo + 1)));
}
}  // namespace

// 1.2 L_simple: t ~ U{1..T}, x_t = sqrt(abar) x0 + sqrt(1-abar) eps, mean ||eps - eps_theta||^2.
Tensor DDPM::loss(const Net& net, const Tensor& x0, Generator& g) const {
  int64_t B = batch_of(x0);
  std::vector<double> a(B), s(B), c(B);
  for (int64_t i = 0; i < B; ++i) {
    int t = 1 + int(g.next_u64() % uint64_t(sched.T));
    a[i] = std::sqrt(sched.abar[t]);
    s[i] = std::sqrt(1 - sched.abar[t]);
    c[i] = t - 1;
  }
  Tensor eps = g.randn(x0.shape(), x0.dtype(), x0.device());
  Tensor x_t = per_sample(from_host(a, x0), x0) * x0 + per_sample(from_host(s, x0), x0) * eps;
  return mean(square(net(x_t, from_host(c, x0)) - eps));
}
TimeModel DDPM::eps_model(const Net& net) const {
  return [net](const Tensor& x_t, const Tensor& t) { return net(x_t, t - 1.0); };
}
// D(x; sigma) = x - sigma eps(x/sqrt(1+sigma^2), t(sigma)), with t fractional between schedule steps.
Denoiser DDPM::denoiser(const Net& net) const {
  DDPMSchedule s = sched;
  return [net, s](const Tensor& x, const Tensor& sigma) {
    Tensor sg = as_batch(sigma, x);
    std::vector<double> sv = sg.to_vector(), c(sv.size()), sa(sv.size());
    for (size_t i = 0; i < sv.size(); ++i) {
      c[i] = s.t_from_sigma(sv[i]) - 1;
      sa[i] = std::sqrt(vp_abar_from_sigma(sv[i]));
    }
    Tensor x_t = x * per_sample(from_host(sa, x), x);
    return x - per_sample(sg, x) * net(x_t, from_host(c, x));
  };
}
TimeModel DDPM::eps_from_denoiser(const Denoiser& D) const {
  DDPMSchedule s = sched;
  return [D, s](const Tensor& x_t, const Tensor& t) {
    std::vector<double> tv = as_batch(t, x_t).to_vector(), sig(tv.size()), a(tv.size()), sd(tv.size());
    for (size_t i = 0; i < tv.size(); ++i) {
      double ti = tv[i];
      double abar = ti == std::floor(ti) ? s.abar[(int)ti] : vp_abar_from_sigma(ddpm_sigma_at(s, ti));
      sig[i] = vp_sigma_from_abar(abar);
      a[i] = std::sqrt(abar);
      sd[i] = std::sqrt(1 - abar);
    }
    Tensor ab = from_host(a, x_t), sb = from_host(sd, x_t);
    Tensor x0 = D(x_t / per_sample(ab, x_t), from_host(sig, x_t));
    return eps_from_x0(x_t, x0, ab, sb);
  };
}

// 1.3 ancestral step.
Tensor ddpm_ancestral_step(const DDPMSchedule& s, const Tensor& x_t, const Tensor& eps, int t, const Tensor& n,
                           bool beta_tilde_variance) {
  Tensor mean_ = (x_t - eps * (s.beta[t] / std::sqrt(1 - s.abar[t]))) / std::sqrt(s.alpha[t]);
  if (t == 1 || !n.defined()) return mean_;   // undefined n: the posterior mean
  double var = beta_tilde_variance ? s.beta_tilde(t) : s.beta[t];
  return mean_ + n * std::sqrt(var);
}
// 1.4 DDIM step with eta.
Tensor ddim_step(const DDPMSchedule& s, const Tensor& x_t, const Tensor& eps, int t, int tp, double eta,
                 const Tensor& n) {
  double at = s.abar[t], ap = s.abar[tp];
  Tensor x0 = (x_t - eps * std::sqrt(1 - at)) / std::sqrt(at);
  double sig = eta * std::sqrt((1 - ap) / (1 - at)) * std::sqrt(1 - at / ap);
  Tensor out = x0 * std::sqrt(ap) + eps * std::sqrt(std::max(0.0, 1 - ap - sig * sig));
  return sig > 0 && n.defined() ? out + n * sig : out;
}
// 1.3 ancestral sampler over all T steps.
Tensor ddpm_ancestral_sample(const DDPMSchedule& s, const TimeModel& eps, const Tensor& x_T, Generator& g,
                             bool beta_tilde_variance) {
  Tensor x = x_T;
  for (int t = s.T; t >= 1; --t) {
    Tensor e = eps(x, fill_b(x, t));
    Tensor n = t > 1 ? g.randn(x.shape(), x.dtype(), x.device()) : Tensor();
    x = ddpm_ancestral_step(s, x, e, t, n, beta_tilde_variance);
  }
  return x;
}
std::vector<int> ddim_timesteps(const DDPMSchedule& s, int steps) {
  steps = std::clamp(steps, 1, s.T);
  std::vector<int> tau;
  for (int i = 0; i < steps; ++i) {
    int t = steps == 1 ? s.T : (int)std::lround(s.T - i * double(s.T - 1) / (steps - 1));
    if (tau.empty() || t < tau.back()) tau.push_back(t);
  }
  return tau;
}
// 1.4 DDIM sampler on a uniform subsequence; the last step returns x0_hat.
Tensor ddim_sample(const DDPMSchedule& s, const TimeModel& eps, const Tensor& x_T, int steps, double eta,
                   Generator& g) {
  std::vector<int> tau = ddim_timesteps(s, steps);
  Tensor x = x_T;
  for (size_t i = 0; i < tau.size(); ++i) {
    int t = tau[i], tp = i + 1 < tau.size() ? tau[i + 1] : 0;
    Tensor e = eps(x, fill_b(x, t));
    Tensor n = eta > 0 && tp > 0 ? g.randn(x.shape(), x.dtype(), x.device()) : Tensor();
    x = ddim_step(s, x, e, t, tp, eta, n);
  }
  return x;
}
Tensor DDPM::sample(const Net& net, const Shape& shape, int steps, Generator& g, DType dtype) const {
  return ddim_sample(sched, eps_model(net), g.randn(shape, dtype), steps, ddim_eta, g);
}

// ---- EDM (ALGORITHMS 2) -----------------------------------------------------------------------------
double EDMPrecond::c_skip(double s) const { return sigma_d * sigma_d / (s * s + sigma_d * sigma_d); }
double EDMPrecond::c_out(double s) const { return s * sigma_d / std::sqrt(s * s + sigma_d * sigma_d); }
double EDMPrecond::c_in(double s) const { return 1 / std::sqrt(s * s + sigma_d * sigma_d); }
double EDMPrecond::c_noise(double s) const { return std::log(s) / 4; }
double EDMPrecond::lambda(double s) const {
  return (s * s + sigma_d * sigma_d) / (s * sigma_d * s * sigma_d);
}

namespace {
struct EDMCoefs { Tensor c_skip, c_out, c_in, c_noise; };
// 2.1 coefficients as tensors: c_skip/c_out/c_in broadcast against x, c_noise (B).
EDMCoefs edm_coefs(const Tensor& sigma, const Tensor& x, double sd) {
  Tensor s = as_batch(sigma, x), sb = per_sample(s, x);
  Tensor r = rsqrt(sb * sb + sd * sd);
  return {(r * r) * (sd * sd), sb * r * sd, r, log(s) * 0.25};
}
}  // namespace

// 2.2 EDMLoss in the equivalent F-space form ||F - (x0 - c_skip x)/c_out||^2 (lambda c_out^2 = 1), which
// avoids the cancellation in D - x0 at small sigma; mean over batch and entries.
Tensor EDM::loss(const Net& net, const Tensor& x0, Generator& g) const {
  int64_t B = batch_of(x0);
  Tensor sigma = exp(g.randn({B}, x0.dtype(), x0.device()) * P_std + P_mean);
  Tensor x = x0 + per_sample(sigma, x0) * g.randn(x0.shape(), x0.dtype(), x0.device());
  EDMCoefs c = edm_coefs(sigma, x0, pre.sigma_d);
  Tensor target = (x0 - c.c_skip * x) / c.c_out;
  return mean(square(net(c.c_in * x, c.c_noise) - target));
}
// 2.1 EDMPrecond.
Denoiser EDM::denoiser(const Net& net) const {
  double sd = pre.sigma_d;
  return [net, sd](const Tensor& x, const Tensor& sigma) {
    EDMCoefs c = edm_coefs(sigma, x, sd);
    return c.c_skip * x + c.c_out * net(c.c_in * x, c.c_noise);
  };
}

std::vector<double> edm_sigma_grid(int N, double smin, double smax, double rho) {
  std::vector<double> t;
  double a = std::pow(smax, 1 / rho), b = std::pow(smin, 1 / rho);
  for (int i = 0; i < N; ++i) t.push_back(std::pow(N == 1 ? a : a + i / double(N - 1) * (b - a), rho));
  t.push_back(0);
  return t;
}

namespace {
// 2.3 Heun loop shared by the churn and the plain-grid entry points.
Tensor heun_loop(const Denoiser& D, const Tensor& x_init, const std::vector<double>& t, bool second_order,
                 const EDMSampler* churn, Generator* g) {
  Tensor x = x_init;
  int N = (int)t.size() - 1;
  for (int i = 0; i < N; ++i) {
    double t_hat = t[i];
    Tensor x_hat = x;
    if (churn && churn->S_churn > 0 && t[i] >= churn->S_min && t[i] <= churn->S_max) {
      double gamma = std::min(churn->S_churn / N, std::sqrt(2.0) - 1);
      t_hat = t[i] * (1 + gamma);
      x_hat = x + g->randn(x.shape(), x.dtype(), x.device()) *
                      (std::sqrt(t_hat * t_hat - t[i] * t[i]) * churn->S_noise);
    }
    Tensor d = (x_hat - D(x_hat, fill_b(x, t_hat))) / t_hat;
    x = x_hat + d * (t[i + 1] - t_hat);
    if (second_order && t[i + 1] > 0) {
      Tensor d2 = (x - D(x, fill_b(x, t[i + 1]))) / t[i + 1];
      x = x_hat + (d + d2) * (0.5 * (t[i + 1] - t_hat));
    }
  }
  return x;
}
}  // namespace

// 2.3 EDM Algorithm 2 (Heun, rho grid, optional S_churn).
Tensor edm_heun_sample(const Denoiser& D, const Tensor& x_init, const EDMSampler& opt, Generator& g) {
  return heun_loop(D, x_init, edm_sigma_grid(opt.steps, opt.sigma_min, opt.sigma_max, opt.rho), true, &opt, &g);
}
Tensor edm_heun_on_grid(const Denoiser& D, const Tensor& x_init, const std::vector<double>& sigmas,
                        bool second_order) {
  return heun_loop(D, x_init, sigmas, second_order, nullptr, nullptr);
}
Tensor EDM::sample(const Net& net, const Shape& shape, int steps, Generator& g, DType dtype) const {
  EDMSampler opt = sampler;
  opt.steps = steps;
  Tensor x = g.randn(shape, dtype) * opt.sigma_max;
  return edm_heun_sample(denoiser(net), x, opt, g);
}

// ---- Flow matching (ALGORITHMS 3) -------------------------------------------------------------------
double fm_shift(double t, double a) { return a * t / (1 + (a - 1) * t); }
std::vector<double> fm_time_grid(int steps, double shift) {
  std::vector<double> t;
  for (int i = 0; i <= steps; ++i) t.push_back(fm_shift(1 - i / double(steps), shift));
  return t;
}
// 3.2: uniform or logit-normal t (m = 0, s = 1 by default, the SD3 choice; UNVERIFIED per paper).
Tensor FlowMatching::sample_t(int64_t B, Generator& g, DType dtype, Device device) const {
  if (time == FMTime::Uniform) return g.rand({B}, dtype, device);
  return sigmoid(g.randn({B}, dtype, device) * ln_s + ln_m);
}
// 3.2: x_t = (1-t) x0 + t eps, target v = eps - x0.
Tensor FlowMatching::loss(const Net& net, const Tensor& x0, Generator& g) const {
  Tensor t = sample_t(batch_of(x0), g, x0.dtype(), x0.device());
  Tensor eps = g.randn(x0.shape(), x0.dtype(), x0.device());
  Tensor tb = per_sample(t, x0);
  Tensor x_t = (1.0 - tb) * x0 + tb * eps;
  return mean(square(net(x_t, t * c_noise_scale) - (eps - x0)));
}
TimeModel FlowMatching::velocity_model(const Net& net) const {
  double sc = c_noise_scale;
  return [net, sc](const Tensor& x_t, const Tensor& t) { return net(x_t, as_batch(t, x_t) * sc); };
}
// 0.1: t = sigma/(1+sigma), x_t = x/(1+sigma), D = x_t - t v.
Denoiser FlowMatching::denoiser(const Net& net) const {
  TimeModel v = velocity_model(net);
  return [v](const Tensor& x, const Tensor& sigma) {
    Tensor s = as_batch(sigma, x), t = fm_t_from_sigma(s);
    Tensor x_t = x / (per_sample(s, x) + 1.0);
    return fm_x0_from_v(x_t, v(x_t, t), t);
  };
}
TimeModel fm_velocity_from_denoiser(const Denoiser& D) {
  return [D](const Tensor& x_t, const Tensor& t) {
    Tensor tt = as_batch(t, x_t);
    Tensor x0 = D(x_t / (1.0 - per_sample(tt, x_t)), fm_sigma_from_t(tt));
    return fm_v_from_x0(x_t, x0, tt);
  };
}
// 3.3 Euler sampler.
Tensor fm_euler_sample(const TimeModel& v, const Tensor& x_init, const std::vector<double>& t) {
  Tensor x = x_init;
  for (size_t i = 0; i + 1 < t.size(); ++i) x = x + v(x, fill_b(x, t[i])) * (t[i + 1] - t[i]);
  return x;
}
Tensor FlowMatching::sample(const Net& net, const Shape& shape, int steps, Generator& g, DType dtype) const {
  return fm_euler_sample(velocity_model(net), g.randn(shape, dtype), fm_time_grid(steps, shift));
}

// ---- TrigFlow (ALGORITHMS 4) ------------------------------------------------------------------------
// 4.2 proposal: e^tau is the EDM sigma.
Tensor trigflow_sample_t(int64_t B, Generator& g, double P_mean, double P_std, double sd, DType dtype,
                         Device device) {
  // In f64, so t stays strictly inside (0, pi/2) before the cast.
  return cast(atan(exp(g.randn({B}, DType::F64, device) * P_std + P_mean) / sd), dtype);
}
std::vector<double> trig_time_grid(int steps, double sd, double smin, double smax, double rho) {
  std::vector<double> t = edm_sigma_grid(steps, smin, smax, rho);
  for (double& v : t) v = trig_t_from_sigma(v, sd);
  return t;
}
// 4.2 loss with w(t) = 1/sigma_d^2: ||F(x_t/sigma_d, c_noise(t)) - v_t/sigma_d||^2, the EDM-equivalent weighting.
Tensor TrigFlow::loss(const Net& net, const Tensor& x0, Generator& g) const {
  Tensor t = trigflow_sample_t(batch_of(x0), g, P_mean, P_std, sigma_d, x0.dtype(), x0.device());
  Tensor z = g.randn(x0.shape(), x0.dtype(), x0.device()) * sigma_d;
  Tensor tb = per_sample(t, x0), c = cos(tb), s = sin(tb);
  Tensor x_t = c * x0 + s * z;
  Tensor v_t = c * z - s * x0;
  return mean(square(net(x_t / sigma_d, c_noise(t)) - v_t / sigma_d));
}
TimeModel TrigFlow::F_model(const Net& net) const {
  TrigFlow self = *this;
  return [net, self](const Tensor& x_t, const Tensor& t) {
    return net(x_t / self.sigma_d, self.c_noise(as_batch(t, x_t)));
  };
}
// 4.4: t = atan(sigma/sigma_d), x_t = cos t x_EDM, D = cos t x_t - sigma_d sin t F.
Denoiser TrigFlow::denoiser(const Net& net) const {
  TimeModel F = F_model(net);
  double sd = sigma_d;
  return [F, sd](const Tensor& x, const Tensor& sigma) {
    Tensor t = trig_t_from_sigma(as_batch(sigma, x), sd);
    Tensor x_t = cos(per_sample(t, x)) * x;
    return trig_x0_from_F(x_t, F(x_t, t), t, sd);
  };
}
TimeModel trig_F_from_denoiser(const Denoiser& D, double sd) {
  return [D, sd](const Tensor& x_t, const Tensor& t) {
    Tensor tt = as_batch(t, x_t);
    Tensor x0 = D(x_t / cos(per_sample(tt, x_t)), trig_sigma_from_t(tt, sd));
    return trig_F_from_x0(x_t, x0, tt, sd);
  };
}
Tensor trig_consistency_fn(const Tensor& x_t, const Tensor& F, const Tensor& t, double sd) {
  return trig_x0_from_F(x_t, F, t, sd);
}
// 4.6 first-order step (x_s on the right-hand side; the printed Eq. 26 has x_t, a typo).
Tensor trig_ddim_step(const Tensor& x_s, const Tensor& F, double s, double t, double sd) {
  return x_s * std::cos(s - t) - F * (std::sin(s - t) * sd);
}
// 4.6 first-order TrigFlow sampler.
Tensor trig_ddim_sample(const TimeModel& F, const Tensor& x_init, const std::vector<double>& t, double sd) {
  Tensor x = x_init;
  for (size_t i = 0; i + 1 < t.size(); ++i) x = trig_ddim_step(x, F(x, fill_b(x, t[i])), t[i], t[i + 1], sd);
  return x;
}
// 4.6 DPM-Solver++(2M) in TrigFlow form.
Tensor trig_dpm2m_sample(const TimeModel& F, const Tensor& x_init, const std::vector<double>& t, double sd) {
  Tensor x = x_init, D_prev;
  for (size_t i = 0; i + 1 < t.size(); ++i) {
    double s = t[i], tn = t[i + 1];
    Tensor f = F(x, fill_b(x, s));
    Tensor D_s = x * std::cos(s) - f * (sd * std::sin(s));
    Tensor x_next = trig_ddim_step(x, f, s, tn, sd);
    if (D_prev.defined() && tn > 0) {
      double sp = t[i - 1];
      double r = (std::log(std::tan(sp)) - std::log(std::tan(s))) /
                 (std::log(std::tan(s)) - std::log(std::tan(tn)));
      x_next = x_next + (D_s - D_prev) * (std::sin(s - tn) / (2 * r * std::sin(s)));
    }
    D_prev = D_s;
    x = x_next;
  }
  return x;
}
Tensor TrigFlow::sample(const Net& net, const Shape& shape, int steps, Generator& g, DType dtype) const {
  Tensor x = g.randn(shape, dtype) * sigma_d;
  std::vector<double> t = trig_time_grid(steps, sigma_d, 0.002, sigma_max);
  return second_order ? trig_dpm2m_sample(F_model(net), x, t, sigma_d) : trig_ddim_sample(F_model(net), x, t, sigma_d);
}

}  // namespace df
