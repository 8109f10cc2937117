// Engine guards that turn silent wrong answers into errors: in-place writes to tensors the tape saved
// (version counters), dual levels closed out of order, and anomaly mode naming the op that made the
// first NaN/Inf in a forward value, a tangent or a cotangent.
#include <doctest/doctest.h>

#include <cmath>
#include <map>
#include <memory>

#include "models/module.h"
#include "ops/ops.h"
#include "tests/test_util.h"

using namespace df;
using df::test::contains;
using df::test::error_of;

namespace {
Tensor vec(std::vector<double> v) { return from_vector(v, {(int64_t)v.size()}, DType::F64); }
}  // namespace

TEST_CASE("an in-place write to a tensor saved for backward raises instead of giving a wrong gradient") {
  Tensor x = vec({1, 2}).requires_grad_();
  Tensor w = vec({3, 4});
  Tensor y = sum(mul(x, w));
  assign_(w, vec({100, 200}));   // the gradient must be [3, 4], which is gone
  std::string msg = error_of([&] { y.backward(); });
  CHECK(contains(msg, "mul"));
  CHECK(contains(msg, "modified in place"));
  CHECK(!x.grad().defined());
  // Saved outputs are guarded too (exp saves its output), and so are views of the same storage.
  Tensor z = vec({0.5, 1.0}).requires_grad_();
  Tensor e = exp(z);
  Tensor s = sum(e);
  assign_(e, vec({0, 0}));
  CHECK(contains(error_of([&] { s.backward(); }), "exp"));
  // A write before recording, or to a tensor the tape did not save, is fine.
  Tensor w2 = vec({3, 4});
  assign_(w2, vec({5, 6}));
  Tensor y2 = sum(mul(x, w2));
  Tensor unrelated = vec({7, 8});
  assign_(unrelated, vec({9, 9}));
  CHECK_NOTHROW(y2.backward());
  auto g = x.grad().to_vector();
  CHECK(g[0] == 5);
  CHECK(g[1] == 6);
}

TEST_CASE("closing a dual level while an inner one is open raises, and the inner one stays usable") {
  // Levels on the heap, so their lifetimes need not nest (delete, not unique_ptr: the destructor
  // raises, and a noexcept deleter would terminate instead).
  DualLevel* outer = new DualLevel();
  DualLevel* inner = new DualLevel();
  const int inner_id = inner->id();
  std::string msg = error_of([&] { delete outer; });
  CHECK(contains(msg, "innermost first"));
  CHECK(num_open_levels() == 1);
  CHECK(current_level() == inner_id);
  Tensor y = exp(make_dual(vec({0.0}), vec({2.0})));
  CHECK(unpack_dual(y).second.item() == doctest::Approx(2.0));
  delete inner;
  CHECK(num_open_levels() == 0);
}

TEST_CASE("anomaly mode names the op that made the first non-finite value, in every mode") {
  {
    DetectAnomaly on;
    CHECK(anomaly_enabled());
    // Forward value.
    std::string msg = error_of([&] { log(vec({1, 0})); });
    CHECK(contains(msg, "op 'log'"));
    CHECK(contains(msg, "output 0"));
    CHECK(contains(msg, "index 1"));
    // A non-finite value that no op made (data).
    msg = error_of([&] { exp(vec({1, NAN})); });
    CHECK(contains(msg, "op 'exp' received input 0"));
    // Tangent: d sqrt(x) at 0 is infinite; the op inside sqrt's JVP rule that made it is named, and
    // the rule around it.
    msg = error_of([&] { jvp([](const Tensors& a) { return Tensors{sqrt(a[0])}; }, {vec({0, 1})}, {vec({1, 1})}); });
    CHECK(contains(msg, "inside the JVP rule of op 'sqrt'"));
    CHECK(contains(msg, "index 0"));
    // A rule whose own result is the first non-finite value is named as such.
    Tensor big = vec({1e300});
    msg = error_of([&] { jvp([](const Tensors& a) { return Tensors{mul(a[0], 1.0)}; }, {vec({1})}, {mul(big, 1e10)}); });
    CHECK(contains(msg, "mul_scalar"));
    // Cotangent: the backward of sqrt at 0, with the forward call site recorded.
    Tensor x = vec({0, 4}).requires_grad_();
    Tensor s = sum(sqrt(x));
    msg = error_of([&] { s.backward(); });
    CHECK(contains(msg, "VJP rule of op 'sqrt'"));
    CHECK(contains(msg, "called at:"));
    // A finite forward whose backward overflows (a cotangent of 1e300 times 1e300).
    Tensor xm = vec({1e-10}).requires_grad_();
    Tensor m = mul(xm, 1e300);
    msg = error_of([&] { m.backward(vec({1e300})); });
    CHECK(contains(msg, "inside the VJP rule of op 'mul_scalar'"));
  }
  CHECK(!anomaly_enabled());
  // Off: the same computations run and give inf/nan silently, as IEEE arithmetic does.
  CHECK(std::isinf(log(vec({0})).item()));
}

TEST_CASE("the grad-ready hook announces each leaf once, after its last contribution") {
  // w1 is used by two layers (two contributions, far apart in the graph); b2 only at the end.
  Tensor x = randn({4, 3}, 1, DType::F64);
  Tensor w1 = randn({3, 3}, 2, DType::F64).requires_grad_();
  Tensor w2 = randn({2, 3}, 3, DType::F64).requires_grad_();
  Tensor b2 = randn({2}, 4, DType::F64).requires_grad_();
  Tensor unused = randn({2}, 5, DType::F64).requires_grad_();
  std::vector<std::pair<const TensorImpl*, std::vector<double>>> seen;
  GradReadyHook prev = set_grad_ready_hook([&](const Tensor& leaf) {
    seen.emplace_back(leaf.impl(), leaf.grad().to_vector());
  });
  Tensor h = tanh(linear(tanh(linear(x, w1)), w1));
  Tensor loss = sum(square(linear(h, w2, b2)));
  loss.backward();
  set_grad_ready_hook(prev);
  REQUIRE(seen.size() == 3);
  std::map<const TensorImpl*, int> count;
  for (auto& [impl, g] : seen) ++count[impl];
  for (auto* p : {w1.impl(), w2.impl(), b2.impl()}) CHECK(count[p] == 1);
  CHECK(count.count(unused.impl()) == 0);
  // What the hook saw is the final gradient (w1's second contribution came after w2's).
  for (auto& [impl, g] : seen) {
    const Tensor& p = impl == w1.impl() ? w1 : impl == w2.impl() ? w2 : b2;
    CHECK(g == p.grad().to_vector());
  }
  CHECK(seen.back().first == w1.impl());
  // No hook, no calls; grad() does not call it either.
  int calls = 0;
  set_grad_ready_hook([&](const Tensor&) { ++calls; });
  grad({sum(square(linear(x, w2, b2)))}, {w2});
  set_grad_ready_hook(nullptr);
  CHECK(calls == 0);
}
