// apply(), the reverse-mode engine, dual levels and the functional transforms.
#include "core/autograd.h"

#include <algorithm>
#include <cxxabi.h>
#include <execinfo.h>

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <exception>
#include <queue>
#include <unordered_map>
#include <unordered_set>

#include "core/profile.h"
#include "ops/autocast.h"
#include "ops/ops.h"

namespace df {

namespace {

thread_local bool g_grad_enabled = true;
thread_local int g_raw_depth = 0;  // > 0 while an op's forward runs: nested ops only compute
std::atomic<int64_t> g_live_nodes{0};
std::atomic<uint64_t> g_node_seq{0};

struct LevelState {
  int id;
  bool differentiable;
  bool suspended = false;
  std::vector<std::weak_ptr<TangentMap>> touched;
};
thread_local std::vector<LevelState> g_levels;
thread_local int g_next_level = 0;

LevelState* find_level(int id) {
  for (auto& l : g_levels)
    if (l.id == id) return &l;
  return nullptr;
}

int resolve_level(int level, const char* who) {
  if (level < 0) {
    DF_CHECK(!g_levels.empty(), who, ": no dual level is open (create a DualLevel first)");
    return g_levels.back().id;
  }
  DF_CHECK(find_level(level), who, ": dual level ", level, " is not open");
  return level;
}

void set_tangent(const Tensor& t, int level, const Tensor& tangent) {
  TensorImpl* impl = t.impl();
  if (!impl->tangents) impl->tangents = std::make_shared<TangentMap>();
  auto& v = impl->tangents->by_level;
  for (auto& e : v)
    if (e.first == level) {
      e.second = tangent.impl_ptr();
      return;
    }
  v.emplace_back(level, tangent.impl_ptr());
  find_level(level)->touched.push_back(impl->tangents);
}

struct RawScope {
  RawScope() { ++g_raw_depth; }
  ~RawScope() { --g_raw_depth; }
};

// Identity op used by make_dual / unpack_dual / stop_gradient aliases.
Tensor alias_of(const Tensor& x) { return make_view(x, x.shape(), x.strides(), x.offset()); }

const OpDef& alias_op() {
  static OpDef op{"alias",
                  [](const Tensors& in, const Attrs&) { return Tensors{alias_of(in[0])}; },
                  [](const RuleCtx&, const Tensors& t) { return Tensors{t[0]}; },
                  [](const RuleCtx&, const Tensors& g, const std::vector<bool>&) { return Tensors{g[0]}; },
                  false, false};
  return op;
}

// The value of x as a constant in both modes: no cotangent flows back and the tangent is zero (as
// JAX's stop_gradient), so its JVP and VJP stay transposes of each other.
const OpDef& stop_gradient_op() {
  static OpDef op{"stop_gradient",
                  [](const Tensors& in, const Attrs&) { return Tensors{alias_of(in[0])}; },
                  [](const RuleCtx&, const Tensors&) { return Tensors{Tensor()}; },
                  nullptr, false, false, false};
  return op;
}

}  // namespace

Node::Node() { ++g_live_nodes; }
Node::~Node() { --g_live_nodes; }
int64_t live_node_count() { return g_live_nodes.load(); }

bool grad_enabled() { return g_grad_enabled; }
NoGrad::NoGrad() : prev(g_grad_enabled) { g_grad_enabled = false; }
NoGrad::~NoGrad() { g_grad_enabled = prev; }
EnableGrad::EnableGrad() : prev(g_grad_enabled) { g_grad_enabled = true; }
EnableGrad::~EnableGrad() { g_grad_enabled = prev; }

// ---- anomaly mode ---------------------------------------------------------------------------------

namespace {
thread_local GradReadyHook g_grad_ready_hook;
bool anomaly_from_env() {
  const char* e = std::getenv("DF_DETECT_ANOMALY");
  return e && *e && std::string(e) != "0";
}
thread_local bool g_anomaly = anomaly_from_env();

// The index of the first non-finite element of t (-1 if none) and its value.
int64_t first_nonfinite(const Tensor& t, double* value) {
  if (!t.defined() || t.numel() == 0) return -1;
  const DType dt = t.dtype();
  if (dt != DType::F32 && dt != DType::F64 && dt != DType::BF16) return -1;
  std::vector<double> v;
  {
    RawScope raw;  // nested ops only compute
    if (t.device() != Device::CPU) {
      // One reduction on the device first: most checks pass, and then nothing large is copied.
      Tensor ok = sum(cast(isfinite(t), DType::F64));
      if (ok.item() == double(t.numel())) return -1;
    }
    v = t.to_vector();
  }
  for (size_t i = 0; i < v.size(); ++i)
    if (!std::isfinite(v[i])) {
      *value = v[i];
      return (int64_t)i;
    }
  return -1;
}

std::string shapes_of(const Tensors& ts) {
  std::string s;
  for (size_t i = 0; i < ts.size(); ++i) s += (i ? ", " : "") + (ts[i].defined() ? ts[i].desc() : std::string("none"));
  return s;
}

// Stack trace of the caller, demangled (function names need -rdynamic, which the Makefile passes).
std::string stack_trace(int skip) {
  void* frames[32];
  int n = backtrace(frames, 32);
  char** syms = backtrace_symbols(frames, n);
  std::string out;
  for (int i = skip; syms && i < n && i < skip + 16; ++i) {
    std::string line = syms[i];
    auto a = line.find('('), b = line.find('+', a == std::string::npos ? 0 : a);
    if (a != std::string::npos && b != std::string::npos && b > a + 1) {
      std::string mangled = line.substr(a + 1, b - a - 1);
      int status = 0;
      char* dem = abi::__cxa_demangle(mangled.c_str(), nullptr, nullptr, &status);
      if (status == 0 && dem) line = std::string(dem);
      std::free(dem);
    }
    out += "\n    " + line;
  }
  std::free(syms);
  return out;
}

// The derivative rules running now (innermost last), so a NaN made by an op inside a rule names
// the rule too.
thread_local std::vector<std::string> g_rule_stack;
struct RuleScope {
  bool on;
  RuleScope(bool enabled, std::string what) : on(enabled) {
    if (on) g_rule_stack.push_back(std::move(what));
  }
  ~RuleScope() {
    if (on) g_rule_stack.pop_back();
  }
};

void anomaly_check(const Tensor& t, const std::string& what) {
  double value = 0;
  int64_t i = first_nonfinite(t, &value);
  if (i < 0) return;
  std::string inside;
  for (auto it = g_rule_stack.rbegin(); it != g_rule_stack.rend(); ++it) inside += "\n  inside " + *it;
  DF_FAIL("anomaly: ", what, " (", t.desc(), ") holds ", value, " at flat index ", i, inside);
}
}  // namespace

bool anomaly_enabled() { return g_anomaly; }

GradReadyHook set_grad_ready_hook(GradReadyHook hook) {
  GradReadyHook prev = std::move(g_grad_ready_hook);
  g_grad_ready_hook = std::move(hook);
  return prev;
}
DetectAnomaly::DetectAnomaly(bool on) : prev(g_anomaly) { g_anomaly = on; }
DetectAnomaly::~DetectAnomaly() { g_anomaly = prev; }

Tensor SavedTensor::unpack() const {
  Tensor t = alias_of(value);
  t.impl()->tangents = value.impl()->tangents;
  if (auto f = fn.lock()) {
    t.impl()->grad_fn = f;
    t.impl()->output_nr = output_nr;
  }
  return t;
}

// ---- apply ------------------------------------------------------------------------------------

static Tensors apply_recorded(const OpDef& op, const Tensors& inputs, const Attrs& attrs);

Tensors apply(const OpDef& op, const Tensors& inputs, const Attrs& attrs) {
  if (g_raw_depth > 0) return op.forward(inputs, attrs);
  if (profile_enabled()) {
    ProfileScope scope(op.name.c_str());
    return apply_recorded(op, inputs, attrs);
  }
  return apply_recorded(op, inputs, attrs);
}

// ---- forward mode inside apply() --------------------------------------------------------------
//
// With one level carrying input tangents, the level's JVP rule runs once with that level suspended.
// With several (nested forward mode), each output must end up a consistent hyper-dual number: its
// tangent at level a, read at level b, must equal its tangent at b read at a (the mixed derivative),
// whichever order the user reads them in. The rules run innermost level first; the rule of level k
// runs with k and every outer level suspended, so it sees the outputs with their (already complete)
// tangents at the inner levels, and its result is complete over those levels. Level k's tangent tree
// is then grafted onto every tangent the outputs already hold at the inner levels, so those gain
// their level-k components too. Graft targets are fresh handles owned by this call, so no input's
// or caller's tangent is ever modified.

namespace {

// Suspends levels for a scope and restores their previous state (by id: a rule may open levels).
struct SuspendLevels {
  std::vector<std::pair<int, bool>> saved;
  void add(LevelState* l) {
    saved.emplace_back(l->id, l->suspended);
    l->suspended = true;
  }
  ~SuspendLevels() {
    for (auto it = saved.rbegin(); it != saved.rend(); ++it)
      if (LevelState* l = find_level(it->first)) l->suspended = it->second;
  }
};

// A fresh handle on t (same storage; in the reverse graph when t is) with fresh copies of its
// tangent tree, skipping levels already on the path.
Tensor fresh_tree(const Tensor& t, std::vector<int>& path) {
  Tensor a;
  {
    SuspendLevels all;
    for (auto& l : g_levels) all.add(&l);
    a = apply1(alias_op(), {t});
  }
  if (!t.impl()->tangents) return a;
  auto entries = t.impl()->tangents->by_level;  // copy: set_tangent below touches other maps only
  for (auto& [lvl, tt] : entries) {
    if (!tt || !find_level(lvl) || std::find(path.begin(), path.end(), lvl) != path.end()) continue;
    path.push_back(lvl);
    set_tangent(a, lvl, fresh_tree(Tensor(tt), path));
    path.pop_back();
  }
  return a;
}

// For every node reachable from `o` through tangents at `levels` (not repeating a level), attach the
// node at the same path in `t` as its tangent at `level`.
void graft(const Tensor& o, const Tensor& t, const std::vector<int>& levels, int level, std::vector<int>& path) {
  for (int l : levels) {
    if (std::find(path.begin(), path.end(), l) != path.end()) continue;
    Tensor a = o.tangent(l), b = t.tangent(l);
    if (!a.defined() || !b.defined()) continue;  // a zero mixed term needs nothing
    set_tangent(a, level, b);
    path.push_back(l);
    graft(a, b, levels, level, path);
    path.pop_back();
  }
}

Tensors run_rule(const OpDef& op, const Tensors& inputs, const Tensors& outs, const Attrs& attrs,
                 const Tensors& tin, bool differentiable) {
  DF_CHECK(op.jvp, op.name, ": an input has a tangent but this op has no JVP rule");
  RuleCtx ctx{inputs, outs, attrs};
  RuleScope scope(g_anomaly, g_anomaly ? cat("the JVP rule of op '", op.name, "' (inputs ", shapes_of(inputs), ")")
                                       : std::string());
  Tensors tout;
  if (differentiable) {
    tout = op.jvp(ctx, tin);
  } else {
    NoGrad ng;
    tout = op.jvp(ctx, tin);
  }
  DF_CHECK(tout.size() == outs.size(), op.name, ": JVP rule returned ", tout.size(), " tangents for ",
           outs.size(), " outputs");
  for (size_t k = 0; k < outs.size(); ++k)
    if (tout[k].defined()) {
      DF_CHECK(tout[k].shape() == outs[k].shape(), op.name, ": JVP rule gave a tangent of shape ",
               shape_str(tout[k].shape()), " for an output of shape ", shape_str(outs[k].shape()));
      DF_CHECK(tout[k].dtype() == outs[k].dtype(), op.name, ": JVP rule gave a ", dtype_name(tout[k].dtype()),
               " tangent for a ", dtype_name(outs[k].dtype()), " output (tangents follow their primal's dtype)");
    }
  return tout;
}

void run_jvp_rules(const OpDef& op, const Tensors& inputs, const Tensors& outs, const Attrs& attrs,
                   int fused_level, const Tensors& fused_tangents) {
  // The levels at which some input has a tangent, outermost first.
  std::vector<size_t> active;
  std::vector<Tensors> tins;
  for (size_t li = 0; li < g_levels.size(); ++li) {
    const LevelState& L = g_levels[li];
    if (L.suspended) continue;
    Tensors tin(inputs.size());
    bool any = false;
    for (size_t k = 0; k < inputs.size(); ++k)
      if (inputs[k].defined()) {
        tin[k] = inputs[k].tangent(L.id);
        any |= tin[k].defined();
      }
    if (!any) continue;
    active.push_back(li);
    tins.push_back(std::move(tin));
  }
  if (active.empty()) return;

  if (active.size() == 1) {
    LevelState& L = g_levels[active[0]];
    const int id = L.id;
    Tensors tout;
    if (id == fused_level) {
      tout = fused_tangents;
    } else {
      SuspendLevels s;
      s.add(&L);
      tout = run_rule(op, inputs, outs, attrs, tins[0], L.differentiable);
    }
    for (size_t k = 0; k < outs.size(); ++k)
      if (tout[k].defined()) {
        if (g_anomaly)
          anomaly_check(tout[k], cat("the JVP of op '", op.name, "' at dual level ", id, " produced a non-finite "
                                     "tangent of output ", k, " (inputs ", shapes_of(inputs), ")"));
        set_tangent(outs[k], id, tout[k]);
      }
    return;
  }

  // Nested forward mode: innermost level first (see above).
  std::vector<int> done;  // ids of the levels processed so far (inner ones)
  for (size_t a = active.size(); a-- > 0;) {
    const int id = g_levels[active[a]].id;
    Tensors tout;
    {
      SuspendLevels s;
      for (size_t b = 0; b <= a; ++b) s.add(&g_levels[active[b]]);
      tout = run_rule(op, inputs, outs, attrs, tins[a], g_levels[active[a]].differentiable);
    }
    for (size_t k = 0; k < outs.size(); ++k) {
      if (!tout[k].defined()) continue;
      if (g_anomaly)
        anomaly_check(tout[k], cat("the JVP of op '", op.name, "' at dual level ", id, " produced a non-finite "
                                   "tangent of output ", k, " (inputs ", shapes_of(inputs), ")"));
      std::vector<int> path{id};
      Tensor t = fresh_tree(tout[k], path);
      path.clear();
      graft(outs[k], t, done, id, path);
      set_tangent(outs[k], id, t);
    }
    done.push_back(id);
  }
}

}  // namespace

// apply() outside any op's forward: the forward (or fused forward-with-tangents), a tape node when
// an input requires grad, then one JVP per open dual level.
static Tensors apply_recorded(const OpDef& op, const Tensors& inputs, const Attrs& attrs) {
  // The mixed-precision policy casts at the ops' public entry points only: the forward (and the ops
  // it calls) and the JVP rules run in the dtypes the inputs arrived in.
  AutocastSuspend no_autocast;
  if (g_anomaly)
    for (size_t k = 0; k < inputs.size(); ++k)
      anomaly_check(inputs[k], cat("op '", op.name, "' received input ", k, " that no op produced under anomaly "
                                   "mode (data, a parameter or an in-place write)"));

  // One level with input tangents and no tangent graph wanted: a fused primal+tangent kernel may
  // replace forward + jvp.
  int fused_level = -1;
  Tensors fused_tangents;
  if (op.forward_with_tangents) {
    int with_tangents = 0;
    for (auto& L : g_levels) {
      if (L.suspended) continue;
      bool any = false;
      for (auto& x : inputs) any |= x.defined() && x.tangent(L.id).defined();
      if (any) {
        ++with_tangents;
        fused_level = L.id;
      }
    }
    if (with_tangents != 1) fused_level = -1;
    if (fused_level >= 0 && find_level(fused_level)->differentiable && g_grad_enabled) {
      for (auto& x : inputs)
        if (x.defined() && (x.requires_grad() || (x.tangent(fused_level).defined() &&
                                                  x.tangent(fused_level).requires_grad())))
          fused_level = -1;
    }
  }

  Tensors outs;
  {
    RawScope raw;
    if (fused_level >= 0) {
      Tensors tin(inputs.size());
      for (size_t k = 0; k < inputs.size(); ++k)
        if (inputs[k].defined()) tin[k] = inputs[k].tangent(fused_level);
      auto both = op.forward_with_tangents(inputs, tin, attrs);
      outs = std::move(both.first);
      fused_tangents = std::move(both.second);
      DF_CHECK(fused_tangents.size() == outs.size(), op.name, ": forward_with_tangents returned ",
               fused_tangents.size(), " tangents for ", outs.size(), " outputs");
    } else {
      outs = op.forward(inputs, attrs);
    }
  }
  // Outputs must be fresh handles: an op that returns an input unchanged gets an alias.
  for (auto& o : outs) {
    DF_CHECK(o.defined(), op.name, ": forward returned an undefined output");
    for (auto& i : inputs)
      if (i.defined() && o.impl() == i.impl()) {
        o = alias_of(o);
        break;
      }
  }

  if (g_anomaly)
    for (size_t k = 0; k < outs.size(); ++k)
      anomaly_check(outs[k], cat("op '", op.name, "' produced a non-finite output ", k, " from inputs ", shapes_of(inputs)));

  // 2. reverse mode: record a node.
  bool record = false;
  if (g_grad_enabled && op.reverse_differentiable)
    for (auto& i : inputs)
      if (i.defined() && i.requires_grad()) record = true;
  if (record) {
    DF_CHECK(op.vjp, op.name, ": an input requires grad but this op has no VJP rule (wrap the "
             "input in stop_gradient, or differentiate through the op's composite reference)");
    auto node = std::make_shared<Node>();
    node->op = &op;
    node->attrs = attrs;
    node->seq = ++g_node_seq;
    if (g_anomaly) node->creation_site = stack_trace(3);
    node->num_outputs = (int)outs.size();
    node->next.resize(inputs.size());
    node->in_shapes.resize(inputs.size());
    for (size_t k = 0; k < inputs.size(); ++k) {
      const Tensor& x = inputs[k];
      if (!x.defined()) continue;
      node->in_shapes[k] = x.shape();
      if (!x.requires_grad()) continue;
      Edge& e = node->next[k];
      if (x.impl()->grad_fn) {
        e.fn = x.impl()->grad_fn;
        e.output_nr = x.impl()->output_nr;
      } else {
        e.is_leaf = true;
        e.leaf = x.impl_ptr();
      }
    }
    if (op.save_inputs) {
      node->saved_in = inputs;
      for (auto& x : inputs) node->saved_in_versions.push_back(x.defined() ? x.version() : 0);
    }
    for (size_t k = 0; k < outs.size(); ++k) {
      TensorImpl* o = outs[k].impl();
      o->grad_fn = node;
      o->output_nr = (int)k;
      node->out_shapes.push_back(o->shape);
      node->out_dtypes.push_back(o->dtype);
      node->out_devices.push_back(o->device);
    }
    if (op.save_outputs) {
      for (size_t k = 0; k < outs.size(); ++k) {
        if (!outs[k].impl()->tangents) outs[k].impl()->tangents = std::make_shared<TangentMap>();
        SavedTensor s;
        s.value = alias_of(outs[k]);
        s.value.impl()->tangents = outs[k].impl()->tangents;
        s.fn = node;
        s.output_nr = (int)k;
        s.version = outs[k].version();
        node->saved_out.push_back(std::move(s));
      }
    }
  }

  // 3. forward mode: one JVP per open level where some input has a tangent.
  run_jvp_rules(op, inputs, outs, attrs, fused_level, fused_tangents);
  return outs;
}

Tensor apply1(const OpDef& op, const Tensors& inputs, const Attrs& attrs) {
  Tensors o = apply(op, inputs, attrs);
  DF_CHECK(o.size() == 1, op.name, ": expected one output, got ", o.size());
  return o[0];
}

Tensor stop_gradient(const Tensor& x) { return apply1(stop_gradient_op(), {x}); }

// ---- reverse mode -----------------------------------------------------------------------------

namespace {

struct Target {
  const Node* node = nullptr;  // non-leaf target: (node, output_nr)
  int output_nr = 0;
  const TensorImpl* leaf = nullptr;
};

Tensor add_grads(const Tensor& a, const Tensor& b) {
  if (!a.defined()) return b;
  if (!b.defined()) return a;
  return add(a, b);
}

// How the backward pass records itself: never, always, or when the result can be differentiated
// further: grad mode is on and the graph reaches something that requires grad from outside (a leaf
// other than the transform's own fresh leaves, or a cotangent that requires grad). The functional
// transforms use Auto, so their results compose with an enclosing reverse pass.
enum class GraphMode { Off, On, Auto };

struct BackwardArgs {
  bool accumulate = false;
  bool retain_graph = false;
  GraphMode create_graph = GraphMode::Off;
  bool allow_unused = false;
  bool constant_outputs_are_zero = false;            // transforms: outputs with no graph contribute 0
  const std::unordered_set<const TensorImpl*>* own_leaves = nullptr;  // Auto: leaves the transform made
};

// A tensor the tape saved and that was written in place since (assign_, an optimizer step) would give
// a silently wrong gradient: refuse, as PyTorch does.
void check_saved_versions(const Node& n) {
  auto fail = [&](const char* what, size_t k, const Tensor& t, uint64_t saved) {
    DF_FAIL("backward of op '", n.name(), "': ", what, " ", k, " (", t.desc(), "), saved for the gradient, was "
            "modified in place afterwards (version ", t.version(), ", saved at version ", saved,
            "); compute the gradient before the in-place write, or write to a copy");
  };
  for (size_t k = 0; k < n.saved_in.size() && k < n.saved_in_versions.size(); ++k)
    if (n.saved_in[k].defined() && n.saved_in[k].version() != n.saved_in_versions[k])
      fail("input", k, n.saved_in[k], n.saved_in_versions[k]);
  for (size_t k = 0; k < n.saved_out.size(); ++k)
    if (n.saved_out[k].value.defined() && n.saved_out[k].value.version() != n.saved_out[k].version)
      fail("output", k, n.saved_out[k].value, n.saved_out[k].version);
}

Tensors run_backward(const Tensors& outputs_in, const Tensors& grad_outputs_all, const Tensors& inputs,
                     const BackwardArgs& args) {
  const bool accumulate = args.accumulate;
  const bool allow_unused = args.allow_unused;
  const char* who = accumulate ? "backward" : "grad";
  DF_CHECK(grad_outputs_all.empty() || grad_outputs_all.size() == outputs_in.size(), who, ": got ",
           grad_outputs_all.size(), " grad_outputs for ", outputs_in.size(), " outputs");
  Tensors outputs, grad_outputs_in;
  for (size_t i = 0; i < outputs_in.size(); ++i) {
    const Tensor& y = outputs_in[i];
    DF_CHECK(y.defined(), who, ": output ", i, " is undefined");
    if (args.constant_outputs_are_zero && !y.requires_grad()) continue;
    DF_CHECK(y.requires_grad(), who, ": output ", i, " (", y.desc(), ") does not require grad and "
             "has no grad_fn");
    outputs.push_back(y);
    Tensor g = grad_outputs_all.empty() ? Tensor() : grad_outputs_all[i];
    if (g.defined())
      DF_CHECK(g.shape() == y.shape(), who, ": grad_output ", i, " has shape ", shape_str(g.shape()),
               " but the output has shape ", shape_str(y.shape()));
    else
      DF_CHECK(y.numel() == 1, who, ": grad can be implicitly created only for scalar outputs; output ", i,
               " has shape ", shape_str(y.shape()), " (pass grad_outputs)");
    grad_outputs_in.push_back(g);
  }
  Tensors grad_outputs(outputs.size());
  for (size_t i = 0; i < outputs.size(); ++i)
    grad_outputs[i] = grad_outputs_in[i].defined() ? grad_outputs_in[i] : ones_like(outputs[i]);

  std::vector<Target> targets(inputs.size());
  for (size_t i = 0; i < inputs.size(); ++i) {
    DF_CHECK(inputs[i].defined(), who, ": input ", i, " is undefined");
    DF_CHECK(inputs[i].requires_grad(), who, ": input ", i, " (", inputs[i].desc(),
             ") does not require grad");
    if (inputs[i].impl()->grad_fn) {
      targets[i].node = inputs[i].impl()->grad_fn.get();
      targets[i].output_nr = inputs[i].impl()->output_nr;
    } else {
      targets[i].leaf = inputs[i].impl();
    }
  }
  std::unordered_set<const TensorImpl*> target_leaves;
  std::unordered_set<const Node*> target_nodes;
  for (auto& t : targets) {
    if (t.leaf) target_leaves.insert(t.leaf);
    else target_nodes.insert(t.node);
  }

  // Collect the reachable graph.
  std::vector<Node*> nodes;
  std::unordered_set<Node*> seen;
  std::vector<Node*> stack;
  for (auto& y : outputs)
    if (auto f = y.impl()->grad_fn.get())
      if (seen.insert(f).second) stack.push_back(f);
  while (!stack.empty()) {
    Node* n = stack.back();
    stack.pop_back();
    nodes.push_back(n);
    for (auto& e : n->next)
      if (e.fn && seen.insert(e.fn.get()).second) stack.push_back(e.fn.get());
  }
  std::sort(nodes.begin(), nodes.end(), [](Node* a, Node* b) { return a->seq < b->seq; });

  bool create_graph = args.create_graph == GraphMode::On;
  if (args.create_graph == GraphMode::Auto && grad_enabled()) {
    for (auto& g : grad_outputs_in) create_graph |= g.defined() && g.requires_grad();
    auto foreign = [&](const TensorImpl* leaf) { return !args.own_leaves || !args.own_leaves->count(leaf); };
    for (auto& y : outputs) create_graph |= !y.impl()->grad_fn && foreign(y.impl());
    for (Node* n : nodes)
      for (auto& e : n->next)
        if (e.is_leaf)
          if (auto p = e.leaf.lock()) create_graph |= foreign(p.get());
  }
  const bool retain_graph = args.retain_graph || create_graph;

  // needed[n]: some gradient we want flows through n. Inputs of a node are older, so one pass in
  // creation order sees every producer before its consumers.
  auto edge_wanted = [&](const Edge& e, const std::unordered_set<const Node*>& needed) {
    if (e.is_leaf) {
      if (accumulate) return !e.leaf.expired();
      auto p = e.leaf.lock();
      return p && target_leaves.count(p.get()) > 0;
    }
    return e.fn && (needed.count(e.fn.get()) > 0 || target_nodes.count(e.fn.get()) > 0);
  };
  std::unordered_set<const Node*> needed;
  for (Node* n : nodes)
    for (auto& e : n->next)
      if (edge_wanted(e, needed)) {
        needed.insert(n);
        break;
      }

  std::unordered_map<const Node*, Tensors> buffers;
  Tensors captured(inputs.size());
  std::unordered_map<const TensorImpl*, Tensor> leaf_grads;

  auto deliver_leaf = [&](const std::shared_ptr<TensorImpl>& leaf, const Tensor& g) {
    if (accumulate) {
      Tensor old = leaf->grad ? Tensor(leaf->grad) : Tensor();
      Tensor sum = add_grads(old, g);
      leaf->grad = sum.impl_ptr();
    } else {
      leaf_grads[leaf.get()] = add_grads(leaf_grads[leaf.get()], g);
    }
  };

  // backward(): leaves whose gradient for this pass is final are announced to the grad-ready hook
  // (data-parallel training starts its all-reduce buckets from there). A leaf is final once every
  // needed node with an edge to it has run; leaves never reached that way are announced at the end.
  const GradReadyHook* ready_hook = accumulate && g_grad_ready_hook ? &g_grad_ready_hook : nullptr;
  std::unordered_map<const TensorImpl*, int64_t> pending;
  std::vector<std::shared_ptr<TensorImpl>> announce_order;
  std::unordered_set<const TensorImpl*> announced;
  auto note_leaf = [&](const std::shared_ptr<TensorImpl>& leaf) {
    if (announced.count(leaf.get()) || pending.count(leaf.get())) return;
    pending[leaf.get()] = 0;
    announce_order.push_back(leaf);
  };
  auto announce = [&](const std::shared_ptr<TensorImpl>& leaf) {
    if (announced.insert(leaf.get()).second) (*ready_hook)(Tensor(leaf));
  };
  if (ready_hook) {
    for (auto it = nodes.rbegin(); it != nodes.rend(); ++it)
      if (needed.count(*it))
        for (auto& e : (*it)->next)
          if (e.is_leaf)
            if (auto leaf = e.leaf.lock()) {
              note_leaf(leaf);
              ++pending[leaf.get()];
            }
    for (auto& y : outputs)
      if (!y.impl()->grad_fn && y.requires_grad()) note_leaf(y.impl_ptr());
  }

  // Seeds.
  for (size_t i = 0; i < outputs.size(); ++i) {
    const Tensor& y = outputs[i];
    if (auto f = y.impl()->grad_fn) {
      auto& buf = buffers[f.get()];
      buf.resize(f->num_outputs);
      buf[y.impl()->output_nr] = add_grads(buf[y.impl()->output_nr], grad_outputs[i]);
    } else if (accumulate || target_leaves.count(y.impl())) {
      deliver_leaf(y.impl_ptr(), grad_outputs[i]);
    }
  }

  AutocastSuspend no_autocast;  // VJP rules compute in the dtypes of their forward (ops/autocast.h)
  std::unique_ptr<NoGrad> ng;
  std::unique_ptr<EnableGrad> eg;
  if (create_graph) eg = std::make_unique<EnableGrad>();
  else ng = std::make_unique<NoGrad>();

  for (auto it = nodes.rbegin(); it != nodes.rend(); ++it) {
    Node* n = *it;
    auto bit = buffers.find(n);
    if (bit == buffers.end()) continue;
    Tensors grads = std::move(bit->second);
    buffers.erase(bit);
    grads.resize(n->num_outputs);
    if (target_nodes.count(n))
      for (size_t i = 0; i < targets.size(); ++i)
        if (targets[i].node == n) captured[i] = add_grads(captured[i], grads[targets[i].output_nr]);
    if (!needed.count(n)) continue;

    std::vector<bool> needs(n->next.size());
    bool any = false;
    for (size_t k = 0; k < n->next.size(); ++k) {
      needs[k] = edge_wanted(n->next[k], needed);
      any |= needs[k];
    }
    if (!any) continue;
    DF_CHECK(!n->released, who, ": trying to backward through the graph a second time (op '",
             n->name(), "'); its saved tensors were freed. Pass retain_graph=true the first time.");
    for (int k = 0; k < n->num_outputs; ++k)
      if (!grads[k].defined()) grads[k] = zeros(n->out_shapes[k], n->out_dtypes[k], n->out_devices[k]);

    check_saved_versions(*n);
    // Tensors the op does not save are passed as undefined placeholders: a VJP that reads one fails
    // with an error naming the op instead of reading past a vector.
    Tensors ins = n->op->save_inputs ? n->saved_in : Tensors(n->next.size());
    Tensors outs(n->num_outputs);
    if (n->op->save_outputs)
      for (size_t k = 0; k < n->saved_out.size(); ++k) outs[k] = n->saved_out[k].unpack();
    Tensors gin;
    try {
      RuleScope scope(g_anomaly, g_anomaly ? cat("the VJP rule of op '", n->name(), "' (input shapes ", shapes_of(ins),
                                                 "; the forward op was called at:",
                                                 n->creation_site.empty() ? std::string(" (not recorded)")
                                                                          : n->creation_site, "\n  )")
                                           : std::string());
      gin = n->op->vjp(RuleCtx{ins, outs, n->attrs}, grads, needs);
    } catch (const std::exception& e) {
      std::string hint;
      if ((!n->op->save_inputs || !n->op->save_outputs) &&
          std::string(e.what()).find("undefined tensor") != std::string::npos)
        hint = cat(" (op '", n->name(), "' saves ", n->op->save_inputs ? "its inputs" : "no inputs", " and ",
                   n->op->save_outputs ? "its outputs" : "no outputs",
                   " for backward; a VJP rule that reads what is not saved must set save_inputs/save_outputs)");
      throw Error(cat("backward of op '", n->name(), "': ", e.what(), hint));
    }
    DF_CHECK(gin.size() == n->next.size(), n->name(), ": VJP rule returned ", gin.size(),
             " cotangents for ", n->next.size(), " inputs");
    if (!retain_graph) {
      n->saved_in.clear();
      n->saved_out.clear();
      n->released = true;
    }
    if (g_anomaly)
      for (size_t k = 0; k < gin.size(); ++k)
        if (needs[k] && gin[k].defined())
          anomaly_check(gin[k], cat("the VJP of op '", n->name(), "' produced a non-finite cotangent for input ", k,
                                    " (input shapes ", shapes_of(ins), "; the forward op was "
                                    "called at:", n->creation_site.empty() ? std::string(" (not recorded)") : n->creation_site,
                                    "\n  )"));
    for (size_t k = 0; k < gin.size(); ++k) {
      if (!needs[k] || !gin[k].defined()) continue;
      DF_CHECK(gin[k].shape() == n->in_shapes[k], n->name(), ": VJP rule gave a cotangent of shape ",
               shape_str(gin[k].shape()), " for input ", k, " of shape ", shape_str(n->in_shapes[k]));
      const Edge& e = n->next[k];
      if (e.is_leaf) {
        if (auto leaf = e.leaf.lock()) deliver_leaf(leaf, gin[k]);
      } else {
        auto& buf = buffers[e.fn.get()];
        buf.resize(e.fn->num_outputs);
        buf[e.output_nr] = add_grads(buf[e.output_nr], gin[k]);
      }
    }
    if (ready_hook)
      for (auto& e : n->next)
        if (e.is_leaf)
          if (auto leaf = e.leaf.lock())
            if (--pending[leaf.get()] == 0) announce(leaf);
  }

  if (ready_hook)
    for (auto& leaf : announce_order) announce(leaf);
  if (accumulate) return {};
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (targets[i].leaf) {
      auto it = leaf_grads.find(targets[i].leaf);
      if (it != leaf_grads.end()) captured[i] = it->second;
    }
    if (!captured[i].defined())
      DF_CHECK(allow_unused, "grad: input ", i, " (", inputs[i].desc(), ") was not used to compute "
               "the outputs (pass allow_unused=true to get an undefined gradient instead)");
  }
  return captured;
}

}  // namespace

Tensors grad(const Tensors& outputs, const Tensors& inputs, const Tensors& grad_outputs,
             bool retain_graph, bool create_graph, bool allow_unused) {
  BackwardArgs a;
  a.retain_graph = retain_graph;
  a.create_graph = create_graph ? GraphMode::On : GraphMode::Off;
  a.allow_unused = allow_unused;
  return run_backward(outputs, grad_outputs, inputs, a);
}

void backward(const Tensors& outputs, const Tensors& grad_outputs, bool retain_graph, bool create_graph) {
  BackwardArgs a;
  a.accumulate = true;
  a.retain_graph = retain_graph;
  a.create_graph = create_graph ? GraphMode::On : GraphMode::Off;
  a.allow_unused = true;
  run_backward(outputs, grad_outputs, {}, a);
}

// ---- forward mode -----------------------------------------------------------------------------

DualLevel::DualLevel(bool differentiable_tangents) : id_(g_next_level++) {
  LevelState s;
  s.id = id_;
  s.differentiable = differentiable_tangents;
  g_levels.push_back(std::move(s));
}

DualLevel::~DualLevel() noexcept(false) {
  // Levels close innermost first (RAII). Erase this level's tangents everywhere and drop its state;
  // a level closed while one opened inside it is still open is an error (the inner one stays open
  // and usable), raised unless an exception is already unwinding the stack.
  size_t idx = 0;
  while (idx < g_levels.size() && g_levels[idx].id != id_) ++idx;
  if (idx == g_levels.size()) return;
  const bool innermost = idx + 1 == g_levels.size();
  for (auto& w : g_levels[idx].touched)
    if (auto m = w.lock()) {
      auto& v = m->by_level;
      v.erase(std::remove_if(v.begin(), v.end(), [&](auto& e) { return e.first == id_; }), v.end());
    }
  const int inner = innermost ? -1 : g_levels.back().id;
  g_levels.erase(g_levels.begin() + (std::ptrdiff_t)idx);
  if (!innermost && std::uncaught_exceptions() == 0)
    DF_FAIL("DualLevel: level ", id_, " was closed while level ", inner, ", opened inside it, is still open; "
            "close dual levels innermost first (let inner DualLevel objects go out of scope first)");
}

int current_level() { return g_levels.empty() ? -1 : g_levels.back().id; }
int num_open_levels() { return (int)g_levels.size(); }

size_t live_tangent_count() {
  size_t n = 0;
  for (auto& l : g_levels)
    for (auto& w : l.touched)
      if (auto m = w.lock())
        for (auto& e : m->by_level)
          if (e.first == l.id) ++n;
  return n;
}

Tensor make_dual(const Tensor& primal, const Tensor& tangent, int level) {
  int id = resolve_level(level, "make_dual");
  DF_CHECK(primal.defined(), "make_dual: primal is undefined");
  Tensor out = apply1(alias_op(), {primal});
  if (!tangent.defined()) return out;
  DF_CHECK(tangent.shape() == primal.shape(), "make_dual: tangent shape ", shape_str(tangent.shape()),
           " does not match primal shape ", shape_str(primal.shape()));
  DF_CHECK(tangent.dtype() == primal.dtype(), "make_dual: tangent dtype ", dtype_name(tangent.dtype()),
           " does not match primal dtype ", dtype_name(primal.dtype()));
  DF_CHECK(tangent.device() == primal.device(), "make_dual: tangent is on ", device_name(tangent.device()),
           " but the primal is on ", device_name(primal.device()));
  set_tangent(out, id, tangent);
  return out;
}

std::pair<Tensor, Tensor> unpack_dual(const Tensor& t, int level) {
  int id = resolve_level(level, "unpack_dual");
  Tensor tangent = t.tangent(id);
  LevelState* L = find_level(id);
  bool was = L->suspended;
  L->suspended = true;
  Tensor primal;
  try {
    primal = apply1(alias_op(), {t});
  } catch (...) {
    L->suspended = was;
    throw;
  }
  L->suspended = was;
  return {primal, tangent};
}

// ---- functional transforms --------------------------------------------------------------------

std::pair<Tensors, Tensors> jvp(const Fn& f, const Tensors& primals, const Tensors& tangents,
                                bool differentiable_tangents) {
  DF_CHECK(primals.size() == tangents.size(), "jvp: ", primals.size(), " primals but ",
           tangents.size(), " tangents");
  DualLevel level(differentiable_tangents);
  Tensors duals;
  for (size_t i = 0; i < primals.size(); ++i) duals.push_back(make_dual(primals[i], tangents[i], level.id()));
  Tensors outs = f(duals);
  Tensors ps, ts;
  for (auto& o : outs) {
    auto [p, t] = unpack_dual(o, level.id());
    ts.push_back(t.defined() ? t : zeros_like(p));
    ps.push_back(p);
  }
  return {ps, ts};
}

namespace {
// The transforms differentiate with respect to leaves of their own: a primal that already requires
// grad is used as it is (so an enclosing reverse pass sees through), any other gets a fresh leaf
// aliasing it that keeps its tangents (so transforms nest inside jvp). `own` collects the fresh ones.
Tensors as_differentiable(const Tensors& primals, std::unordered_set<const TensorImpl*>& own) {
  Tensors xs;
  for (auto& p : primals) {
    DF_CHECK(p.defined(), "transform: a primal is undefined");
    if (p.requires_grad()) xs.push_back(p);
    else {
      Tensor x = p.detach();
      x.impl()->tangents = p.impl()->tangents;
      x.requires_grad_(true);
      own.insert(x.impl());
      xs.push_back(x);
    }
  }
  return xs;
}
Tensors fill_zeros(Tensors gs, const Tensors& like) {
  for (size_t i = 0; i < gs.size(); ++i)
    if (!gs[i].defined()) gs[i] = zeros_like(like[i]);
  return gs;
}
// Gradients of outputs w.r.t. xs for the transforms: outputs that do not depend on anything
// differentiable contribute zero (as in JAX and torch.func), unused inputs get zeros, and the pass
// records itself when its result can be differentiated further (GraphMode::Auto).
Tensors transform_grads(const Tensors& outs, const Tensors& xs, const Tensors& cts, bool create_graph,
                        bool retain, const std::unordered_set<const TensorImpl*>& own) {
  bool any = false;
  for (auto& o : outs) any |= o.requires_grad();
  if (!any) return fill_zeros(Tensors(xs.size()), xs);
  BackwardArgs a;
  a.retain_graph = retain;
  a.create_graph = create_graph ? GraphMode::On : GraphMode::Auto;
  a.allow_unused = true;
  a.constant_outputs_are_zero = true;
  a.own_leaves = &own;
  return fill_zeros(run_backward(outs, cts, xs, a), xs);
}
}  // namespace

std::pair<Tensors, std::function<Tensors(const Tensors&)>> vjp(const Fn& f, const Tensors& primals,
                                                               bool create_graph) {
  auto own = std::make_shared<std::unordered_set<const TensorImpl*>>();
  Tensors xs = as_differentiable(primals, *own);
  Tensors outs;
  {
    EnableGrad eg;
    outs = f(xs);
  }
  auto pullback = [outs, xs, own, create_graph](const Tensors& cts) {
    DF_CHECK(cts.size() == outs.size(), "vjp: the pullback got ", cts.size(), " cotangents for ", outs.size(),
             " outputs");
    Tensors full(cts.size());
    for (size_t i = 0; i < cts.size(); ++i) {
      if (!cts[i].defined()) {
        full[i] = zeros_like(outs[i]);
        continue;
      }
      DF_CHECK(cts[i].shape() == outs[i].shape(), "vjp: cotangent ", i, " has shape ", shape_str(cts[i].shape()),
               " but output ", i, " has shape ", shape_str(outs[i].shape()));
      full[i] = cts[i];
    }
    return transform_grads(outs, xs, full, create_graph, /*retain=*/true, *own);
  };
  return {outs, pullback};
}

std::pair<Tensor, Tensors> value_and_grad(const ScalarFn& f, const Tensors& primals, bool create_graph) {
  std::unordered_set<const TensorImpl*> own;
  Tensors xs = as_differentiable(primals, own);
  Tensor y;
  {
    EnableGrad eg;
    y = f(xs);
  }
  DF_CHECK(y.numel() == 1, "value_and_grad: the function must return a scalar, got ", y.desc());
  return {y, transform_grads({y}, xs, {}, create_graph, create_graph, own)};
}

Tensors grad_of(const ScalarFn& f, const Tensors& primals, bool create_graph) {
  return value_and_grad(f, primals, create_graph).second;
}

Tensors hvp(const ScalarFn& f, const Tensors& primals, const Tensors& tangents) {
  DF_CHECK(primals.size() == tangents.size(), "hvp: ", primals.size(), " primals but ",
           tangents.size(), " tangents");
  DualLevel level;
  Tensors xs;
  for (size_t i = 0; i < primals.size(); ++i) xs.push_back(make_dual(primals[i], tangents[i], level.id()));
  std::unordered_set<const TensorImpl*> own;
  Tensors leaves = as_differentiable(xs, own);
  Tensor y;
  {
    EnableGrad eg;
    y = f(leaves);
  }
  DF_CHECK(y.numel() == 1, "hvp: the function must return a scalar, got ", y.desc());
  Tensors g = transform_grads({y}, leaves, {}, false, false, own);
  // H v is the tangent of the gradient: kept with its own tangents at enclosing levels and its graph.
  Tensors out;
  for (size_t i = 0; i < g.size(); ++i) {
    Tensor t = unpack_dual(g[i], level.id()).second;
    out.push_back(t.defined() ? t : zeros_like(primals[i]));
  }
  return out;
}

// ---- dense Jacobians and Hessians (small inputs; one transform per basis vector) ---------------

namespace {
Tensor basis_like(const Tensor& x, int64_t j) {
  std::vector<double> e((size_t)x.numel(), 0.0);
  e[(size_t)j] = 1;
  return from_vector(e, x.shape(), x.dtype(), x.device());
}
Shape concat_shapes(const Shape& a, const Shape& b) {
  Shape s = a;
  s.insert(s.end(), b.begin(), b.end());
  return s;
}
}  // namespace

std::vector<Tensors> jacfwd(const Fn& f, const Tensors& primals) {
  std::vector<Tensors> J;
  std::vector<Shape> out_shapes;
  for (size_t j = 0; j < primals.size(); ++j) {
    const int64_t n = primals[j].numel();
    std::vector<Tensors> cols;  // cols[k][i]: d out_i / d in_j[k]
    for (int64_t k = 0; k < n; ++k) {
      Tensors ts;
      for (size_t m = 0; m < primals.size(); ++m) ts.push_back(m == j ? basis_like(primals[m], k) : zeros_like(primals[m]));
      auto r = jvp(f, primals, ts);
      if (J.empty()) {
        J.resize(r.second.size());
        for (auto& o : r.first) out_shapes.push_back(o.shape());
      }
      cols.push_back(r.second);
    }
    for (size_t i = 0; i < J.size(); ++i) {
      Tensors col;
      for (auto& c : cols) col.push_back(reshape(c[i], {-1}));
      Tensor st = n ? stack(col, 1) : zeros({shape_numel(out_shapes[i]), 0}, primals[j].dtype(), primals[j].device());
      J[i].push_back(reshape(st, concat_shapes(out_shapes[i], primals[j].shape())));
    }
  }
  return J;
}

std::vector<Tensors> jacrev(const Fn& f, const Tensors& primals) {
  auto [outs, pullback] = vjp(f, primals);
  std::vector<Tensors> J(outs.size());
  for (size_t i = 0; i < outs.size(); ++i) {
    const int64_t n = outs[i].numel();
    std::vector<Tensors> rows;  // rows[k][j]: d out_i[k] / d in_j
    for (int64_t k = 0; k < n; ++k) {
      Tensors cts;
      for (size_t m = 0; m < outs.size(); ++m) cts.push_back(m == i ? basis_like(outs[m], k) : zeros_like(outs[m]));
      rows.push_back(pullback(cts));
    }
    for (size_t j = 0; j < primals.size(); ++j) {
      Tensors row;
      for (auto& r : rows) row.push_back(reshape(r[j], {-1}));
      Tensor st = n ? stack(row, 0) : zeros({0, primals[j].numel()}, primals[j].dtype(), primals[j].device());
      J[i].push_back(reshape(st, concat_shapes(outs[i].shape(), primals[j].shape())));
    }
  }
  return J;
}

std::vector<Tensors> hessian(const ScalarFn& f, const Tensors& primals) {
  // Forward over reverse: the Jacobian (by JVPs) of the gradient.
  return jacfwd([&](const Tensors& a) { return grad_of(f, a); }, primals);
}

Tensor jacfwd(const std::function<Tensor(const Tensor&)>& f, const Tensor& x) {
  return jacfwd([&](const Tensors& a) { return Tensors{f(a[0])}; }, Tensors{x})[0][0];
}
Tensor jacrev(const std::function<Tensor(const Tensor&)>& f, const Tensor& x) {
  return jacrev([&](const Tensors& a) { return Tensors{f(a[0])}; }, Tensors{x})[0][0];
}
Tensor hessian(const std::function<Tensor(const Tensor&)>& f, const Tensor& x) {
  return hessian([&](const Tensors& a) { return f(a[0]); }, Tensors{x})[0][0];
}

}  // namespace df
