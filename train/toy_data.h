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

// The checkerboard: uniform over the 8 "black" cells (row + column even) of a 4x4 board of
// kCheckerCell-wide cells covering [-3, 3]^2. Each coordinate alone is uniform on [-3, 3] (every
// column and every row holds two black cells), so the mean is 0 and the per-dimension variance 3;
// the black cells follow the diagonals, so E[xy] = 0.5625 (the mean of the cell centres' products).
constexpr double kCheckerCell = 1.5, kCheckerHalf = 3.0;
bool in_checkerboard(double x, double y);
// E[x0 | x0 + sigma eps = x] for the checkerboard, exact: per cell the posterior is a product of
// two truncated normals (mean x_d + sigma (phi(a) - phi(b)) / (Phi(b) - Phi(a)) on the cell's
// [lo, hi], a = (lo - x_d)/sigma, b = (hi - x_d)/sigma), and the cells are weighted by their
// masses, all in log space so far-off points stay finite. x (B, 2) in f64 on the host; sigma > 0.
Tensor checkerboard_denoise(const Tensor& x, double sigma);

// Whether (x, y) lies in the data's support: inside a black cell (checkerboard: all of the data),
// or within 3 component stds of a mixture mean (8gaussians, gmm: 98.9% of the data in 2-D).
// Throws for sets without a support rule (moons, swissroll).
bool toy_in_support(const std::string& name, double x, double y);

}  // namespace df
