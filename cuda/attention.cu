// Fused attention launchers (cuda/attention.h) and the SIMT kernels: f32 math on CUDA cores for f32
// inputs (and for bf16 when Variant::Simt is asked for), plus the small helpers of the backward
// (delta = rowsum(dO * O) - dlse, dQ accumulator -> dq). bf16 tensor-core kernels: attention_tc.cu
// (mma.sync) and attention_wgmma.cu (Hopper wgmma: forward, JVP and backward).
#include <cuda_bf16.h>

#include <atomic>
#include <cstdint>
#include <initializer_list>
#include <utility>

#include "cuda/attention_impl.cuh"
#include "cuda/common.cuh"

namespace df::attn {

namespace {

std::atomic<Variant> g_variant{Variant::Auto};
std::atomic<int> g_tc_warps{0};
using tc::kLog2e;
using bf = __nv_bfloat16;
constexpr int kThreads = 256;  // a 16 x 16 grid: ty picks rows ty + 16 i, tx columns tx + 16 j

template <class T> __device__ __forceinline__ float ldf(const T* p, size_t i);
template <> __device__ __forceinline__ float ldf<float>(const float* p, size_t i) { return p[i]; }
template <> __device__ __forceinline__ float ldf<bf>(const bf* p, size_t i) { return __bfloat162float(p[i]); }
template <class T> __device__ __forceinline__ void stf(T* p, size_t i, float v);
template <> __device__ __forceinline__ void stf<float>(float* p, size_t i, float v) { p[i] = v; }
template <> __device__ __forceinline__ void stf<bf>(bf* p, size_t i, float v) { p[i] = __float2bfloat16_rn(v); }

// Rows [row0, row0 + ROWS) of an (nrows x D) matrix into f32 shared rows of odd stride D + 1, so a
// walk down a column (the transposed operand) hits 16 different banks. Missing rows are zero.
template <int ROWS, int D, class T>
__device__ __forceinline__ void load_rows(float* s, const T* g, int row0, int nrows) {
  for (int e = threadIdx.x; e < ROWS * D; e += kThreads) {
    const int r = e / D, c = e % D;
    s[r * (D + 1) + c] = row0 + r < nrows ? ldf(g, size_t(row0 + r) * D + c) : 0.f;
  }
}

// acc[i][j] += sum_k A(ty + 16 i, k) B(k, tx + 16 j), A(r, k) = A[r*ars + k*aks], B(k, c) = B[k*bks + c*bcs].
template <int RM, int CN, int K>
__device__ __forceinline__ void mm(float (&acc)[RM][CN], const float* A, int ars, int aks, const float* B, int bks,
                                   int bcs, int ty, int tx) {
#pragma unroll 4
  for (int kk = 0; kk < K; ++kk) {
    float a[RM], b[CN];
#pragma unroll
    for (int i = 0; i < RM; ++i) a[i] = A[(ty + 16 * i) * ars + kk * aks];
#pragma unroll
    for (int j = 0; j < CN; ++j) b[j] = B[kk * bks + (tx + 16 * j) * bcs];
#pragma unroll
    for (int i = 0; i < RM; ++i)
#pragma unroll
      for (int j = 0; j < CN; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
  }
}

// A row's 16 values sit in the 16 lanes that share ty (a half warp).
__device__ __forceinline__ float max16(float v) {
#pragma unroll
  for (int off = 8; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
  return v;
}
__device__ __forceinline__ float sum16(float v) {
#pragma unroll
  for (int off = 8; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

template <int RM, int CN>
__device__ __forceinline__ void zero(float (&a)[RM][CN]) {
#pragma unroll
  for (int i = 0; i < RM; ++i)
#pragma unroll
    for (int j = 0; j < CN; ++j) a[i][j] = 0.f;
}

template <class T, int D, int BR, int BC>
__global__ void __launch_bounds__(kThreads) fwd_simt(const T* __restrict__ q, const T* __restrict__ k,
                                                     const T* __restrict__ v, T* __restrict__ o,
                                                     float* __restrict__ lse, int N, int M, float sl2) {
  constexpr int LD = D + 1, LP = BC + 1, RM = BR / 16, CN = BC / 16, DN = D / 16;
  extern __shared__ float sm[];
  float* Qs = sm;
  float* Ks = Qs + BR * LD;
  float* Vs = Ks + BC * LD;
  float* Ps = Vs + BC * LD;
  const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
  const size_t bh = blockIdx.y;
  q += bh * N * D;
  o += bh * N * D;
  k += bh * M * D;
  v += bh * M * D;
  const int q0 = blockIdx.x * BR;
  load_rows<BR, D>(Qs, q, q0, N);
  float acc[RM][DN], mrow[RM], lrow[RM];
  zero(acc);
#pragma unroll
  for (int i = 0; i < RM; ++i) mrow[i] = -INFINITY, lrow[i] = 0.f;

  for (int j0 = 0; j0 < M; j0 += BC) {
    __syncthreads();
    load_rows<BC, D>(Ks, k, j0, M);
    load_rows<BC, D>(Vs, v, j0, M);
    __syncthreads();
    float s[RM][CN];
    zero(s);
    mm<RM, CN, D>(s, Qs, LD, 1, Ks, 1, LD, ty, tx);
#pragma unroll
    for (int i = 0; i < RM; ++i) {
      float mx = -INFINITY;
#pragma unroll
      for (int j = 0; j < CN; ++j) {
        if (j0 + tx + 16 * j >= M) s[i][j] = -INFINITY;
        mx = fmaxf(mx, s[i][j]);
      }
      const float mnew = fmaxf(mrow[i], max16(mx) * sl2);
      const float ms = mnew == -INFINITY ? 0.f : mnew;
      const float alpha = exp2f(mrow[i] - ms);
      mrow[i] = mnew;
      float rs = 0.f;
#pragma unroll
      for (int j = 0; j < CN; ++j) {
        const float p = exp2f(fmaf(s[i][j], sl2, -ms));
        Ps[(ty + 16 * i) * LP + tx + 16 * j] = p;
        rs += p;
      }
      lrow[i] = lrow[i] * alpha + sum16(rs);
#pragma unroll
      for (int j = 0; j < DN; ++j) acc[i][j] *= alpha;
    }
    __syncthreads();
    mm<RM, DN, BC>(acc, Ps, LP, 1, Vs, LD, 1, ty, tx);
  }
#pragma unroll
  for (int i = 0; i < RM; ++i) {
    const int row = q0 + ty + 16 * i;
    if (row >= N) continue;
    const float inv = 1.f / lrow[i];
#pragma unroll
    for (int j = 0; j < DN; ++j) stf(o, size_t(row) * D + tx + 16 * j, acc[i][j] * inv);
    if (tx == 0 && lse) lse[bh * N + row] = (mrow[i] + log2f(lrow[i])) / kLog2e;
  }
}

// The JVP recurrence of attention_tc.cu's jvp_kernel, in f32 on CUDA cores.
template <class T, int D, int BR, int BC>
__global__ void __launch_bounds__(kThreads)
    jvp_simt(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v, const T* __restrict__ tq,
             const T* __restrict__ tk, const T* __restrict__ tv, T* __restrict__ o, T* __restrict__ to,
             float* __restrict__ lse, float* __restrict__ tlse, int N, int M, float sl2, float scale) {
  constexpr int LD = D + 1, LP = BC + 1, RM = BR / 16, CN = BC / 16, DN = D / 16;
  extern __shared__ float sm[];
  float* Qs = sm;
  float* tQs = Qs + BR * LD;
  float* Ks = tQs + BR * LD;
  float* Vs = Ks + BC * LD;
  float* tKs = Vs + BC * LD;
  float* tVs = tKs + BC * LD;
  float* Ps = tVs + BC * LD;
  float* Hs = Ps + BR * LP;
  const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
  const size_t bh = blockIdx.y, qo = bh * N * D, ko = bh * M * D;
  const int q0 = blockIdx.x * BR;
  load_rows<BR, D>(Qs, q + qo, q0, N);
  load_rows<BR, D>(tQs, tq + qo, q0, N);
  float acc[RM][DN], tacc[RM][DN], mrow[RM], lrow[RM], rrow[RM];
  zero(acc);
  zero(tacc);
#pragma unroll
  for (int i = 0; i < RM; ++i) mrow[i] = -INFINITY, lrow[i] = rrow[i] = 0.f;

  for (int j0 = 0; j0 < M; j0 += BC) {
    __syncthreads();
    load_rows<BC, D>(Ks, k + ko, j0, M);
    load_rows<BC, D>(Vs, v + ko, j0, M);
    load_rows<BC, D>(tKs, tk + ko, j0, M);
    load_rows<BC, D>(tVs, tv + ko, j0, M);
    __syncthreads();
    float s[RM][CN], ts[RM][CN];
    zero(s);
    zero(ts);
    mm<RM, CN, D>(s, Qs, LD, 1, Ks, 1, LD, ty, tx);
    mm<RM, CN, D>(ts, tQs, LD, 1, Ks, 1, LD, ty, tx);
    mm<RM, CN, D>(ts, Qs, LD, 1, tKs, 1, LD, ty, tx);
#pragma unroll
    for (int i = 0; i < RM; ++i) {
      float mx = -INFINITY;
#pragma unroll
      for (int j = 0; j < CN; ++j) {
        if (j0 + tx + 16 * j >= M) s[i][j] = -INFINITY;
        mx = fmaxf(mx, s[i][j]);
      }
      const float mnew = fmaxf(mrow[i], max16(mx) * sl2);
      const float ms = mnew == -INFINITY ? 0.f : mnew;
      const float alpha = exp2f(mrow[i] - ms);
      mrow[i] = mnew;
      float rs = 0.f, hs = 0.f;
#pragma unroll
      for (int j = 0; j < CN; ++j) {
        const float p = exp2f(fmaf(s[i][j], sl2, -ms)), hv = p * ts[i][j] * scale;
        Ps[(ty + 16 * i) * LP + tx + 16 * j] = p;
        Hs[(ty + 16 * i) * LP + tx + 16 * j] = hv;
        rs += p;
        hs += hv;
      }
      lrow[i] = lrow[i] * alpha + sum16(rs);
      rrow[i] = rrow[i] * alpha + sum16(hs);
#pragma unroll
      for (int j = 0; j < DN; ++j) acc[i][j] *= alpha, tacc[i][j] *= alpha;
    }
    __syncthreads();
    mm<RM, DN, BC>(acc, Ps, LP, 1, Vs, LD, 1, ty, tx);
    mm<RM, DN, BC>(tacc, Ps, LP, 1, tVs, LD, 1, ty, tx);
    mm<RM, DN, BC>(tacc, Hs, LP, 1, Vs, LD, 1, ty, tx);
  }
#pragma unroll
  for (int i = 0; i < RM; ++i) {
    const int row = q0 + ty + 16 * i;
    if (row >= N) continue;
    const float inv = 1.f / lrow[i], rl = rrow[i] * inv;
#pragma unroll
    for (int j = 0; j < DN; ++j) {
      const size_t at = qo + size_t(row) * D + tx + 16 * j;
      const float ov = acc[i][j] * inv;
      stf(o, at, ov);
      stf(to, at, tacc[i][j] * inv - rl * ov);
    }
    if (tx == 0) {
      if (lse) lse[bh * N + row] = (mrow[i] + log2f(lrow[i])) / kLog2e;
      if (tlse) tlse[bh * N + row] = rl;
    }
  }
}

// One block per BC keys, looping over query tiles; see attention_tc.cu's bwd_kernel for the math.
template <class T, int D, int BR, int BC>
__global__ void __launch_bounds__(kThreads)
    bwd_simt(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v, const T* __restrict__ go,
             const float* __restrict__ lse, const float* __restrict__ delta, float* __restrict__ dq_accum,
             T* __restrict__ dk, T* __restrict__ dv, int N, int M, float scale, float sl2) {
  constexpr int LD = D + 1, LP = BC + 1, RQ = BR / 16, CK = BC / 16, DN = D / 16;
  extern __shared__ float sm[];
  float* Ks = sm;
  float* Vs = Ks + BC * LD;
  float* Qs = Vs + BC * LD;
  float* dOs = Qs + BR * LD;
  float* Ps = dOs + BR * LD;
  float* dSs = Ps + BR * LP;
  float* Ls = dSs + BR * LP;
  float* Ds = Ls + BR;
  const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
  const size_t bh = blockIdx.y, qo = bh * N * D, ko = bh * M * D;
  const int k0 = blockIdx.x * BC;
  load_rows<BC, D>(Ks, k + ko, k0, M);
  load_rows<BC, D>(Vs, v + ko, k0, M);
  float dka[CK][DN], dva[CK][DN];
  zero(dka);
  zero(dva);

  for (int i0 = 0; i0 < N; i0 += BR) {
    __syncthreads();
    load_rows<BR, D>(Qs, q + qo, i0, N);
    load_rows<BR, D>(dOs, go + qo, i0, N);
    if (threadIdx.x < BR) {
      const int r = i0 + threadIdx.x;
      Ls[threadIdx.x] = r < N ? lse[bh * N + r] * kLog2e : INFINITY;
      Ds[threadIdx.x] = r < N ? delta[bh * N + r] : 0.f;
    }
    __syncthreads();
    float s[RQ][CK], dp[RQ][CK];
    zero(s);
    zero(dp);
    mm<RQ, CK, D>(s, Qs, LD, 1, Ks, 1, LD, ty, tx);
    mm<RQ, CK, D>(dp, dOs, LD, 1, Vs, 1, LD, ty, tx);
#pragma unroll
    for (int i = 0; i < RQ; ++i)
#pragma unroll
      for (int j = 0; j < CK; ++j) {
        const int r = ty + 16 * i, c = tx + 16 * j;
        const float p = exp2f(fmaf(s[i][j], sl2, -Ls[r]));
        Ps[r * LP + c] = p;
        dSs[r * LP + c] = p * (dp[i][j] - Ds[r]);
      }
    __syncthreads();
    mm<CK, DN, BR>(dva, Ps, 1, LP, dOs, LD, 1, ty, tx);
    mm<CK, DN, BR>(dka, dSs, 1, LP, Qs, LD, 1, ty, tx);
    float dqa[RQ][DN];
    zero(dqa);
    mm<RQ, DN, BC>(dqa, dSs, LP, 1, Ks, LD, 1, ty, tx);
#pragma unroll
    for (int i = 0; i < RQ; ++i) {
      const int r = i0 + ty + 16 * i;
      if (r >= N) continue;
#pragma unroll
      for (int j = 0; j < DN; ++j) atomicAdd(dq_accum + qo + size_t(r) * D + tx + 16 * j, dqa[i][j]);
    }
  }
#pragma unroll
  for (int i = 0; i < CK; ++i) {
    const int key = k0 + ty + 16 * i;
    if (key >= M) continue;
#pragma unroll
    for (int j = 0; j < DN; ++j) {
      const size_t at = ko + size_t(key) * D + tx + 16 * j;
      stf(dk, at, dka[i][j] * scale);
      stf(dv, at, dva[i][j]);
    }
  }
}

// delta[row] = sum_d go * o - glse[row]: 8 lanes per row.
template <class T>
__global__ void delta_kernel(const T* __restrict__ o, const T* __restrict__ go, const float* __restrict__ glse,
                             float* __restrict__ delta, int64_t rows, int D) {
  const int64_t row = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 8;
  const int sub = threadIdx.x & 7;
  float acc = 0.f;
  if (row < rows)
    for (int c = sub; c < D; c += 8) acc += ldf(o, size_t(row) * D + c) * ldf(go, size_t(row) * D + c);
  acc += __shfl_xor_sync(0xffffffffu, acc, 4);
  acc += __shfl_xor_sync(0xffffffffu, acc, 2);
  acc += __shfl_xor_sync(0xffffffffu, acc, 1);
  if (row < rows && sub == 0) delta[row] = acc - (glse ? glse[row] : 0.f);
}

template <class T>
__global__ void finish_dq_kernel(const float* __restrict__ acc, T* __restrict__ dq, int64_t n, float scale) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    stf(dq, size_t(i), acc[i] * scale);
}

template <class K>
void allow_smem(K kern, size_t bytes) {
  if (bytes > 48 * 1024)
    DF_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)), "attention");
}

// Tile sizes per head dim: 64 x 64 where the f32 tiles fit, 32 x 32 for the JVP and backward at D 128.
template <class T, int D>
void simt_forward(const Dims& d, float scale, const void* q, const void* k, const void* v, void* o, float* lse,
                  cudaStream_t s) {
  constexpr int BR = 64, BC = 64;
  constexpr size_t smem = (size_t(BR + 2 * BC) * (D + 1) + size_t(BR) * (BC + 1)) * sizeof(float);
  static const bool ready = (allow_smem(fwd_simt<T, D, BR, BC>, smem), true);
  (void)ready;
  dim3 grid(unsigned((d.N + BR - 1) / BR), unsigned(d.B * d.H));
  fwd_simt<T, D, BR, BC><<<grid, kThreads, smem, s>>>(static_cast<const T*>(q), static_cast<const T*>(k),
                                                      static_cast<const T*>(v), static_cast<T*>(o), lse, int(d.N),
                                                      int(d.M), scale * kLog2e);
  DF_CUDA_LAUNCHED("attention forward");
}

template <class T, int D>
void simt_jvp(const Dims& d, float scale, const void* q, const void* k, const void* v, const void* tq, const void* tk,
              const void* tv, void* o, void* to, float* lse, float* tlse, cudaStream_t s) {
  constexpr int BR = D > 64 ? 32 : 64, BC = BR;
  constexpr size_t smem = (size_t(2 * BR + 4 * BC) * (D + 1) + size_t(2 * BR) * (BC + 1)) * sizeof(float);
  static const bool ready = (allow_smem(jvp_simt<T, D, BR, BC>, smem), true);
  (void)ready;
  dim3 grid(unsigned((d.N + BR - 1) / BR), unsigned(d.B * d.H));
  auto c = [](const void* p) { return static_cast<const T*>(p); };
  jvp_simt<T, D, BR, BC><<<grid, kThreads, smem, s>>>(c(q), c(k), c(v), c(tq), c(tk), c(tv), static_cast<T*>(o),
                                                      static_cast<T*>(to), lse, tlse, int(d.N), int(d.M),
                                                      scale * kLog2e, scale);
  DF_CUDA_LAUNCHED("attention jvp");
}

template <class T, int D>
void simt_backward(const Dims& d, float scale, const void* q, const void* k, const void* v, const void* go,
                   const float* lse, const float* delta, float* dq_accum, void* dk, void* dv, cudaStream_t s) {
  constexpr int BR = D > 64 ? 32 : 64, BC = BR;
  constexpr size_t smem = (size_t(2 * BC + 2 * BR) * (D + 1) + size_t(2 * BR) * (BC + 1) + 2 * BR) * sizeof(float);
  static const bool ready = (allow_smem(bwd_simt<T, D, BR, BC>, smem), true);
  (void)ready;
  dim3 grid(unsigned((d.M + BC - 1) / BC), unsigned(d.B * d.H));
  auto c = [](const void* p) { return static_cast<const T*>(p); };
  bwd_simt<T, D, BR, BC><<<grid, kThreads, smem, s>>>(c(q), c(k), c(v), c(go), lse, delta, dq_accum,
                                                      static_cast<T*>(dk), static_cast<T*>(dv), int(d.N), int(d.M),
                                                      scale, scale * kLog2e);
  DF_CUDA_LAUNCHED("attention backward");
}

// The kernels move rows in 16-byte pieces (cp.async, vector loads, TMA), so every matrix must start
// on a 16-byte boundary. Allocations do; ops/fused_attention.cpp copies any view that does not.
// Null pointers (the optional outputs and cotangents) are skipped.
void check_aligned(const char* op, std::initializer_list<std::pair<const char*, const void*>> ps) {
  for (const auto& np : ps)
    DF_CHECK(reinterpret_cast<uintptr_t>(np.second) % 16 == 0, op, ": ", np.first,
             " must start on a 16-byte boundary, got address ", np.second);
}

void check(Elem e, const Dims& d, const char* op) {
  DF_CHECK(supported_head_dim(d.D), op, ": head dim must be 32, 64 or 128, got ", d.D);
  DF_CHECK(d.N >= 1 && d.M >= 1 && d.B >= 1 && d.H >= 1, op, ": empty problem B=", d.B, " H=", d.H, " N=", d.N,
           " M=", d.M);
  DF_CHECK(d.B * d.H <= 65535, op, ": B*H must be <= 65535, got ", d.B * d.H);
  DF_CHECK(d.N < (int64_t(1) << 31) / 128 && d.M < (int64_t(1) << 31) / 128, op, ": sequence too long (N=", d.N,
           ", M=", d.M, ")");
  const Variant v = g_variant.load();
  DF_CHECK(!(e == Elem::F32 && (v == Variant::TensorCore || v == Variant::Wgmma)), op,
           ": the tensor-core kernels take bf16 inputs, got f32");
  if (v == Variant::Wgmma && !wg::device_ok()) {
    int dev = 0, major = 0, minor = 0;
    cudaGetDevice(&dev);
    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
    cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev);
    DF_FAIL(op, ": Variant::Wgmma needs an sm_90 GPU (H100/H200); this device is sm_", major, minor);
  }
}

bool use_tc(Elem e) { return e == Elem::BF16 && g_variant.load() != Variant::Simt; }

// The wgmma kernels: forced by Variant::Wgmma (check() has refused non-sm_90 devices), or under
// Auto on an sm_90 device unless DF_ATTN_WGMMA=0; bf16 at head dim 64 or 128 only.
bool use_wgmma(Elem e, const Dims& d) {
  if (e != Elem::BF16 || !wg::supports(d.D)) return false;
  const Variant v = g_variant.load();
  if (v == Variant::Wgmma) return true;
  return v == Variant::Auto && wg::env_enabled() && wg::device_ok();
}

// The wgmma backward: forced by Variant::Wgmma, or under Auto on an sm_90 device unless
// DF_ATTN_WGMMA=0 or DF_ATTN_WGMMA_BWD=0; bf16 at head dim 64 or 128.
bool use_wgmma_bwd(Elem e, const Dims& d) {
  return use_wgmma(e, d) && (g_variant.load() == Variant::Wgmma || wg::bwd_env_enabled());
}

// Calls f.template operator()<T, D>() for the runtime dtype and head dim.
template <class F>
void dispatch(Elem e, int64_t D, F&& f) {
  if (e == Elem::F32) {
    if (D == 32) return f.template operator()<float, 32>();
    if (D == 64) return f.template operator()<float, 64>();
    return f.template operator()<float, 128>();
  }
  if (D == 32) return f.template operator()<bf, 32>();
  if (D == 64) return f.template operator()<bf, 64>();
  return f.template operator()<bf, 128>();
}

}  // namespace

void set_variant(Variant v) { g_variant = v; }
Variant variant() { return g_variant.load(); }
void set_tc_block_warps(int nw) { g_tc_warps = nw; }
int tc_block_warps() { return g_tc_warps.load(); }
bool supported_head_dim(int64_t D) { return D == 32 || D == 64 || D == 128; }
bool wgmma_available() { return wg::device_ok(); }
void set_wgmma_config(int c) { wg::set_config(c); }
int wgmma_config() { return wg::config(); }

struct FwdCall {
  const Dims& d;
  float scale;
  const void *q, *k, *v;
  void* o;
  float* lse;
  template <class T, int D>
  void operator()() const {
    simt_forward<T, D>(d, scale, q, k, v, o, lse, cudak::stream());
  }
};

void forward(Elem e, const Dims& d, float scale, const void* q, const void* k, const void* v, void* o, float* lse) {
  check(e, d, "attention forward");
  check_aligned("attention forward", {{"q", q}, {"k", k}, {"v", v}, {"o", o}, {"lse", lse}});
  if (use_wgmma(e, d)) return wg::forward(d, scale, q, k, v, o, lse, cudak::stream());
  if (use_tc(e)) return tc::forward(d, scale, q, k, v, o, lse, cudak::stream());
  dispatch(e, d.D, FwdCall{d, scale, q, k, v, o, lse});
}

struct JvpCall {
  const Dims& d;
  float scale;
  const void *q, *k, *v, *tq, *tk, *tv;
  void *o, *to;
  float *lse, *tlse;
  template <class T, int D>
  void operator()() const {
    simt_jvp<T, D>(d, scale, q, k, v, tq, tk, tv, o, to, lse, tlse, cudak::stream());
  }
};

void jvp(Elem e, const Dims& d, float scale, const void* q, const void* k, const void* v, const void* tq,
         const void* tk, const void* tv, void* o, void* to, float* lse, float* tlse) {
  check(e, d, "attention jvp");
  check_aligned("attention jvp", {{"q", q}, {"k", k}, {"v", v}, {"tq", tq}, {"tk", tk}, {"tv", tv}, {"o", o},
                                  {"to", to}, {"lse", lse}, {"tlse", tlse}});
  if (use_wgmma(e, d)) return wg::jvp(d, scale, q, k, v, tq, tk, tv, o, to, lse, tlse, cudak::stream());
  if (use_tc(e)) return tc::jvp(d, scale, q, k, v, tq, tk, tv, o, to, lse, tlse, cudak::stream());
  dispatch(e, d.D, JvpCall{d, scale, q, k, v, tq, tk, tv, o, to, lse, tlse});
}

struct BwdCall {
  const Dims& d;
  float scale;
  const void *q, *k, *v, *o, *go;
  const float *lse, *glse;
  void *dq, *dk, *dv;
  float *dq_accum, *delta;
  bool tensor_cores, wgmma;
  template <class T, int D>
  void operator()() const {
    cudaStream_t s = cudak::stream();
    const int64_t rows = d.B * d.H * d.N, n = rows * d.D;
    delta_kernel<T><<<unsigned((rows * 8 + 255) / 256), 256, 0, s>>>(static_cast<const T*>(o),
                                                                      static_cast<const T*>(go), glse, delta, rows,
                                                                      int(d.D));
    DF_CUDA_LAUNCHED("attention backward");
    DF_CUDA_CHECK(cudaMemsetAsync(dq_accum, 0, size_t(n) * sizeof(float), s), "attention backward");
    if (wgmma) wg::backward(d, scale, q, k, v, go, lse, delta, dq_accum, dk, dv, s);
    else if (tensor_cores) tc::backward(d, scale, q, k, v, go, lse, delta, dq_accum, dk, dv, s);
    else simt_backward<T, D>(d, scale, q, k, v, go, lse, delta, dq_accum, dk, dv, s);
    finish_dq_kernel<T><<<cudak::grid_for(n, 256), 256, 0, s>>>(dq_accum, static_cast<T*>(dq), n, scale);
    DF_CUDA_LAUNCHED("attention backward");
  }
};

void backward(Elem e, const Dims& d, float scale, const void* q, const void* k, const void* v, const void* o,
              const float* lse, const void* go, const float* glse, void* dq, void* dk, void* dv, float* dq_accum,
              float* delta) {
  check(e, d, "attention backward");
  check_aligned("attention backward", {{"q", q}, {"k", k}, {"v", v}, {"o", o}, {"lse", lse}, {"go", go},
                                       {"glse", glse}, {"dq", dq}, {"dk", dk}, {"dv", dv}, {"dq_accum", dq_accum},
                                       {"delta", delta}});
  dispatch(e, d.D,
           BwdCall{d, scale, q, k, v, o, go, lse, glse, dq, dk, dv, dq_accum, delta, use_tc(e), use_wgmma_bwd(e, d)});
}

bool backward_uses_wgmma(Elem e, const Dims& d) { return use_wgmma_bwd(e, d); }
bool forward_uses_wgmma(Elem e, const Dims& d) { return use_wgmma(e, d); }

}  // namespace df::attn
