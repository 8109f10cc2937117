// The generic op tests: every row of the op table gets a forward check against its independent
// reference (f64 and f32) and all five derivative checks in f64 (JVP, VJP, reverse-over-forward,
// forward-over-reverse, double backward).
#include <doctest/doctest.h>

#include "tests/checker.h"

using namespace df;
using namespace df::test;

TEST_CASE("op table: forward matches the independent reference (f64 and f32)") {
  REQUIRE(op_table().size() > 0);
  for (auto& row : op_table()) {
    CAPTURE(row.name);
    Tensors x = row_inputs(row, 11);
    std::vector<std::vector<double>> vals;
    std::vector<Shape> shapes;
    for (auto& t : x) {
      vals.push_back(t.to_vector());
      shapes.push_back(t.shape());
    }
    std::vector<double> want = row.reference(vals, shapes);
    Tensor y = row.fn(x);
    CHECK(y.dtype() == DType::F64);
    CHECK(mismatch(y.to_vector(), want, 1e-12, 1e-12) <= 1);
    Tensors x32;
    for (auto& t : x) x32.push_back(cast(t, DType::F32));
    Tensor y32 = row.fn(x32);
    CHECK(y32.dtype() == DType::F32);
    CHECK(mismatch(y32.to_vector(), want, row.f32_rtol, row.f32_rtol) <= 1);
  }
}

TEST_CASE("op table: JVP and VJP in f64") {
  for (auto& row : op_table()) {
    CAPTURE(row.name);
    Tensors x = row_inputs(row, 3);
    CHECK_MESSAGE(check_jvp(row.fn, x, 101, row.tol) == "", row.name);
    CHECK_MESSAGE(check_vjp(row.fn, x, 102, row.tol) == "", row.name);
  }
}

TEST_CASE("op table: reverse-over-forward, forward-over-reverse and double backward in f64") {
  for (auto& row : op_table()) {
    if (!row.second_order) continue;
    CAPTURE(row.name);
    Tensors x = row_inputs(row, 5);
    CHECK_MESSAGE(check_rev_over_fwd(row.fn, x, 103, row.tol) == "", row.name);
    CHECK_MESSAGE(check_fwd_over_rev(row.fn, x, 104, row.tol) == "", row.name);
    CHECK_MESSAGE(check_double_backward(row.fn, x, 105, row.tol) == "", row.name);
  }
}

TEST_CASE("op table: compositions of the transforms in f64 (nested levels read in both orders, third "
          "order, jvp of hvp, vjp of jvp, gradient of hvp, constant outputs)") {
  for (auto& row : op_table()) {
    if (!row.second_order) continue;
    CAPTURE(row.name);
    Tensors x = row_inputs(row, 9);
    CHECK_MESSAGE(check_nested_fwd(row.fn, x, 141, row.tol) == "", row.name);
    CHECK_MESSAGE(check_fwd_fwd_fwd(row.fn, x, 142, row.tol) == "", row.name);
    CHECK_MESSAGE(check_jvp_jvp_jvp(row.fn, x, 143, row.tol) == "", row.name);
    CHECK_MESSAGE(check_jvp_of_hvp(row.fn, x, 144, row.tol) == "", row.name);
    CHECK_MESSAGE(check_vjp_of_jvp(row.fn, x, 145, row.tol) == "", row.name);
    CHECK_MESSAGE(check_grad_of_hvp(row.fn, x, 146, row.tol) == "", row.name);
    CHECK_MESSAGE(check_constant_outputs(row.fn, x, 147, row.tol) == "", row.name);
  }
}
