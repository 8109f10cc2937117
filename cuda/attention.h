// Launchers of the fused attention kernels (forward, backward, one-pass JVP), with plain C++ types so
// g++-compiled code (ops/fused_attention.cpp, tests, benches) can call them. All run on the backend's
// stream. Layout: q (B, H, N, D), k and v (B, H, M, D), contiguous; lse and its tangent (B, H, N) f32.
// Every pointer must be 16-byte aligned (the kernels move 16-byte pieces; an error says which is not).
#pragma once
#include <cstdint>

namespace df::attn {

enum class Elem { F32, BF16 };

// Which kernel family runs: Auto picks tensor cores (mma.sync) for bf16 and the SIMT f32 kernels
// for f32; Simt forces the f32-math kernels for both dtypes (a second implementation, useful as a
// cross-check and as the baseline in bench notes). Wgmma forces the Hopper warpgroup-MMA kernels
// (cuda/attention_wgmma.cu: bf16 forward, JVP and backward at head dim 64 and 128, sm_90 devices
// only; an error elsewhere); head dim 32 then runs the mma.sync kernels. Auto picks the Wgmma
// forward, JVP and backward for bf16 at head dim 64/128 on an sm_90 device (DF_ATTN_WGMMA=0 turns
// that off; DF_ATTN_WGMMA_BWD=0 only the backward's).
enum class Variant { Auto, Simt, TensorCore, Wgmma };
void set_variant(Variant v);
Variant variant();
// True when Variant::Wgmma can run here: the current device has compute capability 9.0.
bool wgmma_available();
// The wgmma kernels' block shape, main loop and load path, for tests and benchmarks: 0 (default) the
// fastest measured per kernel and head dim; 1-7 other shapes, listed per kernel and head dim in
// cuda/attention_wgmma.cu (5 keeps the cp.async loads of the earlier defaults; the defaults load by
// TMA). The backward has three variants: 1 and 3 select its one-warpgroup block, 5 its cp.async
// loads of Q and dO, the others its default. Out-of-range values select 0.
constexpr int kWgmmaConfigs = 8;
void set_wgmma_config(int c);
int wgmma_config();  // the config in force

// Warps per block of the tensor-core kernels: 4 or 8 force that size for all three; 0 (the
// default) picks per kernel. For benchmarks and tests of both sizes.
void set_tc_block_warps(int nw);
int tc_block_warps();

struct Dims {
  int64_t B = 1, H = 1, N = 1, M = 1, D = 64;
};

// True when the kernels handle this head dim (32, 64 or 128).
bool supported_head_dim(int64_t D);

// o = softmax(q k^T * scale) v; lse = logsumexp over keys of q k^T * scale (natural log).
void forward(Elem e, const Dims& d, float scale, const void* q, const void* k, const void* v, void* o,
             float* lse);

// One pass: o and to = d o / d(q, k, v) . (tq, tk, tv); lse and tlse (its tangent) when non-null.
void jvp(Elem e, const Dims& d, float scale, const void* q, const void* k, const void* v, const void* tq,
         const void* tk, const void* tv, void* o, void* to, float* lse, float* tlse);

// True when backward() with these arguments runs the wgmma backward kernel (for tests and benches).
bool backward_uses_wgmma(Elem e, const Dims& d);
// The same for forward() and jvp().
bool forward_uses_wgmma(Elem e, const Dims& d);

// Gradients from the saved lse: go is the cotangent of o, glse (nullable) that of lse. Workspace:
// dq_accum (B*H*N*D f32) and delta (B*H*N f32), both overwritten.
void backward(Elem e, const Dims& d, float scale, const void* q, const void* k, const void* v, const void* o,
              const float* lse, const void* go, const float* glse, void* dq, void* dk, void* dv,
              float* dq_accum, float* delta);

}  // namespace df::attn
