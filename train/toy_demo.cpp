// Training loops, samplers and scoring of the 2-D consistency demo (the objectives themselves are in
// diffusion.cpp, scm.cpp, rcm.cpp and cm.cpp; this file only wires them to MLPs and toy data).
#include "train/toy_demo.h"

#include <chrono>
#include <cmath>
#include <ctime>

#include "train/diffusion.h"
#include "train/metrics.h"
#include "train/optim.h"
#include "train/toy_data.h"

namespace df {
namespace {

uint64_t method_seed(uint64_t seed, ToyMethod m) { return seed * 1000003ull + 7919ull * (uint64_t(m) + 1); }

// Wall and thread-CPU stopwatch for one training run.
struct Stopwatch {
  std::chrono::steady_clock::time_point t0 = std::chrono::steady_clock::now();
  double c0 = thread_cpu_seconds();
  void stamp(ToyModel& m) const {
    m.wall_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    m.cpu_s = thread_cpu_seconds() - c0;
  }
};

// Warm-up over the first 100 steps, constant, then a linear decay to 0 over the last third.
double lr_at(double base, int64_t it, int64_t iters) {
  return warmup_lr(base, it, 100) * std::min(1.0, 3.0 * double(iters - it) / double(iters));
}

}  // namespace

const char* toy_method_name(ToyMethod m) {
  switch (m) {
    case ToyMethod::Teacher: return "teacher";
    case ToyMethod::SCD: return "sCD";
    case ToyMethod::SCT: return "sCT";
    case ToyMethod::RCM: return "rCM";
    case ToyMethod::CD: return "CD";
    case ToyMethod::CT: return "CT";
  }
  return "?";
}

const std::vector<ToyMethod>& toy_students() {
  static const std::vector<ToyMethod> s{ToyMethod::SCD, ToyMethod::SCT, ToyMethod::RCM, ToyMethod::CD,
                                        ToyMethod::CT};
  return s;
}

double thread_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
}

ToyDemo::ToyDemo(ToyDemoConfig cfg) : cfg_(std::move(cfg)) {
  DF_CHECK(cfg_.sigma_d > 0 && cfg_.data_std > 0, "ToyDemo: expected sigma_d > 0 and data_std > 0, got ",
           cfg_.sigma_d, " and ", cfg_.data_std);
  DF_CHECK(cfg_.teacher_iters > 0 && cfg_.student_iters > 0 && cfg_.batch > 0, "ToyDemo: expected positive "
           "teacher_iters, student_iters and batch, got ", cfg_.teacher_iters, ", ", cfg_.student_iters, ", ",
           cfg_.batch);
  Generator g(12345);
  Tensor probe = sample_toy(cfg_.data, 20000, g, DType::F64);
  NoGrad ng;
  // The mean per-dimension variance (the sets are centred, so this is the second moment's scale).
  scale_ = cfg_.data_std / std::sqrt(var(probe).item());
}

Tensor ToyDemo::batch(int64_t n, Generator& g) const { return sample_toy(cfg_.data, n, g, DType::F32) * scale_; }

NetFn ToyDemo::net_fn(const MLPDenoiser& m) const {
  return [&m](const Tensor& u, const Tensor& c) { return m.forward(u, c); };
}

std::shared_ptr<MLPDenoiser> ToyDemo::new_net(Generator& g) const {
  return std::make_shared<MLPDenoiser>(2, cfg_.hidden, cfg_.depth, g, DType::F32);
}

ToyModel ToyDemo::train_teacher() const {
  Stopwatch sw;
  Generator g(method_seed(cfg_.seed, ToyMethod::Teacher));
  ToyModel res;
  res.method = ToyMethod::Teacher;
  res.net = new_net(g);
  NetFn F = net_fn(*res.net);
  TrigFlow trig(cfg_.sigma_d);
  trig.P_mean = cfg_.P_mean;
  trig.P_std = cfg_.P_std;
  auto opt = make_adam(res.net->parameters(), cfg_.teacher_lr);
  EMA ema(res.net->parameters(), cfg_.teacher_ema);
  for (int64_t it = 0; it < cfg_.teacher_iters; ++it) {
    Tensor L = trig.loss(F, batch(cfg_.batch, g), g);
    opt->zero_grad();
    L.backward();
    opt->lr = lr_at(cfg_.teacher_lr, it, cfg_.teacher_iters);
    opt->step();
    ema.update(res.net->parameters());
  }
  ema.copy_to(res.net->parameters());
  res.net->set_requires_grad(false);
  sw.stamp(res);
  return res;
}

ToyModel ToyDemo::train_student(ToyMethod m, const ToyModel& teacher) const {
  DF_CHECK(teacher.method == ToyMethod::Teacher && teacher.net, "ToyDemo::train_student: expected a trained "
           "teacher, got ", toy_method_name(teacher.method), teacher.net ? "" : " without a network");
  switch (m) {
    case ToyMethod::SCD:
    case ToyMethod::SCT: return train_scm(m, teacher);
    case ToyMethod::RCM: return train_rcm(teacher);
    case ToyMethod::CD:
    case ToyMethod::CT: return train_discrete(m, teacher);
    case ToyMethod::Teacher: break;
  }
  DF_FAIL("ToyDemo::train_student: the teacher is not a student (use train_teacher)");
}

// sCD and sCT (ALGORITHMS 6), initialised from the teacher, with the adaptive weight w(t).
ToyModel ToyDemo::train_scm(ToyMethod m, const ToyModel& teacher) const {
  Stopwatch sw;
  Generator g(method_seed(cfg_.seed, m));
  const bool distill = m == ToyMethod::SCD;
  ToyModel res;
  res.method = m;
  res.net = new_net(g);
  res.net->load_parameters(teacher.net->named_parameters());
  res.net->set_requires_grad(true);
  NetFn Fs = net_fn(*res.net), Ft = net_fn(*teacher.net);
  AdaptiveWeight wnet(32);
  Tensors ps = res.net->parameters();
  for (auto& p : wnet.parameters()) ps.push_back(p);
  auto opt = make_adam(ps, cfg_.student_lr, 0.9, 0.99);
  EMA ema(res.net->parameters(), cfg_.student_ema);
  SCMConfig sc;
  sc.sigma_d = cfg_.sigma_d;
  sc.P_mean = cfg_.scm_P_mean;
  sc.P_std = cfg_.scm_P_std;
  sc.warmup_iters = cfg_.student_iters / 8;
  for (int64_t it = 0; it < cfg_.student_iters; ++it) {
    SCMLoss L = distill ? scd_loss(Fs, wnet.fn(), Ft, batch(cfg_.batch, g), it, sc, g)
                        : sct_loss(Fs, wnet.fn(), batch(cfg_.batch, g), it, sc, g);
    opt->zero_grad();
    L.loss.backward();
    opt->step();
    ema.update(res.net->parameters());
  }
  ema.copy_to(res.net->parameters());
  res.net->set_requires_grad(false);
  sw.stamp(res);
  return res;
}

// rCM (ALGORITHMS 8): sCD in rCM's warm-up form plus lambda * DMD, the fake score trained by flow
// matching on the student's rollouts between student steps.
ToyModel ToyDemo::train_rcm(const ToyModel& teacher) const {
  Stopwatch sw;
  Generator g(method_seed(cfg_.seed, ToyMethod::RCM));
  const double sd = cfg_.sigma_d;
  ToyModel res;
  res.method = ToyMethod::RCM;
  res.net = new_net(g);
  auto fake = new_net(g);
  res.net->load_parameters(teacher.net->named_parameters());
  fake->load_parameters(teacher.net->named_parameters());
  res.net->set_requires_grad(true);
  fake->set_requires_grad(true);
  NetFn Fs = net_fn(*res.net), Ff = net_fn(*fake), Ft = net_fn(*teacher.net);
  DenoiserFn f_teacher = [&](const Tensor& x, const Tensor& t) { return trigflow_consistency(Ft, x, t, sd); };
  DenoiserFn f_fake = [&](const Tensor& x, const Tensor& t) { return trigflow_consistency(Ff, x, t, sd); };
  RCMConfig rc;
  rc.scm.sigma_d = sd;
  rc.scm.P_mean = cfg_.scm_P_mean;
  rc.scm.P_std = cfg_.scm_P_std;
  rc.scm.warmup_form = SCMWarmup::RCM;
  rc.scm.warmup_iters = 0;
  rc.scm.loss_scale = 2;   // sum over D, as rCM
  rc.lambda_dmd = cfg_.rcm_lambda;
  rc.student_update_freq = cfg_.rcm_update_freq;
  rc.warmup_iters = cfg_.student_iters / 8;
  auto opt_s = make_adamw(res.net->parameters(), cfg_.student_lr, 0.0, 0.999, 1e-8, 0.01);
  auto opt_f = make_adamw(fake->parameters(), 2 * cfg_.student_lr, 0.0, 0.999, 1e-8, 0.01);
  EMA ema(res.net->parameters(), cfg_.student_ema);
  const double t_max = std::atan(80 / sd);
  const int64_t B = cfg_.batch;
  // As many student steps as sCD gets, critic steps in between.
  const int64_t total = rc.warmup_iters + (cfg_.student_iters - rc.warmup_iters) * rc.student_update_freq;
  for (int64_t it = 0; it < total; ++it) {
    const bool student = rcm_is_student_step(it, rc.warmup_iters, rc.student_update_freq);
    const int64_t eff = rcm_effective_iter(it, rc.warmup_iters, rc.student_update_freq);
    const int64_t n_roll = rcm_rollout_steps(eff, rc, g);
    if (student) {
      SCMLoss L = scd_loss(Fs, nullptr, Ft, batch(B, g), eff, rc.scm, g);
      Tensor loss = L.loss;
      if (it >= rc.warmup_iters) {
        Tensor x0 = rcm_rollout(Fs, B, 2, n_roll, t_max, rc, g, DType::F32);
        Tensor tD = trigflow_sample_t(B, g, rc.P_mean_dmd, rc.P_std_dmd, sd, DType::F32);
        loss = loss + rc.lambda_dmd * dmd_loss(x0, f_teacher, f_fake, tD, sd, g).loss;
      }
      opt_s->zero_grad();
      opt_f->zero_grad();
      loss.backward();
      opt_s->step();
      ema.update(res.net->parameters());
    } else {
      Tensor x0;
      {
        NoGrad ng;
        x0 = rcm_rollout(Fs, B, 2, n_roll, t_max, rc, g, DType::F32).detach();
      }
      Tensor tD = trigflow_sample_t(B, g, rc.P_mean_dmd, rc.P_std_dmd, sd, DType::F32);
      Tensor L = critic_flow_loss(Ff, x0, tD, sd, g);
      opt_f->zero_grad();
      L.backward();
      opt_f->step();
    }
  }
  ema.copy_to(res.net->parameters());
  res.net->set_requires_grad(false);
  sw.stamp(res);
  return res;
}

// Discrete-time CD and CT (ALGORITHMS 5) from scratch, EDM boundary parameterisation: CD with a fixed
// N and an EMA target (mu = 0.95), CT with iCT's doubling curriculum and sg(theta) as the target.
ToyModel ToyDemo::train_discrete(ToyMethod m, const ToyModel& teacher) const {
  Stopwatch sw;
  Generator g(method_seed(cfg_.seed, m));
  const bool distill = m == ToyMethod::CD;
  const double sd = cfg_.sigma_d;
  ToyModel res;
  res.method = m;
  res.net = new_net(g);
  auto tgt = new_net(g);
  tgt->load_parameters(res.net->named_parameters());
  tgt->set_requires_grad(false);
  NetFn Fn = net_fn(*res.net), Fg = net_fn(*tgt), Ft = net_fn(*teacher.net);
  CTConfig cfg;
  cfg.cm.sigma_d = sd;
  DenoiserFn teacher_edm;
  if (distill) {
    // The TrigFlow teacher as an EDM denoiser (4.4): t = atan(sigma / sigma_d), x_t = cos t x.
    teacher_edm = [&](const Tensor& x, const Tensor& sig) {
      Tensor t = atan(sig / sd);
      return trigflow_consistency(Ft, per_sample(cos(t), 2) * x, t, sd);
    };
  }
  auto opt = make_radam(res.net->parameters(), 1e-3);
  EMA ema(res.net->parameters(), cfg_.student_ema);
  for (int64_t it = 0; it < cfg_.student_iters; ++it) {
    const int64_t N = distill ? cfg_.cd_teacher_steps : ict_num_steps(it, cfg_.student_iters, 10, 160);
    CMLoss L = cm_discrete_loss(Fn, distill ? Fg : Fn, teacher_edm, batch(cfg_.batch, g), N, cfg, g);
    opt->zero_grad();
    L.loss.backward();
    opt->step();
    if (distill) ema_update_inplace(tgt->parameters(), res.net->parameters(), 0.95);
    ema.update(res.net->parameters());
  }
  ema.copy_to(res.net->parameters());
  res.net->set_requires_grad(false);
  sw.stamp(res);
  return res;
}

std::vector<double> toy_consistency_times(int nfe, double sigma_d) { return scm_sampler_times(nfe, sigma_d); }

Tensor ToyDemo::sample(const ToyModel& m, int nfe, int64_t n, Generator& g) const {
  DF_CHECK(nfe >= 1, "ToyDemo::sample: expected nfe >= 1, got ", nfe);
  DF_CHECK(m.net, "ToyDemo::sample: ", toy_method_name(m.method), " has no network");
  NoGrad ng;
  const double sd = cfg_.sigma_d;
  NetFn F = net_fn(*m.net);
  Tensor x;
  switch (m.method) {
    case ToyMethod::Teacher: {
      TimeModel Fm = [&](const Tensor& x_t, const Tensor& t) { return F(x_t / sd, t); };
      x = trig_dpm2m_sample(Fm, g.randn({n, 2}) * sd, trig_time_grid(nfe, sd), sd);
      break;
    }
    case ToyMethod::SCD:
    case ToyMethod::SCT:
    case ToyMethod::RCM: x = trigflow_consistency_sample(F, n, 2, toy_consistency_times(nfe, sd), sd, g, DType::F32); break;
    case ToyMethod::CD:
    case ToyMethod::CT: {
      std::vector<double> sig{80.0};
      std::vector<double> ts = toy_consistency_times(nfe, sd);
      for (size_t k = 1; k < ts.size(); ++k) sig.push_back(sd * std::tan(ts[k]));
      CMConfig cm;
      cm.sigma_d = sd;
      x = cm_multistep_sample(F, n, 2, sig, cm, g, DType::F32);
      break;
    }
  }
  return (x * (1.0 / scale_)).detach();
}

ToyReference::ToyReference(const std::string& data, int64_t n, int reps, uint64_t seed) : data_(data), n_(n) {
  DF_CHECK(n > 1 && reps > 0, "ToyReference: expected n > 1 and reps > 0, got ", n, " and ", reps);
  Generator g(seed);
  for (int r = 0; r < reps; ++r) {
    refs_.push_back(sample_toy(data, n, g, DType::F64));
    sw2_.emplace_back(refs_.back(), 128, 100 + r);
  }
  floor_ = score([&](Generator& gg) { return sample_toy(data_, n_, gg, DType::F64); }, seed + 1);
}

ToyScore ToyReference::score(const std::function<Tensor(Generator&)>& draw, uint64_t seed) const {
  Generator g(seed);
  ToyScore s;
  const double R = double(refs_.size());
  double sq = 0;
  for (size_t r = 0; r < refs_.size(); ++r) {
    Tensor x = draw(g);
    DF_CHECK(x.dim() == 2 && x.size(0) == n_ && x.size(1) == 2, "ToyReference::score: expected (", n_,
             ", 2) points, got ", x.desc());
    const double w = sw2_[r](x);
    s.sw2 += w / R;
    sq += w * w / R;
    s.support += support_fraction(data_, x) / R;
  }
  if (R > 1) s.sw2_se = std::sqrt(std::max(0.0, sq - s.sw2 * s.sw2) * R / (R - 1) / R);
  return s;
}

}  // namespace df
