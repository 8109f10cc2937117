// Reductions over any set of axes: sum and max are ops with rules; mean, logsumexp and var are
// compositions of them (so their derivatives of every order come for free).
#include <algorithm>
#include <cmath>
#include <limits>

#include "ops/cpu_kernels.h"
#include "ops/elementwise_kernels.h"
#include "ops/reduce_kernels.h"
#include "ops/rules.h"

namespace df {

ReduceCudaHooks& reduce_cuda_hooks() {
  static ReduceCudaHooks h;
  return h;
}

Shape normalize_axes(const Shape& axes, int64_t rank, const char* op) {
  Shape out;
  if (axes.empty()) {
    for (int64_t i = 0; i < rank; ++i) out.push_back(i);
    return out;
  }
  for (auto a : axes) out.push_back(normalize_axis(a, rank, op));
  std::sort(out.begin(), out.end());
  DF_CHECK(std::adjacent_find(out.begin(), out.end()) == out.end(), op, ": repeated axis in ", shape_str(axes));
  return out;
}

Shape reduced_shape(const Shape& shape, const Shape& axes, bool keepdim) {
  Shape out;
  for (int64_t i = 0; i < (int64_t)shape.size(); ++i) {
    bool red = std::binary_search(axes.begin(), axes.end(), i);
    if (!red) out.push_back(shape[i]);
    else if (keepdim) out.push_back(1);
  }
  return out;
}

namespace {

// x viewed as (outer, red, inner), contiguous; out (outer, inner). Max/min: a NaN wins.
template <class T>
void reduce_oRi(const T* x, T* out, int64_t O, int64_t R, int64_t I, ReduceKind kind) {
  using Acc = double;
  const bool is_sum = kind == ReduceKind::Sum, is_max = kind == ReduceKind::Max;
  auto pick = [is_max](Acc v, Acc m) { return (is_max ? v > m : v < m) || std::isnan(v) ? v : m; };
  const Acc init = is_sum ? 0 : (is_max ? -1 : 1) * std::numeric_limits<Acc>::infinity();
#pragma omp parallel for if (O * R * I > (1 << 16) && O > 1) schedule(static)
  for (int64_t o = 0; o < O; ++o) {
    const T* xo = x + o * R * I;
    T* oo = out + o * I;
    if (I == 1) {
      Acc s = init;
      if (is_sum) for (int64_t r = 0; r < R; ++r) s += xo[r];
      else for (int64_t r = 0; r < R; ++r) s = pick(xo[r], s);
      oo[0] = T(s);
      continue;
    }
    std::vector<Acc> acc(I, init);
    for (int64_t r = 0; r < R; ++r) {
      const T* row = xo + r * I;
      if (is_sum) for (int64_t i = 0; i < I; ++i) acc[i] += row[i];
      else for (int64_t i = 0; i < I; ++i) acc[i] = pick(row[i], acc[i]);
    }
    for (int64_t i = 0; i < I; ++i) oo[i] = T(acc[i]);
  }
}

}  // namespace

// Reduce `axes` (normalised, sorted) of x; returns the non-keepdim shape.
Tensor reduce_kernel(ReduceKind kind, const Tensor& x, const Shape& axes) {
  check_floating(x, reduce_name(kind));
  int64_t rank = x.dim();
  Shape out_shape = reduced_shape(x.shape(), axes, false);
  // Move reduced axes to one contiguous block when they are not already.
  bool block = axes.empty() || axes.back() - axes.front() + 1 == (int64_t)axes.size();
  Tensor xc = x;
  int64_t O = 1, R = 1, I = 1;
  if (block) {
    if (!xc.is_contiguous()) xc = copy_kernel(xc, xc.dtype());
    for (int64_t i = 0; i < rank; ++i) {
      if (axes.empty() || i < axes.front()) O *= x.shape()[i];
      else if (i <= axes.back()) R *= x.shape()[i];
      else I *= x.shape()[i];
    }
  } else {
    Shape perm, sh, st;
    for (int64_t i = 0; i < rank; ++i)
      if (!std::binary_search(axes.begin(), axes.end(), i)) perm.push_back(i);
    for (auto a : axes) perm.push_back(a);
    for (auto p : perm) {
      sh.push_back(x.shape()[p]);
      st.push_back(x.strides()[p]);
    }
    xc = copy_kernel(make_view(x, sh, st, x.offset()), x.dtype());
    for (int64_t i = 0; i < rank; ++i) (i < rank - (int64_t)axes.size() ? O : R) *= sh[i];
  }
  if (x.device() == Device::CUDA) {
    DF_CHECK(reduce_cuda_hooks().reduce, "reduce: CUDA tensor but no CUDA backend");
    Tensor out = reduce_cuda_hooks().reduce(kind, xc, O, R, I);
    return make_view(out, out_shape, contiguous_strides(out_shape), 0);
  }
  Tensor out = empty(out_shape, x.dtype(), Device::CPU);
  DF_CHECK(R > 0 || kind == ReduceKind::Sum, reduce_name(kind), ": cannot reduce over an empty axis of ", x.desc());
  DF_DISPATCH_FLOAT(x.dtype(), reduce_name(kind),
                    reduce_oRi<scalar_t>(xc.data_as<scalar_t>(), out.data_as<scalar_t>(), O, R, I, kind));
  return out;
}

namespace {

// attrs: dims = axes (normalised), dims2 = input shape, flag = keepdim.
const OpDef& sum_op();
const OpDef& sum_op() {
  static OpDef op = def_linear(
      "sum",
      [](const Tensors& in, const Attrs& at) {
        Tensor r = reduce_kernel(ReduceKind::Sum, in[0], at.dims);
        if (at.flag) {
          Shape ks = reduced_shape(in[0].shape(), at.dims, true);
          r = make_view(r, ks, contiguous_strides(ks), 0);
        }
        return Tensors{r};
      },
      [](const RuleCtx& c, const Tensors& g, const std::vector<bool>&) {
        Shape ks = reduced_shape(c.attrs.dims2, c.attrs.dims, true);
        return Tensors{broadcast_to(reshape(g[0], ks), c.attrs.dims2)};
      },
      sum_op);
  return op;
}

// max/min: ties share the derivative equally (like PyTorch's amax/amin; torch.max(x, dim) gives it
// all to the one index it returns). A slice holding a NaN has a NaN result and NaN weights.
Tensor extremum_weights(const Tensor& x, const Tensor& y, const Attrs& at, bool is_max) {
  Shape ks = reduced_shape(x.shape(), at.dims, true);
  Tensor xd = x.detach(), yd = reshape(y.detach(), ks);
  Tensor mask = is_max ? ge(xd, yd) : ge(yd, xd);
  Tensor count = sum(mask, at.dims, true);
  return div(mask, count);
}

// attrs as sum's; the kind is fixed per op.
OpDef extremum_op(const char* name, ReduceKind kind) {
  bool is_max = kind == ReduceKind::Max;
  return OpDef{name,
               [kind](const Tensors& in, const Attrs& at) {
                 Tensor r = reduce_kernel(kind, in[0], at.dims);
                 if (at.flag) {
                   Shape ks = reduced_shape(in[0].shape(), at.dims, true);
                   r = make_view(r, ks, contiguous_strides(ks), 0);
                 }
                 return Tensors{r};
               },
               [is_max](const RuleCtx& c, const Tensors& t) {
                 Tensor w = extremum_weights(c.in[0], c.out[0], c.attrs, is_max);
                 return Tensors{sum(mul(t[0], w), c.attrs.dims, c.attrs.flag)};
               },
               [is_max](const RuleCtx& c, const Tensors& g, const std::vector<bool>&) {
                 Shape ks = reduced_shape(c.attrs.dims2, c.attrs.dims, true);
                 return Tensors{mul(reshape(g[0], ks), extremum_weights(c.in[0], c.out[0], c.attrs, is_max))};
               },
               true, true};
}

const OpDef& max_op() {
  static OpDef op = extremum_op("max", ReduceKind::Max);
  return op;
}
const OpDef& min_op() {
  static OpDef op = extremum_op("min", ReduceKind::Min);
  return op;
}

// p-norm, p finite and >= 1; attrs as sum's plus a = p. The derivative sign(x) |x|^(p-1) / y^(p-1)
// (x / y for p = 2) is 0 where the norm y is 0: PyTorch's subgradient choice there.
Tensor norm_weights(const Tensor& x, const Tensor& y, const Attrs& at) {
  double p = at.a;
  if (p == 1) return sign(x);
  Tensor yk = reshape(y, reduced_shape(x.shape(), at.dims, true));
  Tensor nonzero = gt(yk.detach(), zeros({}, y.dtype(), y.device()));
  Tensor safe = where(nonzero, yk, ones({}, y.dtype(), y.device()));
  Tensor w = p == 2 ? div(x, safe) : div(mul(sign(x), pow(abs(x), p - 1)), pow(safe, p - 1));
  return mul(w, nonzero);
}

const OpDef& norm_op() {
  static OpDef op{"norm",
                  [](const Tensors& in, const Attrs& at) {
                    double p = at.a;
                    Tensor r = p == 2   ? sqrt(sum(square(in[0]), at.dims, at.flag))
                               : p == 1 ? sum(abs(in[0]), at.dims, at.flag)
                                        : pow(sum(pow(abs(in[0]), p), at.dims, at.flag), 1.0 / p);
                    return Tensors{r};
                  },
                  [](const RuleCtx& c, const Tensors& t) {
                    return Tensors{sum(mul(t[0], norm_weights(c.in[0], c.out[0], c.attrs)), c.attrs.dims, c.attrs.flag)};
                  },
                  [](const RuleCtx& c, const Tensors& g, const std::vector<bool>&) {
                    Shape ks = reduced_shape(c.attrs.dims2, c.attrs.dims, true);
                    return Tensors{mul(reshape(g[0], ks), norm_weights(c.in[0], c.out[0], c.attrs))};
                  },
                  true, true};
  return op;
}

Attrs reduce_attrs(const Tensor& x, const Shape& axes, bool keepdim, const char* op) {
  Attrs at;
  at.dims = normalize_axes(axes, x.dim(), op);
  at.dims2 = x.shape();
  at.flag = keepdim;
  return at;
}

}  // namespace

Tensor sum(const Tensor& x, const Shape& axes, bool keepdim) {
  return apply1(sum_op(), {x}, reduce_attrs(x, axes, keepdim, "sum"));
}

Tensor max(const Tensor& x, const Shape& axes, bool keepdim) {
  return apply1(max_op(), {x}, reduce_attrs(x, axes, keepdim, "max"));
}

Tensor min(const Tensor& x, const Shape& axes, bool keepdim) {
  return apply1(min_op(), {x}, reduce_attrs(x, axes, keepdim, "min"));
}

Tensor norm(const Tensor& x, double p, const Shape& axes, bool keepdim) {
  DF_CHECK(x.defined(), "norm: input is undefined");
  DF_CHECK(p >= 1, "norm: p must be >= 1 (or infinity), got ", p, " for ", x.desc());
  // The infinity norm is max |x|: its derivative splits ties as max does, and is 0 at x = 0.
  if (std::isinf(p)) return max(abs(x), axes, keepdim);
  Attrs at = reduce_attrs(x, axes, keepdim, "norm");
  at.a = p;
  return apply1(norm_op(), {x}, at);
}

Tensor mean(const Tensor& x, const Shape& axes, bool keepdim) {
  Shape ax = normalize_axes(axes, x.dim(), "mean");
  int64_t n = 1;
  for (auto a : ax) n *= x.shape()[a];
  DF_CHECK(n > 0, "mean: reducing over an empty axis of ", x.desc());
  return mul(sum(x, ax, keepdim), 1.0 / double(n));
}

Tensor logsumexp(const Tensor& x, const Shape& axes, bool keepdim) {
  // The shift m is a constant: lse(x) = m + log sum exp(x - m) for any m, so stopping its
  // gradient changes no derivative and keeps exp() in range.
  Tensor m = stop_gradient(max(x, axes, true));
  m = where(isfinite(m), m, zeros_like(m));
  Tensor r = add(log(sum(exp(sub(x, m)), axes, true)), m);
  if (keepdim) return r;
  return reshape(r, reduced_shape(x.shape(), normalize_axes(axes, x.dim(), "logsumexp"), false));
}

Tensor var(const Tensor& x, const Shape& axes, bool keepdim, int64_t correction) {
  Shape ax = normalize_axes(axes, x.dim(), "var");
  int64_t n = 1;
  for (auto a : ax) n *= x.shape()[a];
  DF_CHECK(n - correction > 0, "var: ", n, " elements with correction ", correction, " leave no degrees of freedom");
  Tensor d = sub(x, mean(x, ax, true));
  return mul(sum(square(d), ax, keepdim), 1.0 / double(n - correction));
}

Tensor sum_to(const Tensor& x, const Shape& shape) {
  if (x.shape() == shape) return x;
  int64_t lead = x.dim() - (int64_t)shape.size();
  DF_CHECK(lead >= 0, "sum_to: cannot reduce ", x.desc(), " to the larger rank of ", shape_str(shape));
  Shape axes;
  for (int64_t i = 0; i < x.dim(); ++i) {
    if (i < lead) axes.push_back(i);
    else if (shape[i - lead] == 1 && x.shape()[i] != 1) axes.push_back(i);
    else DF_CHECK(shape[i - lead] == x.shape()[i], "sum_to: ", x.desc(), " does not broadcast to ", shape_str(shape));
  }
  Tensor s = axes.empty() ? x : sum(x, axes, true);
  return s.dim() == (int64_t)shape.size() ? s : reshape(s, shape);
}

}  // namespace df
