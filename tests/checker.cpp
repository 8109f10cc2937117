// The generic derivative checker and op-table plumbing.
#include "tests/checker.h"

#include <algorithm>
#include <cmath>
#include <sstream>

namespace df::test {

double mismatch(const std::vector<double>& a, const std::vector<double>& b, double rtol, double atol) {
  if (a.size() != b.size()) return INFINITY;
  double worst = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    double d = std::fabs(a[i] - b[i]);
    if (std::isnan(a[i]) || std::isnan(b[i])) return INFINITY;
    worst = std::max(worst, d / (atol + rtol * std::max(std::fabs(a[i]), std::fabs(b[i]))));
  }
  return worst;
}

namespace {

Tensors random_like(const Tensors& xs, uint64_t seed) {
  Tensors out;
  for (size_t i = 0; i < xs.size(); ++i) out.push_back(randn_like(xs[i], seed, 1000003 * i));
  return out;
}

double dot(const Tensors& a, const Tensors& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    auto va = a[i].to_vector(), vb = b[i].to_vector();
    for (size_t j = 0; j < va.size(); ++j) s += va[j] * vb[j];
  }
  return s;
}

// sum_i <a_i, b_i> as a differentiable scalar.
Tensor inner(const Tensors& a, const Tensors& b) {
  Tensor acc;
  for (size_t i = 0; i < a.size(); ++i) {
    Tensor term = sum(mul(a[i], b[i]));
    acc = acc.defined() ? add(acc, term) : term;
  }
  return acc;
}

Tensors axpy(const Tensors& x, double s, const Tensors& v) {
  NoGrad ng;
  Tensors out;
  for (size_t i = 0; i < x.size(); ++i) out.push_back(add(x[i].detach(), mul(v[i], s)));
  return out;
}

std::vector<double> flat(const Tensors& ts) {
  std::vector<double> out;
  for (auto& t : ts) {
    auto v = t.to_vector();
    out.insert(out.end(), v.begin(), v.end());
  }
  return out;
}

Tensor eval(const Builder& f, const Tensors& x) {
  NoGrad ng;
  return f(x);
}

Tensor jvp_of(const Builder& f, const Tensors& x, const Tensors& v, bool diff = false) {
  auto r = jvp([&](const Tensors& a) { return Tensors{f(a)}; }, x, v, diff);
  return r.second[0];
}

std::string report(const char* what, const std::vector<double>& got, const std::vector<double>& want, double m) {
  std::ostringstream os;
  os << what << " mismatch " << m << "x tolerance; got [";
  for (size_t i = 0; i < std::min<size_t>(got.size(), 4); ++i) os << (i ? ", " : "") << got[i];
  os << "] want [";
  for (size_t i = 0; i < std::min<size_t>(want.size(), 4); ++i) os << (i ? ", " : "") << want[i];
  os << "]";
  return os.str();
}

}  // namespace

std::string check_jvp(const Builder& f, const Tensors& x, uint64_t seed, CheckTol tol) {
  Tensors v = random_like(x, seed);
  Tensor t = jvp_of(f, x, v);
  Tensor yp = eval(f, axpy(x, tol.eps, v)), ym = eval(f, axpy(x, -tol.eps, v));
  std::vector<double> fd = flat({mul(sub(yp, ym), 0.5 / tol.eps)}), got = flat({t});
  double m = mismatch(got, fd, tol.rtol * 10, tol.atol * 10 + 1e-9);
  return m <= 1 ? "" : report("jvp vs finite differences:", got, fd, m);
}

std::string check_vjp(const Builder& f, const Tensors& x, uint64_t seed, CheckTol tol) {
  Tensors v = random_like(x, seed);
  Tensor jv = jvp_of(f, x, v);
  Tensor u = randn_like(jv, seed + 17);
  auto [outs, pullback] = vjp([&](const Tensors& a) { return Tensors{f(a)}; }, x);
  Tensors jtu = pullback({u});
  double lhs = dot({u}, {jv}), rhs = dot(jtu, v);
  double m = mismatch({lhs}, {rhs}, tol.rtol, tol.atol);
  return m <= 1 ? "" : report("<u, Jv> vs <J^T u, v>:", {lhs}, {rhs}, m);
}

std::string check_rev_over_fwd(const Builder& f, const Tensors& x, uint64_t seed, CheckTol tol) {
  Tensors v = random_like(x, seed), w = random_like(x, seed + 5);
  Tensor u;
  auto L = [&](const Tensors& a) {
    Tensor t = jvp_of(f, a, v, true);
    if (!u.defined()) u = randn_like(t, seed + 23);
    return sum(mul(t, u));
  };
  Tensors g = grad_of(L, x);
  double got = dot(g, w);
  double fd;
  {
    double lp = L(axpy(x, tol.eps, w)).item(), lm = L(axpy(x, -tol.eps, w)).item();
    fd = (lp - lm) / (2 * tol.eps);
  }
  double m = mismatch({got}, {fd}, tol.rtol * 10, tol.atol * 10 + 1e-9);
  return m <= 1 ? "" : report("reverse-over-forward vs finite differences:", {got}, {fd}, m);
}

std::string check_fwd_over_rev(const Builder& f, const Tensors& x, uint64_t seed, CheckTol tol) {
  Tensors w = random_like(x, seed + 7);
  Tensor u = randn_like(eval(f, x), seed + 29);
  auto G = [&](const Tensors& a) {
    auto [outs, pullback] = vjp([&](const Tensors& b) { return Tensors{f(b)}; }, a);
    return pullback({u});
  };
  Tensors tangents;
  {
    DualLevel level;
    Tensors duals;
    for (size_t i = 0; i < x.size(); ++i) duals.push_back(make_dual(x[i], w[i]));
    Tensors g = G(duals);
    for (auto& gi : g) {
      Tensor t = unpack_dual(gi).second;
      tangents.push_back(t.defined() ? t.detach() : zeros_like(gi));
    }
  }
  Tensors gp = G(axpy(x, tol.eps, w)), gm = G(axpy(x, -tol.eps, w));
  std::vector<double> fd;
  {
    auto a = flat(gp), b = flat(gm);
    for (size_t i = 0; i < a.size(); ++i) fd.push_back((a[i] - b[i]) / (2 * tol.eps));
  }
  std::vector<double> got = flat(tangents);
  double m = mismatch(got, fd, tol.rtol * 10, tol.atol * 10 + 1e-9);
  return m <= 1 ? "" : report("forward-over-reverse vs finite differences:", got, fd, m);
}

std::string check_double_backward(const Builder& f, const Tensors& x, uint64_t seed, CheckTol tol) {
  Tensors w = random_like(x, seed + 11), z = random_like(x, seed + 13);
  Tensor u = randn_like(eval(f, x), seed + 31);
  // L2(x) = <w, J(x)^T u>, with the inner gradient taken with create_graph.
  auto L2 = [&](const Tensors& a) {
    auto [outs, pullback] = vjp([&](const Tensors& b) { return Tensors{f(b)}; }, a, true);
    return inner(pullback({u}), w);
  };
  Tensors gg = grad_of(L2, x);
  double got = dot(gg, z);
  double lp = L2(axpy(x, tol.eps, z)).item(), lm = L2(axpy(x, -tol.eps, z)).item();
  double fd = (lp - lm) / (2 * tol.eps);
  double m = mismatch({got}, {fd}, tol.rtol * 10, tol.atol * 10 + 1e-9);
  return m <= 1 ? "" : report("double backward vs finite differences:", {got}, {fd}, m);
}

std::string check_all(const Builder& f, const Tensors& x, uint64_t seed, CheckTol tol) {
  for (auto* c : {check_jvp, check_vjp, check_rev_over_fwd, check_fwd_over_rev, check_double_backward}) {
    std::string r = c(f, x, seed, tol);
    if (!r.empty()) return r;
  }
  return "";
}

namespace {

// y = f(x) with tangent dirs[k] at level ids[k] on every input (levels opened by the caller).
Tensor eval_multi_dual(const Builder& f, const Tensors& x, const std::vector<Tensors>& dirs, const std::vector<int>& ids) {
  Tensors xd;
  for (size_t i = 0; i < x.size(); ++i) {
    Tensor t = x[i];
    for (size_t k = 0; k < ids.size(); ++k) t = make_dual(t, dirs[k][i], ids[k]);
    xd.push_back(t);
  }
  return f(xd);
}

// The tangent of y read along `order` (level ids), zeros where a tangent is a symbolic zero.
Tensor read_tangent(Tensor y, const std::vector<int>& order) {
  Tensor t = y;
  for (int id : order) {
    Tensor next = t.tangent(id);
    if (!next.defined()) return zeros_like(y);
    t = next;
  }
  return t;
}

// Second-order directional derivative D^2 f(x)[v1, v2] by the functional jvp nested twice.
Tensor second_order(const Builder& f, const Tensors& x, const Tensors& v1, const Tensors& v2) {
  auto r = jvp([&](const Tensors& a) { return Tensors{jvp_of(f, a, v1, true)}; }, x, v2);
  return r.second[0];
}

std::string compare(const char* what, const Tensor& got, const std::vector<double>& want, const CheckTol& tol) {
  std::vector<double> g = flat({got});
  double m = mismatch(g, want, tol.rtol * 10, tol.atol * 10 + 1e-9);
  return m <= 1 ? "" : report(what, g, want, m);
}

std::vector<double> central(const std::function<Tensor(const Tensors&)>& F, const Tensors& x, const Tensors& dir,
                            double eps) {
  auto a = flat({F(axpy(x, eps, dir))}), b = flat({F(axpy(x, -eps, dir))});
  std::vector<double> out(a.size());
  for (size_t i = 0; i < a.size(); ++i) out[i] = (a[i] - b[i]) / (2 * eps);
  return out;
}

}  // namespace

std::string check_nested_fwd(const Builder& f, const Tensors& x, uint64_t seed, CheckTol tol) {
  Tensors v1 = random_like(x, seed + 41), v2 = random_like(x, seed + 43);
  std::vector<double> fd = central([&](const Tensors& a) { return jvp_of(f, a, v1); }, x, v2, tol.eps);
  DualLevel outer, inner;
  Tensor y = eval_multi_dual(f, x, {v1, v2}, {outer.id(), inner.id()});
  std::string r = compare("nested levels, outer tangent read first:", read_tangent(y, {outer.id(), inner.id()}), fd, tol);
  if (!r.empty()) return r;
  return compare("nested levels, inner tangent read first:", read_tangent(y, {inner.id(), outer.id()}), fd, tol);
}

std::string check_fwd_fwd_fwd(const Builder& f, const Tensors& x, uint64_t seed, CheckTol tol) {
  Tensors v1 = random_like(x, seed + 47), v2 = random_like(x, seed + 53), v3 = random_like(x, seed + 59);
  std::vector<double> fd = central([&](const Tensors& a) { return second_order(f, a, v1, v2); }, x, v3, tol.eps);
  DualLevel l1, l2, l3;
  std::vector<int> ids{l1.id(), l2.id(), l3.id()};
  Tensor y = eval_multi_dual(f, x, {v1, v2, v3}, ids);
  std::vector<int> order = ids;
  std::sort(order.begin(), order.end());
  do {
    std::string r = compare(cat("three levels read in order ", order[0] - ids[0], order[1] - ids[0],
                                order[2] - ids[0], ":").c_str(),
                            read_tangent(y, order), fd, tol);
    if (!r.empty()) return r;
  } while (std::next_permutation(order.begin(), order.end()));
  return "";
}

std::string check_jvp_jvp_jvp(const Builder& f, const Tensors& x, uint64_t seed, CheckTol tol) {
  Tensors v1 = random_like(x, seed + 61), v2 = random_like(x, seed + 67), v3 = random_like(x, seed + 71);
  std::vector<double> fd = central([&](const Tensors& a) { return second_order(f, a, v1, v2); }, x, v3, tol.eps);
  auto r = jvp([&](const Tensors& a) { return Tensors{second_order(f, a, v1, v2)}; }, x, v3);
  return compare("jvp over jvp over jvp:", r.second[0], fd, tol);
}

std::string check_jvp_of_hvp(const Builder& f, const Tensors& x, uint64_t seed, CheckTol tol) {
  Tensors v = random_like(x, seed + 73), w = random_like(x, seed + 79);
  Tensor u = randn_like(eval(f, x), seed + 83);
  auto s = [&](const Tensors& a) { return sum(mul(f(a), u)); };
  auto H = [&](const Tensors& a) {
    Tensors hv = hvp(s, a, v);
    Tensors flatv;
    for (auto& h : hv) flatv.push_back(reshape(h, {-1}));
    return cat(flatv, int64_t{0});
  };
  std::vector<double> fd = central(H, x, w, tol.eps);
  auto r = jvp([&](const Tensors& a) { return Tensors{H(a)}; }, x, w);
  return compare("jvp over hvp:", r.second[0], fd, tol);
}

std::string check_vjp_of_jvp(const Builder& f, const Tensors& x, uint64_t seed, CheckTol tol) {
  Tensors v = random_like(x, seed + 89), w = random_like(x, seed + 97);
  auto G = [&](const Tensors& a) { return jvp_of(f, a, v, true); };
  std::vector<double> fd = central(G, x, w, tol.eps);
  Tensor u = randn_like(eval(f, x), seed + 101);
  auto [outs, pullback] = vjp([&](const Tensors& a) { return Tensors{G(a)}; }, x);
  Tensors gu = pullback({u});
  double got = dot(gu, w), want = 0;
  auto uv = u.to_vector();
  for (size_t i = 0; i < uv.size(); ++i) want += uv[i] * fd[i];
  double m = mismatch({got}, {want}, tol.rtol * 10, tol.atol * 10 + 1e-9);
  return m <= 1 ? "" : report("vjp over jvp:", {got}, {want}, m);
}

std::string check_grad_of_hvp(const Builder& f, const Tensors& x, uint64_t seed, CheckTol tol) {
  Tensors v = random_like(x, seed + 103), w = random_like(x, seed + 107), z = random_like(x, seed + 109);
  Tensor u = randn_like(eval(f, x), seed + 113);
  auto s = [&](const Tensors& a) { return sum(mul(f(a), u)); };
  auto L = [&](const Tensors& a) { return inner(hvp(s, a, v), z); };
  Tensors g = grad_of(L, x);
  double got = dot(g, w);
  double want = central([&](const Tensors& a) { return L(a); }, x, w, tol.eps)[0];
  double m = mismatch({got}, {want}, tol.rtol * 10, tol.atol * 10 + 1e-9);
  return m <= 1 ? "" : report("gradient of hvp:", {got}, {want}, m);
}

std::string check_constant_outputs(const Builder& f, const Tensors& x, uint64_t seed, CheckTol tol) {
  Tensor y0 = eval(f, x);
  Tensor u = randn_like(y0, seed + 127), uc = randn_like(y0, seed + 131);
  auto [o1, pb1] = vjp([&](const Tensors& a) { return Tensors{f(a)}; }, x);
  auto [o2, pb2] = vjp([&](const Tensors& a) { return Tensors{f(a), full_like(y0, 2.0)}; }, x);
  std::vector<double> want = flat(pb1({u})), got = flat(pb2({u, uc}));
  double m = mismatch(got, want, 1e-12, 1e-12);
  if (m > 1) return report("vjp with a constant second output:", got, want, m);
  auto [o3, pb3] = vjp([&](const Tensors&) { return Tensors{full_like(y0, 3.0)}; }, x);
  for (auto& g : pb3({u}))
    for (double e : g.to_vector())
      if (e != 0) return "vjp of a constant function: nonzero cotangent";
  auto [p, t] = jvp([&](const Tensors&) { return Tensors{full_like(y0, 3.0)}; }, x, random_like(x, seed + 137));
  for (double e : t[0].to_vector())
    if (e != 0) return "jvp of a constant function: nonzero tangent";
  for (auto& g : grad_of([&](const Tensors&) { return sum(full_like(y0, 3.0)); }, x))
    for (double e : g.to_vector())
      if (e != 0) return "grad of a constant function: nonzero gradient";
  return "";
}

std::string check_compositions(const Builder& f, const Tensors& x, uint64_t seed, CheckTol tol) {
  for (auto* c : {check_nested_fwd, check_fwd_fwd_fwd, check_jvp_jvp_jvp, check_jvp_of_hvp, check_vjp_of_jvp,
                  check_grad_of_hvp, check_constant_outputs}) {
    std::string r = c(f, x, seed, tol);
    if (!r.empty()) return r;
  }
  return "";
}

std::vector<OpRow>& op_table() {
  static std::vector<OpRow> rows;
  return rows;
}

RegisterRows::RegisterRows(std::vector<OpRow> rows) {
  for (auto& r : rows) op_table().push_back(std::move(r));
}

Tensors row_inputs(const OpRow& row, uint64_t seed, DType dtype) {
  Tensors xs;
  if (row.make_inputs) xs = row.make_inputs(seed);
  else
    for (size_t i = 0; i < row.shapes.size(); ++i) {
      NoGrad ng;
      xs.push_back(add(mul(rand(row.shapes[i], seed, DType::F64, Device::CPU, 7919 * i), row.hi - row.lo), row.lo));
    }
  if (dtype != DType::F64)
    for (auto& x : xs) x = cast(x, dtype).detach();
  return xs;
}

std::vector<double> ref_unary(const std::vector<double>& a, const std::function<double(double)>& f) {
  std::vector<double> out(a.size());
  for (size_t i = 0; i < a.size(); ++i) out[i] = f(a[i]);
  return out;
}

std::vector<double> ref_broadcast_binary(const std::vector<double>& a, const Shape& sa, const std::vector<double>& b,
                                         const Shape& sb, const std::function<double(double, double)>& f) {
  size_t r = std::max(sa.size(), sb.size());
  Shape pa(r, 1), pb(r, 1), so(r);
  for (size_t i = 0; i < sa.size(); ++i) pa[r - sa.size() + i] = sa[i];
  for (size_t i = 0; i < sb.size(); ++i) pb[r - sb.size() + i] = sb[i];
  for (size_t i = 0; i < r; ++i) so[i] = std::max(pa[i], pb[i]);
  int64_t n = shape_numel(so);
  std::vector<double> out(n);
  std::vector<int64_t> idx(r);
  for (int64_t k = 0; k < n; ++k) {
    int64_t rem = k;
    for (int64_t d = (int64_t)r - 1; d >= 0; --d) {
      idx[d] = rem % so[d];
      rem /= so[d];
    }
    int64_t ia = 0, ib = 0;
    for (size_t d = 0; d < r; ++d) {
      ia = ia * pa[d] + (pa[d] == 1 ? 0 : idx[d]);
      ib = ib * pb[d] + (pb[d] == 1 ? 0 : idx[d]);
    }
    out[k] = f(a[ia], b[ib]);
  }
  return out;
}

}  // namespace df::test
