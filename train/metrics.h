// Sample-quality metrics for low-dimensional data, computed in double on the host: sliced
// Wasserstein-2, energy distance, the mean log-likelihood under a known Gaussian mixture, and the
// fraction of samples in a toy set's support.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "train/toy_data.h"

namespace df {

// Sliced Wasserstein-2 distance: the square root of the mean over n_proj random unit directions
// (drawn from `seed`) of W2^2 between the 1-D projections, from sorted projections. Sizes may
// differ: both empirical quantile functions are then compared at max(n, m) midpoint levels.
// a (N, D), b (M, D).
double sliced_w2(const Tensor& a, const Tensor& b, int64_t n_proj, uint64_t seed);
// The same distance against a fixed set b: b's projections are sorted once, so scoring many sets
// against one reference costs one sort per set instead of two. ref(a) == sliced_w2(a, b, n_proj, seed).
class SlicedW2Reference {
 public:
  SlicedW2Reference(const Tensor& b, int64_t n_proj, uint64_t seed);
  double operator()(const Tensor& a) const;

 private:
  int64_t n_ = 0, d_ = 0;
  std::vector<double> dirs_;                  // (n_proj, d) unit directions
  std::vector<std::vector<double>> sorted_;   // b's sorted projections, per direction
};
// Energy distance 2 E|X-Y| - E|X-X'| - E|Y-Y'| (V-statistics: exactly 0 for identical sets and
// never negative). O(N M) on the CPU: meant for N, M up to a few thousand.
double energy_distance(const Tensor& a, const Tensor& b);
// Mean of gmm.log_prob over the rows of x (in f64).
double mean_log_likelihood(const GaussianMixture& gmm, const Tensor& x);
// Fraction of the rows of x (N, 2) inside the named toy set's support (toy_in_support): a direct
// read of "does it put its samples where the data are", which sliced W2 blurs on mixtures.
double support_fraction(const std::string& data, const Tensor& x);

}  // namespace df
