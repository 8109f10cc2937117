// Philox4x32-10 (Salmon et al. 2011), counter-based: value i of stream `seed` depends only on
// (seed, i), so CPU and CUDA produce identical numbers and streams can be split without state.
#pragma once
#include <cmath>
#include <cstdint>

#include "core/dtype.h"

namespace df {

struct Philox4 {
  uint32_t v[4];
};

// High 32 bits of a 32x32-bit product; the device spells it __umulhi so no 64-bit multiply is emitted.
DF_HD uint32_t mulhi32(uint32_t a, uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __umulhi(a, b);
#else
  return uint32_t((uint64_t(a) * b) >> 32);
#endif
}

DF_HD Philox4 philox4x32(uint64_t counter, uint64_t seed) {
  uint32_t c0 = uint32_t(counter), c1 = uint32_t(counter >> 32), c2 = 0, c3 = 0;
  uint32_t k0 = uint32_t(seed), k1 = uint32_t(seed >> 32);
  for (int r = 0; r < 10; ++r) {
    uint32_t n0 = mulhi32(0xCD9E8D57u, c2) ^ c1 ^ k0, n2 = mulhi32(0xD2511F53u, c0) ^ c3 ^ k1;
    c1 = 0xCD9E8D57u * c2;
    c3 = 0xD2511F53u * c0;
    c0 = n0;
    c2 = n2;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return Philox4{{c0, c1, c2, c3}};
}

// Key of the normal streams: normals and uniforms of one seed are independent.
constexpr uint64_t kNormalKey = 0x5851F42D4C957F2Dull;

// Uniform in (0, 1]: never 0, so log() is safe.
DF_HD double u32_to_unit(uint32_t a, uint32_t b) {
  uint64_t x = (uint64_t(a) << 21) ^ uint64_t(b >> 11);  // 53 bits
  return (double(x & ((1ull << 53) - 1)) + 1.0) * (1.0 / 9007199254740992.0);
}

// Element i of the uniform stream (seed, offset): block i/2, two 64-bit draws per block.
DF_HD double philox_uniform(uint64_t seed, uint64_t index) {
  Philox4 r = philox4x32(index >> 1, seed);
  return (index & 1) ? u32_to_unit(r.v[2], r.v[3]) : u32_to_unit(r.v[0], r.v[1]);
}

// Element i of the f64 normal stream: Box-Muller on one block (two 53-bit uniforms), cos for even i,
// sin for odd i.
DF_HD double philox_normal(uint64_t seed, uint64_t index) {
  Philox4 r = philox4x32(index >> 1, seed ^ kNormalKey);
  double u1 = u32_to_unit(r.v[0], r.v[1]), u2 = u32_to_unit(r.v[2], r.v[3]);
  double rad = std::sqrt(-2.0 * std::log(u1));
  double ang = 6.283185307179586 * u2;
  return (index & 1) ? rad * std::sin(ang) : rad * std::cos(ang);
}

// Uniform in (0, 1] from the top 24 bits of one word: every value is exact in float, never 0.
DF_HD float u24_to_unit(uint32_t w) { return float((w >> 8) + 1u) * (1.0f / 16777216.0f); }

// The two f32 normals of pair p (0 or 1) of one block: Box-Muller on words 2p (radius) and 2p+1
// (angle). Float math (logf, sqrtf, sincos of the same float angle) on both backends: glibc and CUDA
// differ by a few ulp at most, never in the stream layout.
DF_HD void philox_normal_pair_f32(const Philox4& r, int p, float& c, float& s) {
  float rad = std::sqrt(-2.0f * std::log(u24_to_unit(r.v[2 * p])));
  float ang = 6.28318530717958647f * u24_to_unit(r.v[2 * p + 1]);
#if defined(__CUDA_ARCH__)
  sincosf(ang, &s, &c);
#else
  s = std::sin(ang);
  c = std::cos(ang);
#endif
  c *= rad;
  s *= rad;
}

// Element i of the f32 (and bf16) normal stream: four normals per block, so block i/4, pair
// (i%4)/2, cos for even i, sin for odd i. A different layout from the f64 stream (two per block):
// randn in f32 is not randn in f64 rounded, but each is a function of (seed, index) alone.
DF_HD float philox_normal_f32(uint64_t seed, uint64_t index) {
  Philox4 r = philox4x32(index >> 2, seed ^ kNormalKey);
  float c, s;
  philox_normal_pair_f32(r, int(index >> 1) & 1, c, s);
  return (index & 1) ? s : c;
}

}  // namespace df
