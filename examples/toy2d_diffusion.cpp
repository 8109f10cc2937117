// Trains DDPM, EDM, flow matching and TrigFlow on a 2-D toy set on the CPU, prints a quality table
// (sliced W2 against the data-vs-data floor, energy distance, NLL under the true mixture) and writes
// sample panels and loss curves as PNGs. Usage: toy2d_diffusion [--data gmm] [--steps 3000] [--out DIR]
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>

#include "models/mlp.h"
#include "train/diffusion.h"
#include "train/metrics.h"
#include "train/optim.h"
#include "train/plot.h"
#include "train/toy_data.h"

using namespace df;

namespace {
struct Args {
  std::string data = "gmm", out = "out/toy2d";
  int steps = 3000, batch = 256, hidden = 128, depth = 3, samples = 2000;
  double lr = 2e-3, ema = 0.995;
  uint64_t seed = 1;
};

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    std::string k = argv[i];
    auto val = [&]() -> std::string {
      if (i + 1 >= argc) { std::fprintf(stderr, "missing value for %s\n", k.c_str()); std::exit(2); }
      return argv[++i];
    };
    if (k == "--data") a.data = val();
    else if (k == "--steps") a.steps = std::stoi(val());
    else if (k == "--out") a.out = val();
    else if (k == "--batch") a.batch = std::stoi(val());
    else if (k == "--samples") a.samples = std::stoi(val());
    else if (k == "--lr") a.lr = std::stod(val());
    else if (k == "--seed") a.seed = std::stoull(val());
    else {
      std::fprintf(stderr, "usage: %s [--data NAME] [--steps N] [--out DIR] [--batch B] [--samples N] [--lr LR] [--seed S]\n"
                   "data names: 8gaussians moons swissroll checkerboard gmm\n", argv[0]);
      std::exit(k == "--help" || k == "-h" ? 0 : 2);
    }
  }
  return a;
}

struct Row {
  std::string method, sampler;
  int nfe;
  double sw2, ed, nll, train_s;
};
}  // namespace

int main(int argc, char** argv) {
  Args a = parse(argc, argv);
  std::filesystem::create_directories(a.out);
  bool is_mixture = a.data == "8gaussians" || a.data == "gmm";
  GaussianMixture gmm = is_mixture ? toy_mixture(a.data) : GaussianMixture{};

  // sigma_d from the data; EDM's P_mean (tuned for sigma_d = 0.5) shifted by ln(sigma_d/0.5).
  Generator gd(a.seed + 1000);
  Tensor probe = sample_toy(a.data, 20000, gd, DType::F64);
  double sigma_d = std::sqrt(var(probe).item());
  double p_mean = -1.2 + std::log(sigma_d / 0.5);

  std::vector<std::pair<std::unique_ptr<DiffusionObjective>, int>> methods;   // objective, sampler steps
  methods.emplace_back(std::make_unique<DDPM>(), 50);
  {
    auto e = std::make_unique<EDM>(sigma_d);
    e->P_mean = p_mean;
    methods.emplace_back(std::move(e), 18);
  }
  methods.emplace_back(std::make_unique<FlowMatching>(), 50);
  {
    auto t = std::make_unique<TrigFlow>(sigma_d);
    t->P_mean = p_mean;
    methods.emplace_back(std::move(t), 18);
  }

  // Data-vs-data floor: the mean over K pairs of fresh sets of the same size as a generated one (one
  // pair's sliced W2 has a std of ~75% of its mean on mixtures: component counts fluctuate).
  const int K = 10;
  Generator ge(a.seed + 2000);
  std::vector<Tensor> refs;
  double floor_sw2 = 0, floor_ed = 0;
  for (int r = 0; r < K; ++r) {
    Tensor x = sample_toy(a.data, a.samples, ge), y = sample_toy(a.data, a.samples, ge);
    refs.push_back(y);
    floor_sw2 += sliced_w2(x, y, 128, 100 + r) / K;
    if (r == 0) floor_ed = energy_distance(x, y);
  }
  double data_nll = is_mixture ? -mean_log_likelihood(gmm, refs[0]) : NAN;

  std::vector<Row> rows;
  std::vector<ScatterPanel> panels = {{"data", refs[0]}};
  std::vector<std::pair<std::string, std::vector<double>>> curves;
  for (auto& [obj, sampler_steps] : methods) {
    Generator g(a.seed);
    MLPDenoiser net(2, a.hidden, a.depth, g);
    auto opt = make_adam(net.parameters(), a.lr);
    EMA ema(net.parameters(), a.ema);
    Net f = [&](const Tensor& x, const Tensor& c) { return net.forward(x, c); };
    std::vector<double> curve;
    double acc = 0;
    const int every = 50;
    auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < a.steps; ++i) {
      opt->zero_grad();
      Tensor loss = obj->loss(f, sample_toy(a.data, a.batch, g), g);
      loss.backward();
      opt->lr = warmup_lr(a.lr, i, 100) * std::min(1.0, 3.0 * (a.steps - i) / a.steps);   // decay over the last third
      opt->step();
      ema.update(net.parameters());
      acc += loss.item();
      if ((i + 1) % every == 0) curve.push_back(acc / every), acc = 0;
    }
    double train_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    ema.copy_to(net.parameters());
    NoGrad ng;
    Tensor xs = obj->sample(f, {K * a.samples, 2}, sampler_steps, g, DType::F32);
    Tensor x = narrow(xs, 0, 0, a.samples);
    double sw2 = 0;
    for (int r = 0; r < K; ++r) sw2 += sliced_w2(narrow(xs, 0, r * a.samples, a.samples), refs[r], 128, 100 + r) / K;
    rows.push_back({obj->name(), obj->sampler_name() + " " + std::to_string(sampler_steps), obj->nfe(sampler_steps),
                    sw2, energy_distance(x, refs[0]), is_mixture ? -mean_log_likelihood(gmm, x) : NAN, train_s});
    panels.push_back({obj->name() + " " + obj->sampler_name(), x});
    curves.emplace_back(obj->name(), curve);
    std::fprintf(stderr, "%s done (%.1f s)\n", obj->name().c_str(), train_s);
  }

  std::printf("data=%s  train steps=%d  batch=%d  MLP hidden=%d depth=%d  EMA %.3f  samples=%d  sigma_d=%.3f\n",
              a.data.c_str(), a.steps, a.batch, a.hidden, a.depth, a.ema, a.samples, sigma_d);
  std::printf("| method       | train steps | sampler     | NFE | sliced W2 (x floor)   | energy dist | NLL    | train s |\n");
  std::printf("|--------------|-------------|-------------|-----|-----------------------|-------------|--------|---------|\n");
  std::printf("| data floor   | -           | -           | -   | %.5f (1.00)         | %.5f     | %s | -       |\n",
              floor_sw2, floor_ed, is_mixture ? (std::to_string(data_nll).substr(0, 6)).c_str() : "-     ");
  for (auto& r : rows)
    std::printf("| %-12s | %-11d | %-11s | %-3d | %.5f (%.2f)         | %.5f     | %s | %-7.1f |\n", r.method.c_str(),
                a.steps, r.sampler.c_str(), r.nfe, r.sw2, r.sw2 / floor_sw2, r.ed,
                is_mixture ? std::to_string(r.nll).substr(0, 6).c_str() : "-     ", r.train_s);

  std::function<double(double, double)> density;
  if (is_mixture)
    // Plain host loop: the plot asks once per pixel, too often for tensor ops.
    density = [&](double u, double v) {
      double wsum = 0, p = 0;
      for (double w : gmm.weights) wsum += w;
      for (size_t k = 0; k < gmm.weights.size(); ++k) {
        double s2 = gmm.stds[k] * gmm.stds[k];
        double d2 = std::pow(u - gmm.means[k][0], 2) + std::pow(v - gmm.means[k][1], 2);
        p += gmm.weights[k] / wsum * std::exp(-d2 / (2 * s2)) / (2 * M_PI * s2);
      }
      return p;
    };
  write_scatter_panels(a.out + "/samples_" + a.data + ".png", panels, density);
  write_loss_curves(a.out + "/loss_" + a.data + ".png", curves);
  std::printf("wrote %s/samples_%s.png and %s/loss_%s.png\n", a.out.c_str(), a.data.c_str(), a.out.c_str(), a.data.c_str());
  return 0;
}
