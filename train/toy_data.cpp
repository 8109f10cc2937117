// Gaussian-mixture closed forms (via differentiable ops, so tests can autodiff them) and the
// host-side samplers of the 2-D toy sets.
#include "train/toy_data.h"

#include <algorithm>
#include <cmath>

#include "ops/ops.h"

namespace df {
namespace {

constexpr double kPi = 3.14159265358979323846;

struct MixtureTerms {
  Tensor logits;  // (B, K): log pi_k + log N(x; mu_k, (s_k^2 + sigma^2) I)
  Tensor ratio;   // (B or 1, K): s_k^2 / (s_k^2 + sigma^2), only when sigma is given
  Tensor diff;    // (B, K, D): x - mu_k
  Tensor means;   // (1, K, D)
};

// sigma as a (B, 1) or (1, 1) tensor of x's dtype.
Tensor sigma_column(const Tensor& x, const Tensor& sigma, const char* who) {
  int64_t B = x.size(0);
  DF_CHECK(sigma.defined() && (sigma.numel() == 1 || sigma.numel() == B), who,
           ": expected sigma with 1 or B = ", B, " elements, got ",
           sigma.defined() ? sigma.desc() : std::string("undefined"));
  Tensor s = sigma.dtype() == x.dtype() ? sigma : cast(sigma, x.dtype());
  return reshape(s, {sigma.numel() == 1 ? 1 : B, 1});
}

MixtureTerms mixture_terms(const GaussianMixture& m, const Tensor& x, const Tensor& sigma, const char* who) {
  m.validate();
  DF_CHECK(x.dim() == 2 && x.size(1) == m.dim, who, ": expected x (B, ", m.dim, "), got ", x.desc());
  int64_t K = (int64_t)m.weights.size(), D = m.dim;
  double wsum = 0;
  for (double w : m.weights) wsum += w;
  std::vector<double> mu, logw(K), s2(K);
  for (int64_t k = 0; k < K; ++k) {
    for (double v : m.means[k]) mu.push_back(v);
    logw[k] = std::log(m.weights[k] / wsum);
    s2[k] = m.stds[k] * m.stds[k];
  }
  MixtureTerms t;
  t.means = from_vector(mu, {1, K, D}, x.dtype(), x.device());
  Tensor var = from_vector(s2, {1, K}, x.dtype(), x.device());
  Tensor s2t = var;
  if (sigma.defined()) var = add(var, square(sigma_column(x, sigma, who)));
  t.diff = sub(unsqueeze(x, 1), t.means);
  Tensor d2 = sum(square(t.diff), {2});
  t.logits = sub(sub(from_vector(logw, {1, K}, x.dtype(), x.device()), div(d2, mul(var, 2.0))),
                 mul(log(mul(var, 2 * kPi)), 0.5 * double(D)));
  if (sigma.defined()) t.ratio = div(s2t, var);
  return t;
}

}  // namespace

void GaussianMixture::validate() const {
  size_t K = weights.size();
  DF_CHECK(K > 0 && means.size() == K && stds.size() == K, "GaussianMixture: expected matching "
           "weights/means/stds sizes, got ", K, ", ", means.size(), ", ", stds.size());
  DF_CHECK(dim > 0, "GaussianMixture: dim must be positive, got ", dim);
  for (size_t k = 0; k < K; ++k) {
    DF_CHECK((int)means[k].size() == dim, "GaussianMixture: mean ", k, " has ", means[k].size(),
             " entries, expected dim = ", dim);
    DF_CHECK(weights[k] > 0 && stds[k] >= 0, "GaussianMixture: component ", k,
             " needs weight > 0 and std >= 0, got ", weights[k], " and ", stds[k]);
  }
}

Tensor GaussianMixture::sample(int64_t n, Generator& g, DType dtype) const {
  validate();
  DF_CHECK(n >= 0, "GaussianMixture::sample: n must be >= 0, got ", n);
  std::vector<double> u = g.rand({n}, DType::F64).to_vector();
  std::vector<double> eps = g.randn({n, dim}, DType::F64).to_vector();
  std::vector<double> cum(weights.size());
  double s = 0;
  for (size_t k = 0; k < weights.size(); ++k) cum[k] = (s += weights[k]);
  std::vector<double> out(size_t(n) * dim);
  for (int64_t i = 0; i < n; ++i) {
    size_t k = 0;
    while (k + 1 < cum.size() && u[i] * s >= cum[k]) ++k;
    for (int d = 0; d < dim; ++d) out[i * dim + d] = means[k][d] + stds[k] * eps[i * dim + d];
  }
  return from_vector(out, {n, (int64_t)dim}, dtype);
}

Tensor GaussianMixture::log_prob(const Tensor& x) const {
  return logsumexp(mixture_terms(*this, x, Tensor(), "GaussianMixture::log_prob").logits, {1});
}

Tensor GaussianMixture::log_prob_noisy(const Tensor& x, const Tensor& sigma) const {
  return logsumexp(mixture_terms(*this, x, sigma, "GaussianMixture::log_prob_noisy").logits, {1});
}

Tensor GaussianMixture::denoise(const Tensor& x, const Tensor& sigma) const {
  MixtureTerms t = mixture_terms(*this, x, sigma, "GaussianMixture::denoise");
  // Posterior component weights (softmax by log-sum-exp) times per-component posterior means
  // mu_k + s_k^2 / (s_k^2 + sigma^2) (x - mu_k).
  Tensor gamma = exp(sub(t.logits, logsumexp(t.logits, {1}, true)));
  Tensor post = add(t.means, mul(unsqueeze(t.ratio, 2), t.diff));
  return sum(mul(unsqueeze(gamma, 2), post), {1});
}

Tensor GaussianMixture::score(const Tensor& x, const Tensor& sigma) const {
  Tensor s = sigma_column(x, sigma, "GaussianMixture::score");
  return div(sub(denoise(x, sigma), x), square(s));
}

GaussianMixture eight_gaussians(double radius, double std) {
  GaussianMixture m;
  m.dim = 2;
  for (int k = 0; k < 8; ++k) {
    double a = 2 * kPi * k / 8;
    m.weights.push_back(1.0 / 8);
    m.means.push_back({radius * std::cos(a), radius * std::sin(a)});
    m.stds.push_back(std);
  }
  return m;
}

GaussianMixture simple_gmm_2d() {
  GaussianMixture m;
  m.dim = 2;
  m.weights = {0.5, 0.3, 0.2};
  m.means = {{-1.5, -0.5}, {1.0, 1.2}, {1.5, -1.3}};
  m.stds = {0.3, 0.2, 0.4};
  return m;
}

const std::vector<std::string>& toy_names() {
  static const std::vector<std::string> names = {"8gaussians", "moons", "swissroll", "checkerboard", "gmm"};
  return names;
}

static std::string valid_names() {
  std::string s;
  for (auto& n : toy_names()) s += (s.empty() ? "" : ", ") + n;
  return s;
}

GaussianMixture toy_mixture(const std::string& name) {
  if (name == "8gaussians") return eight_gaussians();
  if (name == "gmm") return simple_gmm_2d();
  DF_FAIL("toy_mixture: '", name, "' has no exact mixture form (those that do: 8gaussians, gmm)");
}

bool in_checkerboard(double x, double y) {
  if (!(std::abs(x) <= kCheckerHalf && std::abs(y) <= kCheckerHalf)) return false;
  int col = std::min(3, int(std::floor((x + kCheckerHalf) / kCheckerCell)));
  int row = std::min(3, int(std::floor((y + kCheckerHalf) / kCheckerCell)));
  return (row + col) % 2 == 0;
}

namespace {
// log erfc(u) for u >= 0; past u = 25 (erfc ~ 1e-274) the asymptotic series, so it never underflows.
double log_erfc(double u) {
  if (u < 25) return std::log(std::erfc(u));
  double u2 = u * u;
  return -u2 - std::log(u * std::sqrt(kPi)) + std::log1p(-0.5 / u2 + 0.75 / (u2 * u2));
}
// log(Phi(b) - Phi(a)) for a < b, without cancellation in either tail.
double log_normal_mass(double a, double b) {
  const double r2 = std::sqrt(2.0);
  if (a >= 0 || b <= 0) {
    // One tail: mirror to the upper one, Phi(b) - Phi(a) = (erfc(u) - erfc(v)) / 2, u < v.
    double u = (a >= 0 ? a : -b) / r2, v = (a >= 0 ? b : -a) / r2;
    double lu = log_erfc(u), lv = log_erfc(v);
    return lu + std::log1p(-std::exp(lv - lu)) - std::log(2.0);
  }
  return std::log(1 - 0.5 * std::erfc(b / r2) - 0.5 * std::erfc(-a / r2));
}
}  // namespace

Tensor checkerboard_denoise(const Tensor& x, double sigma) {
  DF_CHECK(x.defined() && x.dim() == 2 && x.size(1) == 2, "checkerboard_denoise: expected x (B, 2), got ",
           x.defined() ? x.desc() : std::string("undefined"));
  DF_CHECK(sigma > 0, "checkerboard_denoise: expected sigma > 0, got ", sigma);
  std::vector<double> v;
  {
    NoGrad ng;
    v = x.detach().to_vector();
  }
  const double log_phi0 = -0.5 * std::log(2 * kPi);
  std::vector<double> out(v.size());
  for (size_t i = 0; i < v.size(); i += 2) {
    // Per black cell: log mass and posterior mean (a product of truncated normals); then a softmax.
    double logw[8], mean[8][2], mx = -INFINITY;
    int k = 0;
    for (int row = 0; row < 4; ++row)
      for (int col = row % 2; col < 4; col += 2, ++k) {
        logw[k] = 0;
        const int cell[2] = {col, row};
        for (int d = 0; d < 2; ++d) {
          double lo = -kCheckerHalf + kCheckerCell * cell[d], hi = lo + kCheckerCell;
          double a = (lo - v[i + d]) / sigma, b = (hi - v[i + d]) / sigma;
          double lz = log_normal_mass(a, b);
          logw[k] += lz;
          mean[k][d] = v[i + d] + sigma * (std::exp(log_phi0 - 0.5 * a * a - lz) -
                                           std::exp(log_phi0 - 0.5 * b * b - lz));
        }
        mx = std::max(mx, logw[k]);
      }
    double z = 0, m0 = 0, m1 = 0;
    for (k = 0; k < 8; ++k) {
      double w = std::exp(logw[k] - mx);
      z += w, m0 += w * mean[k][0], m1 += w * mean[k][1];
    }
    out[i] = m0 / z;
    out[i + 1] = m1 / z;
  }
  return from_vector(out, x.shape(), x.dtype());
}

bool toy_in_support(const std::string& name, double x, double y) {
  if (name == "checkerboard") return in_checkerboard(x, y);
  if (name == "8gaussians" || name == "gmm") {
    GaussianMixture m = toy_mixture(name);
    for (size_t k = 0; k < m.means.size(); ++k)
      if (std::hypot(x - m.means[k][0], y - m.means[k][1]) <= 3 * m.stds[k]) return true;
    return false;
  }
  DF_FAIL("toy_in_support: '", name, "' has no support rule (those that do: 8gaussians, gmm, checkerboard)");
}

Tensor sample_toy(const std::string& name, int64_t n, Generator& g, DType dtype) {
  DF_CHECK(n >= 0, "sample_toy: n must be >= 0, got ", n);
  if (name == "8gaussians" || name == "gmm") return toy_mixture(name).sample(n, g, dtype);
  std::vector<double> out(size_t(n) * 2);
  if (name == "moons") {
    // two interleaved half circles, centred and scaled by 2 to fill about [-3, 3] x [-1.5, 1.5]
    auto u = g.rand({n, 2}, DType::F64).to_vector();
    auto e = g.randn({n, 2}, DType::F64).to_vector();
    for (int64_t i = 0; i < n; ++i) {
      double t = kPi * u[2 * i];
      bool inner = u[2 * i + 1] < 0.5;
      double x = inner ? 1 - std::cos(t) : std::cos(t);
      double y = inner ? 0.5 - std::sin(t) : std::sin(t);
      out[2 * i] = 2 * (x - 0.5) + 0.1 * e[2 * i];
      out[2 * i + 1] = 2 * (y - 0.25) + 0.1 * e[2 * i + 1];
    }
  } else if (name == "swissroll") {
    // a spiral r = t / 5 for t in [1.5 pi, 4.5 pi], radius below 2.9
    auto u = g.rand({n}, DType::F64).to_vector();
    auto e = g.randn({n, 2}, DType::F64).to_vector();
    for (int64_t i = 0; i < n; ++i) {
      double t = 1.5 * kPi * (1 + 2 * u[i]);
      out[2 * i] = t * std::cos(t) / 5 + 0.1 * e[2 * i];
      out[2 * i + 1] = t * std::sin(t) / 5 + 0.1 * e[2 * i + 1];
    }
  } else if (name == "checkerboard") {
    // uniform over the 8 "black" cells of a 4x4 board of 1.5-wide cells covering [-3, 3]^2
    auto u = g.rand({n, 3}, DType::F64).to_vector();
    for (int64_t i = 0; i < n; ++i) {
      int c = std::min(7, int(u[3 * i] * 8));
      int row = c / 2, col = 2 * (c % 2) + (row % 2);
      out[2 * i] = -kCheckerHalf + kCheckerCell * (col + u[3 * i + 1]);
      out[2 * i + 1] = -kCheckerHalf + kCheckerCell * (row + u[3 * i + 2]);
    }
  } else {
    DF_FAIL("sample_toy: unknown data set '", name, "'; valid names: ", valid_names());
  }
  return from_vector(out, {n, 2}, dtype);
}

}  // namespace df
