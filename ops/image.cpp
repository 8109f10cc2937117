// group_norm (fused CPU forward, rules from public ops over (N, G, -1) groups), nearest 2-D upsampling
// and its adjoint sum pooling, average pooling and its scatter adjoint, and pixel_norm (a composite).
#include <algorithm>
#include <cmath>
#include <vector>

#include "ops/autocast.h"
#include "ops/cpu_kernels.h"
#include "ops/elementwise_kernels.h"
#include "ops/image_kernels.h"
#include "ops/reduce_kernels.h"
#include "ops/rules.h"

namespace df {

namespace {

Tensor contiguous_raw(const Tensor& t) {
  if (!t.defined() || t.is_contiguous()) return t;
  return copy_kernel(t, t.dtype());
}

// x (N, C, S): each (n, group) block of Cg * S values is contiguous; two passes in double.
template <class T>
void group_norm_cpu(const T* x, const T* w, const T* b, T* y, int64_t N, int64_t C, int64_t S, int64_t G,
                    double eps) {
  int64_t Cg = C / G, M = Cg * S;
  for (int64_t blk = 0; blk < N * G; ++blk) {
    const T* xb = x + blk * M;
    T* yb = y + blk * M;
    double mu = 0, ss = 0;
    for (int64_t i = 0; i < M; ++i) mu += xb[i];
    mu /= double(M);
    for (int64_t i = 0; i < M; ++i) ss += (xb[i] - mu) * (xb[i] - mu);
    double rs = 1.0 / std::sqrt(ss / double(M) + eps);
    int64_t c0 = (blk % G) * Cg;
    for (int64_t c = 0; c < Cg; ++c) {
      double a = rs * (w ? double(w[c0 + c]) : 1.0);
      double sh = (b ? double(b[c0 + c]) : 0.0) - mu * a;
      for (int64_t s = 0; s < S; ++s) yb[c * S + s] = T(xb[c * S + s] * a + sh);
    }
  }
}

}  // namespace

Tensor group_norm_kernel(const Tensor& x0, const Tensor& w0, const Tensor& b0, int64_t groups, double eps) {
  for (const Tensor* t : {&x0, &w0, &b0}) check_floating(*t, "group_norm");
  int64_t N = x0.size(0), C = x0.size(1), S = N * C == 0 ? 0 : x0.numel() / (N * C);
  if (x0.device() == Device::CUDA && !image_cuda_hooks().group_norm) {
    Tensor xr = reshape(x0, {N, groups, -1});
    Tensor xc = sub(xr, mean(xr, {2}, true));
    Tensor y = reshape(mul(xc, rsqrt(add(mean(square(xc), {2}, true), eps))), x0.shape());
    Shape ps(x0.dim() - 1, 1);
    ps[0] = C;
    if (w0.defined()) y = mul(y, reshape(w0, ps));
    if (b0.defined()) y = add(y, reshape(b0, ps));
    return y;
  }
  Tensor x = contiguous_raw(x0), w = contiguous_raw(w0), b = contiguous_raw(b0);
  if (x.device() == Device::CUDA) {
    Tensor out = image_cuda_hooks().group_norm(x, w, b, N, C, S, groups, eps);
    return make_view(out, x.shape(), contiguous_strides(x.shape()), out.offset());
  }
  Tensor y = empty(x.shape(), x.dtype(), Device::CPU);
  DF_DISPATCH_FLOAT(x.dtype(), "group_norm",
                    group_norm_cpu(x.data_as<scalar_t>(), w.defined() ? w.data_as<scalar_t>() : nullptr,
                                   b.defined() ? b.data_as<scalar_t>() : nullptr, y.data_as<scalar_t>(), N, C, S,
                                   groups, eps));
  return y;
}

Tensor upsample_nearest2d_kernel(const Tensor& x0, int64_t f) {
  check_floating(x0, "upsample_nearest2d");
  int64_t N = x0.size(0), C = x0.size(1), H = x0.size(2), W = x0.size(3);
  Shape os{N, C, H * f, W * f};
  Tensor x = contiguous_raw(x0);
  if (x.device() == Device::CUDA) {
    if (image_cuda_hooks().upsample_nearest2d) return image_cuda_hooks().upsample_nearest2d(x, f);
    // A broadcast view (N, C, H, f, W, f) copied out is exactly the upsampled image.
    Tensor v = make_view(x, {N, C, H, f, W, f}, {C * H * W, H * W, W, 0, 1, 0}, x.offset());
    Tensor out = copy_kernel(v, x.dtype());
    return make_view(out, os, contiguous_strides(os), out.offset());
  }
  Tensor out = empty(os, x.dtype(), Device::CPU);
  DF_DISPATCH_FLOAT(x.dtype(), "upsample_nearest2d", {
    const scalar_t* xp = x.data_as<scalar_t>();
    scalar_t* op = out.data_as<scalar_t>();
    int64_t Wf = W * f;
    for (int64_t r = 0; r < N * C * H; ++r) {
      scalar_t* o = op + r * f * Wf;
      for (int64_t w = 0; w < W; ++w)
        for (int64_t j = 0; j < f; ++j) o[w * f + j] = xp[r * W + w];
      for (int64_t i = 1; i < f; ++i) std::copy(o, o + Wf, o + i * Wf);
    }
  });
  return out;
}

Tensor sum_pool2d_kernel(const Tensor& x0, int64_t f) {
  check_floating(x0, "sum_pool2d");
  int64_t N = x0.size(0), C = x0.size(1), H = x0.size(2) / f, W = x0.size(3) / f;
  Tensor x = contiguous_raw(x0);
  if (x.device() == Device::CUDA) {
    if (image_cuda_hooks().sum_pool2d) return image_cuda_hooks().sum_pool2d(x, f);
    Tensor v = make_view(x, {N, C, H, f, W, f}, {C * H * W * f * f, H * W * f * f, W * f * f, W * f, f, 1},
                         x.offset());
    return reduce_kernel(ReduceKind::Sum, v, {3, 5});
  }
  Tensor out = zeros({N, C, H, W}, x.dtype(), Device::CPU);
  DF_DISPATCH_FLOAT(x.dtype(), "sum_pool2d", {
    const scalar_t* xp = x.data_as<scalar_t>();
    scalar_t* op = out.data_as<scalar_t>();
    int64_t Wf = W * f;
    for (int64_t r = 0; r < N * C * H; ++r)
      for (int64_t i = 0; i < f; ++i) {
        const scalar_t* xr = xp + (r * f + i) * Wf;
        scalar_t* o = op + r * W;
        for (int64_t w = 0; w < W; ++w)
          for (int64_t j = 0; j < f; ++j) o[w] += xr[w * f + j];
      }
  });
  return out;
}

namespace {

// Each window (k x k at stride s) of every (n, c) plane, as (output index, input index) visits.
template <class Fn>
void for_each_window_tap(int64_t H, int64_t W, int64_t k, int64_t s, Fn fn) {
  int64_t Ho = (H - k) / s + 1, Wo = (W - k) / s + 1;
  for (int64_t oh = 0; oh < Ho; ++oh)
    for (int64_t i = 0; i < k; ++i)
      for (int64_t ow = 0; ow < Wo; ++ow)
        for (int64_t j = 0; j < k; ++j) fn(oh * Wo + ow, (oh * s + i) * W + ow * s + j);
}

}  // namespace

Tensor avg_pool2d_kernel(const Tensor& x0, int64_t k, int64_t s) {
  check_floating(x0, "avg_pool2d");
  int64_t N = x0.size(0), C = x0.size(1), H = x0.size(2), W = x0.size(3);
  int64_t Ho = (H - k) / s + 1, Wo = (W - k) / s + 1;
  Tensor x = contiguous_raw(x0);
  if (x.device() == Device::CUDA) {
    if (image_cuda_hooks().avg_pool2d) return image_cuda_hooks().avg_pool2d(x, k, s);
    DF_CHECK(s == k && H % k == 0 && W % k == 0, "avg_pool2d: no CUDA kernel registered, and the composite "
             "fallback needs stride == kernel tiling the image exactly, got ", x.desc(), " kernel ", k,
             " stride ", s);
    return mul(sum_pool2d_kernel(x, k), 1.0 / double(k * k));
  }
  Tensor out = zeros({N, C, Ho, Wo}, x.dtype(), Device::CPU);
  double inv = 1.0 / double(k * k);
  DF_DISPATCH_FLOAT(x.dtype(), "avg_pool2d", {
    const scalar_t* xp = x.data_as<scalar_t>();
    scalar_t* op = out.data_as<scalar_t>();
    for (int64_t p = 0; p < N * C; ++p) {
      const scalar_t* xq = xp + p * H * W;
      scalar_t* oq = op + p * Ho * Wo;
      for_each_window_tap(H, W, k, s, [&](int64_t o, int64_t i) { oq[o] += xq[i]; });
      for (int64_t o = 0; o < Ho * Wo; ++o) oq[o] = scalar_t(oq[o] * inv);
    }
  });
  return out;
}

Tensor avg_pool2d_backward_kernel(const Tensor& g0, const Shape& xs, int64_t k, int64_t s) {
  check_floating(g0, "avg_pool2d_backward");
  int64_t N = xs[0], C = xs[1], H = xs[2], W = xs[3];
  int64_t Ho = (H - k) / s + 1, Wo = (W - k) / s + 1;
  Tensor g = contiguous_raw(g0);
  if (g.device() == Device::CUDA) {
    if (image_cuda_hooks().avg_pool2d_backward) return image_cuda_hooks().avg_pool2d_backward(g, xs, k, s);
    DF_CHECK(s == k && H % k == 0 && W % k == 0, "avg_pool2d_backward: no CUDA kernel registered, and the "
             "composite fallback needs stride == kernel tiling the image exactly, got ", g.desc(), " kernel ", k,
             " stride ", s);
    return mul(upsample_nearest2d_kernel(g, k), 1.0 / double(k * k));
  }
  Tensor out = zeros(xs, g.dtype(), Device::CPU);
  double inv = 1.0 / double(k * k);
  DF_DISPATCH_FLOAT(g.dtype(), "avg_pool2d_backward", {
    const scalar_t* gp = g.data_as<scalar_t>();
    scalar_t* op = out.data_as<scalar_t>();
    for (int64_t p = 0; p < N * C; ++p) {
      const scalar_t* gq = gp + p * Ho * Wo;
      scalar_t* oq = op + p * H * W;
      for_each_window_tap(H, W, k, s, [&](int64_t o, int64_t i) { oq[i] += scalar_t(gq[o] * inv); });
    }
  });
  return out;
}

Tensor max_pool2d_indices_kernel(const Tensor& x0, int64_t k, int64_t s, int64_t pad) {
  check_floating(x0, "max_pool2d");
  int64_t N = x0.size(0), C = x0.size(1), H = x0.size(2), W = x0.size(3);
  int64_t Ho = (H + 2 * pad - k) / s + 1, Wo = (W + 2 * pad - k) / s + 1;
  Tensor x = contiguous_raw(x0);
  if (x.device() == Device::CUDA) {
    DF_CHECK(image_cuda_hooks().max_pool2d_indices, "max_pool2d: CUDA tensor but no CUDA kernel is registered");
    return image_cuda_hooks().max_pool2d_indices(x, k, s, pad);
  }
  Tensor out = empty({N, C, Ho, Wo}, DType::I64, Device::CPU);
  DF_DISPATCH_FLOAT(x.dtype(), "max_pool2d", {
    const scalar_t* xp = x.data_as<scalar_t>();
    int64_t* op = out.data_as<int64_t>();
    for (int64_t p = 0; p < N * C; ++p) {
      const scalar_t* xq = xp + p * H * W;
      for (int64_t oh = 0; oh < Ho; ++oh)
        for (int64_t ow = 0; ow < Wo; ++ow) {
          int64_t best = -1;
          scalar_t bv = 0;
          for (int64_t h = std::max<int64_t>(oh * s - pad, 0); h < std::min(oh * s - pad + k, H); ++h)
            for (int64_t w = std::max<int64_t>(ow * s - pad, 0); w < std::min(ow * s - pad + k, W); ++w) {
              scalar_t v = xq[h * W + w];
              if (best < 0 || v > bv || (v != v && bv == bv)) {
                best = h * W + w;
                bv = v;
              }
            }
          *op++ = best;
        }
    }
  });
  return out;
}

namespace {

// ---- group_norm ---------------------------------------------------------------------------------

// Per-group statistics in the grouped view (N, G, M): scale = rsqrt(var + eps), xh = (x - mean) scale.
struct GroupStats {
  Tensor scale, xh;
};
GroupStats group_stats(const Tensor& x, int64_t G, double eps) {
  Tensor xr = reshape(x, {x.size(0), G, -1});
  Tensor xc = sub(xr, mean(xr, {2}, true));
  Tensor scale = rsqrt(add(mean(square(xc), {2}, true), eps));
  return {scale, mul(xc, scale)};
}

// The derivative of xh along v (also its own adjoint): scale (v - mean v - xh mean(xh v)) per group.
Tensor group_project(const Tensor& v, const GroupStats& s, const Shape& shape) {
  Tensor vr = reshape(v, {shape[0], s.xh.size(1), -1});
  Tensor r = sub(sub(vr, mean(vr, {2}, true)), mul(s.xh, mean(mul(s.xh, vr), {2}, true)));
  return reshape(mul(s.scale, r), shape);
}

// (C) -> (C, 1, ..., 1) so it broadcasts against (N, C, ...).
Tensor per_channel(const Tensor& p, int64_t rank) {
  Shape ps(rank - 1, 1);
  ps[0] = p.size(0);
  return reshape(p, ps);
}

Shape non_channel_axes(int64_t rank) {
  Shape axes{0};
  for (int64_t d = 2; d < rank; ++d) axes.push_back(d);
  return axes;
}

// inputs (x, weight, bias), weight/bias may be undefined; attrs: i = groups, a = eps.
const OpDef& group_norm_op() {
  static OpDef op{
      "group_norm",
      [](const Tensors& in, const Attrs& at) {
        return Tensors{group_norm_kernel(in[0], in[1], in[2], at.i, at.a)};
      },
      [](const RuleCtx& c, const Tensors& t) {
        const Tensor &x = c.in[0], &w = c.in[1];
        Tensor y;
        if (t[0].defined() || t[1].defined()) {
          GroupStats s = group_stats(x, c.attrs.i, c.attrs.a);
          if (t[0].defined()) {
            y = group_project(t[0], s, x.shape());
            if (w.defined()) y = mul(y, per_channel(w, x.dim()));
          }
          if (t[1].defined()) {
            Tensor z = mul(per_channel(t[1], x.dim()), reshape(s.xh, x.shape()));
            y = y.defined() ? add(y, z) : z;
          }
        }
        if (t[2].defined()) {
          Tensor tb = per_channel(t[2], x.dim());
          y = y.defined() ? add(y, tb) : broadcast_to(tb, x.shape());
        }
        return Tensors{y};
      },
      [](const RuleCtx& c, const Tensors& g, const std::vector<bool>& needs) {
        const Tensor &x = c.in[0], &w = c.in[1], &b = c.in[2];
        Shape axes = non_channel_axes(x.dim());
        Tensors r(3);
        bool need_w = needs[1] && w.defined();
        if (needs[0] || need_w) {
          GroupStats s = group_stats(x, c.attrs.i, c.attrs.a);
          if (needs[0]) r[0] = group_project(w.defined() ? mul(g[0], per_channel(w, x.dim())) : g[0], s, x.shape());
          if (need_w) r[1] = sum(mul(g[0], reshape(s.xh, x.shape())), axes);
        }
        if (needs[2] && b.defined()) r[2] = sum(g[0], axes);
        return r;
      },
      true, false};
  return op;
}

// ---- resampling ---------------------------------------------------------------------------------

// upsample_nearest2d and sum_pool2d: attrs i = factor; each is the other's adjoint.
const OpDef& sum_pool2d_op();
const OpDef& upsample_op() {
  static OpDef op = def_linear(
      "upsample_nearest2d",
      [](const Tensors& in, const Attrs& at) { return Tensors{upsample_nearest2d_kernel(in[0], at.i)}; },
      by_op(sum_pool2d_op),
      upsample_op);
  return op;
}
const OpDef& sum_pool2d_op() {
  static OpDef op = def_linear(
      "sum_pool2d", [](const Tensors& in, const Attrs& at) { return Tensors{sum_pool2d_kernel(in[0], at.i)}; },
      by_op(upsample_op),
      sum_pool2d_op);
  return op;
}

// avg_pool2d and avg_pool2d_backward: attrs dims = {kernel, stride}, dims2 = the unpooled shape.
const OpDef& avg_pool2d_backward_op();
const OpDef& avg_pool2d_op() {
  static OpDef op = def_linear(
      "avg_pool2d",
      [](const Tensors& in, const Attrs& at) { return Tensors{avg_pool2d_kernel(in[0], at.dims[0], at.dims[1])}; },
      by_op(avg_pool2d_backward_op),
      avg_pool2d_op);
  return op;
}
const OpDef& avg_pool2d_backward_op() {
  static OpDef op = def_linear(
      "avg_pool2d_backward",
      [](const Tensors& in, const Attrs& at) {
        return Tensors{avg_pool2d_backward_kernel(in[0], at.dims2, at.dims[0], at.dims[1])};
      },
      by_op(avg_pool2d_op),
      avg_pool2d_backward_op);
  return op;
}

// max_pool2d's window argmax: attrs dims = {kernel, stride, padding}. An index carries no derivative;
// max_pool2d gathers x at it, so its derivatives are gather's.
const OpDef& max_pool2d_indices_op() {
  static OpDef op{"max_pool2d_indices",
                  [](const Tensors& in, const Attrs& at) {
                    return Tensors{max_pool2d_indices_kernel(in[0], at.dims[0], at.dims[1], at.dims[2])};
                  },
                  [](const RuleCtx&, const Tensors&) { return Tensors{Tensor()}; },
                  [](const RuleCtx&, const Tensors&, const std::vector<bool>&) { return Tensors{Tensor()}; },
                  false, false, false};
  return op;
}

void check_image(const Tensor& x, const char* op) {
  DF_CHECK(x.defined() && x.dim() == 4, op, ": expected an image batch (N, C, H, W), got ",
           x.defined() ? x.desc() : std::string("undefined"));
}

}  // namespace

Tensor group_norm(const Tensor& x_in, int64_t groups, const Tensor& w_in, const Tensor& b_in, double eps) {
  const Tensor x = autocast_full(x_in), weight = autocast_full(w_in), bias = autocast_full(b_in);
  DF_CHECK(x.defined() && x.dim() >= 2, "group_norm: expected x (N, C, ...), got ",
           x.defined() ? x.desc() : std::string("undefined"));
  DF_CHECK(groups >= 1 && x.size(1) % groups == 0, "group_norm: ", x.size(1), " channels of ", x.desc(),
           " do not split into ", groups, " groups");
  for (const Tensor* p : {&weight, &bias}) {
    if (!p->defined()) continue;
    const char* what = p == &weight ? "weight" : "bias";
    DF_CHECK(p->dim() == 1 && p->size(0) == x.size(1), "group_norm: ", what, " must be (", x.size(1), ") for ",
             x.desc(), ", got ", p->desc());
    DF_CHECK(p->dtype() == x.dtype() && p->device() == x.device(), "group_norm: ", what, " ", p->desc(),
             " does not match the input's dtype/device ", x.desc());
  }
  Attrs at;
  at.i = groups;
  at.a = eps;
  return apply1(group_norm_op(), {x, weight, bias}, at);
}

Tensor upsample_nearest2d(const Tensor& x, int64_t factor) {
  check_image(x, "upsample_nearest2d");
  DF_CHECK(factor >= 1, "upsample_nearest2d: factor must be >= 1, got ", factor, " for ", x.desc());
  if (factor == 1) return x;
  Attrs at;
  at.i = factor;
  return apply1(upsample_op(), {x}, at);
}

Tensor avg_pool2d(const Tensor& x, int64_t kernel, int64_t stride) {
  check_image(x, "avg_pool2d");
  if (stride < 0) stride = kernel;
  DF_CHECK(kernel >= 1 && stride >= 1, "avg_pool2d: kernel and stride must be >= 1, got ", kernel, " and ", stride,
           " for ", x.desc());
  DF_CHECK(x.size(2) >= kernel && x.size(3) >= kernel, "avg_pool2d: kernel ", kernel, " is larger than the image ",
           x.desc());
  Attrs at;
  at.dims = {kernel, stride};
  at.dims2 = x.shape();
  return apply1(avg_pool2d_op(), {x}, at);
}

Tensor max_pool2d(const Tensor& x, int64_t kernel, int64_t stride, int64_t padding) {
  check_image(x, "max_pool2d");
  if (stride < 0) stride = kernel;
  DF_CHECK(kernel >= 1 && stride >= 1, "max_pool2d: kernel and stride must be >= 1, got ", kernel, " and ", stride,
           " for ", x.desc());
  DF_CHECK(padding >= 0 && 2 * padding <= kernel, "max_pool2d: padding must be in [0, kernel / 2], got ", padding,
           " for kernel ", kernel);
  int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  DF_CHECK(H + 2 * padding >= kernel && W + 2 * padding >= kernel, "max_pool2d: kernel ", kernel,
           " is larger than the padded image ", x.desc(), " (padding ", padding, ")");
  Attrs at;
  at.dims = {kernel, stride, padding};
  Tensor idx = apply1(max_pool2d_indices_op(), {x}, at);
  int64_t Ho = idx.size(2), Wo = idx.size(3);
  Tensor y = gather_windows(reshape(x, {N, C, H * W}), reshape(idx, {N, C, Ho * Wo}));
  return reshape(y, {N, C, Ho, Wo});
}

Tensor pixel_norm(const Tensor& x_in, int64_t axis, double eps) {
  const Tensor x = autocast_full(x_in);
  DF_CHECK(x.defined() && x.dim() >= 1, "pixel_norm: expected a tensor with at least one dim");
  int64_t a = normalize_axis(axis, x.dim(), "pixel_norm");
  return mul(x, rsqrt(add(mean(square(x), {a}, true), eps)));
}

}  // namespace df
