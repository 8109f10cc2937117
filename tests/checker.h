// The one generic derivative checker (f64, CPU) and the one op table the generic tests loop over.
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "ops/ops.h"

namespace df::test {

using Builder = std::function<Tensor(const Tensors&)>;

struct CheckTol {
  double eps = 1e-6;    // finite-difference step
  double rtol = 1e-6;   // relative to the larger magnitude of the two sides
  double atol = 1e-8;
};

// Each check returns an empty string on success, else a message saying what disagreed.
// JVP vs central differences along a random direction.
std::string check_jvp(const Builder& f, const Tensors& x, uint64_t seed, CheckTol tol = {});
// VJP vs JVP by the inner-product identity <u, J v> = <J^T u, v>.
std::string check_vjp(const Builder& f, const Tensors& x, uint64_t seed, CheckTol tol = {});
// Gradient of L(x) = <u, J(x) v> (reverse over forward) vs central differences of L.
std::string check_rev_over_fwd(const Builder& f, const Tensors& x, uint64_t seed, CheckTol tol = {});
// Tangent of G(x) = J(x)^T u (forward over reverse) vs central differences of G.
std::string check_fwd_over_rev(const Builder& f, const Tensors& x, uint64_t seed, CheckTol tol = {});
// Gradient of <w, J(x)^T u> (reverse over reverse: double backward) vs central differences.
std::string check_double_backward(const Builder& f, const Tensors& x, uint64_t seed, CheckTol tol = {});
// All five.
std::string check_all(const Builder& f, const Tensors& x, uint64_t seed, CheckTol tol = {});

// ---- compositions: every transform applied to every other, each against central differences of
// the order below (which the checks above establish) ----
// Forward over forward through two explicit DualLevels (v1 at the outer, v2 at the inner level),
// the mixed tangent read in BOTH orders, vs differences of J(x) v1 along v2.
std::string check_nested_fwd(const Builder& f, const Tensors& x, uint64_t seed, CheckTol tol = {});
// Third order through three explicit levels, read in all six orders, vs differences of the
// second-order tangent along the third direction.
std::string check_fwd_fwd_fwd(const Builder& f, const Tensors& x, uint64_t seed, CheckTol tol = {});
// jvp over the functional jvp over jvp (three nested jvp() calls) vs the same differences.
std::string check_jvp_jvp_jvp(const Builder& f, const Tensors& x, uint64_t seed, CheckTol tol = {});
// jvp of x -> hvp(s, x, v), s(x) = <u, f(x)>, vs differences of hvp along w.
std::string check_jvp_of_hvp(const Builder& f, const Tensors& x, uint64_t seed, CheckTol tol = {});
// vjp of x -> J(x) v (the functional jvp's tangent): <pullback(u), w> vs differences of J(x) v.
std::string check_vjp_of_jvp(const Builder& f, const Tensors& x, uint64_t seed, CheckTol tol = {});
// Gradient of <z, hvp(s, x, v)> (third order, reverse over forward over reverse) vs differences.
std::string check_grad_of_hvp(const Builder& f, const Tensors& x, uint64_t seed, CheckTol tol = {});
// Outputs that do not depend on the inputs: vjp of {f(x), const} gives J^T u (the constant's
// cotangent contributes zero), jvp of a constant gives a zero tangent, grad of a constant is zero.
std::string check_constant_outputs(const Builder& f, const Tensors& x, uint64_t seed, CheckTol tol = {});
// All seven.
std::string check_compositions(const Builder& f, const Tensors& x, uint64_t seed, CheckTol tol = {});

// Largest |a - b| / (atol + rtol * max(|a|, |b|)); <= 1 means close.
double mismatch(const std::vector<double>& a, const std::vector<double>& b, double rtol, double atol);

// ---- the op table ----

// An independent forward: input values (row-major, f64) and shapes -> expected output values.
using Reference = std::function<std::vector<double>(const std::vector<std::vector<double>>& in,
                                                    const std::vector<Shape>& shapes)>;

struct OpRow {
  std::string name;                  // "add (broadcast)", shown when a check fails
  Builder fn;                        // inputs -> one output (reduce multi-output ops to one)
  std::vector<Shape> shapes;         // input shapes
  double lo = -2, hi = 2;            // inputs drawn uniformly from [lo, hi]
  Reference reference;               // hand-written loop or closed form (required)
  CheckTol tol = {};
  double f32_rtol = 1e-5;            // forward check in f32 against the f64 reference
  bool second_order = true;          // run rev-over-fwd and fwd-over-rev
  std::function<Tensors(uint64_t seed)> make_inputs;  // optional custom inputs (f64, CPU)
};

std::vector<OpRow>& op_table();
struct RegisterRows {
  explicit RegisterRows(std::vector<OpRow> rows);
};

// Inputs for a row: make_inputs if given, else uniform [lo, hi] draws of `shapes`.
Tensors row_inputs(const OpRow& row, uint64_t seed, DType dtype = DType::F64);

// Helpers for references: broadcast index arithmetic.
std::vector<double> ref_broadcast_binary(const std::vector<double>& a, const Shape& sa,
                                         const std::vector<double>& b, const Shape& sb,
                                         const std::function<double(double, double)>& f);
std::vector<double> ref_unary(const std::vector<double>& a, const std::function<double(double)>& f);

}  // namespace df::test
