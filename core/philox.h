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

DF_HD Philox4 philox4x32(uint64_t counter, uint64_t seed) {
  uint32_t c0 = uint32_t(counter), c1 = uint32_t(counter >> 32), c2 = 0, c3 = 0;
  uint32_t k0 = uint32_t(seed), k1 = uint32_t(seed >> 32);
  for (int r = 0; r < 10; ++r) {
    uint64_t p0 = uint64_t(0xD2511F53u) * c0, p1 = uint64_t(0xCD9E8D57u) * c2;
    uint32_t n0 = uint32_t(p1 >> 32) ^ c1 ^ k0, n2 = uint32_t(p0 >> 32) ^ c3 ^ k1;
    c1 = uint32_t(p1);
    c3 = uint32_t(p0);
    c0 = n0;
    c2 = n2;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return Philox4{{c0, c1, c2, c3}};
}

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

// Element i of the normal stream: Box-Muller on one block, cos for even i, sin for odd i.
DF_HD double philox_normal(uint64_t seed, uint64_t index) {
  Philox4 r = philox4x32(index >> 1, seed ^ 0x5851F42D4C957F2Dull);
  double u1 = u32_to_unit(r.v[0], r.v[1]), u2 = u32_to_unit(r.v[2], r.v[3]);
  double rad = std::sqrt(-2.0 * std::log(u1));
  double ang = 6.283185307179586 * u2;
  return (index & 1) ? rad * std::sin(ang) : rad * std::cos(ang);
}

}  // namespace df
