// Module parameter registry, in-place parameter assignment, Linear and the positional embedding.
#include "models/module.h"

#include <cmath>
#include <cstring>
#include <set>

#include "ops/cpu_kernels.h"
#include "ops/ops.h"

namespace df {

void Module::check_new_name(const std::string& name) const {
  DF_CHECK(!name.empty(), "Module: parameter/module names must be non-empty");
  for (const Entry& e : entries_)
    DF_CHECK(e.name != name, "Module: name '", name, "' is already registered");
}

Tensor& Module::register_parameter(const std::string& name, Tensor value) {
  check_new_name(name);
  DF_CHECK(value.defined(), "Module::register_parameter: '", name, "' is undefined");
  // Parameters are leaves with their own contiguous storage, so in-place updates are safe.
  if (!value.is_leaf() || !value.is_contiguous()) {
    NoGrad ng;
    value = copy(value.detach());
  }
  value.requires_grad_(true);
  params_.push_back(std::make_unique<Tensor>(value));
  entries_.push_back({name, (int64_t)params_.size() - 1, nullptr});
  return *params_.back();
}

void Module::add_child(const std::string& name, std::shared_ptr<Module> m) {
  check_new_name(name);
  DF_CHECK(m != nullptr, "Module::register_module: '", name, "' is null");
  entries_.push_back({name, -1, std::move(m)});
}

void Module::collect(const std::string& prefix, std::vector<std::pair<std::string, Tensor>>& out) const {
  for (const Entry& e : entries_) {
    if (e.param >= 0) out.emplace_back(prefix + e.name, *params_[e.param]);
    else e.child->collect(prefix + e.name + ".", out);
  }
}

std::vector<std::pair<std::string, Tensor>> Module::named_parameters() const {
  std::vector<std::pair<std::string, Tensor>> out;
  collect("", out);
  return out;
}

Tensors Module::parameters() const {
  Tensors out;
  for (auto& [n, p] : named_parameters()) out.push_back(p);
  return out;
}

int64_t Module::num_parameters() const {
  int64_t n = 0;
  for (auto& [name, p] : named_parameters()) n += p.numel();
  return n;
}

void Module::zero_grad() {
  for (auto& [n, p] : named_parameters()) {
    Tensor q = p;
    q.zero_grad();
  }
}

void Module::set_requires_grad(bool on) {
  for (auto& [n, p] : named_parameters()) {
    Tensor q = p;
    q.requires_grad_(on);
  }
}

void Module::to(Device device) {
  for (auto& [n, p] : named_parameters()) {
    if (p.device() == device) continue;
    Tensor moved;
    {
      NoGrad ng;
      moved = to_device(p.detach(), device);
      if (!moved.is_contiguous()) moved = copy(moved);
    }
    TensorImpl* impl = p.impl();
    impl->storage = moved.impl()->storage;
    impl->offset = moved.offset();
    impl->strides = moved.strides();
    impl->device = device;
    impl->grad.reset();
  }
}

std::vector<std::pair<std::string, std::shared_ptr<Module>>> Module::named_children() const {
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> out;
  for (const Entry& e : entries_)
    if (!e.child) continue;
    else out.emplace_back(e.name, e.child);
  return out;
}

void Module::load_parameters(const std::vector<std::pair<std::string, Tensor>>& values) {
  auto mine = named_parameters();
  std::set<std::string> seen;
  for (auto& [name, v] : values) {
    DF_CHECK(seen.insert(name).second, "load_parameters: '", name, "' given twice");
    const Tensor* dst = nullptr;
    for (auto& [n, p] : mine)
      if (n == name) dst = &p;
    if (!dst) {
      std::string names;
      for (auto& [n, p] : mine) names += (names.empty() ? "" : ", ") + n;
      DF_FAIL("load_parameters: no parameter named '", name, "' (this module has: ", names, ")");
    }
    DF_CHECK(v.shape() == dst->shape(), "load_parameters: '", name, "' expected shape ",
             shape_str(dst->shape()), ", got ", v.desc());
    assign_(*dst, v);
  }
  for (auto& [n, p] : mine)
    DF_CHECK(seen.count(n), "load_parameters: no value given for parameter '", n, "'");
}

void assign_(const Tensor& dst, const Tensor& src) {
  DF_CHECK(dst.shape() == src.shape(), "assign_: expected shape ", shape_str(dst.shape()), ", got ",
           src.desc());
  DF_CHECK(dst.is_contiguous(), "assign_: destination must be contiguous, got ", dst.desc());
  NoGrad ng;
  Tensor s = src.detach();
  if (s.dtype() != dst.dtype()) s = cast(s, dst.dtype());
  if (s.device() != dst.device()) s = to_device(s, dst.device());
  if (!s.is_contiguous()) s = copy(s);
  if (s.impl()->storage == dst.impl()->storage && s.offset() == dst.offset()) return;
  dst.bump_version();
  size_t nbytes = size_t(dst.numel()) * dtype_size(dst.dtype());
  if (dst.device() == Device::CPU) {
    std::memmove(dst.data(), s.data(), nbytes);
  } else {
    DF_CHECK(device_hooks().copy != nullptr, "assign_: no copy hook for device ",
             device_name(dst.device()));
    device_hooks().copy(dst.data(), dst.device(), s.data(), s.device(), nbytes);
  }
}

Linear::Linear(int64_t in, int64_t out, bool has_bias, Generator& g, DType dtype)
    : in_features(in), out_features(out) {
  DF_CHECK(in > 0 && out > 0, "Linear: expected positive sizes, got in=", in, " out=", out);
  double bound = 1.0 / std::sqrt(double(in));
  // U(-bound, bound) from the generator's uniform stream, drawn in f64 then cast for determinism
  // across dtypes.
  auto uniform = [&](const Shape& s) {
    NoGrad ng;
    Tensor u = g.rand(s, DType::F64);
    return cast(add(mul(u, 2 * bound), -bound), dtype);
  };
  weight = register_parameter("weight", uniform({out, in}));
  if (has_bias) bias = register_parameter("bias", uniform({out}));
}

Tensor Linear::forward(const Tensor& x) const {
  DF_CHECK(x.dim() >= 1 && x.size(-1) == in_features, "Linear: expected input (..., ", in_features,
           "), got ", x.desc());
  return linear(x, weight, bias);
}

Tensor positional_embedding(const Tensor& c, int64_t dim, double max_period) {
  DF_CHECK(dim >= 2 && dim % 2 == 0, "positional_embedding: dim must be even and >= 2, got ", dim);
  DF_CHECK(c.dim() <= 1, "positional_embedding: expected c of shape (B) or (), got ", c.desc());
  int64_t half = dim / 2;
  // sin(a) = cos(a - pi/2): one cos over [w, w] with phases [0, pi/2] gives [cos, sin] without a
  // concatenation, and stays differentiable to any order.
  std::vector<double> freqs(dim), phase(dim);
  for (int64_t k = 0; k < half; ++k) {
    double w = std::pow(max_period, -double(k) / double(half));
    freqs[k] = freqs[k + half] = w;
    phase[k] = 0;
    phase[k + half] = M_PI / 2;
  }
  Tensor f = from_vector(freqs, {dim}, c.dtype(), c.device());
  Tensor ph = from_vector(phase, {dim}, c.dtype(), c.device());
  Tensor cc = c.dim() == 1 ? unsqueeze(c, 1) : c;
  return cos(sub(mul(cc, f), ph));
}

}  // namespace df
