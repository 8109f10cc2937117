// CUDA backend core: device discovery, the one stream, the caching allocator, host<->device
// copies and Philox random fills; registers all CUDA hooks at static-init time when a device exists.
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <unordered_map>

#include "core/philox.h"
#include "cuda/common.cuh"
#include "cuda/cuda.h"

namespace df {
namespace cudak {

namespace {
cudaStream_t g_stream = nullptr;
int g_sms = 1;
}  // namespace

cudaStream_t stream() { return g_stream; }
int sm_count() { return g_sms; }

namespace {

// Size-bucketed caching allocator. Blocks are never split; a request takes the smallest cached
// block of its bucket size up to a slack factor, else a fresh cudaMalloc. One stream means a block
// freed by the host can be handed out again at once: later kernels are ordered after earlier ones.
class CachingAllocator {
 public:
  static size_t bucket(size_t n) {
    if (n == 0) n = 1;
    if (n < (size_t(1) << 20)) return (n + 511) & ~size_t(511);
    const size_t two_mb = size_t(2) << 20;
    return (n + two_mb - 1) & ~(two_mb - 1);
  }

  void* alloc(size_t n) {
    size_t b = bucket(n);
    std::lock_guard<std::mutex> lk(mu_);
    size_t limit = b < (size_t(1) << 20) ? 2 * b : b + b / 4;
    auto it = cached_.lower_bound(b);
    void* p = nullptr;
    size_t got = b;
    if (it != cached_.end() && it->first <= limit) {
      p = it->second;
      got = it->first;
      cached_.erase(it);
    } else {
      if (cudaMalloc(&p, b) != cudaSuccess) {
        cudaGetLastError();
        release_cached_locked();
        cudaError_t e = cudaMalloc(&p, b);
        DF_CHECK(e == cudaSuccess, "cuda alloc: out of device memory asking for ", n, " bytes (",
                 stats_.allocated, " bytes in use, ", stats_.reserved, " reserved): ", cudaGetErrorString(e));
      }
      stats_.reserved += b;
      stats_.num_device_mallocs++;
    }
    live_[p] = got;
    stats_.allocated += got;
    stats_.num_allocs++;
    if (stats_.allocated > stats_.peak_allocated) stats_.peak_allocated = stats_.allocated;
    if (poison_) cudaMemsetAsync(p, 0xFF, got, g_stream);
    return p;
  }

  void free(void* p) {
    std::lock_guard<std::mutex> lk(mu_);
    auto it = live_.find(p);
    if (it == live_.end()) return;
    stats_.allocated -= it->second;
    cached_.emplace(it->second, p);
    live_.erase(it);
  }

  void empty_cache() {
    std::lock_guard<std::mutex> lk(mu_);
    release_cached_locked();
  }

  cuda::MemoryStats stats() {
    std::lock_guard<std::mutex> lk(mu_);
    return stats_;
  }
  void reset_peak() {
    std::lock_guard<std::mutex> lk(mu_);
    stats_.peak_allocated = stats_.allocated;
  }
  void set_poison(bool on) { poison_ = on; }

 private:
  void release_cached_locked() {
    if (cached_.empty()) return;
    cudaStreamSynchronize(g_stream);  // cudaFree must not pull memory from under queued kernels
    for (auto& [sz, p] : cached_) {
      cudaFree(p);
      stats_.reserved -= sz;
    }
    cached_.clear();
  }

  std::mutex mu_;
  std::multimap<size_t, void*> cached_;
  std::unordered_map<void*, size_t> live_;
  cuda::MemoryStats stats_;
  bool poison_ = false;
};

// Leaked on purpose: tensors in static storage may be freed after static destructors ran.
CachingAllocator& allocator() {
  static CachingAllocator* a = new CachingAllocator();
  return *a;
}

void* dev_alloc(size_t n) { return allocator().alloc(n); }
void dev_free(void* p) { allocator().free(p); }

void dev_copy(void* dst, Device dd, const void* src, Device sd, size_t n) {
  if (n == 0) return;
  if (dd == Device::CPU && sd == Device::CPU) {
    std::memcpy(dst, src, n);
    return;
  }
  cudaMemcpyKind kind = dd == Device::CUDA ? (sd == Device::CUDA ? cudaMemcpyDeviceToDevice : cudaMemcpyHostToDevice)
                                           : cudaMemcpyDeviceToHost;
  // Pageable host -> device returns once the source is staged, so the host buffer may be freed.
  DF_CUDA_CHECK(cudaMemcpyAsync(dst, src, n, kind, g_stream), "to_device");
  if (kind == cudaMemcpyDeviceToHost) DF_CUDA_CHECK(cudaStreamSynchronize(g_stream), "to_device");
}

// Uniforms (all dtypes) and f64 normals: thread k computes Philox block k of the stream once and
// writes the two elements it covers (the CPU computes the same block per element, so values match
// bit for bit in f32/bf16).
template <class T>
__global__ void random_fill_kernel(T* out, int64_t n, uint64_t seed, uint64_t offset, bool normal) {
  uint64_t first = offset >> 1, last = (offset + uint64_t(n) - 1) >> 1;
  int64_t blocks = int64_t(last - first) + 1;
  for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < blocks; k += int64_t(gridDim.x) * blockDim.x) {
    uint64_t blk = first + uint64_t(k);
    double v0, v1;
    if (normal) {
      Philox4 r = philox4x32(blk, seed ^ kNormalKey);
      double u1 = u32_to_unit(r.v[0], r.v[1]), u2 = u32_to_unit(r.v[2], r.v[3]);
      double rad = sqrt(-2.0 * log(u1)), ang = 6.283185307179586 * u2;
      v0 = rad * cos(ang);
      v1 = rad * sin(ang);
    } else {
      Philox4 r = philox4x32(blk, seed);
      v0 = u32_to_unit(r.v[0], r.v[1]);
      v1 = u32_to_unit(r.v[2], r.v[3]);
    }
    int64_t i0 = int64_t(2 * blk) - int64_t(offset);  // element index of the even member
    if (i0 >= 0 && i0 < n) out[i0] = store_as<T, double>(v0);
    if (i0 + 1 >= 0 && i0 + 1 < n) out[i0 + 1] = store_as<T, double>(v1);
  }
}

// Four T in one store (16 bytes of f32, 8 of bf16).
template <class T> struct alignas(4 * sizeof(T)) Vec4 {
  T v[4];
};

// f32/bf16 normals: thread k computes block k of the float stream (philox_normal_f32's layout, four
// normals per block) and writes them with one vector store when `vec` (the stream offset is a
// multiple of 4, so every block starts at an aligned element) and all four are inside the tensor.
template <class T>
__global__ void randn_float_kernel(T* out, int64_t n, uint64_t seed, uint64_t offset, bool vec) {
  uint64_t first = offset >> 2, last = (offset + uint64_t(n) - 1) >> 2;
  int64_t blocks = int64_t(last - first) + 1;
  for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < blocks; k += int64_t(gridDim.x) * blockDim.x) {
    uint64_t blk = first + uint64_t(k);
    Philox4 r = philox4x32(blk, seed ^ kNormalKey);
    float v[4];
    philox_normal_pair_f32(r, 0, v[0], v[1]);
    philox_normal_pair_f32(r, 1, v[2], v[3]);
    int64_t i0 = int64_t(4 * blk) - int64_t(offset);  // element index of the block's first normal
    if (vec && i0 + 3 < n) {
      Vec4<T> q;
#pragma unroll
      for (int j = 0; j < 4; ++j) q.v[j] = store_as<T, float>(v[j]);
      *reinterpret_cast<Vec4<T>*>(out + i0) = q;
    } else {
#pragma unroll
      for (int j = 0; j < 4; ++j)
        if (i0 + j >= 0 && i0 + j < n) out[i0 + j] = store_as<T, float>(v[j]);
    }
  }
}

template <class T>
__global__ void fill_kernel(T* out, int64_t n, double v) {
  const T val = store_as<T, double>(v);
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = val;
}

void dev_fill(const Tensor& out, double v) {
  int64_t n = out.numel();
  if (n == 0) return;
  DF_CHECK(out.is_contiguous(), "full: CUDA fill expects a fresh contiguous tensor, got ", out.desc());
  unsigned g = grid_for(n, 256);
  switch (out.dtype()) {
    case DType::F32: fill_kernel<<<g, 256, 0, g_stream>>>(out.data_as<float>(), n, v); break;
    case DType::F64: fill_kernel<<<g, 256, 0, g_stream>>>(out.data_as<double>(), n, v); break;
    case DType::BF16: fill_kernel<<<g, 256, 0, g_stream>>>(out.data_as<bf16>(), n, v); break;
    case DType::I64: fill_kernel<<<g, 256, 0, g_stream>>>(out.data_as<int64_t>(), n, v); break;
  }
  DF_CUDA_LAUNCHED("full");
}

void dev_fill_random(const Tensor& out, uint64_t seed, uint64_t offset, bool normal) {
  int64_t n = out.numel();
  if (n == 0) return;
  DF_CHECK(out.is_contiguous(), "rand: CUDA fill expects a fresh contiguous tensor, got ", out.desc());
  if (normal && out.dtype() != DType::F64) {
    bool vec = offset % 4 == 0 && (reinterpret_cast<uintptr_t>(out.data()) % (4 * dtype_size(out.dtype()))) == 0;
    unsigned g = grid_for(n / 4 + 2, 256);
    if (out.dtype() == DType::F32)
      randn_float_kernel<<<g, 256, 0, g_stream>>>(out.data_as<float>(), n, seed, offset, vec);
    else
      randn_float_kernel<<<g, 256, 0, g_stream>>>(out.data_as<bf16>(), n, seed, offset, vec);
    DF_CUDA_LAUNCHED("randn");
    return;
  }
  unsigned g = grid_for(n / 2 + 1, 256);
  switch (out.dtype()) {
    case DType::F32: random_fill_kernel<<<g, 256, 0, g_stream>>>(out.data_as<float>(), n, seed, offset, normal); break;
    case DType::F64: random_fill_kernel<<<g, 256, 0, g_stream>>>(out.data_as<double>(), n, seed, offset, normal); break;
    case DType::BF16: random_fill_kernel<<<g, 256, 0, g_stream>>>(out.data_as<bf16>(), n, seed, offset, normal); break;
    default: DF_FAIL("rand: expected a floating dtype, got ", out.desc());
  }
  DF_CUDA_LAUNCHED("rand");
}

bool init_backend() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
    cudaGetLastError();
    return false;
  }
  if (cudaSetDevice(0) != cudaSuccess) return false;
  if (cudaStreamCreateWithFlags(&g_stream, cudaStreamNonBlocking) != cudaSuccess) return false;
  cudaDeviceGetAttribute(&g_sms, cudaDevAttrMultiProcessorCount, 0);
  if (const char* p = std::getenv("DF_CUDA_POISON")) allocator().set_poison(std::atoi(p) != 0);
  DeviceHooks& h = device_hooks();
  h.alloc = dev_alloc;
  h.free = dev_free;
  h.copy = dev_copy;
  h.fill_random = dev_fill_random;
  h.fill = dev_fill;
  h.synchronize = [] { DF_CUDA_CHECK(cudaStreamSynchronize(g_stream), "synchronize"); };
  register_elementwise();
  register_reduce();
  register_linalg();
  register_shape_index();
  register_nn();
  register_image();
  register_optim();
  return true;
}

}  // namespace
}  // namespace cudak

bool cuda_init() {
  static bool ok = cudak::init_backend();
  return ok;
}

void cuda_synchronize() {
  if (cuda_init()) DF_CUDA_CHECK(cudaStreamSynchronize(cudak::stream()), "cuda_synchronize");
}

namespace cuda {
MemoryStats memory_stats() { return cudak::allocator().stats(); }
void reset_peak_memory_stats() { cudak::allocator().reset_peak(); }
void empty_cache() {
  if (cuda_init()) cudak::allocator().empty_cache();
}
void set_poison_allocations(bool on) { cudak::allocator().set_poison(on); }

EventTimer::EventTimer() {
  if (!cuda_init()) return;
  cudaEventCreate(reinterpret_cast<cudaEvent_t*>(&start_));
  cudaEventCreate(reinterpret_cast<cudaEvent_t*>(&stop_));
}
EventTimer::~EventTimer() {
  if (start_) cudaEventDestroy(static_cast<cudaEvent_t>(start_));
  if (stop_) cudaEventDestroy(static_cast<cudaEvent_t>(stop_));
}
void EventTimer::start() { cudaEventRecord(static_cast<cudaEvent_t>(start_), cudak::stream()); }
void EventTimer::stop() { cudaEventRecord(static_cast<cudaEvent_t>(stop_), cudak::stream()); }
float EventTimer::elapsed_ms() {
  cudaEventSynchronize(static_cast<cudaEvent_t>(stop_));
  float ms = 0;
  cudaEventElapsedTime(&ms, static_cast<cudaEvent_t>(start_), static_cast<cudaEvent_t>(stop_));
  return ms;
}
}  // namespace cuda

}  // namespace df

// The link line names this symbol (-Wl,-u) so the archive member holding the static
// registration below is always linked, even though no code calls into it by name.
extern "C" {
int df_cuda_anchor = 0;
}
static const bool df_cuda_registered = df::cuda_init();
