// Tests of the trainer and its CLI pieces: bit-identical resume (diffusion and sCT with a learned
// weight head, dropout and flips on), config errors that name the key path, clear errors for corrupt
// checkpoints, PNG grids, and the Frechet distance against closed forms for Gaussians.
#include <doctest/doctest.h>
#include <stb/stb_image.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>

#include "tests/test_util.h"
#include "train/optim.h"
#include "ops/ops.h"
#include "train/checkpoint.h"
#include "train/fd_metric.h"
#include "train/image_grid.h"
#include "train/trainer.h"

using namespace df;
namespace fs = std::filesystem;
using df::test::contains;
using df::test::error_of;
using df::test::fmnist_dir;
using df::test::have_cuda;
using df::test::temp_dir;
using json = nlohmann::json;

namespace {


// False (with a visible skip message) when the data set is not installed, e.g. on a GPU box.
bool have_fmnist() {
  std::string d = fmnist_dir();
  if (fs::exists(d + "/train-images-idx3-ubyte.gz") || fs::exists(d + "/train-images-idx3-ubyte")) return true;
  MESSAGE("skipped: Fashion-MNIST not found in " << d
          << " (apt-get install dataset-fashion-mnist, or set DF_FASHION_MNIST_DIR)");
  return false;
}

// A tiny U-Net on 64 Fashion-MNIST images, with dropout and flips so their seeds are exercised.
json tiny_config(const std::string& objective) {
  json j = json::parse(R"({
    "model": {"name": "UNet-tiny", "base_channels": 16, "norm_groups": 4, "attn_resolutions": [16], "dropout": 0.1},
    "data": {"name": "fashion_mnist", "pad_to_32": true, "flips": true, "batch": 6, "subset": 64},
    "optimizer": {"name": "adamw", "lr": 1e-3, "warmup": 3, "grad_clip": 1.0},
    "ema": {"halflife_images": 20},
    "schedule": {"steps": 6, "log_every": 2, "sample_n": 4},
    "seed": 5
  })");
  j["objective"] = {{"name", objective}, {"sample_steps", 2}};
  if (std::getenv("DF_FASHION_MNIST_DIR")) j["data"]["path"] = fmnist_dir();
  return j;
}

void expect_same_checkpoints(const std::string& a, const std::string& b) {
  Checkpoint ca = load_safetensors(a), cb = load_safetensors(b);
  REQUIRE(ca.tensors.size() == cb.tensors.size());
  int64_t compared = 0;
  for (size_t i = 0; i < ca.tensors.size(); ++i) {
    const auto& [na, ta] = ca.tensors[i];
    const auto& [nb, tb] = cb.tensors[i];
    REQUIRE(na == nb);
    REQUIRE(ta.shape() == tb.shape());
    size_t bytes = size_t(ta.numel()) * dtype_size(ta.dtype());
    CHECK_MESSAGE(std::memcmp(ta.data(), tb.data(), bytes) == 0, "tensor ", na, " differs");
    compared += ta.numel();
  }
  CHECK(compared > 1000);
  for (const char* k : {"dualflow.step", "dualflow.rng_counter", "dualflow.batcher_epoch", "dualflow.batcher_position"})
    CHECK(ca.metadata.at(k) == cb.metadata.at(k));
}

void check_resume(const std::string& objective) {
  std::string dir = temp_dir("resume_" + objective);
  TrainConfig cfg = parse_config(tiny_config(objective));
  TrainOptions straight;
  straight.out_dir = dir + "/straight";
  straight.verbose = false;
  {
    Trainer t(cfg, straight);
    t.train();
    CHECK(t.step() == 6);
  }
  TrainOptions half = straight;
  half.out_dir = dir + "/split";
  half.steps = 3;
  {
    Trainer t(cfg, half);
    t.train();
    CHECK(t.step() == 3);
  }
  TrainOptions resumed = half;
  resumed.steps = 6;
  resumed.resume = half.out_dir + "/checkpoint.safetensors";
  {
    Trainer t(cfg, resumed);
    CHECK(t.step() == 3);
    t.train();
  }
  expect_same_checkpoints(straight.out_dir + "/checkpoint.safetensors", resumed.out_dir + "/checkpoint.safetensors");
  // The parameters moved (a resume that silently restarted from scratch would still match itself).
  Checkpoint c = load_safetensors(straight.out_dir + "/checkpoint.safetensors");
  CHECK(c.metadata.at("dualflow.step") == "6");
  // The metrics log holds each logged step once, after the resume too.
  std::ifstream m(resumed.out_dir + "/metrics.jsonl");
  std::vector<int64_t> steps;
  std::string line;
  while (std::getline(m, line)) steps.push_back(json::parse(line)["step"].get<int64_t>());
  CHECK(steps == std::vector<int64_t>{2, 3, 4, 6});
  CHECK(fs::exists(straight.out_dir + "/samples_000006.png"));
  fs::remove_all(dir);
}

}  // namespace

TEST_CASE("trainer: N steps straight == N/2 steps, checkpoint, resume, N/2 steps (bitwise), TrigFlow") {
  if (!have_fmnist()) return;
  check_resume("trigflow");
}

TEST_CASE("trainer: bitwise resume for sCT (JVP tangent, adaptive weight head in the optimizer)") {
  if (!have_fmnist()) return;
  check_resume("sct");
}

// The first logged loss (before any update) of a short run of `objective` on `device`.
std::vector<double> logged_losses(const std::string& objective, const std::string& device, const std::string& dir) {
  json j = tiny_config(objective);
  j["schedule"]["log_every"] = 1;
  j["schedule"]["steps"] = 3;
  TrainOptions o;
  o.out_dir = dir + "/" + objective + "_" + device;
  o.verbose = false;
  o.device = device;
  Trainer t(parse_config(j), o);
  t.train();
  std::ifstream m(o.out_dir + "/metrics.jsonl");
  std::vector<double> losses;
  std::string line;
  while (std::getline(m, line)) losses.push_back(json::parse(line)["loss"].get<double>());
  return losses;
}

TEST_CASE("trainer: CUDA runs give the CPU's first loss (TrigFlow, EDM, sCT with its weight head)") {
  if (!have_fmnist()) return;
  if (!have_cuda()) {
    MESSAGE("skipped: no CUDA device");
    return;
  }
  std::string dir = temp_dir("cuda_trainer");
  for (const char* objective : {"trigflow", "edm", "sct"}) {
    CAPTURE(objective);
    std::vector<double> cpu = logged_losses(objective, "cpu", dir), gpu = logged_losses(objective, "cuda", dir);
    REQUIRE(cpu.size() == 3);
    REQUIRE(gpu.size() == 3);
    // Same parameters, batch, noise and dropout masks: step 1's loss agrees to f32 rounding (the
    // f32 normal streams of the two devices agree to a few ulp); later steps follow other roundings.
    CHECK(gpu[0] == doctest::Approx(cpu[0]).epsilon(1e-4));
    for (double l : gpu) CHECK(std::isfinite(l));
  }
  fs::remove_all(dir);
}

TEST_CASE("trainer: a resumed run's checkpoint differs from its start (the steps really ran)") {
  if (!have_fmnist()) return;
  std::string dir = temp_dir("moved");
  TrainConfig cfg = parse_config(tiny_config("edm"));
  TrainOptions o;
  o.out_dir = dir;
  o.verbose = false;
  o.steps = 1;
  Trainer t(cfg, o);
  std::vector<double> before = t.model().named_parameters()[1].second.to_vector();
  t.train();
  std::vector<double> after = t.model().named_parameters()[1].second.to_vector();
  CHECK(before != after);
  fs::remove_all(dir);
}

TEST_CASE("config: errors name the key path") {
  auto err = [](const std::function<void(json&)>& edit) {
    json j = tiny_config("trigflow");
    edit(j);
    return error_of([&] { parse_config(j); });
  };
  CHECK(contains(err([](json& j) { j["optimizer"]["lr"] = -1; }), "config: optimizer.lr: expected a positive number, got -1"));
  CHECK(contains(err([](json& j) { j["optimizer"]["lrr"] = 1e-3; }), "config: optimizer.lrr: unknown key"));
  CHECK(contains(err([](json& j) { j["data"]["batch"] = "many"; }), "config: data.batch: expected an integer"));
  CHECK(contains(err([](json& j) { j["objective"]["name"] = "gan"; }), "config: objective.name: expected one of"));
  CHECK(contains(err([](json& j) { j["objective"]["P_std"] = 0; }), "config: objective.P_std"));
  CHECK(contains(err([](json& j) { j["objective"]["shift"] = 3; }), "config: objective.shift: unknown key"));
  CHECK(contains(err([](json& j) { j["objective"] = {{"name", "scd"}}; }), "config: objective.teacher"));
  CHECK(contains(err([](json& j) { j["optimizer"]["betas"] = {0.9}; }), "config: optimizer.betas"));
  CHECK(contains(err([](json& j) { j["ema"] = {{"decay", 0.9}, {"power_gamma", 7}}; }), "config: ema"));
  CHECK(contains(err([](json& j) { j["schedule"]["steps"] = 0; }), "config: schedule.steps"));
  CHECK(contains(err([](json& j) { j["device"] = "tpu"; }), "config: device"));
  CHECK(contains(err([](json& j) { j["epochs"] = 3; }), "config: epochs: unknown key"));
  // Model keys are checked by the registry when the trainer builds the model; the message says "model".
  if (!have_fmnist()) return;
  json j = tiny_config("trigflow");
  j["model"]["channels_mult"] = {1, 2};
  TrainOptions o;
  o.out_dir = temp_dir("cfg_model");
  o.verbose = false;
  std::string e = error_of([&] { Trainer t(parse_config(j), o); });
  CHECK(contains(e, "config: model"));
  CHECK(contains(e, "channels_mult"));
  fs::remove_all(o.out_dir);
}

TEST_CASE("trainer: corrupt, truncated or foreign checkpoints given to resume give clear errors") {
  if (!have_fmnist()) return;
  std::string dir = temp_dir("corrupt");
  TrainConfig cfg = parse_config(tiny_config("trigflow"));
  TrainOptions o;
  o.out_dir = dir + "/run";
  o.verbose = false;
  o.steps = 1;
  {
    Trainer t(cfg, o);
    t.train();
  }
  const std::string good = o.out_dir + "/checkpoint.safetensors";
  std::string bytes;
  {
    std::ifstream f(good, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(f), {});
  }
  auto try_resume = [&](const std::string& content) {
    std::string p = dir + "/bad.safetensors";
    std::ofstream(p, std::ios::binary | std::ios::trunc) << content;
    TrainOptions r = o;
    r.out_dir = dir + "/resumed";
    r.resume = p;
    r.steps = 2;
    return error_of([&] { Trainer t(cfg, r); });
  };
  std::string e1 = try_resume(bytes.substr(0, bytes.size() / 2));   // truncated data
  CHECK(contains(e1, "bad.safetensors"));
  std::string e2 = try_resume(bytes.substr(0, 5));                    // shorter than the header length
  CHECK(contains(e2, "bad.safetensors"));
  std::string e3 = try_resume("this is not a checkpoint at all, just some text.");
  CHECK(contains(e3, "bad.safetensors"));
  // A valid safetensors file that is not a training checkpoint.
  save_safetensors(dir + "/bad.safetensors", {{"w", zeros({2})}});
  {
    TrainOptions r = o;
    r.out_dir = dir + "/resumed";
    r.resume = dir + "/bad.safetensors";
    CHECK(contains(error_of([&] { Trainer t(cfg, r); }), "not a dualflow training checkpoint"));
  }
  // A checkpoint of another model.
  json other = tiny_config("trigflow");
  other["model"]["base_channels"] = 8;
  {
    TrainOptions r = o;
    r.out_dir = dir + "/resumed";
    r.resume = good;
    CHECK(contains(error_of([&] { Trainer t(parse_config(other), r); }), "different model"));
  }
  fs::remove_all(dir);
}

TEST_CASE("image grid: layout and pixel values") {
  std::string dir = temp_dir("grid");
  // 5 grey images 3x4: image i has value -1 + i/2 everywhere; cols = 3 -> 2 rows.
  std::vector<double> v;
  for (int i = 0; i < 5; ++i)
    for (int k = 0; k < 12; ++k) v.push_back(-1 + 0.5 * i);
  write_image_grid(dir + "/g.png", from_vector(v, {5, 1, 3, 4}), 3, 2);
  int w = 0, h = 0, c = 0;
  unsigned char* img = stbi_load((dir + "/g.png").c_str(), &w, &h, &c, 0);
  REQUIRE(img != nullptr);
  CHECK(c == 1);
  CHECK(w == 3 * (4 * 2 + 2) + 2);
  CHECK(h == 2 * (3 * 2 + 2) + 2);
  auto px = [&](int x, int y) { return int(img[y * w + x]); };
  CHECK(px(2, 2) == 0);                 // image 0 = -1
  CHECK(px(2 + 10, 2) == 64);           // image 1 = -0.5 -> round(0.5 * 127.5)
  CHECK(px(2 + 20 + 7, 2 + 5) == 128);  // image 2 = 0
  CHECK(px(2 + 10, 2 + 8) == 255);      // image 4 = +1 (second row)
  CHECK(px(2 + 20, 2 + 8) == 24);       // empty cell: background
  stbi_image_free(img);
  fs::remove_all(dir);
}

TEST_CASE("FD: Frechet distance matches closed forms for Gaussians") {
  // Commuting covariances (same eigenvectors): FD = |dmu|^2 + sum (sqrt a_i - sqrt b_i)^2.
  const int64_t d = 6;
  Generator g(11);
  std::vector<double> q = g.randn({d, d}, DType::F64).to_vector(), Q, l;
  std::vector<double> sym(d * d);
  for (int64_t i = 0; i < d; ++i)
    for (int64_t j = 0; j < d; ++j) sym[i * d + j] = q[i * d + j] + q[j * d + i];
  symmetric_eigen(sym, d, l, Q);   // Q orthogonal
  std::vector<double> a = {0.5, 1, 2, 3, 0.1, 4}, b = {1, 1, 0.5, 5, 0.2, 0.01};
  auto build = [&](const std::vector<double>& e) {
    std::vector<double> s(d * d, 0);
    for (int64_t i = 0; i < d; ++i)
      for (int64_t j = 0; j < d; ++j)
        for (int64_t k = 0; k < d; ++k) s[i * d + j] += Q[i * d + k] * e[k] * Q[j * d + k];
    return s;
  };
  std::vector<double> mu1 = {0, 1, 2, 3, 4, 5}, mu2 = {1, 1, 2, 3, 4, 3};
  double expect = 1 + 4;
  for (int64_t k = 0; k < d; ++k) expect += std::pow(std::sqrt(a[k]) - std::sqrt(b[k]), 2);
  CHECK(frechet_distance(mu1, build(a), mu2, build(b), d) == doctest::Approx(expect).epsilon(1e-9));
  CHECK(frechet_distance(mu1, build(a), mu1, build(a), d) == doctest::Approx(0).epsilon(1e-9));

  // Non-commuting 2x2: Tr sqrt(S1^1/2 S2 S1^1/2) = sqrt(tr(S1 S2) + 2 sqrt(det S1 det S2)).
  std::vector<double> s1 = {2, 0.7, 0.7, 1}, s2 = {1, -0.4, -0.4, 3};
  double tr12 = s1[0] * s2[0] + s1[1] * s2[2] + s1[2] * s2[1] + s1[3] * s2[3];
  double det1 = s1[0] * s1[3] - s1[1] * s1[2], det2 = s2[0] * s2[3] - s2[1] * s2[2];
  double fd2 = (s1[0] + s1[3] + s2[0] + s2[3]) - 2 * std::sqrt(tr12 + 2 * std::sqrt(det1 * det2));
  CHECK(frechet_distance({0, 0}, s1, {0, 0}, s2, 2) == doctest::Approx(fd2).epsilon(1e-10));
  CHECK(frechet_distance({0, 0}, s2, {0, 0}, s1, 2) == doctest::Approx(fd2).epsilon(1e-10));
  CHECK(fd2 > 0.1);   // the commuting shortcut sum (sqrt eig) would differ here

  // From samples: feature_stats of x = mu + L z estimates (mu, L L^T); FD of two large samples of one
  // Gaussian is small, and of shifted samples close to |shift|^2.
  Tensor z1 = g.randn({20000, 3}, DType::F64), z2 = g.randn({20000, 3}, DType::F64);
  Tensor L = from_vector({1, 0, 0, 0.5, 2, 0, -0.3, 0.2, 0.7}, {3, 3}, DType::F64);
  Tensor x1 = matmul(z1, transpose(L, 0, 1)), x2 = matmul(z2, transpose(L, 0, 1));
  FeatureStats f1 = feature_stats(x1), f2 = feature_stats(x2), f3 = feature_stats(add(x2, 2.0));
  CHECK(f1.cov[1 * 3 + 1] == doctest::Approx(0.25 + 4).epsilon(0.05));
  CHECK(frechet_distance(f1, f2) < 0.01);
  CHECK(frechet_distance(f1, f3) == doctest::Approx(12).epsilon(0.01));
}

TEST_CASE("FD classifier: learns above chance, is cached, gives features of its feature size") {
  if (!have_fmnist()) return;
  std::string dir = temp_dir("fdclf");
  ImageDataset train = load_dataset("fashion_mnist", std::getenv("DF_FASHION_MNIST_DIR") ? fmnist_dir() : "", true, true);
  ImageDataset small = train.subset([] {
    std::vector<int64_t> i(512);
    for (int k = 0; k < 512; ++k) i[k] = k;
    return i;
  }());
  ImageDataset test = load_dataset("fashion_mnist", std::getenv("DF_FASHION_MNIST_DIR") ? fmnist_dir() : "", false, true);
  ClassifierOptions o;
  o.steps = 100;
  o.batch = 32;
  o.lr = 2e-3;
  o.verbose = false;
  auto net = fd_classifier(dir + "/clf.safetensors", small, o);
  double acc = classifier_accuracy(*net, test, 500);
  CHECK(acc > 0.4);   // 10 classes: chance is 0.1 (measured 0.59 after these 100 steps)
  auto cached = fd_classifier(dir + "/clf.safetensors", small, o);
  CHECK(classifier_accuracy(*cached, test, 500) == acc);
  Tensor f = classifier_features(*net, dataset_images(test, 10));
  CHECK(f.shape() == Shape{10, net->feature_dim});
  fs::remove_all(dir);
}

TEST_CASE("configs: every shipped config parses and names a buildable model") {
  if (!fs::exists("configs")) {
    MESSAGE("configs/ not found from the working directory; skipped");
    return;
  }
  int n = 0;
  for (auto& e : fs::directory_iterator("configs")) {
    if (e.path().extension() != ".json") continue;
    INFO(e.path().string());
    TrainConfig c = load_config(e.path().string());
    const int64_t C = c.data.name == "cifar10" ? 3 : 1;
    ModelConfig m = model_config_from_json(c.model, C, 32);
    CHECK((m.arch == "unet" || m.arch == "dit"));
    if (is_consistency_objective(c.objective.name) && c.objective.name != "sct" && c.objective.name != "ct")
      CHECK(!c.objective.teacher.empty());
    ++n;
  }
  CHECK(n >= 20);
}

TEST_CASE("FD: symmetric_eigen reconstructs a random symmetric matrix (V diag(l) V^T, V orthogonal)") {
  const int64_t d = 40;
  Generator g(3);
  std::vector<double> q = g.randn({d, d}, DType::F64).to_vector(), a(d * d), l, V;
  for (int64_t i = 0; i < d; ++i)
    for (int64_t j = 0; j < d; ++j) a[i * d + j] = q[i * d + j] + q[j * d + i];
  symmetric_eigen(a, d, l, V);
  double err = 0, orth = 0;
  for (int64_t i = 0; i < d; ++i)
    for (int64_t j = 0; j < d; ++j) {
      double r = 0, o = 0;
      for (int64_t k = 0; k < d; ++k) r += V[i * d + k] * l[k] * V[j * d + k], o += V[k * d + i] * V[k * d + j];
      err = std::max(err, std::fabs(r - a[i * d + j]));
      orth = std::max(orth, std::fabs(o - (i == j ? 1.0 : 0.0)));
    }
  CHECK(err < 1e-10);
  CHECK(orth < 1e-12);
  for (int64_t k = 1; k < d; ++k) CHECK(l[k - 1] <= l[k]);
}

TEST_CASE("clip_grad_norm_async: same norm and scaled gradients as clip_grad_norm, nothing read back") {
  auto make = [] {
    Tensors ps = {randn({3, 4}, 1, DType::F32), randn({5}, 2, DType::F32)};
    for (auto& p : ps) {
      p.requires_grad_();
      p.set_grad(mul(randn(p.shape(), 9 + p.numel(), DType::F32), 3.0));
    }
    return ps;
  };
  for (double max_norm : {0.5, 1e6}) {
    Tensors a = make(), b = make();
    double n1 = clip_grad_norm(a, max_norm);
    Tensor n2 = clip_grad_norm_async(b, max_norm);
    CHECK(n2.item() == doctest::Approx(n1).epsilon(1e-5));
    for (size_t i = 0; i < a.size(); ++i) {
      auto ga = a[i].grad().to_vector(), gb = b[i].grad().to_vector();
      for (size_t j = 0; j < ga.size(); ++j) CHECK(gb[j] == doctest::Approx(ga[j]).epsilon(1e-5));
    }
  }
}
