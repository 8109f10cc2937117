// The training loop and its checkpoints. Resume is exact because every source of randomness is a
// counter-based stream whose state is saved: the objective's Generator (seed, counter), the Batcher
// (epoch, position; its order and flips are functions of them) and dropout seeds derived from the step.
#include "train/trainer.h"

#include <sys/stat.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "train/checkpoint.h"
#include "train/image_grid.h"
#include "train/json_safe.h"
#include "train/plot.h"
#ifdef DF_WITH_CUDA
#include "cuda/cuda.h"
#endif

namespace df {
namespace {

using json = nlohmann::json;

void make_dirs(const std::string& dir) {
  std::string cur;
  std::stringstream ss(dir);
  std::string part;
  if (!dir.empty() && dir[0] == '/') cur = "/";
  while (std::getline(ss, part, '/')) {
    if (part.empty()) continue;
    cur += part + "/";
    ::mkdir(cur.c_str(), 0755);
  }
  struct stat st;
  DF_CHECK(::stat(dir.c_str(), &st) == 0 && S_ISDIR(st.st_mode), "trainer: cannot create directory ", dir);
}

// Distinct, step-determined dropout seeds (so a resumed run drops the same units).
uint64_t dropout_seed(uint64_t seed, int64_t step) {
  uint64_t z = seed * 0x9E3779B97F4A7C15ULL + uint64_t(step) + 0x632BE59BD9B4E019ULL;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

std::string fmt_duration(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  char buf[32];
  int64_t t = (int64_t)std::llround(s);
  if (t >= 3600) std::snprintf(buf, sizeof buf, "%ldh%02ldm", long(t / 3600), long(t / 60 % 60));
  else if (t >= 60) std::snprintf(buf, sizeof buf, "%ldm%02lds", long(t / 60), long(t % 60));
  else std::snprintf(buf, sizeof buf, "%lds", long(t));
  return buf;
}

const std::string& meta(const Checkpoint& ck, const std::string& path, const std::string& key) {
  auto it = ck.metadata.find(key);
  DF_CHECK(it != ck.metadata.end(), "checkpoint ", path, ": missing metadata '", key,
           "' (not a dualflow training checkpoint?)");
  return it->second;
}

uint64_t parse_u64(const std::string& s, const std::string& path, const std::string& key) {
  size_t pos = 0;
  uint64_t v = 0;
  try {
    v = std::stoull(s, &pos);
  } catch (const std::exception&) {
    pos = 0;
  }
  DF_CHECK(pos == s.size() && !s.empty(), "checkpoint ", path, ": metadata '", key, "' is not an integer: '", s, "'");
  return v;
}

NamedTensors with_prefix(const std::string& prefix, const NamedTensors& ts, const std::string& strip = "") {
  NamedTensors out;
  for (auto& [n, t] : ts) out.emplace_back(prefix + (n.rfind(strip, 0) == 0 ? n.substr(strip.size()) : n), t);
  return out;
}
NamedTensors take_prefix(const Checkpoint& ck, const std::string& prefix) {
  NamedTensors out;
  for (auto& [n, t] : ck.tensors)
    if (n.rfind(prefix, 0) == 0) out.emplace_back(n.substr(prefix.size()), t);
  return out;
}

DType parse_dtype(const std::string& s) { return s == "f64" ? DType::F64 : DType::F32; }

ImageDataset load_training_data(const DataConfig& d) {
  ImageDataset data = load_dataset(d.name, d.path, /*train=*/true, d.pad_to_32);
  if (d.subset > 0 && d.subset < data.size()) {
    std::vector<int64_t> idx(d.subset);
    for (int64_t i = 0; i < d.subset; ++i) idx[i] = i;
    data = data.subset(idx);
  }
  DF_CHECK(data.size() >= d.batch, "config: data.batch: ", d.batch, " is larger than the data set (", data.size(),
           " images from ", data.source(), ")");
  return data;
}

}  // namespace

Device parse_device(const std::string& name) {
  if (name == "cpu") return Device::CPU;
  DF_CHECK(name == "cuda", "device: expected cpu or cuda, got '", name, "'");
#ifdef DF_WITH_CUDA
  DF_CHECK(cuda_init(), "device cuda: no CUDA device found");
  return Device::CUDA;
#else
  DF_FAIL("device cuda: this build has no CUDA backend (nvcc was not found at build time)");
#endif
}

Trainer::Trainer(const TrainConfig& cfg, const TrainOptions& opt) : cfg_(cfg), opt_(opt) {
  if (!opt_.device.empty()) cfg_.device = opt_.device;
  device_ = parse_device(cfg_.device);
#ifdef DF_WITH_CUDA
  if (device_ == Device::CUDA) set_allow_tf32(cfg_.allow_tf32);
#endif
  total_ = opt_.steps > 0 ? opt_.steps : cfg_.schedule.steps;
  data_ = load_training_data(cfg_.data);
  const int64_t C = data_.channels(), R = data_.height();
  DF_CHECK(data_.height() == data_.width(), "trainer: expected square images, got ", data_.height(), "x",
           data_.width(), " from ", data_.source());
  try {
    model_cfg_ = model_config_from_json(cfg_.model, C, R);
  } catch (const Error& e) {
    throw Error(std::string("config: model: ") + e.what());
  }
  const DType dt = parse_dtype(cfg_.dtype);
  Generator init(cfg_.seed);
  model_ = make_model(model_cfg_, init, dt);
  ema_model_ = make_model(model_cfg_, init, dt);
  model_->to(device_);
  ema_model_->to(device_);
  ema_model_->set_requires_grad(false);
  method_ = make_method(cfg_, *model_);   // may start the model from a teacher

  Tensors params = model_->parameters();
  for (auto& [n, p] : method_->extra_parameters()) params.push_back(p);
  const OptimizerConfig& o = cfg_.optimizer;
  if (o.name == "adam") optim_ = make_adam(params, o.lr, o.beta1, o.beta2, o.eps, o.weight_decay);
  else if (o.name == "adamw") optim_ = make_adamw(params, o.lr, o.beta1, o.beta2, o.eps, o.weight_decay);
  else if (o.name == "radam") optim_ = make_radam(params, o.lr, o.beta1, o.beta2, o.eps, o.weight_decay);
  else optim_ = make_sgd(params, o.lr, o.momentum, o.weight_decay);

  const EMAConfig& e = cfg_.ema;
  if (e.kind == "halflife")
    ema_ = std::make_unique<EMA>(EMA::halflife(model_->parameters(), e.halflife_images, cfg_.data.batch, e.rampup_ratio));
  else if (e.kind == "power") ema_ = std::make_unique<EMA>(EMA::power(model_->parameters(), e.gamma));
  else ema_ = std::make_unique<EMA>(model_->parameters(), e.decay);

  rng_ = Generator(cfg_.seed ^ 0xD1B54A32D192ED03ULL, 0);
  batcher_ = std::make_unique<Batcher>(data_, cfg_.data.batch, cfg_.seed, cfg_.data.flips, true, device_, dt);
  make_dirs(opt_.out_dir);
  if (!opt_.resume.empty()) load_checkpoint(opt_.resume);
}

Trainer::~Trainer() = default;

void Trainer::save_checkpoint(const std::string& path) const {
  NamedTensors ts = with_prefix("model.", model_->named_parameters());
  // EMA shadows under the parameter names, so a reader can load "ema.*" as a model directly.
  auto names = model_->named_parameters();
  NamedTensors es = ema_->state();
  for (auto& [n, t] : es) {
    if (n == "ema.updates") {
      ts.emplace_back("ema_state.updates", t);
      continue;
    }
    size_t i = std::stoul(n.substr(std::string("ema.shadow.").size()));
    ts.emplace_back("ema." + names.at(i).first, t);
  }
  for (auto& [n, t] : with_prefix("optim.", optim_->state())) ts.emplace_back(n, t);
  for (auto& [n, t] : with_prefix("extra.", method_->extra_parameters())) ts.emplace_back(n, t);
  for (auto& [n, t] : with_prefix("method.", method_->extra_state())) ts.emplace_back(n, t);
  std::map<std::string, std::string> md;
  md["format"] = "dualflow-train-v1";
  md["dualflow.config"] = cfg_.source.dump();
  md["dualflow.model_config"] = model_config_to_json(model_cfg_).dump();
  md["dualflow.objective"] = cfg_.objective.name;
  md["dualflow.step"] = std::to_string(step_);
  md["dualflow.rng_seed"] = std::to_string(rng_.seed());
  md["dualflow.rng_counter"] = std::to_string(rng_.counter());
  md["dualflow.batcher_epoch"] = std::to_string(batcher_->epoch());
  md["dualflow.batcher_position"] = std::to_string(batcher_->position());
  md["dualflow.image_shape"] = json({data_.channels(), data_.height(), data_.width()}).dump();
  save_safetensors(path, ts, md);
}

void Trainer::load_checkpoint(const std::string& path) {
  Checkpoint ck = load_safetensors(path);   // throws a clear error on any corruption
  const std::string fmt = ck.metadata.count("format") ? ck.metadata.at("format") : "";
  DF_CHECK(fmt == "dualflow-train-v1", "resume: ", path, " is not a dualflow training checkpoint (format '", fmt, "')");
  json saved_model = parse_json_bounded(meta(ck, path, "dualflow.model_config"), path + ": metadata 'dualflow.model_config'");
  DF_CHECK(saved_model == model_config_to_json(model_cfg_), "resume: ", path,
           " holds a different model than the config asks for: ", json_excerpt(saved_model, 300));
  DF_CHECK(meta(ck, path, "dualflow.objective") == cfg_.objective.name, "resume: ", path, " was trained with '",
           meta(ck, path, "dualflow.objective"), "', the config says '", cfg_.objective.name, "'");
  try {
    model_->load_parameters(take_prefix(ck, "model."));
    // EMA: map parameter names back to the shadow indices.
    auto names = model_->named_parameters();
    NamedTensors es;
    es.emplace_back("ema.updates", ck.at("ema_state.updates"));
    for (size_t i = 0; i < names.size(); ++i) es.emplace_back("ema.shadow." + std::to_string(i), ck.at("ema." + names[i].first));
    ema_->load_state(es);
    optim_->load_state(take_prefix(ck, "optim."));
    NamedTensors extra = take_prefix(ck, "extra.");
    for (auto& [n, p] : method_->extra_parameters()) {
      const Tensor* t = nullptr;
      for (auto& [m, v] : extra)
        if (m == n) t = &v;
      DF_CHECK(t, "missing tensor 'extra.", n, "'");
      assign_(p, *t);
    }
    method_->load_extra_state(take_prefix(ck, "method."));
  } catch (const Error& e) {
    throw Error("resume: " + path + ": " + e.what());
  }
  step_ = (int64_t)parse_u64(meta(ck, path, "dualflow.step"), path, "dualflow.step");
  rng_.set_state(parse_u64(meta(ck, path, "dualflow.rng_seed"), path, "dualflow.rng_seed"),
                 parse_u64(meta(ck, path, "dualflow.rng_counter"), path, "dualflow.rng_counter"));
  batcher_->set_state(parse_u64(meta(ck, path, "dualflow.batcher_epoch"), path, "dualflow.batcher_epoch"),
                      (int64_t)parse_u64(meta(ck, path, "dualflow.batcher_position"), path, "dualflow.batcher_position"));
  reload_metrics();
}

// Keeps the metrics lines up to the resumed step (a crashed run may have logged past its checkpoint).
void Trainer::reload_metrics() {
  const std::string path = opt_.out_dir + "/metrics.jsonl";
  std::ifstream in(path);
  std::vector<std::string> keep;
  loss_log_.clear();
  std::string line;
  while (std::getline(in, line)) {
    json j = json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.contains("step") || !j["step"].is_number_integer()) continue;
    if (j["step"].get<int64_t>() > step_) continue;
    keep.push_back(line);
    if (j.contains("loss") && j["loss"].is_number()) loss_log_.emplace_back(j["step"].get<int64_t>(), j["loss"].get<double>());
  }
  in.close();
  std::ofstream out(path, std::ios::trunc);
  for (auto& l : keep) out << l << "\n";
}

Tensor Trainer::sample(int64_t n, int steps, uint64_t seed) {
  ema_->copy_to(ema_model_->parameters());
  Generator g(seed, 0);
  return method_->sample(*ema_model_, n, steps, g);
}

void Trainer::write_samples() {
  char name[64];
  std::snprintf(name, sizeof name, "/samples_%06ld.png", long(step_));
  write_image_grid(opt_.out_dir + name, sample(cfg_.schedule.sample_n, 0, cfg_.seed + 12345), 0, 2);
}

void Trainer::write_loss_plot() const {
  if (loss_log_.size() < 2) return;
  std::vector<double> v;
  for (auto& [s, l] : loss_log_) v.push_back(l);
  write_loss_curves(opt_.out_dir + "/loss.png", {{method_->name() + " loss", v}}, double(cfg_.schedule.log_every));
}

void Trainer::train() {
  if (step_ == 0) {
    std::ofstream(opt_.out_dir + "/metrics.jsonl", std::ios::trunc);
    std::ofstream(opt_.out_dir + "/config.json", std::ios::trunc) << cfg_.source.dump(2) << "\n";
  }
  std::ofstream metrics(opt_.out_dir + "/metrics.jsonl", std::ios::app);
  const auto& S = cfg_.schedule;
  if (opt_.verbose)
    std::printf("training %s (%s, %.2fM parameters) on %s (%ld images), %s, steps %ld -> %ld, out %s\n",
                method_->name().c_str(), model_cfg_.arch.c_str(), model_->num_parameters() / 1e6,
                data_.source().c_str(), long(data_.size()), device_name(device_), long(step_), long(total_),
                opt_.out_dir.c_str());
  using clock = std::chrono::steady_clock;
  auto t_start = clock::now(), t_last = t_start;
  int64_t steps_since = 0, start_step = step_;
  // Per-step values stay on the device and are summed there; they are read (one sync) only when a
  // line is logged, so the host runs ahead of the GPU between log lines.
  Tensor loss_sum;
  std::map<std::string, Tensor> extra_sum;
  auto accumulate = [](Tensor& acc, const Tensor& v) {
    if (!v.defined()) return;
    Tensor x = cast(v.detach(), DType::F64);
    acc = acc.defined() ? add(acc, x) : x;
  };
  Tensors model_params = model_->parameters();
  int64_t log_from = step_;
  while (step_ < total_) {
    optim_->lr = warmup_lr(cfg_.optimizer.lr, step_, cfg_.optimizer.warmup);
    Batch b = batcher_->next();
    model_->set_dropout(true, dropout_seed(cfg_.seed, step_));
    optim_->zero_grad();
    Method::StepOut r = method_->forward_backward(*model_, b.images, step_, rng_);
    if (r.update_model) {
      if (cfg_.optimizer.grad_clip > 0) accumulate(extra_sum["grad_norm"], clip_grad_norm_async(optim_->params, cfg_.optimizer.grad_clip));
      optim_->step();
      ema_->update(model_params);
    }
    optim_->zero_grad();
    model_->set_dropout(false, 0);
    ++step_;
    ++steps_since;
    accumulate(loss_sum, r.loss);
    for (auto& [k, v] : r.extra) accumulate(extra_sum[k], v);

    const bool out_of_time =
        opt_.max_seconds > 0 && std::chrono::duration<double>(clock::now() - t_start).count() > opt_.max_seconds;
    const bool last = step_ == total_ || out_of_time;
    if (step_ % S.log_every == 0 || last) {
      double loss = loss_sum.defined() ? loss_sum.item() / steps_since : 0;
      DF_CHECK(std::isfinite(loss), "train: the mean loss over steps ", log_from + 1, "-", step_, " is ", loss,
               " (lower optimizer.lr, set optimizer.grad_clip, or check the data)");
      auto now = clock::now();
      double dt = std::chrono::duration<double>(now - t_last).count();
      double its = steps_since / std::max(dt, 1e-9);
      double avg_its = (step_ - start_step) / std::max(std::chrono::duration<double>(now - t_start).count(), 1e-9);
      json j = {{"step", step_}, {"loss", loss}, {"lr", optim_->lr}, {"it_per_s", its},
                {"elapsed_s", std::chrono::duration<double>(now - t_start).count()}};
      for (auto& [k, v] : extra_sum)
        if (v.defined()) j[k] = v.item() / steps_since;
      metrics << j.dump() << "\n";
      metrics.flush();
      loss_log_.emplace_back(step_, loss);
      if (opt_.verbose) {
        std::printf("step %ld/%ld  loss %.5f  lr %.2e  %.2f it/s  ETA %s\n", long(step_), long(total_), loss,
                    optim_->lr, its, fmt_duration((total_ - step_) / std::max(avg_its, 1e-9)).c_str());
        std::fflush(stdout);
      }
      t_last = now;
      steps_since = 0;
      log_from = step_;
      loss_sum = Tensor();
      extra_sum.clear();
    }
    // The checkpoint first: a failure while sampling must not cost the training.
    if ((S.ckpt_every > 0 && step_ % S.ckpt_every == 0) || last) save_checkpoint(checkpoint_path());
    if ((S.sample_every > 0 && step_ % S.sample_every == 0) || last) {
      write_loss_plot();
      write_samples();
    }
    if (out_of_time) {
      if (opt_.verbose) std::printf("time limit of %.0f s reached at step %ld; --resume continues\n", opt_.max_seconds, long(step_));
      break;
    }
  }
}

LoadedRun load_run(const std::string& path, Device device) {
  Checkpoint ck = load_safetensors(path);
  const std::string fmt = ck.metadata.count("format") ? ck.metadata.at("format") : "";
  DF_CHECK(fmt == "dualflow-train-v1", path, ": not a dualflow training checkpoint (format '", fmt, "')");
  LoadedRun r;
  r.cfg = parse_config(parse_json_bounded(meta(ck, path, "dualflow.config"), path + ": metadata 'dualflow.config'"));
  json shape = parse_json_bounded(meta(ck, path, "dualflow.image_shape"), path + ": metadata 'dualflow.image_shape'");
  DF_CHECK(shape.is_array() && shape.size() == 3 && shape[0].is_number_integer() && shape[1].is_number_integer(), path,
           ": bad dualflow.image_shape ", json_excerpt(shape), " (expected [channels, height, width] integers)");
  r.channels = shape[0].get<int64_t>();
  r.resolution = shape[1].get<int64_t>();
  r.step = (int64_t)parse_u64(meta(ck, path, "dualflow.step"), path, "dualflow.step");
  Generator g(0);
  ModelConfig model_cfg;
  try {
    model_cfg = model_config_from_json(parse_json_bounded(meta(ck, path, "dualflow.model_config"), "metadata"),
                                       r.channels, r.resolution);
  } catch (const Error& e) {
    throw Error(path + ": metadata 'dualflow.model_config': " + e.what());
  }
  r.model = make_model(model_cfg, g, parse_dtype(r.cfg.dtype));
  NamedTensors ema = take_prefix(ck, "ema.");
  try {
    r.model->load_parameters(ema);
  } catch (const Error& e) {
    throw Error(path + ": EMA weights do not fit the model: " + e.what());
  }
  r.model->set_requires_grad(false);
  r.model->to(device);
  r.method = make_method(r.cfg, *r.model, /*with_teacher=*/false);
  return r;
}

}  // namespace df
