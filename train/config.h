// Training configuration: the JSON file `dualflow train --config` reads, validated into structs.
// Unknown keys and bad values are errors that name the key path ("config: optimizer.lr: ...").
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace df {

// One struct for every objective; `name` says which fields are read (config.cpp lists them per name).
struct ObjectiveConfig {
  std::string name = "trigflow";   // edm | trigflow | fm | ddpm | sct | scd | rcm | ct | cd
  int sample_steps = 0;            // sampler steps for grids and eval; 0 = the method's default
  // shared by the EDM-family / TrigFlow / sCM objectives
  double sigma_d = 0.5, P_mean = -1.2, P_std = 1.2;
  double sigma_min = 0.002, sigma_max = 80, rho = 7;
  bool second_order = true;        // trigflow: DPM-Solver++(2M) sampler (else DDIM)
  // fm
  std::string fm_time = "uniform"; // uniform | logit_normal
  double ln_m = 0, ln_s = 1, shift = 1;
  // ddpm
  int T = 1000;
  double beta_start = 1e-4, beta_end = 0.02, ddim_eta = 0;
  // sCM (sct, scd, rcm)
  double c = 0.1;
  int64_t warmup_iters = 10000;
  std::string tangent = "jvp";     // jvp | semi_discrete | discrete
  bool adaptive_weight = true;     // learned log-weight w(t) (sCM 6.6)
  int64_t weight_emb_dim = 128;
  // teacher checkpoint (scd, rcm, cd)
  std::string teacher;
  // rcm
  double lambda_dmd = 0.01, P_mean_dmd = 0.0, P_std_dmd = 1.6, critic_lr = 0;  // critic_lr 0 = optimizer.lr
  int64_t student_update_freq = 5, dmd_warmup_iters = 0, max_rollout_steps = 4;
  // ct, cd
  int64_t s0 = 10, s1 = 1280, curriculum_steps = 0;   // 0 = schedule.steps
  std::string metric = "pseudo_huber";                // l2 | pseudo_huber
};

struct DataConfig {
  std::string name = "fashion_mnist";  // fashion_mnist | cifar10 | folder
  std::string path;                    // "" = the loader's default location
  bool pad_to_32 = true;
  bool flips = false;
  int64_t batch = 128;
  int64_t subset = 0;                  // > 0: train on the first `subset` images only
};

struct OptimizerConfig {
  std::string name = "adam";           // adam | adamw | radam | sgd
  double lr = 2e-4;
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  double weight_decay = 0, momentum = 0;
  int64_t warmup = 0;                  // linear lr warm-up steps
  double grad_clip = 0;                // max global grad norm; 0 = off
};

struct EMAConfig {
  std::string kind = "decay";          // decay | halflife | power
  double decay = 0.999;
  double halflife_images = 0, rampup_ratio = 0;
  double gamma = 0;                    // power EMA exponent (or from sigma_rel)
};

struct ScheduleConfig {
  int64_t steps = 1000;
  int64_t log_every = 50;
  int64_t sample_every = 0;            // 0 = only at the end
  int64_t ckpt_every = 0;              // 0 = only at the end
  int64_t sample_n = 64;               // images in a grid
};

struct TrainConfig {
  nlohmann::json model;                // passed to model_config_from_json
  ObjectiveConfig objective;
  DataConfig data;
  OptimizerConfig optimizer;
  EMAConfig ema;
  ScheduleConfig schedule;
  uint64_t seed = 0;
  std::string device = "cpu";          // cpu | cuda
  std::string dtype = "f32";           // f32 | f64
  std::string precision = "f32";       // f32 | bf16 (mixed precision, CUDA only: ops/autocast.h)
  bool allow_tf32 = false;
  nlohmann::json source;               // the JSON this was parsed from (saved in checkpoints)
};

// Validates everything; throws df::Error "config: <key path>: <what was expected>, got <value>".
TrainConfig parse_config(const nlohmann::json& j);
TrainConfig load_config(const std::string& path);   // JSON parse errors name the file and position

// Objective names accepted in objective.name.
const std::vector<std::string>& objective_names();
bool is_consistency_objective(const std::string& name);

}  // namespace df
