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

// I64 holds indices (gather, scatter_add, labels): it is copied, viewed, cast and moved like the
// float dtypes, but only the index ops compute with it and it never carries a derivative.
enum class DType : uint8_t { F32, F64, BF16, I64 };
enum class Device : uint8_t { CPU, CUDA };

inline size_t dtype_size(DType t) { return t == DType::F64 || t == DType::I64 ? 8 : t == DType::F32 ? 4 : 2; }
inline const char* dtype_name(DType t) {
  return t == DType::F64 ? "f64" : t == DType::F32 ? "f32" : t == DType::BF16 ? "bf16" : "i64";
}
inline bool is_floating(DType t) { return t != DType::I64; }
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

// Float -> i64 as PyTorch on x86: truncation toward zero; NaN and values outside the int64 range
// (where C++ leaves the conversion undefined) give INT64_MIN, the same on CPU and CUDA.
DF_HD int64_t float_to_i64(double v) {
  if (!(v > -9.2233720368547758e18 && v < 9.2233720368547758e18)) return INT64_MIN;
  return int64_t(v);
}

}  // namespace df
