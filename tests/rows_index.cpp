// Op-table rows for the tensor-indexed ops (gather, scatter_add, index_select / embedding /
// cross_entropy with i64 tensors), max_pool2d and the losses' reductions, each with a loop
// reference; plus focused tests: index errors, repeated indices, tensor labels equal to the list.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "tests/checker.h"
#include "tests/test_util.h"

using namespace df;
using namespace df::test;

namespace {

using Vals = std::vector<double>;
using Idx = std::vector<int64_t>;
using In = std::vector<Vals>;
using Shapes = std::vector<Shape>;

Idx unravel(int64_t k, const Shape& s) {
  Idx idx(s.size());
  for (int64_t d = (int64_t)s.size() - 1; d >= 0; --d) {
    idx[d] = k % s[d];
    k /= s[d];
  }
  return idx;
}

int64_t ravel(const Idx& idx, const Shape& s) {
  int64_t k = 0;
  for (size_t d = 0; d < s.size(); ++d) k = k * s[d] + idx[d];
  return k;
}

// The index tensor of a row, moved to the inputs' device when the CUDA suite runs the row.
Tensor on(const Tensor& index, const Tensor& like) { return index.to(like.device()); }

// ---- gather / scatter_add -------------------------------------------------------------------------

OpRow gather_row(Shape xs, int64_t axis, Shape is, Idx values) {
  OpRow r;
  r.name = "gather " + shape_str(xs) + " axis " + std::to_string(axis) + " index " + shape_str(is);
  r.shapes = {xs};
  Tensor index = from_indices(values, is);
  int64_t a = axis < 0 ? axis + (int64_t)xs.size() : axis;
  r.fn = [index, axis](const Tensors& x) { return gather(x[0], axis, on(index, x[0])); };
  r.reference = [xs, is, a, values](const In& v, const Shapes&) {
    Vals out(values.size());
    for (int64_t k = 0; k < (int64_t)values.size(); ++k) {
      Idx p = unravel(k, is);
      p[a] = values[k];
      out[k] = v[0][ravel(p, xs)];
    }
    return out;
  };
  return r;
}

// scatter_add(x, axis, index, src): both x and src are inputs (the derivative checks cover both).
OpRow scatter_add_row(Shape xs, int64_t axis, Shape is, Shape ss, Idx values) {
  OpRow r;
  r.name = "scatter_add " + shape_str(xs) + " axis " + std::to_string(axis) + " index " + shape_str(is) + " src " +
           shape_str(ss);
  r.shapes = {xs, ss};
  Tensor index = from_indices(values, is);
  int64_t a = axis < 0 ? axis + (int64_t)xs.size() : axis;
  r.fn = [index, axis](const Tensors& x) { return scatter_add(x[0], axis, on(index, x[0]), x[1]); };
  r.reference = [xs, is, ss, a, values](const In& v, const Shapes&) {
    Vals out = v[0];
    for (int64_t k = 0; k < (int64_t)values.size(); ++k) {
      Idx p = unravel(k, is);
      double s = v[1][ravel(p, ss)];
      p[a] = values[k];
      out[ravel(p, xs)] += s;
    }
    return out;
  };
  return r;
}

OpRow index_select_row(Shape xs, int64_t axis, Idx values) {
  OpRow r;
  r.name = "index_select (tensor) " + shape_str(xs) + " axis " + std::to_string(axis);
  r.shapes = {xs};
  Tensor index = from_indices(values);
  int64_t a = axis < 0 ? axis + (int64_t)xs.size() : axis;
  r.fn = [index, axis](const Tensors& x) { return index_select(x[0], axis, on(index, x[0])); };
  r.reference = [xs, a, values](const In& v, const Shapes&) {
    Shape os = xs;
    os[a] = (int64_t)values.size();
    Vals out(shape_numel(os));
    for (int64_t k = 0; k < (int64_t)out.size(); ++k) {
      Idx p = unravel(k, os);
      p[a] = values[p[a]];
      out[k] = v[0][ravel(p, xs)];
    }
    return out;
  };
  return r;
}

// ---- losses -------------------------------------------------------------------------------------

const char* reduction_name(Reduction r) { return r == Reduction::None ? "none" : r == Reduction::Sum ? "sum" : "mean"; }

Vals reduce_ref(const Vals& per, Reduction r) {
  if (r == Reduction::None) return per;
  double s = 0;
  for (double x : per) s += x;
  return {r == Reduction::Sum ? s : s / double(per.size())};
}

Vals ref_cross_entropy(const Vals& z, int64_t B, int64_t K, const Idx& labels, Reduction r) {
  Vals per(B);
  for (int64_t i = 0; i < B; ++i) {
    double m = *std::max_element(z.begin() + i * K, z.begin() + (i + 1) * K), s = 0;
    for (int64_t k = 0; k < K; ++k) s += std::exp(z[i * K + k] - m);
    per[i] = m + std::log(s) - z[i * K + labels[i]];
  }
  return reduce_ref(per, r);
}

OpRow cross_entropy_row(Reduction red, bool tensor_labels) {
  static const Idx labels = {1, 0, 4, 2};
  OpRow r;
  r.name = std::string("cross_entropy [4, 5] ") + (tensor_labels ? "tensor" : "list") + " labels, reduction " +
           reduction_name(red);
  r.shapes = {{4, 5}};
  r.lo = -3;
  r.hi = 3;
  Tensor lt = from_indices(labels);
  if (tensor_labels) r.fn = [lt, red](const Tensors& x) { return cross_entropy(x[0], on(lt, x[0]), red); };
  else r.fn = [red](const Tensors& x) { return cross_entropy(x[0], labels, red); };
  r.reference = [red](const In& v, const Shapes&) { return ref_cross_entropy(v[0], 4, 5, labels, red); };
  return r;
}

OpRow mse_row(Reduction red) {
  OpRow r;
  r.name = std::string("mse_loss [3, 4] reduction ") + reduction_name(red);
  r.shapes = {{3, 4}, {3, 4}};
  r.fn = [red](const Tensors& x) { return mse_loss(x[0], x[1], red); };
  r.reference = [red](const In& v, const Shapes&) {
    Vals per(v[0].size());
    for (size_t i = 0; i < per.size(); ++i) per[i] = (v[0][i] - v[1][i]) * (v[0][i] - v[1][i]);
    return reduce_ref(per, red);
  };
  return r;
}

OpRow pseudo_huber_row(Reduction red) {
  OpRow r;
  r.name = std::string("pseudo_huber_loss [4, 3, 2] c=0.3 reduction ") + reduction_name(red);
  r.shapes = {{4, 3, 2}, {4, 3, 2}};
  r.fn = [red](const Tensors& x) { return pseudo_huber_loss(x[0], x[1], 0.3, red); };
  r.reference = [red](const In& v, const Shapes&) {
    Vals per(4);
    for (int b = 0; b < 4; ++b) {
      double s = 0;
      for (int j = 0; j < 6; ++j) s += std::pow(v[0][b * 6 + j] - v[1][b * 6 + j], 2);
      per[b] = std::sqrt(s + 0.09) - 0.3;
    }
    return reduce_ref(per, red);
  };
  return r;
}

// ---- max_pool2d ---------------------------------------------------------------------------------

// Distinct values, shuffled: no window has a tie, even after a finite-difference step.
std::function<Tensors(uint64_t)> distinct(Shape shape) {
  return [shape](uint64_t seed) {
    int64_t n = shape_numel(shape);
    Vals v(n);
    for (int64_t i = 0; i < n; ++i) v[i] = -2 + 4 * (i + 0.5) / n;
    std::mt19937_64 rng(seed);
    std::shuffle(v.begin(), v.end(), rng);
    return Tensors{from_vector(v, shape, DType::F64)};
  };
}

OpRow max_pool_row(Shape xs, int64_t k, int64_t s, int64_t pad) {
  OpRow r;
  r.name = "max_pool2d " + shape_str(xs) + " kernel " + std::to_string(k) + " stride " + std::to_string(s) +
           " padding " + std::to_string(pad);
  r.shapes = {xs};
  r.make_inputs = distinct(xs);
  r.fn = [k, s, pad](const Tensors& x) { return max_pool2d(x[0], k, s, pad); };
  r.reference = [xs, k, s, pad](const In& v, const Shapes&) {
    int64_t H = xs[2], W = xs[3], Ho = (H + 2 * pad - k) / s + 1, Wo = (W + 2 * pad - k) / s + 1;
    Vals out;
    for (int64_t p = 0; p < xs[0] * xs[1]; ++p)
      for (int64_t oh = 0; oh < Ho; ++oh)
        for (int64_t ow = 0; ow < Wo; ++ow) {
          double m = -INFINITY;
          for (int64_t i = 0; i < k; ++i)
            for (int64_t j = 0; j < k; ++j) {
              int64_t h = oh * s - pad + i, w = ow * s - pad + j;
              if (h >= 0 && h < H && w >= 0 && w < W) m = std::max(m, v[0][(p * H + h) * W + w]);
            }
          out.push_back(m);
        }
    return out;
  };
  return r;
}

std::vector<OpRow> index_rows() {
  std::vector<OpRow> r = {
      gather_row({3, 5}, 1, {3, 4}, {4, 0, 4, 1, 2, 2, 2, 3, 0, 1, 4, 4}),
      gather_row({4, 3}, 0, {2, 2}, {3, 0, 1, 3}),
      gather_row({2, 3, 4}, -1, {2, 3, 6}, {0, 1, 2, 3, 3, 0, 1, 1, 1, 1, 2, 0, 3, 2, 1, 0, 0, 0, 2, 2, 3, 3, 1, 1,
                                          0, 3, 0, 3, 0, 3, 1, 2, 1, 2, 1, 2}),
      gather_row({3, 1, 2}, 0, {1, 1, 2}, {2, 0}),
      scatter_add_row({4, 3}, 0, {5, 3}, {5, 3}, {1, 3, 1, 0, 0, 2, 3, 3, 3, 1, 0, 2, 2, 2, 1}),
      scatter_add_row({2, 4}, 1, {2, 3}, {2, 5}, {3, 3, 0, 1, 2, 1}),
      scatter_add_row({2, 3, 1}, 1, {2, 4, 1}, {3, 4, 2}, {0, 2, 2, 1, 1, 1, 0, 2}),
      index_select_row({4, 3}, 0, {2, 0, 2, 3, 2}),
      index_select_row({2, 1, 4}, -1, {3, 3, 1}),
      cross_entropy_row(Reduction::Mean, true),
      cross_entropy_row(Reduction::Sum, true),
      cross_entropy_row(Reduction::None, true),
      cross_entropy_row(Reduction::None, false),
      cross_entropy_row(Reduction::Sum, false),
      mse_row(Reduction::None),
      mse_row(Reduction::Sum),
      pseudo_huber_row(Reduction::None),
      pseudo_huber_row(Reduction::Sum),
      max_pool_row({2, 2, 4, 4}, 2, 2, 0),
      max_pool_row({1, 2, 5, 6}, 3, 2, 1),
      max_pool_row({1, 1, 3, 4}, 2, 1, 0),
      max_pool_row({2, 1, 5, 5}, 2, 3, 1),
  };
  {
    static const Idx ids = {1, 4, 0, 1, 1, 3};
    OpRow e;
    e.name = "embedding (tensor ids [2, 3]) [5, 3]";
    e.shapes = {{5, 3}};
    Tensor it = from_indices(ids, {2, 3});
    e.fn = [it](const Tensors& x) { return embedding(x[0], on(it, x[0])); };
    e.reference = [](const In& v, const Shapes&) {
      Vals out;
      for (int64_t id : ids)
        for (int d = 0; d < 3; ++d) out.push_back(v[0][id * 3 + d]);
      return out;
    };
    r.push_back(e);
  }
  return r;
}

RegisterRows reg_index(index_rows());

Vals grad_vals(const std::function<Tensor(const Tensor&)>& f, const Tensor& x) {
  return grad_of([&](const Tensors& a) { return f(a[0]); }, {x})[0].to_vector();
}

}  // namespace

TEST_CASE("gather, scatter_add, index_select, embedding: index errors name the op, the value and the bound") {
  Tensor x = zeros({2, 5}, DType::F64);
  std::string e = error_of([&] { gather(x, 1, from_indices({0, 5}, {1, 2})); });
  CHECK(contains(e, "gather: index 5 is out of range for axis 1 of size 5"));
  e = error_of([&] { gather(x, 1, from_indices({-1}, {1, 1})); });
  CHECK(contains(e, "gather: index -1 is out of range"));
  CHECK(contains(e, "[0, 5)"));
  e = error_of([&] { gather(x, 1, from_indices({0, 1})); });  // rank 1 index for a rank 2 input
  CHECK(contains(e, "gather: index i64[2] cpu must have the rank of the input f64[2, 5] cpu"));
  e = error_of([&] { gather(x, 0, from_indices({0, 0, 0, 0, 0, 0}, {1, 6})); });
  CHECK(contains(e, "gather: index i64[1, 6] cpu is larger than the input"));
  e = error_of([&] { gather(x, 1, zeros({2, 2}, DType::F64)); });
  CHECK(contains(e, "gather: index must be an i64 tensor, got f64[2, 2] cpu"));
  e = error_of([&] { gather(x, 2, from_indices({0}, {1, 1})); });
  CHECK(contains(e, "gather: axis 2 is out of range"));
  e = error_of([&] { scatter_add(x, 0, from_indices({2}, {1, 1}), ones({1, 1}, DType::F64)); });
  CHECK(contains(e, "scatter_add: index 2 is out of range for axis 0 of size 2"));
  e = error_of([&] { scatter_add(x, 0, from_indices({0, 1}, {1, 2}), ones({1, 1}, DType::F64)); });
  CHECK(contains(e, "scatter_add: index i64[1, 2] cpu is larger than src"));
  e = error_of([&] { index_select(x, 1, from_indices({1, 7})); });
  CHECK(contains(e, "index_select: index 7 is out of range for axis 1 of size 5"));
  e = error_of([&] { index_select(x, 1, from_indices({1, 2}, {1, 2})); });
  CHECK(contains(e, "index_select: index must be 0-D or 1-D"));
  e = error_of([&] { embedding(zeros({4, 3}, DType::F64), from_indices({0, 4})); });
  CHECK(contains(e, "embedding: index 4 is out of range for axis 0 of size 4"));
  e = error_of([&] { cross_entropy(zeros({2, 3}, DType::F64), from_indices({0, 3})); });
  CHECK(contains(e, "cross_entropy: index 3 is out of range for axis 1 of size 3"));
  e = error_of([&] { cross_entropy(zeros({2, 3}, DType::F64), from_indices({0})); });
  CHECK(contains(e, "cross_entropy: labels must be (B)"));
  // Exp of an index tensor: the op and the dtype it wanted.
  CHECK(contains(error_of([] { exp(from_indices({1})); }), "exp: expected a floating dtype (f32, f64 or bf16), got i64"));
  if (have_cuda()) {  // the device kernels flag a bad index; the launcher raises the same error
    Tensor xd = zeros({2, 5}, DType::F32, Device::CUDA);
    e = error_of([&] { gather(xd, 1, from_indices({0, 5}, {1, 2}, Device::CUDA)); });
    CHECK(contains(e, "gather: index 5 is out of range for axis 1 of size 5"));
    e = error_of([&] { scatter_add(xd, 0, from_indices({-3}, {1, 1}, Device::CUDA), ones({1, 1}, DType::F32, Device::CUDA)); });
    CHECK(contains(e, "scatter_add: index -3 is out of range for axis 0 of size 2"));
    e = error_of([&] { cross_entropy(xd, from_indices({0, 7}, {2}, Device::CUDA)); });
    CHECK(contains(e, "cross_entropy: index 7 is out of range"));
    // After a flagged index the next launch is clean (the flag is per call).
    CHECK(gather(xd, 1, from_indices({4, 0}, {1, 2}, Device::CUDA)).to_vector() == Vals{0, 0});
  }
}

TEST_CASE("gather and scatter_add: repeated indices accumulate, gradients add up") {
  Tensor src = from_vector({1, 2, 3, 4}, {4}, DType::F64);
  Tensor r = scatter_add(zeros({3}, DType::F64), 0, from_indices({0, 0, 2, 0}), src);
  CHECK(r.to_vector() == Vals{7, 0, 3});
  // x is kept, not overwritten.
  CHECK(scatter_add(ones({3}, DType::F32), 0, from_indices({1, 1}), from_vector({2, 3}, {2}, DType::F32)).to_vector() ==
        Vals{1, 6, 1});
  Tensor x = from_vector({10, 20, 30}, {3}, DType::F64);
  Tensor idx = from_indices({1, 1, 1, 0});
  CHECK(gather(x, 0, idx).to_vector() == Vals{20, 20, 20, 10});
  CHECK(grad_vals([&](const Tensor& a) { return sum(gather(a, 0, idx)); }, x) == Vals{1, 3, 0});
  CHECK(grad_vals([&](const Tensor& a) { return sum(index_select(a, 0, idx)); }, x) == Vals{1, 3, 0});
  // scatter_add's gradient w.r.t. src gathers; the part of src beyond the index gets zero.
  // src (2, 3) is larger than the index (1, 2): out[0, 2] += s[0, 0], out[0, 0] += s[0, 1].
  Tensor s = from_vector({1, 2, 3, 4, 5, 6}, {2, 3}, DType::F64);
  Tensor w = from_vector({1, 10, 100}, {1, 3}, DType::F64);
  Tensor i2 = from_indices({2, 0}, {1, 2});
  CHECK(scatter_add(zeros({1, 3}, DType::F64), 1, i2, s).to_vector() == Vals{2, 0, 1});
  CHECK(grad_vals([&](const Tensor& a) { return sum(mul(scatter_add(zeros({1, 3}, DType::F64), 1, i2, a), w)); }, s) ==
        Vals{100, 1, 0, 0, 0, 0});
  if (have_cuda()) {  // atomics: many updates of one element, f32 and f64
    for (DType dt : {DType::F32, DType::F64}) {
      int64_t n = 4096;
      Tensor ones_src = ones({n}, dt, Device::CUDA);
      Tensor at0 = zeros({n}, DType::I64, Device::CUDA);  // every index 0
      Tensor r2 = scatter_add(zeros({2}, dt, Device::CUDA), 0, at0, ones_src);
      CHECK(r2.to_vector() == Vals{double(n), 0});
    }
  }
}

TEST_CASE("cross_entropy: i64 tensor labels give the list version's values and gradients") {
  Tensor z = randn({5, 4}, 3, DType::F64);
  std::vector<int64_t> labels = {3, 0, 1, 1, 2};
  for (Reduction red : {Reduction::Mean, Reduction::Sum, Reduction::None}) {
    CAPTURE(int(red));
    Tensor a = cross_entropy(z, labels, red), b = cross_entropy(z, from_indices(labels), red);
    CHECK(a.shape() == b.shape());
    CHECK(mismatch(a.to_vector(), b.to_vector(), 1e-14, 1e-14) <= 1);
    auto ga = grad_vals([&](const Tensor& x) { return sum(cross_entropy(x, labels, red)); }, z);
    auto gb = grad_vals([&](const Tensor& x) { return sum(cross_entropy(x, from_indices(labels), red)); }, z);
    CHECK(mismatch(ga, gb, 1e-14, 1e-14) <= 1);
  }
}

TEST_CASE("losses: reduction none keeps per-element / per-sample values; sum and mean reduce them") {
  Tensor p = randn({3, 4, 2}, 1, DType::F64), t = randn({3, 4, 2}, 2, DType::F64);
  CHECK(mse_loss(p, t, Reduction::None).shape() == Shape{3, 4, 2});
  CHECK(mse_loss(p, t).shape() == Shape{});
  CHECK(mse_loss(p, t, Reduction::Sum).item() == doctest::Approx(mse_loss(p, t).item() * 24));
  CHECK(pseudo_huber_loss(p, t, 0.1, Reduction::None).shape() == Shape{3});
  CHECK(pseudo_huber_loss(p, t, 0.1, Reduction::Sum).item() ==
        doctest::Approx(pseudo_huber_loss(p, t, 0.1).item() * 3));
  Tensor z = randn({6, 3}, 4, DType::F64);
  CHECK(cross_entropy(z, from_indices({0, 1, 2, 0, 1, 2}), Reduction::None).shape() == Shape{6});
  CHECK(cross_entropy(z, {0, 1, 2, 0, 1, 2}, Reduction::None).shape() == Shape{6});
  CHECK(embedding(randn({5, 3}, 5, DType::F64), from_indices({1, 2, 3, 4, 0, 0}, {2, 1, 3})).shape() ==
        Shape{2, 1, 3, 3});
  CHECK(embedding(randn({5, 3}, 5, DType::F64), from_indices({4}, {})).shape() == Shape{3});
}

TEST_CASE("max_pool2d: the derivative goes to the first maximum of each window; errors name the op") {
  // Window [[1, 3], [3, 2]]: the maximum 3 appears twice; row-major order makes (0, 1) the first.
  Tensor x = from_vector({1, 3, 3, 2}, {1, 1, 2, 2}, DType::F64);
  CHECK(max_pool2d(x, 2).to_vector() == Vals{3});
  CHECK(grad_vals([](const Tensor& a) { return sum(max_pool2d(a, 2)); }, x) == Vals{0, 1, 0, 0});
  // Overlapping windows route two gradients to a shared maximum.
  Tensor y = from_vector({0, 5, 1, 2, 1, 0}, {1, 1, 2, 3}, DType::F64);
  CHECK(max_pool2d(y, 2, 1).to_vector() == Vals{5, 5});
  CHECK(grad_vals([](const Tensor& a) { return sum(max_pool2d(a, 2, 1)); }, y) == Vals{0, 2, 0, 0, 0, 0});
  // Padding reads -inf: an all-negative image keeps its own values.
  Tensor n = from_vector({-4, -3, -2, -1}, {1, 1, 2, 2}, DType::F64);
  CHECK(max_pool2d(n, 2, 1, 1).to_vector() == Vals{-4, -3, -3, -2, -1, -1, -2, -1, -1});
  CHECK(contains(error_of([] { max_pool2d(zeros({1, 1, 4, 4}), 2, 2, 2); }), "max_pool2d: padding must be in"));
  CHECK(contains(error_of([] { max_pool2d(zeros({1, 4, 4}), 2); }), "max_pool2d: expected an image batch"));
  CHECK(contains(error_of([] { max_pool2d(zeros({1, 1, 2, 2}), 3); }), "max_pool2d: kernel 3 is larger"));
}
