#include <doctest/doctest.h>
#include <cmath>
#include "ops/ops.h"
using namespace df;
TEST_CASE("smoke") {
  Tensor x = from_vector({1, 2, 3}, {3}, DType::F64).requires_grad_();
  Tensor y = sum(mul(exp(x), x));
  y.backward();
  auto g = x.grad().to_vector();
  for (int i = 0; i < 3; ++i) CHECK(g[i] == doctest::Approx(std::exp(i + 1.0) * (i + 2.0)));
  auto [p, t] = jvp([](const Tensors& v) { return Tensors{sum(mul(exp(v[0]), v[0]))}; }, {x.detach()}, {ones({3}, DType::F64)});
  CHECK(t[0].item() == doctest::Approx(std::exp(1.0) * 2 + std::exp(2.0) * 3 + std::exp(3.0) * 4));
}
