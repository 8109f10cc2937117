// An FD metric that needs no download: a small CNN classifier trained (once, cached as a checkpoint)
// on the same data set, and the Frechet distance between Gaussians fitted to its penultimate-layer
// features of generated and held-out real images. Not comparable to Inception FID.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "models/layers.h"
#include "train/datasets.h"

namespace df {

extern const char* const kFDLabel;   // "FD (dualflow classifier features; not comparable to Inception FID)"

// Mean and covariance (unbiased, N - 1) of features (N, d), in double on the host.
struct FeatureStats {
  int64_t dim = 0, count = 0;
  std::vector<double> mean;   // d
  std::vector<double> cov;    // d x d, row-major
};
FeatureStats feature_stats(const Tensor& features);

// Eigen-decomposition of a symmetric d x d matrix (row-major, cyclic Jacobi): ascending eigenvalues,
// eigenvectors as the columns of `vectors` (row-major d x d).
void symmetric_eigen(const std::vector<double>& a, int64_t d, std::vector<double>& values, std::vector<double>& vectors);

// ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1^{1/2} S2 S1^{1/2})^{1/2}), matrix roots by eigen-decomposition
// (negative eigenvalues from round-off are clipped to 0).
double frechet_distance(const std::vector<double>& mu1, const std::vector<double>& s1, const std::vector<double>& mu2,
                        const std::vector<double>& s2, int64_t d);
double frechet_distance(const FeatureStats& a, const FeatureStats& b);

// Three stride-2 3x3 convs (C->w->2w->4w, SiLU; 32x32 -> 4x4), global average pool,
// Linear(4w->feature_dim) SiLU = the features, Linear(feature_dim->classes) = the logits. Small enough
// (~2.4M multiply-adds per 32x32 image) to train in about a minute on a multi-core CPU.
class FDClassifier : public Module {
 public:
  FDClassifier(int64_t channels, int64_t classes, Generator& g, int64_t width = 32, int64_t feature_dim = 128);
  Tensor features(const Tensor& x) const;   // x (N, C, H, W) in [-1, 1] -> (N, feature_dim)
  Tensor logits(const Tensor& x) const;     // -> (N, classes)
  int64_t channels, classes, width, feature_dim;
  std::shared_ptr<Conv2d> c1, c2, c3;
  std::shared_ptr<Linear> fc, head;
};

struct ClassifierOptions {
  int64_t steps = 3000, batch = 128;
  double lr = 1e-3;
  uint64_t seed = 0;
  bool flips = false;
  Device device = Device::CPU;
  bool verbose = true;
};

// Loads the classifier from `cache_path` if it exists (and fits the data's shape), else trains it on
// `train` and saves it there atomically. Returns the classifier (on opt.device).
std::shared_ptr<FDClassifier> fd_classifier(const std::string& cache_path, const ImageDataset& train,
                                            const ClassifierOptions& opt);
// Top-1 accuracy on (up to max_n of) `data`.
double classifier_accuracy(const FDClassifier& net, const ImageDataset& data, int64_t max_n = -1);
// Features of images (N, C, H, W) in [-1, 1], computed in batches on the classifier's device; (N, d) on the host.
Tensor classifier_features(const FDClassifier& net, const Tensor& images, int64_t batch = 256);
Tensor dataset_images(const ImageDataset& data, int64_t n);   // the first n images in [-1, 1], host
// Whether conv2d runs on `device` (a CUDA build may lack the conv kernels; the classifier then uses the CPU).
bool conv2d_available(Device device);

}  // namespace df
