// The image training loop behind `dualflow train`: model, objective, data, optimizer, EMA and a
// schedule from a TrainConfig; progress lines, JSONL metrics, sample grids, loss curves, and atomic
// safetensors checkpoints from which a resumed run continues bit-identically.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "models/registry.h"
#include "train/config.h"
#include "train/datasets.h"
#include "train/methods.h"
#include "train/optim.h"

namespace df {

struct TrainOptions {
  std::string out_dir = "runs/default";
  std::string resume;            // checkpoint to continue from ("" = fresh start)
  int64_t steps = -1;            // total steps, overriding schedule.steps (> 0)
  std::string device;            // overrides the config's device ("" = keep)
  bool verbose = true;           // progress lines on stdout
  double max_seconds = 0;        // > 0: stop after this much training time (checkpoint, samples written)
};

class Trainer {
 public:
  Trainer(const TrainConfig& cfg, const TrainOptions& opt);
  ~Trainer();
  // Trains from the current step up to the total, writing metrics.jsonl, samples_<step>.png,
  // loss.png and checkpoint.safetensors under out_dir (the checkpoint also at ckpt_every steps).
  void train();
  // Everything needed to continue exactly: model, EMA, optimizer, method state, RNG, batcher, step.
  void save_checkpoint(const std::string& path) const;
  void load_checkpoint(const std::string& path);
  // n images from the EMA weights with a generator of its own (training state is untouched).
  Tensor sample(int64_t n, int steps, uint64_t seed);

  int64_t step() const { return step_; }
  int64_t total_steps() const { return total_; }
  const ImageDenoiser& model() const { return *model_; }
  const ImageDataset& data() const { return data_; }
  const TrainConfig& config() const { return cfg_; }
  std::string checkpoint_path() const { return opt_.out_dir + "/checkpoint.safetensors"; }

 private:
  void write_samples();
  void write_loss_plot() const;
  void reload_metrics();

  TrainConfig cfg_;
  TrainOptions opt_;
  Device device_ = Device::CPU;
  ImageDataset data_;
  ModelConfig model_cfg_;
  std::shared_ptr<ImageDenoiser> model_, ema_model_;
  std::unique_ptr<Method> method_;
  std::unique_ptr<Optimizer> optim_;
  std::unique_ptr<EMA> ema_;
  std::unique_ptr<Batcher> batcher_;
  Generator rng_;
  int64_t step_ = 0, total_ = 0;
  std::vector<std::pair<int64_t, double>> loss_log_;   // (step, mean loss over the log interval)
};

// A trained run loaded for sampling or evaluation: the model holds the EMA weights.
struct LoadedRun {
  TrainConfig cfg;
  std::shared_ptr<ImageDenoiser> model;
  std::unique_ptr<Method> method;
  int64_t step = 0;
  int64_t channels = 0, resolution = 0;
};
LoadedRun load_run(const std::string& checkpoint, Device device);

// "cpu" / "cuda" -> Device; "cuda" checks that a GPU backend is present.
Device parse_device(const std::string& name);

}  // namespace df
