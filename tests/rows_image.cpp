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
