// The 2-D consistency-model demo as library pieces (examples/toy2d_consistency.cpp runs them at full
// size, tests/test_toy_demo.cpp in miniature): a TrigFlow teacher, sCD / sCT / rCM / CD / CT students
// on small MLPs, each method's few-step sampler, and scores against fresh data with a data floor.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "models/mlp.h"
#include "train/consistency.h"
#include "train/metrics.h"

namespace df {

// The defaults are `make demo`'s sizes (examples/toy2d_consistency.cpp --quick), chosen on 2 cores
// (the README's demo section has the measurements behind them).
struct ToyDemoConfig {
  std::string data = "8gaussians";
  double sigma_d = 0.5;        // TrigFlow's and CM's sigma_d, in model units
  // Model units are the data rescaled to this per-dimension std. Twice sigma_d: the network then
  // sees clean data at input scale ~2 (u = x_t / sigma_d); at a fixed budget this resolved the
  // 8 Gaussians' modes better than data_std = sigma_d (93-95% against 73-86% of the teacher's
  // samples within 3 std of a mode after 3000 iterations; two seeds, two time proposals).
  double data_std = 1.0;
  int64_t hidden = 64, depth = 3, batch = 256;
  // Teacher: TrigFlow, Adam with a 100-step warm-up and a linear decay over the last third, EMA.
  int64_t teacher_iters = 4000;
  double teacher_lr = 4e-3, teacher_ema = 0.998;
  double P_mean = -1.5, P_std = 1.2;      // teacher's time proposal, ln(sigma) ~ N(P_mean, P_std^2)
  // Students: sCD / sCT / rCM start from the teacher; CD / CT start from scratch.
  int64_t student_iters = 1500;
  double student_lr = 1e-3, student_ema = 0.995;
  double scm_P_mean = -1.0, scm_P_std = 1.4;
  double rcm_lambda = 0.1;                // DMD weight (toy data: stronger than the paper's 0.01)
  int64_t rcm_update_freq = 2;            // critic steps per student step + 1
  int64_t cd_teacher_steps = 18;          // CD's fixed discretisation N
  uint64_t seed = 0;
};

enum class ToyMethod { Teacher, SCD, SCT, RCM, CD, CT };
const char* toy_method_name(ToyMethod m);   // "teacher", "sCD", "sCT", "rCM", "CD", "CT"
const std::vector<ToyMethod>& toy_students();

struct ToyModel {
  ToyMethod method = ToyMethod::Teacher;
  std::shared_ptr<MLPDenoiser> net;
  double wall_s = 0, cpu_s = 0;   // training time: wall clock and this thread's CPU time
};

class ToyDemo {
 public:
  explicit ToyDemo(ToyDemoConfig cfg);   // measures the data set's std (a fixed 20000-point probe)
  const ToyDemoConfig& config() const { return cfg_; }
  double scale() const { return scale_; }           // model units = data units * scale
  Tensor batch(int64_t n, Generator& g) const;      // fresh data in model units, f32
  NetFn net_fn(const MLPDenoiser& m) const;          // the network as the objectives call it

  // Each training run draws from its own generator (seed, method), so results do not depend on the
  // order or the thread the methods run in.
  ToyModel train_teacher() const;
  ToyModel train_student(ToyMethod m, const ToyModel& teacher) const;
  // n samples in data units from `nfe` network evaluations: the teacher by DPM-Solver++(2M) on the
  // EDM rho grid (nfe 1 is a single Euler step of the probability-flow ODE), sCM / rCM students by
  // the TrigFlow consistency sampler, CD / CT by the EDM multistep CM sampler at matching times.
  Tensor sample(const ToyModel& m, int nfe, int64_t n, Generator& g) const;

 private:
  ToyModel train_scm(ToyMethod m, const ToyModel& teacher) const;
  ToyModel train_rcm(const ToyModel& teacher) const;
  ToyModel train_discrete(ToyMethod m, const ToyModel& teacher) const;
  std::shared_ptr<MLPDenoiser> new_net(Generator& g) const;
  ToyDemoConfig cfg_;
  double scale_ = 1;
};

// The times (TrigFlow t, model units) at which the consistency samplers evaluate the network for
// `nfe` steps: t_max = atan(80 / sigma_d), then scm_sampler_times' mid points.
std::vector<double> toy_consistency_times(int nfe, double sigma_d);

// Scores against the true distribution, from `reps` pairs of fresh sets of n points each.
struct ToyScore {
  double sw2 = 0;       // mean sliced W2 (128 directions) over the reps
  double sw2_se = 0;    // its standard error (sample std over the reps / sqrt(reps); 0 for one rep)
  double support = 0;   // fraction of points in the data's support (toy_in_support)
};
class ToyReference {
 public:
  ToyReference(const std::string& data, int64_t n, int reps, uint64_t seed);
  // The data-vs-data floor: fresh data sets scored exactly as a model's samples are.
  const ToyScore& floor() const { return floor_; }
  // draw(g) returns n points in data units; it is called reps times.
  ToyScore score(const std::function<Tensor(Generator&)>& draw, uint64_t seed) const;
  int64_t n() const { return n_; }
  int reps() const { return int(refs_.size()); }
  const Tensor& first() const { return refs_.front(); }

 private:
  std::string data_;
  int64_t n_;
  std::vector<Tensor> refs_;
  std::vector<SlicedW2Reference> sw2_;   // per reference set, 128 directions of seed 100 + r
  ToyScore floor_;
};

// This thread's CPU time in seconds (CLOCK_THREAD_CPUTIME_ID).
double thread_cpu_seconds();

}  // namespace df
