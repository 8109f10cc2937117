// FD metric: feature statistics and the Frechet distance in double on the host (symmetric matrix
// roots by a cyclic Jacobi eigen-decomposition), and the small classifier that supplies the features.
#include "train/fd_metric.h"

#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>

#include "ops/ops.h"
#include "train/checkpoint.h"
#include "train/optim.h"

namespace df {

const char* const kFDLabel = "FD (dualflow classifier features; not comparable to Inception FID)";

FeatureStats feature_stats(const Tensor& features) {
  DF_CHECK(features.dim() == 2 && features.size(0) >= 2, "feature_stats: expected features (N >= 2, d), got ",
           features.desc());
  FeatureStats s;
  const int64_t n = features.size(0), d = features.size(1);
  s.dim = d, s.count = n;
  std::vector<double> x = features.detach().to_vector();
  s.mean.assign(d, 0);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t k = 0; k < d; ++k) s.mean[k] += x[i * d + k];
  for (auto& m : s.mean) m /= double(n);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t k = 0; k < d; ++k) x[i * d + k] -= s.mean[k];
  s.cov.assign(d * d, 0);
  for (int64_t i = 0; i < n; ++i) {
    const double* r = &x[i * d];
    for (int64_t a = 0; a < d; ++a) {
      const double ra = r[a];
      double* row = &s.cov[a * d];
      for (int64_t b = a; b < d; ++b) row[b] += ra * r[b];
    }
  }
  for (int64_t a = 0; a < d; ++a)
    for (int64_t b = a; b < d; ++b) s.cov[b * d + a] = s.cov[a * d + b] = s.cov[a * d + b] / double(n - 1);
  return s;
}

void symmetric_eigen(const std::vector<double>& a, int64_t d, std::vector<double>& values, std::vector<double>& vectors) {
  DF_CHECK(d > 0 && (int64_t)a.size() == d * d, "symmetric_eigen: expected ", d, "x", d, " values, got ", a.size());
  // Cyclic Jacobi: rotate away each off-diagonal entry in turn until the off-diagonal mass is at
  // round-off level. No LAPACK needed (the device images' OpenBLAS builds differ), and for the
  // d ~ 128 covariances here it takes well under a second. Accurate to ~1e-15 relative.
  std::vector<double> m(a), v(d * d, 0);
  for (int64_t i = 0; i < d; ++i) v[i * d + i] = 1;
  auto off = [&] {
    double s = 0;
    for (int64_t i = 0; i < d; ++i)
      for (int64_t j = 0; j < d; ++j)
        if (i != j) s += m[i * d + j] * m[i * d + j];
    return s;
  };
  double total = 0;
  for (double x : m) total += x * x;
  for (int sweep = 0; sweep < 100 && off() > 1e-30 * std::max(total, 1e-300); ++sweep) {
    for (int64_t p = 0; p < d - 1; ++p)
      for (int64_t q = p + 1; q < d; ++q) {
        const double apq = m[p * d + q];
        if (std::fabs(apq) < 1e-300) continue;
        const double theta = (m[q * d + q] - m[p * d + p]) / (2 * apq);
        const double t = (theta >= 0 ? 1 : -1) / (std::fabs(theta) + std::sqrt(theta * theta + 1));
        const double c = 1 / std::sqrt(t * t + 1), s = t * c;
        for (int64_t k = 0; k < d; ++k) {   // columns p, q
          const double mkp = m[k * d + p], mkq = m[k * d + q];
          m[k * d + p] = c * mkp - s * mkq;
          m[k * d + q] = s * mkp + c * mkq;
        }
        for (int64_t k = 0; k < d; ++k) {   // rows p, q
          const double mpk = m[p * d + k], mqk = m[q * d + k];
          m[p * d + k] = c * mpk - s * mqk;
          m[q * d + k] = s * mpk + c * mqk;
        }
        for (int64_t k = 0; k < d; ++k) {
          const double vkp = v[k * d + p], vkq = v[k * d + q];
          v[k * d + p] = c * vkp - s * vkq;
          v[k * d + q] = s * vkp + c * vkq;
        }
      }
  }
  // Ascending order, eigenvectors as columns.
  std::vector<int64_t> order(d);
  for (int64_t i = 0; i < d; ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](int64_t x, int64_t y) { return m[x * d + x] < m[y * d + y]; });
  values.assign(d, 0);
  vectors.assign(d * d, 0);
  for (int64_t j = 0; j < d; ++j) {
    values[j] = m[order[j] * d + order[j]];
    for (int64_t i = 0; i < d; ++i) vectors[i * d + j] = v[i * d + order[j]];
  }
}

namespace {

std::vector<double> matmul_sq(const std::vector<double>& a, const std::vector<double>& b, int64_t d) {
  std::vector<double> c(d * d, 0);
  for (int64_t i = 0; i < d; ++i)
    for (int64_t k = 0; k < d; ++k) {
      const double aik = a[i * d + k];
      for (int64_t j = 0; j < d; ++j) c[i * d + j] += aik * b[k * d + j];
    }
  return c;
}

}  // namespace

double frechet_distance(const std::vector<double>& mu1, const std::vector<double>& s1, const std::vector<double>& mu2,
                        const std::vector<double>& s2, int64_t d) {
  DF_CHECK((int64_t)mu1.size() == d && (int64_t)mu2.size() == d && (int64_t)s1.size() == d * d &&
               (int64_t)s2.size() == d * d,
           "frechet_distance: expected means of size ", d, " and ", d, "x", d, " covariances");
  double dm = 0, tr = 0;
  for (int64_t k = 0; k < d; ++k) dm += (mu1[k] - mu2[k]) * (mu1[k] - mu2[k]);
  for (int64_t k = 0; k < d; ++k) tr += s1[k * d + k] + s2[k * d + k];
  // S1^{1/2} = V diag(sqrt l) V^T; then Tr((S1^{1/2} S2 S1^{1/2})^{1/2}) = sum sqrt(eig).
  std::vector<double> l, V;
  symmetric_eigen(s1, d, l, V);
  std::vector<double> r(d * d, 0);
  for (int64_t i = 0; i < d; ++i)
    for (int64_t j = 0; j < d; ++j) {
      double acc = 0;
      for (int64_t k = 0; k < d; ++k) acc += V[i * d + k] * std::sqrt(std::max(l[k], 0.0)) * V[j * d + k];
      r[i * d + j] = acc;
    }
  std::vector<double> m = matmul_sq(matmul_sq(r, s2, d), r, d);
  for (int64_t i = 0; i < d; ++i)
    for (int64_t j = i + 1; j < d; ++j) m[i * d + j] = m[j * d + i] = 0.5 * (m[i * d + j] + m[j * d + i]);
  std::vector<double> mv, mV;
  symmetric_eigen(m, d, mv, mV);
  double tr_sqrt = 0;
  for (double v : mv) tr_sqrt += std::sqrt(std::max(v, 0.0));
  return dm + tr - 2 * tr_sqrt;
}

double frechet_distance(const FeatureStats& a, const FeatureStats& b) {
  DF_CHECK(a.dim == b.dim, "frechet_distance: feature sizes differ: ", a.dim, " vs ", b.dim);
  return frechet_distance(a.mean, a.cov, b.mean, b.cov, a.dim);
}

// ---- classifier ----

// Names the architecture: conv weights have the same shapes at any stride, so a cache written by
// another layout would load silently without this tag.
const char* const kClassifierFormat = "dualflow-fd-classifier-v1";

FDClassifier::FDClassifier(int64_t channels_, int64_t classes_, Generator& g, int64_t width_, int64_t feature_dim_)
    : channels(channels_), classes(classes_), width(width_), feature_dim(feature_dim_) {
  c1 = register_module("c1", std::make_shared<Conv2d>(channels, width, 3, 2, 1, true, g));
  c2 = register_module("c2", std::make_shared<Conv2d>(width, 2 * width, 3, 2, 1, true, g));
  c3 = register_module("c3", std::make_shared<Conv2d>(2 * width, 4 * width, 3, 2, 1, true, g));
  fc = register_module("fc", std::make_shared<Linear>(4 * width, feature_dim, true, g));
  head = register_module("head", std::make_shared<Linear>(feature_dim, classes, true, g));
}

Tensor FDClassifier::features(const Tensor& x) const {
  Tensor h = silu(c1->forward(x));
  h = silu(c2->forward(h));
  h = silu(c3->forward(h));
  h = mean(h, {2, 3});
  return silu(fc->forward(h));
}

Tensor FDClassifier::logits(const Tensor& x) const { return head->forward(features(x)); }

bool conv2d_available(Device device) {
  if (device == Device::CPU) return true;
  try {
    NoGrad ng;
    conv2d(zeros({1, 1, 4, 4}, DType::F32, device), zeros({1, 1, 3, 3}, DType::F32, device));
    return true;
  } catch (const Error&) {
    return false;
  }
}

Tensor dataset_images(const ImageDataset& data, int64_t n) {
  n = std::min(n, data.size());
  std::vector<int64_t> idx(n);
  for (int64_t i = 0; i < n; ++i) idx[i] = i;
  return data.batch(idx);
}

Tensor classifier_features(const FDClassifier& net, const Tensor& images, int64_t batch) {
  NoGrad ng;
  const Device dev = net.c1->weight.device();
  Tensors parts;
  for (int64_t s = 0; s < images.size(0); s += batch) {
    Tensor x = narrow(images, 0, s, std::min(batch, images.size(0) - s));
    x = cast(x, DType::F32);
    if (x.device() != dev) x = to_device(x, dev);
    parts.push_back(to_device(net.features(x), Device::CPU));
  }
  return cat(parts, int64_t(0));
}

double classifier_accuracy(const FDClassifier& net, const ImageDataset& data, int64_t max_n) {
  NoGrad ng;
  const int64_t n = max_n > 0 ? std::min(max_n, data.size()) : data.size();
  const Device dev = net.c1->weight.device();
  int64_t correct = 0;
  for (int64_t s = 0; s < n; s += 256) {
    std::vector<int64_t> idx;
    for (int64_t i = s; i < std::min(n, s + 256); ++i) idx.push_back(i);
    std::vector<double> lg = to_device(net.logits(data.batch(idx, dev)), Device::CPU).to_vector();
    const int64_t K = net.classes;
    for (size_t b = 0; b < idx.size(); ++b) {
      int64_t best = 0;
      for (int64_t k = 1; k < K; ++k)
        if (lg[b * K + k] > lg[b * K + best]) best = k;
      correct += best == data.label(idx[b]);
    }
  }
  return double(correct) / double(n);
}

std::shared_ptr<FDClassifier> fd_classifier(const std::string& cache_path, const ImageDataset& train,
                                            const ClassifierOptions& opt) {
  Generator g(opt.seed);
  auto net = std::make_shared<FDClassifier>(train.channels(), train.num_classes(), g);
  struct stat st;
  if (!cache_path.empty() && ::stat(cache_path.c_str(), &st) == 0) {
    Checkpoint ck = load_safetensors(cache_path);
    auto f = ck.metadata.find("format");
    DF_CHECK(f != ck.metadata.end() && f->second == kClassifierFormat, "FD classifier cache ", cache_path,
             ": expected format '", kClassifierFormat, "' (this architecture); delete it to retrain");
    try {
      net->load_parameters(ck.tensors);
    } catch (const Error& e) {
      throw Error("FD classifier cache " + cache_path + " does not fit this data set (delete it to retrain): " +
                  e.what());
    }
    net->to(opt.device);
    if (opt.verbose) std::printf("FD classifier: loaded %s\n", cache_path.c_str());
    return net;
  }
  net->to(opt.device);
  auto adam = make_adam(net->parameters(), opt.lr);
  Batcher batches(train, opt.batch, opt.seed + 7, opt.flips, true, opt.device);
  auto t0 = std::chrono::steady_clock::now();
  double run_loss = 0;
  for (int64_t s = 0; s < opt.steps; ++s) {
    adam->lr = opt.lr * std::min(1.0, 2.0 * (opt.steps - s) / opt.steps);   // linear decay over the second half
    Batch b = batches.next();
    adam->zero_grad();
    Tensor loss = cross_entropy(net->logits(b.images), b.labels);
    loss.backward();
    adam->step();
    run_loss += loss.item();
    if (opt.verbose && ((s + 1) % 500 == 0 || s + 1 == opt.steps)) {
      double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      std::printf("FD classifier: step %ld/%ld  loss %.4f  %.1f it/s\n", long(s + 1), long(opt.steps),
                  run_loss / ((s + 1) % 500 == 0 ? 500 : (s + 1) % 500), (s + 1) / dt);
      std::fflush(stdout);
      run_loss = 0;
    }
  }
  if (!cache_path.empty()) save_safetensors(cache_path, net->named_parameters(), {{"format", kClassifierFormat}});
  return net;
}

}  // namespace df
