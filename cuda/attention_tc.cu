// bf16 attention kernels on tensor cores (mma.sync m16n8k16, f32 accumulation, ldmatrix, cp.async
// double buffering): flash forward, the one-pass JVP, and the FlashAttention-2 backward (dK/dV per key
// block, dQ through f32 atomics). Scores run in base 2 (exp2 is one instruction); lse leaves in base e.
#include <cuda_bf16.h>

#include <cstdint>

#include "cuda/attention_impl.cuh"
#include "cuda/common.cuh"

namespace df::attn::tc {
namespace {

using bf = __nv_bfloat16;
// Blocks have NW warps (4 or 8); each warp owns 16-row slices of the tiles. 8 warps halve the L2
// traffic per flop (each block streams the other operand once for twice the rows).

__device__ __forceinline__ uint32_t saddr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
// 16 bytes global -> shared without touching registers; a row past the end is zero-filled
// (src-size 0), so masked keys and queries hold zeros, never stale data.
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}
__device__ __forceinline__ void ldsm4(uint32_t (&r)[4], uint32_t a) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}
__device__ __forceinline__ void ldsm4t(uint32_t (&r)[4], uint32_t a) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}
// c += a (16x16, row) * b (16x8, col).
__device__ __forceinline__ void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ uint32_t pack(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}
// The accumulators of two adjacent 16x8 tiles are exactly the A operand of a 16x16 product over
// their 16 columns: scores turn into the P (or H, dS) operand without leaving registers.
__device__ __forceinline__ void acc_to_a(uint32_t (&a)[4], const float (&c0)[4], const float (&c1)[4]) {
  a[0] = pack(c0[0], c0[1]);
  a[1] = pack(c0[2], c0[3]);
  a[2] = pack(c1[0], c1[1]);
  a[3] = pack(c1[2], c1[3]);
}

// Rows [row0, row0 + ROWS) of an (nrows x D) bf16 matrix into shared rows of stride D + 8: the
// 16-byte pad puts the 8 rows one ldmatrix reads into 8 different bank groups.
template <int ROWS, int D, int NT>
__device__ __forceinline__ void load_tile(bf* s, const bf* g, int row0, int nrows, int tid) {
  constexpr int CPR = D / 8, LD = D + 8;
  static_assert((ROWS * CPR) % NT == 0, "tile must split evenly over the block");
#pragma unroll
  for (int it = 0; it < ROWS * CPR / NT; ++it) {
    const int c = tid + it * NT, r = c / CPR, col = (c % CPR) * 8;
    const bool ok = row0 + r < nrows;
    cp_async16(saddr(s + r * LD + col), g + size_t(ok ? row0 + r : 0) * D + col, ok);
  }
}

// Per-lane ldmatrix addressing (element offsets inside a 16x16 block).
struct Lanes {
  int a_row, a_col;    // A stored [m][k]
  int b_row, b_col;    // B stored [n][k] (two 8-wide n tiles per x4 load)
  int bt_row, bt_col;  // B stored [k][n], loaded transposed
  int at_row, at_col;  // A stored [k][m], loaded transposed
  __device__ explicit Lanes(int lane) {
    a_row = lane & 15;
    a_col = (lane >> 4) * 8;
    b_row = (lane & 7) + ((lane >> 4) << 3);
    b_col = ((lane >> 3) & 1) * 8;
    bt_row = (lane & 7) + (((lane >> 3) & 1) << 3);
    bt_col = (lane >> 4) * 8;
    at_row = (lane & 7) + ((lane >> 4) << 3);
    at_col = ((lane >> 3) & 1) * 8;
  }
};

__device__ __forceinline__ float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

// ---- forward ------------------------------------------------------------------------------------
// Block: 16*MR*NW query rows (warp w owns rows (mr*NW + w)*16 ..+16), key tiles of BC, Q in registers.
template <int D, int MR, int BC, int NW>
__global__ void __launch_bounds__(NW * 32) fwd_kernel(const bf* __restrict__ q, const bf* __restrict__ k,
                                                       const bf* __restrict__ v, bf* __restrict__ o,
                                                       float* __restrict__ lse, int N, int M, float sl2) {
  constexpr int BR = 16 * MR * NW, LD = D + 8, KD = D / 16, NT = NW * 32;
  extern __shared__ __align__(16) unsigned char smem[];
  bf* Qs = reinterpret_cast<bf*>(smem);
  bf* Ks = Qs + BR * LD;
  bf* Vs = Ks + 2 * BC * LD;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
  const Lanes L(lane);
  const size_t bh = blockIdx.y;
  q += bh * N * D;
  o += bh * N * D;
  k += bh * M * D;
  v += bh * M * D;
  const int q0 = blockIdx.x * BR, nt = (M + BC - 1) / BC;

  load_tile<BR, D, NT>(Qs, q, q0, N, tid);
  load_tile<BC, D, NT>(Ks, k, 0, M, tid);
  load_tile<BC, D, NT>(Vs, v, 0, M, tid);
  cp_commit();

  uint32_t qf[MR][KD][4];
  float acc[MR][D / 8][4], mrow[MR][2], lrow[MR][2];
#pragma unroll
  for (int mr = 0; mr < MR; ++mr) {
#pragma unroll
    for (int n = 0; n < D / 8; ++n)
#pragma unroll
      for (int c = 0; c < 4; ++c) acc[mr][n][c] = 0.f;
    mrow[mr][0] = mrow[mr][1] = -INFINITY;
    lrow[mr][0] = lrow[mr][1] = 0.f;
  }

  for (int j = 0; j < nt; ++j) {
    if (j + 1 < nt) {
      load_tile<BC, D, NT>(Ks + ((j + 1) & 1) * BC * LD, k, (j + 1) * BC, M, tid);
      load_tile<BC, D, NT>(Vs + ((j + 1) & 1) * BC * LD, v, (j + 1) * BC, M, tid);
      cp_commit();
      cp_wait<1>();
    } else {
      cp_wait<0>();
    }
    __syncthreads();
    if (j == 0) {
#pragma unroll
      for (int mr = 0; mr < MR; ++mr)
#pragma unroll
        for (int kk = 0; kk < KD; ++kk)
          ldsm4(qf[mr][kk], saddr(Qs + ((mr * NW + warp) * 16 + L.a_row) * LD + kk * 16 + L.a_col));
    }
    const bf* Kb = Ks + (j & 1) * BC * LD;
    const bf* Vb = Vs + (j & 1) * BC * LD;

    float s[MR][BC / 8][4];
#pragma unroll
    for (int mr = 0; mr < MR; ++mr)
#pragma unroll
      for (int n = 0; n < BC / 8; ++n)
#pragma unroll
        for (int c = 0; c < 4; ++c) s[mr][n][c] = 0.f;
#pragma unroll
    for (int kk = 0; kk < KD; ++kk)
#pragma unroll
      for (int np = 0; np < BC / 16; ++np) {
        uint32_t b[4];
        ldsm4(b, saddr(Kb + (np * 16 + L.b_row) * LD + kk * 16 + L.b_col));
#pragma unroll
        for (int mr = 0; mr < MR; ++mr) {
          mma(s[mr][2 * np], qf[mr][kk], b[0], b[1]);
          mma(s[mr][2 * np + 1], qf[mr][kk], b[2], b[3]);
        }
      }
    if ((j + 1) * BC > M) {
#pragma unroll
      for (int mr = 0; mr < MR; ++mr)
#pragma unroll
        for (int n = 0; n < BC / 8; ++n)
#pragma unroll
          for (int c = 0; c < 4; ++c)
            if (j * BC + n * 8 + 2 * t + (c & 1) >= M) s[mr][n][c] = -INFINITY;
    }
#pragma unroll
    for (int mr = 0; mr < MR; ++mr)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        float mx = -INFINITY;
#pragma unroll
        for (int n = 0; n < BC / 8; ++n) mx = fmaxf(mx, fmaxf(s[mr][n][2 * h], s[mr][n][2 * h + 1]));
        const float mnew = fmaxf(mrow[mr][h], quad_max(mx) * sl2);
        const float ms = mnew == -INFINITY ? 0.f : mnew;
        const float alpha = exp2f(mrow[mr][h] - ms);
        mrow[mr][h] = mnew;
        float rs = 0.f;
#pragma unroll
        for (int n = 0; n < BC / 8; ++n)
#pragma unroll
          for (int c = 2 * h; c < 2 * h + 2; ++c) {
            const float p = exp2f(fmaf(s[mr][n][c], sl2, -ms));
            s[mr][n][c] = p;
            rs += p;
          }
        lrow[mr][h] = lrow[mr][h] * alpha + rs;  // per-lane partial; the quad is summed at the end
#pragma unroll
        for (int n = 0; n < D / 8; ++n) {
          acc[mr][n][2 * h] *= alpha;
          acc[mr][n][2 * h + 1] *= alpha;
        }
      }
#pragma unroll
    for (int kk = 0; kk < BC / 16; ++kk) {
      uint32_t a[MR][4];
#pragma unroll
      for (int mr = 0; mr < MR; ++mr) acc_to_a(a[mr], s[mr][2 * kk], s[mr][2 * kk + 1]);
#pragma unroll
      for (int dp = 0; dp < D / 16; ++dp) {
        uint32_t b[4];
        ldsm4t(b, saddr(Vb + (kk * 16 + L.bt_row) * LD + dp * 16 + L.bt_col));
#pragma unroll
        for (int mr = 0; mr < MR; ++mr) {
          mma(acc[mr][2 * dp], a[mr], b[0], b[1]);
          mma(acc[mr][2 * dp + 1], a[mr], b[2], b[3]);
        }
      }
    }
    __syncthreads();  // the next iteration's prefetch overwrites the buffer read here
  }

#pragma unroll
  for (int mr = 0; mr < MR; ++mr)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const float l = quad_sum(lrow[mr][h]), inv = 1.f / l;
      const int row = q0 + (mr * NW + warp) * 16 + g + 8 * h;
      if (row < N) {
#pragma unroll
        for (int n = 0; n < D / 8; ++n)
          *reinterpret_cast<uint32_t*>(o + size_t(row) * D + n * 8 + 2 * t) =
              pack(acc[mr][n][2 * h] * inv, acc[mr][n][2 * h + 1] * inv);
        if (t == 0 && lse) lse[bh * N + row] = (mrow[mr][h] + log2f(l)) / kLog2e;
      }
    }
}

// ---- JVP ----------------------------------------------------------------------------------------
// Per key tile: S = Q K^T, tS = tQ K^T + Q tK^T (scaled), P = exp2(S*sl2 - m), H = P * tS; with one
// rescale alpha for all of them: l += rowsum P, r += rowsum H, O += P V, T += P tV + H V. At the end
// o = O / l, to = T / l - (r / l) o, tlse = r / l. QREG keeps Q and tQ fragments in registers.
template <int D, int BC, bool QREG, int NW>
__global__ void __launch_bounds__(NW * 32)
    jvp_kernel(const bf* __restrict__ q, const bf* __restrict__ k, const bf* __restrict__ v, const bf* __restrict__ tq,
               const bf* __restrict__ tk, const bf* __restrict__ tv, bf* __restrict__ o, bf* __restrict__ to,
               float* __restrict__ lse, float* __restrict__ tlse, int N, int M, float sl2, float scale) {
  constexpr int BR = 16 * NW, LD = D + 8, KD = D / 16, QF = QREG ? KD : 1, NT = NW * 32;
  extern __shared__ __align__(16) unsigned char smem[];
  bf* Qs = reinterpret_cast<bf*>(smem);
  bf* tQs = Qs + BR * LD;
  bf* Ks = tQs + BR * LD;  // 2 stages each of K, V, tK, tV
  bf* Vs = Ks + 2 * BC * LD;
  bf* tKs = Vs + 2 * BC * LD;
  bf* tVs = tKs + 2 * BC * LD;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
  const Lanes L(lane);
  const size_t bh = blockIdx.y, qo = bh * N * D, ko = bh * M * D;
  q += qo;
  tq += qo;
  o += qo;
  to += qo;
  k += ko;
  v += ko;
  tk += ko;
  tv += ko;
  const int q0 = blockIdx.x * BR, nt = (M + BC - 1) / BC;

  load_tile<BR, D, NT>(Qs, q, q0, N, tid);
  load_tile<BR, D, NT>(tQs, tq, q0, N, tid);
  load_tile<BC, D, NT>(Ks, k, 0, M, tid);
  load_tile<BC, D, NT>(Vs, v, 0, M, tid);
  load_tile<BC, D, NT>(tKs, tk, 0, M, tid);
  load_tile<BC, D, NT>(tVs, tv, 0, M, tid);
  cp_commit();

  uint32_t qf[QF][4], tqf[QF][4];
  float acc[D / 8][4], tacc[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n)
#pragma unroll
    for (int c = 0; c < 4; ++c) acc[n][c] = tacc[n][c] = 0.f;
  float mrow[2] = {-INFINITY, -INFINITY}, lrow[2] = {0.f, 0.f}, rrow[2] = {0.f, 0.f};
  const int arow = warp * 16 + L.a_row;

  for (int j = 0; j < nt; ++j) {
    const int cur = (j & 1) * BC * LD;
    if (j + 1 < nt) {
      const int nxt = ((j + 1) & 1) * BC * LD, r0 = (j + 1) * BC;
      load_tile<BC, D, NT>(Ks + nxt, k, r0, M, tid);
      load_tile<BC, D, NT>(Vs + nxt, v, r0, M, tid);
      load_tile<BC, D, NT>(tKs + nxt, tk, r0, M, tid);
      load_tile<BC, D, NT>(tVs + nxt, tv, r0, M, tid);
      cp_commit();
      cp_wait<1>();
    } else {
      cp_wait<0>();
    }
    __syncthreads();
    if (QREG && j == 0) {
#pragma unroll
      for (int kk = 0; kk < QF; ++kk) {
        ldsm4(qf[kk], saddr(Qs + arow * LD + kk * 16 + L.a_col));
        ldsm4(tqf[kk], saddr(tQs + arow * LD + kk * 16 + L.a_col));
      }
    }

    float s[BC / 8][4], ts[BC / 8][4];
#pragma unroll
    for (int n = 0; n < BC / 8; ++n)
#pragma unroll
      for (int c = 0; c < 4; ++c) s[n][c] = ts[n][c] = 0.f;
#pragma unroll
    for (int kk = 0; kk < KD; ++kk) {
      uint32_t qa[4], tqa[4];
      if (QREG) {
#pragma unroll
        for (int c = 0; c < 4; ++c) {
          qa[c] = qf[QREG ? kk : 0][c];
          tqa[c] = tqf[QREG ? kk : 0][c];
        }
      } else {
        ldsm4(qa, saddr(Qs + arow * LD + kk * 16 + L.a_col));
        ldsm4(tqa, saddr(tQs + arow * LD + kk * 16 + L.a_col));
      }
#pragma unroll
      for (int np = 0; np < BC / 16; ++np) {
        uint32_t kb[4], tkb[4];
        const int off = cur + (np * 16 + L.b_row) * LD + kk * 16 + L.b_col;
        ldsm4(kb, saddr(Ks + off));
        ldsm4(tkb, saddr(tKs + off));
        mma(s[2 * np], qa, kb[0], kb[1]);
        mma(s[2 * np + 1], qa, kb[2], kb[3]);
        mma(ts[2 * np], tqa, kb[0], kb[1]);
        mma(ts[2 * np + 1], tqa, kb[2], kb[3]);
        mma(ts[2 * np], qa, tkb[0], tkb[1]);
        mma(ts[2 * np + 1], qa, tkb[2], tkb[3]);
      }
    }
    if ((j + 1) * BC > M) {
#pragma unroll
      for (int n = 0; n < BC / 8; ++n)
#pragma unroll
        for (int c = 0; c < 4; ++c)
          if (j * BC + n * 8 + 2 * t + (c & 1) >= M) s[n][c] = -INFINITY;
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float mx = -INFINITY;
#pragma unroll
      for (int n = 0; n < BC / 8; ++n) mx = fmaxf(mx, fmaxf(s[n][2 * h], s[n][2 * h + 1]));
      const float mnew = fmaxf(mrow[h], quad_max(mx) * sl2);
      const float ms = mnew == -INFINITY ? 0.f : mnew;
      const float alpha = exp2f(mrow[h] - ms);
      mrow[h] = mnew;
      float rs = 0.f, hs = 0.f;
#pragma unroll
      for (int n = 0; n < BC / 8; ++n)
#pragma unroll
        for (int c = 2 * h; c < 2 * h + 2; ++c) {
          const float p = exp2f(fmaf(s[n][c], sl2, -ms));
          const float hv = p * ts[n][c] * scale;
          s[n][c] = p;
          ts[n][c] = hv;
          rs += p;
          hs += hv;
        }
      lrow[h] = lrow[h] * alpha + rs;
      rrow[h] = rrow[h] * alpha + hs;
#pragma unroll
      for (int n = 0; n < D / 8; ++n) {
        acc[n][2 * h] *= alpha;
        acc[n][2 * h + 1] *= alpha;
        tacc[n][2 * h] *= alpha;
        tacc[n][2 * h + 1] *= alpha;
      }
    }
#pragma unroll
    for (int kk = 0; kk < BC / 16; ++kk) {
      uint32_t ap[4], ah[4];
      acc_to_a(ap, s[2 * kk], s[2 * kk + 1]);
      acc_to_a(ah, ts[2 * kk], ts[2 * kk + 1]);
#pragma unroll
      for (int dp = 0; dp < D / 16; ++dp) {
        uint32_t vb[4], tvb[4];
        const int off = cur + (kk * 16 + L.bt_row) * LD + dp * 16 + L.bt_col;
        ldsm4t(vb, saddr(Vs + off));
        ldsm4t(tvb, saddr(tVs + off));
        mma(acc[2 * dp], ap, vb[0], vb[1]);
        mma(acc[2 * dp + 1], ap, vb[2], vb[3]);
        mma(tacc[2 * dp], ap, tvb[0], tvb[1]);
        mma(tacc[2 * dp + 1], ap, tvb[2], tvb[3]);
        mma(tacc[2 * dp], ah, vb[0], vb[1]);
        mma(tacc[2 * dp + 1], ah, vb[2], vb[3]);
      }
    }
    __syncthreads();
  }

#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const float l = quad_sum(lrow[h]), r = quad_sum(rrow[h]);
    const float inv = 1.f / l, rl = r * inv;
    const int row = q0 + warp * 16 + g + 8 * h;
    if (row < N) {
#pragma unroll
      for (int n = 0; n < D / 8; ++n) {
        const float o0 = acc[n][2 * h] * inv, o1 = acc[n][2 * h + 1] * inv;
        const size_t at = size_t(row) * D + n * 8 + 2 * t;
        *reinterpret_cast<uint32_t*>(o + at) = pack(o0, o1);
        *reinterpret_cast<uint32_t*>(to + at) =
            pack(tacc[n][2 * h] * inv - rl * o0, tacc[n][2 * h + 1] * inv - rl * o1);
      }
      if (t == 0) {
        if (lse) lse[bh * N + row] = (mrow[h] + log2f(l)) / kLog2e;
        if (tlse) tlse[bh * N + row] = rl;
      }
    }
  }
}

// ---- backward -----------------------------------------------------------------------------------
// Block: 16*NW keys (warp w owns keys w*16..+16), looping over query tiles of BRQ. Per tile, in the
// transposed frame so each warp's keys are MMA rows: S^T = K Q^T, P^T = exp2(S^T sl2 - lse2),
// dV += P^T dO, dP^T = V dO^T, dS^T = P^T (dP^T - delta), dK += dS^T Q; then dS^T goes through
// shared memory and the block adds its part of dQ = dS K into the f32 accumulator with atomics.
template <int D, int BRQ, bool KVREG, int NW>
__global__ void __launch_bounds__(NW * 32)
    bwd_kernel(const bf* __restrict__ q, const bf* __restrict__ k, const bf* __restrict__ v, const bf* __restrict__ go,
               const float* __restrict__ lse, const float* __restrict__ delta, float* __restrict__ dq_accum,
               bf* __restrict__ dk, bf* __restrict__ dv, int N, int M, float scale, float sl2) {
  constexpr int BC = 16 * NW, LD = D + 8, LDS = BRQ + 8, KD = D / 16, KF = KVREG ? KD : 1, NT = NW * 32;
  constexpr int RG = BRQ / 16, WPR = NW / RG, DW = D / WPR;  // dQ split: row groups x column parts
  static_assert(DW % 16 == 0 && WPR * RG == NW, "dQ split must give each warp 16-column blocks");
  extern __shared__ __align__(16) unsigned char smem[];
  bf* Ks = reinterpret_cast<bf*>(smem);
  bf* Vs = Ks + BC * LD;
  bf* Qs = Vs + BC * LD;      // 2 stages
  bf* dOs = Qs + 2 * BRQ * LD;  // 2 stages
  bf* dSs = dOs + 2 * BRQ * LD;
  float* Ls = reinterpret_cast<float*>(dSs + BC * LDS);  // 2 stages of lse * log2(e)
  float* Ds = Ls + 2 * BRQ;                             // 2 stages of delta
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
  const Lanes L(lane);
  const size_t bh = blockIdx.y;
  q += bh * N * D;
  go += bh * N * D;
  dq_accum += bh * N * D;
  lse += bh * N;
  delta += bh * N;
  k += bh * M * D;
  v += bh * M * D;
  dk += bh * M * D;
  dv += bh * M * D;
  const int k0 = blockIdx.x * BC, nq = (N + BRQ - 1) / BRQ;
  // Past the last query, lse = +inf makes P = 0, so padded rows add nothing anywhere.
  auto load_rowstats = [&](int i, int buf) {
    if (tid < BRQ) {
      const int r = i * BRQ + tid;
      Ls[buf * BRQ + tid] = r < N ? lse[r] * kLog2e : INFINITY;
      Ds[buf * BRQ + tid] = r < N ? delta[r] : 0.f;
    }
  };

  load_tile<BC, D, NT>(Ks, k, k0, M, tid);
  load_tile<BC, D, NT>(Vs, v, k0, M, tid);
  load_tile<BRQ, D, NT>(Qs, q, 0, N, tid);
  load_tile<BRQ, D, NT>(dOs, go, 0, N, tid);
  cp_commit();
  load_rowstats(0, 0);

  uint32_t kf[KF][4], vf[KF][4];
  float dka[D / 8][4], dva[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n)
#pragma unroll
    for (int c = 0; c < 4; ++c) dka[n][c] = dva[n][c] = 0.f;
  const int krow = warp * 16 + L.a_row;

  for (int i = 0; i < nq; ++i) {
    const int buf = i & 1;
    if (i + 1 < nq) {
      load_tile<BRQ, D, NT>(Qs + (buf ^ 1) * BRQ * LD, q, (i + 1) * BRQ, N, tid);
      load_tile<BRQ, D, NT>(dOs + (buf ^ 1) * BRQ * LD, go, (i + 1) * BRQ, N, tid);
      cp_commit();
      load_rowstats(i + 1, buf ^ 1);
      cp_wait<1>();
    } else {
      cp_wait<0>();
    }
    __syncthreads();
    if (KVREG && i == 0) {
#pragma unroll
      for (int kk = 0; kk < KF; ++kk) {
        ldsm4(kf[kk], saddr(Ks + krow * LD + kk * 16 + L.a_col));
        ldsm4(vf[kk], saddr(Vs + krow * LD + kk * 16 + L.a_col));
      }
    }
    const bf* Qb = Qs + buf * BRQ * LD;
    const bf* dOb = dOs + buf * BRQ * LD;
    const float* Lb = Ls + buf * BRQ;
    const float* Db = Ds + buf * BRQ;

    float st[BRQ / 8][4], dpt[BRQ / 8][4];
#pragma unroll
    for (int n = 0; n < BRQ / 8; ++n)
#pragma unroll
      for (int c = 0; c < 4; ++c) st[n][c] = dpt[n][c] = 0.f;
#pragma unroll
    for (int kk = 0; kk < KD; ++kk) {
      uint32_t ka[4], va[4];
      if (KVREG) {
#pragma unroll
        for (int c = 0; c < 4; ++c) {
          ka[c] = kf[KVREG ? kk : 0][c];
          va[c] = vf[KVREG ? kk : 0][c];
        }
      } else {
        ldsm4(ka, saddr(Ks + krow * LD + kk * 16 + L.a_col));
        ldsm4(va, saddr(Vs + krow * LD + kk * 16 + L.a_col));
      }
#pragma unroll
      for (int np = 0; np < BRQ / 16; ++np) {
        uint32_t b[4];
        const int off = (np * 16 + L.b_row) * LD + kk * 16 + L.b_col;
        ldsm4(b, saddr(Qb + off));
        mma(st[2 * np], ka, b[0], b[1]);
        mma(st[2 * np + 1], ka, b[2], b[3]);
        ldsm4(b, saddr(dOb + off));
        mma(dpt[2 * np], va, b[0], b[1]);
        mma(dpt[2 * np + 1], va, b[2], b[3]);
      }
    }
#pragma unroll
    for (int n = 0; n < BRQ / 8; ++n)
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const int col = n * 8 + 2 * t + (c & 1);
        const float p = exp2f(fmaf(st[n][c], sl2, -Lb[col]));
        st[n][c] = p;
        dpt[n][c] = p * (dpt[n][c] - Db[col]);
      }
#pragma unroll
    for (int kk = 0; kk < BRQ / 16; ++kk) {
      uint32_t ap[4], as[4];
      acc_to_a(ap, st[2 * kk], st[2 * kk + 1]);
      acc_to_a(as, dpt[2 * kk], dpt[2 * kk + 1]);
#pragma unroll
      for (int dp = 0; dp < D / 16; ++dp) {
        uint32_t b[4];
        const int off = (kk * 16 + L.bt_row) * LD + dp * 16 + L.bt_col;
        ldsm4t(b, saddr(dOb + off));
        mma(dva[2 * dp], ap, b[0], b[1]);
        mma(dva[2 * dp + 1], ap, b[2], b[3]);
        ldsm4t(b, saddr(Qb + off));
        mma(dka[2 * dp], as, b[0], b[1]);
        mma(dka[2 * dp + 1], as, b[2], b[3]);
      }
    }
#pragma unroll
    for (int n = 0; n < BRQ / 8; ++n)
#pragma unroll
      for (int h = 0; h < 2; ++h)
        *reinterpret_cast<uint32_t*>(dSs + (warp * 16 + g + 8 * h) * LDS + n * 8 + 2 * t) =
            pack(dpt[n][2 * h], dpt[n][2 * h + 1]);
    __syncthreads();
    {
      const int rg = warp % RG, part = warp / RG;
      float dqa[DW / 8][4];
#pragma unroll
      for (int n = 0; n < DW / 8; ++n)
#pragma unroll
        for (int c = 0; c < 4; ++c) dqa[n][c] = 0.f;
#pragma unroll
      for (int kk = 0; kk < BC / 16; ++kk) {
        uint32_t a[4];
        ldsm4t(a, saddr(dSs + (kk * 16 + L.at_row) * LDS + rg * 16 + L.at_col));
#pragma unroll
        for (int dp = 0; dp < DW / 16; ++dp) {
          uint32_t b[4];
          ldsm4t(b, saddr(Ks + (kk * 16 + L.bt_row) * LD + part * DW + dp * 16 + L.bt_col));
          mma(dqa[2 * dp], a, b[0], b[1]);
          mma(dqa[2 * dp + 1], a, b[2], b[3]);
        }
      }
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int row = i * BRQ + rg * 16 + g + 8 * h;
        if (row < N) {
#pragma unroll
          for (int n = 0; n < DW / 8; ++n)
            atomicAdd(reinterpret_cast<float2*>(dq_accum + size_t(row) * D + part * DW + n * 8 + 2 * t),
                      make_float2(dqa[n][2 * h], dqa[n][2 * h + 1]));
        }
      }
    }
    __syncthreads();  // dS and this stage's Q/dO are overwritten next
  }

#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int key = k0 + warp * 16 + g + 8 * h;
    if (key < M) {
#pragma unroll
      for (int n = 0; n < D / 8; ++n) {
        const size_t at = size_t(key) * D + n * 8 + 2 * t;
        *reinterpret_cast<uint32_t*>(dk + at) = pack(dka[n][2 * h] * scale, dka[n][2 * h + 1] * scale);
        *reinterpret_cast<uint32_t*>(dv + at) = pack(dva[n][2 * h], dva[n][2 * h + 1]);
      }
    }
  }
}

// Dynamic shared memory above 48 KB needs an opt-in per kernel, once.
template <class K>
void allow_smem(K kern, size_t bytes) {
  if (bytes > 48 * 1024)
    DF_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)), "attention");
}

template <int D, int MR, int BC, int NW>
void launch_fwd(const Dims& d, float scale, const void* q, const void* k, const void* v, void* o, float* lse,
                cudaStream_t s) {
  constexpr int BR = 16 * MR * NW, LD = D + 8;
  constexpr size_t smem = size_t(BR + 4 * BC) * LD * sizeof(bf);
  static const bool ready = (allow_smem(fwd_kernel<D, MR, BC, NW>, smem), true);
  (void)ready;
  dim3 grid(unsigned((d.N + BR - 1) / BR), unsigned(d.B * d.H));
  fwd_kernel<D, MR, BC, NW><<<grid, NW * 32, smem, s>>>(static_cast<const bf*>(q), static_cast<const bf*>(k),
                                                        static_cast<const bf*>(v), static_cast<bf*>(o), lse,
                                                        int(d.N), int(d.M), scale * kLog2e);
  DF_CUDA_LAUNCHED("attention forward");
}

template <int D, int BC, bool QREG, int NW>
void launch_jvp(const Dims& d, float scale, const void* q, const void* k, const void* v, const void* tq,
                const void* tk, const void* tv, void* o, void* to, float* lse, float* tlse, cudaStream_t s) {
  constexpr int BR = 16 * NW, LD = D + 8;
  constexpr size_t smem = size_t(2 * BR + 8 * BC) * LD * sizeof(bf);
  static const bool ready = (allow_smem(jvp_kernel<D, BC, QREG, NW>, smem), true);
  (void)ready;
  dim3 grid(unsigned((d.N + BR - 1) / BR), unsigned(d.B * d.H));
  auto c = [](const void* p) { return static_cast<const bf*>(p); };
  jvp_kernel<D, BC, QREG, NW><<<grid, NW * 32, smem, s>>>(c(q), c(k), c(v), c(tq), c(tk), c(tv),
                                                          static_cast<bf*>(o), static_cast<bf*>(to), lse, tlse,
                                                          int(d.N), int(d.M), scale * kLog2e, scale);
  DF_CUDA_LAUNCHED("attention jvp");
}

template <int D, int BRQ, bool KVREG, int NW>
void launch_bwd(const Dims& d, float scale, const void* q, const void* k, const void* v, const void* go,
                const float* lse, const float* delta, float* dq_accum, void* dk, void* dv, cudaStream_t s) {
  constexpr int BC = 16 * NW, LD = D + 8;
  constexpr size_t smem = size_t(2 * BC + 4 * BRQ) * LD * sizeof(bf) + size_t(BC) * (BRQ + 8) * sizeof(bf) +
                          size_t(4) * BRQ * sizeof(float);
  static const bool ready = (allow_smem(bwd_kernel<D, BRQ, KVREG, NW>, smem), true);
  (void)ready;
  dim3 grid(unsigned((d.M + BC - 1) / BC), unsigned(d.B * d.H));
  auto c = [](const void* p) { return static_cast<const bf*>(p); };
  bwd_kernel<D, BRQ, KVREG, NW><<<grid, NW * 32, smem, s>>>(c(q), c(k), c(v), c(go), lse, delta, dq_accum,
                                                            static_cast<bf*>(dk), static_cast<bf*>(dv), int(d.N),
                                                            int(d.M), scale, scale * kLog2e);
  DF_CUDA_LAUNCHED("attention backward");
}

}  // namespace

// Warps per block: the caller's choice (set_tc_block_warps), else the default per kernel, picked from
// the measurements in bench/attention_notes.md.
static int warps_for(int dflt) {
  const int w = tc_block_warps();
  return w == 4 || w == 8 ? w : dflt;
}

void forward(const Dims& d, float scale, const void* q, const void* k, const void* v, void* o, float* lse,
             cudaStream_t s) {
  const bool w8 = warps_for(kDefaultWarpsFwd) == 8;
  switch (d.D) {
    case 32: return w8 ? launch_fwd<32, 2, 64, 8>(d, scale, q, k, v, o, lse, s)
                       : launch_fwd<32, 2, 64, 4>(d, scale, q, k, v, o, lse, s);
    case 64: return w8 ? launch_fwd<64, 2, 64, 8>(d, scale, q, k, v, o, lse, s)
                       : launch_fwd<64, 2, 64, 4>(d, scale, q, k, v, o, lse, s);
    default: return w8 ? launch_fwd<128, 1, 64, 8>(d, scale, q, k, v, o, lse, s)
                       : launch_fwd<128, 1, 64, 4>(d, scale, q, k, v, o, lse, s);
  }
}

void jvp(const Dims& d, float scale, const void* q, const void* k, const void* v, const void* tq, const void* tk,
         const void* tv, void* o, void* to, float* lse, float* tlse, cudaStream_t s) {
  const bool w8 = warps_for(kDefaultWarpsJvp) == 8;
  switch (d.D) {
    case 32: return w8 ? launch_jvp<32, 64, true, 8>(d, scale, q, k, v, tq, tk, tv, o, to, lse, tlse, s)
                       : launch_jvp<32, 64, true, 4>(d, scale, q, k, v, tq, tk, tv, o, to, lse, tlse, s);
    case 64: return w8 ? launch_jvp<64, 64, true, 8>(d, scale, q, k, v, tq, tk, tv, o, to, lse, tlse, s)
                       : launch_jvp<64, 64, true, 4>(d, scale, q, k, v, tq, tk, tv, o, to, lse, tlse, s);
    default: return w8 ? launch_jvp<128, 32, false, 8>(d, scale, q, k, v, tq, tk, tv, o, to, lse, tlse, s)
                       : launch_jvp<128, 32, false, 4>(d, scale, q, k, v, tq, tk, tv, o, to, lse, tlse, s);
  }
}

void backward(const Dims& d, float scale, const void* q, const void* k, const void* v, const void* go,
              const float* lse, const float* delta, float* dq_accum, void* dk, void* dv, cudaStream_t s) {
  const bool w8 = warps_for(default_warps_bwd(d.D)) == 8;
  switch (d.D) {
    case 32: return w8 ? launch_bwd<32, 64, true, 8>(d, scale, q, k, v, go, lse, delta, dq_accum, dk, dv, s)
                       : launch_bwd<32, 64, true, 4>(d, scale, q, k, v, go, lse, delta, dq_accum, dk, dv, s);
    case 64: return w8 ? launch_bwd<64, 64, true, 8>(d, scale, q, k, v, go, lse, delta, dq_accum, dk, dv, s)
                       : launch_bwd<64, 64, true, 4>(d, scale, q, k, v, go, lse, delta, dq_accum, dk, dv, s);
    default: return w8 ? launch_bwd<128, 32, false, 8>(d, scale, q, k, v, go, lse, delta, dq_accum, dk, dv, s)
                       : launch_bwd<128, 32, false, 4>(d, scale, q, k, v, go, lse, delta, dq_accum, dk, dv, s);
  }
}

}  // namespace df::attn::tc
