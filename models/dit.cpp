// DiT construction and forward pass (adaLN-Zero transformer on patch tokens).
#include "models/dit.h"

#include <cmath>

#include "ops/ops.h"

namespace df {

namespace {

constexpr double kLayerNormEps = 1e-6;

Tensor tokens_of(const Tensor& v) { return unsqueeze(v, 1); }  // (B, W) -> (B, 1, W), broadcast over tokens

// n * (1 + scale) + shift, written so the "1 +" costs no extra tensor.
Tensor modulate(const Tensor& n, const Tensor& shift, const Tensor& scale) {
  return add(add(n, mul(n, tokens_of(scale))), tokens_of(shift));
}

// DiT's fixed 2-D sin-cos table, used here as the starting value of the learned embedding: the first
// half of the channels encode the row, the second half the column, each as [sin(p w_k), cos(p w_k)].
std::vector<double> sincos_2d(int64_t grid, int64_t width) {
  const int64_t quarter = width / 4;
  std::vector<double> out(size_t(grid * grid * width));
  for (int64_t r = 0; r < grid; ++r)
    for (int64_t c = 0; c < grid; ++c) {
      double* e = &out[size_t((r * grid + c) * width)];
      for (int64_t k = 0; k < quarter; ++k) {
        double w = std::pow(10000.0, -double(k) / double(quarter));
        e[k] = std::sin(r * w), e[quarter + k] = std::cos(r * w);
        e[2 * quarter + k] = std::sin(c * w), e[3 * quarter + k] = std::cos(c * w);
      }
    }
  return out;
}

}  // namespace

DiTBlock::DiTBlock(const DiTConfig& cfg, Generator& g, DType dtype) : width(cfg.width) {
  const int64_t hidden = (int64_t)std::llround(cfg.width * cfg.mlp_ratio);
  attn = register_module("attn", std::make_shared<MultiHeadAttention>(cfg.width, cfg.heads, cfg.qkv_bias, g, dtype));
  mlp = register_module("mlp", std::make_shared<FeedForward>(cfg.width, hidden, g, dtype));
  adaLN = register_module("adaLN", make_linear(cfg.width, 6 * cfg.width, true, g, dtype, cfg.zero_init ? 0.0 : 1.0));
}

Tensor DiTBlock::forward(const Tensor& x, const Tensor& c_silu) const {
  Tensors m = chunk(adaLN->forward(c_silu), 6, 1);  // shift, scale, gate for attention, then for the MLP
  Tensor h = modulate(layer_norm(x, 1, Tensor(), Tensor(), kLayerNormEps), m[0], m[1]);
  Tensor y = add(x, mul(tokens_of(m[2]), attn->forward(h)));
  h = modulate(layer_norm(y, 1, Tensor(), Tensor(), kLayerNormEps), m[3], m[4]);
  return add(y, mul(tokens_of(m[5]), mlp->forward(h)));
}

DiTFinalLayer::DiTFinalLayer(int64_t width, int64_t out, bool zero_init, Generator& g, DType dtype) {
  double s = zero_init ? 0.0 : 1.0;
  adaLN = register_module("adaLN", make_linear(width, 2 * width, true, g, dtype, s));
  linear = register_module("linear", make_linear(width, out, true, g, dtype, s));
}

Tensor DiTFinalLayer::forward(const Tensor& x, const Tensor& c_silu) const {
  Tensors m = chunk(adaLN->forward(c_silu), 2, 1);
  return linear->forward(modulate(layer_norm(x, 1, Tensor(), Tensor(), kLayerNormEps), m[0], m[1]));
}

DiT::DiT(const DiTConfig& c, Generator& g, DType dtype) : cfg(c) {
  DF_CHECK(cfg.in_channels > 0 && cfg.patch > 0 && cfg.resolution > 0 && cfg.resolution % cfg.patch == 0,
           "DiT: resolution ", cfg.resolution, " must be a positive multiple of patch ", cfg.patch);
  DF_CHECK(cfg.width > 0 && cfg.depth >= 0 && cfg.heads > 0 && cfg.width % cfg.heads == 0,
           "DiT: width ", cfg.width, " cannot be split into ", cfg.heads, " heads (depth ", cfg.depth, ")");
  DF_CHECK(cfg.mlp_ratio > 0 && cfg.freq_dim >= 2 && cfg.freq_dim % 2 == 0,
           "DiT: expected mlp_ratio > 0 and an even freq_dim >= 2, got ", cfg.mlp_ratio, ", ", cfg.freq_dim);
  in_channels = cfg.in_channels;
  resolution = cfg.resolution;
  const int64_t p = cfg.patch, n_tokens = (cfg.resolution / p) * (cfg.resolution / p);
  const int64_t patch_dim = cfg.in_channels * p * p;
  patch_embed = register_module("patch_embed", std::make_shared<Linear>(patch_dim, cfg.width, true, g, dtype));
  {
    NoGrad ng;
    const int64_t grid = cfg.resolution / p;
    Tensor init = cfg.width % 4 == 0 ? from_vector(sincos_2d(grid, cfg.width), {1, n_tokens, cfg.width}, dtype)
                                     : cast(mul(g.randn({1, n_tokens, cfg.width}, DType::F64), 0.02), dtype);
    pos_embed = register_parameter("pos_embed", init);
  }
  time_embed = register_module(
      "time_embed", std::make_shared<TimeEmbedding>(cfg.freq_dim, cfg.width, cfg.width, g, dtype, cfg.max_period));
  for (int64_t i = 0; i < cfg.depth; ++i)
    blocks.push_back(register_module("blocks." + std::to_string(i), std::make_shared<DiTBlock>(cfg, g, dtype)));
  final_layer = register_module("final", std::make_shared<DiTFinalLayer>(cfg.width, patch_dim, cfg.zero_init, g, dtype));
}

Tensor DiT::forward(const Tensor& x, const Tensor& c_noise) const {
  DF_CHECK(x.dim() == 4 && x.size(1) == cfg.in_channels && x.size(2) == cfg.resolution &&
               x.size(3) == cfg.resolution,
           "DiT: expected x (N, ", cfg.in_channels, ", ", cfg.resolution, ", ", cfg.resolution, "), got ", x.desc());
  DF_CHECK(c_noise.dim() == 1 && c_noise.size(0) == x.size(0), "DiT: expected c_noise (N) with N = ", x.size(0),
           ", got ", c_noise.desc());
  Tensor c = silu(time_embed->forward(c_noise));
  if (c.dtype() != x.dtype()) c = cast(c, x.dtype());
  Tensor h = add(patch_embed->forward(patchify(x, cfg.patch)), pos_embed);
  for (const auto& b : blocks) h = b->forward(h, c);
  h = final_layer->forward(h, c);
  return unpatchify(h, cfg.patch, cfg.in_channels, cfg.resolution, cfg.resolution);
}

}  // namespace df
