// conv2d (stride, padding, groups) as im2col + OpenBLAS GEMMs per group (one per image, or per chunk
// of images for small feature maps). conv2d is
// bilinear in (x, w); its two adjoints, conv2d_input_grad (col2im of w^T g) and conv2d_weight_grad
// (g times im2col(x)^T), are ops of their own whose rules are the other two, so all orders compose.
#include <cblas.h>

#include <algorithm>
#include <vector>

#include "ops/autocast.h"
#include "ops/cpu_kernels.h"
#include "ops/elementwise_kernels.h"
#include "ops/image_kernels.h"
#include "ops/rules.h"

namespace df {

ImageCudaHooks& image_cuda_hooks() {
  static ImageCudaHooks h;
  return h;
}

ConvGeom conv_geom(const Shape& xs, const Shape& ws, int64_t stride, int64_t pad, int64_t groups) {
  ConvGeom g;
  g.N = xs[0];
  g.C = xs[1];
  g.H = xs[2];
  g.W = xs[3];
  g.O = ws[0];
  g.kh = ws[2];
  g.kw = ws[3];
  g.stride = stride;
  g.pad = pad;
  g.groups = groups;
  g.Ho = (g.H + 2 * pad - g.kh) / stride + 1;
  g.Wo = (g.W + 2 * pad - g.kw) / stride + 1;
  return g;
}

namespace {

Tensor contiguous_raw(const Tensor& t) {
  if (!t.defined() || t.is_contiguous()) return t;
  return copy_kernel(t, t.dtype());
}

// Row-major C (m x n) = op(A) op(B) + beta C.
void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
          int64_t ldb, float beta, float* c, int64_t ldc) {
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, (int)m, (int)n, (int)k,
              1.0f, a, (int)lda, b, (int)ldb, beta, c, (int)ldc);
}
void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const double* a, int64_t lda, const double* b,
          int64_t ldb, double beta, double* c, int64_t ldc) {
  cblas_dgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, (int)m, (int)n, (int)k,
              1.0, a, (int)lda, b, (int)ldb, beta, c, (int)ldc);
}

// A 1x1, stride-1, unpadded kernel reads the image itself as the column matrix: no im2col copy.
bool is_pointwise(const ConvGeom& g) { return g.kh == 1 && g.kw == 1 && g.stride == 1 && g.pad == 0; }

// One image's group of channels x (Cg, H, W) -> col (K, L) with row stride ld, row (c, ki, kj),
// column (oh, ow); positions in the padding read 0. The valid ow range is computed once per row so
// the inner loop has no bounds test.
template <class T>
void im2col(const T* x, T* col, int64_t ld, const ConvGeom& g) {
  int64_t s = g.stride;
  for (int64_t c = 0; c < g.Cg(); ++c)
    for (int64_t ki = 0; ki < g.kh; ++ki)
      for (int64_t kj = 0; kj < g.kw; ++kj) {
        T* row = col + ((c * g.kh + ki) * g.kw + kj) * ld;
        int64_t off = kj - g.pad;  // iw = ow * s + off
        int64_t lo = off >= 0 ? 0 : (-off + s - 1) / s;
        int64_t hi = g.W - 1 - off < 0 ? 0 : std::min(g.Wo, (g.W - 1 - off) / s + 1);
        lo = std::min(lo, hi);
        for (int64_t oh = 0; oh < g.Ho; ++oh) {
          T* r = row + oh * g.Wo;
          int64_t ih = oh * s - g.pad + ki;
          if (ih < 0 || ih >= g.H) {
            std::fill(r, r + g.Wo, T(0));
            continue;
          }
          const T* xr = x + (c * g.H + ih) * g.W;
          std::fill(r, r + lo, T(0));
          if (s == 1) {
            std::copy(xr + lo + off, xr + hi + off, r + lo);
          } else {
            for (int64_t ow = lo; ow < hi; ++ow) r[ow] = xr[ow * s + off];
          }
          std::fill(r + hi, r + g.Wo, T(0));
        }
      }
}

// The adjoint of im2col: col (K, L) accumulated into x (Cg, H, W); padding positions are dropped.
template <class T>
void col2im(const T* col, int64_t ld, T* x, const ConvGeom& g) {
  int64_t s = g.stride;
  for (int64_t c = 0; c < g.Cg(); ++c)
    for (int64_t ki = 0; ki < g.kh; ++ki)
      for (int64_t kj = 0; kj < g.kw; ++kj) {
        const T* row = col + ((c * g.kh + ki) * g.kw + kj) * ld;
        int64_t off = kj - g.pad;
        int64_t lo = off >= 0 ? 0 : (-off + s - 1) / s;
        int64_t hi = g.W - 1 - off < 0 ? 0 : std::min(g.Wo, (g.W - 1 - off) / s + 1);
        for (int64_t oh = 0; oh < g.Ho; ++oh) {
          int64_t ih = oh * s - g.pad + ki;
          if (ih < 0 || ih >= g.H) continue;
          T* xr = x + (c * g.H + ih) * g.W;
          const T* r = row + oh * g.Wo;
          for (int64_t ow = lo; ow < hi; ++ow) xr[ow * s + off] += r[ow];
        }
      }
}

// Small feature maps make thin per-image GEMMs, so up to `nb` images share one GEMM: their column
// matrices sit side by side in a (K, nb * L) buffer of about kColumnBudget elements. Maps of 256 or
// more positions keep one GEMM per image, which reads x and writes out in place.
constexpr int64_t kColumnBudget = 1 << 21;
int64_t images_per_gemm(const ConvGeom& g) {
  if (g.L() >= 256) return 1;
  return std::max<int64_t>(1, std::min<int64_t>(g.N, kColumnBudget / std::max<int64_t>(1, g.K() * g.L())));
}

// Plane (n, group) of a (N, groups * rows, L) tensor: rows x L contiguous values.
template <class T>
T* plane(T* base, int64_t n, int64_t gr, int64_t rows, int64_t groups, int64_t L) {
  return base + (n * groups + gr) * rows * L;
}

// The column matrix of images n0 .. n0 + nb - 1 of group gr, (K, nb * L): either x itself (one
// pointwise image) or im2col into buf.
template <class T>
const T* columns(const T* x, int64_t n0, int64_t nb, int64_t gr, const ConvGeom& g, std::vector<T>& buf) {
  int64_t L = g.L();
  const T* xg = plane(x, n0, gr, g.Cg(), g.groups, g.H * g.W);
  if (nb == 1 && is_pointwise(g)) return xg;
  for (int64_t j = 0; j < nb; ++j) im2col(plane(x, n0 + j, gr, g.Cg(), g.groups, g.H * g.W), buf.data() + j * L, nb * L, g);
  return buf.data();
}

// gy planes of images n0 .. n0 + nb - 1, group gr, side by side as (Og, nb * L).
template <class T>
const T* gathered(const T* gy, int64_t n0, int64_t nb, int64_t gr, const ConvGeom& g, std::vector<T>& buf) {
  int64_t L = g.L(), Og = g.Og();
  if (nb == 1) return plane(gy, n0, gr, Og, g.groups, L);
  for (int64_t j = 0; j < nb; ++j) {
    const T* src = plane(gy, n0 + j, gr, Og, g.groups, L);
    for (int64_t o = 0; o < Og; ++o) std::copy(src + o * L, src + (o + 1) * L, buf.data() + o * nb * L + j * L);
  }
  return buf.data();
}

// out (N, O, L) = W_g (Og, K) @ columns (K, nb * L), on top of the bias.
template <class T>
void conv2d_cpu(const T* x, const T* w, const T* b, T* out, const ConvGeom& g) {
  int64_t K = g.K(), L = g.L(), Og = g.Og(), nb_max = images_per_gemm(g);
  std::vector<T> col(nb_max == 1 && is_pointwise(g) ? 0 : K * nb_max * L), tmp(nb_max > 1 ? Og * nb_max * L : 0);
  for (int64_t n0 = 0; n0 < g.N; n0 += nb_max) {
    int64_t nb = std::min(nb_max, g.N - n0);
    for (int64_t gr = 0; gr < g.groups; ++gr) {
      const T* cp = columns(x, n0, nb, gr, g, col);
      const T* wg = w + gr * Og * K;
      if (nb == 1) {
        T* og = plane(out, n0, gr, Og, g.groups, L);
        if (b)
          for (int64_t o = 0; o < Og; ++o) std::fill(og + o * L, og + (o + 1) * L, b[gr * Og + o]);
        gemm(false, false, Og, L, K, wg, K, cp, L, b ? T(1) : T(0), og, L);
        continue;
      }
      gemm(false, false, Og, nb * L, K, wg, K, cp, nb * L, T(0), tmp.data(), nb * L);
      for (int64_t j = 0; j < nb; ++j) {
        T* og = plane(out, n0 + j, gr, Og, g.groups, L);
        for (int64_t o = 0; o < Og; ++o) {
          const T* src = tmp.data() + o * nb * L + j * L;
          T bo = b ? b[gr * Og + o] : T(0);
          for (int64_t l = 0; l < L; ++l) og[o * L + l] = src[l] + bo;
        }
      }
    }
  }
}

// gx (N, C, H, W) = col2im(W_g^T (K, Og) @ gy planes (Og, nb * L)).
template <class T>
void conv2d_input_grad_cpu(const T* gy, const T* w, T* gx, const ConvGeom& g) {
  int64_t K = g.K(), L = g.L(), Og = g.Og(), HW = g.H * g.W, nb_max = images_per_gemm(g);
  bool in_place = nb_max == 1 && is_pointwise(g);
  std::vector<T> col(in_place ? 0 : K * nb_max * L), gbuf(nb_max > 1 ? Og * nb_max * L : 0);
  if (!in_place) std::fill(gx, gx + g.N * g.C * HW, T(0));
  for (int64_t n0 = 0; n0 < g.N; n0 += nb_max) {
    int64_t nb = std::min(nb_max, g.N - n0);
    for (int64_t gr = 0; gr < g.groups; ++gr) {
      const T* gp = gathered(gy, n0, nb, gr, g, gbuf);
      T* xg = plane(gx, n0, gr, g.Cg(), g.groups, HW);
      gemm(true, false, K, nb * L, Og, w + gr * Og * K, K, gp, nb * L, T(0), in_place ? xg : col.data(), nb * L);
      if (in_place) continue;
      for (int64_t j = 0; j < nb; ++j) col2im(col.data() + j * L, nb * L, plane(gx, n0 + j, gr, g.Cg(), g.groups, HW), g);
    }
  }
}

// gw_g (Og, K) = sum over image chunks of gy planes (Og, nb * L) @ columns^T (nb * L, K).
template <class T>
void conv2d_weight_grad_cpu(const T* x, const T* gy, T* gw, const ConvGeom& g) {
  int64_t K = g.K(), L = g.L(), Og = g.Og(), nb_max = images_per_gemm(g);
  std::vector<T> col(nb_max == 1 && is_pointwise(g) ? 0 : K * nb_max * L), gbuf(nb_max > 1 ? Og * nb_max * L : 0);
  if (g.N == 0) std::fill(gw, gw + g.O * K, T(0));
  for (int64_t n0 = 0; n0 < g.N; n0 += nb_max) {
    int64_t nb = std::min(nb_max, g.N - n0);
    for (int64_t gr = 0; gr < g.groups; ++gr) {
      const T* cp = columns(x, n0, nb, gr, g, col);
      const T* gp = gathered(gy, n0, nb, gr, g, gbuf);
      gemm(false, true, Og, K, nb * L, gp, nb * L, cp, nb * L, n0 == 0 ? T(0) : T(1), gw + gr * Og * K, K);
    }
  }
}

}  // namespace

Tensor conv2d_kernel(const Tensor& x0, const Tensor& w0, const Tensor& b0, const ConvGeom& g) {
  for (const Tensor* t : {&x0, &w0, &b0}) check_floating(*t, "conv2d");
  Tensor x = contiguous_raw(x0), w = contiguous_raw(w0), b = contiguous_raw(b0);
  if (x.device() == Device::CUDA) {
    DF_CHECK(image_cuda_hooks().conv2d, "conv2d: CUDA tensor but no CUDA conv2d kernel is registered");
    return image_cuda_hooks().conv2d(x, w, b, g);
  }
  Tensor out = empty({g.N, g.O, g.Ho, g.Wo}, x.dtype(), Device::CPU);
  DF_DISPATCH_FLOAT(x.dtype(), "conv2d",
                    conv2d_cpu(x.data_as<scalar_t>(), w.data_as<scalar_t>(),
                               b.defined() ? b.data_as<scalar_t>() : nullptr, out.data_as<scalar_t>(), g));
  return out;
}

Tensor conv2d_input_grad_kernel(const Tensor& gy0, const Tensor& w0, const ConvGeom& g) {
  check_floating(gy0, "conv2d_input_grad");
  check_floating(w0, "conv2d_input_grad");
  Tensor gy = contiguous_raw(gy0), w = contiguous_raw(w0);
  if (gy.device() == Device::CUDA) {
    DF_CHECK(image_cuda_hooks().conv2d_input_grad,
             "conv2d_input_grad: CUDA tensor but no CUDA kernel is registered");
    return image_cuda_hooks().conv2d_input_grad(gy, w, g);
  }
  Tensor gx = empty({g.N, g.C, g.H, g.W}, gy.dtype(), Device::CPU);
  DF_DISPATCH_FLOAT(gy.dtype(), "conv2d_input_grad",
                    conv2d_input_grad_cpu(gy.data_as<scalar_t>(), w.data_as<scalar_t>(), gx.data_as<scalar_t>(), g));
  return gx;
}

Tensor conv2d_weight_grad_kernel(const Tensor& x0, const Tensor& gy0, const ConvGeom& g) {
  check_floating(x0, "conv2d_weight_grad");
  check_floating(gy0, "conv2d_weight_grad");
  Tensor x = contiguous_raw(x0), gy = contiguous_raw(gy0);
  if (x.device() == Device::CUDA) {
    DF_CHECK(image_cuda_hooks().conv2d_weight_grad,
             "conv2d_weight_grad: CUDA tensor but no CUDA kernel is registered");
    return image_cuda_hooks().conv2d_weight_grad(x, gy, g);
  }
  Tensor gw = empty({g.O, g.Cg(), g.kh, g.kw}, x.dtype(), Device::CPU);
  DF_DISPATCH_FLOAT(x.dtype(), "conv2d_weight_grad",
                    conv2d_weight_grad_cpu(x.data_as<scalar_t>(), gy.data_as<scalar_t>(), gw.data_as<scalar_t>(), g));
  return gw;
}

namespace {

// All three ops share attrs: dims = {stride, padding, groups}; dims2 = the shape the op cannot read
// from its inputs (x's for conv2d_input_grad, w's for conv2d_weight_grad).
Attrs conv_attrs(int64_t stride, int64_t pad, int64_t groups, Shape other = {}) {
  Attrs at;
  at.dims = {stride, pad, groups};
  at.dims2 = std::move(other);
  return at;
}
ConvGeom geom_of(const Shape& xs, const Shape& ws, const Attrs& at) {
  return conv_geom(xs, ws, at.dims[0], at.dims[1], at.dims[2]);
}

Tensor conv_raw(const Tensor& x, const Tensor& w, const Tensor& b, const Attrs& at);
Tensor input_grad_raw(const Tensor& gy, const Tensor& w, const Attrs& at, const Shape& x_shape);
Tensor weight_grad_raw(const Tensor& x, const Tensor& gy, const Attrs& at, const Shape& w_shape);

Tensor add_opt(const Tensor& a, const Tensor& b) { return a.defined() ? add(a, b) : b; }

// inputs (x, w, b); b may be undefined.
const OpDef& conv2d_op() {
  static OpDef op{"conv2d",
                  [](const Tensors& in, const Attrs& at) {
                    return Tensors{conv2d_kernel(in[0], in[1], in[2], geom_of(in[0].shape(), in[1].shape(), at))};
                  },
                  [](const RuleCtx& c, const Tensors& t) {
                    // The bias tangent rides along as the bias of one of the convolutions.
                    Tensor y, tb = t[2];
                    if (t[0].defined()) {
                      y = conv_raw(t[0], c.in[1], tb, c.attrs);
                      tb = Tensor();
                    }
                    if (t[1].defined()) {
                      y = add_opt(y, conv_raw(c.in[0], t[1], tb, c.attrs));
                      tb = Tensor();
                    }
                    if (tb.defined()) y = broadcast_to(reshape(tb, {1, -1, 1, 1}), c.out[0].shape());
                    return Tensors{y};
                  },
                  [](const RuleCtx& c, const Tensors& g, const std::vector<bool>& needs) {
                    const Tensor &x = c.in[0], &w = c.in[1];
                    Tensors r(3);
                    if (needs[0]) r[0] = input_grad_raw(g[0], w, c.attrs, x.shape());
                    if (needs[1]) r[1] = weight_grad_raw(x, g[0], c.attrs, w.shape());
                    if (needs[2] && c.in[2].defined()) r[2] = sum(g[0], {0, 2, 3});
                    return r;
                  },
                  true, false};
  return op;
}

// inputs (gy, w); bilinear. <u, input_grad(gy, w)> = <conv2d(u, w), gy>.
const OpDef& input_grad_op() {
  static OpDef op{"conv2d_input_grad",
                  [](const Tensors& in, const Attrs& at) {
                    return Tensors{conv2d_input_grad_kernel(in[0], in[1], geom_of(at.dims2, in[1].shape(), at))};
                  },
                  [](const RuleCtx& c, const Tensors& t) {
                    Tensor y;
                    if (t[0].defined()) y = input_grad_raw(t[0], c.in[1], c.attrs, c.attrs.dims2);
                    if (t[1].defined()) y = add_opt(y, input_grad_raw(c.in[0], t[1], c.attrs, c.attrs.dims2));
                    return Tensors{y};
                  },
                  [](const RuleCtx& c, const Tensors& g, const std::vector<bool>& needs) {
                    Tensors r(2);
                    if (needs[0]) r[0] = conv_raw(g[0], c.in[1], Tensor(), c.attrs);
                    if (needs[1]) r[1] = weight_grad_raw(g[0], c.in[0], c.attrs, c.in[1].shape());
                    return r;
                  },
                  true, false};
  return op;
}

// inputs (x, gy); bilinear. <V, weight_grad(x, gy)> = <gy, conv2d(x, V)>.
const OpDef& weight_grad_op() {
  static OpDef op{"conv2d_weight_grad",
                  [](const Tensors& in, const Attrs& at) {
                    return Tensors{conv2d_weight_grad_kernel(in[0], in[1], geom_of(in[0].shape(), at.dims2, at))};
                  },
                  [](const RuleCtx& c, const Tensors& t) {
                    Tensor y;
                    if (t[0].defined()) y = weight_grad_raw(t[0], c.in[1], c.attrs, c.attrs.dims2);
                    if (t[1].defined()) y = add_opt(y, weight_grad_raw(c.in[0], t[1], c.attrs, c.attrs.dims2));
                    return Tensors{y};
                  },
                  [](const RuleCtx& c, const Tensors& g, const std::vector<bool>& needs) {
                    Tensors r(2);
                    if (needs[0]) r[0] = input_grad_raw(c.in[1], g[0], c.attrs, c.in[0].shape());
                    if (needs[1]) r[1] = conv_raw(c.in[0], g[0], Tensor(), c.attrs);
                    return r;
                  },
                  true, false};
  return op;
}

Tensor conv_raw(const Tensor& x, const Tensor& w, const Tensor& b, const Attrs& at) {
  return apply1(conv2d_op(), {x, w, b}, conv_attrs(at.dims[0], at.dims[1], at.dims[2]));
}
Tensor input_grad_raw(const Tensor& gy, const Tensor& w, const Attrs& at, const Shape& x_shape) {
  return apply1(input_grad_op(), {gy, w}, conv_attrs(at.dims[0], at.dims[1], at.dims[2], x_shape));
}
Tensor weight_grad_raw(const Tensor& x, const Tensor& gy, const Attrs& at, const Shape& w_shape) {
  return apply1(weight_grad_op(), {x, gy}, conv_attrs(at.dims[0], at.dims[1], at.dims[2], w_shape));
}

}  // namespace

Tensor conv2d(const Tensor& x_in, const Tensor& w_in, const Tensor& b_in, int64_t stride, int64_t padding,
              int64_t groups) {
  DF_CHECK(x_in.defined() && w_in.defined(), "conv2d: input or weight is undefined");
  const Tensor x = autocast_compute(x_in, "conv2d"), w = autocast_compute(w_in, "conv2d");
  const Tensor b = autocast_compute(b_in, "conv2d");
  DF_CHECK(x.dim() == 4 && w.dim() == 4, "conv2d: expected x (N, C, H, W) and w (O, C/groups, kh, kw), got x ",
           x.desc(), " and w ", w.desc());
  DF_CHECK(x.dtype() == w.dtype() && x.device() == w.device(), "conv2d: x ", x.desc(), " and w ", w.desc(),
           " differ in dtype or device");
  DF_CHECK(stride >= 1 && padding >= 0 && groups >= 1, "conv2d: need stride >= 1, padding >= 0, groups >= 1, got ",
           stride, ", ", padding, ", ", groups, " (x ", x.desc(), ", w ", w.desc(), ")");
  int64_t C = x.size(1), O = w.size(0);
  DF_CHECK(C % groups == 0 && O % groups == 0 && w.size(1) * groups == C, "conv2d: x ", x.desc(), " has ", C,
           " channels and w ", w.desc(), " expects ", w.size(1), " per group with groups = ", groups,
           " (channels and out channels must divide by groups)");
  DF_CHECK(w.size(2) >= 1 && w.size(3) >= 1 && x.size(2) + 2 * padding >= w.size(2) &&
               x.size(3) + 2 * padding >= w.size(3),
           "conv2d: kernel of w ", w.desc(), " does not fit x ", x.desc(), " with padding ", padding);
  if (b.defined()) {
    DF_CHECK(b.dim() == 1 && b.size(0) == O, "conv2d: bias must be (", O, ") for w ", w.desc(), ", got ", b.desc(),
             " (x ", x.desc(), ")");
    DF_CHECK(b.dtype() == x.dtype() && b.device() == x.device(), "conv2d: bias ", b.desc(), " does not match x ",
             x.desc());
  }
  return apply1(conv2d_op(), {x, w, b}, conv_attrs(stride, padding, groups));
}

}  // namespace df
