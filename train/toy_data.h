// 2-D toy data sets and isotropic Gaussian mixtures with exact density, denoiser and score (the
// closed-form references that objective and sampler tests compare against).
#pragma once
#include <string>
#include <vector>

#include "core/tensor.h"

namespace df {

// x0 ~ sum_k weights_k N(means_k, stds_k^2 I). Weights need not be normalised (they are divided by
// their sum). log_prob, denoise and score are built from differentiable ops, in x's dtype.
struct GaussianMixture {
  std::vector<double> weights;
  std::vector<std::vector<double>> means;
  std::vector<double> stds;
  int dim = 2;

  Tensor sample(int64_t n, Generator& g, DType dtype = DType::F64) const;   // (n, dim)
  Tensor log_prob(const Tensor& x) const;                                  // x (B, dim) -> (B)
  // E[x0 | x0 + sigma eps = x]; sigma of shape (B) or () (or any shape with numel 1 or B).
  Tensor denoise(const Tensor& x, const Tensor& sigma) const;
  Tensor score(const Tensor& x, const Tensor& sigma) const;               // grad_x log p_sigma(x)
  // log p_sigma(x): the density of x0 + sigma eps (each component's variance grows by sigma^2).
  Tensor log_prob_noisy(const Tensor& x, const Tensor& sigma) const;
  void validate() const;  // throws with a clear message on inconsistent fields
};

// 8 components at angles 2 pi k / 8 on a circle of `radius`, equal weights.
GaussianMixture eight_gaussians(double radius = 2, double std = 0.1);
// A fixed 2-D mixture with unequal weights and widths (3 components).
GaussianMixture simple_gmm_2d();

// names: "8gaussians", "moons", "swissroll", "checkerboard", "gmm"; deterministic from g.
// All sets are roughly centred and lie within [-4, 4]^2 (the default plot extent).
Tensor sample_toy(const std::string& name, int64_t n, Generator& g, DType dtype = DType::F32);
const std::vector<std::string>& toy_names();
// The exact mixture behind a toy name ("8gaussians", "gmm"); throws for the others.
GaussianMixture toy_mixture(const std::string& name);

}  // namespace df
