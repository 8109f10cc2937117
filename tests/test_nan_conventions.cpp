// NaN propagation (issue 21: relu, maximum/minimum, max/min reductions, clamp, max_pool2d return
// NaN for NaN input, as PyTorch) in f64 and f32 on the CPU, and the derivative conventions the
// README lists (ties, kinks, bounds, the norm at 0), each asserted.
#include <doctest/doctest.h>

#include <cmath>

#include "ops/ops.h"
#include "tests/test_util.h"

using namespace df;
using namespace df::test;

namespace {

using Vals = std::vector<double>;
const double kNaN = std::nan("");

// NaN where want is NaN, equal elsewhere.
bool same(const Vals& got, const Vals& want) {
  if (got.size() != want.size()) return false;
  for (size_t i = 0; i < got.size(); ++i)
    if (std::isnan(want[i]) ? !std::isnan(got[i]) : got[i] != want[i]) return false;
  return true;
}

Vals grads(const std::function<Tensor(const Tensors&)>& f, const Tensors& xs, size_t which = 0) {
  return grad_of(f, xs)[which].to_vector();
}

}  // namespace

TEST_CASE("NaN propagates through relu, maximum/minimum, max/min, clamp and max_pool2d (f64, f32)") {
  for (DType dt : {DType::F64, DType::F32}) {
    CAPTURE(dtype_name(dt));
    auto T = [dt](const Vals& v, const Shape& s) { return from_vector(v, s, dt); };
    Tensor x = T({kNaN, -1, 2}, {3});
    CHECK(same(relu(x).to_vector(), {kNaN, 0, 2}));
    CHECK(same(leaky_relu(x, 0.5).to_vector(), {kNaN, -0.5, 2}));
    CHECK(std::isnan(leaky_relu(x).to_vector()[0]));
    CHECK(std::isnan(elu(x).to_vector()[0]));
    Tensor one = T({1, 1, 1}, {3});
    CHECK(same(maximum(x, one).to_vector(), {kNaN, 1, 2}));
    CHECK(same(maximum(one, x).to_vector(), {kNaN, 1, 2}));
    CHECK(same(minimum(x, one).to_vector(), {kNaN, -1, 1}));
    CHECK(same(minimum(one, x).to_vector(), {kNaN, -1, 1}));
    CHECK(same(clamp(x, -0.5, 0.5).to_vector(), {kNaN, -0.5, 0.5}));
    CHECK(same(clamp(x, T({-0.5}, {1}), T({0.5}, {1})).to_vector(), {kNaN, -0.5, 0.5}));
    CHECK(same(clamp(x, Tensor(), T({0.5}, {1})).to_vector(), {kNaN, -1, 0.5}));
    // Reductions: the whole tensor, a row (contiguous reduce) and a column (strided reduce).
    Tensor m = T({1, kNaN, 3, 4, 5, 6}, {2, 3});
    CHECK(std::isnan(max(m).item()));
    CHECK(std::isnan(min(m).item()));
    CHECK(same(max(m, {1}).to_vector(), {kNaN, 6}));
    CHECK(same(min(m, {1}).to_vector(), {kNaN, 4}));
    CHECK(same(max(m, {0}).to_vector(), {4, kNaN, 6}));
    CHECK(same(min(m, {0}).to_vector(), {1, kNaN, 3}));
    CHECK(std::isnan(norm(m).item()));
    CHECK(std::isnan(norm(m, INFINITY).item()));
    // A NaN is the maximum of its window only.
    Tensor img = T({1, 2, 5, 6, 3, kNaN, 7, 8, 9, 10, 13, 14, 11, 12, 15, 16}, {1, 1, 4, 4});
    CHECK(same(max_pool2d(img, 2).to_vector(), {kNaN, 8, 12, 16}));
    // With padding: the NaN at (1, 1) lies in the nine 3 x 3 windows centred at rows and columns 0..2.
    Vals pooled = max_pool2d(img, 3, 1, 1).to_vector();
    REQUIRE(pooled.size() == 16);
    for (int i = 0; i < 16; ++i) CHECK(std::isnan(pooled[i]) == (i / 4 < 3 && i % 4 < 3));
  }
  if (have_cuda()) {  // the same functors and scan order in the CUDA kernels
    auto D = [](const Vals& v, const Shape& s) { return from_vector(v, s, DType::F32, Device::CUDA); };
    Tensor x = D({kNaN, -1, 2}, {3});
    CHECK(same(relu(x).to_vector(), {kNaN, 0, 2}));
    CHECK(same(maximum(x, D({1, 1, 1}, {3})).to_vector(), {kNaN, 1, 2}));
    CHECK(same(minimum(D({1, 1, 1}, {3}), x).to_vector(), {kNaN, -1, 1}));
    Tensor m = D({1, kNaN, 3, 4, 5, 6}, {2, 3});
    CHECK(same(max(m, {1}).to_vector(), {kNaN, 6}));
    CHECK(same(min(m, {0}).to_vector(), {1, kNaN, 3}));
    CHECK(same(max_pool2d(D({1, kNaN, 3, 2}, {1, 1, 2, 2}), 2).to_vector(), {kNaN}));
  }
}

TEST_CASE("derivative conventions: ties, kinks, bounds and the norm at 0 (README list)") {
  auto F = [](const Vals& v) { return from_vector(v, {(int64_t)v.size()}, DType::F64); };
  // maximum / minimum at a tie: the whole derivative to the first operand (PyTorch splits it).
  Tensor a = F({2, 1}), b = F({2, 3});
  CHECK(grads([](const Tensors& x) { return sum(maximum(x[0], x[1])); }, {a, b}, 0) == Vals{1, 0});
  CHECK(grads([](const Tensors& x) { return sum(maximum(x[0], x[1])); }, {a, b}, 1) == Vals{0, 1});
  CHECK(grads([](const Tensors& x) { return sum(minimum(x[0], x[1])); }, {a, b}, 0) == Vals{1, 1});
  CHECK(grads([](const Tensors& x) { return sum(minimum(x[0], x[1])); }, {a, b}, 1) == Vals{0, 0});
  // max / min reductions at a tie: shared equally (as amax / amin).
  CHECK(grads([](const Tensors& x) { return max(x[0]); }, {F({1, 3, 3})}) == Vals{0, 0.5, 0.5});
  CHECK(grads([](const Tensors& x) { return min(x[0]); }, {F({1, 1, 3})}) == Vals{0.5, 0.5, 0});
  // Kinks at 0: relu and abs give 0, leaky_relu its slope, elu its alpha (all as PyTorch).
  Tensor z = F({0});
  CHECK(grads([](const Tensors& x) { return sum(relu(x[0])); }, {z}) == Vals{0});
  CHECK(grads([](const Tensors& x) { return sum(abs(x[0])); }, {z}) == Vals{0});
  CHECK(grads([](const Tensors& x) { return sum(leaky_relu(x[0], 0.25)); }, {z}) == Vals{0.25});
  CHECK(grads([](const Tensors& x) { return sum(elu(x[0], 1.5)); }, {z}) == Vals{1.5});
  // Clamp at its bounds: x keeps the derivative (bounds included), for scalar and tensor bounds.
  Tensor xb = F({-1, 1});
  CHECK(grads([](const Tensors& x) { return sum(clamp(x[0], -1, 1)); }, {xb}) == Vals{1, 1});
  Tensor lo = F({-1, -1}), hi = F({1, 1});
  auto ct = [](const Tensors& x) { return sum(clamp(x[0], x[1], x[2])); };
  CHECK(grads(ct, {xb, lo, hi}, 0) == Vals{1, 1});
  CHECK(grads(ct, {xb, lo, hi}, 1) == Vals{0, 0});
  CHECK(grads(ct, {xb, lo, hi}, 2) == Vals{0, 0});
  // Outside, the active bound takes it; with lo > hi the result is hi and so is the derivative.
  Tensor xo = F({-3, 3, 0});
  Tensor lo2 = F({-1, -1, 2}), hi2 = F({1, 1, 1});
  CHECK(clamp(xo, lo2, hi2).to_vector() == Vals{-1, 1, 1});
  CHECK(grads(ct, {xo, lo2, hi2}, 0) == Vals{0, 0, 0});
  CHECK(grads(ct, {xo, lo2, hi2}, 1) == Vals{1, 0, 0});
  CHECK(grads(ct, {xo, lo2, hi2}, 2) == Vals{0, 1, 1});
  // lo == hi with x below: the value is lo, and so is the derivative.
  Tensor x1 = F({-3}), b1 = F({1});
  CHECK(grads(ct, {x1, b1, b1}, 0) == Vals{0});
  CHECK(grads(ct, {x1, b1, b1}, 1) == Vals{1});
  CHECK(grads(ct, {x1, b1, b1}, 2) == Vals{0});
  // max_pool2d: several NaNs in one window send the derivative to the first of them.
  Tensor w = from_vector({1, kNaN, kNaN, 2}, {1, 1, 2, 2}, DType::F64);
  CHECK(grads([](const Tensors& x) { return sum(max_pool2d(x[0], 2)); }, {w}) == Vals{0, 1, 0, 0});
  // The norm at 0: derivative 0 for every p (PyTorch's subgradient for p = 2).
  for (double p : {2.0, 1.0, 3.0, (double)INFINITY}) {
    CAPTURE(p);
    CHECK(grads([p](const Tensors& x) { return norm(x[0], p); }, {F({0, 0, 0})}) == Vals{0, 0, 0});
  }
  // ... and x / ||x|| elsewhere (p = 2), also inside a batch where one row is all zeros.
  Tensor rows = from_vector({3, 4, 0, 0}, {2, 2}, DType::F64);
  Vals gr = grads([](const Tensors& x) { return sum(norm(x[0], 2, {1})); }, {rows});
  CHECK(gr[0] == doctest::Approx(0.6));
  CHECK(gr[1] == doctest::Approx(0.8));
  CHECK((gr[2] == 0 && gr[3] == 0));
  CHECK(contains(error_of([] { norm(zeros({2}), 0.5); }), "norm: p must be >= 1"));
}
