// Internal interface between the attention launchers (cuda/attention.cu) and the bf16 tensor-core
// kernels (cuda/attention_tc.cu: mma.sync; cuda/attention_wgmma.cu: Hopper wgmma). Not for use
// outside cuda/.
#pragma once
#include <cuda_runtime.h>

#include "cuda/attention.h"

namespace df::attn::tc {

// log2(e): the kernels work in base 2 (exp2 is one instruction) and convert lse back to base e.
constexpr float kLog2e = 1.4426950408889634f;

// Warps per block when set_tc_block_warps leaves the choice to us: the faster of the two sizes in the
// H200 runs of bench/attention_notes.md (backward: 8 up to D 64, 4 at D 128).
constexpr int kDefaultWarpsFwd = 4, kDefaultWarpsJvp = 4;
constexpr int default_warps_bwd(int64_t D) { return D > 64 ? 4 : 8; }

void forward(const Dims& d, float scale, const void* q, const void* k, const void* v, void* o, float* lse,
             cudaStream_t s);
void jvp(const Dims& d, float scale, const void* q, const void* k, const void* v, const void* tq, const void* tk,
         const void* tv, void* o, void* to, float* lse, float* tlse, cudaStream_t s);
// delta = rowsum(go * o) - glse, precomputed; dq_accum zeroed; dq is written by the caller from it.
void backward(const Dims& d, float scale, const void* q, const void* k, const void* v, const void* go,
              const float* lse, const float* delta, float* dq_accum, void* dk, void* dv, cudaStream_t s);

}  // namespace df::attn::tc

namespace df::attn::wg {

// Head dims the wgmma kernels handle (forward, JVP, backward): 64 and 128.
bool supports(int64_t D);
// True when the current device can run them (compute capability 9.0: they are sm_90a code).
bool device_ok();
// DF_ATTN_WGMMA=1 in the environment: Auto picks them (until they are the default).
bool env_enabled();
// Block shape and main loop (attention_wgmma.cu lists them): 0 the default, up to
// kWgmmaConfigs - 1 (cuda/attention.h); anything else selects 0.
void set_config(int c);
int config();
void forward(const Dims& d, float scale, const void* q, const void* k, const void* v, void* o, float* lse,
             cudaStream_t s);
void jvp(const Dims& d, float scale, const void* q, const void* k, const void* v, const void* tq, const void* tk,
         const void* tv, void* o, void* to, float* lse, float* tlse, cudaStream_t s);
// False when DF_ATTN_WGMMA_BWD=0 is in the environment: Auto then runs the mma.sync backward after
// the wgmma forward.
bool bwd_env_enabled();
// The backward's K/V-block kernel, as tc::backward: delta precomputed, dq_accum zeroed by the caller.
void backward(const Dims& d, float scale, const void* q, const void* k, const void* v, const void* go,
              const float* lse, const float* delta, float* dq_accum, void* dk, void* dv, cudaStream_t s);

}  // namespace df::attn::wg
