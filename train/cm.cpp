// Discrete-time consistency models (ALGORITHMS.md 5): CM's boundary parameterization, CT/CD with the
// N(k)/mu(k) curricula, iCT (no-EMA target, pseudo-Huber, log-normal index, 1/dsigma weight), ECT's
// continuous Delta t schedule, and the multistep sampler.
#include <algorithm>
#include <cmath>

#include "train/consistency.h"

namespace df {

Tensor cm_denoise(const NetFn& F, const Tensor& x, const Tensor& sigma, const CMConfig& cfg) {
  const double sd = cfg.sigma_d, eps = cfg.shifted_boundary ? cfg.sigma_min : 0.0;
  Tensor s = per_sample(sigma, x.dim());
  Tensor c_skip = (sd * sd) / (square(s - eps) + sd * sd);
  Tensor c_out = sd * (s - eps) * rsqrt(square(s) + sd * sd);
  Tensor c_in = rsqrt(square(s) + sd * sd);
  return c_skip * x + c_out * F(c_in * x, 0.25 * log(sigma));
}

std::vector<double> karras_grid(int64_t N, double sigma_min, double sigma_max, double rho) {
  DF_CHECK(N >= 2, "karras_grid: expected N >= 2, got ", N);
  std::vector<double> s(N);
  const double a = std::pow(sigma_min, 1 / rho), b = std::pow(sigma_max, 1 / rho);
  for (int64_t i = 0; i < N; ++i) s[i] = std::pow(a + double(i) / double(N - 1) * (b - a), rho);
  s[0] = sigma_min;
  s[N - 1] = sigma_max;
  return s;
}

int64_t cm_num_steps(int64_t k, int64_t K, int64_t s0, int64_t s1) {
  const double q = double(k) / double(K);
  const double v = std::sqrt(q * (double(s1 + 1) * double(s1 + 1) - double(s0) * double(s0)) +
                             double(s0) * double(s0));
  return int64_t(std::ceil(v - 1 - 1e-12)) + 1;
}

double cm_target_mu(int64_t k, int64_t K, int64_t s0, int64_t s1, double mu0) {
  return std::exp(double(s0) * std::log(mu0) / double(cm_num_steps(k, K, s0, s1)));
}

int64_t ict_num_steps(int64_t k, int64_t K, int64_t s0, int64_t s1) {
  const int64_t Kp = std::max<int64_t>(1, int64_t(std::floor(double(K) /
                                          (std::log2(std::floor(double(s1) / double(s0))) + 1))));
  const int64_t doublings = std::min<int64_t>(k / Kp, 62);
  return std::min<int64_t>(s0 << doublings, s1) + 1;
}

std::vector<double> ict_index_probs(const std::vector<double>& sigmas, double P_mean, double P_std) {
  std::vector<double> p(sigmas.size() - 1);
  double tot = 0;
  for (size_t i = 0; i + 1 < sigmas.size(); ++i) {
    p[i] = std::erf((std::log(sigmas[i + 1]) - P_mean) / (std::sqrt(2.0) * P_std)) -
           std::erf((std::log(sigmas[i]) - P_mean) / (std::sqrt(2.0) * P_std));
    tot += p[i];
  }
  for (auto& v : p) v /= tot;
  return p;
}

double pseudo_huber_c(int64_t D) { return 0.00054 * std::sqrt(double(D)); }

double ect_r(double t, int64_t stage, double q, double k, double b) {
  const double sig = 1 / (1 + std::exp(b * t));   // sigmoid(-b t)
  return std::max(0.0, t * (1 - std::pow(q, -double(stage + 1)) * (1 + k * sig)));
}

namespace {
Tensor distance(const Tensor& a, const Tensor& b, const CTConfig& cfg) {
  Tensor d2 = sum_sq_per_sample(a - b);
  if (cfg.metric == CMMetric::L2) return d2;
  const int64_t D = a.numel() / a.size(0);
  const double c = cfg.huber_c < 0 ? pseudo_huber_c(D) : cfg.huber_c;
  return sqrt(d2 + c * c) - c;
}
}  // namespace

CMLoss cm_discrete_loss(const NetFn& F, const NetFn& target, const DenoiserFn& teacher_edm, const Tensor& x0,
                        int64_t N, const CTConfig& cfg, Generator& g) {
  const int64_t B = x0.size(0);
  const DType dt = x0.dtype();
  std::vector<double> grid = karras_grid(N, cfg.cm.sigma_min, cfg.cm.sigma_max, cfg.cm.rho);
  std::vector<double> probs;
  if (cfg.time_sampling == CMTimeSampling::LogNormal) probs = ict_index_probs(grid);
  std::vector<double> lo(B), hi(B), w(B);
  for (int64_t b = 0; b < B; ++b) {
    int64_t n = 0;
    if (probs.empty()) {
      n = std::min<int64_t>(int64_t(g.uniform() * double(N - 1)), N - 2);
    } else {
      double u = g.uniform(), acc = 0;
      n = N - 2;
      for (int64_t i = 0; i + 1 < N; ++i) {
        acc += probs[i];
        if (u < acc) { n = i; break; }
      }
    }
    lo[b] = grid[n];
    hi[b] = grid[n + 1];
    w[b] = cfg.ict_weighting ? 1.0 / (hi[b] - lo[b]) : 1.0;
  }
  Tensor s_lo = from_vector(lo, {B}, dt, x0.device()), s_hi = from_vector(hi, {B}, dt, x0.device());
  Tensor z = g.randn(x0.shape(), dt, x0.device());
  Tensor x = x0 + per_sample(s_hi, x0.dim()) * z;
  Tensor x_ref;
  {
    NoGrad ng;
    if (teacher_edm) {
      // CD: one Heun step of the teacher PF-ODE from sigma_{n+1} down to sigma_n.
      Tensor a = per_sample(s_hi, x0.dim()), b = per_sample(s_lo, x0.dim());
      Tensor d = (x - teacher_edm(x, s_hi)) / a;
      Tensor xe = x + (b - a) * d;
      Tensor d2 = (xe - teacher_edm(xe, s_lo)) / b;
      x_ref = x + (b - a) * (d + d2) * 0.5;
    } else {
      x_ref = x0 + per_sample(s_lo, x0.dim()) * z;   // CT: the same z
    }
    x_ref = x_ref.detach();
  }
  Tensor pred = cm_denoise(F, x, s_hi, cfg.cm);
  Tensor tgt;
  {
    NoGrad ng;
    tgt = cm_denoise(target, x_ref, s_lo, cfg.cm).detach();
  }
  CMLoss res;
  res.loss = mean(distance(pred, tgt, cfg) * from_vector(w, {B}, dt, x0.device()));
  return res;
}

CMLoss ect_loss(const NetFn& F, const Tensor& x0, int64_t stage, const CTConfig& cfg, Generator& g) {
  const int64_t B = x0.size(0);
  const DType dt = x0.dtype();
  std::vector<double> tv(B), rv(B), zero(B), inv(B);
  for (int64_t b = 0; b < B; ++b) {
    double t = std::exp(-1.1 + 2.0 * g.normal());
    t = std::min(std::max(t, cfg.cm.sigma_min * 1.5), cfg.cm.sigma_max);
    double r = ect_r(t, stage);
    zero[b] = r <= 0 ? 1.0 : 0.0;
    if (r > 0) r = std::max(r, cfg.cm.sigma_min);   // keep the target's c_noise finite
    tv[b] = t;
    rv[b] = r > 0 ? r : cfg.cm.sigma_min;
    inv[b] = 1.0 / (t - (r > 0 ? r : 0.0));
  }
  Tensor t = from_vector(tv, {B}, dt, x0.device()), r = from_vector(rv, {B}, dt, x0.device());
  Tensor eps = g.randn(x0.shape(), dt, x0.device());
  Tensor xt = x0 + per_sample(t, x0.dim()) * eps;
  Tensor pred = cm_denoise(F, xt, t, cfg.cm);
  Tensor tgt;
  {
    NoGrad ng;
    Tensor xr = x0 + per_sample(r, x0.dim()) * eps;
    tgt = where(per_sample(from_vector(zero, {B}, dt, x0.device()), x0.dim()), x0, cm_denoise(F, xr, r, cfg.cm)).detach();
  }
  CMLoss res;
  res.loss = mean(distance(pred, tgt, cfg) * from_vector(inv, {B}, dt, x0.device()));
  return res;
}

void ema_update_inplace(const Tensors& target, const Tensors& online, double mu) {
  DF_CHECK(target.size() == online.size(), "ema_update_inplace: ", target.size(), " targets but ",
           online.size(), " parameters");
  for (size_t i = 0; i < target.size(); ++i) {
    DF_CHECK(target[i].shape() == online[i].shape() && target[i].dtype() == online[i].dtype() &&
             target[i].is_contiguous() && online[i].is_contiguous() && target[i].device() == Device::CPU,
             "ema_update_inplace: parameter ", i, " mismatch: ", target[i].desc(), " vs ", online[i].desc());
    const int64_t n = target[i].numel();
    target[i].bump_version();
    if (target[i].dtype() == DType::F64) {
      double* a = target[i].data_as<double>();
      const double* b = online[i].data_as<double>();
      for (int64_t k = 0; k < n; ++k) a[k] = mu * a[k] + (1 - mu) * b[k];
    } else {
      float* a = target[i].data_as<float>();
      const float* b = online[i].data_as<float>();
      for (int64_t k = 0; k < n; ++k) a[k] = float(mu * a[k] + (1 - mu) * b[k]);
    }
  }
}

Tensor cm_multistep_sample(const NetFn& F, int64_t n, int64_t dim, const std::vector<double>& sigmas,
                           const CMConfig& cfg, Generator& g, DType dtype) {
  DF_CHECK(!sigmas.empty(), "cm_multistep_sample: expected at least one sigma");
  NoGrad ng;
  Tensor x = g.randn({n, dim}, dtype) * sigmas[0];
  x = cm_denoise(F, x, full({n}, sigmas[0], dtype), cfg).detach();
  for (size_t k = 1; k < sigmas.size(); ++k) {
    const double tau = sigmas[k];
    const double eps = cfg.shifted_boundary ? cfg.sigma_min : 0.0;
    Tensor xt = x + std::sqrt(std::max(0.0, tau * tau - eps * eps)) * g.randn({n, dim}, dtype);
    x = cm_denoise(F, xt, full({n}, tau, dtype), cfg).detach();
  }
  return x;
}

}  // namespace df
