// softmax, log_softmax, layer_norm and rms_norm: fused forward kernels, with JVP/VJP rules written from
// the saved input or output with public ops, so every order of derivative composes.
#include <algorithm>
#include <cmath>
#include <limits>

#include "ops/autocast.h"
#include "ops/cpu_kernels.h"
#include "ops/elementwise_kernels.h"
#include "ops/nn_kernels.h"
#include "ops/rules.h"

namespace df {

NnCudaHooks& nn_cuda_hooks() {
  static NnCudaHooks h;
  return h;
}

namespace {

constexpr int64_t kParallelGrain = 1 << 15;

Tensor contiguous_raw(const Tensor& t) {
  if (!t.defined() || t.is_contiguous()) return t;
  return copy_kernel(t, t.dtype());
}

// ---- CPU kernels --------------------------------------------------------------------------------

// Softmax (or log-softmax) over R of x viewed as (O, R, I). The max is subtracted first so exp()
// stays in range; an all -inf slice uses shift 0, like logsumexp.
template <class T>
void softmax_cpu(const T* x, T* y, int64_t O, int64_t R, int64_t I, bool log) {
#pragma omp parallel for if (O * R * I > kParallelGrain && O > 1) schedule(static)
  for (int64_t o = 0; o < O; ++o) {
    std::vector<double> m(I, -std::numeric_limits<double>::infinity()), s(I, 0.0);
    const T* xo = x + o * R * I;
    T* yo = y + o * R * I;
    for (int64_t r = 0; r < R; ++r)
      for (int64_t i = 0; i < I; ++i) m[i] = std::max(m[i], (double)xo[r * I + i]);
    for (int64_t i = 0; i < I; ++i)
      if (!std::isfinite(m[i])) m[i] = 0;
    for (int64_t r = 0; r < R; ++r)
      for (int64_t i = 0; i < I; ++i) {
        double e = std::exp((double)xo[r * I + i] - m[i]);
        s[i] += e;
        if (!log) yo[r * I + i] = T(e);
      }
    if (log) {
      for (int64_t i = 0; i < I; ++i) s[i] = m[i] + std::log(s[i]);
      for (int64_t r = 0; r < R; ++r)
        for (int64_t i = 0; i < I; ++i) yo[r * I + i] = T((double)xo[r * I + i] - s[i]);
    } else {
      for (int64_t i = 0; i < I; ++i) s[i] = 1.0 / s[i];
      for (int64_t r = 0; r < R; ++r)
        for (int64_t i = 0; i < I; ++i) yo[r * I + i] = T(yo[r * I + i] * s[i]);
    }
  }
}

// Layer norm (rms = false) or RMS norm (rms = true) of each row of x (O, R).
template <class T>
void norm_cpu(const T* x, const T* w, const T* b, T* y, int64_t O, int64_t R, double eps, bool rms) {
#pragma omp parallel for if (O * R > kParallelGrain && O > 1) schedule(static)
  for (int64_t o = 0; o < O; ++o) {
    const T* xo = x + o * R;
    T* yo = y + o * R;
    double mu = 0, ss = 0;
    if (!rms) {
      for (int64_t r = 0; r < R; ++r) mu += xo[r];
      mu /= double(R);
    }
    for (int64_t r = 0; r < R; ++r) {
      double d = xo[r] - mu;
      ss += d * d;
    }
    double scale = 1.0 / std::sqrt(ss / double(R) + eps);
    for (int64_t r = 0; r < R; ++r) {
      double v = (xo[r] - mu) * scale;
      if (w) v *= w[r];
      if (b) v += b[r];
      yo[r] = T(v);
    }
  }
}

// ---- forwards -----------------------------------------------------------------------------------

Tensor softmax_forward(const Tensor& x0, int64_t axis, bool log) {
  const char* name = log ? "log_softmax" : "softmax";
  check_floating(x0, name);
  int64_t O = 1, R = x0.shape()[axis], I = 1;
  for (int64_t d = 0; d < axis; ++d) O *= x0.shape()[d];
  for (int64_t d = axis + 1; d < x0.dim(); ++d) I *= x0.shape()[d];
  if (x0.device() == Device::CUDA) {
    if (!nn_cuda_hooks().softmax) {
      Tensor m = max(x0, {axis}, true);
      m = where(isfinite(m), m, zeros_like(m));
      Tensor z = sub(x0, m);
      return log ? sub(z, df::log(sum(exp(z), {axis}, true))) : [&] {
        Tensor e = exp(z);
        return div(e, sum(e, {axis}, true));
      }();
    }
    Tensor out = nn_cuda_hooks().softmax(contiguous_raw(x0), O, R, I, log);
    return make_view(out, x0.shape(), contiguous_strides(x0.shape()), out.offset());
  }
  Tensor x = contiguous_raw(x0);
  Tensor y = empty(x.shape(), x.dtype(), Device::CPU);
  DF_DISPATCH_FLOAT(x.dtype(), name, softmax_cpu(x.data_as<scalar_t>(), y.data_as<scalar_t>(), O, R, I, log));
  return y;
}

Tensor norm_forward(const Tensor& x0, const Tensor& w0, const Tensor& b0, int64_t nd, double eps, bool rms) {
  for (const Tensor* t : {&x0, &w0, &b0}) check_floating(*t, rms ? "rms_norm" : "layer_norm");
  int64_t R = 1;
  for (int64_t d = x0.dim() - nd; d < x0.dim(); ++d) R *= x0.shape()[d];
  int64_t O = R == 0 ? 0 : x0.numel() / R;
  if (x0.device() == Device::CUDA) {
    auto& h = nn_cuda_hooks();
    if ((rms && !h.rms_norm) || (!rms && !h.layer_norm)) {
      Shape axes;
      for (int64_t d = x0.dim() - nd; d < x0.dim(); ++d) axes.push_back(d);
      Tensor xc = rms ? x0 : sub(x0, mean(x0, axes, true));
      Tensor y = mul(xc, rsqrt(add(mean(square(xc), axes, true), eps)));
      if (w0.defined()) y = mul(y, w0);
      if (b0.defined()) y = add(y, b0);
      return y;
    }
    Tensor out = rms ? h.rms_norm(contiguous_raw(x0), contiguous_raw(w0), O, R, eps)
                     : h.layer_norm(contiguous_raw(x0), contiguous_raw(w0), contiguous_raw(b0), O, R, eps);
    return make_view(out, x0.shape(), contiguous_strides(x0.shape()), out.offset());
  }
  Tensor x = contiguous_raw(x0), w = contiguous_raw(w0), b = contiguous_raw(b0);
  Tensor y = empty(x.shape(), x.dtype(), Device::CPU);
  DF_DISPATCH_FLOAT(x.dtype(), rms ? "rms_norm" : "layer_norm",
                    norm_cpu(x.data_as<scalar_t>(), w.defined() ? w.data_as<scalar_t>() : nullptr,
                             b.defined() ? b.data_as<scalar_t>() : nullptr, y.data_as<scalar_t>(), O, R, eps, rms));
  return y;
}

// ---- ops ----------------------------------------------------------------------------------------

// attrs: i = axis (normalised). Rules read the saved output p.
const OpDef& softmax_op() {
  static OpDef op{"softmax",
                  [](const Tensors& in, const Attrs& at) { return Tensors{softmax_forward(in[0], at.i, false)}; },
                  [](const RuleCtx& c, const Tensors& t) {
                    const Tensor& p = c.out[0];
                    return Tensors{mul(p, sub(t[0], sum(mul(p, t[0]), {c.attrs.i}, true)))};
                  },
                  [](const RuleCtx& c, const Tensors& g, const std::vector<bool>&) {
                    const Tensor& p = c.out[0];
                    return Tensors{mul(p, sub(g[0], sum(mul(g[0], p), {c.attrs.i}, true)))};
                  },
                  false, true};
  return op;
}

// attrs: i = axis (normalised). softmax = exp(output), so only the output is saved.
const OpDef& log_softmax_op() {
  static OpDef op{"log_softmax",
                  [](const Tensors& in, const Attrs& at) { return Tensors{softmax_forward(in[0], at.i, true)}; },
                  [](const RuleCtx& c, const Tensors& t) {
                    Tensor p = exp(c.out[0]);
                    return Tensors{sub(t[0], sum(mul(p, t[0]), {c.attrs.i}, true))};
                  },
                  [](const RuleCtx& c, const Tensors& g, const std::vector<bool>&) {
                    Tensor p = exp(c.out[0]);
                    return Tensors{sub(g[0], mul(p, sum(g[0], {c.attrs.i}, true)))};
                  },
                  false, true};
  return op;
}

Shape trailing_axes(int64_t rank, int64_t nd) {
  Shape axes;
  for (int64_t d = rank - nd; d < rank; ++d) axes.push_back(d);
  return axes;
}

// The centred-and-scaled (layer norm) or scaled (rms norm) input, from public ops, and its scale.
struct NormStats {
  Tensor scale, xh;
};
NormStats norm_stats(const Tensor& x, const Shape& axes, double eps, bool rms) {
  Tensor xc = rms ? x : sub(x, mean(x, axes, true));
  Tensor scale = rsqrt(add(mean(square(xc), axes, true), eps));
  return {scale, mul(xc, scale)};
}

// d xh for a tangent (or, by symmetry of the projection, the cotangent) v of the input:
//   layer norm: scale * (v - mean(v) - xh mean(xh v));  rms norm: scale * (v - xh mean(xh v)).
Tensor norm_project(const Tensor& v, const NormStats& s, const Shape& axes, bool rms) {
  Tensor r = sub(v, mul(s.xh, mean(mul(s.xh, v), axes, true)));
  if (!rms) r = sub(r, mean(v, axes, true));
  return mul(s.scale, r);
}

// inputs (x, weight, bias); attrs: i = normalized dims, a = eps, flag = rms (then bias is undefined).
Tensors norm_jvp(const RuleCtx& c, const Tensors& t) {
  const Tensor &x = c.in[0], &w = c.in[1];
  bool rms = c.attrs.flag;
  Shape axes = trailing_axes(x.dim(), c.attrs.i);
  Tensor y;
  if (t[0].defined() || t[1].defined()) {
    NormStats s = norm_stats(x, axes, c.attrs.a, rms);
    if (t[0].defined()) {
      y = norm_project(t[0], s, axes, rms);
      if (w.defined()) y = mul(y, w);
    }
    if (t[1].defined()) {
      Tensor z = mul(t[1], s.xh);
      y = y.defined() ? add(y, z) : z;
    }
  }
  if (t[2].defined()) y = y.defined() ? add(y, t[2]) : broadcast_to(t[2], c.out[0].shape());
  return {y};
}

Tensors norm_vjp(const RuleCtx& c, const Tensors& g, const std::vector<bool>& needs) {
  const Tensor &x = c.in[0], &w = c.in[1], &b = c.in[2];
  bool rms = c.attrs.flag;
  Shape axes = trailing_axes(x.dim(), c.attrs.i);
  Tensors r(3);
  if (needs[0] || (needs[1] && w.defined())) {
    NormStats s = norm_stats(x, axes, c.attrs.a, rms);
    if (needs[0]) r[0] = norm_project(w.defined() ? mul(g[0], w) : g[0], s, axes, rms);
    if (needs[1] && w.defined()) r[1] = sum_to(mul(g[0], s.xh), w.shape());
  }
  if (needs[2] && b.defined()) r[2] = sum_to(g[0], b.shape());
  return r;
}

Tensors norm_fwd(const Tensors& in, const Attrs& at) {
  return Tensors{norm_forward(in[0], in[1], in[2], at.i, at.a, at.flag)};
}

const OpDef& norm_op(bool rms) {
  static OpDef ln{"layer_norm", norm_fwd, norm_jvp, norm_vjp, true, false};
  static OpDef rn{"rms_norm", norm_fwd, norm_jvp, norm_vjp, true, false};
  return rms ? rn : ln;
}

void check_affine(const Tensor& x, const Tensor& p, int64_t nd, const char* op, const char* what) {
  if (!p.defined()) return;
  Shape want(x.shape().end() - nd, x.shape().end());
  DF_CHECK(p.shape() == want, op, ": ", what, " must have the normalised shape ", shape_str(want), " of input ",
           x.desc(), ", got ", p.desc());
  DF_CHECK(p.dtype() == x.dtype() && p.device() == x.device(), op, ": ", what, " ", p.desc(),
           " does not match the input's dtype/device ", x.desc());
}

Tensor norm(const Tensor& x_in, int64_t nd, const Tensor& w_in, const Tensor& b_in, double eps, bool rms) {
  const Tensor x = autocast_full(x_in), w = autocast_full(w_in), b = autocast_full(b_in);
  const char* name = rms ? "rms_norm" : "layer_norm";
  DF_CHECK(nd >= 1 && nd <= x.dim(), name, ": normalized_dims ", nd, " must be in [1, ", x.dim(), "] for ",
           x.desc());
  check_affine(x, w, nd, name, "weight");
  check_affine(x, b, nd, name, "bias");
  Attrs at;
  at.i = nd;
  at.a = eps;
  at.flag = rms;
  return apply1(norm_op(rms), {x, w, b}, at);
}

}  // namespace

Tensor softmax(const Tensor& x_in, int64_t axis) {
  const Tensor x = autocast_full(x_in);
  DF_CHECK(x.dim() >= 1, "softmax: needs at least one dim, got ", x.desc());
  Attrs at;
  at.i = normalize_axis(axis, x.dim(), "softmax");
  return apply1(softmax_op(), {x}, at);
}

Tensor log_softmax(const Tensor& x_in, int64_t axis) {
  const Tensor x = autocast_full(x_in);
  DF_CHECK(x.dim() >= 1, "log_softmax: needs at least one dim, got ", x.desc());
  Attrs at;
  at.i = normalize_axis(axis, x.dim(), "log_softmax");
  return apply1(log_softmax_op(), {x}, at);
}

Tensor layer_norm(const Tensor& x, int64_t normalized_dims, const Tensor& weight, const Tensor& bias, double eps) {
  return norm(x, normalized_dims, weight, bias, eps, false);
}

Tensor rms_norm(const Tensor& x, int64_t normalized_dims, const Tensor& weight, double eps) {
  return norm(x, normalized_dims, weight, Tensor(), eps, true);
}

}  // namespace df
