// Few-step generation on 2-D toy sets: a TrigFlow teacher, then sCD / sCT / rCM students (and discrete
// CD / CT) per data set (train/toy_demo.h); prints a table against the data-vs-data floor and writes a
// grid of sample panels and a sliced-W2-against-NFE figure. `--quick` is `make demo`.
#include <cblas.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "train/plot.h"
#include "train/toy_data.h"
#include "train/toy_demo.h"

using namespace df;

namespace {

struct Options {
  std::vector<std::string> data{"8gaussians", "checkerboard"};
  std::string out = "toy2d_consistency.png", nfe_out = "toy2d_consistency_nfe.png";
  ToyDemoConfig cfg;   // its defaults are the quick sizes; without --quick the iterations double
  std::vector<ToyMethod> students = toy_students();
  int64_t eval_n = 2000;
  int reps = 10, threads = 2;
};

// --set key=value for the less common knobs of ToyDemoConfig.
void set_field(ToyDemoConfig& c, const std::string& kv) {
  size_t eq = kv.find('=');
  if (eq == std::string::npos) { std::fprintf(stderr, "--set: expected key=value, got '%s'\n", kv.c_str()); std::exit(2); }
  const std::string k = kv.substr(0, eq);
  const double v = std::stod(kv.substr(eq + 1));
  std::map<std::string, double*> d{{"sigma_d", &c.sigma_d}, {"data_std", &c.data_std}, {"teacher_lr", &c.teacher_lr},
                                   {"teacher_ema", &c.teacher_ema}, {"P_mean", &c.P_mean}, {"P_std", &c.P_std},
                                   {"student_lr", &c.student_lr}, {"student_ema", &c.student_ema},
                                   {"scm_P_mean", &c.scm_P_mean}, {"scm_P_std", &c.scm_P_std},
                                   {"rcm_lambda", &c.rcm_lambda}};
  std::map<std::string, int64_t*> i{{"batch", &c.batch}, {"rcm_update_freq", &c.rcm_update_freq},
                                    {"cd_teacher_steps", &c.cd_teacher_steps}};
  if (d.count(k)) *d[k] = v;
  else if (i.count(k)) *i[k] = int64_t(v);
  else {
    std::fprintf(stderr, "--set: unknown key '%s'\n", k.c_str());
    std::exit(2);
  }
}

std::mutex g_print;
void progress(const char* fmt, const std::string& data, const char* what, double wall, double cpu) {
  std::lock_guard<std::mutex> lock(g_print);
  std::printf(fmt, data.c_str(), what, wall, cpu);
  std::fflush(stdout);
}

double since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// One method at one NFE: its score and (for the panels) its first sample set.
struct Entry {
  std::string label;   // "teacher", "sCD", ...
  int nfe;
  ToyScore score;
  Tensor samples;
};

struct DataRun {
  std::string data;
  ToyScore floor;
  Tensor data_points;
  std::vector<Entry> entries;
  std::vector<ToyModel> models;   // teacher first (for the time split)
  double wall_s = 0;
};

const std::vector<int> kTeacherNFE{1, 2, 4, 8, 16, 32}, kStudentNFE{1, 2, 4};

DataRun run_data(const Options& o, const std::string& data) {
  auto t0 = std::chrono::steady_clock::now();
  ToyDemoConfig cfg = o.cfg;
  cfg.data = data;
  ToyDemo demo(cfg);
  ToyReference ref(data, o.eval_n, o.reps, cfg.seed + 2000);
  DataRun run;
  run.data = data;
  run.floor = ref.floor();
  run.data_points = ref.first();
  auto evaluate = [&](const ToyModel& m, const std::vector<int>& nfes) {
    for (int nfe : nfes) {
      Tensor first;
      ToyScore s = ref.score([&](Generator& g) {
        Tensor x = demo.sample(m, nfe, o.eval_n, g);
        if (!first.defined()) first = x;
        return x;
      }, cfg.seed + 3000 + nfe);
      run.entries.push_back({toy_method_name(m.method), nfe, s, first});
    }
  };
  ToyModel teacher = demo.train_teacher();
  progress("  %-12s %-8s trained in %6.1f s wall, %6.1f s CPU\n", data, "teacher", teacher.wall_s, teacher.cpu_s);
  evaluate(teacher, kTeacherNFE);
  run.models.push_back(teacher);
  for (ToyMethod m : o.students) {
    ToyModel s = demo.train_student(m, teacher);
    progress("  %-12s %-8s trained in %6.1f s wall, %6.1f s CPU\n", data, toy_method_name(m), s.wall_s, s.cpu_s);
    evaluate(s, kStudentNFE);
    run.models.push_back(s);
  }
  run.wall_s = since(t0);
  return run;
}

const Entry* find(const DataRun& r, const std::string& label, int nfe) {
  for (const Entry& e : r.entries)
    if (e.label == label && e.nfe == nfe) return &e;
  return nullptr;
}

void print_table(const Options& o, const DataRun& r) {
  const Entry* teacher = find(r, "teacher", 32);
  std::printf("\n%s: %lld samples per set, %d sets; sliced W2 over 128 directions; floor = two fresh data sets\n",
              r.data.c_str(), (long long)o.eval_n, o.reps);
  std::printf("| method | NFE | sliced W2 (+- s.e.) | / floor | / teacher | in support |\n");
  std::printf("|---|---:|---:|---:|---:|---:|\n");
  std::printf("| data vs data (floor) | - | %.3f +- %.3f | 1.00 | - | %.1f%% |\n", r.floor.sw2, r.floor.sw2_se,
              100 * r.floor.support);
  auto row = [&](const char* name, const Entry& e) {
    std::printf("| %s | %d | %.3f +- %.3f | %.2f | %.2f | %.1f%% |\n", name, e.nfe, e.score.sw2, e.score.sw2_se,
                e.score.sw2 / r.floor.sw2, e.score.sw2 / teacher->score.sw2, 100 * e.score.support);
  };
  row("teacher (TrigFlow, DPM-Solver++(2M))", *teacher);
  row("teacher, 1 Euler step (no distillation)", *find(r, "teacher", 1));
  for (ToyMethod m : o.students)
    for (int nfe : {1, 2}) row(toy_method_name(m), *find(r, toy_method_name(m), nfe));
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  bool quick = false;
  for (int i = 1; i < argc; ++i) quick |= std::strcmp(argv[i], "--quick") == 0;
  if (quick) {
    o.out = "demo.png";
    o.nfe_out = "demo_nfe.png";
  } else {
    o.cfg.teacher_iters *= 2;
    o.cfg.student_iters *= 2;
    o.reps = 20;
  }
  auto usage = [&](int code) {
    std::fprintf(stderr,
                 "usage: %s [--quick] [--data NAME[,NAME]] [--out PNG] [--nfe-out PNG] [--seed N] [--teacher-iters N]\n"
                 "          [--student-iters N] [--hidden N] [--depth N] [--eval-n N] [--reps N] [--threads 1|2]\n",
                 argv[0]);
    std::exit(code);
  };
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) { std::fprintf(stderr, "%s needs a value\n", a.c_str()); std::exit(2); }
      return argv[++i];
    };
    if (a == "--quick") quick = true;
    else if (a == "--data") {
      o.data.clear();
      std::stringstream ss(next());
      for (std::string d; std::getline(ss, d, ',');) o.data.push_back(d);
    } else if (a == "--out") o.out = next();
    else if (a == "--nfe-out") o.nfe_out = next();
    else if (a == "--seed") o.cfg.seed = std::stoull(next());
    else if (a == "--teacher-iters") o.cfg.teacher_iters = std::stoll(next());
    else if (a == "--student-iters") o.cfg.student_iters = std::stoll(next());
    else if (a == "--hidden") o.cfg.hidden = std::stoll(next());
    else if (a == "--depth") o.cfg.depth = std::stoll(next());
    else if (a == "--eval-n") o.eval_n = std::stoll(next());
    else if (a == "--reps") o.reps = std::stoi(next());
    else if (a == "--threads") o.threads = std::stoi(next());
    else if (a == "--set") set_field(o.cfg, next());
    else if (a == "--students") {
      o.students.clear();
      std::stringstream ss(next());
      for (std::string n; std::getline(ss, n, ',');) {
        bool found = false;
        for (ToyMethod m : toy_students())
          if (n == toy_method_name(m)) o.students.push_back(m), found = true;
        if (!found) { std::fprintf(stderr, "--students: unknown method '%s' (sCD, sCT, rCM, CD, CT)\n", n.c_str()); return 2; }
      }
    }
    else usage(a == "--help" ? 0 : 2);
  }
  for (const std::string& d : o.data)
    if (d != "8gaussians" && d != "checkerboard" && d != "gmm") {
      std::fprintf(stderr, "--data: expected 8gaussians, checkerboard or gmm (sets with a support rule), got '%s'\n",
                   d.c_str());
      return 2;
    }

  // The data sets train in parallel, one thread each; each thread's GEMMs are small (batch x 64),
  // so OpenBLAS runs single-threaded inside them rather than fighting over the two cores.
  const int threads = std::max(1, std::min<int>(o.threads, int(o.data.size())));
  if (threads > 1) openblas_set_num_threads(1);
  std::printf("training on %zu data set(s) with %d thread(s): teacher %lld iters, students %lld iters, MLP %lldx%lld\n",
              o.data.size(), threads, (long long)o.cfg.teacher_iters, (long long)o.cfg.student_iters,
              (long long)o.cfg.hidden, (long long)o.cfg.depth);
  auto T0 = std::chrono::steady_clock::now();
  std::vector<DataRun> runs(o.data.size());
  for (size_t start = 0; start < o.data.size(); start += threads) {
    std::vector<std::thread> pool;
    for (size_t k = start; k < std::min(o.data.size(), start + threads); ++k)
      pool.emplace_back([&, k]() { runs[k] = run_data(o, o.data[k]); });
    for (auto& t : pool) t.join();
  }
  const double total = since(T0);

  for (const DataRun& r : runs) print_table(o, r);

  std::printf("\ntime split (training only; evaluation and plotting excluded), seconds wall / CPU of its thread:\n");
  double cpu_all = 0;
  for (const DataRun& r : runs) {
    std::printf("  %-12s", r.data.c_str());
    for (const ToyModel& m : r.models) {
      std::printf(" %s %.1f/%.1f", toy_method_name(m.method), m.wall_s, m.cpu_s);
      cpu_all += m.cpu_s;
    }
    std::printf("\n");
  }
  std::printf("  all training and evaluation: %.1f s wall; training CPU summed over threads %.1f s\n", total, cpu_all);

  // Figure 1: per data set a row of 1-step samples and a row of 2-step samples.
  std::vector<ScatterRow> grid;
  for (const DataRun& r : runs) {
    const double extent = r.data == "checkerboard" ? 4 : 3;
    for (int nfe : {1, 2}) {
      ScatterRow row;
      row.extent = extent;
      row.tick_step = r.data == "checkerboard" ? 2 : 1;
      if (nfe == 1) {
        row.panels.push_back({"data", r.data_points});
        row.panels.push_back({"teacher 32 steps", find(r, "teacher", 32)->samples});
        row.panels.push_back({"teacher 1 step", find(r, "teacher", 1)->samples});
      } else {
        row.panels.push_back({"", Tensor()});
        row.panels.push_back({"", Tensor()});
        row.panels.push_back({"teacher 2 steps", find(r, "teacher", 2)->samples});
      }
      for (ToyMethod m : o.students) {
        std::string name = toy_method_name(m);
        row.panels.push_back({name + (nfe == 1 ? " 1 step" : " 2 steps"), find(r, name, nfe)->samples});
      }
      grid.push_back(row);
    }
  }
  write_scatter_grid(o.out, grid, 200);

  // Figure 2: sliced W2 against NFE, one panel per data set.
  std::vector<LinePanel> panels;
  for (const DataRun& r : runs) {
    LinePanel p;
    p.title = r.data;
    p.x_label = "network evaluations (NFE)";
    p.y_label = "sliced W2";
    p.log_x = p.log_y = true;
    p.x_ticks = {1, 2, 4, 8, 16, 32};
    for (const char* label : {"teacher", "sCD", "sCT", "rCM", "CD", "CT"}) {
      LineSeries s;
      s.name = std::string(label) == "teacher" ? "teacher (DPM++)" : label;
      for (const Entry& e : r.entries)
        if (e.label == label) s.x.push_back(e.nfe), s.y.push_back(e.score.sw2);
      p.series.push_back(s);
    }
    p.series.push_back({"data floor", {1, 32}, {r.floor.sw2, r.floor.sw2}, true});
    panels.push_back(p);
  }
  write_line_panels(o.nfe_out, panels);
  std::printf("\nwrote %s and %s\n", o.out.c_str(), o.nfe_out.c_str());
  return 0;
}
