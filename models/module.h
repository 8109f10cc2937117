// Module: a tree of named parameters (names like "blocks.3.attn.qkv.weight"), plus the basic
// layers every model shares: Linear and the sinusoidal positional embedding of a scalar.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/autograd.h"
#include "core/tensor.h"

namespace df {

class Module {
 public:
  virtual ~Module() = default;
  // Recursive, in registration order (parameters and sub-modules interleaved as registered).
  std::vector<std::pair<std::string, Tensor>> named_parameters() const;
  Tensors parameters() const;
  int64_t num_parameters() const;    // total element count
  void zero_grad();
  // Copies values into the existing parameter storage (NoGrad), so handles held by optimizers
  // and EMAs stay valid. Strict: every parameter must be given once, with its shape; the dtype
  // is converted if it differs.
  void load_parameters(const std::vector<std::pair<std::string, Tensor>>& values);
  void set_requires_grad(bool on);   // e.g. to freeze a teacher network
  // Moves every parameter to `device` in place: each parameter's TensorImpl gets the new storage, so
  // every handle to it (layer fields, optimizers, EMAs built afterwards) sees the moved tensor.
  // Gradients are dropped. Build optimizers and EMAs after the move.
  void to(Device device);
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> named_children() const;

 protected:
  Tensor& register_parameter(const std::string& name, Tensor value);  // sets requires_grad
  template <class M>
  std::shared_ptr<M> register_module(const std::string& name, std::shared_ptr<M> m) {
    add_child(name, m);
    return m;
  }

 private:
  void add_child(const std::string& name, std::shared_ptr<Module> m);
  void check_new_name(const std::string& name) const;
  void collect(const std::string& prefix, std::vector<std::pair<std::string, Tensor>>& out) const;
  struct Entry {
    std::string name;
    int64_t param = -1;              // index into params_, or -1 for a child module
    std::shared_ptr<Module> child;
  };
  std::vector<Entry> entries_;
  std::vector<std::unique_ptr<Tensor>> params_;  // stable addresses for the returned references
};

// Copy src's values into dst's storage in place (NoGrad; shapes must match, dtype converted).
// dst must be contiguous. Used for parameter loading, optimizer and EMA updates.
void assign_(const Tensor& dst, const Tensor& src);

// y = x W^T + b with W (out, in); PyTorch-style init U(-1/sqrt(in), 1/sqrt(in)) for W and b.
class Linear : public Module {
 public:
  Linear(int64_t in, int64_t out, bool bias, Generator& g, DType dtype = DType::F32);
  Tensor forward(const Tensor& x) const;
  Tensor weight, bias;
  int64_t in_features, out_features;
};

// Sinusoidal embedding of a per-sample scalar c (B) -> (B, dim): [cos(c w_k), sin(c w_k)] with
// w_k = max_period^(-k/half), k = 0..half-1, half = dim/2 (dim must be even). c may also be a
// scalar () giving (dim). Differentiable in c to any order (the sCM tangent flows through it).
Tensor positional_embedding(const Tensor& c, int64_t dim, double max_period = 10000);

}  // namespace df
