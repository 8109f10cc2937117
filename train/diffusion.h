// Diffusion objectives (DDPM, EDM, Flow Matching, TrigFlow), their samplers, and conversions between
// the four parameterizations of one Gaussian path (ALGORITHMS.md sections 0-4).
// Shapes: x (B, ...) samples; per-sample times and noise levels are (B) tensors (or 0-dim scalars).
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "ops/ops.h"

namespace df {

// A raw network: x_in (B, ...) and c_noise (B) -> (B, ...). MLPDenoiser::forward fits.
using Net = std::function<Tensor(const Tensor& x_in, const Tensor& c_noise)>;
// The x0-prediction in EDM coordinates: D(x; sigma) = E[x0 | x0 + sigma n = x], sigma (B).
using Denoiser = std::function<Tensor(const Tensor& x, const Tensor& sigma)>;
// A model in a native time variable t (B): eps(x_t, t), v(x_t, t) or F(x_t, t).
using TimeModel = std::function<Tensor(const Tensor& x_t, const Tensor& t)>;

// (B) -> (B, 1, ..., 1) so it broadcasts against x; 0-dim tensors pass through.
Tensor per_sample(const Tensor& s, const Tensor& x);

// ---- conversions (ALGORITHMS 0.1, 4.4, 4.5); all exact identities, usable in f64 --------------------
// times <-> EDM sigma
double fm_sigma_from_t(double t);                     // t/(1-t)
double fm_t_from_sigma(double sigma);                 // sigma/(1+sigma)
double trig_sigma_from_t(double t, double sigma_d);   // sigma_d tan t
double trig_t_from_sigma(double sigma, double sigma_d);  // atan(sigma/sigma_d)
double vp_sigma_from_abar(double abar);               // sqrt((1-abar)/abar)
double vp_abar_from_sigma(double sigma);              // 1/(1+sigma^2)
Tensor fm_sigma_from_t(const Tensor& t);
Tensor fm_t_from_sigma(const Tensor& sigma);
Tensor trig_sigma_from_t(const Tensor& t, double sigma_d);
Tensor trig_t_from_sigma(const Tensor& sigma, double sigma_d);
// FM <-> TrigFlow times (4.5): t_FM = sin t/(sin t + cos t); inverse t = atan(t_FM/(1-t_FM)).
double fm_t_from_trig_t(double t);
double trig_t_from_fm_t(double t_fm);

// Predictions, for a path x_t = alpha x0 + s eps (alpha, s per sample or scalar).
Tensor eps_from_x0(const Tensor& x_t, const Tensor& x0, const Tensor& alpha, const Tensor& s);
Tensor x0_from_eps(const Tensor& x_t, const Tensor& eps, const Tensor& alpha, const Tensor& s);
Tensor score_from_x0(const Tensor& x_t, const Tensor& x0, const Tensor& alpha, const Tensor& s);
// FM (t = 0 data): v = (x_t - D)/t and D = x_t - t v.
Tensor fm_v_from_x0(const Tensor& x_t, const Tensor& x0, const Tensor& t);
Tensor fm_x0_from_v(const Tensor& x_t, const Tensor& v, const Tensor& t);
// TrigFlow: sigma_d F = (cos t x_t - D)/sin t and D = cos t x_t - sigma_d sin t F.
Tensor trig_F_from_x0(const Tensor& x_t, const Tensor& x0, const Tensor& t, double sigma_d);
Tensor trig_x0_from_F(const Tensor& x_t, const Tensor& F, const Tensor& t, double sigma_d);
// FM velocity (evaluated at x_FM = (x_t/sigma_d) N(t), t_FM) -> TrigFlow F at (x_t, t) (4.5, SANA-Sprint).
Tensor trig_F_from_fm_v(const Tensor& x_t, const Tensor& v_fm, const Tensor& t, double sigma_d);
// x_FM for the map above.
Tensor fm_x_from_trig_x(const Tensor& x_t, const Tensor& t, double sigma_d);

// ---- shared interface -----------------------------------------------------------------------------
struct DiffusionObjective {
  virtual ~DiffusionObjective() = default;
  virtual std::string name() const = 0;
  // Mean over the batch and the entries of the method's weighted regression loss.
  virtual Tensor loss(const Net& net, const Tensor& x0, Generator& g) const = 0;
  // The raw network seen as an EDM denoiser D(x; sigma), so samplers and metrics can be shared.
  virtual Denoiser denoiser(const Net& net) const = 0;
  // The method's own default sampler with `steps` steps; x has shape `shape`.
  virtual Tensor sample(const Net& net, const Shape& shape, int steps, Generator& g,
                        DType dtype = DType::F32) const = 0;
  virtual std::string sampler_name() const = 0;
  virtual int nfe(int steps) const = 0;
};

// ---- DDPM (ALGORITHMS 1) ----------------------------------------------------------------------------
struct DDPMSchedule {
  int T = 1000;
  std::vector<double> beta, alpha, abar;   // indexed by t = 0..T, with beta[0] = 0 and abar[0] = 1
  explicit DDPMSchedule(int T = 1000, double beta_start = 1e-4, double beta_end = 0.02);
  double sigma(int t) const { return vp_sigma_from_abar(abar[t]); }
  double beta_tilde(int t) const;          // beta_t (1-abar_{t-1})/(1-abar_t)
  // Fractional t with sigma(t) = sigma, linear in ln sigma between integer steps, clamped to [1, T].
  double t_from_sigma(double sigma) const;
};

// Network convention: c_noise = t - 1 in {0..T-1} (the PyTorch/diffusers DDPM indexing).
struct DDPM : DiffusionObjective {
  DDPMSchedule sched;
  bool beta_tilde_variance = true;         // ancestral sigma_t^2 = beta_tilde (else beta); 1.3 says both work
  double ddim_eta = 0;                     // the default sampler is DDIM with this eta
  explicit DDPM(int T = 1000) : sched(T) {}
  std::string name() const override { return "DDPM"; }
  Tensor loss(const Net& net, const Tensor& x0, Generator& g) const override;
  Denoiser denoiser(const Net& net) const override;
  Tensor sample(const Net& net, const Shape& shape, int steps, Generator& g, DType dtype) const override;
  std::string sampler_name() const override { return "DDIM"; }
  int nfe(int steps) const override { return steps; }
  TimeModel eps_model(const Net& net) const;   // eps(x_t, t) with t (B) in 1..T
  TimeModel eps_from_denoiser(const Denoiser& D) const;
};
// One ancestral step t -> t-1 (1.3), given eps at (x_t, t) and noise n (ignored at t = 1).
Tensor ddpm_ancestral_step(const DDPMSchedule& s, const Tensor& x_t, const Tensor& eps, int t,
                           const Tensor& n, bool beta_tilde_variance = true);
// One DDIM step t -> t_prev (1.4); t_prev = 0 gives x0_hat. n is ignored when eta = 0.
Tensor ddim_step(const DDPMSchedule& s, const Tensor& x_t, const Tensor& eps, int t, int t_prev,
                 double eta, const Tensor& n);
// Full samplers from x_T (B, ...).
Tensor ddpm_ancestral_sample(const DDPMSchedule& s, const TimeModel& eps, const Tensor& x_T, Generator& g,
                             bool beta_tilde_variance = true);
// tau: decreasing times starting at T, uniform over {1..T} when empty; returns x0_hat at the last tau.
std::vector<int> ddim_timesteps(const DDPMSchedule& s, int steps);
Tensor ddim_sample(const DDPMSchedule& s, const TimeModel& eps, const Tensor& x_T, int steps, double eta,
                   Generator& g);

// ---- EDM (ALGORITHMS 2) -----------------------------------------------------------------------------
struct EDMPrecond {
  double sigma_d = 0.5;
  double c_skip(double sigma) const;
  double c_out(double sigma) const;
  double c_in(double sigma) const;
  double c_noise(double sigma) const;      // ln(sigma)/4
  double lambda(double sigma) const;       // (sigma^2 + sigma_d^2)/(sigma sigma_d)^2
};

struct EDMSampler {
  int steps = 18;                          // N; NFE = 2N - 1
  double sigma_min = 0.002, sigma_max = 80, rho = 7;
  double S_churn = 0, S_min = 0, S_max = 1e30, S_noise = 1;
};
// t_0 > ... > t_{N-1} on the rho grid, then t_N = 0 (2.3).
std::vector<double> edm_sigma_grid(int steps, double sigma_min, double sigma_max, double rho);
// Heun sampler, EDM Algorithm 2 (2.3); x_init is already scaled to sigma_max (x = sigma_max n).
Tensor edm_heun_sample(const Denoiser& D, const Tensor& x_init, const EDMSampler& opt, Generator& g);
// Heun / Euler over an explicit decreasing sigma grid ending at 0 (no churn).
Tensor edm_heun_on_grid(const Denoiser& D, const Tensor& x_init, const std::vector<double>& sigmas,
                        bool second_order = true);

struct EDM : DiffusionObjective {
  EDMPrecond pre;
  double P_mean = -1.2, P_std = 1.2;
  EDMSampler sampler;
  explicit EDM(double sigma_d = 0.5) { pre.sigma_d = sigma_d; }
  std::string name() const override { return "EDM"; }
  Tensor loss(const Net& net, const Tensor& x0, Generator& g) const override;
  Denoiser denoiser(const Net& net) const override;
  Tensor sample(const Net& net, const Shape& shape, int steps, Generator& g, DType dtype) const override;
  std::string sampler_name() const override { return "Heun"; }
  int nfe(int steps) const override { return 2 * steps - 1; }
};

// ---- Flow matching (ALGORITHMS 3), t = 0 data, t = 1 noise ------------------------------------------
enum class FMTime { Uniform, LogitNormal };
struct FlowMatching : DiffusionObjective {
  FMTime time = FMTime::Uniform;
  double ln_m = 0, ln_s = 1;               // logit-normal location/scale (SD3 default 0, 1)
  double c_noise_scale = 1000;             // network sees c_noise = 1000 t (3.2, the flow-model convention)
  double shift = 1;                        // sampler grid shift a (3.2); 1 = uniform grid
  std::string name() const override { return "FlowMatching"; }
  Tensor sample_t(int64_t B, Generator& g, DType dtype, Device device = Device::CPU) const;
  Tensor loss(const Net& net, const Tensor& x0, Generator& g) const override;
  Denoiser denoiser(const Net& net) const override;
  Tensor sample(const Net& net, const Shape& shape, int steps, Generator& g, DType dtype) const override;
  std::string sampler_name() const override { return "Euler"; }
  int nfe(int steps) const override { return steps; }
  TimeModel velocity_model(const Net& net) const;   // v(x_t, t)
};
double fm_shift(double t, double a);                 // a t/(1 + (a-1) t)
std::vector<double> fm_time_grid(int steps, double shift = 1);   // 1 = t_0 > ... > t_N = 0
// Euler sampler (3.3) from x at times[0] along the grid.
Tensor fm_euler_sample(const TimeModel& v, const Tensor& x_init, const std::vector<double>& times);

// ---- TrigFlow (ALGORITHMS 4) ------------------------------------------------------------------------
// Time proposal (4.2): tau ~ N(P_mean, P_std^2), t = atan(e^tau / sigma_d). Shared with sCM.
Tensor trigflow_sample_t(int64_t B, Generator& g, double P_mean, double P_std, double sigma_d, DType dtype,
                         Device device = Device::CPU);
// Decreasing TrigFlow times: the EDM rho grid in sigma mapped by atan(sigma/sigma_d), ending at 0.
std::vector<double> trig_time_grid(int steps, double sigma_d, double sigma_min = 0.002,
                                   double sigma_max = 80, double rho = 7);
// First-order DDIM-like step s -> t (4.6; x_s on the right-hand side, not the misprinted x_t of Eq. 26).
Tensor trig_ddim_step(const Tensor& x_s, const Tensor& F, double s, double t, double sigma_d);
// Samplers over a decreasing grid; F(x_t, t) is the F head at (x_t/sigma_d, c_noise(t)).
Tensor trig_ddim_sample(const TimeModel& F, const Tensor& x_init, const std::vector<double>& times,
                        double sigma_d);
// DPM-Solver++(2M) (4.6); the first step and a final step to t = 0 are first order (k-diffusion does the
// same: ln tan 0 = -inf makes the multistep coefficient blow up).
Tensor trig_dpm2m_sample(const TimeModel& F, const Tensor& x_init, const std::vector<double>& times,
                         double sigma_d);

struct TrigFlow : DiffusionObjective {
  double sigma_d = 0.5;
  double P_mean = -1.2, P_std = 1.2;       // EDM's proposal carries over unchanged (4.2)
  double c_noise_scale = 1;                // c_noise(t) = t, as sCM recommends (6.5)
  double sigma_max = 80;
  bool second_order = true;                // default sampler: DPM-Solver++(2M), else first-order DDIM
  explicit TrigFlow(double sigma_d = 0.5) : sigma_d(sigma_d) {}
  std::string name() const override { return "TrigFlow"; }
  Tensor loss(const Net& net, const Tensor& x0, Generator& g) const override;
  Denoiser denoiser(const Net& net) const override;
  Tensor sample(const Net& net, const Shape& shape, int steps, Generator& g, DType dtype) const override;
  std::string sampler_name() const override { return second_order ? "DPM++2M" : "DDIM"; }
  int nfe(int steps) const override { return steps; }
  TimeModel F_model(const Net& net) const;          // F(x_t, t) = net(x_t/sigma_d, c_noise(t))
  Tensor c_noise(const Tensor& t) const { return c_noise_scale == 1 ? t : t * c_noise_scale; }
};
// f(x_t, t) = cos t x_t - sin t sigma_d F (4.3): f(x, 0) = x exactly for any F.
Tensor trig_consistency_fn(const Tensor& x_t, const Tensor& F, const Tensor& t, double sigma_d);

// Native models built from an EDM denoiser (for exact-denoiser tests and teacher wrapping).
TimeModel fm_velocity_from_denoiser(const Denoiser& D);                  // needs t < 1
TimeModel trig_F_from_denoiser(const Denoiser& D, double sigma_d);      // needs t < pi/2

}  // namespace df
