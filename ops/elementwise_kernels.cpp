// CPU elementwise kernels: one strided loop per functor, fast paths for contiguous operands.
#include "ops/elementwise_kernels.h"


#include <cctype>
#include <string>
#include <type_traits>

#include "ops/cpu_kernels.h"

namespace df {

ElementwiseCudaHooks& elementwise_cuda_hooks() {
  static ElementwiseCudaHooks h;
  return h;
}

Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op) {
  size_t r = std::max(a.size(), b.size());
  Shape out(r);
  for (size_t i = 0; i < r; ++i) {
    int64_t da = i < r - a.size() ? 1 : a[i - (r - a.size())];
    int64_t db = i < r - b.size() ? 1 : b[i - (r - b.size())];
    DF_CHECK(da == db || da == 1 || db == 1, op, ": shapes ", shape_str(a), " and ", shape_str(b),
             " cannot be broadcast together (axis ", i, ": ", da, " vs ", db, ")");
    out[i] = da == 1 ? db : da;
  }
  return out;
}

Shape broadcast_strides(const Tensor& t, const Shape& shape) {
  Shape st(shape.size(), 0);
  size_t off = shape.size() - t.shape().size();
  for (size_t i = 0; i < t.shape().size(); ++i)
    st[off + i] = t.shape()[i] == 1 ? 0 : t.strides()[i];
  return st;
}

int64_t normalize_axis(int64_t axis, int64_t rank, const char* op) {
  int64_t a = axis < 0 ? axis + rank : axis;
  DF_CHECK(a >= 0 && a < std::max<int64_t>(rank, 1), op, ": axis ", axis,
           " is out of range for a tensor of rank ", rank);
  return a;
}

namespace {

constexpr int64_t kParallelGrain = 1 << 15;

template <class T, class F>
void unary_loop(const Tensor& x, Tensor& out, F f) {
  const T* xp = x.data_as<T>();
  T* op = out.data_as<T>();
  int64_t n = x.numel();
  if (x.is_contiguous()) {
#pragma omp parallel for if (n > kParallelGrain) schedule(static)
    for (int64_t i = 0; i < n; ++i) op[i] = f(xp[i]);
    return;
  }
  int64_t o = 0;
  for_each_strided<1>(x.shape(), {x.strides().data()}, [&](auto off, int64_t len, auto st) {
    const T* p = xp + off[0];
    for (int64_t i = 0; i < len; ++i) op[o++] = f(p[i * st[0]]);
  });
}

template <class F>
Tensor unary_cpu(const Tensor& x, double a, double b, const char* name) {
  Tensor out = empty(x.shape(), x.dtype(), Device::CPU);
  F f{a, b};
  DF_DISPATCH_FLOAT(x.dtype(), name, unary_loop<scalar_t>(x, out, f));
  return out;
}

template <class T, class F>
void binary_loop(const Tensor& a, const Tensor& b, Tensor& out, F f) {
  const T* ap = a.data_as<T>();
  const T* bp = b.data_as<T>();
  T* op = out.data_as<T>();
  int64_t n = out.numel();
  const Shape& shape = out.shape();
  if (a.shape() == shape && b.shape() == shape && a.is_contiguous() && b.is_contiguous()) {
#pragma omp parallel for if (n > kParallelGrain) schedule(static)
    for (int64_t i = 0; i < n; ++i) op[i] = f(ap[i], bp[i]);
    return;
  }
  if (b.numel() == 1 && a.shape() == shape && a.is_contiguous()) {
    T s = bp[0];
#pragma omp parallel for if (n > kParallelGrain) schedule(static)
    for (int64_t i = 0; i < n; ++i) op[i] = f(ap[i], s);
    return;
  }
  Shape sa = broadcast_strides(a, shape), sb = broadcast_strides(b, shape);
  int64_t o = 0;
  for_each_strided<2>(shape, {sa.data(), sb.data()}, [&](auto off, int64_t len, auto st) {
    const T* pa = ap + off[0];
    const T* pb = bp + off[1];
    T* po = op + o;
    if (st[0] == 1 && st[1] == 1) for (int64_t i = 0; i < len; ++i) po[i] = f(pa[i], pb[i]);
    else if (st[0] == 1 && st[1] == 0) for (int64_t i = 0; i < len; ++i) po[i] = f(pa[i], pb[0]);
    else if (st[0] == 0 && st[1] == 1) for (int64_t i = 0; i < len; ++i) po[i] = f(pa[0], pb[i]);
    else for (int64_t i = 0; i < len; ++i) po[i] = f(pa[i * st[0]], pb[i * st[1]]);
    o += len;
  });
}

template <class F>
Tensor binary_cpu(const Tensor& a, const Tensor& b, const Shape& shape, const char* name) {
  Tensor out = empty(shape, a.dtype(), Device::CPU);
  DF_DISPATCH_FLOAT(a.dtype(), name, binary_loop<scalar_t>(a, b, out, F{}));
  return out;
}

void check_same(const Tensor& a, const Tensor& b, const char* op) {
  DF_CHECK(a.dtype() == b.dtype(), op, ": dtype mismatch, ", a.desc(), " vs ", b.desc());
  DF_CHECK(a.device() == b.device(), op, ": device mismatch, ", a.desc(), " vs ", b.desc());
}

}  // namespace

// The op name of a functor kind for error messages: "AddScalar" -> "add_scalar".
std::string kind_op_name(const char* kind) {
  std::string s;
  for (const char* c = kind; *c; ++c) {
    if (std::isupper((unsigned char)*c)) {
      if (c != kind) s += '_';
      s += char(std::tolower((unsigned char)*c));
    } else {
      s += *c;
    }
  }
  return s;
}

const char* unary_kind_name(UnaryKind kind) {
  switch (kind) {
#define DF_CASE(name, expr) case UnaryKind::name: return #name;
    DF_UNARY_FUNCTORS(DF_CASE)
#undef DF_CASE
  }
  return "unary";
}

Tensor unary_kernel(UnaryKind kind, const Tensor& x, double a, double b) {
  if (!is_floating(x.dtype())) check_floating(x, kind_op_name(unary_kind_name(kind)).c_str());
  if (x.device() == Device::CUDA) {
    DF_CHECK(elementwise_cuda_hooks().unary, "unary op: CUDA tensor but no CUDA backend");
    return elementwise_cuda_hooks().unary(kind, x, a, b);
  }
  switch (kind) {
#define DF_CASE(name, expr) case UnaryKind::name: return unary_cpu<name##F>(x, a, b, #name);
    DF_UNARY_FUNCTORS(DF_CASE)
#undef DF_CASE
  }
  DF_FAIL("unary_kernel: unknown kind");
}

Tensor binary_kernel(BinaryKind kind, const Tensor& a, const Tensor& b, const char* opname) {
  check_floating(a, opname);
  check_floating(b, opname);
  check_same(a, b, opname);
  Shape shape = broadcast_shapes(a.shape(), b.shape(), opname);
  if (a.device() == Device::CUDA) {
    DF_CHECK(elementwise_cuda_hooks().binary, opname, ": CUDA tensor but no CUDA backend");
    return elementwise_cuda_hooks().binary(kind, a, b);
  }
  switch (kind) {
#define DF_CASE(name, expr) case BinaryKind::name: return binary_cpu<name##BF>(a, b, shape, opname);
    DF_BINARY_FUNCTORS(DF_CASE)
#undef DF_CASE
  }
  DF_FAIL("binary_kernel: unknown kind");
}

Tensor where_kernel(const Tensor& cond, const Tensor& a, const Tensor& b) {
  for (const Tensor* t : {&cond, &a, &b}) check_floating(*t, "where");
  check_same(a, b, "where");
  check_same(cond, a, "where");
  Shape shape = broadcast_shapes(broadcast_shapes(cond.shape(), a.shape(), "where"), b.shape(), "where");
  if (a.device() == Device::CUDA) return elementwise_cuda_hooks().where(cond, a, b);
  Tensor out = empty(shape, a.dtype(), Device::CPU);
  Shape sc = broadcast_strides(cond, shape), sa = broadcast_strides(a, shape), sb = broadcast_strides(b, shape);
  DF_DISPATCH_FLOAT(a.dtype(), "where", {
    const scalar_t* cp = cond.data_as<scalar_t>();
    const scalar_t* ap = a.data_as<scalar_t>();
    const scalar_t* bp = b.data_as<scalar_t>();
    scalar_t* op = out.data_as<scalar_t>();
    int64_t o = 0;
    for_each_strided<3>(shape, {sc.data(), sa.data(), sb.data()}, [&](auto off, int64_t len, auto st) {
      for (int64_t i = 0; i < len; ++i, ++o)
        op[o] = cp[off[0] + i * st[0]] != 0 ? ap[off[1] + i * st[1]] : bp[off[2] + i * st[2]];
    });
  });
  return out;
}

namespace {
template <class S, class D>
void copy_loop(const Tensor& x, Tensor& out) {
  const S* xp = x.data_as<S>();
  D* op = out.data_as<D>();
  auto conv = [](S v) -> D {
    if constexpr (std::is_same_v<S, D>) return v;
    else if constexpr (std::is_same_v<S, bf16> && std::is_same_v<D, int64_t>) return float_to_i64(v.to_float());
    else if constexpr (std::is_same_v<S, bf16>) return D(v.to_float());
    else if constexpr (std::is_same_v<D, bf16>) return bf16::from_float(float(v));
    else if constexpr (std::is_same_v<D, int64_t>) return float_to_i64(double(v));
    else return D(v);
  };
  if (x.is_contiguous()) {
    int64_t n = x.numel();
    for (int64_t i = 0; i < n; ++i) op[i] = conv(xp[i]);
    return;
  }
  int64_t o = 0;
  for_each_strided<1>(x.shape(), {x.strides().data()}, [&](auto off, int64_t len, auto st) {
    for (int64_t i = 0; i < len; ++i) op[o++] = conv(xp[off[0] + i * st[0]]);
  });
}
template <class S>
void copy_to(const Tensor& x, Tensor& out) {
  switch (out.dtype()) {
    case DType::F32: copy_loop<S, float>(x, out); break;
    case DType::F64: copy_loop<S, double>(x, out); break;
    case DType::BF16: copy_loop<S, bf16>(x, out); break;
    case DType::I64: copy_loop<S, int64_t>(x, out); break;
  }
}
}  // namespace

Tensor copy_kernel(const Tensor& x, DType dtype) {
  if (x.device() == Device::CUDA) {
    DF_CHECK(elementwise_cuda_hooks().copy, "copy: CUDA tensor but no CUDA backend");
    return elementwise_cuda_hooks().copy(x, dtype);
  }
  Tensor out = empty(x.shape(), dtype, Device::CPU);
  switch (x.dtype()) {
    case DType::F32: copy_to<float>(x, out); break;
    case DType::F64: copy_to<double>(x, out); break;
    case DType::BF16: copy_to<bf16>(x, out); break;
    case DType::I64: copy_to<int64_t>(x, out); break;
  }
  return out;
}

}  // namespace df
