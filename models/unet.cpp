// DDPM++-style U-Net: residual blocks with time conditioning, attention at chosen resolutions,
// stride-2 conv down, nearest-upsample + conv up, skip concatenation.
#include "models/unet.h"

#include <algorithm>

#include "ops/ops.h"

namespace df {

namespace {

// Each dropout layer gets its own region of the counter stream, far beyond any one layer's size.
constexpr uint64_t kDropoutSiteStride = uint64_t(1) << 40;

bool has(const std::vector<int64_t>& v, int64_t x) { return std::find(v.begin(), v.end(), x) != v.end(); }

Tensor per_channel(const Tensor& v) { return reshape(v, {v.size(0), v.size(1), 1, 1}); }

}  // namespace

UNetResBlock::UNetResBlock(int64_t in, int64_t out, int64_t emb_dim, const UNetConfig& cfg, int64_t site_,
                           Generator& g, DType dtype)
    : in_channels(in), out_channels(out), site(site_), adaptive(cfg.adaptive_double_norm), dropout(cfg.dropout),
      skip_scale(cfg.skip_scale) {
  double zero = cfg.zero_init ? 0.0 : 1.0;
  norm1 = register_module("norm1", std::make_shared<GroupNorm>(cfg.norm_groups, in, true, 1e-5, dtype));
  conv1 = register_module("conv1", std::make_shared<Conv2d>(in, out, 3, 1, 1, true, g, dtype));
  emb_proj = register_module("emb_proj", std::make_shared<Linear>(emb_dim, adaptive ? 2 * out : out, true, g, dtype));
  norm2 = register_module("norm2", std::make_shared<GroupNorm>(cfg.norm_groups, out, true, 1e-5, dtype));
  conv2 = register_module("conv2", std::make_shared<Conv2d>(out, out, 3, 1, 1, true, g, dtype, zero));
  if (in != out) skip = register_module("skip", std::make_shared<Conv2d>(in, out, 1, 1, 0, true, g, dtype));
}

Tensor UNetResBlock::forward(const Tensor& x, const Tensor& emb, bool train, uint64_t seed) const {
  Tensor h = conv1->forward(silu(norm1->forward(x)));
  Tensor e = emb_proj->forward(emb);
  if (adaptive) {
    // sCM's adaptive double normalization: pixel-normed modulation keeps d/dt of scale and shift bounded.
    Tensors ss = chunk(e, 2, 1);
    Tensor scale = pixel_norm(ss[0], 1, 1e-8), shift = pixel_norm(ss[1], 1, 1e-8);
    h = add(mul(norm2->forward(h), per_channel(scale)), per_channel(shift));
  } else {
    h = norm2->forward(add(h, per_channel(e)));
  }
  h = silu(h);
  if (train && dropout > 0) h = df::dropout(h, dropout, seed, uint64_t(site + 1) * kDropoutSiteStride, true);
  h = conv2->forward(h);
  Tensor y = add(skip ? skip->forward(x) : x, h);
  return skip_scale == 1.0 ? y : mul(y, skip_scale);
}

UNet::UNet(const UNetConfig& c, Generator& g, DType dtype) : cfg(c) {
  const int64_t L = (int64_t)cfg.channel_mults.size();
  DF_CHECK(cfg.in_channels > 0 && cfg.base_channels > 0 && L > 0 && cfg.res_blocks >= 1 && cfg.heads > 0 &&
               cfg.norm_groups > 0 && cfg.emb_mult > 0 && cfg.dropout >= 0 && cfg.dropout < 1,
           "UNet: bad config (in_channels ", cfg.in_channels, ", base_channels ", cfg.base_channels,
           ", levels ", L, ", res_blocks ", cfg.res_blocks, ", heads ", cfg.heads, ", norm_groups ",
           cfg.norm_groups, ", dropout ", cfg.dropout, ")");
  // L is bounded first: the shift below is undefined past 63 (a config once asked for 100 levels).
  DF_CHECK(L <= 16, "UNet: at most 16 levels (channel_mults), got ", L);
  DF_CHECK(cfg.resolution > 0 && cfg.resolution % (int64_t(1) << (L - 1)) == 0, "UNet: resolution ",
           cfg.resolution, " must be divisible by 2^", L - 1, " for ", L, " levels");
  DF_CHECK(cfg.base_channels % 2 == 0, "UNet: base_channels (the time-embedding size) must be even, got ",
           cfg.base_channels);
  for (int64_t m : cfg.channel_mults) {
    DF_CHECK(m > 0, "UNet: channel_mults must be positive");
    DF_CHECK(cfg.base_channels * m % cfg.norm_groups == 0, "UNet: norm_groups ", cfg.norm_groups,
             " does not divide ", cfg.base_channels * m, " channels");
  }
  in_channels = cfg.in_channels;
  resolution = cfg.resolution;
  const int64_t base = cfg.base_channels, emb_dim = cfg.emb_mult * base;
  const double zero = cfg.zero_init ? 0.0 : 1.0;
  int64_t site = 0;
  auto attn_block = [&](int64_t ch) {
    DF_CHECK(ch % cfg.heads == 0, "UNet: ", ch, " channels cannot be split into ", cfg.heads, " heads");
    return std::make_shared<AttentionBlock2d>(ch, cfg.heads, cfg.norm_groups, g, dtype, zero, cfg.skip_scale);
  };

  time_embed = register_module("time_embed",
                               std::make_shared<TimeEmbedding>(base, emb_dim, emb_dim, g, dtype, cfg.max_period));
  conv_in = register_module("conv_in", std::make_shared<Conv2d>(cfg.in_channels, base, 3, 1, 1, true, g, dtype));

  std::vector<int64_t> skips = {base};
  int64_t ch = base, r = cfg.resolution;
  down.resize(L);
  for (int64_t l = 0; l < L; ++l) {
    const std::string pre = "down." + std::to_string(l) + ".";
    const int64_t out = base * cfg.channel_mults[l];
    for (int64_t i = 0; i < cfg.res_blocks; ++i) {
      down[l].res.push_back(register_module(pre + "res." + std::to_string(i),
                                            std::make_shared<UNetResBlock>(ch, out, emb_dim, cfg, site++, g, dtype)));
      ch = out;
      if (has(cfg.attn_resolutions, r))
        down[l].attn.push_back(register_module(pre + "attn." + std::to_string(i), attn_block(ch)));
      skips.push_back(ch);
    }
    if (l + 1 < L) {
      down[l].resample = register_module(pre + "downsample", std::make_shared<Conv2d>(ch, ch, 3, 2, 1, true, g, dtype));
      skips.push_back(ch);
      r /= 2;
    }
  }

  mid_res0 = register_module("mid.res0", std::make_shared<UNetResBlock>(ch, ch, emb_dim, cfg, site++, g, dtype));
  if (cfg.mid_attention) mid_attn = register_module("mid.attn", attn_block(ch));
  mid_res1 = register_module("mid.res1", std::make_shared<UNetResBlock>(ch, ch, emb_dim, cfg, site++, g, dtype));

  up.resize(L);
  for (int64_t l = L - 1; l >= 0; --l) {
    const std::string pre = "up." + std::to_string(l) + ".";
    const int64_t out = base * cfg.channel_mults[l];
    for (int64_t i = 0; i <= cfg.res_blocks; ++i) {
      int64_t in = ch + skips.back();
      skips.pop_back();
      up[l].res.push_back(register_module(pre + "res." + std::to_string(i),
                                          std::make_shared<UNetResBlock>(in, out, emb_dim, cfg, site++, g, dtype)));
      ch = out;
      if (has(cfg.attn_resolutions, r))
        up[l].attn.push_back(register_module(pre + "attn." + std::to_string(i), attn_block(ch)));
    }
    if (l > 0) {
      up[l].resample = register_module(pre + "upsample", std::make_shared<Conv2d>(ch, ch, 3, 1, 1, true, g, dtype));
      r *= 2;
    }
  }
  norm_out = register_module("norm_out", std::make_shared<GroupNorm>(cfg.norm_groups, ch, true, 1e-5, dtype));
  conv_out = register_module("conv_out",
                             std::make_shared<Conv2d>(ch, cfg.in_channels, 3, 1, 1, true, g, dtype, zero));
}

Tensor UNet::forward(const Tensor& x, const Tensor& c_noise) const {
  DF_CHECK(x.dim() == 4 && x.size(1) == cfg.in_channels && x.size(2) == cfg.resolution &&
               x.size(3) == cfg.resolution,
           "UNet: expected x (N, ", cfg.in_channels, ", ", cfg.resolution, ", ", cfg.resolution, "), got ", x.desc());
  DF_CHECK(c_noise.dim() == 1 && c_noise.size(0) == x.size(0), "UNet: expected c_noise (N) with N = ", x.size(0),
           ", got ", c_noise.desc());
  const bool train = training();
  const uint64_t seed = dropout_seed();
  Tensor emb = silu(time_embed->forward(c_noise));
  if (emb.dtype() != x.dtype()) emb = cast(emb, x.dtype());

  Tensor h = conv_in->forward(x);
  std::vector<Tensor> skips = {h};
  for (const Level& lv : down) {
    for (size_t i = 0; i < lv.res.size(); ++i) {
      h = lv.res[i]->forward(h, emb, train, seed);
      if (!lv.attn.empty()) h = lv.attn[i]->forward(h);
      skips.push_back(h);
    }
    if (lv.resample) {
      h = lv.resample->forward(h);
      skips.push_back(h);
    }
  }
  h = mid_res0->forward(h, emb, train, seed);
  if (mid_attn) h = mid_attn->forward(h);
  h = mid_res1->forward(h, emb, train, seed);
  for (auto it = up.rbegin(); it != up.rend(); ++it) {
    const Level& lv = *it;
    for (size_t i = 0; i < lv.res.size(); ++i) {
      h = cat({h, skips.back()}, 1);
      skips.pop_back();
      h = lv.res[i]->forward(h, emb, train, seed);
      if (!lv.attn.empty()) h = lv.attn[i]->forward(h);
    }
    if (lv.resample) h = lv.resample->forward(upsample_nearest2d(h, 2));
  }
  return conv_out->forward(silu(norm_out->forward(h)));
}

}  // namespace df
