// Op-table rows for linear algebra, normalisation and losses, each with a hand-written reference
// loop, plus the error-message checks of these ops.
#include <doctest/doctest.h>

#include <cmath>
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
