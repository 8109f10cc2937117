// Objective adapters for image training. Consistency losses work on flat (B, D) tensors, so the image
// model is wrapped to reshape. The batch arrives on the model's device and the objective arithmetic
// runs there; model_net still moves tensors across (differentiably) when a caller mixes devices.
#include "train/methods.h"

#include <cmath>
#include <nlohmann/json.hpp>

#include "ops/autocast.h"
#include "train/consistency.h"
#include "train/json_safe.h"
#include "train/optim.h"

namespace df {

Device model_device(const Module& m) {
  auto ps = m.named_parameters();
  return ps.empty() ? Device::CPU : ps.front().second.device();
}

DType model_dtype(const Module& m) {
  auto ps = m.named_parameters();
  return ps.empty() ? DType::F32 : ps.front().second.dtype();
}

Net model_net(const ImageDenoiser& model) {
  const ImageDenoiser* m = &model;
  return [m](const Tensor& x, const Tensor& c) {
    const Device d = model_device(*m), xd = x.device();
    Tensor y = m->forward(x.device() == d ? x : to_device(x, d), c.device() == d ? c : to_device(c, d));
    // Under a bf16 policy the network's last layer returns bf16: the objective (loss, sCM tangent
    // normalisation, weights) computes in the data's dtype; the cast passes tangents and gradients.
    if (y.dtype() != x.dtype()) y = cast(y, x.dtype());
    return xd == d ? y : to_device(y, xd);
  };
}

std::unique_ptr<DiffusionObjective> make_diffusion_objective(const ObjectiveConfig& o) {
  if (o.name == "edm") {
    auto e = std::make_unique<EDM>(o.sigma_d);
    e->P_mean = o.P_mean, e->P_std = o.P_std;
    e->sampler.sigma_min = o.sigma_min, e->sampler.sigma_max = o.sigma_max, e->sampler.rho = o.rho;
    return e;
  }
  if (o.name == "trigflow") {
    auto t = std::make_unique<TrigFlow>(o.sigma_d);
    t->P_mean = o.P_mean, t->P_std = o.P_std, t->sigma_max = o.sigma_max, t->second_order = o.second_order;
    return t;
  }
  if (o.name == "fm") {
    auto f = std::make_unique<FlowMatching>();
    f->time = o.fm_time == "uniform" ? FMTime::Uniform : FMTime::LogitNormal;
    f->ln_m = o.ln_m, f->ln_s = o.ln_s, f->shift = o.shift;
    return f;
  }
  if (o.name == "ddpm") {
    auto d = std::make_unique<DDPM>(o.T);
    d->sched = DDPMSchedule(o.T, o.beta_start, o.beta_end);
    d->ddim_eta = o.ddim_eta;
    return d;
  }
  DF_FAIL("make_diffusion_objective: '", o.name, "' is not a diffusion objective (edm, trigflow, fm, ddpm)");
}

// ---- teachers ----

Denoiser Teacher::denoiser() const { return objective->denoiser(model_net(*model)); }

TimeModel Teacher::trig_F(double sigma_d) const {
  auto* tf = dynamic_cast<const TrigFlow*>(objective.get());
  if (tf && tf->sigma_d == sigma_d && tf->c_noise_scale == 1) {
    Net net = model_net(*model);
    return [net, sigma_d](const Tensor& x, const Tensor& t) { return net(x / sigma_d, t); };
  }
  return trig_F_from_denoiser(denoiser(), sigma_d);   // exact change of parameterization (4.4)
}

Teacher load_teacher(const std::string& path, Device device, int64_t channels, int64_t resolution, DType dtype) {
  Checkpoint ck = load_safetensors(path);
  auto it = ck.metadata.find("dualflow.config");
  DF_CHECK(it != ck.metadata.end(), "teacher ", path, ": not a dualflow training checkpoint (no dualflow.config metadata)");
  Teacher t;
  t.cfg = parse_config(parse_json_bounded(it->second, "teacher " + path + ": metadata 'dualflow.config'"));
  DF_CHECK(!is_consistency_objective(t.cfg.objective.name), "teacher ", path, ": trained with '",
           t.cfg.objective.name, "', expected a diffusion objective (edm, trigflow, fm, ddpm)");
  Generator g(0);
  t.model = make_model(model_config_from_json(t.cfg.model, channels, resolution), g, dtype);
  NamedTensors ema;
  for (auto& [n, v] : ck.tensors)
    if (n.rfind("ema.", 0) == 0) ema.emplace_back(n.substr(4), v);
  DF_CHECK(!ema.empty(), "teacher ", path, ": no EMA weights (ema.*) in the checkpoint");
  t.model->load_parameters(ema);
  t.model->set_requires_grad(false);
  t.model->to(device);
  t.objective = make_diffusion_objective(t.cfg.objective);
  return t;
}

namespace {

NetFn flat_net(const Net& net, int64_t C, int64_t H, int64_t W) {
  return [net, C, H, W](const Tensor& u, const Tensor& c) {
    const int64_t B = u.size(0);
    return reshape(net(reshape(u, {B, C, H, W}), c), {B, C * H * W});
  };
}
NetFn flat_time_model(const TimeModel& m, int64_t C, int64_t H, int64_t W, double sigma_d) {
  // sCM's F(u = x/sigma_d, t) convention over a model F(x, t).
  return [m, C, H, W, sigma_d](const Tensor& u, const Tensor& t) {
    const int64_t B = u.size(0);
    return reshape(m(reshape(u * sigma_d, {B, C, H, W}), t), {B, C * H * W});
  };
}

struct Shape3 {
  int64_t C, H, W;
  int64_t D() const { return C * H * W; }
};
Shape3 image_shape(const ImageDenoiser& m) { return {m.in_channels, m.resolution, m.resolution}; }

class DiffusionMethod : public Method {
 public:
  explicit DiffusionMethod(const ObjectiveConfig& o) : obj_(make_diffusion_objective(o)), steps_(o.sample_steps) {}
  std::string name() const override { return obj_->name(); }
  StepOut forward_backward(const ImageDenoiser& model, const Tensor& x0, int64_t, Generator& g) override {
    Tensor loss = obj_->loss(model_net(model), x0, g);
    loss.backward();
    StepOut out;
    out.loss = loss.detach();
    return out;
  }
  Tensor sample(const ImageDenoiser& model, int64_t n, int steps, Generator& g) override {
    NoGrad ng;
    Shape3 s = image_shape(model);
    int k = steps > 0 ? steps : steps_ > 0 ? steps_ : default_steps();
    return obj_->sample(model_net(model), {n, s.C, s.H, s.W}, k, g, model_dtype(model));
  }

 private:
  int default_steps() const { return obj_->name() == "EDM" ? 18 : obj_->name() == "DDPM" ? 50 : 32; }
  std::unique_ptr<DiffusionObjective> obj_;
  int steps_;
};

SCMConfig scm_config(const ObjectiveConfig& o) {
  SCMConfig c;
  c.sigma_d = o.sigma_d, c.P_mean = o.P_mean, c.P_std = o.P_std, c.c = o.c;
  c.warmup_iters = o.warmup_iters;
  c.tangent = o.tangent == "jvp" ? SCMTangent::JVP : o.tangent == "discrete" ? SCMTangent::Discrete
                                                                              : SCMTangent::SemiDiscrete;
  return c;
}

// Loads the teacher's EMA weights into the student (same architecture required), as sCD/rCM/CD do.
void init_from(ImageDenoiser& student, const ImageDenoiser& teacher, const std::string& path) {
  try {
    student.load_parameters(teacher.named_parameters());
  } catch (const Error& e) {
    DF_FAIL("config: objective.teacher: the student model must have the teacher's architecture to start from its "
            "weights (", path, "): ", e.what());
  }
}

// sCT / sCD / rCM: TrigFlow consistency models trained with the JVP tangent.
class SCMMethod : public Method {
 public:
  SCMMethod(const TrainConfig& cfg, ImageDenoiser& model, bool with_teacher)
      : o_(cfg.objective), s_(image_shape(model)) {
    scm_ = scm_config(o_);
    const Device dev = model_device(model);
    if (o_.adaptive_weight) weight_ = std::make_unique<AdaptiveWeight>(o_.weight_emb_dim, model_dtype(model), dev);
    if (!with_teacher) return;
    if (o_.name != "sct") {
      teacher_ = std::make_unique<Teacher>(load_teacher(o_.teacher, dev, s_.C, s_.H, model_dtype(model)));
      teacher_F_ = flat_time_model(teacher_->trig_F(o_.sigma_d), s_.C, s_.H, s_.W, o_.sigma_d);
      init_from(model, *teacher_->model, o_.teacher);
    }
    if (o_.name == "rcm") {
      rcm_.scm = scm_;
      rcm_.scm.warmup_form = SCMWarmup::RCM;
      rcm_.scm.loss_scale = double(s_.D());   // rCM sums over D
      rcm_.lambda_dmd = o_.lambda_dmd;
      rcm_.student_update_freq = o_.student_update_freq;
      rcm_.warmup_iters = o_.dmd_warmup_iters;
      rcm_.max_rollout_steps = o_.max_rollout_steps;
      rcm_.P_mean_dmd = o_.P_mean_dmd, rcm_.P_std_dmd = o_.P_std_dmd;
      Generator g(0);
      critic_ = make_model(model_config_from_json(teacher_->cfg.model, s_.C, s_.H), g, model_dtype(model));
      critic_->load_parameters(teacher_->model->named_parameters());
      critic_->set_requires_grad(true);
      critic_->to(dev);
      double lr = o_.critic_lr > 0 ? o_.critic_lr : cfg.optimizer.lr;
      critic_opt_ = make_adamw(critic_->parameters(), lr, 0.0, 0.999, 1e-8, 0.01);
    }
  }
  std::string name() const override { return o_.name; }

  StepOut forward_backward(const ImageDenoiser& model, const Tensor& x0_img, int64_t step, Generator& g) override {
    NetFn F = flat_net(model_net(model), s_.C, s_.H, s_.W);
    Tensor x0 = reshape(x0_img, {x0_img.size(0), s_.D()});
    WeightFn w;
    if (weight_) w = weight_->fn();   // lives on the model's device, like everything the step touches
    StepOut out;
    if (o_.name == "sct") {
      SCMLoss L = sct_loss(F, w, x0, step, scm_, g);
      L.loss.backward();
      out.loss = L.loss.detach();
      out.extra["nan_samples"] = L.nan_count;
      return out;
    }
    if (o_.name == "scd") {
      SCMLoss L = scd_loss(F, w, teacher_F_, x0, step, scm_, g);
      L.loss.backward();
      out.loss = L.loss.detach();
      out.extra["nan_samples"] = L.nan_count;
      return out;
    }
    // rCM: student steps (sCD + lambda DMD) and critic steps (fake-score flow matching) alternate.
    const int64_t B = x0.size(0);
    const bool student = rcm_is_student_step(step, rcm_.warmup_iters, rcm_.student_update_freq);
    const int64_t eff = rcm_effective_iter(step, rcm_.warmup_iters, rcm_.student_update_freq);
    const int64_t n_roll = rcm_rollout_steps(eff, rcm_, g);
    const double sd = o_.sigma_d, t_max = std::atan(o_.sigma_max / sd);
    NetFn Ff = flat_net(model_net(*critic_), s_.C, s_.H, s_.W);
    NetFn Ft = teacher_F_;
    if (student) {
      SCMLoss L = scd_loss(F, w, Ft, x0, eff, rcm_.scm, g);
      Tensor loss = L.loss;
      if (step >= rcm_.warmup_iters) {
        DenoiserFn f_teacher = [Ft, sd](const Tensor& x, const Tensor& t) { return trigflow_consistency(Ft, x, t, sd); };
        DenoiserFn f_fake = [Ff, sd](const Tensor& x, const Tensor& t) { return trigflow_consistency(Ff, x, t, sd); };
        Tensor xs = rcm_rollout(F, B, s_.D(), n_roll, t_max, rcm_, g, x0.dtype(), nullptr, x0.device());
        Tensor tD = trigflow_sample_t(B, g, rcm_.P_mean_dmd, rcm_.P_std_dmd, sd, x0.dtype(), x0.device());
        DMDLoss d = dmd_loss(xs, f_teacher, f_fake, tD, sd, g);
        loss = loss + rcm_.lambda_dmd * d.loss;
        out.extra["dmd"] = d.loss.detach();
      }
      critic_opt_->zero_grad();
      loss.backward();
      critic_opt_->zero_grad();   // the critic only learns on its own steps
      out.loss = loss.detach();
      return out;
    }
    Tensor xs;
    {
      NoGrad ng;
      xs = rcm_rollout(F, B, s_.D(), n_roll, t_max, rcm_, g, x0.dtype(), nullptr, x0.device()).detach();
    }
    Tensor tD = trigflow_sample_t(B, g, rcm_.P_mean_dmd, rcm_.P_std_dmd, sd, x0.dtype(), x0.device());
    critic_opt_->zero_grad();
    Tensor L = critic_flow_loss(Ff, xs, tD, sd, g);
    L.backward();
    critic_opt_->step();
    out.update_model = false;
    out.loss = L.detach();
    out.extra["critic"] = out.loss;
    return out;
  }

  Tensor sample(const ImageDenoiser& model, int64_t n, int steps, Generator& g) override {
    NoGrad ng;
    int k = steps > 0 ? steps : o_.sample_steps > 0 ? o_.sample_steps : 2;
    NetFn F = flat_net(model_net(model), s_.C, s_.H, s_.W);
    std::vector<double> ts = o_.name == "rcm" ? rcm_sampler_times(k, o_.sigma_d, o_.sigma_max)
                                               : scm_sampler_times(k, o_.sigma_d, o_.sigma_max);
    Tensor x = trigflow_consistency_sample(F, n, s_.D(), ts, o_.sigma_d, g, model_dtype(model));
    return reshape(x, {n, s_.C, s_.H, s_.W});
  }

  NamedTensors extra_parameters() const override {
    if (!weight_) return {};
    return {{"weight_head.weight", weight_->weight}, {"weight_head.bias", weight_->bias}};
  }
  NamedTensors extra_state() const override {
    NamedTensors s;
    if (!critic_) return s;
    for (auto& [n, p] : critic_->named_parameters()) s.emplace_back("critic." + n, p);
    for (auto& [n, v] : critic_opt_->state()) s.emplace_back("critic_optim." + n, v);
    return s;
  }
  void load_extra_state(const NamedTensors& s) override {
    if (!critic_) return;   // sampling-only: the critic is not needed
    NamedTensors params, opt;
    for (auto& [n, v] : s) {
      if (n.rfind("critic.", 0) == 0) params.emplace_back(n.substr(7), v);
      else if (n.rfind("critic_optim.", 0) == 0) opt.emplace_back(n.substr(13), v);
    }
    critic_->load_parameters(params);
    critic_opt_->load_state(opt);
  }

 private:
  ObjectiveConfig o_;
  Shape3 s_;
  SCMConfig scm_;
  RCMConfig rcm_;
  std::unique_ptr<Teacher> teacher_;
  NetFn teacher_F_;
  std::unique_ptr<AdaptiveWeight> weight_;
  std::shared_ptr<ImageDenoiser> critic_;
  std::unique_ptr<Optimizer> critic_opt_;
};

// Discrete-time CT / CD (iCT-style: the online network under NoGrad is the target).
class CMMethod : public Method {
 public:
  CMMethod(const TrainConfig& cfg, ImageDenoiser& model, bool with_teacher)
      : o_(cfg.objective), s_(image_shape(model)), K_(o_.curriculum_steps > 0 ? o_.curriculum_steps : cfg.schedule.steps) {
    ct_.cm.sigma_d = o_.sigma_d, ct_.cm.sigma_min = o_.sigma_min, ct_.cm.sigma_max = o_.sigma_max, ct_.cm.rho = o_.rho;
    ct_.metric = o_.metric == "l2" ? CMMetric::L2 : CMMetric::PseudoHuber;
    if (o_.name == "cd" && with_teacher) {
      teacher_ = std::make_unique<Teacher>(
          load_teacher(o_.teacher, model_device(model), s_.C, s_.H, model_dtype(model)));
      init_from(model, *teacher_->model, o_.teacher);
    }
  }
  std::string name() const override { return o_.name; }
  StepOut forward_backward(const ImageDenoiser& model, const Tensor& x0_img, int64_t step, Generator& g) override {
    NetFn F = flat_net(model_net(model), s_.C, s_.H, s_.W);
    Tensor x0 = reshape(x0_img, {x0_img.size(0), s_.D()});
    DenoiserFn teacher;
    if (teacher_) {
      Denoiser D = teacher_->denoiser();
      Shape3 s = s_;
      teacher = [D, s](const Tensor& x, const Tensor& sigma) {
        const int64_t B = x.size(0);
        return reshape(D(reshape(x, {B, s.C, s.H, s.W}), sigma), {B, s.D()});
      };
    }
    int64_t N = ict_num_steps(std::min(step, K_ - 1), K_, o_.s0, o_.s1);
    CMLoss L = cm_discrete_loss(F, F, teacher, x0, N, ct_, g);
    L.loss.backward();
    StepOut out;
    out.loss = L.loss.detach();
    return out;
  }
  Tensor sample(const ImageDenoiser& model, int64_t n, int steps, Generator& g) override {
    NoGrad ng;
    int k = steps > 0 ? steps : o_.sample_steps > 0 ? o_.sample_steps : 2;
    std::vector<double> sig{o_.sigma_max};
    for (int i = 1; i < k; ++i) sig.push_back(std::min(o_.sigma_max, 0.8 * std::pow(0.25, i - 1)));
    NetFn F = flat_net(model_net(model), s_.C, s_.H, s_.W);
    return reshape(cm_multistep_sample(F, n, s_.D(), sig, ct_.cm, g, model_dtype(model)), {n, s_.C, s_.H, s_.W});
  }

 private:
  ObjectiveConfig o_;
  Shape3 s_;
  int64_t K_;
  CTConfig ct_;
  std::unique_ptr<Teacher> teacher_;
};

// Mixed precision (config "precision": "bf16"): the method's step and its sampler run inside an
// Autocast scope; parameters, gradients, optimizer state and EMA stay f32 outside it.
class AutocastMethod : public Method {
 public:
  AutocastMethod(std::unique_ptr<Method> inner, DType compute) : inner_(std::move(inner)), compute_(compute) {}
  std::string name() const override { return inner_->name(); }
  StepOut forward_backward(const ImageDenoiser& model, const Tensor& x0, int64_t step, Generator& g) override {
    Autocast amp(compute_);
    return inner_->forward_backward(model, x0, step, g);
  }
  Tensor sample(const ImageDenoiser& model, int64_t n, int steps, Generator& g) override {
    Autocast amp(compute_);
    return inner_->sample(model, n, steps, g);
  }
  NamedTensors extra_parameters() const override { return inner_->extra_parameters(); }
  NamedTensors extra_state() const override { return inner_->extra_state(); }
  void load_extra_state(const NamedTensors& s) override { inner_->load_extra_state(s); }

 private:
  std::unique_ptr<Method> inner_;
  DType compute_;
};

std::unique_ptr<Method> make_objective_method(const TrainConfig& cfg, ImageDenoiser& model, bool with_teacher) {
  const std::string& n = cfg.objective.name;
  if (n == "sct" || n == "scd" || n == "rcm") return std::make_unique<SCMMethod>(cfg, model, with_teacher);
  if (n == "ct" || n == "cd") return std::make_unique<CMMethod>(cfg, model, with_teacher);
  return std::make_unique<DiffusionMethod>(cfg.objective);
}

}  // namespace

std::unique_ptr<Method> make_method(const TrainConfig& cfg, ImageDenoiser& model, bool with_teacher) {
  std::unique_ptr<Method> m = make_objective_method(cfg, model, with_teacher);
  if (cfg.precision == "f32") return m;
  DF_CHECK(cfg.precision == "bf16", "config: precision: expected \"f32\" or \"bf16\", got \"", cfg.precision, "\"");
  if (model_device(model) == Device::CUDA) return std::make_unique<AutocastMethod>(std::move(m), DType::BF16);
  // A bf16 run's checkpoint can still be sampled on the CPU (f32 weights, f32 compute); training can't.
  DF_CHECK(!with_teacher, "config: precision: \"bf16\" needs device \"cuda\" (the CPU kernels are f32/f64 "
           "only), got the model on cpu; use \"precision\": \"f32\" on the CPU");
  return m;
}

}  // namespace df
