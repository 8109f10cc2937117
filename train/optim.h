// Optimizers (SGD, Adam, AdamW, RAdam with PyTorch's update rules), gradient clipping, lr warm-up
// and parameter EMAs (fixed decay, EDM half-life, EDM2 power). Updates write into the parameter
// storage in place, so Tensor handles held elsewhere (modules, EMAs) stay valid.
#pragma once
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/autograd.h"
#include "core/tensor.h"

namespace df {

using NamedTensors = std::vector<std::pair<std::string, Tensor>>;

class Optimizer {
 public:
  Optimizer(Tensors params, double lr);
  virtual ~Optimizer();
  virtual void step() = 0;          // parameters with an undefined grad are skipped
  void zero_grad();
  virtual std::string name() const = 0;  // "sgd", "adam", "adamw", "radam": the state-name prefix
  // State for checkpoints: "<name>.step" (f64 scalar) and per-parameter moments, e.g.
  // "adam.m.<i>", "adam.v.<i>", "sgd.momentum.<i>" (i = index into params). Returned tensors are
  // copies.
  virtual NamedTensors state() const;
  // Restores what state() returned (strict: all names, matching shapes).
  virtual void load_state(const NamedTensors& s);
  int64_t step_count() const { return step_; }

  double lr;
  Tensors params;

 protected:
  // Per-parameter state buffers by kind ("m", "v", "momentum"), same shape/dtype as the parameter.
  std::vector<std::pair<std::string, Tensors>> buffers_;
  Tensors& add_buffer(const std::string& kind);
  int64_t step_ = 0;
};

std::unique_ptr<Optimizer> make_sgd(Tensors params, double lr, double momentum = 0, double weight_decay = 0);
// Adam with L2 weight decay (added to the gradient), PyTorch bias correction.
std::unique_ptr<Optimizer> make_adam(Tensors params, double lr, double b1 = 0.9, double b2 = 0.999,
                                     double eps = 1e-8, double weight_decay = 0);
// AdamW: decoupled decay p <- p (1 - lr wd) before the Adam step.
std::unique_ptr<Optimizer> make_adamw(Tensors params, double lr, double b1 = 0.9, double b2 = 0.999,
                                      double eps = 1e-8, double weight_decay = 0.01);
// RAdam (Liu et al. 2019, PyTorch's form): rectified adaptive step once rho_t > 5, else plain
// bias-corrected momentum SGD. L2 weight decay.
std::unique_ptr<Optimizer> make_radam(Tensors params, double lr, double b1 = 0.9, double b2 = 0.999,
                                      double eps = 1e-8, double weight_decay = 0);

// Global L2 norm over all defined grads; if it exceeds max_norm the grads are multiplied by
// max_norm / (norm + 1e-6) (PyTorch). Each grad is replaced by a scaled copy (set_grad), never
// written through, since a grad may alias other tensors. Returns the norm before clipping.
double clip_grad_norm(const Tensors& params, double max_norm);
// The same for parameters that all live on one device, without reading anything back: returns the
// pre-clip norm as a scalar tensor and scales by clamp(max_norm / (norm + 1e-6), 0, 1) on the device.
Tensor clip_grad_norm_async(const Tensors& params, double max_norm);
// Linear warm-up: base_lr * min(1, (step + 1) / warmup_steps); base_lr when warmup_steps <= 0.
double warmup_lr(double base_lr, int64_t step, int64_t warmup_steps);

// Exponential moving average of parameters: shadow <- beta shadow + (1 - beta) param.
class EMA {
 public:
  EMA(const Tensors& params, double decay);  // fixed decay
  // EDM: beta = 0.5^(batch / halflife_images). With rampup_ratio > 0 the half-life is
  // min(halflife_images, rampup_ratio * images_seen) (EDM uses 0.05); off by default.
  static EMA halflife(const Tensors& params, double halflife_images, int64_t batch,
                      double rampup_ratio = 0);
  // EDM2 power EMA: beta_t = (1 - 1/t)^(gamma + 1), t = 1, 2, ... the update count (so the first
  // update copies the parameters).
  static EMA power(const Tensors& params, double gamma);
  void update(const Tensors& params);
  double current_beta() const;       // the beta the next update() will use
  const Tensors& shadow() const { return shadow_; }
  void copy_to(const Tensors& params) const;   // in place into params' storage
  int64_t num_updates() const { return updates_; }
  // Checkpoint state: "ema.updates" (f64 scalar) and "ema.shadow.<i>".
  NamedTensors state() const;
  void load_state(const NamedTensors& s);

 private:
  enum class Kind { Fixed, HalfLife, Power };
  EMA() = default;
  Kind kind_ = Kind::Fixed;
  double decay_ = 0, halflife_ = 0, rampup_ = 0, gamma_ = 0;
  int64_t batch_ = 1, updates_ = 0;
  Tensors shadow_;
};

// EDM2: the power-EMA exponent gamma whose relative standard deviation is sigma_rel
// (sigma_rel^2 = (gamma+1) / ((gamma+2)^2 (gamma+3))), e.g. sigma_rel 0.05 -> gamma ~ 16.97, 0.10 -> ~ 6.94.
double power_ema_gamma(double sigma_rel);

}  // namespace df
