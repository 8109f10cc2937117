// Tensor: a cheap ref-counted handle to (storage, shape, strides, offset, dtype, device) plus
// autograd state. An undefined Tensor is a symbolic zero (used for absent tangents and cotangents).
#pragma once
#include <initializer_list>
#include <memory>
#include <utility>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"

namespace df {

class Tensor;
struct Node;

// Device buffer. CUDA buffers come from the backend's caching allocator through hooks, so this
// header never includes CUDA headers.
struct Storage {
  void* ptr = nullptr;
  size_t nbytes = 0;
  Device device = Device::CPU;
  // Bumped by every in-place write (assign_, optimizer and EMA updates), shared by all views: the
  // tape records it when it saves a tensor and refuses to use the tensor in backward if it moved.
  uint64_t version = 0;
  Storage(size_t nbytes, Device device);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
};

// Tangents of one tensor, keyed by dual level. Shared between a tensor and the aliases the tape
// saves, so a tangent attached after recording is still seen by the saved copy.
struct TangentMap {
  std::vector<std::pair<int, std::shared_ptr<struct TensorImpl>>> by_level;
};

struct TensorImpl {
  std::shared_ptr<Storage> storage;
  Shape shape, strides;
  int64_t offset = 0;
  DType dtype = DType::F32;
  Device device = Device::CPU;
  // reverse mode
  bool requires_grad = false;          // leaf flag; non-leaves require grad through grad_fn
  std::shared_ptr<Node> grad_fn;       // producing tape node (null for leaves and constants)
  int output_nr = 0;                   // which output of grad_fn this is
  std::shared_ptr<TensorImpl> grad;    // accumulated gradient (leaves)
  // forward mode
  std::shared_ptr<TangentMap> tangents;
};

class Tensor {
 public:
  Tensor() = default;
  explicit Tensor(std::shared_ptr<TensorImpl> impl) : impl_(std::move(impl)) {}

  bool defined() const { return impl_ != nullptr; }
  TensorImpl* impl() const { return impl_.get(); }
  const std::shared_ptr<TensorImpl>& impl_ptr() const { return impl_; }

  const Shape& shape() const;
  const Shape& strides() const;
  int64_t dim() const { return (int64_t)shape().size(); }
  int64_t size(int64_t d) const;          // negative d counts from the end
  int64_t numel() const;
  int64_t offset() const { return checked()->offset; }
  DType dtype() const { return checked()->dtype; }
  Device device() const { return checked()->device; }
  bool is_contiguous() const;
  std::string desc() const;               // "f32[2, 3] cpu" for error messages

  // Raw access (kernels and tests only; rules never touch buffers).
  void* data() const;                     // pointer to element 0 (offset applied)
  template <class T> T* data_as() const { return static_cast<T*>(data()); }

  // Host reads (copy to CPU first when needed).
  double item() const;
  std::vector<double> to_vector() const;  // in logical (row-major) order; i64 exact below 2^53

  // Autograd.
  bool requires_grad() const;             // leaf flag or has a grad_fn
  Tensor& requires_grad_(bool on = true); // leaves only
  bool is_leaf() const { return !impl_->grad_fn; }
  Tensor grad() const;
  void zero_grad();
  void set_grad(const Tensor& g);
  void backward(const Tensor& grad_output = Tensor(), bool retain_graph = false,
                bool create_graph = false) const;
  Tensor detach() const;                  // shares storage, no grad_fn, no tangents
  std::shared_ptr<Node> grad_fn() const { return impl_->grad_fn; }

  // In-place writes: the storage's version counter (see Storage::version).
  uint64_t version() const { return checked()->storage ? impl_->storage->version : 0; }
  void bump_version() const {
    if (checked()->storage) ++impl_->storage->version;
  }

  // Forward mode (see core/autograd.h for levels).
  Tensor tangent(int level) const;        // undefined if none (symbolic zero)

  // Conversions (differentiable; implemented in ops/).
  Tensor to(DType t) const;
  Tensor to(Device d) const;
  Tensor contiguous() const;

 private:
  TensorImpl* checked() const {
    DF_CHECK(impl_, "Tensor: use of an undefined tensor");
    return impl_.get();
  }
  std::shared_ptr<TensorImpl> impl_;
};

// Make a new tensor with fresh (uninitialised) contiguous storage.
Tensor empty(const Shape& shape, DType dtype = DType::F32, Device device = Device::CPU);
Tensor empty_like(const Tensor& t);
// A view sharing storage with `base`.
Tensor make_view(const Tensor& base, Shape shape, Shape strides, int64_t offset);
Shape contiguous_strides(const Shape& shape);
// Element count; negative dimensions, int64 overflow or more than kMaxTensorElements throw.
int64_t shape_numel(const Shape& s);
// The same check naming `what` in the error; checked_nbytes also bounds the bytes by kMaxTensorBytes.
constexpr int64_t kMaxTensorElements = int64_t(1) << 48, kMaxTensorBytes = int64_t(1) << 48;
int64_t checked_numel(const Shape& s, const char* what);
int64_t checked_nbytes(const Shape& s, DType dtype, const char* what);

// Creation (never require grad; call requires_grad_() for leaves).
Tensor zeros(const Shape& shape, DType dtype = DType::F32, Device device = Device::CPU);
Tensor ones(const Shape& shape, DType dtype = DType::F32, Device device = Device::CPU);
Tensor full(const Shape& shape, double value, DType dtype = DType::F32, Device device = Device::CPU);
Tensor scalar_tensor(double value, DType dtype = DType::F32, Device device = Device::CPU);
Tensor arange(double start, double end, double step = 1, DType dtype = DType::F32);
Tensor linspace(double start, double end, int64_t steps, DType dtype = DType::F32);
Tensor from_vector(const std::vector<double>& values, const Shape& shape, DType dtype = DType::F32,
                   Device device = Device::CPU);
// An i64 index tensor holding `values` exactly (from_vector goes through double: exact below 2^53).
// Without a shape: 1-D, on the CPU.
Tensor from_indices(const std::vector<int64_t>& values, const Shape& shape, Device device = Device::CPU);
Tensor from_indices(const std::vector<int64_t>& values);
Tensor zeros_like(const Tensor& t);
Tensor ones_like(const Tensor& t);
Tensor full_like(const Tensor& t, double value);

// Counter-based Philox4x32-10 random numbers: element i of stream (seed, offset) depends only on
// (seed, offset + i), so `offset` selects a disjoint stream slice and callers split without state.
// rand: the same values on every backend (f64 math, then rounded). randn: f64 computes in double;
// f32 and bf16 use a float stream of their own (not the f64 one rounded), equal on CPU and CUDA up
// to a few f32 ulp (logf/sinf/cosf of the two math libraries).
Tensor randn(const Shape& shape, uint64_t seed, DType dtype = DType::F32, Device device = Device::CPU,
             uint64_t offset = 0);
Tensor rand(const Shape& shape, uint64_t seed, DType dtype = DType::F32, Device device = Device::CPU,
            uint64_t offset = 0);
Tensor randn_like(const Tensor& t, uint64_t seed, uint64_t offset = 0);
Tensor rand_like(const Tensor& t, uint64_t seed, uint64_t offset = 0);

// A stateful convenience stream over the counter RNG: each call takes a fresh slice.
class Generator {
 public:
  explicit Generator(uint64_t seed = 0, uint64_t counter = 0) : seed_(seed), counter_(counter) {}
  Tensor randn(const Shape& shape, DType dtype = DType::F32, Device device = Device::CPU);
  Tensor rand(const Shape& shape, DType dtype = DType::F32, Device device = Device::CPU);
  uint64_t next_u64();
  double uniform();                       // one host-side U[0,1)
  double normal();                        // one host-side N(0,1)
  uint64_t seed() const { return seed_; }
  uint64_t counter() const { return counter_; }
  void set_state(uint64_t seed, uint64_t counter) { seed_ = seed; counter_ = counter; }

 private:
  uint64_t take(uint64_t n);              // reserve n values (rounded up to blocks of 4)
  uint64_t seed_, counter_;
};

// Hooks filled by the CUDA backend when it is linked in (null in a CPU-only build).
struct DeviceHooks {
  void* (*alloc)(size_t nbytes) = nullptr;
  void (*free)(void* p) = nullptr;
  void (*copy)(void* dst, Device dst_dev, const void* src, Device src_dev, size_t nbytes) = nullptr;
  void (*fill_random)(const Tensor& out, uint64_t seed, uint64_t offset, bool normal) = nullptr;
  void (*fill)(const Tensor& out, double value) = nullptr;   // constant fill on the device, async
  void (*synchronize)() = nullptr;                             // waits for all queued device work
};
DeviceHooks& device_hooks();
bool cuda_available();

}  // namespace df
