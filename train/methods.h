// The trainer's view of an objective (train/diffusion.h, train/consistency.h) applied to an image
// model: one step's loss and backward, sampling, extra trainable state (sCM weight head, rCM critic),
// and teachers loaded from dualflow checkpoints.
#pragma once
#include <map>
#include <memory>
#include <string>

#include "models/registry.h"
#include "train/checkpoint.h"
#include "train/config.h"
#include "train/diffusion.h"

namespace df {

// The model as a Net: inputs on another device (the objectives' arithmetic runs on the host) are
// moved to the model's device, the output back to the input's device; both moves are differentiable
// in either mode, so gradients and sCM tangents pass through.
Net model_net(const ImageDenoiser& model);
Device model_device(const Module& m);
DType model_dtype(const Module& m);   // the parameters' dtype (f32 without parameters)

std::unique_ptr<DiffusionObjective> make_diffusion_objective(const ObjectiveConfig& o);

// A frozen network loaded from a dualflow checkpoint (its EMA weights), with the objective it was
// trained with, seen as an EDM denoiser and as a TrigFlow F-head for images.
struct Teacher {
  TrainConfig cfg;
  std::shared_ptr<ImageDenoiser> model;
  std::unique_ptr<DiffusionObjective> objective;
  Denoiser denoiser() const;                       // D(x; sigma), x (B, C, H, W)
  TimeModel trig_F(double sigma_d) const;          // F(x_t, t) in TrigFlow coordinates
};
// The teacher is built in `dtype`, the student's (its checkpoint's weights are cast on load).
Teacher load_teacher(const std::string& path, Device device, int64_t channels, int64_t resolution,
                     DType dtype = DType::F32);

class Method {
 public:
  // Values stay on the device (detached scalars): the trainer reads them only when it logs, so a
  // step never waits for the GPU.
  struct StepOut {
    Tensor loss;
    bool update_model = true;   // false: the step trained something else (rCM critic); skip opt/EMA
    std::map<std::string, Tensor> extra;
  };
  virtual ~Method() = default;
  virtual std::string name() const = 0;
  // Loss for this step on x0 (B, C, H, W) and backward into the parameters' grads.
  virtual StepOut forward_backward(const ImageDenoiser& model, const Tensor& x0, int64_t step, Generator& g) = 0;
  // n images (n, C, H, W) on the host, roughly in [-1, 1]; steps <= 0 = the method's default.
  virtual Tensor sample(const ImageDenoiser& model, int64_t n, int steps, Generator& g) = 0;
  // Parameters trained together with the model by the main optimizer (after the model's).
  virtual NamedTensors extra_parameters() const { return {}; }
  // Everything else a checkpoint must hold for an exact resume (e.g. the rCM critic and its optimizer).
  virtual NamedTensors extra_state() const { return {}; }
  virtual void load_extra_state(const NamedTensors& s) {}
};

// Builds the method for cfg.objective; `model` is the student (shapes, device). Teachers load here,
// and distillation methods (scd, rcm, cd) start the student from the teacher's EMA weights.
// with_teacher = false builds a method for sampling only (no teacher file needed).
// cfg.precision "bf16" (model on CUDA) runs forward_backward and sample inside Autocast(bf16); on the
// CPU it is an error naming the key, except for sampling-only methods, which then compute in f32.
std::unique_ptr<Method> make_method(const TrainConfig& cfg, ImageDenoiser& model, bool with_teacher = true);

}  // namespace df
