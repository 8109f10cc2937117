// The dualflow command line: `train` a model from a JSON config, `sample` a PNG grid from a checkpoint,
// `eval` a checkpoint with the FD metric (classifier features; not comparable to Inception FID).
#include <sys/stat.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "train/fd_metric.h"
#include "train/image_grid.h"
#include "train/trainer.h"

using namespace df;

namespace {

const char* kUsage =
    "usage:\n"
    "  dualflow train  --config FILE [--out DIR] [--resume [CKPT]] [--steps N] [--device cpu|cuda]\n"
    "                  [--max-minutes M]\n"
    "  dualflow sample --ckpt FILE [--n 64] [--steps S] [--out grid.png] [--seed N] [--device cpu|cuda]\n"
    "  dualflow eval   --ckpt FILE [--n 2000] [--steps S] [--device cpu|cuda] [--classifier FILE]\n"
    "                  [--classifier-steps N] [--seed N]\n"
    "train writes DIR/{metrics.jsonl, samples_<step>.png, loss.png, checkpoint.safetensors} (DIR defaults to\n"
    "runs/<config name>); --resume continues DIR/checkpoint.safetensors (or CKPT) exactly.\n"
    "eval trains a small classifier on the run's data set once (cached next to the run directory) and reports\n"
    "its test accuracy and the FD between its features of generated and held-out real images.\n";

// --key value pairs; flags listed in `flags` may stand alone (value "").
std::map<std::string, std::string> parse_args(int argc, char** argv, int first, const std::vector<std::string>& keys,
                                              const std::vector<std::string>& optional_value) {
  std::map<std::string, std::string> out;
  for (int i = first; i < argc; ++i) {
    std::string a = argv[i];
    DF_CHECK(a.rfind("--", 0) == 0, "dualflow: unexpected argument '", a, "'\n", kUsage);
    std::string k = a.substr(2), v;
    auto eq = k.find('=');
    if (eq != std::string::npos) {
      v = k.substr(eq + 1);
      k = k.substr(0, eq);
    }
    bool known = false, opt_val = false;
    for (auto& x : keys) known = known || x == k;
    for (auto& x : optional_value) opt_val = opt_val || x == k;
    DF_CHECK(known || opt_val, "dualflow: unknown option --", k, "\n", kUsage);
    if (eq == std::string::npos) {
      if (i + 1 < argc && std::string(argv[i + 1]).rfind("--", 0) != 0) v = argv[++i];
      else DF_CHECK(opt_val, "dualflow: option --", k, " needs a value\n", kUsage);
    }
    out[k] = v;
  }
  return out;
}

int64_t to_int(const std::map<std::string, std::string>& a, const std::string& k, int64_t def) {
  auto it = a.find(k);
  if (it == a.end()) return def;
  size_t pos = 0;
  int64_t v = 0;
  try {
    v = std::stoll(it->second, &pos);
  } catch (const std::exception&) {
    pos = 0;
  }
  DF_CHECK(pos == it->second.size() && pos > 0, "dualflow: --", k, ": expected an integer, got '", it->second, "'");
  return v;
}

std::string get(const std::map<std::string, std::string>& a, const std::string& k, const std::string& def = "") {
  auto it = a.find(k);
  return it == a.end() ? def : it->second;
}

std::string dir_of(const std::string& path) {
  auto p = path.find_last_of('/');
  return p == std::string::npos ? "." : p == 0 ? "/" : path.substr(0, p);
}
std::string stem(const std::string& path) {
  std::string b = path.substr(path.find_last_of('/') == std::string::npos ? 0 : path.find_last_of('/') + 1);
  auto d = b.find_last_of('.');
  return d == std::string::npos ? b : b.substr(0, d);
}
bool exists(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0;
}

int cmd_train(int argc, char** argv) {
  auto a = parse_args(argc, argv, 2, {"config", "out", "steps", "device", "max-minutes"}, {"resume"});
  TrainOptions opt;
  const bool resume = a.count("resume") > 0;
  std::string config_path = get(a, "config");
  opt.out_dir = get(a, "out", config_path.empty() ? "" : "runs/" + stem(config_path));
  if (resume) {
    opt.resume = get(a, "resume");
    if (opt.resume.empty()) {
      DF_CHECK(!opt.out_dir.empty(), "dualflow train: --resume needs --out DIR, --config FILE or a checkpoint path");
      opt.resume = opt.out_dir + "/checkpoint.safetensors";
    }
    DF_CHECK(exists(opt.resume), "dualflow train: --resume: no checkpoint at ", opt.resume);
    if (opt.out_dir.empty()) opt.out_dir = dir_of(opt.resume);
  }
  TrainConfig cfg;
  if (!config_path.empty()) {
    cfg = load_config(config_path);
  } else {
    DF_CHECK(resume, "dualflow train: --config FILE is required\n", kUsage);
    LoadedRun r = load_run(opt.resume, Device::CPU);   // only for its config
    cfg = r.cfg;
  }
  opt.steps = to_int(a, "steps", -1);
  DF_CHECK(opt.steps == -1 || opt.steps > 0, "dualflow train: --steps: expected a positive integer");
  opt.device = get(a, "device");
  if (a.count("max-minutes")) {
    opt.max_seconds = 60.0 * std::atof(a["max-minutes"].c_str());
    DF_CHECK(opt.max_seconds > 0, "dualflow train: --max-minutes: expected a positive number, got '", a["max-minutes"], "'");
  }
  Trainer t(cfg, opt);
  t.train();
  std::printf("done: %s\n", t.checkpoint_path().c_str());
  return 0;
}

int cmd_sample(int argc, char** argv) {
  auto a = parse_args(argc, argv, 2, {"ckpt", "n", "steps", "out", "seed", "device"}, {});
  DF_CHECK(a.count("ckpt"), "dualflow sample: --ckpt FILE is required\n", kUsage);
  LoadedRun r = load_run(a["ckpt"], parse_device(get(a, "device", "cpu")));
  Generator g((uint64_t)to_int(a, "seed", 0));
  const int64_t n = to_int(a, "n", 64);
  DF_CHECK(n > 0, "dualflow sample: --n: expected a positive integer");
  auto t0 = std::chrono::steady_clock::now();
  Tensor x = r.method->sample(*r.model, n, (int)to_int(a, "steps", 0), g);
  double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::string out = get(a, "out", "grid.png");
  write_image_grid(out, x, 0, 2);
  std::printf("wrote %s (%ld samples of %s at step %ld, %.2f s)\n", out.c_str(), long(n), r.cfg.objective.name.c_str(),
              long(r.step), dt);
  return 0;
}

int cmd_eval(int argc, char** argv) {
  auto a = parse_args(argc, argv, 2, {"ckpt", "n", "steps", "device", "classifier", "classifier-steps", "seed"}, {});
  DF_CHECK(a.count("ckpt"), "dualflow eval: --ckpt FILE is required\n", kUsage);
  const std::string ckpt = a["ckpt"];
  const Device dev = parse_device(get(a, "device", "cpu"));
  LoadedRun r = load_run(ckpt, dev);
  const DataConfig& d = r.cfg.data;
  ImageDataset train = load_dataset(d.name, d.path, true, d.pad_to_32);
  ImageDataset test = load_dataset(d.name, d.path, false, d.pad_to_32);
  std::string cache = get(a, "classifier", dir_of(dir_of(ckpt)) + "/fd_classifier_" + d.name + "_" +
                                               std::to_string(train.channels()) + "x" + std::to_string(train.height()) +
                                               ".safetensors");
  ClassifierOptions co;
  co.steps = to_int(a, "classifier-steps", 3000);
  co.device = conv2d_available(dev) ? dev : Device::CPU;
  if (co.device != dev) std::printf("FD classifier: no conv2d kernel on %s in this build; using the CPU\n", device_name(dev));
  co.flips = d.flips;
  auto clf = fd_classifier(cache, train, co);
  const double acc = classifier_accuracy(*clf, test);
  const int64_t n = std::min<int64_t>(to_int(a, "n", 2000), test.size());
  DF_CHECK(n >= 2, "dualflow eval: --n: expected at least 2 images");
  Generator g((uint64_t)to_int(a, "seed", 1));
  auto t0 = std::chrono::steady_clock::now();
  Tensors parts;
  for (int64_t s = 0; s < n; s += 500) parts.push_back(r.method->sample(*r.model, std::min<int64_t>(500, n - s), (int)to_int(a, "steps", 0), g));
  Tensor gen = cat(parts, int64_t(0));
  double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  FeatureStats fg = feature_stats(classifier_features(*clf, gen));
  FeatureStats fr = feature_stats(classifier_features(*clf, dataset_images(test, n)));
  // Floor for this n: real training images against the same held-out images.
  FeatureStats ft = feature_stats(classifier_features(*clf, dataset_images(train, n)));
  const double fd = frechet_distance(fg, fr), floor_fd = frechet_distance(ft, fr);
  std::printf("classifier test accuracy: %.2f%% (%ld held-out images)\n", 100 * acc, long(test.size()));
  std::printf("%s: %.3f  (%ld generated vs %ld held-out real images; real train vs held-out at this n: %.3f)\n",
              kFDLabel, fd, long(n), long(n), floor_fd);
  std::printf("sampling: %.1f s for %ld images\n", dt, long(n));
  nlohmann::json j = {{"metric", kFDLabel}, {"fd", fd}, {"fd_real_train_vs_test", floor_fd}, {"n", n},
                      {"classifier_test_accuracy", acc}, {"checkpoint", ckpt}, {"step", r.step},
                      {"objective", r.cfg.objective.name}, {"sample_steps", to_int(a, "steps", 0)}};
  std::ofstream(dir_of(ckpt) + "/eval.json", std::ios::app) << j.dump() << "\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h")) {
    std::fputs(kUsage, argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  try {
    std::string c = argv[1];
    if (c == "train") return cmd_train(argc, argv);
    if (c == "sample") return cmd_sample(argc, argv);
    if (c == "eval") return cmd_eval(argc, argv);
    std::fprintf(stderr, "dualflow: unknown command '%s'\n%s", c.c_str(), kUsage);
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
