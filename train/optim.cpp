// Optimizer updates as raw host loops over f32/f64 parameter buffers (in place), gradient
// clipping and EMAs. Parameters on CUDA are updated by one fused kernel each (OptimCudaHooks) when
// the backend registered them, else with public ops under NoGrad, the results copied into the
// parameter storage (assign_); either way with no host round trip.
#include "train/optim.h"

#include <cmath>
#include <map>
#include <set>

#include "models/module.h"
#include "ops/cpu_kernels.h"
#include "ops/ops.h"
#include "train/optim_kernels.h"

namespace df {

OptimCudaHooks& optim_cuda_hooks() {
  static OptimCudaHooks h;
  return h;
}

namespace {

// True when the fused CUDA kernels can update these tensors in place.
bool fusable(const Tensor& p, std::initializer_list<Tensor> others) {
  if (p.device() != Device::CUDA || !p.is_contiguous()) return false;
  for (const Tensor& t : others)
    if (!t.defined() || t.device() != Device::CUDA || !t.is_contiguous() || t.dtype() != p.dtype()) return false;
  return true;
}

// A host, contiguous view of a tensor: the tensor itself on CPU, else a copy written back later.
struct HostBuf {
  Tensor dev, host;
  explicit HostBuf(const Tensor& t) : dev(t) {
    if (!t.defined()) return;
    NoGrad ng;
    host = t.device() == Device::CPU ? t : copy(to_device(t.detach(), Device::CPU));
  }
  // Host updates write `host` in place: the parameter's version moves either way (assign_ bumps it
  // for a device parameter; a CPU parameter is `host` itself).
  void write_back() const {
    if (!dev.defined()) return;
    if (dev.device() != Device::CPU) assign_(dev, host);
    else dev.bump_version();
  }
};

// The parameter's gradient, detached, shape-checked and in the parameter's dtype (undefined if none).
Tensor checked_grad(const Tensor& p) {
  Tensor g = p.grad();
  if (!g.defined()) return g;
  NoGrad ng;
  g = g.detach();
  DF_CHECK(g.shape() == p.shape(), "optimizer: grad shape ", g.desc(), " does not match parameter ",
           p.desc());
  return g.dtype() != p.dtype() ? cast(g, p.dtype()) : g;
}

// ... as a host contiguous tensor.
Tensor host_grad(const Tensor& p) {
  Tensor g = checked_grad(p);
  if (!g.defined()) return g;
  NoGrad ng;
  if (g.device() != Device::CPU) g = to_device(g, Device::CPU);
  if (!g.is_contiguous()) g = copy(g);
  return g;
}

bool on_device(const Tensor& p) { return p.defined() && p.device() != Device::CPU; }

// ... on the parameter's device.
Tensor device_grad(const Tensor& p) {
  Tensor g = checked_grad(p);
  if (!g.defined() || g.device() == p.device()) return g;
  NoGrad ng;
  return to_device(g, p.device());
}

Tensor state_copy(const Tensor& t) {
  NoGrad ng;
  return copy(t.detach());
}

Tensor scalar_state(double v) { return scalar_tensor(v, DType::F64); }

class SGD : public Optimizer {
 public:
  SGD(Tensors ps, double lr, double momentum, double wd)
      : Optimizer(std::move(ps), lr), momentum_(momentum), wd_(wd) {
    if (momentum_ != 0) add_buffer("momentum");
  }
  std::string name() const override { return "sgd"; }
  void step() override {
    ++step_;
    for (size_t i = 0; i < params.size(); ++i) {
      if (on_device(params[i])) {
        Tensor g = device_grad(params[i]);
        if (!g.defined()) continue;
        NoGrad ng;
        Tensor p = params[i].detach();
        Tensor d = wd_ != 0 ? add(g, mul(p, wd_)) : g;
        if (momentum_ != 0) {
          d = add(mul(buffers_[0].second[i], momentum_), d);
          assign_(buffers_[0].second[i], d);
        }
        assign_(params[i], sub(p, mul(d, lr)));
        continue;
      }
      Tensor g = host_grad(params[i]);
      if (!g.defined()) continue;
      HostBuf p(params[i]);
      HostBuf buf(momentum_ != 0 ? buffers_[0].second[i] : Tensor());
      int64_t n = p.host.numel();
      double lr_ = lr, mom = momentum_, wd = wd_;
      DF_DISPATCH_FLOAT(p.host.dtype(), "sgd", {
        scalar_t* pp = p.host.data_as<scalar_t>();
        const scalar_t* gg = g.data_as<scalar_t>();
        scalar_t* bb = mom != 0 ? buf.host.data_as<scalar_t>() : nullptr;
        for (int64_t j = 0; j < n; ++j) {
          double d = double(gg[j]) + wd * double(pp[j]);
          if (bb) {
            d = mom * double(bb[j]) + d;
            bb[j] = scalar_t(d);
          }
          pp[j] = scalar_t(double(pp[j]) - lr_ * d);
        }
      });
      p.write_back();
      if (mom != 0) buf.write_back();
    }
  }

 private:
  double momentum_, wd_;
};

// Adam, AdamW and RAdam share the moment updates and differ in decay and step size.
class AdamFamily : public Optimizer {
 public:
  enum class Kind { Adam, AdamW, RAdam };
  AdamFamily(Kind kind, Tensors ps, double lr, double b1, double b2, double eps, double wd)
      : Optimizer(std::move(ps), lr), kind_(kind), b1_(b1), b2_(b2), eps_(eps), wd_(wd) {
    DF_CHECK(b1 >= 0 && b1 < 1 && b2 >= 0 && b2 < 1 && eps >= 0, name(),
             ": expected 0 <= b1, b2 < 1 and eps >= 0, got b1=", b1, " b2=", b2, " eps=", eps);
    add_buffer("m");
    add_buffer("v");
  }
  std::string name() const override {
    return kind_ == Kind::Adam ? "adam" : kind_ == Kind::AdamW ? "adamw" : "radam";
  }
  void step() override {
    ++step_;
    double t = double(step_);
    double bc1 = 1 - std::pow(b1_, t), bc2 = 1 - std::pow(b2_, t);
    // RAdam: length of the approximated SMA and the variance rectification term.
    bool rectify = false;
    double rect = 0;
    if (kind_ == Kind::RAdam) {
      double rho_inf = 2 / (1 - b2_) - 1;
      double rho_t = rho_inf - 2 * t * std::pow(b2_, t) / bc2;
      if (rho_t > 5) {
        rectify = true;
        rect = std::sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t));
      }
    }
    double l2 = kind_ == Kind::AdamW ? 0 : wd_;
    double decay = kind_ == Kind::AdamW ? 1 - lr * wd_ : 1;
    double b1 = b1_, b2 = b2_, eps = eps_, lr_ = lr, sqrt_bc2 = std::sqrt(bc2);
    bool radam = kind_ == Kind::RAdam;
    for (size_t i = 0; i < params.size(); ++i) {
      if (on_device(params[i])) {
        Tensor g = device_grad(params[i]);
        if (!g.defined()) continue;
        NoGrad ng;
        Tensor p = params[i].detach();
        Tensor& mb = buffers_[0].second[i];
        Tensor& vb = buffers_[1].second[i];
        if (optim_cuda_hooks().adam && fusable(p, {mb, vb})) {
          AdamUpdate u;
          u.b1 = b1, u.b2 = b2, u.eps = eps, u.l2 = l2, u.decay = decay;
          if (!radam) u.step = lr_ / bc1, u.denom_scale = 1 / sqrt_bc2;
          else if (rectify) u.step = lr_ * rect * sqrt_bc2 / bc1;
          else u.step = lr_ / bc1, u.use_denom = false;
          optim_cuda_hooks().adam(p, g.is_contiguous() ? g : copy(g), mb, vb, u);
          p.bump_version();
          continue;
        }
        if (l2 != 0) g = add(g, mul(p, l2));
        Tensor m = add(mul(mb, b1), mul(g, 1 - b1));
        Tensor v = add(mul(vb, b2), mul(square(g), 1 - b2));
        assign_(mb, m);
        assign_(vb, v);
        Tensor upd;
        if (!radam) upd = mul(div(m, add(mul(sqrt(v), 1 / sqrt_bc2), eps)), lr_ / bc1);
        else if (rectify) upd = mul(div(m, add(sqrt(v), eps)), lr_ * rect * sqrt_bc2 / bc1);
        else upd = mul(m, lr_ / bc1);
        assign_(params[i], sub(decay != 1 ? mul(p, decay) : p, upd));
        continue;
      }
      Tensor g = host_grad(params[i]);
      if (!g.defined()) continue;
      HostBuf p(params[i]), m(buffers_[0].second[i]), v(buffers_[1].second[i]);
      int64_t n = p.host.numel();
      DF_DISPATCH_FLOAT(p.host.dtype(), name().c_str(), {
        scalar_t* pp = p.host.data_as<scalar_t>();
        scalar_t* mm = m.host.data_as<scalar_t>();
        scalar_t* vv = v.host.data_as<scalar_t>();
        const scalar_t* gg = g.data_as<scalar_t>();
        for (int64_t j = 0; j < n; ++j) {
          double pj = double(pp[j]) * decay;
          double gj = double(gg[j]) + l2 * double(pp[j]);
          double mj = b1 * double(mm[j]) + (1 - b1) * gj;
          double vj = b2 * double(vv[j]) + (1 - b2) * gj * gj;
          mm[j] = scalar_t(mj);
          vv[j] = scalar_t(vj);
          if (!radam) {
            pj -= (lr_ / bc1) * mj / (std::sqrt(vj) / sqrt_bc2 + eps);
          } else if (rectify) {
            pj -= lr_ * (mj / bc1) * rect * sqrt_bc2 / (std::sqrt(vj) + eps);
          } else {
            pj -= lr_ * (mj / bc1);
          }
          pp[j] = scalar_t(pj);
        }
      });
      p.write_back();
      m.write_back();
      v.write_back();
    }
  }

 private:
  Kind kind_;
  double b1_, b2_, eps_, wd_;
};

}  // namespace

Optimizer::Optimizer(Tensors ps, double lr_) : lr(lr_), params(std::move(ps)) {
  DF_CHECK(lr >= 0, "optimizer: expected lr >= 0, got ", lr);
  for (size_t i = 0; i < params.size(); ++i) {
    const Tensor& p = params[i];
    DF_CHECK(p.defined() && p.is_leaf() && p.is_contiguous(), "optimizer: parameter ", i,
             " must be a defined contiguous leaf, got ", p.defined() ? p.desc() : "undefined");
    DF_CHECK(p.dtype() == DType::F32 || p.dtype() == DType::F64, "optimizer: parameter ", i,
             " has dtype ", dtype_name(p.dtype()), "; f32 and f64 are supported");
  }
}
Optimizer::~Optimizer() = default;

Tensors& Optimizer::add_buffer(const std::string& kind) {
  Tensors bufs;
  for (const Tensor& p : params) bufs.push_back(zeros(p.shape(), p.dtype(), p.device()));
  buffers_.emplace_back(kind, std::move(bufs));
  return buffers_.back().second;
}

void Optimizer::zero_grad() {
  for (Tensor p : params) p.zero_grad();
}

NamedTensors Optimizer::state() const {
  NamedTensors s;
  s.emplace_back(name() + ".step", scalar_state(double(step_)));
  for (auto& [kind, bufs] : buffers_)
    for (size_t i = 0; i < bufs.size(); ++i)
      s.emplace_back(name() + "." + kind + "." + std::to_string(i), state_copy(bufs[i]));
  return s;
}

void Optimizer::load_state(const NamedTensors& s) {
  NamedTensors mine = state();
  std::set<std::string> seen;
  for (auto& [n, v] : s) {
    bool found = false;
    for (auto& [m, cur] : mine) found = found || m == n;
    DF_CHECK(found, "load_state: unexpected entry '", n, "' for optimizer ", name());
    seen.insert(n);
    if (n == name() + ".step") {
      step_ = (int64_t)std::llround(v.item());
      continue;
    }
    for (auto& [kind, bufs] : buffers_)
      for (size_t i = 0; i < bufs.size(); ++i)
        if (n == name() + "." + kind + "." + std::to_string(i)) {
          DF_CHECK(v.shape() == bufs[i].shape(), "load_state: '", n, "' expected shape ",
                   shape_str(bufs[i].shape()), ", got ", v.desc());
          assign_(bufs[i], v);
        }
  }
  for (auto& [m, cur] : mine) DF_CHECK(seen.count(m), "load_state: missing entry '", m, "'");
}

std::unique_ptr<Optimizer> make_sgd(Tensors params, double lr, double momentum, double weight_decay) {
  return std::make_unique<SGD>(std::move(params), lr, momentum, weight_decay);
}
std::unique_ptr<Optimizer> make_adam(Tensors params, double lr, double b1, double b2, double eps,
                                     double weight_decay) {
  return std::make_unique<AdamFamily>(AdamFamily::Kind::Adam, std::move(params), lr, b1, b2, eps,
                                      weight_decay);
}
std::unique_ptr<Optimizer> make_adamw(Tensors params, double lr, double b1, double b2, double eps,
                                      double weight_decay) {
  return std::make_unique<AdamFamily>(AdamFamily::Kind::AdamW, std::move(params), lr, b1, b2, eps,
                                      weight_decay);
}
std::unique_ptr<Optimizer> make_radam(Tensors params, double lr, double b1, double b2, double eps,
                                      double weight_decay) {
  return std::make_unique<AdamFamily>(AdamFamily::Kind::RAdam, std::move(params), lr, b1, b2, eps,
                                      weight_decay);
}

Tensor clip_grad_norm_async(const Tensors& params, double max_norm) {
  NoGrad ng;
  Tensors gs;
  for (const Tensor& p : params) {
    Tensor g = p.grad();
    if (!g.defined()) continue;
    DF_CHECK(gs.empty() || g.device() == gs[0].device(), "clip_grad_norm_async: gradients on several devices (",
             gs[0].desc(), " and ", g.desc(), "); use clip_grad_norm");
    gs.push_back(g.detach());
  }
  if (gs.empty()) return Tensor();
  Tensor acc;
  if (gs[0].device() == Device::CUDA && optim_cuda_hooks().sum_squares) {
    for (Tensor& g : gs)
      if (!g.is_contiguous()) g = copy(g);
    acc = optim_cuda_hooks().sum_squares(gs);
  } else {
    for (const Tensor& g : gs) {
      Tensor s = sum(square(cast(g, DType::F32)));
      acc = acc.defined() ? add(acc, s) : s;
    }
  }
  Tensor norm = sqrt(acc);
  Tensor coef = clamp(max_norm / add(norm, 1e-6), 0.0, 1.0);
  std::map<DType, Tensor> coef_as;   // one cast per dtype, not per parameter
  for (Tensor p : params) {
    if (!p.grad().defined()) continue;
    Tensor& c = coef_as[p.grad().dtype()];
    if (!c.defined()) c = cast(coef, p.grad().dtype());
    p.set_grad(mul(p.grad().detach(), c));
  }
  return norm;
}

double clip_grad_norm(const Tensors& params, double max_norm) {
  double total = 0;
  {
    // Device grads: one sum on the device and a single read-back.
    NoGrad ng;
    Tensor acc;
    for (const Tensor& p : params) {
      if (!on_device(p)) continue;
      Tensor g = device_grad(p);
      if (!g.defined()) continue;
      Tensor s = sum(square(cast(g, DType::F32)));
      acc = acc.defined() ? add(acc, s) : s;
    }
    if (acc.defined()) total += acc.item();
  }
  for (const Tensor& p : params) {
    if (on_device(p)) continue;
    Tensor g = host_grad(p);
    if (!g.defined()) continue;
    for (double x : g.to_vector()) total += x * x;
  }
  double norm = std::sqrt(total);
  if (norm > max_norm) {
    double coef = max_norm / (norm + 1e-6);
    NoGrad ng;
    for (Tensor p : params)
      if (p.grad().defined()) p.set_grad(mul(p.grad().detach(), coef));
  }
  return norm;
}

double warmup_lr(double base_lr, int64_t step, int64_t warmup_steps) {
  if (warmup_steps <= 0) return base_lr;
  return base_lr * std::min(1.0, double(step + 1) / double(warmup_steps));
}

// ---- EMA ----

EMA::EMA(const Tensors& params, double decay) : kind_(Kind::Fixed), decay_(decay) {
  DF_CHECK(decay >= 0 && decay <= 1, "EMA: expected decay in [0, 1], got ", decay);
  for (const Tensor& p : params) shadow_.push_back(state_copy(p));
}

EMA EMA::halflife(const Tensors& params, double halflife_images, int64_t batch, double rampup_ratio) {
  DF_CHECK(halflife_images > 0 && batch > 0, "EMA::halflife: expected halflife_images > 0 and batch > 0, got ",
           halflife_images, " and ", batch);
  EMA e(params, 0);
  e.kind_ = Kind::HalfLife;
  e.halflife_ = halflife_images;
  e.batch_ = batch;
  e.rampup_ = rampup_ratio;
  return e;
}

EMA EMA::power(const Tensors& params, double gamma) {
  DF_CHECK(gamma > 0, "EMA::power: expected gamma > 0, got ", gamma);
  EMA e(params, 0);
  e.kind_ = Kind::Power;
  e.gamma_ = gamma;
  return e;
}

double EMA::current_beta() const {
  switch (kind_) {
    case Kind::Fixed: return decay_;
    case Kind::HalfLife: {
      double h = halflife_;
      // images seen before this batch, as in EDM (so the first update copies the parameters)
      if (rampup_ > 0) h = std::min(h, rampup_ * double(updates_) * double(batch_));
      return std::pow(0.5, double(batch_) / std::max(h, 1e-8));
    }
    case Kind::Power: {
      double t = double(updates_ + 1);
      return std::pow(1 - 1 / t, gamma_ + 1);
    }
  }
  return decay_;
}

void EMA::update(const Tensors& params) {
  DF_CHECK(params.size() == shadow_.size(), "EMA::update: expected ", shadow_.size(),
           " parameters, got ", params.size());
  double beta = current_beta();
  for (size_t i = 0; i < params.size(); ++i) {
    DF_CHECK(params[i].shape() == shadow_[i].shape(), "EMA::update: parameter ", i, " expected shape ",
             shape_str(shadow_[i].shape()), ", got ", params[i].desc());
    if (on_device(shadow_[i])) {
      NoGrad ng;
      Tensor p = params[i].detach();
      if (p.dtype() != shadow_[i].dtype()) p = cast(p, shadow_[i].dtype());
      if (p.device() != shadow_[i].device()) p = to_device(p, shadow_[i].device());
      if (optim_cuda_hooks().ema && fusable(shadow_[i], {p})) {
        optim_cuda_hooks().ema(shadow_[i], p, beta);
        shadow_[i].bump_version();
        continue;
      }
      assign_(shadow_[i], add(mul(shadow_[i], beta), mul(p, 1 - beta)));
      continue;
    }
    HostBuf s(shadow_[i]);
    Tensor p;
    {
      NoGrad ng;
      p = params[i].detach();
      if (p.dtype() != s.host.dtype()) p = cast(p, s.host.dtype());
      if (p.device() != Device::CPU) p = to_device(p, Device::CPU);
      if (!p.is_contiguous()) p = copy(p);
    }
    int64_t n = p.numel();
    DF_DISPATCH_FLOAT(s.host.dtype(), "EMA::update", {
      scalar_t* ss = s.host.data_as<scalar_t>();
      const scalar_t* pp = p.data_as<scalar_t>();
      for (int64_t j = 0; j < n; ++j) ss[j] = scalar_t(beta * double(ss[j]) + (1 - beta) * double(pp[j]));
    });
    s.write_back();
  }
  ++updates_;
}

void EMA::copy_to(const Tensors& params) const {
  DF_CHECK(params.size() == shadow_.size(), "EMA::copy_to: expected ", shadow_.size(),
           " parameters, got ", params.size());
  for (size_t i = 0; i < params.size(); ++i) assign_(params[i], shadow_[i]);
}

NamedTensors EMA::state() const {
  NamedTensors s;
  s.emplace_back("ema.updates", scalar_state(double(updates_)));
  for (size_t i = 0; i < shadow_.size(); ++i) s.emplace_back("ema.shadow." + std::to_string(i), state_copy(shadow_[i]));
  return s;
}

void EMA::load_state(const NamedTensors& s) {
  std::set<std::string> seen;
  for (auto& [n, v] : s) {
    seen.insert(n);
    if (n == "ema.updates") {
      updates_ = (int64_t)std::llround(v.item());
      continue;
    }
    bool found = false;
    for (size_t i = 0; i < shadow_.size(); ++i)
      if (n == "ema.shadow." + std::to_string(i)) {
        DF_CHECK(v.shape() == shadow_[i].shape(), "EMA::load_state: '", n, "' expected shape ",
                 shape_str(shadow_[i].shape()), ", got ", v.desc());
        assign_(shadow_[i], v);
        found = true;
      }
    DF_CHECK(found, "EMA::load_state: unexpected entry '", n, "'");
  }
  DF_CHECK(seen.count("ema.updates"), "EMA::load_state: missing entry 'ema.updates'");
  for (size_t i = 0; i < shadow_.size(); ++i)
    DF_CHECK(seen.count("ema.shadow." + std::to_string(i)), "EMA::load_state: missing entry 'ema.shadow.", i, "'");
}

double power_ema_gamma(double sigma_rel) {
  DF_CHECK(sigma_rel > 0 && sigma_rel < std::sqrt(1.0 / 12), "power_ema_gamma: expected 0 < sigma_rel < ",
           std::sqrt(1.0 / 12), ", got ", sigma_rel);
  // sigma_rel(gamma) decreases monotonically from sqrt(1/12) at gamma = 0: bisect in gamma.
  auto srel = [](double g) { return std::sqrt((g + 1) / ((g + 2) * (g + 2) * (g + 3))); };
  double lo = 0, hi = 1;
  while (srel(hi) > sigma_rel) hi *= 2;
  for (int it = 0; it < 200; ++it) {
    double mid = 0.5 * (lo + hi);
    (srel(mid) > sigma_rel ? lo : hi) = mid;
  }
  return 0.5 * (lo + hi);
}

}  // namespace df
