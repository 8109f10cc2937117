// Ops whose behaviour depends on a random stream or an index list: dropout (mask from the counter-based
// Philox stream, so it is a pure function of (seed, offset) and a JVP pass and a gradient pass agree)
// and embedding lookup.
#include <cstring>

#include "core/philox.h"
#include "ops/cpu_kernels.h"
#include "ops/elementwise_kernels.h"
#include "ops/image_kernels.h"
#include "ops/rules.h"

namespace df {

namespace {

// The kept-value scale 1 / (1 - p); p = 1 drops everything.
double keep_scale(double p) { return p < 1 ? 1.0 / (1.0 - p) : 0.0; }

// The mask in x's dtype on the CPU: 0 where dropped, 1 / (1 - p) where kept.
template <class T>
void dropout_mask_cpu(T* m, int64_t n, double p, uint64_t seed, uint64_t offset) {
  T keep = T(keep_scale(p));
  for (int64_t i = 0; i < n; ++i) m[i] = philox_uniform(seed, offset + uint64_t(i)) < p ? T(0) : keep;
}

}  // namespace

Tensor dropout_kernel(const Tensor& x0, double p, uint64_t seed, uint64_t offset) {
  check_floating(x0, "dropout");
  Tensor x = x0.is_contiguous() ? x0 : copy_kernel(x0, x0.dtype());
  int64_t n = x.numel();
  if (x.device() == Device::CUDA) {
    if (image_cuda_hooks().dropout) return image_cuda_hooks().dropout(x, p, seed, offset);
    // Without a CUDA kernel the mask is drawn on the host (same values by construction) and copied over.
    Tensor m = empty(x.shape(), x.dtype(), Device::CPU);
    DF_DISPATCH_FLOAT(x.dtype(), "dropout", dropout_mask_cpu(m.data_as<scalar_t>(), n, p, seed, offset));
    return binary_kernel(BinaryKind::Mul, x, to_device(m, Device::CUDA), "dropout");
  }
  Tensor out = empty(x.shape(), x.dtype(), Device::CPU);
  DF_DISPATCH_FLOAT(x.dtype(), "dropout", {
    const scalar_t* xp = x.data_as<scalar_t>();
    scalar_t* op = out.data_as<scalar_t>();
    scalar_t keep = scalar_t(keep_scale(p));
    for (int64_t i = 0; i < n; ++i) op[i] = philox_uniform(seed, offset + uint64_t(i)) < p ? scalar_t(0) : xp[i] * keep;
  });
  return out;
}

namespace {

// attrs: a = p, i = seed and dims[0] = offset (their uint64 bits). Linear in x with a fixed mask, and
// the mask is symmetric, so the op is its own adjoint.
uint64_t as_u64(int64_t v) {
  uint64_t u;
  std::memcpy(&u, &v, sizeof u);
  return u;
}
int64_t as_i64(uint64_t u) {
  int64_t v;
  std::memcpy(&v, &u, sizeof v);
  return v;
}

const OpDef& dropout_op() {
  static OpDef op = def_linear(
      "dropout",
      [](const Tensors& in, const Attrs& at) {
        return Tensors{dropout_kernel(in[0], at.a, as_u64(at.i), as_u64(at.dims[0]))};
      },
      by_op(dropout_op),
      dropout_op);
  return op;
}

}  // namespace

Tensor dropout(const Tensor& x, double p, uint64_t seed, uint64_t offset, bool training) {
  DF_CHECK(x.defined(), "dropout: input is undefined");
  DF_CHECK(p >= 0 && p <= 1, "dropout: p must be in [0, 1], got ", p, " for ", x.desc());
  if (!training || p == 0) return x;
  Attrs at;
  at.a = p;
  at.i = as_i64(seed);
  at.dims = {as_i64(offset)};
  return apply1(dropout_op(), {x}, at);
}

Tensor embedding(const Tensor& weight, const std::vector<int64_t>& ids) {
  DF_CHECK(weight.defined() && weight.dim() == 2, "embedding: weight must be (V, D), got ",
           weight.defined() ? weight.desc() : std::string("undefined"));
  for (int64_t id : ids)
    DF_CHECK(id >= 0 && id < weight.size(0), "embedding: id ", id, " is out of range for weight ", weight.desc(),
             " (", weight.size(0), " rows)");
  return index_select(weight, 0, ids);
}

}  // namespace df
