// Sliced W2, energy distance, mixture log-likelihood and support fraction on host double vectors.
#include "train/metrics.h"

#include <algorithm>
#include <cmath>

#include "ops/ops.h"

namespace df {
namespace {

struct Points {
  std::vector<double> v;
  int64_t n = 0, d = 0;
};

Points host_points(const Tensor& t, const char* who, const char* arg) {
  DF_CHECK(t.defined() && t.dim() == 2 && t.size(0) > 0, who, ": expected ", arg,
           " of shape (N, D) with N > 0, got ", t.defined() ? t.desc() : std::string("undefined"));
  Points p;
  {
    NoGrad ng;
    p.v = t.detach().to_vector();
  }
  p.n = t.size(0);
  p.d = t.size(1);
  return p;
}

// Empirical quantile of sorted values at level q in (0, 1), linear between order statistics
// placed at the midpoints (i + 0.5) / n.
double quantile(const std::vector<double>& s, double q) {
  double pos = q * double(s.size()) - 0.5;
  if (pos <= 0) return s.front();
  if (pos >= double(s.size() - 1)) return s.back();
  size_t i = size_t(pos);
  double f = pos - double(i);
  return s[i] * (1 - f) + s[i + 1] * f;
}

}  // namespace

namespace {
// Project onto w and sort.
void project_sorted(const std::vector<double>& v, int64_t n, int64_t d, const double* w, std::vector<double>& out) {
  out.resize(n);
  for (int64_t i = 0; i < n; ++i) {
    double s = 0;
    for (int64_t j = 0; j < d; ++j) s += v[i * d + j] * w[j];
    out[i] = s;
  }
  std::sort(out.begin(), out.end());
}
}  // namespace

SlicedW2Reference::SlicedW2Reference(const Tensor& ref, int64_t n_proj, uint64_t seed) {
  Points B = host_points(ref, "sliced_w2", "b");
  DF_CHECK(n_proj > 0, "sliced_w2: n_proj must be positive, got ", n_proj);
  n_ = B.n;
  d_ = B.d;
  dirs_ = randn({n_proj, B.d}, seed, DType::F64).to_vector();
  sorted_.resize(n_proj);
  for (int64_t p = 0; p < n_proj; ++p) {
    double* w = &dirs_[p * B.d];
    double norm = 0;
    for (int64_t j = 0; j < B.d; ++j) norm += w[j] * w[j];
    norm = std::sqrt(norm);
    for (int64_t j = 0; j < B.d; ++j) w[j] /= norm;
    project_sorted(B.v, B.n, B.d, w, sorted_[p]);
  }
}

double SlicedW2Reference::operator()(const Tensor& a) const {
  Points A = host_points(a, "sliced_w2", "a");
  DF_CHECK(A.d == d_, "sliced_w2: a and b need the same dimension, got ", a.desc(), " and (", n_, ", ", d_, ")");
  const int64_t n_proj = int64_t(sorted_.size()), K = std::max(A.n, n_);
  double total = 0;
  std::vector<double> pa;
  for (int64_t p = 0; p < n_proj; ++p) {
    project_sorted(A.v, A.n, A.d, &dirs_[p * d_], pa);
    const std::vector<double>& pb = sorted_[p];
    double acc = 0;
    if (A.n == n_) {
      for (int64_t i = 0; i < A.n; ++i) acc += (pa[i] - pb[i]) * (pa[i] - pb[i]);
    } else {
      for (int64_t i = 0; i < K; ++i) {
        double q = (double(i) + 0.5) / double(K);
        double d = quantile(pa, q) - quantile(pb, q);
        acc += d * d;
      }
    }
    total += acc / double(K);
  }
  return std::sqrt(total / double(n_proj));
}

double sliced_w2(const Tensor& a, const Tensor& b, int64_t n_proj, uint64_t seed) {
  return SlicedW2Reference(b, n_proj, seed)(a);
}

double energy_distance(const Tensor& a, const Tensor& b) {
  Points A = host_points(a, "energy_distance", "a"), B = host_points(b, "energy_distance", "b");
  DF_CHECK(A.d == B.d, "energy_distance: a and b need the same dimension, got ", a.desc(), " and ",
           b.desc());
  auto mean_dist = [](const Points& P, const Points& Q) {
    double s = 0;
#pragma omp parallel for reduction(+ : s) schedule(static)
    for (int64_t i = 0; i < P.n; ++i)
      for (int64_t j = 0; j < Q.n; ++j) {
        double d2 = 0;
        for (int64_t k = 0; k < P.d; ++k) {
          double t = P.v[i * P.d + k] - Q.v[j * Q.d + k];
          d2 += t * t;
        }
        s += std::sqrt(d2);
      }
    return s / (double(P.n) * double(Q.n));
  };
  return 2 * mean_dist(A, B) - mean_dist(A, A) - mean_dist(B, B);
}

double mean_log_likelihood(const GaussianMixture& gmm, const Tensor& x) {
  NoGrad ng;
  Tensor xd = x.detach();
  if (xd.dtype() != DType::F64) xd = cast(xd, DType::F64);
  return mean(gmm.log_prob(xd)).item();
}

double support_fraction(const std::string& data, const Tensor& x) {
  Points P = host_points(x, "support_fraction", "x");
  DF_CHECK(P.d == 2, "support_fraction: expected x (N, 2), got ", x.desc());
  int64_t in = 0;
  for (int64_t i = 0; i < P.n; ++i) in += toy_in_support(data, P.v[2 * i], P.v[2 * i + 1]);
  return double(in) / double(P.n);
}

}  // namespace df
