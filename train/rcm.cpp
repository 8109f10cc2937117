// rCM pieces (ALGORITHMS.md 7-8): the DMD generator loss, the fake-score critic loss, student rollouts
// ("backward simulation") and the student/critic alternation. The sCM term is scm_loss with
// SCMWarmup::RCM.
#include <algorithm>
#include <cmath>

#include "train/consistency.h"

namespace df {

DMDLoss dmd_loss(const Tensor& x0_student, const DenoiserFn& f_teacher, const DenoiserFn& f_fake,
                 const Tensor& t, double sigma_d, Generator& g) {
  DMDLoss res;
  const int64_t nd = x0_student.dim();
  Tensor direction;
  {
    // The whole DMD direction is computed without gradients (8.2).
    NoGrad ng;
    Tensor x0 = x0_student.detach();
    Tensor tc = per_sample(t, nd);
    Tensor xt = cos(tc) * x0 + sin(tc) * (g.randn(x0.shape(), x0.dtype(), x0.device()) * sigma_d);
    Tensor ft = f_teacher(xt, t).detach();
    Tensor ff = f_fake(xt, t).detach();
    Shape axes;
    for (int64_t a = 1; a < nd; ++a) axes.push_back(a);
    Tensor denom = clamp(mean(abs(x0 - ft), axes, /*keepdim=*/true), 1e-5, 1e300);
    direction = (ff - ft) / denom;
  }
  Shape axes;
  for (int64_t a = 1; a < nd; ++a) axes.push_back(a);
  Tensor ok = isfinite(sum(direction, axes));
  res.nan_count = sum(rsub(1.0, ok));
  direction = where(per_sample(ok, nd), direction, zeros_like(direction));
  Tensor target = (x0_student - direction).detach();  // sg(.)
  Tensor per = sum_sq_per_sample(x0_student - target);
  per = where(ok, per, zeros_like(per.detach()));
  res.loss = mean(per);
  res.grad = direction;
  return res;
}

Tensor critic_flow_loss(const NetFn& F_fake, const Tensor& x0, const Tensor& t, double sigma_d, Generator& g) {
  Tensor x = x0.detach();
  Tensor tc = per_sample(t, x.dim());
  Tensor z = g.randn(x.shape(), x.dtype(), x.device()) * sigma_d;
  Tensor xt = cos(tc) * x + sin(tc) * z;
  Tensor v = cos(tc) * z - sin(tc) * x;
  return mean(sum_sq_per_sample(sigma_d * F_fake(xt / sigma_d, t) - v));
}

bool rcm_is_student_step(int64_t iter, int64_t warmup_iters, int64_t update_freq) {
  return iter < warmup_iters || (iter - warmup_iters) % update_freq == 0;
}

int64_t rcm_effective_iter(int64_t iter, int64_t warmup_iters, int64_t update_freq) {
  return iter < warmup_iters ? iter : warmup_iters + (iter - warmup_iters) / update_freq;
}

int64_t rcm_rollout_steps(int64_t effective_iter, const RCMConfig& cfg, Generator& g) {
  const int64_t n = std::max<int64_t>(1, cfg.max_rollout_steps);
  if (!cfg.random_rollout) return effective_iter % n + 1;
  return std::min<int64_t>(int64_t(g.uniform() * double(n)), n - 1) + 1;
}

Tensor rcm_rollout(const NetFn& F, int64_t n, int64_t dim, int64_t steps, double t_max, const RCMConfig& cfg,
                   Generator& g, DType dtype, std::vector<Tensor>* times_out, Device device) {
  DF_CHECK(steps >= 1, "rcm_rollout: expected steps >= 1, got ", steps);
  const double sd = cfg.scm.sigma_d;
  std::vector<Tensor> ts{full({n}, t_max, dtype, device)};
  for (int64_t k = 1; k < steps; ++k)
    ts.push_back(minimum(trigflow_sample_t(n, g, cfg.P_mean_dmd, cfg.P_std_dmd, sd, dtype, device), ts.back()));
  Tensor x = g.randn({n, dim}, dtype, device) * sd;
  Tensor x0;
  for (int64_t k = 0; k < steps; ++k) {
    if (k > 0) {
      Tensor tc = per_sample(ts[k], 2);
      x = cos(tc) * x0 + sin(tc) * (g.randn({n, dim}, dtype, device) * sd);
    }
    if (k + 1 < steps) {
      NoGrad ng;   // only the final step is differentiated
      x0 = trigflow_consistency(F, x, ts[k], sd).detach();
    } else {
      x0 = trigflow_consistency(F, x.detach(), ts[k], sd);
    }
  }
  if (times_out) *times_out = ts;
  return x0;
}

std::vector<double> rcm_sampler_times(int steps, double sigma_d, double sigma_max) {
  DF_CHECK(steps >= 1, "rcm_sampler_times: expected steps >= 1, got ", steps);
  std::vector<double> base{std::atan(sigma_max / sigma_d), 1.3, 1.0, 0.6};
  if (steps <= 4) return std::vector<double>(base.begin(), base.begin() + steps);
  std::vector<double> ts{base[0]};
  for (int k = 1; k < steps; ++k) ts.push_back(1.3 * double(steps - k) / double(steps - 1));
  return ts;
}

}  // namespace df
