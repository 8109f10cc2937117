// Few-step generation on a 2-D toy set: trains a TrigFlow teacher, then distils/trains consistency
// students (sCD, sCT, rCM, and discrete CD/CT for comparison), prints a quality table and writes one
// scatter panel per method. `--quick` is the short run behind `make demo` (writes demo.png).
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "models/mlp.h"
#include "train/consistency.h"
#include "train/diffusion.h"
#include "train/metrics.h"
#include "train/optim.h"
#include "train/plot.h"
#include "train/toy_data.h"

using namespace df;

namespace {

struct Options {
  bool quick = false;
  std::string data = "8gaussians", out = "toy2d_consistency.png";
  int teacher_iters = 6000, student_iters = 4000, hidden = 128, depth = 3, batch = 256;
  int eval_n = 4000, teacher_steps = 32;
  uint64_t seed = 0;
};

const double kSigmaD = 0.5;

// The toy sets have per-dimension std ~1-2; the models see data rescaled to std sigma_d.
struct Scaler {
  double scale = 1;   // model = data * scale
  Tensor to_model(const Tensor& x) const { return x * scale; }
  Tensor to_data(const Tensor& x) const { return x * (1.0 / scale); }
};

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

NetFn as_fn(const MLPDenoiser& m) {
  return [&m](const Tensor& u, const Tensor& c) { return m.forward(u, c); };
}

std::shared_ptr<MLPDenoiser> clone(const MLPDenoiser& src, const Options& o, Generator& g) {
  auto m = std::make_shared<MLPDenoiser>(2, o.hidden, o.depth, g, DType::F32);
  m->load_parameters(src.named_parameters());
  return m;
}

// The teacher's samples: first-order TrigFlow DDIM (ALGORITHMS 4.6) on the EDM rho grid in t.
Tensor teacher_sample(const TrigFlow& obj, const Net& net, int64_t n, int steps, Generator& g) {
  NoGrad ng;
  return trig_ddim_sample(obj.F_model(net), g.randn({n, 2}) * kSigmaD, trig_time_grid(steps, kSigmaD), kSigmaD);
}

struct Row {
  std::string method;
  int steps;
  Tensor samples;   // data units
  double train_s;
};

}  // namespace

int main(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i)
    if (std::strcmp(argv[i], "--quick") == 0) {
      // Sized for `make demo`: well under 90 s on 2 cores.
      o.quick = true;
      o.teacher_iters = 3000;
      o.student_iters = 1000;
      o.hidden = 64;
      o.depth = 2;
      o.eval_n = 2000;
      o.out = "demo.png";
    }
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) { std::fprintf(stderr, "%s needs a value\n", a.c_str()); std::exit(2); }
      return argv[++i];
    };
    if (a == "--quick") o.quick = true;
    else if (a == "--data") o.data = next();
    else if (a == "--out") o.out = next();
    else if (a == "--seed") o.seed = std::stoull(next());
    else if (a == "--teacher-iters") o.teacher_iters = std::stoi(next());
    else if (a == "--student-iters") o.student_iters = std::stoi(next());
    else {
      std::fprintf(stderr, "usage: %s [--quick] [--data NAME] [--out PNG] [--seed N] [--teacher-iters N] "
                   "[--student-iters N]\n", argv[0]);
      return a == "--help" ? 0 : 2;
    }
  }
  auto T0 = std::chrono::steady_clock::now();
  Generator g(o.seed);
  Scaler sc;
  {
    Tensor probe = sample_toy(o.data, 20000, g, DType::F64);
    auto v = probe.to_vector();
    double m[2] = {0, 0}, s2[2] = {0, 0};
    for (size_t i = 0; i < v.size(); ++i) m[i % 2] += v[i] / 20000, s2[i % 2] += v[i] * v[i] / 20000;
    double sd = std::sqrt(0.5 * (s2[0] - m[0] * m[0] + s2[1] - m[1] * m[1]));
    sc.scale = kSigmaD / sd;
  }
  auto batch = [&]() { return sc.to_model(sample_toy(o.data, o.batch, g, DType::F32)); };
  std::vector<Row> rows;

  // ---- TrigFlow teacher (train/diffusion.h, ALGORITHMS 4.2), c_noise(t) = t ----
  auto t0 = std::chrono::steady_clock::now();
  MLPDenoiser teacher(2, o.hidden, o.depth, g, DType::F32);
  NetFn Ft = as_fn(teacher);
  TrigFlow trig(kSigmaD);
  trig.P_mean = -0.8;
  trig.P_std = 1.6;
  {
    auto opt = make_adam(teacher.parameters(), 2e-3);
    EMA ema(teacher.parameters(), 0.998);
    for (int it = 0; it < o.teacher_iters; ++it) {
      Tensor L = trig.loss(Ft, batch(), g);
      opt->zero_grad();
      L.backward();
      opt->step();
      ema.update(teacher.parameters());
    }
    ema.copy_to(teacher.parameters());
  }
  teacher.set_requires_grad(false);
  rows.push_back({"teacher DDIM", o.teacher_steps, sc.to_data(teacher_sample(trig, Ft, o.eval_n, o.teacher_steps, g)),
                  seconds_since(t0)});
  std::printf("teacher trained (%d iters) in %.1fs\n", o.teacher_iters, seconds_since(t0));

  auto eval_student = [&](const std::string& name, const NetFn& F, double secs) {
    for (int steps : {1, 2}) {
      Tensor x = trigflow_consistency_sample(F, o.eval_n, 2, scm_sampler_times(steps, kSigmaD), kSigmaD, g,
                                             DType::F32);
      rows.push_back({name, steps, sc.to_data(x), secs});
    }
  };

  // ---- sCD and sCT (ALGORITHMS 6), initialised from the teacher ----
  for (bool distill : {true, false}) {
    t0 = std::chrono::steady_clock::now();
    auto stu = clone(teacher, o, g);
    stu->set_requires_grad(true);
    AdaptiveWeight wnet(32);
    NetFn Fs = as_fn(*stu);
    Tensors ps = stu->parameters();
    for (auto& p : wnet.parameters()) ps.push_back(p);
    auto opt = make_adam(ps, 5e-4, 0.9, 0.99);
    EMA ema(stu->parameters(), 0.995);
    SCMConfig cfg;
    cfg.sigma_d = kSigmaD;
    cfg.warmup_iters = o.student_iters / 8;
    for (int it = 0; it < o.student_iters; ++it) {
      SCMLoss L = distill ? scd_loss(Fs, wnet.fn(), Ft, batch(), it, cfg, g)
                          : sct_loss(Fs, wnet.fn(), batch(), it, cfg, g);
      opt->zero_grad();
      L.loss.backward();
      opt->step();
      ema.update(stu->parameters());
    }
    ema.copy_to(stu->parameters());
    eval_student(distill ? "sCD" : "sCT", Fs, seconds_since(t0));
  }

  // ---- rCM (ALGORITHMS 8): sCD with rCM's warm-up form + lambda * DMD, fake score by flow matching ----
  {
    t0 = std::chrono::steady_clock::now();
    auto stu = clone(teacher, o, g), fake = clone(teacher, o, g);
    stu->set_requires_grad(true);
    fake->set_requires_grad(true);
    NetFn Fs = as_fn(*stu), Ff = as_fn(*fake);
    DenoiserFn f_teacher = [&](const Tensor& x, const Tensor& t) { return trigflow_consistency(Ft, x, t, kSigmaD); };
    DenoiserFn f_fake = [&](const Tensor& x, const Tensor& t) { return trigflow_consistency(Ff, x, t, kSigmaD); };
    RCMConfig rc;
    rc.scm.sigma_d = kSigmaD;
    rc.scm.warmup_form = SCMWarmup::RCM;
    rc.scm.warmup_iters = 0;
    rc.scm.loss_scale = 2;           // sum over D, as rCM
    rc.lambda_dmd = 0.1;             // toy data: a stronger regulariser than the paper's 0.01
    rc.student_update_freq = o.quick ? 2 : 3;
    rc.warmup_iters = o.student_iters / 8;
    auto opt_s = make_adamw(stu->parameters(), 5e-4, 0.0, 0.999, 1e-8, 0.01);
    auto opt_f = make_adamw(fake->parameters(), 1e-3, 0.0, 0.999, 1e-8, 0.01);
    EMA ema(stu->parameters(), 0.995);
    const double t_max = std::atan(80 / kSigmaD);
    // Student steps as many as sCD gets; critic steps in between.
    const int64_t total = rc.warmup_iters + (o.student_iters - rc.warmup_iters) * rc.student_update_freq;
    for (int64_t it = 0; it < total; ++it) {
      const bool student = rcm_is_student_step(it, rc.warmup_iters, rc.student_update_freq);
      const int64_t eff = rcm_effective_iter(it, rc.warmup_iters, rc.student_update_freq);
      const int64_t n_roll = rcm_rollout_steps(eff, rc, g);
      if (student) {
        SCMLoss L = scd_loss(Fs, nullptr, Ft, batch(), eff, rc.scm, g);
        Tensor loss = L.loss;
        if (it >= rc.warmup_iters) {
          Tensor x0 = rcm_rollout(Fs, o.batch, 2, n_roll, t_max, rc, g, DType::F32);
          Tensor tD = trigflow_sample_t(o.batch, g, rc.P_mean_dmd, rc.P_std_dmd, kSigmaD, DType::F32);
          loss = loss + rc.lambda_dmd * dmd_loss(x0, f_teacher, f_fake, tD, kSigmaD, g).loss;
        }
        opt_s->zero_grad();
        opt_f->zero_grad();
        loss.backward();
        opt_s->step();
        ema.update(stu->parameters());
      } else {
        Tensor x0;
        {
          NoGrad ng;
          x0 = rcm_rollout(Fs, o.batch, 2, n_roll, t_max, rc, g, DType::F32).detach();
        }
        Tensor tD = trigflow_sample_t(o.batch, g, rc.P_mean_dmd, rc.P_std_dmd, kSigmaD, DType::F32);
        Tensor L = critic_flow_loss(Ff, x0, tD, kSigmaD, g);
        opt_f->zero_grad();
        L.backward();
        opt_f->step();
      }
    }
    ema.copy_to(stu->parameters());
    eval_student("rCM", Fs, seconds_since(t0));
  }

  // ---- discrete-time CD and CT (ALGORITHMS 5) from scratch, EDM-style boundary parameterization ----
  for (bool distill : {true, false}) {
    t0 = std::chrono::steady_clock::now();
    MLPDenoiser net(2, o.hidden, o.depth, g, DType::F32), tgt(2, o.hidden, o.depth, g, DType::F32);
    tgt.load_parameters(net.named_parameters());
    tgt.set_requires_grad(false);
    NetFn Fn = as_fn(net), Fg = as_fn(tgt);
    CTConfig cfg;
    cfg.cm.sigma_d = kSigmaD;
    DenoiserFn teacher_edm;
    if (distill) {
      // EDM denoiser of the TrigFlow teacher (4.4): t = atan(sigma/sigma_d), x_t = cos t x.
      teacher_edm = [&](const Tensor& x, const Tensor& sig) {
        Tensor t = atan(sig / kSigmaD);
        return trigflow_consistency(Ft, per_sample(cos(t), 2) * x, t, kSigmaD);
      };
    }
    auto opt = make_radam(net.parameters(), 1e-3);
    EMA ema(net.parameters(), 0.995);
    for (int it = 0; it < o.student_iters; ++it) {
      // CD: fixed N = 18 and mu = 0.95 (ImageNet-64 CD setting); CT: iCT's doubling curriculum, no EMA target.
      const int64_t N = distill ? 18 : ict_num_steps(it, o.student_iters, 10, 160);
      CMLoss L = cm_discrete_loss(Fn, distill ? Fg : Fn, teacher_edm, batch(), N, cfg, g);
      opt->zero_grad();
      L.loss.backward();
      opt->step();
      if (distill) ema_update_inplace(tgt.parameters(), net.parameters(), 0.95);
      ema.update(net.parameters());
    }
    ema.copy_to(net.parameters());
    for (int steps : {1, 2}) {
      std::vector<double> sig{80.0};
      if (steps == 2) sig.push_back(0.821);
      Tensor x = cm_multistep_sample(Fn, o.eval_n, 2, sig, cfg.cm, g, DType::F32);
      rows.push_back({distill ? "CD" : "CT (iCT)", steps, sc.to_data(x), seconds_since(t0)});
    }
  }

  // ---- table and figure ----
  Tensor ref = sample_toy(o.data, o.eval_n, g, DType::F32);
  const double w_teacher = sliced_w2(rows[0].samples, ref, 128, 1);
  std::printf("\ndata %s, %d eval samples; sliced W2 is the sliced Wasserstein-2 distance (128 directions)\n",
              o.data.c_str(), o.eval_n);
  std::printf("%-14s %6s %12s %12s %12s %9s\n", "method", "steps", "sliced W2", "energy dist", "SW2/teacher",
              "train s");
  std::vector<ScatterPanel> panels{{"data", ref}};
  for (auto& r : rows) {
    const double w = sliced_w2(r.samples, ref, 128, 1), e = energy_distance(r.samples, ref);
    std::printf("%-14s %6d %12.5f %12.5f %12.2f %9.1f\n", r.method.c_str(), r.steps, w, e, w / w_teacher,
                r.train_s);
    panels.push_back({r.method + " " + std::to_string(r.steps) + (r.steps == 1 ? " step" : " steps"), r.samples});
  }
  write_scatter_panels(o.out, panels);
  std::printf("\nwrote %s (%zu panels); total %.1fs\n", o.out.c_str(), panels.size(), seconds_since(T0));
  return 0;
}
