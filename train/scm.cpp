// Continuous-time consistency models (sCT, sCD; ALGORITHMS.md 6): the tangent df/dt from one forward
// pass that carries tangents (primal on the tape, tangent detached), normalisation, adaptive weighting,
// and the TrigFlow consistency samplers.
#include <cmath>

#include "train/consistency.h"

namespace df {

Tensor per_sample(const Tensor& s, int64_t ndim) {
  Shape sh(ndim, 1);
  sh[0] = s.numel();
  return reshape(s, sh);
}

Tensor sum_sq_per_sample(const Tensor& x) {
  Shape axes;
  for (int64_t a = 1; a < x.dim(); ++a) axes.push_back(a);
  return sum(square(x), axes);
}

Tensor trigflow_consistency(const NetFn& F, const Tensor& x, const Tensor& t, double sigma_d) {
  return trig_x0_from_F(x, F(x / sigma_d, t), t, sigma_d);
}

double scm_warmup_r(int64_t iter, int64_t warmup_iters) {
  if (warmup_iters <= 0) return 1.0;
  return std::min(1.0, double(iter) / double(warmup_iters));
}

SCMTangentOut scm_tangent(const NetFn& F, const Tensor& xt, const Tensor& t, const Tensor& dxdt, double r,
                          const SCMConfig& cfg) {
  const double sd = cfg.sigma_d;
  Tensor v = dxdt.detach();
  Tensor tc = per_sample(t, xt.dim());
  Tensor ct = cos(tc), st = sin(tc), c1 = ct * st;
  Tensor u = xt / sd;
  SCMTangentOut out;
  if (cfg.tangent == SCMTangent::Discrete) {
    // dsCM (6.10): DDIM reference step to t' = t - h with the velocity estimate, then the exact
    // finite-difference identity for [f(x_t,t) - f(x_t',t')]/sin h.
    const double h = cfg.fd_h;
    out.F = F(u, t);
    Tensor Fm = out.F.detach();
    Tensor tp = t - h, tpc = tc - h;
    Tensor Fp;
    {
      NoGrad ng;
      Tensor xp = std::cos(h) * xt - std::sin(h) * v;
      Fp = F(xp / sd, tp).detach();
    }
    Tensor dF = (std::cos(h) * Fm - Fp) / std::sin(h);       // ~ dF/dt along the path
    out.J = sd * c1 * dF;
    Tensor delta = -cos(tpc) * (sd * Fm - v) - r * sin(tpc) * (xt + sd * dF);
    out.g = (ct * delta).detach();
    return out;
  }
  {
    DualLevel level(/*differentiable_tangents=*/false);
    Tensor ud = make_dual(u, c1 * v);
    Tensor td = cfg.tangent == SCMTangent::JVP ? make_dual(t, sd * cos(t) * sin(t)) : t;
    Tensor y = F(ud, td);
    auto pt = unpack_dual(y);
    out.F = pt.first;
    out.J = pt.second.defined() ? pt.second.detach() : zeros_like(out.F);
    out.live_tangents = live_tangent_count();
  }
  if (cfg.tangent == SCMTangent::SemiDiscrete) {
    // rCM fd_type 1: the t-part of dF/dt by a backward difference in t at fixed x.
    const double h = cfg.fd_h;
    NoGrad ng;
    Tensor Fm = F(u, t - h).detach();
    Tensor dtF = (std::cos(h) * out.F.detach() - Fm) / std::sin(h);
    out.J = out.J + sd * c1 * dtF;
  }
  Tensor Fm = out.F.detach();
  Tensor g;
  if (cfg.warmup_form == SCMWarmup::SCM)
    g = -(ct * ct) * (sd * Fm - v) - r * (c1 * xt + out.J);
  else  // rCM 8.2: only the x_t term is scaled by r; the first coefficient goes cos t -> cos^2 t.
    g = -ct * sqrt(1.0 - (r * r) * st * st) * (sd * Fm - v) - (r * c1 * xt + out.J);
  out.g = g.detach();
  return out;
}

namespace {
Tensor normalize_tangent(const Tensor& g, const SCMConfig& cfg) {
  if (cfg.clip_tangent) return clamp(g, -1.0, 1.0);
  if (!cfg.normalize) return g;
  Tensor gh = cast(g, cfg.norm_dtype);
  Tensor n = sqrt(sum_sq_per_sample(gh));
  gh = gh / (per_sample(n, g.dim()) + cfg.c);
  return cast(gh, g.dtype());
}
}  // namespace

SCMLoss scm_loss(const NetFn& F, const WeightFn& weight, const Tensor& xt, const Tensor& t,
                 const Tensor& dxdt, double r, const SCMConfig& cfg) {
  SCMLoss res;
  SCMTangentOut tg = scm_tangent(F, xt, t, dxdt, r, cfg);
  res.tape_nodes_after_forward = live_node_count();
  res.live_tangents_in_jvp = tg.live_tangents;
  const int64_t D = xt.numel() / xt.size(0);
  Tensor g_hat = normalize_tangent(tg.g, cfg);
  Tensor ok;
  {
    // A sample is usable only if its network output and tangent are finite (rCM masks the rest).
    NoGrad ng;
    Shape axes;
    for (int64_t a = 1; a < xt.dim(); ++a) axes.push_back(a);
    Tensor bad = sum(rsub(1.0, isfinite(tg.F.detach())) + rsub(1.0, isfinite(g_hat)), axes);
    ok = lt(bad, full_like(bad, 0.5));
  }
  // Masking is unconditional (no host read of the count inside the step).
  res.nan_count = sum(rsub(1.0, ok));
  Tensor okc = per_sample(ok, xt.dim());
  g_hat = where(okc, g_hat, zeros_like(g_hat));
  Tensor Fm = where(okc, tg.F, zeros_like(tg.F.detach()));
  Tensor diff = Fm - Fm.detach() - g_hat;
  Tensor per = sum_sq_per_sample(diff) * (cfg.loss_scale / double(D));
  if (weight) {
    res.w = weight(t);
    per = exp(res.w) * per - res.w;
  }
  per = where(ok, per, zeros_like(per.detach()));
  res.loss = mean(per);
  res.g_hat = g_hat.detach();
  return res;
}

SCMLoss sct_loss(const NetFn& F, const WeightFn& weight, const Tensor& x0, int64_t iter,
                 const SCMConfig& cfg, Generator& g) {
  const int64_t B = x0.size(0);
  Tensor z = g.randn(x0.shape(), x0.dtype(), x0.device()) * cfg.sigma_d;
  Tensor t = trigflow_sample_t(B, g, cfg.P_mean, cfg.P_std, cfg.sigma_d, x0.dtype(), x0.device());
  Tensor tc = per_sample(t, x0.dim());
  Tensor xt = cos(tc) * x0 + sin(tc) * z;
  Tensor v = cos(tc) * z - sin(tc) * x0;
  return scm_loss(F, weight, xt, t, v, scm_warmup_r(iter, cfg.warmup_iters), cfg);
}

SCMLoss scd_loss(const NetFn& F, const WeightFn& weight, const NetFn& teacher, const Tensor& x0,
                 int64_t iter, const SCMConfig& cfg, Generator& g) {
  const int64_t B = x0.size(0);
  Tensor z = g.randn(x0.shape(), x0.dtype(), x0.device()) * cfg.sigma_d;
  Tensor t = trigflow_sample_t(B, g, cfg.P_mean, cfg.P_std, cfg.sigma_d, x0.dtype(), x0.device());
  Tensor tc = per_sample(t, x0.dim());
  Tensor xt = cos(tc) * x0 + sin(tc) * z;
  Tensor v;
  {
    NoGrad ng;
    v = (cfg.sigma_d * teacher(xt / cfg.sigma_d, t)).detach();
  }
  return scm_loss(F, weight, xt, t, v, scm_warmup_r(iter, cfg.warmup_iters), cfg);
}

Tensor trigflow_consistency_sample(const NetFn& F, int64_t n, int64_t dim, const std::vector<double>& times,
                                   double sigma_d, Generator& g, DType dtype) {
  DF_CHECK(!times.empty(), "trigflow_consistency_sample: expected at least one time");
  NoGrad ng;
  Tensor x = g.randn({n, dim}, dtype) * sigma_d;
  Tensor x0;
  for (size_t k = 0; k < times.size(); ++k) {
    const double tk = times[k];
    if (k > 0) x = std::cos(tk) * x0 + std::sin(tk) * (g.randn({n, dim}, dtype) * sigma_d);
    x0 = trigflow_consistency(F, x, full({n}, tk, dtype), sigma_d).detach();
  }
  return x0;
}

std::vector<double> scm_sampler_times(int steps, double sigma_d, double sigma_max) {
  DF_CHECK(steps >= 1, "scm_sampler_times: expected steps >= 1, got ", steps);
  std::vector<double> ts{std::atan(sigma_max / sigma_d)};
  if (steps >= 2) ts.push_back(1.1);
  // More steps (not in the paper): evenly spaced below t_mid.
  for (int k = 2; k < steps; ++k) ts.push_back(1.1 * double(steps - k) / double(steps - 1));
  return ts;
}

Tensor cm_time_embedding(const Tensor& c, int64_t dim, double max_period) {
  DF_CHECK(dim % 2 == 0 && dim > 0, "cm_time_embedding: expected an even dim, got ", dim);
  const int64_t half = dim / 2;
  std::vector<double> freqs(dim), phase(dim);
  for (int64_t k = 0; k < half; ++k) {
    freqs[k] = freqs[k + half] = std::pow(max_period, -double(k) / double(half));
    phase[k] = 0;
    phase[k + half] = M_PI / 2;   // sin(a) = cos(a - pi/2): one op instead of a concat
  }
  Tensor w = from_vector(freqs, {1, dim}, c.dtype(), c.device());
  Tensor ph = from_vector(phase, {1, dim}, c.dtype(), c.device());
  return cos(unsqueeze(c, 1) * w - ph);
}

AdaptiveWeight::AdaptiveWeight(int64_t emb_dim_, DType dtype, Device device) : emb_dim(emb_dim_) {
  weight = zeros({emb_dim}, dtype, device);
  weight.requires_grad_();
  bias = zeros({}, dtype, device);
  bias.requires_grad_();
}

Tensor AdaptiveWeight::forward(const Tensor& t) const {
  // Scaled by 1/sqrt(E) so the unit-norm-ish embedding gives O(1) weights with O(1) parameters.
  return sum(cm_time_embedding(t, emb_dim) * weight, Shape{1}) * (1.0 / std::sqrt(double(emb_dim))) + bias;
}

WeightFn AdaptiveWeight::fn() const {
  return [this](const Tensor& t) { return forward(t); };
}

}  // namespace df
