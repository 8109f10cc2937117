// Public controls of the CUDA backend (allocator statistics, TF32 switch, sync, event timing).
// Plain C++: no CUDA headers, so tests and benchmarks compile with g++; all of it exists only
// in builds with DF_WITH_CUDA (the Makefile defines it when nvcc is found).
#pragma once
#include <cstddef>
#include <cstdint>

namespace df {

// True once the backend found a device and registered its hooks (same as cuda_available()).
bool cuda_init();
// Wait for all queued work on the backend's stream.
void cuda_synchronize();

// Let f32 matmuls use TF32 tensor cores (off by default, like PyTorch's allow_tf32).
void set_allow_tf32(bool on);
bool allow_tf32();

namespace cuda {

struct MemoryStats {
  size_t allocated = 0;        // bytes in live tensors (bucket-rounded)
  size_t peak_allocated = 0;   // high-water mark of `allocated` since the last reset
  size_t reserved = 0;         // bytes obtained from cudaMalloc (live + cached)
  int64_t num_device_mallocs = 0;  // cudaMalloc calls so far (flat in a steady state)
  int64_t num_allocs = 0;      // allocator requests so far
};
MemoryStats memory_stats();
void reset_peak_memory_stats();
// Return every cached (unused) block to the driver.
void empty_cache();
// Debug mode: fill each freshly handed-out block with 0xFF bytes (NaN in f32/f64/bf16) so a
// kernel that leaves elements unwritten is caught by comparisons.
void set_poison_allocations(bool on);

// Elapsed device time between two points on the backend's stream (CUDA events).
class EventTimer {
 public:
  EventTimer();
  ~EventTimer();
  EventTimer(const EventTimer&) = delete;
  EventTimer& operator=(const EventTimer&) = delete;
  void start();
  void stop();
  float elapsed_ms();  // waits for the stop event
 private:
  void* start_ = nullptr;
  void* stop_ = nullptr;
};

}  // namespace cuda
}  // namespace df
