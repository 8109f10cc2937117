// bf16 attention on Hopper's warpgroup MMA (wgmma, sm_90a): forward and the one-pass JVP for head
// dims 64 and 128. A block is NWG warpgroups of 128 threads; warpgroup w owns 64 query rows.
// K, V (and tK, tV) tiles are staged in shared memory, by cp.async or by TMA, in the layout wgmma
// descriptors read (128-byte swizzle, 2-5 stages); Q (and tQ) stay in shared memory and are the A
// operand of the score products; P (and H = P * dS) go from the score accumulators to the A registers of the
// P V products without leaving registers. Same math, base-2 scores and outputs as attention_tc.cu.
//
// Shared-memory layout of an (R x D) bf16 tile: D/64 panels of 64 columns; in a panel, row r is 128
// bytes at r * 128, and its 16-byte chunk c sits at chunk c ^ (r % 8) (the 128B swizzle, applied by
// the hardware to address bits 4-6 from bits 7-9, so every tile starts 1024-byte aligned). As the B
// operand of S = Q K^T this is "K-major" (8-row groups 1024 bytes apart); as the B operand of O = P V
// it is "N-major" (16 keys per k-step = 2 groups 1024 bytes apart, panels LBO apart).
#include <cuda.h>  // CUtensorMap and its enums (types only: the encoder comes through the runtime)
#include <cuda_bf16.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>

#include "cuda/attention_impl.cuh"
#include "cuda/common.cuh"

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define DF_WGMMA_DEVICE 1
#else
#define DF_WGMMA_DEVICE 0
#endif

namespace df::attn::wg {
namespace {

using bf = __nv_bfloat16;

// Tensor maps of K, V, tK, tV for the TMA loads: kernel parameters, read by the copy engine from
// parameter space (__grid_constant__). Unused (zeroed) by the cp.async kernels.
struct KvMaps {
  CUtensorMap k, v, tk, tv;
};
// The backward's maps: Q and dO (TMA loads of the query tiles; unused by the cp.async kernels) and the
// f32 dQ accumulator (TMA reduce-add).
struct BwdMaps {
  CUtensorMap q, go, dq;
};

#if DF_WGMMA_DEVICE
__device__ __forceinline__ uint32_t saddr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
// mbarriers for the TMA loads: one per stage, one arrival (the thread that issues the copies, which
// also sets the byte count the copies will complete); consumers wait for the phase of the tile.
__device__ __forceinline__ void mbar_init(uint32_t bar, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_init_fence() { asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory"); }
__device__ __forceinline__ void mbar_expect_tx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
  asm volatile(
      "{\n.reg .pred done;\nWAIT:\nmbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n@!done bra WAIT;\n}\n" ::"r"(
          bar),
      "r"(parity)
      : "memory");
}
// One box of a rank-3 tensor map (columns c0.., rows c1.., head c2) into shared memory at dst,
// completing its bytes on bar. Rows past the map's extent arrive as zeros.
__device__ __forceinline__ void tma_load(uint32_t dst, const CUtensorMap* map, int c0, int c1, int c2, uint32_t bar) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4}], [%5];\n" ::"r"(
          dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(bar)
      : "memory");
}
// Rows [row0, row0 + R) of head bh of a mapped (B H, M, D) tensor into the swizzled tile layout
// (the map's 128B swizzle is the layout's: box = one 64-column panel of R rows).
template <int R, int D>
__device__ __forceinline__ void tma_tile(uint32_t s, const CUtensorMap* map, int row0, int bh, uint32_t bar) {
#pragma unroll
  for (int p = 0; p < D / 64; ++p) tma_load(s + p * (R * 128), map, 64 * p, row0, bh, bar);
}

// One box of f32 in shared memory (the map's box, 128B-swizzled) added into global memory at
// (c0, c1, c2) by the copy engine; the L2 does the adds on whole lines. Coordinates past the map's
// extent are dropped. Bulk groups: commit, then wait until at most N groups still read shared memory
// (read) or have not completed (wait_all).
__device__ __forceinline__ void tma_reduce_add(const CUtensorMap* map, uint32_t src, int c0, int c1, int c2) {
  asm volatile(
      "cp.reduce.async.bulk.tensor.3d.global.shared::cta.add.tile.bulk_group [%0, {%1, %2, %3}], [%4];\n" ::"l"(
          reinterpret_cast<uint64_t>(map)),
      "r"(c0), "r"(c1), "r"(c2), "r"(src)
      : "memory");
}
__device__ __forceinline__ void bulk_commit() { asm volatile("cp.async.bulk.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void bulk_wait_read() {
  asm volatile("cp.async.bulk.wait_group.read %0;\n" ::"n"(N) : "memory");
}
__device__ __forceinline__ void bulk_wait_all() { asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory"); }

// cp.async writes are generic-proxy writes; wgmma reads shared memory through the async proxy.
__device__ __forceinline__ void fence_async_smem() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
__device__ __forceinline__ void wg_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wg_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wg_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Pins accumulator registers in program order around the asynchronous MMAs (the compiler sees the
// wgmma asm as producing them at issue; this keeps later reads after the wait).
template <int R>
__device__ __forceinline__ void pin(float (&d)[R]) {
#pragma unroll
  for (int i = 0; i < R; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// Shared-memory matrix descriptor: start address, leading and stride byte offsets, 128B swizzle.
__device__ __forceinline__ uint64_t desc(uint32_t addr, uint32_t lbo, uint32_t sbo) {
  return uint64_t((addr & 0x3FFFF) >> 4) | (uint64_t((lbo >> 4) & 0x3FFF) << 16) |
         (uint64_t((sbo >> 4) & 0x3FFF) << 32) | (uint64_t(1) << 62);
}
// The k-steps of a tile are its descriptor plus (byte offset) / 16: the start-address field is the
// lowest 14 bits and shared addresses (< 228 KB) never carry out of it. Written so, a tile's
// descriptor is built once and each k-step is one add; built from each k-step's address (masked,
// shifted, or-ed) they cost 6-8% of the main loops' instructions.
// k-step kk (16 columns) of a K-major operand tile with R rows per panel.
template <int R>
__device__ __forceinline__ uint64_t desc_kmajor(uint32_t tile, int kk) {
  return desc(tile, 16, 1024) + uint32_t(((kk >> 2) * (R * 128) + (kk & 3) * 32) >> 4);
}
// k-step kk (16 rows) of an N-major operand tile with R rows per panel (panels are the N repeats).
template <int R>
__device__ __forceinline__ uint64_t desc_nmajor(uint32_t tile, int kk) {
  return desc(tile, R * 128, 1024) + uint32_t((kk * 16 * 128) >> 4);
}

// Rows [row0, row0 + R) of an (nrows x D) bf16 matrix into the swizzled layout; rows past the end
// are zero-filled.
template <int R, int D, int NT>
__device__ __forceinline__ void load_tile(uint32_t s, const bf* g, int row0, int nrows, int tid) {
  constexpr int CPR = D / 8;
  static_assert((R * CPR) % NT == 0, "tile must split evenly over the block");
#pragma unroll
  for (int it = 0; it < R * CPR / NT; ++it) {
    const int c = tid + it * NT, r = c / CPR, ch = c % CPR;
    const bool ok = row0 + r < nrows;
    const uint32_t dst = s + (ch >> 3) * (R * 128) + r * 128 + (((ch & 7) ^ (r & 7)) << 4);
    cp_async16(dst, g + size_t(ok ? row0 + r : 0) * D + ch * 8, ok);
  }
}

__device__ __forceinline__ uint32_t pack(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}
// Four 8 x 8 bf16 matrices from accumulator-layout fragments (lane 4 r + c holds row r, columns
// 2c, 2c + 1 of each) into shared memory transposed: lanes 8 i .. 8 i + 7 give the addresses of the
// 16-byte rows of matrix i, and row c receives column c of fragment i.
__device__ __forceinline__ void stmatrix_x4_trans(uint32_t addr, const uint32_t (&r)[4]) {
  asm volatile("stmatrix.sync.aligned.m8n8.x4.trans.shared.b16 [%0], {%1, %2, %3, %4};\n" ::"r"(addr), "r"(r[0]),
               "r"(r[1]), "r"(r[2]), "r"(r[3])
               : "memory");
}
// 2^x on the special-function unit alone: exp2f's non-ftz form adds denormal fix-ups around each
// MUFU.EX2, and the softmax is as costly as the products at head dim 64. Flushing results below
// 2^-126 to zero changes no probability that matters next to the row's maximum (which gives 1).
__device__ __forceinline__ float exp2_ftz(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}
// This thread's warpgroup in a block of NWG, as a value the compiler knows to be uniform across the
// warp (a broadcast from lane 0; the constant 0 for one warpgroup): Q's descriptors built from it
// then stay in uniform registers instead of being moved there before every wgmma.
template <int NWG>
__device__ __forceinline__ int warpgroup() {
  return NWG == 1 ? 0 : __shfl_sync(0xffffffffu, int(threadIdx.x) >> 7, 0);
}
__device__ __forceinline__ float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

// d (64 x 32, f32) = A (64 x 16, smem, K-major) * B (16 x 32, smem, K-major) + (accumulate ? d : 0).
__device__ __forceinline__ void wgmma_ss32(float (&d)[16], uint64_t da, uint64_t db, int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %18, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, %16, %17, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
      : "l"(da), "l"(db), "r"(accumulate));
}
// d (64 x 64, f32) = A (64 x 16, smem, K-major) * B (16 x 64, smem, K-major) + (accumulate ? d : 0).
__device__ __forceinline__ void wgmma_ss64(float (&d)[32], uint64_t da, uint64_t db, int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "l"(da), "l"(db), "r"(accumulate));
}
// d (64 x 128, f32) = A (64 x 16, smem, K-major) * B (16 x 128, smem, K-major) + (accumulate ? d : 0).
__device__ __forceinline__ void wgmma_ss128(float (&d)[64], uint64_t da, uint64_t db, int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "l"(da), "l"(db), "r"(accumulate));
}
// d (64 x 64, f32) += A (64 x 16, bf16 registers) * B (16 x 64, smem, N-major).
__device__ __forceinline__ void wgmma_rs64(float (&d)[32], const uint32_t (&a)[4], uint64_t db) {
  asm volatile(
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, {%32, %33, %34, %35}, %36, 1, 1, 1, 1;\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db));
}
// d (64 x 128, f32) += A (64 x 16, bf16 registers) * B (16 x 128, smem, N-major).
__device__ __forceinline__ void wgmma_rs128(float (&d)[64], const uint32_t (&a)[4], uint64_t db) {
  asm volatile(
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, {%64, %65, %66, %67}, %68, 1, 1, 1, 1;\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db));
}

// d (64 x 64, f32) = A (64 x 16, smem, K-major) * B (16 x 64, smem, N-major) + (accumulate ? d : 0).
__device__ __forceinline__ void wgmma_ss64_tb(float (&d)[32], uint64_t da, uint64_t db, int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, p, 1, 1, 0, 1;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "l"(da), "l"(db), "r"(accumulate));
}
// d (64 x 128, f32) = A (64 x 16, smem, K-major) * B (16 x 128, smem, N-major) + (accumulate ? d : 0).
__device__ __forceinline__ void wgmma_ss128_tb(float (&d)[64], uint64_t da, uint64_t db, int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p, 1, 1, 0, 1;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "l"(da), "l"(db), "r"(accumulate));
}
// Online softmax of one key tile for the two rows (g, g + 8) a thread holds in each 8-column chunk:
// s (raw scores, accumulator layout s[4n + c]) becomes P = exp2(s * sl2 - m) and the tile's row
// sums (per-lane partials) are added into l. m is a running reference, not the running max: any m
// gives the same O / l and m + log2 l as long as P neither overflows nor loses its largest terms.
//   The first tile sets m to its row maxima (softmax_max). After it, a tile's exponentials are taken
//   against m as it stands, with no maximum (a max costs one instruction per score, and at head dim
//   64 the loop is bound by instruction issue). The row sums say whether m fell behind: when every
//   row sum of the warp stays below kBig, m stands (P <= kBig). Otherwise (rare: the maximum grew by
//   a factor of about kBig since m was set) the warp rebases: each row whose P exceeds 1 takes m +=
//   e and P, l times alpha = 2^-e, e the exponent that brings its largest P into [0.5, 1). If some P
//   overflowed (a jump of 2^128), the tile's scores are recomputed from shared memory (`scores`) and
//   take the exact update. The return value says whether alpha changed; only then must the caller
//   rescale its accumulators by alpha.
// softmax_max: the exact update with a lazy maximum: a row keeps its m while the tile's maximum stays
// within kLazy of it; when some row of the warp outgrows its m, every row of the warp takes the new
// maximum and alpha = exp2(m_old - m_new).
constexpr float kLazy = 8.f, kBig = 256.f;
template <int BC>
__device__ __forceinline__ void mask_tail(float (&s)[BC / 2], int col0, int M, int t) {
  if (col0 + BC > M) {
#pragma unroll
    for (int n = 0; n < BC / 8; ++n)
#pragma unroll
      for (int c = 0; c < 4; ++c)
        if (col0 + n * 8 + 2 * t + (c & 1) >= M) s[4 * n + c] = -INFINITY;
  }
}
// P = exp2(s sl2 - m) in place for row h (h = 0: row g, 1: row g + 8; m = -inf, a row with no key
// yet, is taken as 0); returns this lane's part of the row's sum, added in four chains (a sum needed
// at once, as online_softmax's test needs it, would otherwise wait on one chain of BC / 4 adds).
template <int BC>
__device__ __forceinline__ float exp_row(float (&s)[BC / 2], int h, float m, float sl2) {
  const float ms = m == -INFINITY ? 0.f : m;
  float part[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
  for (int n = 0; n < BC / 8; ++n)
#pragma unroll
    for (int c = 2 * h; c < 2 * h + 2; ++c) {
      const float p = exp2_ftz(fmaf(s[4 * n + c], sl2, -ms));
      s[4 * n + c] = p;
      part[(2 * n + c) & 3] += p;
    }
  return (part[0] + part[1]) + (part[2] + part[3]);
}
template <int BC>
__device__ __forceinline__ bool softmax_max(float (&s)[BC / 2], float (&m)[2], float (&l)[2], float (&alpha)[2],
                                            float sl2) {
  float mt[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    float mx = fmaxf(s[2 * h], s[2 * h + 1]);
#pragma unroll
    for (int n = 1; n < BC / 8; ++n) mx = fmaxf(mx, fmaxf(s[4 * n + 2 * h], s[4 * n + 2 * h + 1]));
    mt[h] = quad_max(mx) * sl2;
  }
  const bool grow = __any_sync(0xffffffffu, mt[0] > m[0] + kLazy || mt[1] > m[1] + kLazy);
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    if (grow) {
      const float mnew = fmaxf(m[h], mt[h]);
      alpha[h] = exp2_ftz(m[h] - (mnew == -INFINITY ? 0.f : mnew));
      m[h] = mnew;
    }
    l[h] = (grow ? l[h] * alpha[h] : l[h]) + exp_row<BC>(s, h, m[h], sl2);
  }
  return grow;
}
template <int BC, class Scores>
__device__ __forceinline__ bool softmax_rebase(float (&s)[BC / 2], float (&m)[2], float (&l)[2], float (&alpha)[2],
                                            const float (&rs)[2], int col0, int M, int t, float sl2, Scores& scores) {
  if (__any_sync(0xffffffffu, isinf(rs[0]) || isinf(rs[1]))) {
    scores(s);
    mask_tail<BC>(s, col0, M, t);
    return softmax_max<BC>(s, m, l, alpha, sl2);
  }
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    float mx = 0.f;
#pragma unroll
    for (int n = 0; n < BC / 8; ++n) mx = fmaxf(mx, fmaxf(s[4 * n + 2 * h], s[4 * n + 2 * h + 1]));
    mx = quad_max(mx);
    // 2^e > mx >= 2^(e-1); e <= 126 keeps alpha a normal float (then P <= 4)
    const int e = mx > 1.f ? min(int((__float_as_uint(mx) >> 23) & 0xff) - 126, 126) : 0;
    alpha[h] = __uint_as_float(uint32_t(127 - e) << 23);
    m[h] += float(e);
#pragma unroll
    for (int n = 0; n < BC / 8; ++n)
#pragma unroll
      for (int c = 2 * h; c < 2 * h + 2; ++c) s[4 * n + c] *= alpha[h];
    l[h] = (l[h] + rs[h]) * alpha[h];
  }
  return true;
}
template <int BC, class Scores>
__device__ __forceinline__ bool online_softmax(float (&s)[BC / 2], float (&m)[2], float (&l)[2], float (&alpha)[2],
                                               int col0, int M, int t, float sl2, Scores&& scores) {
  mask_tail<BC>(s, col0, M, t);
  if (col0 == 0) return softmax_max<BC>(s, m, l, alpha, sl2);
  const float rs[2] = {exp_row<BC>(s, 0, m[0], sl2), exp_row<BC>(s, 1, m[1], sl2)};
  if (__builtin_expect(__any_sync(0xffffffffu, rs[0] >= kBig || rs[1] >= kBig), 0))  // false for NaN rows
    return softmax_rebase<BC>(s, m, l, alpha, rs, col0, M, t, sl2, scores);
  l[0] += rs[0];
  l[1] += rs[1];
  return false;
}

// Raw scores of this thread's tile elements (rows r0 + g, r0 + g + 8 of the warpgroup's Q rows at
// qw, keys 8 n + 2 t + 0/1 of the K tile at kt) on the CUDA cores, from the swizzled tiles in shared
// memory: the rare path of online_softmax, when a tile's exponentials overflowed.
// The loop over elements stays rolled (it is rare and would otherwise add ~1500 instructions to the
// main loop's code); it writes a local scratch array, copied into s once, so that s itself is never
// indexed at run time (which would move it to local memory on every path).
template <int D, int BR, int BC>
__device__ __forceinline__ void scores_simt(float (&s)[BC / 2], uint32_t qw, uint32_t kt, int r0, int g, int t) {
  float tmp[BC / 2];
#pragma unroll 1
  for (int i = 0; i < BC / 2; ++i) {
    const int n = i >> 2, c = i & 3, r = r0 + g + 8 * (c >> 1), key = 8 * n + 2 * t + (c & 1);
    float acc = 0.f;
#pragma unroll 1
    for (int d8 = 0; d8 < D / 8; ++d8) {
      const int pnl = d8 >> 3, ch = d8 & 7;
      uint4 a, b;
      asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];\n"
                   : "=r"(a.x), "=r"(a.y), "=r"(a.z), "=r"(a.w)
                   : "r"(qw + pnl * (BR * 128) + r * 128 + ((ch ^ (r & 7)) << 4)));
      asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];\n"
                   : "=r"(b.x), "=r"(b.y), "=r"(b.z), "=r"(b.w)
                   : "r"(kt + pnl * (BC * 128) + key * 128 + ((ch ^ (key & 7)) << 4)));
      const uint32_t av[4] = {a.x, a.y, a.z, a.w}, bv[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
      for (int w = 0; w < 4; ++w) {
        const float2 x = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&av[w]));
        const float2 y = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&bv[w]));
        acc = fmaf(x.x, y.x, fmaf(x.y, y.y, acc));
      }
    }
    tmp[i] = acc;
  }
#pragma unroll
  for (int i = 0; i < BC / 2; ++i) s[i] = tmp[i];
}

template <int R>
__device__ __forceinline__ void rescale(float (&acc)[R], const float (&alpha)[2]) {
#pragma unroll
  for (int i = 0; i < R; ++i) acc[i] *= alpha[(i >> 1) & 1];
}

// Accumulator columns 16 kk .. 16 kk + 15 as the A fragment of a k16 step.
template <int R>
__device__ __forceinline__ void to_a(uint32_t (&a)[4], const float (&s)[R], int kk) {
  a[0] = pack(s[8 * kk + 0], s[8 * kk + 1]);
  a[1] = pack(s[8 * kk + 2], s[8 * kk + 3]);
  a[2] = pack(s[8 * kk + 4], s[8 * kk + 5]);
  a[3] = pack(s[8 * kk + 6], s[8 * kk + 7]);
}

template <int N>
struct Mma;
template <>
struct Mma<32> {  // scores of 32-key tiles (JVP at head dim 128, small blocks)
  static __device__ __forceinline__ void ss(float (&d)[16], uint64_t a, uint64_t b, int acc) { wgmma_ss32(d, a, b, acc); }
};
template <>
struct Mma<64> {
  static __device__ __forceinline__ void ss(float (&d)[32], uint64_t a, uint64_t b, int acc) { wgmma_ss64(d, a, b, acc); }
  static __device__ __forceinline__ void rs(float (&d)[32], const uint32_t (&a)[4], uint64_t b) { wgmma_rs64(d, a, b); }
  static __device__ __forceinline__ void ss_tb(float (&d)[32], uint64_t a, uint64_t b, int acc) { wgmma_ss64_tb(d, a, b, acc); }
};
template <>
struct Mma<128> {
  static __device__ __forceinline__ void ss(float (&d)[64], uint64_t a, uint64_t b, int acc) { wgmma_ss128(d, a, b, acc); }
  static __device__ __forceinline__ void rs(float (&d)[64], const uint32_t (&a)[4], uint64_t b) { wgmma_rs128(d, a, b); }
  static __device__ __forceinline__ void ss_tb(float (&d)[64], uint64_t a, uint64_t b, int acc) { wgmma_ss128_tb(d, a, b, acc); }
};
#endif  // DF_WGMMA_DEVICE

// Dynamic shared memory: the tiles start 1024-byte aligned (the swizzle's phase), and a launch asks
// for 1024 bytes more than the tiles. The TMA kernels keep their mbarriers and release counts in
// front of the tiles, inside that slack: with the dynamic window starting 1024-aligned (as it does
// when a kernel has no static shared memory) the tiles start at +1024 and the slack is used in full.
// That matters: the head-dim-64 JVP block of config 7 fits two per SM with not one byte to spare. Should the
// window start elsewhere, check_fits stops the kernel rather than let it write past its memory.
constexpr uint32_t kSlackHead = 64;  // bytes in front of the tiles for barriers and counts (TMA)
#if DF_WGMMA_DEVICE
template <bool TMA>
__device__ __forceinline__ uint32_t tile_base(unsigned char* smem) {
  return (saddr(smem) + (TMA ? kSlackHead : 0u) + 1023u) & ~1023u;
}
__device__ __forceinline__ void check_fits(uint32_t end, unsigned char* smem) {
  uint32_t size;
  asm("mov.u32 %0, %%dynamic_smem_size;" : "=r"(size));
  if (end > saddr(smem) + size) __trap();
}

// The TMA stages of both kernels: ST mbarriers at `full` and ST release counts at `rel` (in the
// slack). fill(st, i) issues tile i's loads into stage st and is called by one thread at a time.
template <int ST, class Fill>
__device__ __forceinline__ void tma_start(uint32_t full, unsigned* rel, int tid, int nt, Fill fill) {
  if (tid == 0) {
    for (int i = 0; i < ST; ++i) mbar_init(full + 8 * i, 1);
    mbar_init_fence();
    for (int i = 0; i < ST && i < nt; ++i) fill(i, i);
  }
  if (tid < ST) rel[tid] = 0;
}
// This warp is done reading tile i's stage; the last of the block's NW warps to say so refills it
// with tile i + ST.
template <int ST, int NW, class Fill>
__device__ __forceinline__ void tma_release(unsigned* rel, int i, int nt, int lane, Fill fill) {
  if (i + ST >= nt) return;
  __syncwarp();
  if (lane == 0) {
    __threadfence_block();
    if (atomicAdd(&rel[i % ST], 1u) % NW == NW - 1) {
      __threadfence_block();
      fill(i % ST, i + ST);
    }
  }
  __syncwarp();
}
#endif

// ---- forward ------------------------------------------------------------------------------------
// Block: 64 * NWG query rows, key tiles of BC. Per tile and warpgroup: S = Q K^T (wgmma, both
// operands in shared memory), online softmax in registers, O += P V (P from registers).
// PIPE (three K/V stages): the P V product of tile j-1 is issued right after S of tile j, so the
// tensor cores run it while the warpgroup does the softmax of tile j; O is rescaled once it lands.
// Without PIPE (two stages) each product is waited for before the next step.
// How K and V reach shared memory:
//   cp.async (TMA false): every thread copies its share of the tile PF ahead; a block barrier per
//     tile says the tile landed and orders each stage's reuse.
//   TMA: the copy engine loads each tile (maps.k, maps.v) and the stage's mbarrier ("full") says when
//     it has landed. There is no block barrier in the loop: each warp, once its products have read
//     a stage, adds one to the stage's release count, and the warp that completes the count refills
//     the stage with the tile ST ahead, so warpgroups drift apart freely. Q is loaded by cp.async.
template <int D, int BC, int NWG, bool PIPE, int ST, int MINB, bool TMA>
__global__ void __launch_bounds__(NWG * 128, MINB)
    fwd_kernel(const bf* __restrict__ q, const bf* __restrict__ k, const bf* __restrict__ v, bf* __restrict__ o,
               float* __restrict__ lse, int N, int M, float sl2, const __grid_constant__ KvMaps maps) {
#if DF_WGMMA_DEVICE
  // Tiles j + 1 .. j + PF are in flight while tile j is used; the stage refilled at tile j held tile
  // j + PF - ST, whose last reader (the P V of tile j - 1 with PIPE, of tile j without) is done.
  constexpr int BR = 64 * NWG, NT = NWG * 128, PF = PIPE ? ST - 2 : ST - 1;
  static_assert(TMA ? ST >= 2 : PF >= 1, "too few stages");
  static_assert(12 * ST <= kSlackHead, "barriers and counts must fit in front of the tiles");
  constexpr uint32_t QB = BR * D * 2, KB = BC * D * 2;
  extern __shared__ unsigned char smem[];
  const uint32_t sQ = tile_base<TMA>(smem), sK = sQ + QB, sV = sK + ST * KB;
  const uint32_t full = saddr(smem);  // TMA: ST mbarriers, then the release counts
  unsigned* const rel = reinterpret_cast<unsigned*>(smem + 8 * ST);
  if (TMA) check_fits(sQ + QB + 2 * ST * KB, smem);
  const int tid = threadIdx.x, wg = warpgroup<NWG>(), wt = tid & 127, lane = tid & 31, g = lane >> 2, t = lane & 3;
  const size_t bh = blockIdx.y;
  q += bh * N * D;
  o += bh * N * D;
  k += bh * M * D;
  v += bh * M * D;
  const int q0 = blockIdx.x * BR, nt = (M + BC - 1) / BC;
  // TMA: tile i into stage st (one thread).
  auto tma_kv = [&](int st, int i) {
    mbar_expect_tx(full + 8 * st, 2 * KB);
    tma_tile<BC, D>(sK + st * KB, &maps.k, i * BC, int(bh), full + 8 * st);
    tma_tile<BC, D>(sV + st * KB, &maps.v, i * BC, int(bh), full + 8 * st);
  };
  auto release = [&](int i) {  // this warp is done reading tile i's stage
    if constexpr (TMA) tma_release<ST, NT / 32>(rel, i, nt, lane, tma_kv);
  };

  load_tile<BR, D, NT>(sQ, q, q0, N, tid);
  if constexpr (TMA) {
    cp_commit();
    tma_start<ST>(full, rel, tid, nt, tma_kv);
    cp_wait<0>();
    fence_async_smem();
    __syncthreads();  // Q is in; the barriers and counts are initialised before anyone uses them
  } else {
#pragma unroll
    for (int i = 0; i < PF; ++i) {
      if (i < nt) {
        load_tile<BC, D, NT>(sK + i * KB, k, i * BC, M, tid);
        load_tile<BC, D, NT>(sV + i * KB, v, i * BC, M, tid);
      }
      cp_commit();  // one group per tile, empty past the end, so the wait count stays uniform
    }
  }

  float acc[D / 2], m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f}, alpha[2] = {1.f, 1.f};
#pragma unroll
  for (int i = 0; i < D / 2; ++i) acc[i] = 0.f;
  const uint32_t qw = sQ + wg * 64 * 128;  // this warpgroup's 64 rows, inside each Q panel
  uint32_t pa[BC / 16][4];                 // P of the previous tile (PIPE)

  for (int j = 0; j < nt; ++j) {
    if constexpr (TMA) {
      mbar_wait(full + 8 * (j % ST), uint32_t((j / ST) & 1));  // tile j landed
    } else {
      cp_wait<PF - 1>();
      fence_async_smem();
      __syncthreads();  // tile j landed for everyone; the stage refilled below is no longer read
    }
    // The next tiles' loads, issued while the products run (their address arithmetic used to sit
    // between the barrier and the first product). Each branch below calls it between its issue and
    // its wait: a branch between them makes ptxas serialise the products (warning C7514).
    auto loads = [&] {
      if constexpr (!TMA) {
        if (j + PF < nt) {
          const uint32_t nxt = ((j + PF) % ST) * KB;
          load_tile<BC, D, NT>(sK + nxt, k, (j + PF) * BC, M, tid);
          load_tile<BC, D, NT>(sV + nxt, v, (j + PF) * BC, M, tid);
        }
        cp_commit();
      }
    };
    const uint32_t kt = sK + (j % ST) * KB, vt = sV + (j % ST) * KB;

    float s[BC / 2];
    wg_fence();
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) Mma<BC>::ss(s, desc_kmajor<BR>(qw, kk), desc_kmajor<BC>(kt, kk), kk > 0);
    wg_commit();
    if (PIPE && j > 0) {
      const uint32_t vp = sV + ((j - 1) % ST) * KB;
      wg_fence();
#pragma unroll
      for (int kk = 0; kk < BC / 16; ++kk) Mma<D>::rs(acc, pa[kk], desc_nmajor<BC>(vp, kk));
      wg_commit();
      loads();
      wg_wait<1>();  // S done; P V of the previous tile may still run
    } else {
      loads();
      wg_wait<0>();
    }
    pin(s);
    const bool grow = online_softmax<BC>(s, m, l, alpha, j * BC, M, t, sl2, [&](float (&x)[BC / 2]) {
      scores_simt<D, BR, BC>(x, qw, kt, (wt >> 5) * 16, g, t);
    });
    if (PIPE) {
      wg_wait<0>();
      if (j > 0) release(j - 1);
    }
    pin(acc);
    if (grow) rescale(acc, alpha);
#pragma unroll
    for (int kk = 0; kk < BC / 16; ++kk) to_a(pa[kk], s, kk);
    if (!PIPE) {
      wg_fence();
#pragma unroll
      for (int kk = 0; kk < BC / 16; ++kk) Mma<D>::rs(acc, pa[kk], desc_nmajor<BC>(vt, kk));
      wg_commit();
      wg_wait<0>();
      pin(acc);
      release(j);
    }
  }
  if (PIPE) {  // the last tile's P V (its stage is not refilled: no prefetch after the last tile)
    const uint32_t vp = sV + ((nt - 1) % ST) * KB;
    wg_fence();
#pragma unroll
    for (int kk = 0; kk < BC / 16; ++kk) Mma<D>::rs(acc, pa[kk], desc_nmajor<BC>(vp, kk));
    wg_commit();
    wg_wait<0>();
    pin(acc);
  }

  const int rbase = q0 + wg * 64 + (wt >> 5) * 16 + g;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const float ls = quad_sum(l[h]), inv = 1.f / ls;
    const int row = rbase + 8 * h;
    if (row < N) {
#pragma unroll
      for (int n = 0; n < D / 8; ++n)
        *reinterpret_cast<uint32_t*>(o + size_t(row) * D + n * 8 + 2 * t) =
            pack(acc[4 * n + 2 * h] * inv, acc[4 * n + 2 * h + 1] * inv);
      if (t == 0 && lse) lse[bh * N + row] = (m[h] + log2f(ls)) / tc::kLog2e;
    }
  }
#elif defined(__CUDA_ARCH__)
  __trap();  // built without sm_90a: never return made-up results
#endif
}

// ---- JVP ----------------------------------------------------------------------------------------
// The recurrence of attention_tc.cu's jvp_kernel: per key tile S = Q K^T, tS = tQ K^T + Q tK^T,
// P = exp2(S sl2 - m), H = P tS scale; l += rowsum P, r += rowsum H, O += P V, T += P tV + H V, all
// rescaled by one alpha. At the end o = O / l, to = T / l - (r / l) o, tlse = r / l. PIPE as in the
// forward: the products of tile j-1 with V and tV run during the softmax of tile j.
// TMA as in the forward (the four tensors K, V, tK, tV share one stage and its barrier).
template <int D, int BC, int NWG, bool PIPE, int ST, int MINB, bool TMA>
__global__ void __launch_bounds__(NWG * 128, MINB)
    jvp_kernel(const bf* __restrict__ q, const bf* __restrict__ k, const bf* __restrict__ v, const bf* __restrict__ tq,
               const bf* __restrict__ tk, const bf* __restrict__ tv, bf* __restrict__ o, bf* __restrict__ to,
               float* __restrict__ lse, float* __restrict__ tlse, int N, int M, float sl2, float scale,
               const __grid_constant__ KvMaps maps) {
#if DF_WGMMA_DEVICE
  // Tiles j + 1 .. j + PF are in flight while tile j is used; the stage refilled at tile j held tile
  // j + PF - ST, whose last reader (the P V of tile j - 1 with PIPE, of tile j without) is done.
  constexpr int BR = 64 * NWG, NT = NWG * 128, PF = PIPE ? ST - 2 : ST - 1;
  static_assert(TMA ? ST >= 2 : PF >= 1, "too few stages");
  static_assert(12 * ST <= kSlackHead, "barriers and counts must fit in front of the tiles");
  constexpr uint32_t QB = BR * D * 2, KB = BC * D * 2;
  extern __shared__ unsigned char smem[];
  const uint32_t sQ = tile_base<TMA>(smem), stQ = sQ + QB;
  const uint32_t sK = stQ + QB, sV = sK + ST * KB, stK = sV + ST * KB, stV = stK + ST * KB;
  const uint32_t full = saddr(smem);  // TMA: ST mbarriers, then the release counts
  unsigned* const rel = reinterpret_cast<unsigned*>(smem + 8 * ST);
  if (TMA) check_fits(stV + ST * KB, smem);
  const int tid = threadIdx.x, wg = warpgroup<NWG>(), wt = tid & 127, lane = tid & 31, g = lane >> 2, t = lane & 3;
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

  // TMA (as in the forward): tile i of K, V, tK, tV into stage st (one thread).
  auto tma_kv = [&](int st, int i) {
    const uint32_t bar = full + 8 * st, off = st * KB;
    mbar_expect_tx(bar, 4 * KB);
    tma_tile<BC, D>(sK + off, &maps.k, i * BC, int(bh), bar);
    tma_tile<BC, D>(sV + off, &maps.v, i * BC, int(bh), bar);
    tma_tile<BC, D>(stK + off, &maps.tk, i * BC, int(bh), bar);
    tma_tile<BC, D>(stV + off, &maps.tv, i * BC, int(bh), bar);
  };
  auto release = [&](int i) {  // as in the forward
    if constexpr (TMA) tma_release<ST, NT / 32>(rel, i, nt, lane, tma_kv);
  };

  load_tile<BR, D, NT>(sQ, q, q0, N, tid);
  load_tile<BR, D, NT>(stQ, tq, q0, N, tid);
  if constexpr (TMA) {
    cp_commit();
    tma_start<ST>(full, rel, tid, nt, tma_kv);
    cp_wait<0>();
    fence_async_smem();
    __syncthreads();
  } else {
#pragma unroll
    for (int i = 0; i < PF; ++i) {
      if (i < nt) {
        load_tile<BC, D, NT>(sK + i * KB, k, i * BC, M, tid);
        load_tile<BC, D, NT>(sV + i * KB, v, i * BC, M, tid);
        load_tile<BC, D, NT>(stK + i * KB, tk, i * BC, M, tid);
        load_tile<BC, D, NT>(stV + i * KB, tv, i * BC, M, tid);
      }
      cp_commit();
    }
  }

  float acc[D / 2], tacc[D / 2], m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f}, r[2] = {0.f, 0.f}, alpha[2] = {1.f, 1.f};
#pragma unroll
  for (int i = 0; i < D / 2; ++i) acc[i] = tacc[i] = 0.f;
  const uint32_t qw = sQ + wg * 64 * 128, tqw = stQ + wg * 64 * 128;
  uint32_t pa[BC / 16][4], ha[BC / 16][4];

  // O += P V; T += P tV + H V for the tile in stage offset `cur`.
  auto pv = [&](uint32_t cur) {
#pragma unroll
    for (int kk = 0; kk < BC / 16; ++kk) Mma<D>::rs(acc, pa[kk], desc_nmajor<BC>(sV + cur, kk));
#pragma unroll
    for (int kk = 0; kk < BC / 16; ++kk) Mma<D>::rs(tacc, pa[kk], desc_nmajor<BC>(stV + cur, kk));
#pragma unroll
    for (int kk = 0; kk < BC / 16; ++kk) Mma<D>::rs(tacc, ha[kk], desc_nmajor<BC>(sV + cur, kk));
    wg_commit();
  };

  for (int j = 0; j < nt; ++j) {
    if constexpr (TMA) {
      mbar_wait(full + 8 * (j % ST), uint32_t((j / ST) & 1));
    } else {
      cp_wait<PF - 1>();
      fence_async_smem();
      __syncthreads();
    }
    const uint32_t cur = (j % ST) * KB;
    const uint32_t kt = sK + cur, tkt = stK + cur;

    float s[BC / 2], ts[BC / 2];
    wg_fence();
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) Mma<BC>::ss(s, desc_kmajor<BR>(qw, kk), desc_kmajor<BC>(kt, kk), kk > 0);
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) Mma<BC>::ss(ts, desc_kmajor<BR>(tqw, kk), desc_kmajor<BC>(kt, kk), kk > 0);
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) Mma<BC>::ss(ts, desc_kmajor<BR>(qw, kk), desc_kmajor<BC>(tkt, kk), 1);
    wg_commit();
    auto loads = [&] {  // issued while the products run, as in the forward (TMA: elsewhere)
      if constexpr (!TMA) {
        if (j + PF < nt) {
          const uint32_t nxt = ((j + PF) % ST) * KB;
          const int r0 = (j + PF) * BC;
          load_tile<BC, D, NT>(sK + nxt, k, r0, M, tid);
          load_tile<BC, D, NT>(sV + nxt, v, r0, M, tid);
          load_tile<BC, D, NT>(stK + nxt, tk, r0, M, tid);
          load_tile<BC, D, NT>(stV + nxt, tv, r0, M, tid);
        }
        cp_commit();
      }
    };
    if (PIPE && j > 0) {
      wg_fence();
      pv(((j - 1) % ST) * KB);
      loads();
      wg_wait<1>();
    } else {
      loads();
      wg_wait<0>();
    }
    pin(s);
    pin(ts);

    const bool grow = online_softmax<BC>(s, m, l, alpha, j * BC, M, t, sl2, [&](float (&x)[BC / 2]) {
      scores_simt<D, BR, BC>(x, qw, kt, (wt >> 5) * 16, g, t);
    });
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float hs = 0.f;
#pragma unroll
      for (int n = 0; n < BC / 8; ++n)
#pragma unroll
        for (int c = 2 * h; c < 2 * h + 2; ++c) {
          const float hv = s[4 * n + c] * ts[4 * n + c] * scale;
          ts[4 * n + c] = hv;
          hs += hv;
        }
      r[h] = (grow ? r[h] * alpha[h] : r[h]) + hs;
    }
    if (PIPE) {
      wg_wait<0>();
      if (j > 0) release(j - 1);
    }
    pin(acc);
    pin(tacc);
    if (grow) {
      rescale(acc, alpha);
      rescale(tacc, alpha);
    }
#pragma unroll
    for (int kk = 0; kk < BC / 16; ++kk) {
      to_a(pa[kk], s, kk);
      to_a(ha[kk], ts, kk);
    }
    if (!PIPE) {
      wg_fence();
      pv(cur);
      wg_wait<0>();
      pin(acc);
      pin(tacc);
      release(j);
    }
  }
  if (PIPE) {
    wg_fence();
    pv(((nt - 1) % ST) * KB);
    wg_wait<0>();
    pin(acc);
    pin(tacc);
  }

  const int rbase = q0 + wg * 64 + (wt >> 5) * 16 + g;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const float ls = quad_sum(l[h]), rs = quad_sum(r[h]);
    const float inv = 1.f / ls, rl = rs * inv;
    const int row = rbase + 8 * h;
    if (row < N) {
#pragma unroll
      for (int n = 0; n < D / 8; ++n) {
        const float o0 = acc[4 * n + 2 * h] * inv, o1 = acc[4 * n + 2 * h + 1] * inv;
        const size_t at = size_t(row) * D + n * 8 + 2 * t;
        *reinterpret_cast<uint32_t*>(o + at) = pack(o0, o1);
        *reinterpret_cast<uint32_t*>(to + at) =
            pack(tacc[4 * n + 2 * h] * inv - rl * o0, tacc[4 * n + 2 * h + 1] * inv - rl * o1);
      }
      if (t == 0) {
        if (lse) lse[bh * N + row] = (m[h] + log2f(ls)) / tc::kLog2e;
        if (tlse) tlse[bh * N + row] = rl;
      }
    }
  }
#elif defined(__CUDA_ARCH__)
  __trap();
#endif
}

// ---- backward ----------------------------------------------------------------------------------
// FlashAttention-2 order, as attention_tc.cu's bwd_kernel: a block owns BC = 64 * NWG keys (warpgroup
// w the keys 64 w .. 64 w + 63, K and V resident in shared memory) and loops over query tiles of BRQ
// rows (Q, dO, lse, delta double-buffered by cp.async). Per tile and warpgroup, in the transposed
// frame so that keys are the MMA rows:
//   S^T = K Q^T, dP^T = V dO^T         wgmma, both operands in shared memory (K-major);
//   P^T = exp2(S^T sl2 - lse2), dS^T = P^T (dP^T - delta)   in registers (columns are queries);
//   dV += P^T dO, dK += dS^T Q         wgmma, A = P^T / dS^T from registers, B = dO / Q N-major;
//   dS (bf16) -> shared memory as a (BRQ x BC) K-major tile, then after a block barrier
//   dQ = dS K                          wgmma, A = dS (K-major), B = K N-major; warpgroup w takes
//                                      query rows 64 (w % RG) .. and D columns DW (w / RG) ..,
//                                      staged in f32 in shared memory and added into the
//                                      f32 dq_accum by the copy engine (TMA reduce-add, one
//                                      bulk op per 32 columns, double-buffered): per-thread
//                                      float2 atomics cost 0.7 of the 1.9 ms at head dim 64.
// Padded queries (past N) have zero Q and dO rows and lse = +inf, so P = 0 and they add nothing;
// padded keys (past M) have zero K and V rows, and their P and dS are zeroed (their dK, dV are not
// stored and their dS meets zero K rows in dQ; zeroing keeps an overflowing exp2 from making NaN).
template <int D, int BRQ, int NWG, int MINB, bool TMA>
__global__ void __launch_bounds__(NWG * 128, MINB)
    bwd_kernel(const bf* __restrict__ q, const bf* __restrict__ k, const bf* __restrict__ v, const bf* __restrict__ go,
               const float* __restrict__ lse, const float* __restrict__ delta, bf* __restrict__ dk,
               bf* __restrict__ dv, int N, int M, float scale, float sl2, const __grid_constant__ BwdMaps maps) {
#if DF_WGMMA_DEVICE
  constexpr int BC = 64 * NWG, NT = NWG * 128, RG = BRQ / 64, CP = NWG / RG, DW = D / CP;
  static_assert(BRQ % 64 == 0 && RG * CP == NWG && DW % 64 == 0 && DW * CP == D,
                "the dQ product must give each warpgroup 64 query rows and whole 64-column panels");
  constexpr uint32_t KB = BC * D * 2, QB = BRQ * D * 2, SB = BRQ * BC * 2, FB = BRQ * D * 4;
  // Accumulators of dK, dV and dQ plus the P and dS fragments past ~200 registers (D 128 with one
  // warpgroup: 224) spill; there dV and dK are waited for before dQ is issued.
  constexpr bool WAIT_KV = D + DW / 2 + BRQ / 2 > 200;
  extern __shared__ unsigned char smem[];
  const uint32_t s0 = saddr(smem), sK = tile_base<TMA>(smem), sV = sK + KB, sQ = sV + KB, sdO = sQ + 2 * QB,
                 sdS = sdO + 2 * QB, sdQ = sdS + SB;
  const uint32_t full = s0;  // TMA: one mbarrier per Q/dO stage, in the alignment slack
  float* Ls = reinterpret_cast<float*>(smem + (sdQ + 2 * FB - s0));  // 2 stages of lse * log2(e)
  float* Ds = Ls + 2 * BRQ;                                         // 2 stages of delta
  const int tid = threadIdx.x, wg = warpgroup<NWG>(), wt = tid & 127, lane = tid & 31, g = lane >> 2, t = lane & 3;
  const size_t bh = blockIdx.y;
  q += bh * N * D;
  go += bh * N * D;
  lse += bh * N;
  delta += bh * N;
  k += bh * M * D;
  v += bh * M * D;
  dk += bh * M * D;
  dv += bh * M * D;
  const int k0 = blockIdx.x * BC, nq = (N + BRQ - 1) / BRQ;
  // Row statistics of query tile i (threads < BRQ, one row each): read from global memory one tile
  // before they are staged, into registers, so that staging them never waits on the read.
  float lse_next = 0.f, delta_next = 0.f;
  auto read_rowstats = [&](int i) {
    if (tid < BRQ) {
      const int r = i * BRQ + tid;
      lse_next = r < N ? lse[r] * tc::kLog2e : INFINITY;
      delta_next = r < N ? delta[r] : 0.f;
    }
  };
  auto load_rowstats = [&](int i, int buf) {  // stage tile i's (read by read_rowstats(i)); read i + 1's
    if (tid < BRQ) {
      Ls[buf * BRQ + tid] = lse_next;
      Ds[buf * BRQ + tid] = delta_next;
    }
    if (i + 1 < nq) read_rowstats(i + 1);
  };
  read_rowstats(0);

  // TMA: query tile i of Q and dO into stage st (one thread). Rows past N arrive as zeros, as
  // load_tile gives them.
  auto tma_qo = [&](int st, int i) {
    mbar_expect_tx(full + 8 * st, 2 * QB);
    tma_tile<BRQ, D>(sQ + st * QB, &maps.q, i * BRQ, int(bh), full + 8 * st);
    tma_tile<BRQ, D>(sdO + st * QB, &maps.go, i * BRQ, int(bh), full + 8 * st);
  };
  if (TMA) check_fits(sdQ + 2 * FB + 4 * BRQ * 4, smem);
  load_tile<BC, D, NT>(sK, k, k0, M, tid);
  load_tile<BC, D, NT>(sV, v, k0, M, tid);
  if constexpr (TMA) {
    if (tid == 0) {
      mbar_init(full, 1);
      mbar_init(full + 8, 1);
      mbar_init_fence();
      tma_qo(0, 0);
    }
  } else {
    load_tile<BRQ, D, NT>(sQ, q, 0, N, tid);
    load_tile<BRQ, D, NT>(sdO, go, 0, N, tid);
  }
  cp_commit();
  load_rowstats(0, 0);

  // This thread's keys: accumulator rows g and g + 8 of its warp's 16 (block-local key krow, krow + 8).
  const int kc = (wt >> 5) * 16 + g, krow = wg * 64 + kc;
  const bool ktail = k0 + BC > M, kval0 = k0 + krow < M, kval1 = k0 + krow + 8 < M;
  const uint32_t kw = sK + wg * 64 * 128, vw = sV + wg * 64 * 128;  // this warpgroup's 64 rows, per panel
  const uint32_t dsw = sdS + wg * (BRQ * 128);  // its 64 keys are panel wg of the dS tile
  const int rg = wg % RG, part = wg / RG;       // its share of dQ: query rows 64 rg.., columns DW part..
  const uint32_t dsa = sdS + rg * 64 * 128, kb = sK + part * (DW / 64) * (BC * 128);

  float dka[D / 2], dva[D / 2];
#pragma unroll
  for (int i = 0; i < D / 2; ++i) dka[i] = dva[i] = 0.f;

  // dQ of query tile i, staged in f32 (buffer i % 2), added into dq_accum by the copy engine: one
  // box per 32 columns. Issued by thread 0 once a block barrier says every warpgroup staged its part.
  auto reduce_dq = [&](int i) {
#pragma unroll
    for (int b = 0; b < D / 32; ++b) tma_reduce_add(&maps.dq, sdQ + (i & 1) * FB + b * (BRQ * 128), 32 * b, i * BRQ, int(bh));
    bulk_commit();
  };

  for (int i = 0; i < nq; ++i) {
    const int buf = i & 1;
    cp_wait<0>();
    fence_async_smem();
    // Tile i landed for everyone; every warpgroup is done with tile i - 1 (its stage is refilled
    // below) and with the dS tile (rewritten below), and has staged tile i - 1's dQ.
    __syncthreads();
    if (tid == 0 && i > 0) {
      reduce_dq(i - 1);
      bulk_wait_read<1>();  // tile i - 2's adds have read buffer i % 2, which this tile restages
    }
    if constexpr (TMA) mbar_wait(full + 8 * buf, uint32_t((i >> 1) & 1));  // Q, dO of tile i landed
    // The next query tile's loads: issued while S^T and dP^T run (with WAIT_KV, here: registers).
    // With TMA, thread 0 refills stage buf ^ 1, whose last readers (tile i - 1's products, waited
    // for by every warp before the barrier above) are done.
    auto loads = [&] {
      if (i + 1 < nq) {
        if constexpr (TMA) {
          if (tid == 0) tma_qo(buf ^ 1, i + 1);
        } else {
          load_tile<BRQ, D, NT>(sQ + (buf ^ 1) * QB, q, (i + 1) * BRQ, N, tid);
          load_tile<BRQ, D, NT>(sdO + (buf ^ 1) * QB, go, (i + 1) * BRQ, N, tid);
        }
        load_rowstats(i + 1, buf ^ 1);
      }
      if constexpr (!TMA) cp_commit();
    };
    if constexpr (WAIT_KV) loads();
    const uint32_t qt = sQ + buf * QB, ot = sdO + buf * QB;
    const float* Lb = Ls + buf * BRQ;
    const float* Db = Ds + buf * BRQ;

    // S^T and dP^T are two commit groups: the exponentials of P^T run while dP^T is computed (P is
    // pinned before the second wait, else the compiler sinks the exponentials below it).
    float st[BRQ / 2], dpt[BRQ / 2];
    wg_fence();
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk)
      Mma<BRQ>::ss(st, desc_kmajor<BC>(kw, kk), desc_kmajor<BRQ>(qt, kk), kk > 0);
    wg_commit();
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk)
      Mma<BRQ>::ss(dpt, desc_kmajor<BC>(vw, kk), desc_kmajor<BRQ>(ot, kk), kk > 0);
    wg_commit();
    if constexpr (!WAIT_KV) loads();
    wg_wait<1>();
    pin(st);

    // Element 4 n + c: key row g + 8 (c >> 1), query column 8 n + 2 t + (c & 1).
#pragma unroll
    for (int n = 0; n < BRQ / 8; ++n) {
      const float2 l2 = *reinterpret_cast<const float2*>(Lb + 8 * n + 2 * t);
#pragma unroll
      for (int c = 0; c < 4; ++c) st[4 * n + c] = exp2_ftz(fmaf(st[4 * n + c], sl2, -((c & 1) ? l2.y : l2.x)));
    }
    pin(st);
    wg_wait<0>();
    pin(dpt);
#pragma unroll
    for (int n = 0; n < BRQ / 8; ++n) {
      const float2 d2 = *reinterpret_cast<const float2*>(Db + 8 * n + 2 * t);
#pragma unroll
      for (int c = 0; c < 4; ++c) dpt[4 * n + c] = st[4 * n + c] * (dpt[4 * n + c] - ((c & 1) ? d2.y : d2.x));
    }
    if (ktail) {
#pragma unroll
      for (int n = 0; n < BRQ / 8; ++n)
#pragma unroll
        for (int c = 0; c < 4; ++c)
          if (!((c >> 1) ? kval1 : kval0)) st[4 * n + c] = dpt[4 * n + c] = 0.f;
    }
    uint32_t pa[BRQ / 16][4], da[BRQ / 16][4];
#pragma unroll
    for (int kk = 0; kk < BRQ / 16; ++kk) {
      to_a(pa[kk], st, kk);
      to_a(da[kk], dpt, kk);
    }

    // dV += P^T dO and dK += dS^T Q run while dS is written out (the stores only read the
    // fragments the products hold). With WAIT_KV, dK is issued after the stores (fewer live
    // registers across them: no spills).
    auto dk_product = [&] {
#pragma unroll
      for (int kk = 0; kk < BRQ / 16; ++kk) Mma<D>::rs(dka, da[kk], desc_nmajor<BRQ>(qt, kk));
    };
    wg_fence();
#pragma unroll
    for (int kk = 0; kk < BRQ / 16; ++kk) Mma<D>::rs(dva, pa[kk], desc_nmajor<BRQ>(ot, kk));
    if constexpr (!WAIT_KV) dk_product();
    wg_commit();

    // dS^T -> the dS tile, one transposing stmatrix per k16 step. da[kk][j] is an 8 x 8 fragment of
    // keys kw0 + 8 (j & 1) + 0..7 (kw0: this warp's first key in the panel) by queries 16 kk +
    // 8 (j >> 1) + 0..7 (to_a's order); transposed, its row c is query r = 16 kk + 8 (j >> 1) + c,
    // 8 consecutive keys = the 16-byte chunk ch = kw0 / 8 + (j & 1) of dS row r in panel wg, at
    // r * 128 + ((ch ^ (r % 8)) << 4) (128B swizzle). Lane 8 j + c gives that row's address.
    {
      const int j = lane >> 3, c = lane & 7, ch = (kc >> 3) + (j & 1);
#pragma unroll
      for (int kk = 0; kk < BRQ / 16; ++kk) {
        const int r = 16 * kk + 8 * (j >> 1) + c;
        stmatrix_x4_trans(dsw + r * 128 + ((ch ^ (r & 7)) << 4), da[kk]);
      }
    }
    fence_async_smem();  // the dS stores are generic-proxy writes; dQ's wgmma reads them
    if constexpr (WAIT_KV) {
      wg_fence();
      dk_product();
      wg_commit();
    }

    if (WAIT_KV) {  // frees the P and dS fragments before the dQ accumulators are needed
      wg_wait<0>();
      pin(dva);
      pin(dka);
    }
    __syncthreads();  // every warpgroup's dS columns are in place
    float dqa[DW / 2];
    wg_fence();
#pragma unroll
    for (int kk = 0; kk < BC / 16; ++kk)
      Mma<DW>::ss_tb(dqa, desc_kmajor<BRQ>(dsa, kk), desc_nmajor<BC>(kb, kk), kk > 0);
    wg_commit();
    wg_wait<0>();
    pin(dva);
    pin(dka);
    pin(dqa);
    // Stage dQ: row r, column c of the tile goes to box c / 32 at r * 128 + 16 (chunk ^ (r % 8)) +
    // 4 (c % 4), chunk = (c % 32) / 4 (the map's 128B swizzle; a warp's float2 stores hit each bank
    // twice, the least for 256 bytes).
    {
      const uint32_t st0 = sdQ + buf * FB;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int r = rg * 64 + (wt >> 5) * 16 + g + 8 * h;
#pragma unroll
        for (int n = 0; n < DW / 8; ++n) {
          const int c = part * DW + n * 8 + 2 * t;
          const uint32_t at = st0 + (c >> 5) * (BRQ * 128) + r * 128 + ((((c & 31) >> 2) ^ (r & 7)) << 4) + (c & 3) * 4;
          asm volatile("st.shared.v2.f32 [%0], {%1, %2};\n" ::"r"(at), "f"(dqa[4 * n + 2 * h]), "f"(dqa[4 * n + 2 * h + 1])
                       : "memory");
        }
      }
      fence_async_smem();  // generic-proxy stores, read by the copy engine (async proxy)
    }
  }
  __syncthreads();
  if (tid == 0) {
    reduce_dq(nq - 1);
    bulk_wait_all();
  }

#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int key = k0 + krow + 8 * h;
    if (key < M) {
#pragma unroll
      for (int n = 0; n < D / 8; ++n) {
        const size_t at = size_t(key) * D + n * 8 + 2 * t;
        *reinterpret_cast<uint32_t*>(dk + at) = pack(dka[4 * n + 2 * h] * scale, dka[4 * n + 2 * h + 1] * scale);
        *reinterpret_cast<uint32_t*>(dv + at) = pack(dva[4 * n + 2 * h], dva[4 * n + 2 * h + 1]);
      }
    }
  }
#elif defined(__CUDA_ARCH__)
  __trap();
#endif
}

template <class K>
void allow_smem(K kern, size_t bytes) {
  if (bytes > 48 * 1024)
    DF_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)), "attention");
}

// The driver's tensor-map encoder, reached through the runtime (no link against libcuda).
using EncodeTiled = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*, const cuuint64_t*,
                                 const cuuint64_t*, const cuuint32_t*, const cuuint32_t*, CUtensorMapInterleave,
                                 CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);
EncodeTiled encoder() {
  static const EncodeTiled fn = [] {
    void* p = nullptr;
    cudaDriverEntryPointQueryResult found{};
    DF_CUDA_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault, &found),
                  "attention (wgmma, TMA)");
    DF_CHECK(found == cudaDriverEntryPointSuccess && p, "attention (wgmma, TMA): the driver has no cuTensorMapEncodeTiled");
    return reinterpret_cast<EncodeTiled>(p);
  }();
  return fn;
}

// A contiguous (B H, R, D) tensor as a rank-3 map (D, R, B H) whose box is `cols` columns (128 bytes)
// of `rows` rows, 128B-swizzled: the tile layout of this file. Loads get zeros for rows past R;
// reduce-adds drop them.
CUtensorMap tile_map(const void* base, CUtensorMapDataType type, int elem_bytes, int64_t R, const Dims& d, int cols,
                     int rows, const char* what) {
  CUtensorMap m;
  const cuuint64_t dims[3] = {cuuint64_t(d.D), cuuint64_t(R), cuuint64_t(d.B * d.H)};
  const cuuint64_t strides[2] = {cuuint64_t(d.D) * elem_bytes, cuuint64_t(R * d.D) * elem_bytes};  // dims 1, 2
  const cuuint32_t box[3] = {cuuint32_t(cols), cuuint32_t(rows), 1}, step[3] = {1, 1, 1};
  const CUresult r = encoder()(&m, type, 3, const_cast<void*>(base), dims, strides, box, step,
                               CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                               CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  DF_CHECK(r == CUDA_SUCCESS, "attention (wgmma, TMA): cuTensorMapEncodeTiled failed (CUresult ", int(r), ") for ",
           what, " (", d.B * d.H, ", ", R, ", ", d.D, ") with ", rows, "-row boxes");
  return m;
}
// bf16 Q, K, V, dO and tangents: one 64-column panel per box.
CUtensorMap bf16_map(const void* base, int64_t R, const Dims& d, int rows) {
  return tile_map(base, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, R, d, 64, rows, "a bf16 tensor");
}
CUtensorMap kv_map(const void* base, const Dims& d, int rows) { return bf16_map(base, d.M, d, rows); }
// The backward's f32 dQ accumulator: 32 columns per box, the staging layout of bwd_kernel.
CUtensorMap f32_map(void* base, const Dims& d, int rows) {
  return tile_map(base, CU_TENSOR_MAP_DATA_TYPE_FLOAT32, 4, d.N, d, 32, rows, "the f32 dQ accumulator");
}

// Block shapes ("configs"): 0 is the default, the fastest per kernel and head dim in the H200 runs of
// bench/attention_notes.md; the others stay for benchmarks and tests. The table in forward() and
// jvp() gives each one's key tile, warpgroups per block, loop (overlapped or plain), stages, the
// blocks per multiprocessor its register cap allows, and the load path. At head dim 64 the softmax
// (exp2 and its arithmetic) costs about as much as the products, so the forward runs two blocks of
// two warpgroups per multiprocessor, not synchronised with each other, each in the plain loop over
// 128-key tiles (the registers of two blocks leave no room for the overlapped loop's second set of
// fragments); at 128 the products dominate and one 128-row block with 128-key tiles, overlapped,
// wins. The JVP's accumulators allow one block of two warpgroups, and it runs the plain loop at
// both head dims: at 128 the overlapped one would need ~225 accumulator registers and 256 KB of
// shared memory; at 64 the plain loop frees the registers for 128-key tiles, whose score products
// (n = 128) and per-tile bookkeeping (one barrier wait, one release, one row-sum check per 128
// keys) beat the overlap of 64-key tiles by ~15%.
template <int D, int BC, int NWG, bool PIPE, int ST, int MINB, bool TMA = false>
void launch_fwd(const Dims& d, float scale, const void* q, const void* k, const void* v, void* o, float* lse,
                cudaStream_t s) {
  constexpr int BR = 64 * NWG;
  constexpr size_t smem = 1024 + size_t(BR + 2 * ST * BC) * D * 2;  // the slack holds TMA's barriers
  static const bool ready = (allow_smem(fwd_kernel<D, BC, NWG, PIPE, ST, MINB, TMA>, smem), true);
  (void)ready;
  KvMaps maps{};
  if constexpr (TMA) {
    maps.k = kv_map(k, d, BC);
    maps.v = kv_map(v, d, BC);
  }
  dim3 grid(unsigned((d.N + BR - 1) / BR), unsigned(d.B * d.H));
  fwd_kernel<D, BC, NWG, PIPE, ST, MINB, TMA><<<grid, NWG * 128, smem, s>>>(
      static_cast<const bf*>(q), static_cast<const bf*>(k), static_cast<const bf*>(v), static_cast<bf*>(o), lse,
      int(d.N), int(d.M), scale * tc::kLog2e, maps);
  DF_CUDA_LAUNCHED(TMA ? "attention forward (wgmma, TMA)" : "attention forward (wgmma)");
}

template <int D, int BC, int NWG, bool PIPE, int ST, int MINB, bool TMA = false>
void launch_jvp(const Dims& d, float scale, const void* q, const void* k, const void* v, const void* tq,
                const void* tk, const void* tv, void* o, void* to, float* lse, float* tlse, cudaStream_t s) {
  constexpr int BR = 64 * NWG;
  constexpr size_t smem = 1024 + size_t(2 * BR + 4 * ST * BC) * D * 2;
  static const bool ready = (allow_smem(jvp_kernel<D, BC, NWG, PIPE, ST, MINB, TMA>, smem), true);
  (void)ready;
  KvMaps maps{};
  if constexpr (TMA) {
    maps.k = kv_map(k, d, BC);
    maps.v = kv_map(v, d, BC);
    maps.tk = kv_map(tk, d, BC);
    maps.tv = kv_map(tv, d, BC);
  }
  dim3 grid(unsigned((d.N + BR - 1) / BR), unsigned(d.B * d.H));
  auto c = [](const void* p) { return static_cast<const bf*>(p); };
  jvp_kernel<D, BC, NWG, PIPE, ST, MINB, TMA><<<grid, NWG * 128, smem, s>>>(
      c(q), c(k), c(v), c(tq), c(tk), c(tv), static_cast<bf*>(o), static_cast<bf*>(to), lse, tlse, int(d.N), int(d.M),
      scale * tc::kLog2e, scale, maps);
  DF_CUDA_LAUNCHED(TMA ? "attention jvp (wgmma, TMA)" : "attention jvp (wgmma)");
}

template <int D, int BRQ, int NWG, int MINB, bool TMA = true>
void launch_bwd(const Dims& d, float scale, const void* q, const void* k, const void* v, const void* go,
                const float* lse, const float* delta, float* dq_accum, void* dk, void* dv, cudaStream_t s) {
  constexpr int BC = 64 * NWG;
  constexpr size_t smem =
      1024 + size_t(2 * BC + 4 * BRQ) * D * 2 + size_t(BRQ) * BC * 2 + size_t(2) * BRQ * D * 4 + size_t(4) * BRQ * 4;
  static const bool ready = (allow_smem(bwd_kernel<D, BRQ, NWG, MINB, TMA>, smem), true);
  (void)ready;
  BwdMaps maps{};
  maps.dq = f32_map(dq_accum, d, BRQ);
  if constexpr (TMA) {
    maps.q = bf16_map(q, d.N, d, BRQ);
    maps.go = bf16_map(go, d.N, d, BRQ);
  }
  dim3 grid(unsigned((d.M + BC - 1) / BC), unsigned(d.B * d.H));
  auto c = [](const void* p) { return static_cast<const bf*>(p); };
  bwd_kernel<D, BRQ, NWG, MINB, TMA><<<grid, NWG * 128, smem, s>>>(c(q), c(k), c(v), c(go), lse, delta,
                                                                  static_cast<bf*>(dk), static_cast<bf*>(dv), int(d.N),
                                                                  int(d.M), scale, scale * tc::kLog2e, maps);
  DF_CUDA_LAUNCHED(TMA ? "attention backward (wgmma, TMA)" : "attention backward (wgmma)");
}

std::atomic<int> g_config{0};

}  // namespace

void set_config(int c) { g_config = c >= 0 && c < kWgmmaConfigs ? c : 0; }
int config() { return g_config.load(); }

bool supports(int64_t D) { return D == 64 || D == 128; }

// The kernels exist only as sm_90a machine code: the current device must be compute capability 9.0.
bool device_ok() {
  static int cached[64];  // 0 unknown, 1 yes, 2 no; per device ordinal
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0) return false;
  if (dev >= 64) dev = 63;
  if (cached[dev] == 0) {
    int major = 0, minor = 0;
    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
    cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev);
    cached[dev] = major == 9 && minor == 0 ? 1 : 2;
  }
  return cached[dev] == 1;
}

bool env_enabled() {
  static const bool on = [] {
    const char* e = std::getenv("DF_ATTN_WGMMA");   // on unless set to 0
    return !e || !*e || std::atoi(e) != 0;
  }();
  return on;
}

// Template arguments per config: <D, key tile, warpgroups, overlapped, K/V stages, blocks per SM (the
// register cap), TMA>. With cp.async the stages set how many tiles are in flight (stages - 2
// overlapped, - 1 plain); with TMA a stage is refilled as soon as every warp has read it. The
// defaults load by TMA; config 5 is the cp.async default of before (v5), the rest other TMA shapes.
// Measured on the H200 with each config in its own process, alternated (bench/attention_notes.md,
// v6): TMA forward -7% at head dim 64 and -27% at 128; TMA JVP -8% at 64 and -12% at 128. v7 (the
// max-free softmax) moved the head-dim-64 defaults by one stage: the forward to four stages (its
// 126 registers still let two blocks share a multiprocessor), the JVP to three (0.58 -> 0.57 and
// 1.51 -> 1.47 ms in two runs). v8: the head-dim-64 JVP to 128-key tiles and the plain loop (1.50
// -> 1.26-1.34 ms; three warpgroups of 64-key tiles, config 3, 1.30-1.33); the head-dim-64 forward
// likewise, at two blocks per multiprocessor (0.547 -> 0.527 ms; 8 bytes of spills at the
// 128-register cap).
void forward(const Dims& d, float scale, const void* q, const void* k, const void* v, void* o, float* lse,
             cudaStream_t s) {
  const int c = config();
  if (d.D == 64) {
    switch (c) {
      case 1: return launch_fwd<64, 64, 2, true, 4, 1, true>(d, scale, q, k, v, o, lse, s);
      case 2: return launch_fwd<64, 128, 1, false, 2, 3, true>(d, scale, q, k, v, o, lse, s);
      case 3: return launch_fwd<64, 64, 1, false, 2, 4, true>(d, scale, q, k, v, o, lse, s);
      case 4: return launch_fwd<64, 128, 1, true, 2, 3, true>(d, scale, q, k, v, o, lse, s);
      case 5: return launch_fwd<64, 64, 2, true, 3, 2>(d, scale, q, k, v, o, lse, s);
      case 6: return launch_fwd<64, 64, 2, false, 2, 2, true>(d, scale, q, k, v, o, lse, s);
      case 7: return launch_fwd<64, 64, 2, true, 3, 2, true>(d, scale, q, k, v, o, lse, s);
      default: break;
    }
    return launch_fwd<64, 128, 2, false, 2, 2, true>(d, scale, q, k, v, o, lse, s);
  }
  switch (c) {
    case 1: return launch_fwd<128, 128, 2, false, 2, 1>(d, scale, q, k, v, o, lse, s);
    case 2: return launch_fwd<128, 64, 1, true, 3, 2>(d, scale, q, k, v, o, lse, s);
    case 3: return launch_fwd<128, 64, 2, true, 4, 1>(d, scale, q, k, v, o, lse, s);
    case 4: return launch_fwd<128, 128, 2, false, 3, 1>(d, scale, q, k, v, o, lse, s);
    case 5: return launch_fwd<128, 128, 2, true, 3, 1>(d, scale, q, k, v, o, lse, s);
    case 6: return launch_fwd<128, 64, 2, true, 4, 1, true>(d, scale, q, k, v, o, lse, s);
    case 7: return launch_fwd<128, 128, 2, true, 2, 1, true>(d, scale, q, k, v, o, lse, s);
    default: break;
  }
  return launch_fwd<128, 128, 2, true, 3, 1, true>(d, scale, q, k, v, o, lse, s);
}

void jvp(const Dims& d, float scale, const void* q, const void* k, const void* v, const void* tq, const void* tk,
         const void* tv, void* o, void* to, float* lse, float* tlse, cudaStream_t s) {
  const int c = config();
  if (d.D == 64) {
    switch (c) {
      case 1: return launch_jvp<64, 64, 2, true, 3, 1, true>(d, scale, q, k, v, tq, tk, tv, o, to, lse, tlse, s);
      case 2: return launch_jvp<64, 64, 2, false, 3, 1, true>(d, scale, q, k, v, tq, tk, tv, o, to, lse, tlse, s);
      case 3: return launch_jvp<64, 64, 3, false, 3, 1, true>(d, scale, q, k, v, tq, tk, tv, o, to, lse, tlse, s);
      case 4: return launch_jvp<64, 128, 2, false, 3, 1, true>(d, scale, q, k, v, tq, tk, tv, o, to, lse, tlse, s);
      case 5: return launch_jvp<64, 64, 1, true, 3, 2>(d, scale, q, k, v, tq, tk, tv, o, to, lse, tlse, s);
      case 6: return launch_jvp<64, 64, 3, false, 2, 1, true>(d, scale, q, k, v, tq, tk, tv, o, to, lse, tlse, s);
      case 7: return launch_jvp<64, 64, 1, true, 3, 2, true>(d, scale, q, k, v, tq, tk, tv, o, to, lse, tlse, s);
      default: break;
    }
    return launch_jvp<64, 128, 2, false, 2, 1, true>(d, scale, q, k, v, tq, tk, tv, o, to, lse, tlse, s);
  }
  switch (c) {
    case 2: return launch_jvp<128, 32, 1, false, 2, 2>(d, scale, q, k, v, tq, tk, tv, o, to, lse, tlse, s);
    case 3: return launch_jvp<128, 32, 2, false, 3, 1>(d, scale, q, k, v, tq, tk, tv, o, to, lse, tlse, s);
    case 4: return launch_jvp<128, 32, 1, false, 3, 1>(d, scale, q, k, v, tq, tk, tv, o, to, lse, tlse, s);
    case 5: return launch_jvp<128, 64, 2, false, 2, 1>(d, scale, q, k, v, tq, tk, tv, o, to, lse, tlse, s);
    case 6: return launch_jvp<128, 32, 2, false, 3, 1, true>(d, scale, q, k, v, tq, tk, tv, o, to, lse, tlse, s);
    case 7: return launch_jvp<128, 32, 2, false, 4, 1, true>(d, scale, q, k, v, tq, tk, tv, o, to, lse, tlse, s);
    default: break;
  }
  return launch_jvp<128, 64, 2, false, 2, 1, true>(d, scale, q, k, v, tq, tk, tv, o, to, lse, tlse, s);
}

bool bwd_env_enabled() {
  static const bool on = [] {
    const char* e = std::getenv("DF_ATTN_WGMMA_BWD");  // on unless set to 0
    return !e || !*e || std::atoi(e) != 0;
  }();
  return on;
}

// Backward block shapes: <D, query tile, warpgroups (keys per block = 64 x warpgroups), blocks per SM>.
// Configs 1 and 3 run the one-warpgroup block (64 keys); every other config the two-warpgroup block
// (128 keys: half the Q/dO streaming and dQ adds per key; the faster one in the H200 runs).
void backward(const Dims& d, float scale, const void* q, const void* k, const void* v, const void* go,
              const float* lse, const float* delta, float* dq_accum, void* dk, void* dv, cudaStream_t s) {
  const bool one = config() == 1 || config() == 3;
  const bool cpasync = config() == 5;  // the cp.async loads of Q and dO, as before
  if (d.D == 64) {
    if (one) return launch_bwd<64, 64, 1, 2>(d, scale, q, k, v, go, lse, delta, dq_accum, dk, dv, s);
    if (cpasync) return launch_bwd<64, 128, 2, 1, false>(d, scale, q, k, v, go, lse, delta, dq_accum, dk, dv, s);
    return launch_bwd<64, 128, 2, 1>(d, scale, q, k, v, go, lse, delta, dq_accum, dk, dv, s);
  }
  if (one) return launch_bwd<128, 64, 1, 2>(d, scale, q, k, v, go, lse, delta, dq_accum, dk, dv, s);
  if (cpasync) return launch_bwd<128, 64, 2, 1, false>(d, scale, q, k, v, go, lse, delta, dq_accum, dk, dv, s);
  return launch_bwd<128, 64, 2, 1>(d, scale, q, k, v, go, lse, delta, dq_accum, dk, dv, s);
}

}  // namespace df::attn::wg
