// Helpers of the mixed-precision suites (tests/test_amp.cpp on the CPU, tests/test_amp_cuda.cpp on a
// GPU): short training runs of one objective through make_method (the trainer's path: precision key,
// teachers, critic, adaptive weight head), and the dtypes of every node of a recorded graph.
#pragma once
#include <cmath>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "models/registry.h"
#include "ops/autocast.h"
#include "ops/ops.h"
#include "train/checkpoint.h"
#include "train/methods.h"
#include "train/optim.h"

namespace df::test {

// One short run: `steps` optimizer steps of `objective` on one fixed batch of random images.
struct AmpRun {
  std::string objective = "trigflow";   // trigflow | edm | sct | scd | rcm
  nlohmann::json model;                 // a model config (models/registry.h JSON form)
  Device device = Device::CPU;
  DType master = DType::F64;            // the parameters' dtype
  std::string precision = "f32";        // the config key; "bf16" wraps the method in Autocast(bf16)
  bool autocast_f32 = false;            // wrap each step in Autocast(F32, F64) (the CPU's stand-in)
  int steps = 4;
  int64_t batch = 4, channels = 1, resolution = 16;
  std::string dir = "/tmp";             // where scd/rcm find their teacher checkpoint
};

// A TrigFlow "teacher" checkpoint with random EMA weights (seed 1) in the layout load_teacher reads.
inline std::string write_amp_teacher(const AmpRun& r) {
  nlohmann::json cfg = {{"model", r.model}, {"objective", {{"name", "trigflow"}}}};
  Generator g(1);
  auto teacher = make_model(model_config_from_json(r.model, r.channels, r.resolution), g);
  NamedTensors ts;
  for (auto& [n, p] : teacher->named_parameters()) ts.emplace_back("ema." + n, p);
  std::string path = r.dir + "/amp_teacher.safetensors";
  save_safetensors(path, ts, {{"dualflow.config", cfg.dump()}});
  return path;
}

// The loss of each step (the rCM entries alternate student and critic steps).
inline std::vector<double> amp_losses(const AmpRun& r) {
  nlohmann::json j = {{"model", r.model},
                      {"objective", {{"name", r.objective}}},
                      {"precision", r.precision},
                      {"device", device_name(r.device)},
                      {"seed", 3}};
  const bool scm = r.objective == "sct" || r.objective == "scd" || r.objective == "rcm";
  if (scm) j["objective"]["warmup_iters"] = 4;   // r moves within the run
  if (r.objective == "scd" || r.objective == "rcm") j["objective"]["teacher"] = write_amp_teacher(r);
  if (r.objective == "rcm") j["objective"]["student_update_freq"] = 2;   // student, critic, student, critic
  TrainConfig cfg = parse_config(j);
  Generator init(7);
  auto model = make_model(model_config_from_json(r.model, r.channels, r.resolution), init, r.master);
  model->to(r.device);
  auto method = make_method(cfg, *model);
  Tensors params = model->parameters();
  for (auto& [n, p] : method->extra_parameters()) params.push_back(p);
  auto opt = make_adam(params, 1e-3);
  Tensor x0 = add(mul(rand({r.batch, r.channels, r.resolution, r.resolution}, 5, r.master, r.device), 2.0), -1.0);
  Generator g(11);
  std::vector<double> losses;
  for (int step = 0; step < r.steps; ++step) {
    opt->zero_grad();
    Method::StepOut out;
    if (r.autocast_f32) {
      Autocast amp(DType::F32, DType::F64);
      out = method->forward_backward(*model, x0, step, g);
    } else {
      out = method->forward_backward(*model, x0, step, g);
    }
    losses.push_back(out.loss.item());
    if (out.update_model) opt->step();
  }
  return losses;
}

// Relative distance of two loss curves: max over steps of |a - b| / max(|b|, floor).
inline double max_rel_diff(const std::vector<double>& a, const std::vector<double>& b, double floor = 1e-3) {
  double m = a.size() == b.size() ? 0.0 : INFINITY;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i)
    m = std::max(m, std::fabs(a[i] - b[i]) / std::max(std::fabs(b[i]), floor));
  return m;
}

// Every tape node reachable from y: op name -> the dtypes of its outputs.
inline std::map<std::string, std::set<DType>> graph_dtypes(const Tensor& y) {
  std::map<std::string, std::set<DType>> out;
  std::set<const Node*> seen;
  std::vector<Node*> stack;
  if (y.grad_fn()) stack.push_back(y.grad_fn().get());
  while (!stack.empty()) {
    Node* n = stack.back();
    stack.pop_back();
    if (!seen.insert(n).second) continue;
    for (DType t : n->out_dtypes) out[n->name()].insert(t);
    for (auto& e : n->next)
      if (e.fn) stack.push_back(e.fn.get());
  }
  return out;
}

}  // namespace df::test
