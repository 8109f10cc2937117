// Tensor handle, storage, creation functions and the counter-based RNG.
#include "core/tensor.h"

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <sstream>

#include "core/autograd.h"
#include "core/philox.h"
#include "ops/ops.h"

namespace df {

std::string shape_str(const Shape& s) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  os << "]";
  return os.str();
}

DeviceHooks& device_hooks() {
  static DeviceHooks h;
  return h;
}

bool cuda_available() { return device_hooks().alloc != nullptr; }

Storage::Storage(size_t n, Device dev) : nbytes(n), device(dev) {
  if (dev == Device::CPU) {
    size_t rounded = ((n + 63) / 64) * 64;
    ptr = rounded ? std::aligned_alloc(64, rounded) : nullptr;
    DF_CHECK(ptr || !n, "alloc: out of host memory asking for ", n, " bytes");
  } else {
    DF_CHECK(device_hooks().alloc, "alloc: a CUDA tensor was requested but this build has no CUDA "
             "backend or no CUDA device is present");
    ptr = device_hooks().alloc(n);
  }
}

Storage::~Storage() {
  if (!ptr) return;
  if (device == Device::CPU) std::free(ptr);
  else if (device_hooks().free) device_hooks().free(ptr);
}

// Every element and byte count of a shape comes from here, so a hostile shape (a config, a checkpoint
// header, an op's arguments) can never wrap int64 into a small allocation that the kernels then overrun.
int64_t checked_numel(const Shape& s, const char* what) {
  int64_t n = 1;
  bool too_big = false;
  for (auto d : s) {
    DF_CHECK(d >= 0, what, ": negative dimension in shape ", shape_str(s));
    too_big = too_big || __builtin_mul_overflow(n, d, &n) || n > kMaxTensorElements;
  }
  // A zero dimension makes any product zero: such a tensor is empty, not too large.
  if (too_big) {
    for (auto d : s)
      if (d == 0) return 0;
    DF_FAIL(what, ": shape ", shape_str(s), " has more than 2^48 elements (the product overflows or is beyond "
            "any memory)");
  }
  return n;
}

int64_t checked_nbytes(const Shape& s, DType dtype, const char* what) {
  int64_t n = checked_numel(s, what), bytes = 0;
  DF_CHECK(!__builtin_mul_overflow(n, int64_t(dtype_size(dtype)), &bytes) && bytes <= kMaxTensorBytes, what,
           ": shape ", shape_str(s), " ", dtype_name(dtype), " needs more than 2^48 bytes");
  return bytes;
}

int64_t shape_numel(const Shape& s) { return checked_numel(s, "shape"); }

Shape contiguous_strides(const Shape& shape) {
  Shape st(shape.size());
  int64_t acc = 1;
  for (int64_t i = (int64_t)shape.size() - 1; i >= 0; --i) {
    st[i] = acc;
    acc *= std::max<int64_t>(shape[i], 1);
  }
  return st;
}

const Shape& Tensor::shape() const {
  DF_CHECK(impl_, "Tensor: use of an undefined tensor");
  return impl_->shape;
}
const Shape& Tensor::strides() const { return checked()->strides; }

int64_t Tensor::size(int64_t d) const {
  int64_t n = dim();
  int64_t dd = d < 0 ? d + n : d;
  DF_CHECK(dd >= 0 && dd < n, "size: axis ", d, " out of range for a tensor of rank ", n);
  return impl_->shape[dd];
}

int64_t Tensor::numel() const { return shape_numel(shape()); }

bool Tensor::is_contiguous() const {
  const auto& s = impl_->shape;
  int64_t acc = 1;
  for (int64_t i = (int64_t)s.size() - 1; i >= 0; --i) {
    if (s[i] != 1 && impl_->strides[i] != acc) return false;
    acc *= s[i];
  }
  return true;
}

std::string Tensor::desc() const {
  if (!impl_) return "undefined";
  return cat(dtype_name(dtype()), shape_str(shape()), " ", device_name(device()));
}

void* Tensor::data() const {
  DF_CHECK(impl_, "data: undefined tensor");
  return static_cast<char*>(impl_->storage->ptr) + impl_->offset * (int64_t)dtype_size(impl_->dtype);
}

Tensor empty(const Shape& shape, DType dtype, Device device) {
  int64_t nbytes = checked_nbytes(shape, dtype, "empty");
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = std::make_shared<Storage>(size_t(nbytes), device);
  impl->shape = shape;
  impl->strides = contiguous_strides(shape);
  impl->dtype = dtype;
  impl->device = device;
  return Tensor(impl);
}

Tensor empty_like(const Tensor& t) { return empty(t.shape(), t.dtype(), t.device()); }

// A view must stay inside its storage: the lowest and highest element it can reach are computed with
// overflow checks (strides may be 0 or negative), so a bad shape cannot read or write past the buffer.
static void check_view_extent(const Tensor& base, const Shape& shape, const Shape& strides, int64_t offset) {
  DF_CHECK(shape.size() == strides.size(), "make_view: shape ", shape_str(shape), " and strides ",
           shape_str(strides), " differ in rank");
  if (checked_numel(shape, "make_view") == 0) return;
  int64_t lo = offset, hi = offset, step = 0;
  bool overflow = false;
  for (size_t i = 0; i < shape.size(); ++i) {
    overflow = overflow || __builtin_mul_overflow(shape[i] - 1, strides[i], &step);
    overflow = overflow || __builtin_add_overflow(step < 0 ? lo : hi, step, step < 0 ? &lo : &hi);
  }
  int64_t elems = int64_t(base.impl()->storage->nbytes / dtype_size(base.dtype()));
  DF_CHECK(!overflow && lo >= 0 && hi < elems, "make_view: shape ", shape_str(shape), " with strides ",
           shape_str(strides), " at offset ", offset, " reaches outside the storage of ", elems, " elements");
}

Tensor make_view(const Tensor& base, Shape shape, Shape strides, int64_t offset) {
  check_view_extent(base, shape, strides, offset);
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = base.impl()->storage;
  impl->shape = std::move(shape);
  impl->strides = std::move(strides);
  impl->offset = offset;
  impl->dtype = base.dtype();
  impl->device = base.device();
  return Tensor(impl);
}

namespace {
// Fill a fresh contiguous CPU buffer through a per-index generator, converting to dtype.
template <class G>
void fill_host(void* p, DType dt, int64_t n, G gen) {
  if (dt == DType::F32) {
    float* f = static_cast<float*>(p);
    for (int64_t i = 0; i < n; ++i) f[i] = float(gen(i));
  } else if (dt == DType::F64) {
    double* f = static_cast<double*>(p);
    for (int64_t i = 0; i < n; ++i) f[i] = gen(i);
  } else if (dt == DType::I64) {
    int64_t* f = static_cast<int64_t*>(p);
    for (int64_t i = 0; i < n; ++i) f[i] = float_to_i64(gen(i));
  } else {
    bf16* f = static_cast<bf16*>(p);
    for (int64_t i = 0; i < n; ++i) f[i] = bf16::from_float(float(gen(i)));
  }
}

template <class G>
Tensor make_filled(const Shape& shape, DType dtype, Device device, G gen) {
  Tensor host = empty(shape, dtype, Device::CPU);
  fill_host(host.data(), dtype, host.numel(), gen);
  if (device == Device::CPU) return host;
  Tensor dev = empty(shape, dtype, device);
  device_hooks().copy(dev.data(), device, host.data(), Device::CPU, host.numel() * dtype_size(dtype));
  return dev;
}
}  // namespace

Tensor full(const Shape& shape, double value, DType dtype, Device device) {
  if (device != Device::CPU && device_hooks().fill) {
    // Filled in place on the device: no host buffer, no copy that could wait for the stream.
    Tensor t = empty(shape, dtype, device);
    device_hooks().fill(t, value);
    return t;
  }
  return make_filled(shape, dtype, device, [value](int64_t) { return value; });
}
Tensor zeros(const Shape& shape, DType dtype, Device device) { return full(shape, 0, dtype, device); }
Tensor ones(const Shape& shape, DType dtype, Device device) { return full(shape, 1, dtype, device); }
Tensor scalar_tensor(double v, DType dtype, Device device) { return full({}, v, dtype, device); }
Tensor zeros_like(const Tensor& t) { return zeros(t.shape(), t.dtype(), t.device()); }
Tensor ones_like(const Tensor& t) { return ones(t.shape(), t.dtype(), t.device()); }
Tensor full_like(const Tensor& t, double v) { return full(t.shape(), v, t.dtype(), t.device()); }

Tensor arange(double start, double end, double step, DType dtype) {
  DF_CHECK(step != 0, "arange: step must be non-zero");
  int64_t n = std::max<int64_t>(0, (int64_t)std::ceil((end - start) / step));
  return make_filled({n}, dtype, Device::CPU, [=](int64_t i) { return start + step * double(i); });
}

Tensor linspace(double start, double end, int64_t steps, DType dtype) {
  DF_CHECK(steps >= 1, "linspace: steps must be >= 1, got ", steps);
  double h = steps > 1 ? (end - start) / double(steps - 1) : 0;
  return make_filled({steps}, dtype, Device::CPU,
                     [=](int64_t i) { return i == steps - 1 ? end : start + h * double(i); });
}

Tensor from_vector(const std::vector<double>& v, const Shape& shape, DType dtype, Device device) {
  DF_CHECK((int64_t)v.size() == shape_numel(shape), "from_vector: ", v.size(),
           " values do not fill shape ", shape_str(shape));
  return make_filled(shape, dtype, device, [&v](int64_t i) { return v[i]; });
}

Tensor from_indices(const std::vector<int64_t>& v, const Shape& shape, Device device) {
  DF_CHECK((int64_t)v.size() == shape_numel(shape), "from_indices: ", v.size(),
           " values do not fill shape ", shape_str(shape));
  Tensor host = empty(shape, DType::I64, Device::CPU);
  if (!v.empty()) std::memcpy(host.data(), v.data(), v.size() * sizeof(int64_t));
  return host.to(device);
}
Tensor from_indices(const std::vector<int64_t>& v) { return from_indices(v, {(int64_t)v.size()}); }

static Tensor random_tensor(const Shape& shape, uint64_t seed, DType dtype, Device device,
                            uint64_t offset, bool normal) {
  DF_CHECK(is_floating(dtype), normal ? "randn" : "rand", ": expected a floating dtype (f32, f64 or bf16), got ",
           dtype_name(dtype));
  if (device != Device::CPU && device_hooks().fill_random) {
    Tensor t = empty(shape, dtype, device);
    device_hooks().fill_random(t, seed, offset, normal);
    return t;
  }
  // Normals in f32/bf16 come from the float stream (core/philox.h), like the CUDA fill.
  bool f64 = dtype == DType::F64;
  return make_filled(shape, dtype, device, [=](int64_t i) {
    uint64_t k = offset + uint64_t(i);
    if (!normal) return philox_uniform(seed, k);
    return f64 ? philox_normal(seed, k) : double(philox_normal_f32(seed, k));
  });
}

Tensor randn(const Shape& s, uint64_t seed, DType dt, Device dev, uint64_t off) {
  return random_tensor(s, seed, dt, dev, off, true);
}
Tensor rand(const Shape& s, uint64_t seed, DType dt, Device dev, uint64_t off) {
  return random_tensor(s, seed, dt, dev, off, false);
}
Tensor randn_like(const Tensor& t, uint64_t seed, uint64_t off) { return randn(t.shape(), seed, t.dtype(), t.device(), off); }
Tensor rand_like(const Tensor& t, uint64_t seed, uint64_t off) { return rand(t.shape(), seed, t.dtype(), t.device(), off); }

uint64_t Generator::take(uint64_t n) {
  uint64_t start = counter_;
  counter_ += (n + 3) & ~uint64_t(3);
  return start;
}
Tensor Generator::randn(const Shape& s, DType dt, Device dev) {
  return df::randn(s, seed_, dt, dev, take(shape_numel(s)));
}
Tensor Generator::rand(const Shape& s, DType dt, Device dev) {
  return df::rand(s, seed_, dt, dev, take(shape_numel(s)));
}
double Generator::uniform() { return philox_uniform(seed_, take(1)); }
double Generator::normal() { return philox_normal(seed_, take(1)); }
uint64_t Generator::next_u64() {
  Philox4 r = philox4x32(take(4) >> 2, seed_ ^ 0xA0761D6478BD642Full);
  return (uint64_t(r.v[0]) << 32) | r.v[1];
}

// ---- host reads ----
std::vector<double> Tensor::to_vector() const {
  Tensor c = *this;
  if (device() != Device::CPU) {
    NoGrad ng;
    c = to_device(detach(), Device::CPU);
  }
  if (!c.is_contiguous()) {
    NoGrad ng;
    c = copy(c.detach());
  }
  int64_t n = c.numel();
  std::vector<double> out(n);
  if (c.dtype() == DType::F32) for (int64_t i = 0; i < n; ++i) out[i] = c.data_as<float>()[i];
  else if (c.dtype() == DType::F64) for (int64_t i = 0; i < n; ++i) out[i] = c.data_as<double>()[i];
  else if (c.dtype() == DType::I64) for (int64_t i = 0; i < n; ++i) out[i] = double(c.data_as<int64_t>()[i]);
  else for (int64_t i = 0; i < n; ++i) out[i] = c.data_as<bf16>()[i].to_float();
  return out;
}

double Tensor::item() const {
  DF_CHECK(numel() == 1, "item: expected a tensor with one element, got ", desc());
  return to_vector()[0];
}

// ---- autograd accessors ----
bool Tensor::requires_grad() const { return impl_ && (impl_->requires_grad || impl_->grad_fn); }

Tensor& Tensor::requires_grad_(bool on) {
  DF_CHECK(!impl_->grad_fn, "requires_grad_: only leaf tensors can be marked; this one was "
           "produced by '", impl_->grad_fn->name(), "' (detach() it first)");
  DF_CHECK(!on || is_floating(dtype()), "requires_grad_: only floating tensors can require grad, got ", desc());
  impl_->requires_grad = on;
  return *this;
}

Tensor Tensor::grad() const { return impl_->grad ? Tensor(impl_->grad) : Tensor(); }
void Tensor::zero_grad() { impl_->grad.reset(); }
void Tensor::set_grad(const Tensor& g) { impl_->grad = g.impl_ptr(); }

void Tensor::backward(const Tensor& g, bool retain, bool create) const {
  df::backward({*this}, g.defined() ? Tensors{g} : Tensors{}, retain, create);
}

Tensor Tensor::detach() const {
  Tensor d = make_view(*this, impl_->shape, impl_->strides, impl_->offset);
  return d;
}

Tensor Tensor::tangent(int level) const {
  if (!impl_ || !impl_->tangents) return Tensor();
  for (auto& [lv, t] : impl_->tangents->by_level)
    if (lv == level) return Tensor(t);
  return Tensor();
}

Tensor Tensor::to(DType t) const { return t == dtype() ? *this : cast(*this, t); }
Tensor Tensor::to(Device d) const { return d == device() ? *this : to_device(*this, d); }
Tensor Tensor::contiguous() const { return is_contiguous() ? *this : copy(*this); }

}  // namespace df
