// Op-table rows for the image and sequence ops (conv2d, group_norm, resampling, dropout, embedding,
// pixel_norm, attention), each with a hand-written reference loop, plus their error and mask tests.
#include <doctest/doctest.h>

#include <cmath>
#include <functional>
#include <string>

#include "core/philox.h"
#include "tests/checker.h"

using namespace df;
using namespace df::test;

namespace {

using Vals = std::vector<std::vector<double>>;
using Shapes = std::vector<Shape>;

std::string message_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// ---- conv2d -------------------------------------------------------------------------------------

// Direct 7-loop convolution; out-of-range taps read the zero padding.
std::vector<double> ref_conv(const Vals& v, const Shapes& s, int64_t stride, int64_t pad, int64_t groups) {
  int64_t N = s[0][0], C = s[0][1], H = s[0][2], W = s[0][3];
  int64_t O = s[1][0], Cg = s[1][1], kh = s[1][2], kw = s[1][3];
  int64_t Ho = (H + 2 * pad - kh) / stride + 1, Wo = (W + 2 * pad - kw) / stride + 1, Og = O / groups;
  std::vector<double> out(N * O * Ho * Wo);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t o = 0; o < O; ++o)
      for (int64_t oh = 0; oh < Ho; ++oh)
        for (int64_t ow = 0; ow < Wo; ++ow) {
          double acc = v.size() > 2 ? v[2][o] : 0.0;
          for (int64_t c = 0; c < Cg; ++c)
            for (int64_t i = 0; i < kh; ++i)
              for (int64_t j = 0; j < kw; ++j) {
                int64_t ih = oh * stride - pad + i, iw = ow * stride - pad + j;
                if (ih < 0 || ih >= H || iw < 0 || iw >= W) continue;
                int64_t ci = (o / Og) * Cg + c;
                acc += v[0][((n * C + ci) * H + ih) * W + iw] * v[1][((o * Cg + c) * kh + i) * kw + j];
              }
          out[((n * O + o) * Ho + oh) * Wo + ow] = acc;
        }
  return out;
}

OpRow conv_row(Shape xs, Shape ws, bool bias, int64_t stride, int64_t pad, int64_t groups) {
  OpRow r;
  r.name = "conv2d x" + shape_str(xs) + " w" + shape_str(ws) + (bias ? " bias" : " no bias") + " stride " +
           std::to_string(stride) + " pad " + std::to_string(pad) + " groups " + std::to_string(groups);
  r.shapes = {xs, ws};
  if (bias) r.shapes.push_back({ws[0]});
  r.fn = [=](const Tensors& x) { return conv2d(x[0], x[1], bias ? x[2] : Tensor(), stride, pad, groups); };
  r.reference = [=](const Vals& v, const Shapes& s) { return ref_conv(v, s, stride, pad, groups); };
  r.f32_rtol = 1e-4;
  return r;
}

// Gradients of <u, conv2d(x, w)> (inputs x, w, u) by scattering every tap: d/dx (want_x) or d/dw.
std::vector<double> ref_conv_grad(const Vals& v, const Shapes& s, int64_t stride, int64_t pad, int64_t groups,
                                  bool want_x) {
  int64_t N = s[0][0], C = s[0][1], H = s[0][2], W = s[0][3];
  int64_t O = s[1][0], Cg = s[1][1], kh = s[1][2], kw = s[1][3];
  int64_t Ho = (H + 2 * pad - kh) / stride + 1, Wo = (W + 2 * pad - kw) / stride + 1, Og = O / groups;
  std::vector<double> out(want_x ? v[0].size() : v[1].size(), 0.0);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t o = 0; o < O; ++o)
      for (int64_t oh = 0; oh < Ho; ++oh)
        for (int64_t ow = 0; ow < Wo; ++ow)
          for (int64_t c = 0; c < Cg; ++c)
            for (int64_t i = 0; i < kh; ++i)
              for (int64_t j = 0; j < kw; ++j) {
                int64_t ih = oh * stride - pad + i, iw = ow * stride - pad + j;
                if (ih < 0 || ih >= H || iw < 0 || iw >= W) continue;
                int64_t xi = ((n * C + (o / Og) * Cg + c) * H + ih) * W + iw, wi = ((o * Cg + c) * kh + i) * kw + j;
                double u = v[2][((n * O + o) * Ho + oh) * Wo + ow];
                if (want_x) out[xi] += u * v[1][wi];
                else out[wi] += u * v[0][xi];
              }
  return out;
}

// The gradient of conv2d as a function of (x, w, u): its derivative checks exercise the rules of
// conv2d_input_grad / conv2d_weight_grad, i.e. conv2d's double backward and third order.
OpRow conv_grad_row(Shape xs, Shape ws, int64_t stride, int64_t pad, int64_t groups, bool want_x) {
  OpRow r;
  r.name = std::string("conv2d double backward: d/d") + (want_x ? "x" : "w") + " <u, conv2d(x" + shape_str(xs) +
           ", w" + shape_str(ws) + ")> stride " + std::to_string(stride) + " pad " + std::to_string(pad) +
           " groups " + std::to_string(groups);
  int64_t Ho = (xs[2] + 2 * pad - ws[2]) / stride + 1, Wo = (xs[3] + 2 * pad - ws[3]) / stride + 1;
  r.shapes = {xs, ws, {xs[0], ws[0], Ho, Wo}};
  r.fn = [=](const Tensors& x) {
    auto pulled = vjp([=](const Tensors& in) { return Tensors{conv2d(in[0], in[1], Tensor(), stride, pad, groups)}; },
                      {x[0], x[1]}, true);
    return pulled.second({x[2]})[want_x ? 0 : 1];
  };
  r.reference = [=](const Vals& v, const Shapes& s) { return ref_conv_grad(v, s, stride, pad, groups, want_x); };
  r.f32_rtol = 1e-4;
  return r;
}

std::vector<OpRow> conv_rows() {
  std::vector<OpRow> r = {
      conv_row({2, 4, 5, 5}, {3, 4, 3, 3}, true, 1, 1, 1),
      conv_row({2, 4, 5, 5}, {3, 4, 3, 3}, false, 1, 1, 1),
      conv_row({2, 3, 5, 5}, {4, 3, 3, 3}, false, 2, 0, 1),
      conv_row({2, 3, 5, 5}, {4, 3, 3, 3}, true, 2, 0, 1),
      conv_row({2, 4, 5, 5}, {6, 2, 3, 3}, true, 1, 1, 2),
      conv_row({2, 4, 5, 5}, {4, 1, 3, 3}, false, 1, 1, 4),  // depthwise
      conv_row({2, 4, 5, 5}, {3, 4, 1, 1}, true, 1, 0, 1),   // pointwise: no im2col
      conv_row({2, 4, 5, 5}, {3, 4, 1, 1}, false, 2, 0, 1),
      conv_row({2, 2, 6, 5}, {3, 2, 2, 3}, true, 2, 1, 1),   // kh != kw, H != W, uneven stride cover
      conv_row({2, 2, 16, 17}, {2, 2, 3, 3}, true, 1, 1, 1),  // 256+ positions: one GEMM per image
      conv_row({2, 3, 16, 16}, {2, 3, 1, 1}, true, 1, 0, 1),  // ... reading x in place
      conv_grad_row({2, 3, 16, 16}, {2, 3, 1, 1}, 1, 0, 1, true),
      conv_grad_row({2, 2, 16, 17}, {2, 2, 3, 3}, 1, 1, 1, false),
      conv_grad_row({2, 4, 5, 5}, {6, 2, 3, 3}, 1, 1, 2, true),
      conv_grad_row({2, 4, 5, 5}, {6, 2, 3, 3}, 1, 1, 2, false),
      conv_grad_row({2, 2, 6, 5}, {3, 2, 2, 3}, 2, 1, 1, true),
      conv_grad_row({2, 2, 6, 5}, {3, 2, 2, 3}, 2, 1, 1, false),
      conv_grad_row({2, 4, 3, 3}, {3, 4, 1, 1}, 1, 0, 1, true),
      conv_grad_row({2, 4, 3, 3}, {3, 4, 1, 1}, 1, 0, 1, false),
  };
  {
    // A permuted (non-contiguous) input must be read by logical index.
    OpRow t = conv_row({2, 5, 5, 3}, {3, 3, 3, 3}, true, 1, 1, 1);
    t.name = "conv2d permute(x [2, 5, 5, 3]) w[3, 3, 3, 3] bias stride 1 pad 1";
    t.fn = [](const Tensors& x) { return conv2d(permute(x[0], {0, 3, 1, 2}), x[1], x[2], 1, 1); };
    t.reference = [](const Vals& v, const Shapes& s) {
      Vals p = v;
      for (int n = 0; n < 2; ++n)
        for (int c = 0; c < 3; ++c)
          for (int h = 0; h < 5; ++h)
            for (int w = 0; w < 5; ++w) p[0][((n * 3 + c) * 5 + h) * 5 + w] = v[0][((n * 5 + h) * 5 + w) * 3 + c];
      return ref_conv(p, {{2, 3, 5, 5}, s[1], s[2]}, 1, 1, 1);
    };
    r.push_back(t);
  }
  return r;
}

RegisterRows reg_conv(conv_rows());

// ---- normalisation ------------------------------------------------------------------------------

// x (N, C, S...) normalised over each (n, group of C/G channels, all positions); weight and bias
// (when present) are inputs 1 and 2.
std::vector<double> ref_group_norm(const Vals& v, const Shapes& s, int64_t G, bool affine, double eps) {
  int64_t N = s[0][0], C = s[0][1], S = (int64_t)v[0].size() / (N * C), Cg = C / G;
  std::vector<double> out(v[0].size());
  for (int64_t n = 0; n < N; ++n)
    for (int64_t g = 0; g < G; ++g) {
      double mu = 0, var = 0;
      for (int64_t c = g * Cg; c < (g + 1) * Cg; ++c)
        for (int64_t p = 0; p < S; ++p) mu += v[0][(n * C + c) * S + p];
      mu /= double(Cg * S);
      for (int64_t c = g * Cg; c < (g + 1) * Cg; ++c)
        for (int64_t p = 0; p < S; ++p) var += std::pow(v[0][(n * C + c) * S + p] - mu, 2);
      var /= double(Cg * S);
      for (int64_t c = g * Cg; c < (g + 1) * Cg; ++c)
        for (int64_t p = 0; p < S; ++p) {
          double y = (v[0][(n * C + c) * S + p] - mu) / std::sqrt(var + eps);
          if (affine) y = y * v[1][c] + v[2][c];
          out[(n * C + c) * S + p] = y;
        }
    }
  return out;
}

OpRow group_norm_row(Shape xs, int64_t G, bool affine) {
  OpRow r;
  r.name = "group_norm " + shape_str(xs) + " groups " + std::to_string(G) + (affine ? " affine" : " plain");
  r.shapes = {xs};
  if (affine) r.shapes.insert(r.shapes.end(), {{xs[1]}, {xs[1]}});
  r.fn = [G, affine](const Tensors& x) {
    return affine ? group_norm(x[0], G, x[1], x[2], 1e-5) : group_norm(x[0], G, Tensor(), Tensor(), 1e-5);
  };
  r.reference = [G, affine](const Vals& v, const Shapes& s) { return ref_group_norm(v, s, G, affine, 1e-5); };
  r.f32_rtol = 1e-4;
  return r;
}

OpRow pixel_norm_row(Shape xs, int64_t axis) {
  OpRow r;
  r.name = "pixel_norm " + shape_str(xs) + " axis " + std::to_string(axis);
  r.shapes = {xs};
  r.fn = [axis](const Tensors& x) { return pixel_norm(x[0], axis, 1e-8); };
  int64_t a = axis < 0 ? axis + (int64_t)xs.size() : axis;
  r.reference = [a](const Vals& v, const Shapes& s) {
    int64_t O = 1, R = s[0][a], I = 1;
    for (int64_t d = 0; d < a; ++d) O *= s[0][d];
    for (int64_t d = a + 1; d < (int64_t)s[0].size(); ++d) I *= s[0][d];
    std::vector<double> out(v[0].size());
    for (int64_t o = 0; o < O; ++o)
      for (int64_t i = 0; i < I; ++i) {
        double ms = 0;
        for (int64_t k = 0; k < R; ++k) ms += std::pow(v[0][(o * R + k) * I + i], 2) / double(R);
        for (int64_t k = 0; k < R; ++k) out[(o * R + k) * I + i] = v[0][(o * R + k) * I + i] / std::sqrt(ms + 1e-8);
      }
    return out;
  };
  r.f32_rtol = 1e-4;
  return r;
}

// ---- resampling ---------------------------------------------------------------------------------

OpRow upsample_row(Shape xs, int64_t f) {
  OpRow r;
  r.name = "upsample_nearest2d " + shape_str(xs) + " factor " + std::to_string(f);
  r.shapes = {xs};
  r.fn = [f](const Tensors& x) { return upsample_nearest2d(x[0], f); };
  r.reference = [f](const Vals& v, const Shapes& s) {
    int64_t P = s[0][0] * s[0][1], H = s[0][2], W = s[0][3];
    std::vector<double> out(P * H * f * W * f);
    for (int64_t p = 0; p < P; ++p)
      for (int64_t i = 0; i < H * f; ++i)
        for (int64_t j = 0; j < W * f; ++j) out[(p * H * f + i) * W * f + j] = v[0][(p * H + i / f) * W + j / f];
    return out;
  };
  return r;
}

OpRow avg_pool_row(Shape xs, int64_t k, int64_t stride) {
  OpRow r;
  r.name = "avg_pool2d " + shape_str(xs) + " kernel " + std::to_string(k) + " stride " + std::to_string(stride);
  r.shapes = {xs};
  r.fn = [k, stride](const Tensors& x) { return avg_pool2d(x[0], k, stride); };
  r.reference = [k, stride](const Vals& v, const Shapes& s) {
    int64_t P = s[0][0] * s[0][1], H = s[0][2], W = s[0][3];
    int64_t st = stride < 0 ? k : stride, Ho = (H - k) / st + 1, Wo = (W - k) / st + 1;
    std::vector<double> out(P * Ho * Wo);
    for (int64_t p = 0; p < P; ++p)
      for (int64_t oh = 0; oh < Ho; ++oh)
        for (int64_t ow = 0; ow < Wo; ++ow) {
          double acc = 0;
          for (int64_t i = 0; i < k; ++i)
            for (int64_t j = 0; j < k; ++j) acc += v[0][(p * H + oh * st + i) * W + ow * st + j];
          out[(p * Ho + oh) * Wo + ow] = acc / double(k * k);
        }
    return out;
  };
  return r;
}

// The adjoint of a linear resampling op as a function of (x, u): pulls u back through op at x. Its
// checks exercise the rules of the adjoint op (sum_pool2d, avg_pool2d_backward), i.e. double backward.
OpRow adjoint_row(std::string name, Shape xs, Shape us, std::function<Tensor(const Tensor&)> op,
                  Reference reference) {
  OpRow r;
  r.name = name + " adjoint: x" + shape_str(xs) + " u" + shape_str(us);
  r.shapes = {xs, us};
  r.fn = [op](const Tensors& x) {
    return vjp([op](const Tensors& in) { return Tensors{op(in[0])}; }, {x[0]}, true).second({x[1]})[0];
  };
  r.reference = std::move(reference);
  return r;
}

std::vector<OpRow> resample_adjoint_rows() {
  std::vector<OpRow> r;
  r.push_back(adjoint_row("upsample_nearest2d factor 2", {2, 3, 2, 3}, {2, 3, 4, 6},
                          [](const Tensor& x) { return upsample_nearest2d(x, 2); },
                          [](const Vals& v, const Shapes& s) {
                            std::vector<double> out(v[0].size(), 0.0);
                            for (int64_t p = 0; p < 6; ++p)
                              for (int64_t i = 0; i < 4; ++i)
                                for (int64_t j = 0; j < 6; ++j)
                                  out[(p * 2 + i / 2) * 3 + j / 2] += v[1][(p * 4 + i) * 6 + j];
                            return out;
                          }));
  r.push_back(adjoint_row("avg_pool2d kernel 3 stride 2", {2, 2, 5, 6}, {2, 2, 2, 2},
                          [](const Tensor& x) { return avg_pool2d(x, 3, 2); },
                          [](const Vals& v, const Shapes& s) {
                            std::vector<double> out(v[0].size(), 0.0);
                            for (int64_t p = 0; p < 4; ++p)
                              for (int64_t oh = 0; oh < 2; ++oh)
                                for (int64_t ow = 0; ow < 2; ++ow)
                                  for (int64_t i = 0; i < 3; ++i)
                                    for (int64_t j = 0; j < 3; ++j)
                                      out[(p * 5 + oh * 2 + i) * 6 + ow * 2 + j] += v[1][(p * 2 + oh) * 2 + ow] / 9;
                            return out;
                          }));
  return r;
}

RegisterRows reg_resample_adjoints(resample_adjoint_rows());

// ---- dropout, embedding, attention ----------------------------------------------------------------

OpRow dropout_row(Shape xs, double p, uint64_t seed, uint64_t offset) {
  OpRow r;
  r.name = "dropout " + shape_str(xs) + " p " + std::to_string(p);
  r.shapes = {xs};
  r.fn = [=](const Tensors& x) { return dropout(x[0], p, seed, offset); };
  r.reference = [=](const Vals& v, const Shapes&) {
    std::vector<double> out(v[0].size());
    for (size_t i = 0; i < out.size(); ++i)
      out[i] = philox_uniform(seed, offset + i) < p ? 0.0 : v[0][i] / (1 - p);
    return out;
  };
  return r;
}

// q (B, H, N, D), k (B, H, M, D), v (B, H, M, Dv): softmax over the M keys of each query.
std::vector<double> ref_attention(const Vals& in, const Shapes& s, double scale) {
  int64_t BH = s[0][0] * s[0][1], N = s[0][2], D = s[0][3], M = s[1][2], Dv = s[2][3];
  if (scale <= 0) scale = 1 / std::sqrt(double(D));
  std::vector<double> out(BH * N * Dv, 0.0);
  for (int64_t b = 0; b < BH; ++b)
    for (int64_t i = 0; i < N; ++i) {
      std::vector<double> w(M);
      double z = 0;
      for (int64_t j = 0; j < M; ++j) {
        double dot = 0;
        for (int64_t d = 0; d < D; ++d) dot += in[0][(b * N + i) * D + d] * in[1][(b * M + j) * D + d];
        z += (w[j] = std::exp(dot * scale));
      }
      for (int64_t j = 0; j < M; ++j)
        for (int64_t e = 0; e < Dv; ++e) out[(b * N + i) * Dv + e] += w[j] / z * in[2][(b * M + j) * Dv + e];
    }
  return out;
}

OpRow attention_row(Shape qs, int64_t M, int64_t Dv, double scale, bool reference_op) {
  OpRow r;
  r.name = std::string(reference_op ? "attention_reference " : "attention ") + "q" + shape_str(qs) + " M " +
           std::to_string(M) + " Dv " + std::to_string(Dv) + " scale " + std::to_string(scale);
  r.shapes = {qs, {qs[0], qs[1], M, qs[3]}, {qs[0], qs[1], M, Dv}};
  r.fn = [=](const Tensors& x) {
    return reference_op ? attention_reference(x[0], x[1], x[2], scale) : attention(x[0], x[1], x[2], scale);
  };
  r.reference = [=](const Vals& v, const Shapes& s) { return ref_attention(v, s, scale); };
  r.f32_rtol = 1e-4;
  return r;
}

std::vector<OpRow> image_rows() {
  std::vector<OpRow> r = {
      group_norm_row({2, 4, 3, 3}, 2, true),  group_norm_row({2, 4, 3, 3}, 2, false),
      group_norm_row({2, 4, 3, 3}, 1, true),  group_norm_row({2, 4, 3, 3}, 1, false),
      group_norm_row({2, 6, 4}, 3, true),     pixel_norm_row({2, 4, 3, 3}, 1),
      pixel_norm_row({3, 5}, -1),             upsample_row({2, 3, 3, 4}, 2),
      upsample_row({1, 2, 2, 3}, 3),          avg_pool_row({2, 3, 4, 6}, 2, -1),
      avg_pool_row({2, 2, 5, 5}, 2, -1),      avg_pool_row({2, 2, 5, 6}, 3, 2),
      avg_pool_row({1, 2, 4, 5}, 2, 1),       dropout_row({2, 4, 5, 5}, 0.3, 7, 11),
      dropout_row({3, 7}, 0.5, 123456789012345ull, 1ull << 40),
      attention_row({2, 2, 3, 4}, 5, 6, -1, false), attention_row({2, 2, 3, 4}, 5, 6, 0.7, true),
      attention_row({1, 3, 4, 2}, 4, 3, -1, true),
  };
  {
    static const std::vector<int64_t> ids = {1, 4, 0, 1};
    OpRow e;
    e.name = "embedding [5, 3] ids {1, 4, 0, 1}";
    e.shapes = {{5, 3}};
    e.fn = [](const Tensors& x) { return embedding(x[0], ids); };
    e.reference = [](const Vals& v, const Shapes&) {
      std::vector<double> out;
      for (int64_t id : ids)
        for (int d = 0; d < 3; ++d) out.push_back(v[0][id * 3 + d]);
      return out;
    };
    r.push_back(e);
  }
  return r;
}

RegisterRows reg_image(image_rows());

}  // namespace

TEST_CASE("conv2d: error messages name the op and both shapes") {
  Tensor x = zeros({2, 4, 5, 5}), w = zeros({3, 5, 3, 3});
  std::string m = message_of([&] { conv2d(x, w); });
  CHECK(m.find("conv2d") != std::string::npos);
  CHECK(m.find(shape_str({2, 4, 5, 5})) != std::string::npos);
  CHECK(m.find(shape_str({3, 5, 3, 3})) != std::string::npos);
  m = message_of([&] { conv2d(zeros({4, 5, 5}), zeros({3, 4, 3, 3})); });
  CHECK(m.find("conv2d") != std::string::npos);
  CHECK(m.find(shape_str({4, 5, 5})) != std::string::npos);
  CHECK(m.find(shape_str({3, 4, 3, 3})) != std::string::npos);
  m = message_of([&] { conv2d(zeros({1, 4, 2, 2}), zeros({3, 4, 3, 3})); });
  CHECK(m.find("conv2d") != std::string::npos);
  CHECK(m.find(shape_str({1, 4, 2, 2})) != std::string::npos);
  CHECK(m.find(shape_str({3, 4, 3, 3})) != std::string::npos);
  m = message_of([&] { conv2d(zeros({1, 4, 5, 5}), zeros({3, 4, 3, 3}), zeros({4})); });
  CHECK(m.find("conv2d") != std::string::npos);
  CHECK(m.find("bias") != std::string::npos);
  m = message_of([&] { conv2d(zeros({1, 4, 5, 5}), zeros({3, 2, 3, 3}), Tensor(), 1, 0, 2); });
  CHECK(m.find("groups") != std::string::npos);
  CHECK(m.find(shape_str({3, 2, 3, 3})) != std::string::npos);
}

TEST_CASE("conv2d: output size and the weight gradient of a larger f32 case") {
  // (H + 2p - k) / s + 1 with a remainder: the last input rows are never read and get zero gradient.
  Tensor x = randn({1, 2, 8, 7}, 1, DType::F64), w = randn({3, 2, 3, 3}, 2, DType::F64);
  x.requires_grad_();
  Tensor y = conv2d(x, w, Tensor(), 2, 0);
  CHECK(y.shape() == Shape{1, 3, 3, 3});
  sum(y).backward();
  auto g = x.grad().to_vector();
  for (int c = 0; c < 2; ++c)
    for (int w_ = 0; w_ < 7; ++w_) CHECK(g[(c * 8 + 7) * 7 + w_] == 0.0);
  // f32 weight gradient of a mid-sized conv against an f64 one.
  Tensor xa = randn({3, 8, 9, 9}, 3, DType::F64), wa = randn({16, 8, 3, 3}, 4, DType::F64);
  Tensors g64 = grad_of([](const Tensors& in) { return sum(square(conv2d(in[0], in[1], Tensor(), 1, 1))); }, {xa, wa});
  Tensors g32 = grad_of([](const Tensors& in) { return sum(square(conv2d(in[0], in[1], Tensor(), 1, 1))); },
                        {cast(xa, DType::F32), cast(wa, DType::F32)});
  CHECK(mismatch(g32[1].to_vector(), g64[1].to_vector(), 1e-3, 1e-2) <= 1);
  CHECK(mismatch(g32[0].to_vector(), g64[0].to_vector(), 1e-3, 1e-2) <= 1);
}

TEST_CASE("dropout: the mask is a function of (seed, offset), shared by JVP and gradient passes") {
  Tensor x = randn({4000}, 21, DType::F64), t = randn({4000}, 22, DType::F64), u = randn({4000}, 23, DType::F64);
  auto y1 = dropout(x, 0.3, 5, 9).to_vector(), y2 = dropout(x, 0.3, 5, 9).to_vector();
  CHECK(y1 == y2);
  auto xv = x.to_vector(), tv = t.to_vector(), uv = u.to_vector();
  int64_t dropped = 0;
  for (double v : y1) dropped += v == 0.0;
  CHECK(dropped > 1000);  // about 0.3 * 4000 = 1200; a wrong comparison direction gives about 2800
  CHECK(dropped < 1400);
  // Forward mode: the tangent goes through the same mask.
  auto [outs, tans] = jvp([](const Tensors& in) { return Tensors{dropout(in[0], 0.3, 5, 9)}; }, {x}, {t});
  auto tan = tans[0].to_vector();
  // Reverse mode: the gradient of <u, dropout(x)> is u through the same mask.
  Tensor xg = x.detach();
  xg.requires_grad_();
  sum(mul(dropout(xg, 0.3, 5, 9), u)).backward();
  auto g = xg.grad().to_vector();
  bool same = true;
  for (size_t i = 0; i < y1.size(); ++i) {
    bool kept = y1[i] != 0.0;
    same = same && (kept ? std::abs(tan[i] - tv[i] / 0.7) < 1e-12 && std::abs(g[i] - uv[i] / 0.7) < 1e-12
                         : tan[i] == 0.0 && g[i] == 0.0);
  }
  CHECK(same);
  // A different offset gives a different mask; training = false and p = 0 return the input.
  CHECK(dropout(x, 0.3, 5, 10).to_vector() != y1);
  CHECK(dropout(x, 0.3, 5, 9, false).to_vector() == xv);
  CHECK(dropout(x, 0.0, 5, 9).to_vector() == xv);
  // The f32 mask equals the f64 one.
  auto y32 = dropout(cast(x, DType::F32), 0.3, 5, 9).to_vector();
  bool same32 = true;
  for (size_t i = 0; i < y1.size(); ++i) same32 = same32 && ((y32[i] == 0.0) == (y1[i] == 0.0));
  CHECK(same32);
}

TEST_CASE("attention: reference against a hand loop, the thin wrapper, and shape errors") {
  Tensor q = randn({1, 2, 3, 4}, 31, DType::F64), k = randn({1, 2, 6, 4}, 32, DType::F64),
         v = randn({1, 2, 6, 5}, 33, DType::F64);
  auto want = ref_attention({q.to_vector(), k.to_vector(), v.to_vector()}, {q.shape(), k.shape(), v.shape()}, -1);
  Tensor y = attention_reference(q, k, v);
  CHECK(y.shape() == Shape{1, 2, 3, 5});
  CHECK(mismatch(y.to_vector(), want, 1e-12, 1e-12) <= 1);
  CHECK(attention(q, k, v).to_vector() == y.to_vector());
  std::string m = message_of([&] { attention(q, randn({1, 2, 6, 3}, 1, DType::F64), v); });
  CHECK(m.find("attention") != std::string::npos);
  CHECK(m.find(shape_str({1, 2, 3, 4})) != std::string::npos);
  CHECK(m.find(shape_str({1, 2, 6, 3})) != std::string::npos);
  m = message_of([&] { attention(q, k, randn({1, 2, 5, 5}, 1, DType::F64)); });
  CHECK(m.find("attention") != std::string::npos);
  CHECK(m.find(shape_str({1, 2, 5, 5})) != std::string::npos);
  m = message_of([&] { attention_reference(randn({2, 3, 4}, 1, DType::F64), k, v); });
  CHECK(m.find("attention_reference") != std::string::npos);
}

TEST_CASE("group_norm, pooling, embedding: errors name the op; pooling adjoints") {
  CHECK(message_of([] { group_norm(zeros({2, 6, 3, 3}), 4); }).find("group_norm") != std::string::npos);
  CHECK(message_of([] { group_norm(zeros({2, 6, 3, 3}), 2, zeros({4})); }).find(shape_str({4})) != std::string::npos);
  CHECK(message_of([] { avg_pool2d(zeros({2, 6, 3}), 2); }).find("avg_pool2d") != std::string::npos);
  CHECK(message_of([] { upsample_nearest2d(zeros({2, 6}), 2); }).find("upsample_nearest2d") != std::string::npos);
  CHECK(message_of([] { embedding(zeros({4, 3}), {0, 4}); }).find("embedding") != std::string::npos);
  // The gradient of upsample is a block sum; of a 2x2 average pool it is a quarter of g per tap.
  Tensor x = randn({1, 1, 2, 2}, 41, DType::F64);
  x.requires_grad_();
  Tensor g = from_vector({1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}, {1, 1, 4, 4}, DType::F64);
  upsample_nearest2d(x, 2).backward(g);
  CHECK(x.grad().to_vector() == std::vector<double>{1 + 2 + 5 + 6, 3 + 4 + 7 + 8, 9 + 10 + 13 + 14, 11 + 12 + 15 + 16});
  Tensor z = randn({1, 1, 4, 4}, 42, DType::F64);
  z.requires_grad_();
  avg_pool2d(z, 2).backward(from_vector({4, 8, 12, 16}, {1, 1, 2, 2}, DType::F64));
  CHECK(z.grad().to_vector() == std::vector<double>{1, 1, 2, 2, 1, 1, 2, 2, 3, 3, 4, 4, 3, 3, 4, 4});
}

TEST_CASE("conv2d: images batched into one GEMM, with a remainder chunk, match the reference loops") {
  // 64 * 9 * 225 column values per image: 16 images per GEMM, so 20 images run as 16 + 4.
  Tensor x = randn({20, 64, 15, 15}, 51, DType::F64), w = randn({8, 64, 3, 3}, 52, DType::F64),
         u = randn({20, 8, 15, 15}, 53, DType::F64);
  Vals v = {x.to_vector(), w.to_vector(), u.to_vector()};
  Shapes s = {x.shape(), w.shape(), u.shape()};
  CHECK(mismatch(conv2d(x, w, Tensor(), 1, 1).to_vector(), ref_conv({v[0], v[1]}, s, 1, 1, 1), 1e-12, 1e-12) <= 1);
  auto pulled = vjp([](const Tensors& in) { return Tensors{conv2d(in[0], in[1], Tensor(), 1, 1)}; }, {x, w});
  Tensors g = pulled.second({u});
  CHECK(mismatch(g[0].to_vector(), ref_conv_grad(v, s, 1, 1, 1, true), 1e-12, 1e-12) <= 1);
  CHECK(mismatch(g[1].to_vector(), ref_conv_grad(v, s, 1, 1, 1, false), 1e-12, 1e-12) <= 1);
}

TEST_CASE("conv2d and group_norm: JVP with some tangents absent equals JVP with zero tangents") {
  // The rules skip absent tangents and fold the bias tangent into a convolution; every subset must
  // agree with the full rule fed explicit zeros.
  using F = std::function<Tensor(const Tensors&)>;
  std::vector<std::pair<F, Shapes>> cases = {
      {[](const Tensors& x) { return conv2d(x[0], x[1], x[2], 2, 1); }, {{2, 4, 5, 5}, {3, 4, 3, 3}, {3}}},
      {[](const Tensors& x) { return group_norm(x[0], 2, x[1], x[2]); }, {{2, 4, 3, 3}, {4}, {4}}},
  };
  for (auto& [f, shapes] : cases) {
    Tensors x, t;
    for (size_t i = 0; i < shapes.size(); ++i) {
      x.push_back(randn(shapes[i], 60 + i, DType::F64));
      t.push_back(randn(shapes[i], 70 + i, DType::F64));
    }
    for (int mask = 1; mask < 8; ++mask) {
      Tensors partial(3), zeroed(3);
      for (int i = 0; i < 3; ++i) {
        partial[i] = (mask >> i) & 1 ? t[i] : Tensor();
        zeroed[i] = (mask >> i) & 1 ? t[i] : zeros_like(t[i]);
      }
      auto run = [&](const Tensors& tan) {
        DualLevel lvl;
        Tensors d(3);
        for (int i = 0; i < 3; ++i) d[i] = tan[i].defined() ? make_dual(x[i], tan[i]) : x[i];
        Tensor ty = unpack_dual(f(d)).second;
        return ty.defined() ? ty.to_vector() : std::vector<double>();
      };
      CAPTURE(mask);
      CHECK(mismatch(run(partial), run(zeroed), 1e-12, 1e-12) <= 1);
    }
  }
}
