// Parsing and validation of training configs: a small reader over one JSON object that records the
// keys it consumed, so unknown keys are reported with their full path and the list of valid ones.
#include "train/config.h"

#include <cmath>
#include <fstream>
#include <set>
#include <sstream>

#include "core/error.h"
#include "train/json_safe.h"

namespace df {
namespace {

using json = nlohmann::json;

enum class Range { Any, Positive, NonNegative, Unit };   // Unit: [0, 1)

class Reader {
 public:
  Reader(const json& j, std::string path) : j_(j), path_(std::move(path)) {
    DF_CHECK(j.is_object(), "config: ", where(), "expected an object, got ", j.dump());
  }
  bool has(const std::string& key) const { return j_.contains(key); }

  void num(const std::string& key, double& out, Range r = Range::Any) {
    if (!take(key)) return;
    const json& v = j_.at(key);
    static const char* what[] = {"a number", "a positive number", "a non-negative number",
                                 "a number in [0, 1)"};
    bool ok = v.is_number();
    double x = ok ? v.get<double>() : 0;
    ok = ok && std::isfinite(x);
    if (ok && r == Range::Positive) ok = x > 0;
    if (ok && r == Range::NonNegative) ok = x >= 0;
    if (ok && r == Range::Unit) ok = x >= 0 && x < 1;
    DF_CHECK(ok, "config: ", where(key), ": expected ", what[int(r)], ", got ", v.dump());
    out = x;
  }
  template <class I>
  void integer(const std::string& key, I& out, int64_t min_value) {
    if (!take(key)) return;
    const json& v = j_.at(key);
    bool ok = v.is_number_integer() || (v.is_number_float() && std::floor(v.get<double>()) == v.get<double>() &&
                                        std::fabs(v.get<double>()) < 9e15);
    int64_t x = ok ? (v.is_number_integer() ? v.get<int64_t>() : (int64_t)v.get<double>()) : 0;
    DF_CHECK(ok && x >= min_value, "config: ", where(key), ": expected an integer >= ", min_value, ", got ",
             v.dump());
    out = (I)x;
  }
  void boolean(const std::string& key, bool& out) {
    if (!take(key)) return;
    const json& v = j_.at(key);
    DF_CHECK(v.is_boolean(), "config: ", where(key), ": expected true or false, got ", v.dump());
    out = v.get<bool>();
  }
  void str(const std::string& key, std::string& out, const std::vector<std::string>& allowed = {}) {
    if (!take(key)) return;
    const json& v = j_.at(key);
    std::string list;
    for (auto& a : allowed) list += (list.empty() ? "" : ", ") + a;
    DF_CHECK(v.is_string(), "config: ", where(key), ": expected a string", list.empty() ? "" : " (one of ",
             list, list.empty() ? "" : ")", ", got ", v.dump());
    std::string s = v.get<std::string>();
    bool ok = allowed.empty();
    for (auto& a : allowed) ok = ok || a == s;
    DF_CHECK(ok, "config: ", where(key), ": expected one of ", list, ", got ", v.dump());
    out = s;
  }
  const json* object(const std::string& key) {
    if (!take(key)) return nullptr;
    const json& v = j_.at(key);
    DF_CHECK(v.is_object(), "config: ", where(key), ": expected an object, got ", v.dump());
    return &v;
  }
  const json& raw(const std::string& key) {
    take(key);
    return j_.at(key);
  }
  // Declares keys as valid without reading them (read elsewhere or irrelevant to this variant).
  void allow(const std::string& key) { valid_.insert(key); if (j_.contains(key)) used_.insert(key); }
  // Every key present must have been consumed.
  void finish() const {
    for (auto it = j_.begin(); it != j_.end(); ++it) {
      if (used_.count(it.key())) continue;
      std::string list;
      for (auto& k : valid_) list += (list.empty() ? "" : ", ") + k;
      DF_FAIL("config: ", where(it.key()), ": unknown key (valid here: ", list, ")");
    }
  }
  std::string where(const std::string& key) const { return path_.empty() ? key : path_ + "." + key; }

 private:
  std::string where() const { return path_.empty() ? "" : path_ + ": "; }
  bool take(const std::string& key) {
    valid_.insert(key);
    if (!j_.contains(key)) return false;
    used_.insert(key);
    return true;
  }
  const json& j_;
  std::string path_;
  std::set<std::string> used_, valid_;
};

void parse_objective(const json& j, ObjectiveConfig& o) {
  Reader r(j, "objective");
  DF_CHECK(r.has("name"), "config: objective.name: missing (one of edm, trigflow, fm, ddpm, sct, scd, rcm, ct, cd)");
  r.str("name", o.name, objective_names());
  const std::string& n = o.name;
  r.integer("sample_steps", o.sample_steps, 0);
  bool trig_family = n == "trigflow" || n == "sct" || n == "scd" || n == "rcm";
  if (n == "sct" || n == "scd" || n == "rcm") o.P_mean = -1.0, o.P_std = 1.4;   // sCM's proposal
  if (n == "rcm") o.sigma_d = 1.0, o.adaptive_weight = false;                  // the rCM paper setting
  if (n == "edm" || trig_family || n == "ct" || n == "cd") r.num("sigma_d", o.sigma_d, Range::Positive);
  if (n == "edm" || trig_family) {
    r.num("P_mean", o.P_mean);
    r.num("P_std", o.P_std, Range::Positive);
  }
  if (n == "edm" || n == "ct" || n == "cd") {
    r.num("sigma_min", o.sigma_min, Range::Positive);
    r.num("rho", o.rho, Range::Positive);
  }
  if (n == "edm" || trig_family || n == "ct" || n == "cd") r.num("sigma_max", o.sigma_max, Range::Positive);
  if (n == "trigflow") r.boolean("second_order", o.second_order);
  if (n == "fm") {
    r.str("time", o.fm_time, {"uniform", "logit_normal"});
    r.num("ln_m", o.ln_m);
    r.num("ln_s", o.ln_s, Range::Positive);
    r.num("shift", o.shift, Range::Positive);
  }
  if (n == "ddpm") {
    r.integer("T", o.T, 2);
    r.num("beta_start", o.beta_start, Range::Positive);
    r.num("beta_end", o.beta_end, Range::Positive);
    r.num("ddim_eta", o.ddim_eta, Range::NonNegative);
  }
  if (n == "sct" || n == "scd" || n == "rcm") {
    r.num("c", o.c, Range::NonNegative);
    r.integer("warmup_iters", o.warmup_iters, 0);
    r.str("tangent", o.tangent, {"jvp", "semi_discrete", "discrete"});
    r.boolean("adaptive_weight", o.adaptive_weight);
    r.integer("weight_emb_dim", o.weight_emb_dim, 2);
  }
  if (n == "scd" || n == "rcm" || n == "cd") {
    r.str("teacher", o.teacher);
    DF_CHECK(!o.teacher.empty(), "config: objective.teacher: ", n,
             " needs a teacher checkpoint path (a dualflow checkpoint of a diffusion run)");
  }
  if (n == "rcm") {
    r.num("lambda_dmd", o.lambda_dmd, Range::NonNegative);
    r.num("P_mean_dmd", o.P_mean_dmd);
    r.num("P_std_dmd", o.P_std_dmd, Range::Positive);
    r.num("critic_lr", o.critic_lr, Range::NonNegative);
    r.integer("student_update_freq", o.student_update_freq, 1);
    r.integer("dmd_warmup_iters", o.dmd_warmup_iters, 0);
    r.integer("max_rollout_steps", o.max_rollout_steps, 1);
  }
  if (n == "ct" || n == "cd") {
    r.integer("s0", o.s0, 2);
    r.integer("s1", o.s1, 2);
    r.integer("curriculum_steps", o.curriculum_steps, 0);
    r.str("metric", o.metric, {"l2", "pseudo_huber"});
  }
  r.finish();
  if (n == "ddpm")
    DF_CHECK(o.beta_end > o.beta_start && o.beta_end < 1, "config: objective.beta_end: expected beta_start < beta_end < 1, got ",
             o.beta_end);
  if (n == "edm" || n == "ct" || n == "cd")
    DF_CHECK(o.sigma_max > o.sigma_min, "config: objective.sigma_max: expected > sigma_min (", o.sigma_min, "), got ",
             o.sigma_max);
}

}  // namespace

const std::vector<std::string>& objective_names() {
  static const std::vector<std::string> n = {"edm", "trigflow", "fm", "ddpm", "sct", "scd", "rcm", "ct", "cd"};
  return n;
}

bool is_consistency_objective(const std::string& n) {
  return n == "sct" || n == "scd" || n == "rcm" || n == "ct" || n == "cd";
}

TrainConfig parse_config(const json& j) {
  TrainConfig c;
  c.source = j;
  Reader top(j, "");
  DF_CHECK(top.has("model"), "config: model: missing (e.g. {\"name\": \"UNet-small\"})");
  DF_CHECK(top.has("objective"), "config: objective: missing (e.g. {\"name\": \"trigflow\"})");
  c.model = *top.object("model");
  parse_objective(*top.object("objective"), c.objective);

  if (const json* d = top.object("data")) {
    Reader r(*d, "data");
    r.str("name", c.data.name, {"fashion_mnist", "cifar10", "folder"});
    r.str("path", c.data.path);
    r.boolean("pad_to_32", c.data.pad_to_32);
    r.boolean("flips", c.data.flips);
    r.integer("batch", c.data.batch, 1);
    r.integer("subset", c.data.subset, 0);
    r.finish();
  }
  if (const json* o = top.object("optimizer")) {
    Reader r(*o, "optimizer");
    r.str("name", c.optimizer.name, {"adam", "adamw", "radam", "sgd"});
    if (c.optimizer.name == "adamw") c.optimizer.weight_decay = 0.01;
    r.num("lr", c.optimizer.lr, Range::Positive);
    if (c.optimizer.name != "sgd") {
      if (r.has("betas")) {
        const json& b = r.raw("betas");
        DF_CHECK(b.is_array() && b.size() == 2 && b[0].is_number() && b[1].is_number() &&
                     b[0].get<double>() >= 0 && b[0].get<double>() < 1 && b[1].get<double>() >= 0 &&
                     b[1].get<double>() < 1,
                 "config: optimizer.betas: expected [beta1, beta2] with both in [0, 1), got ", b.dump());
        c.optimizer.beta1 = b[0].get<double>();
        c.optimizer.beta2 = b[1].get<double>();
      }
      r.num("eps", c.optimizer.eps, Range::NonNegative);
    } else {
      r.num("momentum", c.optimizer.momentum, Range::Unit);
    }
    r.num("weight_decay", c.optimizer.weight_decay, Range::NonNegative);
    r.integer("warmup", c.optimizer.warmup, 0);
    r.num("grad_clip", c.optimizer.grad_clip, Range::NonNegative);
    r.finish();
  }
  if (const json* e = top.object("ema")) {
    Reader r(*e, "ema");
    int given = int(e->contains("decay")) + int(e->contains("halflife_images")) + int(e->contains("power_gamma")) +
                int(e->contains("sigma_rel"));
    DF_CHECK(given == 1, "config: ema: expected exactly one of decay, halflife_images, power_gamma, sigma_rel, got ",
             e->dump());
    if (e->contains("decay")) {
      c.ema.kind = "decay";
      r.num("decay", c.ema.decay, Range::Unit);
    } else if (e->contains("halflife_images")) {
      c.ema.kind = "halflife";
      r.num("halflife_images", c.ema.halflife_images, Range::Positive);
      r.num("rampup_ratio", c.ema.rampup_ratio, Range::NonNegative);
    } else if (e->contains("power_gamma")) {
      c.ema.kind = "power";
      r.num("power_gamma", c.ema.gamma, Range::Positive);
    } else {
      c.ema.kind = "power";
      double srel = 0;
      r.num("sigma_rel", srel, Range::Positive);
      DF_CHECK(srel < std::sqrt(1.0 / 12), "config: ema.sigma_rel: expected a number in (0, 0.2887), got ", srel);
      // gamma from sigma_rel (EDM2), by bisection on the monotone relation
      auto f = [](double g) { return std::sqrt((g + 1) / ((g + 2) * (g + 2) * (g + 3))); };
      double lo = 0, hi = 1;
      while (f(hi) > srel) hi *= 2;
      for (int i = 0; i < 200; ++i) (f(0.5 * (lo + hi)) > srel ? lo : hi) = 0.5 * (lo + hi);
      c.ema.gamma = 0.5 * (lo + hi);
    }
    r.allow("rampup_ratio");
    r.finish();
  }
  if (const json* s = top.object("schedule")) {
    Reader r(*s, "schedule");
    r.integer("steps", c.schedule.steps, 1);
    r.integer("log_every", c.schedule.log_every, 1);
    r.integer("sample_every", c.schedule.sample_every, 0);
    r.integer("ckpt_every", c.schedule.ckpt_every, 0);
    r.integer("sample_n", c.schedule.sample_n, 1);
    r.finish();
  }
  top.integer("seed", c.seed, 0);
  top.str("device", c.device, {"cpu", "cuda"});
  top.str("dtype", c.dtype, {"f32", "f64"});
  top.str("precision", c.precision, {"f32", "bf16"});
  DF_CHECK(c.precision == "f32" || c.dtype == "f32", "config: precision: \"bf16\" keeps f32 master weights and "
           "needs dtype \"f32\", got dtype \"", c.dtype, "\"");
  top.boolean("allow_tf32", c.allow_tf32);
  top.allow("comment");
  top.finish();
  return c;
}

TrainConfig load_config(const std::string& path) {
  std::ifstream f(path);
  DF_CHECK(f.good(), "config: cannot open ", path);
  std::stringstream ss;
  ss << f.rdbuf();
  json j;
  try {
    j = parse_json_bounded(ss.str(), "config: " + path, kJsonMaxDepth, kJsonMaxBytes, /*allow_comments=*/true);
  } catch (const json::parse_error& e) {
    DF_FAIL("config: ", path, ": not valid JSON (", e.what(), ")");
  }
  try {
    return parse_config(j);
  } catch (const Error& e) {
    throw Error(std::string(e.what()) + " (in " + path + ")");
  }
}

}  // namespace df
