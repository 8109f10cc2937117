// Element types and devices; bf16 storage type shared by CPU and CUDA code.
#pragma once
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#if defined(__CUDACC__)
#define DF_HD __host__ __device__ __forceinline__
#else
#define DF_HD inline
#endif

namespace df {

enum class DType : uint8_t { F32, F64, BF16 };
enum class Device : uint8_t { CPU, CUDA };

inline size_t dtype_size(DType t) { return t == DType::F64 ? 8 : t == DType::F32 ? 4 : 2; }
inline const char* dtype_name(DType t) { return t == DType::F64 ? "f64" : t == DType::F32 ? "f32" : "bf16"; }
inline const char* device_name(Device d) { return d == Device::CPU ? "cpu" : "cuda"; }

using Shape = std::vector<int64_t>;

std::string shape_str(const Shape& s);

// bf16: upper 16 bits of an IEEE f32, rounded to nearest even.
struct bf16 {
  uint16_t bits;
  DF_HD static bf16 from_float(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return bf16{uint16_t((u >> 16) | 0x40)};  // NaN stays NaN
    u += 0x7fffu + ((u >> 16) & 1u);
    return bf16{uint16_t(u >> 16)};
  }
  DF_HD float to_float() const {
    uint32_t u = uint32_t(bits) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
};

}  // namespace df
