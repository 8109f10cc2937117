// Reusable layers for the image models: Conv2d, GroupNorm, LayerNorm, the time-embedding MLP, and
// multi-head self-attention over tokens (B, N, C) or over the pixels of an image (N, C, H, W).
#pragma once
#include "models/module.h"

namespace df {

// 2-D convolution, weight (out, in/groups, k, k). Init U(-b, b) with b = init_scale / sqrt(fan_in),
// fan_in = in/groups * k * k (PyTorch's default for init_scale = 1); init_scale = 0 gives zeros
// (the DDPM++ trick for the last layer of a residual branch).
class Conv2d : public Module {
 public:
  Conv2d(int64_t in, int64_t out, int64_t kernel, int64_t stride, int64_t padding, bool bias, Generator& g,
         DType dtype = DType::F32, double init_scale = 1.0, int64_t groups = 1);
  Tensor forward(const Tensor& x) const;  // (N, in, H, W) -> (N, out, H', W')
  Tensor weight, bias;
  int64_t in_channels, out_channels, kernel, stride, padding, groups;
};

// GroupNorm over (N, C, ...), with a per-channel affine (weight 1, bias 0) unless affine = false.
class GroupNorm : public Module {
 public:
  GroupNorm(int64_t groups, int64_t channels, bool affine = true, double eps = 1e-5, DType dtype = DType::F32);
  Tensor forward(const Tensor& x) const;
  Tensor weight, bias;
  int64_t groups, channels;
  double eps;
};

// LayerNorm over the last dim; DiT uses it without affine (adaLN supplies scale and shift).
class LayerNorm : public Module {
 public:
  LayerNorm(int64_t dim, bool affine = true, double eps = 1e-6, DType dtype = DType::F32);
  Tensor forward(const Tensor& x) const;
  Tensor weight, bias;
  int64_t dim;
  double eps;
};

// Linear init helpers: a Linear whose weight and bias are multiplied by `scale` after the default
// init (scale 0 = zero init, as DiT's adaLN and final layers).
std::shared_ptr<Linear> make_linear(int64_t in, int64_t out, bool bias, Generator& g, DType dtype,
                                    double scale = 1.0);

// c_noise (B) -> positional_embedding(c_noise, freq_dim) -> Linear(freq_dim, hidden) -> SiLU ->
// Linear(hidden, out). Names: "fc1", "fc2". c_noise is cast to the parameters' dtype.
class TimeEmbedding : public Module {
 public:
  TimeEmbedding(int64_t freq_dim, int64_t hidden, int64_t out, Generator& g, DType dtype = DType::F32,
                double max_period = 10000);
  Tensor forward(const Tensor& c_noise) const;  // (B) -> (B, out)
  int64_t freq_dim;
  double max_period;
  std::shared_ptr<Linear> fc1, fc2;
};

// Multi-head self-attention on tokens x (B, N, C): qkv = Linear(C, 3C) split into heads of C/heads,
// df::attention on (B, heads, N, D), then Linear(C, C). Names: "qkv", "proj".
class MultiHeadAttention : public Module {
 public:
  MultiHeadAttention(int64_t channels, int64_t heads, bool qkv_bias, Generator& g, DType dtype = DType::F32,
                     double proj_init_scale = 1.0);
  Tensor forward(const Tensor& x) const;  // (B, N, C) -> (B, N, C)
  int64_t channels, heads;
  std::shared_ptr<Linear> qkv, proj;
};

// Transformer MLP: Linear(C, hidden) -> GELU (tanh) -> Linear(hidden, C). Names: fc1, fc2.
class FeedForward : public Module {
 public:
  FeedForward(int64_t channels, int64_t hidden, Generator& g, DType dtype = DType::F32);
  Tensor forward(const Tensor& x) const;
  std::shared_ptr<Linear> fc1, fc2;
};

// Self-attention block over the H*W pixels of an image: x + skip_scale-weighted
// MultiHeadAttention(GroupNorm(x)) (the U-Net's attention layer). Names: "norm", "qkv", "proj".
class AttentionBlock2d : public Module {
 public:
  AttentionBlock2d(int64_t channels, int64_t heads, int64_t norm_groups, Generator& g, DType dtype = DType::F32,
                   double proj_init_scale = 0.0, double skip_scale = 1.0);
  Tensor forward(const Tensor& x) const;  // (N, C, H, W) -> same
  int64_t channels, heads;
  double skip_scale;
  std::shared_ptr<GroupNorm> norm;
  std::shared_ptr<Linear> qkv, proj;
};

// Rearrange images into patch tokens and back: (N, C, H, W) <-> (N, H/p * W/p, C*p*p), the feature
// order (C, p, p) matching a stride-p conv's weight layout.
Tensor patchify(const Tensor& x, int64_t p);
Tensor unpatchify(const Tensor& tokens, int64_t p, int64_t channels, int64_t height, int64_t width);

// What objectives and the trainer hold: any image model with MLPDenoiser's forward signature.
class ImageDenoiser : public Module {
 public:
  // x (N, C, H, W), c_noise (N) -> (N, C, H, W).
  virtual Tensor forward(const Tensor& x, const Tensor& c_noise) const = 0;
  // Dropout is off unless training. Its masks depend only on (seed, layer), so a JVP pass and a
  // gradient pass run with the same seed drop the same units (sCM); change the seed every step.
  void set_dropout(bool training, uint64_t seed) {
    training_ = training;
    dropout_seed_ = seed;
  }
  bool training() const { return training_; }
  uint64_t dropout_seed() const { return dropout_seed_; }
  int64_t in_channels = 0, resolution = 0;

 private:
  bool training_ = false;
  uint64_t dropout_seed_ = 0;
};

}  // namespace df
