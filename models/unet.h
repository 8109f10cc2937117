// DDPM++-style U-Net denoiser for images (N, C, H, W) conditioned on a per-sample noise level c_noise (N),
// with optional sCM adaptive double normalization (ALGORITHMS.md 6.5).
#pragma once
#include <vector>

#include "models/layers.h"

namespace df {

struct UNetConfig {
  int64_t in_channels = 3;
  int64_t resolution = 32;                     // input H = W
  int64_t base_channels = 128;
  std::vector<int64_t> channel_mults = {1, 2, 2};
  int64_t res_blocks = 2;                      // per level on the way down (one more on the way up)
  std::vector<int64_t> attn_resolutions = {16};
  bool mid_attention = true;
  int64_t heads = 4;
  int64_t norm_groups = 32;                    // GroupNorm groups (must divide every channel count)
  double dropout = 0.0;
  int64_t emb_mult = 4;                        // time-MLP width = emb_mult * base_channels
  double max_period = 10000;                   // of the positional embedding (its dim = base_channels)
  bool adaptive_double_norm = false;           // sCM: GN(h) * pnorm(scale) + pnorm(shift) instead of h + emb
  double skip_scale = 0.70710678118654752;     // residual sums are scaled by this (DDPM++: sqrt(1/2))
  bool zero_init = true;                       // zero-init the last conv of each branch and the output conv
};

// Residual block: h = conv1(SiLU(GN(x))); conditioning (h + Linear(emb), or ADN); SiLU(GN(.)); dropout;
// conv2; out = (skip(x) + h) * skip_scale, skip a 1x1 conv when the channel count changes.
// Names: norm1, conv1, emb_proj, norm2, conv2, skip.
class UNetResBlock : public Module {
 public:
  // site: this block's index among the network's dropout layers (keeps their masks independent).
  UNetResBlock(int64_t in, int64_t out, int64_t emb_dim, const UNetConfig& cfg, int64_t site, Generator& g,
               DType dtype);
  // emb is SiLU(time embedding) (N, emb_dim); dropout only when train, its mask from (seed, site).
  Tensor forward(const Tensor& x, const Tensor& emb, bool train, uint64_t seed) const;
  int64_t in_channels, out_channels, site;
  bool adaptive;
  double dropout, skip_scale;
  std::shared_ptr<GroupNorm> norm1, norm2;
  std::shared_ptr<Conv2d> conv1, conv2, skip;
  std::shared_ptr<Linear> emb_proj;
};

// Parameter names: time_embed.{fc1,fc2}, conv_in, down.<l>.res.<i>, down.<l>.attn.<i>,
// down.<l>.downsample, mid.res0, mid.attn, mid.res1, up.<l>.res.<i>, up.<l>.attn.<i>,
// up.<l>.upsample, norm_out, conv_out.
class UNet : public ImageDenoiser {
 public:
  UNet(const UNetConfig& cfg, Generator& g, DType dtype = DType::F32);
  Tensor forward(const Tensor& x, const Tensor& c_noise) const override;

  UNetConfig cfg;
  struct Level {
    std::vector<std::shared_ptr<UNetResBlock>> res;
    std::vector<std::shared_ptr<AttentionBlock2d>> attn;  // empty, or one per res block
    std::shared_ptr<Conv2d> resample;                     // down: stride-2 conv; up: conv after upsample
  };
  std::shared_ptr<TimeEmbedding> time_embed;
  std::shared_ptr<Conv2d> conv_in, conv_out;
  std::vector<Level> down, up;                            // up[l] is level l (run from the last level)
  std::shared_ptr<UNetResBlock> mid_res0, mid_res1;
  std::shared_ptr<AttentionBlock2d> mid_attn;
  std::shared_ptr<GroupNorm> norm_out;
};

}  // namespace df
