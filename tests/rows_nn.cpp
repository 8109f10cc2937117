// Op-table rows for linear algebra, normalisation and losses, each with a hand-written reference
// loop, plus the error-message checks of these ops.
#include <doctest/doctest.h>

#include <cmath>
#include <functional>
#include <string>

#include "tests/checker.h"

using namespace df;
using namespace df::test;

namespace {

using Vals = std::vector<std::vector<double>>;
using Shapes = std::vector<Shape>;

// NumPy matmul on row-major values: 1-D operands promoted, batch dims broadcast.
std::vector<double> ref_matmul(const std::vector<double>& a, Shape sa, const std::vector<double>& b, Shape sb) {
  bool a1 = sa.size() == 1, b1 = sb.size() == 1;
  if (a1) sa = {1, sa[0]};
  if (b1) sb = {sb[0], 1};
  int64_t n = sa[sa.size() - 2], k = sa.back(), m = sb.back();
  size_t r = std::max(sa.size(), sb.size()) - 2;
  Shape pa(r, 1), pb(r, 1), bs(r);
  for (size_t i = 0; i < sa.size() - 2; ++i) pa[r - (sa.size() - 2) + i] = sa[i];
  for (size_t i = 0; i < sb.size() - 2; ++i) pb[r - (sb.size() - 2) + i] = sb[i];
  int64_t nb = 1;
  for (size_t i = 0; i < r; ++i) nb *= (bs[i] = std::max(pa[i], pb[i]));
  std::vector<double> out(nb * n * m, 0.0);
  for (int64_t q = 0; q < nb; ++q) {
    int64_t rem = q, ia = 0, ib = 0, mul_a = 1, mul_b = 1;
    for (int64_t d = (int64_t)r - 1; d >= 0; --d) {
      int64_t i = rem % bs[d];
      rem /= bs[d];
      ia += (pa[d] == 1 ? 0 : i) * mul_a;
      ib += (pb[d] == 1 ? 0 : i) * mul_b;
      mul_a *= pa[d];
      mul_b *= pb[d];
    }
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < m; ++j) {
        double s = 0;
        for (int64_t t = 0; t < k; ++t) s += a[ia * n * k + i * k + t] * b[ib * k * m + t * m + j];
        out[q * n * m + i * m + j] = s;
      }
  }
  return out;
}

OpRow matmul_row(Shape sa, Shape sb) {
  OpRow r;
  r.name = "matmul " + shape_str(sa) + " " + shape_str(sb);
  r.fn = [](const Tensors& x) { return matmul(x[0], x[1]); };
  r.shapes = {sa, sb};
  r.reference = [](const Vals& v, const Shapes& s) { return ref_matmul(v[0], s[0], v[1], s[1]); };
  r.f32_rtol = 1e-4;
  return r;
}

// y[r, o] = sum_i x[r, i] w[o, i] + b[o] over the flattened leading dims of x.
std::vector<double> ref_linear(const Vals& v, const Shapes& s) {
  int64_t in = s[1][1], nout = s[1][0], M = (int64_t)v[0].size() / in;
  std::vector<double> out(M * nout);
  for (int64_t r = 0; r < M; ++r)
    for (int64_t o = 0; o < nout; ++o) {
      double acc = v.size() > 2 ? v[2][o] : 0.0;
      for (int64_t i = 0; i < in; ++i) acc += v[0][r * in + i] * v[1][o * in + i];
      out[r * nout + o] = acc;
    }
  return out;
}

OpRow linear_row(Shape sx, int64_t nout, bool bias) {
  OpRow r;
  r.name = std::string("linear ") + shape_str(sx) + (bias ? " bias" : " no bias");
  r.shapes = {sx, {nout, sx.back()}};
  if (bias) r.shapes.push_back({nout});
  r.fn = [bias](const Tensors& x) { return bias ? linear(x[0], x[1], x[2]) : linear(x[0], x[1]); };
  r.reference = ref_linear;
  r.f32_rtol = 1e-4;
  return r;
}

std::vector<OpRow> linalg_rows() {
  std::vector<OpRow> r = {
      matmul_row({3, 4}, {4, 5}),        matmul_row({2, 3, 4}, {2, 4, 5}), matmul_row({2, 3, 4}, {4, 5}),
      matmul_row({2, 1, 3, 4}, {5, 4, 2}), matmul_row({4}, {4, 3}),          matmul_row({3, 4}, {4}),
      matmul_row({4}, {4}),
      linear_row({3, 4}, 5, true),       linear_row({3, 4}, 5, false),     linear_row({2, 3, 4}, 5, true),
      linear_row({4}, 3, true),
  };
  {
    OpRow t = matmul_row({4, 3}, {4, 5});
    t.name = "matmul transpose(a) [3, 4] (a [4, 3]) @ [4, 5]";
    t.fn = [](const Tensors& x) { return matmul(transpose(x[0], 0, 1), x[1]); };
    t.reference = [](const Vals& v, const Shapes&) {
      std::vector<double> out(3 * 5, 0.0);
      for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 5; ++j)
          for (int k = 0; k < 4; ++k) out[i * 5 + j] += v[0][k * 3 + i] * v[1][k * 5 + j];
      return out;
    };
    r.push_back(t);
  }
  {
    OpRow t = matmul_row({3, 4}, {5, 4});
    t.name = "matmul [3, 4] @ transpose(b) (b [5, 4])";
    t.fn = [](const Tensors& x) { return matmul(x[0], transpose(x[1], 0, 1)); };
    t.reference = [](const Vals& v, const Shapes&) {
      std::vector<double> out(3 * 5, 0.0);
      for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 5; ++j)
          for (int k = 0; k < 4; ++k) out[i * 5 + j] += v[0][i * 4 + k] * v[1][j * 4 + k];
      return out;
    };
    r.push_back(t);
  }
  {
    // Columns with stride 0 fit no BLAS layout: the operand must be copied, not misread.
    OpRow t = matmul_row({3, 1}, {4, 2});
    t.name = "matmul broadcast_to(a [3, 1], [3, 4]) @ [4, 2]";
    t.fn = [](const Tensors& x) { return matmul(broadcast_to(x[0], {3, 4}), x[1]); };
    t.reference = [](const Vals& v, const Shapes&) {
      std::vector<double> out(3 * 2, 0.0);
      for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 2; ++j)
          for (int k = 0; k < 4; ++k) out[i * 2 + j] += v[0][i] * v[1][k * 2 + j];
      return out;
    };
    r.push_back(t);
  }
  {
    // Batch stride smaller than the row stride (a permuted view): used in place with ld 8.
    OpRow t = matmul_row({3, 2, 4}, {4, 5});
    t.name = "matmul permute(a [3, 2, 4]) [2, 3, 4] @ [4, 5]";
    t.fn = [](const Tensors& x) { return matmul(permute(x[0], {1, 0, 2}), x[1]); };
    t.reference = [](const Vals& v, const Shapes&) {
      std::vector<double> out(2 * 3 * 5, 0.0);
      for (int q = 0; q < 2; ++q)
        for (int i = 0; i < 3; ++i)
          for (int j = 0; j < 5; ++j)
            for (int k = 0; k < 4; ++k) out[(q * 3 + i) * 5 + j] += v[0][(i * 2 + q) * 4 + k] * v[1][k * 5 + j];
      return out;
    };
    r.push_back(t);
  }
  {
    OpRow t = linear_row({3, 4}, 5, true);
    t.name = "linear with transposed weight view";
    t.shapes = {{3, 4}, {4, 5}, {5}};
    t.fn = [](const Tensors& x) { return linear(x[0], transpose(x[1], 0, 1), x[2]); };
    t.reference = [](const Vals& v, const Shapes&) {
      std::vector<double> out(3 * 5);
      for (int r = 0; r < 3; ++r)
        for (int o = 0; o < 5; ++o) {
          double acc = v[2][o];
          for (int i = 0; i < 4; ++i) acc += v[0][r * 4 + i] * v[1][i * 5 + o];
          out[r * 5 + o] = acc;
        }
      return out;
    };
    r.push_back(t);
  }
  return r;
}

RegisterRows reg_linalg(linalg_rows());

// Softmax or log-softmax over `axis` of a row-major tensor, one (outer, inner) slice at a time.
std::vector<double> ref_softmax(const std::vector<double>& x, const Shape& s, int64_t axis, bool log) {
  int64_t O = 1, R = s[axis], I = 1;
  for (int64_t d = 0; d < axis; ++d) O *= s[d];
  for (int64_t d = axis + 1; d < (int64_t)s.size(); ++d) I *= s[d];
  std::vector<double> out(x.size());
  for (int64_t o = 0; o < O; ++o)
    for (int64_t i = 0; i < I; ++i) {
      double z = 0;
      for (int64_t r = 0; r < R; ++r) z += std::exp(x[(o * R + r) * I + i]);
      for (int64_t r = 0; r < R; ++r) {
        double v = x[(o * R + r) * I + i];
        out[(o * R + r) * I + i] = log ? v - std::log(z) : std::exp(v) / z;
      }
    }
  return out;
}

OpRow softmax_row(Shape s, int64_t axis, bool log) {
  OpRow r;
  r.name = std::string(log ? "log_softmax " : "softmax ") + shape_str(s) + " axis " + std::to_string(axis);
  r.shapes = {s};
  r.lo = -3;
  r.hi = 3;
  r.fn = [axis, log](const Tensors& x) { return log ? log_softmax(x[0], axis) : softmax(x[0], axis); };
  int64_t a = axis < 0 ? axis + (int64_t)s.size() : axis;
  r.reference = [a, log](const Vals& v, const Shapes& sh) { return ref_softmax(v[0], sh[0], a, log); };
  return r;
}

// Layer norm (rms = false) or RMS norm of each row of the trailing `nd` dims; weight and bias
// (when present) are the 2nd and 3rd inputs.
std::vector<double> ref_norm(const Vals& v, const Shapes& s, int64_t nd, bool has_w, bool has_b, double eps,
                             bool rms) {
  int64_t R = 1;
  for (size_t d = s[0].size() - nd; d < s[0].size(); ++d) R *= s[0][d];
  int64_t O = (int64_t)v[0].size() / R;
  std::vector<double> out(v[0].size());
  for (int64_t o = 0; o < O; ++o) {
    double mu = 0, var = 0;
    if (!rms) {
      for (int64_t r = 0; r < R; ++r) mu += v[0][o * R + r];
      mu /= R;
    }
    for (int64_t r = 0; r < R; ++r) var += (v[0][o * R + r] - mu) * (v[0][o * R + r] - mu);
    var /= R;
    for (int64_t r = 0; r < R; ++r) {
      double y = (v[0][o * R + r] - mu) / std::sqrt(var + eps);
      if (has_w) y *= v[1][r];
      if (has_b) y += v[2][r];
      out[o * R + r] = y;
    }
  }
  return out;
}

OpRow norm_row(bool rms, Shape s, int64_t nd, bool affine) {
  OpRow r;
  r.name = std::string(rms ? "rms_norm " : "layer_norm ") + shape_str(s) + " over " + std::to_string(nd) +
           (affine ? (rms ? " dims, weight" : " dims, weight and bias") : " dims, plain");
  r.shapes = {s};
  Shape ps(s.end() - nd, s.end());
  if (affine) {
    r.shapes.push_back(ps);
    if (!rms) r.shapes.push_back(ps);
  }
  double eps = rms ? 1e-6 : 1e-5;
  r.fn = [rms, nd, affine, eps](const Tensors& x) {
    if (rms) return rms_norm(x[0], nd, affine ? x[1] : Tensor(), eps);
    return affine ? layer_norm(x[0], nd, x[1], x[2], eps) : layer_norm(x[0], nd, Tensor(), Tensor(), eps);
  };
  r.reference = [rms, nd, affine, eps](const Vals& v, const Shapes& sh) {
    return ref_norm(v, sh, nd, affine, affine && !rms, eps, rms);
  };
  r.f32_rtol = 1e-4;
  return r;
}

std::vector<double> ref_pseudo_huber(const Vals& v, const Shapes& s, double c) {
  int64_t B = s[0][0], D = (int64_t)v[0].size() / B;
  double total = 0;
  for (int64_t i = 0; i < B; ++i) {
    double n2 = 0;
    for (int64_t j = 0; j < D; ++j) n2 += (v[0][i * D + j] - v[1][i * D + j]) * (v[0][i * D + j] - v[1][i * D + j]);
    total += std::sqrt(n2 + c * c) - c;
  }
  return {total / B};
}

std::vector<OpRow> nn_rows() {
  std::vector<OpRow> r = {
      softmax_row({3, 5}, -1, false),     softmax_row({4, 3}, 0, false),  softmax_row({2, 4, 3}, 1, false),
      softmax_row({3, 5}, -1, true),      softmax_row({2, 4, 3}, 1, true),
      norm_row(false, {3, 6}, 1, true),   norm_row(false, {3, 6}, 1, false), norm_row(false, {2, 3, 4}, 2, true),
      norm_row(false, {2, 3, 4}, 2, false), norm_row(true, {3, 6}, 1, true), norm_row(true, {2, 3, 4}, 2, false),
  };
  {
    OpRow m;
    m.name = "mse_loss [3, 4]";
    m.shapes = {{3, 4}, {3, 4}};
    m.fn = [](const Tensors& x) { return mse_loss(x[0], x[1]); };
    m.reference = [](const Vals& v, const Shapes&) {
      double s = 0;
      for (size_t i = 0; i < v[0].size(); ++i) s += (v[0][i] - v[1][i]) * (v[0][i] - v[1][i]);
      return std::vector<double>{s / v[0].size()};
    };
    r.push_back(m);
  }
  for (double c : {0.03, 1.0}) {
    OpRow p;
    p.name = "pseudo_huber_loss [4, 3, 2] c=" + std::to_string(c);
    p.shapes = {{4, 3, 2}, {4, 3, 2}};
    p.fn = [c](const Tensors& x) { return pseudo_huber_loss(x[0], x[1], c); };
    p.reference = [c](const Vals& v, const Shapes& s) { return ref_pseudo_huber(v, s, c); };
    r.push_back(p);
  }
  {
    OpRow p;
    p.name = "pseudo_huber_loss [5] (1-D) c=0.5";
    p.shapes = {{5}, {5}};
    p.fn = [](const Tensors& x) { return pseudo_huber_loss(x[0], x[1], 0.5); };
    p.reference = [](const Vals& v, const Shapes& s) { return ref_pseudo_huber(v, s, 0.5); };
    r.push_back(p);
  }
  {
    static const std::vector<int64_t> labels = {1, 0, 4, 2};
    OpRow ce;
    ce.name = "cross_entropy [4, 5]";
    ce.shapes = {{4, 5}};
    ce.lo = -3;
    ce.hi = 3;
    ce.fn = [](const Tensors& x) { return cross_entropy(x[0], labels); };
    ce.reference = [](const Vals& v, const Shapes&) {
      double total = 0;
      for (int i = 0; i < 4; ++i) {
        double z = 0;
        for (int k = 0; k < 5; ++k) z += std::exp(v[0][i * 5 + k]);
        total += std::log(z) - v[0][i * 5 + labels[i]];
      }
      return std::vector<double>{total / 4};
    };
    r.push_back(ce);
  }
  return r;
}

RegisterRows reg_nn(nn_rows());

}  // namespace

TEST_CASE("matmul and linear: error messages name the op and the shapes") {
  Tensor a = zeros({2, 3}), b = zeros({4, 5});
  std::string msg;
  try {
    matmul(a, b);
  } catch (const Error& e) {
    msg = e.what();
  }
  CHECK(msg.find("matmul") != std::string::npos);
  CHECK(msg.find(shape_str({2, 3})) != std::string::npos);
  CHECK(msg.find(shape_str({4, 5})) != std::string::npos);
  msg.clear();
  try {
    matmul(zeros({2, 3, 4}), zeros({3, 4, 5}));
  } catch (const Error& e) {
    msg = e.what();
  }
  CHECK(msg.find("matmul") != std::string::npos);
  CHECK(msg.find(shape_str({2, 3, 4})) != std::string::npos);
  CHECK(msg.find(shape_str({3, 4, 5})) != std::string::npos);
  msg.clear();
  try {
    linear(zeros({2, 3}), zeros({5, 4}));
  } catch (const Error& e) {
    msg = e.what();
  }
  CHECK(msg.find("linear") != std::string::npos);
  CHECK(msg.find(shape_str({2, 3})) != std::string::npos);
}

TEST_CASE("softmax, norms and losses: error messages and edge values") {
  auto message = [](const std::function<void()>& f) {
    try {
      f();
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  std::string m = message([] { cross_entropy(zeros({2, 3}), {0, 3}); });
  CHECK(m.find("cross_entropy") != std::string::npos);
  CHECK(m.find("label 3") != std::string::npos);
  m = message([] { cross_entropy(zeros({2, 3}), {0}); });
  CHECK(m.find("cross_entropy") != std::string::npos);
  m = message([] { layer_norm(zeros({2, 3}), 1, zeros({2})); });
  CHECK(m.find("layer_norm") != std::string::npos);
  CHECK(m.find(shape_str({2, 3})) != std::string::npos);
  m = message([] { mse_loss(zeros({2, 3}), zeros({3, 2})); });
  CHECK(m.find("mse_loss") != std::string::npos);
  // Large logits: the max shift keeps softmax finite and normalised.
  Tensor big = from_vector({1000, 1001, 999, -1000}, {4}, DType::F32);
  auto p = softmax(big).to_vector();
  double s = 0;
  for (double v : p) s += v;
  CHECK(s == doctest::Approx(1.0).epsilon(1e-6));
  CHECK(p[1] == doctest::Approx(std::exp(1.0) / (1 + std::exp(1.0) + std::exp(-1.0))).epsilon(1e-5));
  CHECK(log_softmax(big).to_vector()[3] == doctest::Approx(-2001 - std::log(1 + std::exp(-1.0) + std::exp(-2.0))));
}

TEST_CASE("linear, matmul and layer_norm: JVP with some tangents absent equals JVP with zero tangents") {
  // The rules skip absent tangents (and fold the bias tangent into a GEMM); each subset must agree
  // with the full rule fed explicit zeros.
  using F = std::function<Tensor(const Tensors&)>;
  struct Case {
    const char* name;
    F f;
    std::vector<Shape> shapes;
  };
  std::vector<Case> cases = {
      {"linear", [](const Tensors& x) { return linear(x[0], x[1], x[2]); }, {{2, 3, 4}, {5, 4}, {5}}},
      {"matmul", [](const Tensors& x) { return matmul(x[0], x[1]); }, {{2, 3, 4}, {4, 5}}},
      {"layer_norm", [](const Tensors& x) { return layer_norm(x[0], 1, x[1], x[2]); }, {{3, 4}, {4}, {4}}},
      {"rms_norm", [](const Tensors& x) { return rms_norm(x[0], 1, x[1]); }, {{3, 4}, {4}}},
  };
  for (auto& c : cases) {
    size_t n = c.shapes.size();
    Tensors x, t;
    for (size_t i = 0; i < n; ++i) {
      x.push_back(randn(c.shapes[i], 40 + i, DType::F64));
      t.push_back(randn(c.shapes[i], 80 + i, DType::F64));
    }
    Fn f = [&](const Tensors& a) { return Tensors{c.f(a)}; };
    for (unsigned mask = 1; mask < (1u << n); ++mask) {
      CAPTURE(c.name);
      CAPTURE(mask);
      Tensors partial(n), zeroed(n);
      for (size_t i = 0; i < n; ++i) {
        bool on = mask & (1u << i);
        partial[i] = on ? t[i] : Tensor();
        zeroed[i] = on ? t[i] : zeros_like(t[i]);
      }
      auto got = jvp(f, x, partial).second[0].to_vector();
      auto want = jvp(f, x, zeroed).second[0].to_vector();
      CHECK(mismatch(got, want, 1e-12, 1e-12) <= 1);
    }
  }
}
