// Fused attention: softmax(q k^T * scale) v through the CUDA kernels of cuda/attention.cu (forward,
// FlashAttention-2 backward, one-pass JVP) wherever they apply, else through the composite. `attention`
// (ops/attention.cpp) calls fused_attention when fused_attention_available says so.
#pragma once
#include "core/autograd.h"

namespace df {

// q (B, H, N, D), k and v (B, H, M, D) on CUDA, one dtype (f32 or bf16), D in {32, 64, 128}.
bool fused_attention_available(const Tensor& q, const Tensor& k, const Tensor& v);

// o (B, H, N, D); scale <= 0 means 1/sqrt(D). Differentiable to any order in both modes: first
// derivatives run fused kernels; derivatives of those (reverse mode through a JVP tangent, double
// backward, forward-over-reverse) differentiate the composite. Falls back to the composite entirely
// when fused_attention_available is false.
Tensor fused_attention(const Tensor& q, const Tensor& k, const Tensor& v, double scale = -1);

// (o, lse) with lse (B, H, N) = logsumexp of the scaled scores, always f32 (for tests and benches).
Tensors fused_attention_with_lse(const Tensor& q, const Tensor& k, const Tensor& v, double scale = -1);

// Always the fused op and its rules, on any device: on CPU its "kernels" are the composite's values
// (tests check the op's own JVP/VJP rules against the composite reference this way).
Tensors fused_attention_op_with_lse(const Tensor& q, const Tensor& k, const Tensor& v, double scale = -1);

// How often each attention path ran since the last reset (tests assert that a model's attention
// reaches the kernels they expect; benches print it). `*_wgmma` counts the calls of the line above
// them that ran the Hopper wgmma kernels. `composite` counts CUDA attention() calls that fell back to
// the composite (unsupported dtype, head dim or shape).
struct AttentionPathCounts {
  int64_t forward = 0, forward_wgmma = 0;     // forward kernel (saves lse for the backward)
  int64_t jvp = 0, jvp_wgmma = 0;             // one-pass JVP kernel (forward_with_tangents or the JVP rule)
  int64_t backward = 0, backward_wgmma = 0;   // fused backward kernel
  int64_t composite = 0;
};
AttentionPathCounts& attention_path_counts();
inline void reset_attention_path_counts() { attention_path_counts() = AttentionPathCounts{}; }

// The composite the fused op falls back to (matmul, softmax, matmul); equal in value to
// attention_reference.
Tensor attention_composite(const Tensor& q, const Tensor& k, const Tensor& v, double scale = -1);

}  // namespace df
