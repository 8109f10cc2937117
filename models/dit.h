// DiT (Diffusion Transformer) denoiser for images: patch tokens, learned positional embedding,
// adaLN-Zero blocks conditioned on a time embedding of c_noise, final adaLN layer, unpatchify.
#pragma once
#include "models/layers.h"

namespace df {

struct DiTConfig {
  int64_t in_channels = 3;
  int64_t resolution = 32;       // input H = W
  int64_t patch = 2;
  int64_t width = 384;
  int64_t depth = 12;
  int64_t heads = 6;
  double mlp_ratio = 4.0;
  int64_t freq_dim = 256;        // sinusoidal size of the time embedding
  double max_period = 10000;
  bool qkv_bias = true;
  bool zero_init = true;         // zero adaLN modulations and output linear (adaLN-Zero)
};

// x + gate_msa * attn(modulate(LN(x))) then x + gate_mlp * mlp(modulate(LN(x))), modulate(n) =
// n * (1 + scale) + shift, the 6 vectors from Linear(SiLU(c)). Names: attn.{qkv,proj},
// mlp.{fc1,fc2}, adaLN.
class DiTBlock : public Module {
 public:
  DiTBlock(const DiTConfig& cfg, Generator& g, DType dtype);
  Tensor forward(const Tensor& x, const Tensor& c_silu) const;  // x (B, N, W), c_silu (B, W)
  int64_t width;
  std::shared_ptr<MultiHeadAttention> attn;
  std::shared_ptr<FeedForward> mlp;
  std::shared_ptr<Linear> adaLN;
};

// modulate(LN(x)) with (shift, scale) = Linear(SiLU(c)), then Linear to patch pixels. Names: adaLN, linear.
class DiTFinalLayer : public Module {
 public:
  DiTFinalLayer(int64_t width, int64_t out, bool zero_init, Generator& g, DType dtype);
  Tensor forward(const Tensor& x, const Tensor& c_silu) const;
  std::shared_ptr<Linear> adaLN, linear;
};

// Parameter names: patch_embed.{weight,bias} (Linear on (C, p, p)-ordered patches, i.e. a stride-p
// conv weight reshaped), pos_embed (1, N, W) (learned, starting from DiT's 2-D sin-cos table),
// time_embed.{fc1,fc2}, blocks.<i>.*, final.{adaLN,linear}.
class DiT : public ImageDenoiser {
 public:
  DiT(const DiTConfig& cfg, Generator& g, DType dtype = DType::F32);
  Tensor forward(const Tensor& x, const Tensor& c_noise) const override;

  DiTConfig cfg;
  std::shared_ptr<Linear> patch_embed;
  Tensor pos_embed;
  std::shared_ptr<DiTFinalLayer> final_layer;
  std::shared_ptr<TimeEmbedding> time_embed;
  std::vector<std::shared_ptr<DiTBlock>> blocks;
};

}  // namespace df
