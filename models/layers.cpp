// Reusable image-model layers: construction (deterministic init from a Generator) and forward passes.
#include "models/layers.h"

#include <cmath>

#include "ops/ops.h"

namespace df {

namespace {

// U(-bound, bound), drawn in f64 then cast, as Linear does, so init is the same across dtypes.
Tensor uniform_init(const Shape& s, double bound, Generator& g, DType dtype) {
  NoGrad ng;
  Tensor u = g.rand(s, DType::F64);
  return cast(add(mul(u, 2 * bound), -bound), dtype);
}

// qkv (B, N, 3C) -> attention over `heads` heads -> (B, N, C).
Tensor attend_heads(const Tensor& qkv, int64_t heads) {
  int64_t B = qkv.size(0), N = qkv.size(1), C = qkv.size(2) / 3, D = C / heads;
  Tensor t = permute(reshape(qkv, {B, N, 3, heads, D}), {2, 0, 3, 1, 4});  // (3, B, H, N, D)
  Tensors p = chunk(t, 3, 0);   // one op: its VJP is one cat, not three zero-filled scatters summed
  Tensor q = squeeze(p[0], 0), k = squeeze(p[1], 0), v = squeeze(p[2], 0);
  Tensor o = attention(q, k, v);                                           // (B, H, N, D)
  return reshape(permute(o, {0, 2, 1, 3}), {B, N, C});
}

}  // namespace

Conv2d::Conv2d(int64_t in, int64_t out, int64_t kernel_, int64_t stride_, int64_t padding_, bool has_bias,
               Generator& g, DType dtype, double init_scale, int64_t groups_)
    : in_channels(in), out_channels(out), kernel(kernel_), stride(stride_), padding(padding_), groups(groups_) {
  DF_CHECK(in > 0 && out > 0 && kernel > 0 && stride > 0 && padding >= 0 && groups > 0 && in % groups == 0 &&
               out % groups == 0,
           "Conv2d: bad sizes in=", in, " out=", out, " kernel=", kernel, " stride=", stride,
           " padding=", padding, " groups=", groups);
  double bound = init_scale / std::sqrt(double(in / groups * kernel * kernel));
  weight = register_parameter("weight", uniform_init({out, in / groups, kernel, kernel}, bound, g, dtype));
  if (has_bias) bias = register_parameter("bias", uniform_init({out}, bound, g, dtype));
}

Tensor Conv2d::forward(const Tensor& x) const {
  DF_CHECK(x.dim() == 4 && x.size(1) == in_channels, "Conv2d: expected input (N, ", in_channels,
           ", H, W), got ", x.desc());
  return conv2d(x, weight, bias, stride, padding, groups);
}

GroupNorm::GroupNorm(int64_t groups_, int64_t channels_, bool affine, double eps_, DType dtype)
    : groups(groups_), channels(channels_), eps(eps_) {
  DF_CHECK(groups > 0 && channels > 0 && channels % groups == 0, "GroupNorm: ", channels,
           " channels cannot be split into ", groups, " groups");
  if (affine) {
    weight = register_parameter("weight", ones({channels}, dtype));
    bias = register_parameter("bias", zeros({channels}, dtype));
  }
}

Tensor GroupNorm::forward(const Tensor& x) const {
  DF_CHECK(x.dim() >= 2 && x.size(1) == channels, "GroupNorm: expected input (N, ", channels, ", ...), got ",
           x.desc());
  return group_norm(x, groups, weight, bias, eps);
}

LayerNorm::LayerNorm(int64_t dim_, bool affine, double eps_, DType dtype) : dim(dim_), eps(eps_) {
  DF_CHECK(dim > 0, "LayerNorm: expected a positive dim, got ", dim);
  if (affine) {
    weight = register_parameter("weight", ones({dim}, dtype));
    bias = register_parameter("bias", zeros({dim}, dtype));
  }
}

Tensor LayerNorm::forward(const Tensor& x) const {
  DF_CHECK(x.dim() >= 1 && x.size(-1) == dim, "LayerNorm: expected input (..., ", dim, "), got ", x.desc());
  return layer_norm(x, 1, weight, bias, eps);
}

std::shared_ptr<Linear> make_linear(int64_t in, int64_t out, bool bias, Generator& g, DType dtype, double scale) {
  auto l = std::make_shared<Linear>(in, out, bias, g, dtype);
  if (scale != 1.0) {
    NoGrad ng;
    assign_(l->weight, mul(l->weight, scale));
    if (bias) assign_(l->bias, mul(l->bias, scale));
  }
  return l;
}

TimeEmbedding::TimeEmbedding(int64_t freq_dim_, int64_t hidden, int64_t out, Generator& g, DType dtype,
                             double max_period_)
    : freq_dim(freq_dim_), max_period(max_period_) {
  DF_CHECK(freq_dim >= 2 && freq_dim % 2 == 0, "TimeEmbedding: freq_dim must be even and >= 2, got ", freq_dim);
  fc1 = register_module("fc1", std::make_shared<Linear>(freq_dim, hidden, true, g, dtype));
  fc2 = register_module("fc2", std::make_shared<Linear>(hidden, out, true, g, dtype));
}

Tensor TimeEmbedding::forward(const Tensor& c_noise) const {
  DF_CHECK(c_noise.dim() == 1, "TimeEmbedding: expected c_noise (B), got ", c_noise.desc());
  DType dt = fc1->weight.dtype();
  Tensor c = c_noise.dtype() == dt ? c_noise : cast(c_noise, dt);
  return fc2->forward(silu(fc1->forward(positional_embedding(c, freq_dim, max_period))));
}

MultiHeadAttention::MultiHeadAttention(int64_t channels_, int64_t heads_, bool qkv_bias, Generator& g, DType dtype,
                                       double proj_init_scale)
    : channels(channels_), heads(heads_) {
  DF_CHECK(heads > 0 && channels % heads == 0, "MultiHeadAttention: ", channels,
           " channels cannot be split into ", heads, " heads");
  qkv = register_module("qkv", std::make_shared<Linear>(channels, 3 * channels, qkv_bias, g, dtype));
  proj = register_module("proj", make_linear(channels, channels, true, g, dtype, proj_init_scale));
}

Tensor MultiHeadAttention::forward(const Tensor& x) const {
  DF_CHECK(x.dim() == 3 && x.size(2) == channels, "MultiHeadAttention: expected x (B, N, ", channels, "), got ",
           x.desc());
  return proj->forward(attend_heads(qkv->forward(x), heads));
}

FeedForward::FeedForward(int64_t channels, int64_t hidden, Generator& g, DType dtype) {
  fc1 = register_module("fc1", std::make_shared<Linear>(channels, hidden, true, g, dtype));
  fc2 = register_module("fc2", std::make_shared<Linear>(hidden, channels, true, g, dtype));
}

Tensor FeedForward::forward(const Tensor& x) const { return fc2->forward(gelu(fc1->forward(x))); }

AttentionBlock2d::AttentionBlock2d(int64_t channels_, int64_t heads_, int64_t norm_groups, Generator& g,
                                   DType dtype, double proj_init_scale, double skip_scale_)
    : channels(channels_), heads(heads_), skip_scale(skip_scale_) {
  DF_CHECK(heads > 0 && channels % heads == 0, "AttentionBlock2d: ", channels,
           " channels cannot be split into ", heads, " heads");
  norm = register_module("norm", std::make_shared<GroupNorm>(norm_groups, channels, true, 1e-5, dtype));
  qkv = register_module("qkv", std::make_shared<Linear>(channels, 3 * channels, true, g, dtype));
  proj = register_module("proj", make_linear(channels, channels, true, g, dtype, proj_init_scale));
}

Tensor AttentionBlock2d::forward(const Tensor& x) const {
  DF_CHECK(x.dim() == 4 && x.size(1) == channels, "AttentionBlock2d: expected x (N, ", channels,
           ", H, W), got ", x.desc());
  int64_t N = x.size(0), C = channels, H = x.size(2), W = x.size(3);
  Tensor tok = transpose(reshape(norm->forward(x), {N, C, H * W}), 1, 2);  // (N, HW, C)
  Tensor h = proj->forward(attend_heads(qkv->forward(tok), heads));
  h = reshape(transpose(h, 1, 2), {N, C, H, W});
  Tensor y = add(x, h);
  return skip_scale == 1.0 ? y : mul(y, skip_scale);
}

Tensor patchify(const Tensor& x, int64_t p) {
  DF_CHECK(x.dim() == 4 && p > 0 && x.size(2) % p == 0 && x.size(3) % p == 0,
           "patchify: expected (N, C, H, W) with H, W divisible by patch ", p, ", got ", x.desc());
  int64_t N = x.size(0), C = x.size(1), h = x.size(2) / p, w = x.size(3) / p;
  Tensor t = permute(reshape(x, {N, C, h, p, w, p}), {0, 2, 4, 1, 3, 5});  // (N, h, w, C, p, p)
  return reshape(t, {N, h * w, C * p * p});
}

Tensor unpatchify(const Tensor& tokens, int64_t p, int64_t channels, int64_t height, int64_t width) {
  int64_t h = height / p, w = width / p;
  DF_CHECK(tokens.dim() == 3 && tokens.size(1) == h * w && tokens.size(2) == channels * p * p,
           "unpatchify: expected (N, ", h * w, ", ", channels * p * p, "), got ", tokens.desc());
  int64_t N = tokens.size(0);
  Tensor t = permute(reshape(tokens, {N, h, w, channels, p, p}), {0, 3, 1, 4, 2, 5});  // (N, C, h, p, w, p)
  return reshape(t, {N, channels, height, width});
}

}  // namespace df
