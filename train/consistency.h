// Consistency models on the engine (ALGORITHMS.md 5-8): discrete CT/CD (CM, iCT, ECT), continuous-time
// sCT/sCD (sCM, tangent by forward-mode JVP), and rCM (sCM + DMD with a fake-score critic).
// Networks are passed as functions so any model (MLPDenoiser, a closed form, a teacher) plugs in.
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "ops/ops.h"
#include "train/diffusion.h"

namespace df {

// A network called as net(input (B, D), c_noise (B)) -> (B, D). For TrigFlow (sCM, rCM) the input is
// u = x_t/sigma_d and c_noise = t; for the EDM-style CM of Section 5 it is (c_in x, c_noise(sigma)).
using NetFn = std::function<Tensor(const Tensor& input, const Tensor& c_noise)>;
// Adaptive log-weight w_phi(t): (B) -> (B).
using WeightFn = std::function<Tensor(const Tensor& t)>;
// A denoiser in some time coordinate: (x (B, D), time (B)) -> x0 estimate (B, D).
using DenoiserFn = std::function<Tensor(const Tensor& x, const Tensor& time)>;

// (B) -> (B, 1, ..., 1) with `ndim` axes in total, for per-sample broadcasting.
Tensor per_sample(const Tensor& s, int64_t ndim);
// Per-sample squared L2 norm over all non-batch axes: (B, ...) -> (B).
Tensor sum_sq_per_sample(const Tensor& x);

// ---- TrigFlow pieces (ALGORITHMS.md 4, 6.2) ------------------------------------------------------
// f(x, t) = cos t x - sin t sigma_d F(x/sigma_d, t): one DDIM step to t = 0; f(x, 0) == x exactly.
Tensor trigflow_consistency(const NetFn& F, const Tensor& x, const Tensor& t, double sigma_d);
// The time sampler is train/diffusion.h's trigflow_sample_t.

// ---- sCM (ALGORITHMS.md 6) -----------------------------------------------------------------------
enum class SCMTangent {
  JVP,            // one forward pass carrying tangents (the paper's method)
  SemiDiscrete,   // JVP in x only, finite difference in t (rCM fd_type 1, ALGORITHMS 8.5)
  Discrete,       // DDIM reference step t' = t - h and a finite difference (dsCM, ALGORITHMS 6.10)
};
enum class SCMWarmup { SCM, RCM };   // r scales sin t (sCM 6.4) or uses rCM's sqrt(1 - r^2 sin^2 t) form (8.2)

struct SCMConfig {
  double sigma_d = 0.5;
  double P_mean = -1.0, P_std = 1.4;   // CM time proposal
  double c = 0.1;                      // g_hat = g/(||g|| + c)
  bool clip_tangent = false;           // use clip(g, -1, 1) instead of normalisation (6.3)
  bool normalize = true;               // false: raw g (for tests and ablations)
  int64_t warmup_iters = 10000;        // H: r = min(1, iter/H); 0 = no warm-up
  SCMWarmup warmup_form = SCMWarmup::SCM;
  SCMTangent tangent = SCMTangent::JVP;
  double fd_h = 1e-4;                  // step for the finite-difference tangents
  DType norm_dtype = DType::F64;       // dtype of the tangent normalisation
  double loss_scale = 1.0;             // multiplies the per-sample loss (rCM uses sum over D: set D)
};

double scm_warmup_r(int64_t iter, int64_t warmup_iters);

// The tangent part of one sCM step at given (x_t, t, dx_t/dt). F_out is the network output, still
// on the reverse-mode tape; everything else is detached. g is cos t * df^-/dt with warm-up r (6.1-6.2,
// or rCM's form), before normalisation. J = sigma_d cos t sin t dF^-/dt (the JVP output).
struct SCMTangentOut {
  Tensor F;      // (B, D), differentiable w.r.t. the network parameters
  Tensor J;      // (B, D), detached
  Tensor g;      // (B, D), detached
  size_t live_tangents = 0;   // tangents alive at the end of the dual level (memory tests)
};
SCMTangentOut scm_tangent(const NetFn& F, const Tensor& xt, const Tensor& t, const Tensor& dxdt, double r,
                          const SCMConfig& cfg);

// Losses keep their values on the loss's device: reading value() or nan_samples() synchronises,
// so a training loop reads them only when it logs.
struct SCMLoss {
  Tensor loss;            // scalar, backward() from here
  Tensor g_hat;           // (B, D) normalised tangent, detached
  Tensor w;               // (B) adaptive log-weight (undefined without a weight network)
  Tensor nan_count;       // scalar: samples masked out for a non-finite output or tangent
  double value() const { return loss.item(); }
  int64_t nan_samples() const { return int64_t(nan_count.item() + 0.5); }
  int64_t tape_nodes_after_forward = 0;    // live tape nodes once F and J exist (memory tests)
  size_t live_tangents_in_jvp = 0;         // live tangents inside the dual level, at its end
};
// L = mean_b[ loss_scale * e^w/D ||F - sg(F) - g_hat||^2 - w ] (w = 0 without `weight`).
// Samples whose g or F is not finite are masked out of the loss and counted.
SCMLoss scm_loss(const NetFn& F, const WeightFn& weight, const Tensor& xt, const Tensor& t,
                 const Tensor& dxdt, double r, const SCMConfig& cfg);
// sCT: dx_t/dt = cos t z - sin t x0 from the data pair (x0, z).
SCMLoss sct_loss(const NetFn& F, const WeightFn& weight, const Tensor& x0, int64_t iter,
                 const SCMConfig& cfg, Generator& g);
// sCD: dx_t/dt = sigma_d F_pretrain(x_t/sigma_d, t), evaluated without gradients.
SCMLoss scd_loss(const NetFn& F, const WeightFn& weight, const NetFn& teacher, const Tensor& x0,
                 int64_t iter, const SCMConfig& cfg, Generator& g);

// Multistep TrigFlow consistency sampler (5.4 TrigFlow form, 6.8): x = sigma_d z at times[0],
// x0 = f(x, times[0]); then for each later time re-noise with fresh noise and apply f again.
// sCM: times = {atan(sigma_max/sigma_d)} (1 step) or {..., 1.1} (2 steps).
Tensor trigflow_consistency_sample(const NetFn& F, int64_t n, int64_t dim, const std::vector<double>& times,
                                   double sigma_d, Generator& g, DType dtype);
std::vector<double> scm_sampler_times(int steps, double sigma_d, double sigma_max = 80);

// Adaptive weighting head w_phi(t) (6.6): positional embedding of t then one linear layer,
// initialised to zero so w starts at 0.
struct AdaptiveWeight {
  AdaptiveWeight(int64_t emb_dim, DType dtype = DType::F32, Device device = Device::CPU);
  Tensor forward(const Tensor& t) const;
  WeightFn fn() const;
  Tensors parameters() const { return {weight, bias}; }
  int64_t emb_dim;
  Tensor weight, bias;   // (emb_dim), ()
};
// [cos(c w_k), sin(c w_k)] with w_k = max_period^(-k/half): (B) -> (B, dim). Differentiable in c.
Tensor cm_time_embedding(const Tensor& c, int64_t dim, double max_period = 10000);

// ---- DMD and rCM (ALGORITHMS.md 7-8), sigma_d general (rCM itself uses 1) -------------------------
// grad = (f_fake - f_teacher)/max(mean_D |x0 - f_teacher|, 1e-5) at x_tD = cos t x0 + sin t sigma_d eps;
// L = mean_b ||x0 - sg(x0 - grad)||^2 (sum over D). Non-finite samples get loss 0.
struct DMDLoss {
  Tensor loss;
  Tensor grad;          // (B, D) the DMD direction, detached
  Tensor nan_count;     // scalar
  double value() const { return loss.item(); }
  int64_t nan_samples() const { return int64_t(nan_count.item() + 0.5); }
};
DMDLoss dmd_loss(const Tensor& x0_student, const DenoiserFn& f_teacher, const DenoiserFn& f_fake,
                 const Tensor& t, double sigma_d, Generator& g);
// Critic (fake score) loss on detached student samples: TrigFlow denoising
// ||sigma_d F_fake(x_t/sigma_d, t) - (cos t z - sin t x0)||^2 summed over D, mean over the batch.
Tensor critic_flow_loss(const NetFn& F_fake, const Tensor& x0, const Tensor& t, double sigma_d, Generator& g);

struct RCMConfig {
  SCMConfig scm;               // warmup_form = RCM and no adaptive weighting in the paper setting
  double lambda_dmd = 0.01;
  int64_t student_update_freq = 5;   // F
  int64_t warmup_iters = 0;          // H: student-only sCM steps first
  int64_t max_rollout_steps = 4;     // N_max
  bool random_rollout = true;        // N ~ U{1..N_max}; false: cycle (effective_iter mod N_max) + 1
  double P_mean_dmd = 0.0, P_std_dmd = 1.6;   // p_D: ln(sigma_d tan t) ~ N
};
bool rcm_is_student_step(int64_t iter, int64_t warmup_iters, int64_t update_freq);
int64_t rcm_effective_iter(int64_t iter, int64_t warmup_iters, int64_t update_freq);
// Rollout length N in {1..N_max}: uniform (paper) or cycling (effective_iter mod N_max) + 1 (code).
int64_t rcm_rollout_steps(int64_t effective_iter, const RCMConfig& cfg, Generator& g);
// Student rollout ("backward simulation", 8.3): t_1 = t_max, t_n = min(t_hat_n, t_{n-1}), t_hat ~ p_D;
// only the final f_theta call records gradients (when grad mode is on). Returns x0^theta (B, D).
// `times_out`, when given, receives the times used.
Tensor rcm_rollout(const NetFn& F, int64_t n, int64_t dim, int64_t steps, double t_max,
                   const RCMConfig& cfg, Generator& g, DType dtype, std::vector<Tensor>* times_out = nullptr,
                   Device device = Device::CPU);
std::vector<double> rcm_sampler_times(int steps, double sigma_d = 1, double sigma_max = 80);

// ---- Discrete-time CM (ALGORITHMS.md 5) ----------------------------------------------------------
// EDM time sigma in [eps, T]; f(x, sigma) = c_skip x + c_out F(c_in x, c_noise), with the boundary
// condition f(x, eps) = x. c_noise = ln(sigma)/4 (EDM) unless set otherwise.
struct CMConfig {
  double sigma_d = 0.5, sigma_min = 0.002, sigma_max = 80, rho = 7;
  bool shifted_boundary = true;    // false: plain EDM c_skip/c_out (ECT's training form)
};
Tensor cm_denoise(const NetFn& F, const Tensor& x, const Tensor& sigma, const CMConfig& cfg);
std::vector<double> karras_grid(int64_t N, double sigma_min, double sigma_max, double rho);  // increasing
int64_t cm_num_steps(int64_t k, int64_t K, int64_t s0, int64_t s1);            // CM's N(k)
double cm_target_mu(int64_t k, int64_t K, int64_t s0, int64_t s1, double mu0);  // mu(k)
int64_t ict_num_steps(int64_t k, int64_t K, int64_t s0 = 10, int64_t s1 = 1280);
std::vector<double> ict_index_probs(const std::vector<double>& sigmas, double P_mean = -1.1, double P_std = 2.0);
double pseudo_huber_c(int64_t D);  // 0.00054 sqrt(D)
// ECT: r = t (1 - q^{-(stage+1)} (1 + k sigmoid(-b t))), clamped at 0.
double ect_r(double t, int64_t stage, double q = 2, double k = 8, double b = 1);

enum class CMMetric { L2, PseudoHuber };
enum class CMTimeSampling { Uniform, LogNormal };   // uniform index (CM) or iCT's discretised log-normal
struct CTConfig {
  CMConfig cm;
  CMMetric metric = CMMetric::PseudoHuber;
  double huber_c = -1;                 // < 0: pseudo_huber_c(D)
  CMTimeSampling time_sampling = CMTimeSampling::LogNormal;
  bool ict_weighting = true;           // lambda = 1/(sigma_{n+1} - sigma_n); false: 1
};
struct CMLoss {
  Tensor loss;
  double value() const { return loss.item(); }
};
// CT (teacher == nullptr) or CD (one Heun step of the teacher denoiser from sigma_{n+1} to sigma_n).
// `target` is the target network (EMA theta^-, or F itself for iCT's sg(theta)); it runs under NoGrad.
CMLoss cm_discrete_loss(const NetFn& F, const NetFn& target, const DenoiserFn& teacher_edm,
                        const Tensor& x0, int64_t N, const CTConfig& cfg, Generator& g);
// ECT (5.3): t ~ lognormal(-1.1, 2), r = ect_r(t, stage), shared noise, target x0 where r = 0;
// loss = (sqrt(||Delta||^2 + c^2) - c)/(t - r), mean over the batch. Uses F itself as sg target.
CMLoss ect_loss(const NetFn& F, const Tensor& x0, int64_t stage, const CTConfig& cfg, Generator& g);
// theta^- <- mu theta^- + (1 - mu) theta, in place, no gradients.
void ema_update_inplace(const Tensors& target, const Tensors& online, double mu);
// Multistep CM sampler in EDM form (5.4): x = f(sigma_max n, sigma_max), then for each tau:
// x = f(x + sqrt(tau^2 - eps^2) n', tau).
Tensor cm_multistep_sample(const NetFn& F, int64_t n, int64_t dim, const std::vector<double>& sigmas,
                           const CMConfig& cfg, Generator& g, DType dtype);

}  // namespace df
