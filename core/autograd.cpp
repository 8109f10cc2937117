// apply(), the reverse-mode engine, dual levels and the functional transforms.
#include "core/autograd.h"

#include <algorithm>
#include <atomic>
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

const OpDef& stop_gradient_op() {
  static OpDef op{"stop_gradient",
                  [](const Tensors& in, const Attrs&) { return Tensors{alias_of(in[0])}; },
                  [](const RuleCtx&, const Tensors& t) { return Tensors{t[0]}; },
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

// apply() outside any op's forward: the forward (or fused forward-with-tangents), a tape node when
// an input requires grad, then one JVP per open dual level.
static Tensors apply_recorded(const OpDef& op, const Tensors& inputs, const Attrs& attrs) {
  // The mixed-precision policy casts at the ops' public entry points only: the forward (and the ops
  // it calls) and the JVP rules run in the dtypes the inputs arrived in.
  AutocastSuspend no_autocast;

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
    if (op.save_inputs) node->saved_in = inputs;
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
        node->saved_out.push_back(std::move(s));
      }
    }
  }

  // 3. forward mode: one JVP per open level where some input has a tangent.
  for (size_t li = 0; li < g_levels.size(); ++li) {
    LevelState& L = g_levels[li];
    if (L.suspended) continue;
    Tensors tin(inputs.size());
    bool any = false;
    for (size_t k = 0; k < inputs.size(); ++k)
      if (inputs[k].defined()) {
        tin[k] = inputs[k].tangent(L.id);
        any |= tin[k].defined();
      }
    if (!any) continue;
    int id = L.id;
    bool diff = L.differentiable;
    Tensors tout;
    if (id == fused_level) {
      tout = fused_tangents;
    } else {
      DF_CHECK(op.jvp, op.name, ": an input has a tangent but this op has no JVP rule");
      L.suspended = true;
      struct Resume {
        int id;
        ~Resume() {
          if (auto* l = find_level(id)) l->suspended = false;
        }
      } resume{id};
      RuleCtx ctx{inputs, outs, attrs};
      if (diff) {
        tout = op.jvp(ctx, tin);
      } else {
        NoGrad ng;
        tout = op.jvp(ctx, tin);
      }
    }
    DF_CHECK(tout.size() == outs.size(), op.name, ": JVP rule returned ", tout.size(),
             " tangents for ", outs.size(), " outputs");
    for (size_t k = 0; k < outs.size(); ++k) {
      if (!tout[k].defined()) continue;
      DF_CHECK(tout[k].shape() == outs[k].shape(), op.name, ": JVP rule gave a tangent of shape ",
               shape_str(tout[k].shape()), " for an output of shape ", shape_str(outs[k].shape()));
      DF_CHECK(tout[k].dtype() == outs[k].dtype(), op.name, ": JVP rule gave a ", dtype_name(tout[k].dtype()),
               " tangent for a ", dtype_name(outs[k].dtype()), " output (tangents follow their primal's dtype)");
      set_tangent(outs[k], id, tout[k]);
    }
  }
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

Tensors run_backward(const Tensors& outputs, const Tensors& grad_outputs_in, const Tensors& inputs,
                     bool accumulate, bool retain_graph, bool create_graph, bool allow_unused) {
  const char* who = accumulate ? "backward" : "grad";
  DF_CHECK(grad_outputs_in.empty() || grad_outputs_in.size() == outputs.size(), who, ": got ",
           grad_outputs_in.size(), " grad_outputs for ", outputs.size(), " outputs");
  Tensors grad_outputs(outputs.size());
  for (size_t i = 0; i < outputs.size(); ++i) {
    const Tensor& y = outputs[i];
    DF_CHECK(y.defined(), who, ": output ", i, " is undefined");
    DF_CHECK(y.requires_grad(), who, ": output ", i, " (", y.desc(), ") does not require grad and "
             "has no grad_fn");
    if (!grad_outputs_in.empty() && grad_outputs_in[i].defined()) {
      DF_CHECK(grad_outputs_in[i].shape() == y.shape(), who, ": grad_output ", i, " has shape ",
               shape_str(grad_outputs_in[i].shape()), " but the output has shape ", shape_str(y.shape()));
      grad_outputs[i] = grad_outputs_in[i];
    } else {
      DF_CHECK(y.numel() == 1, who, ": grad can be implicitly created only for scalar outputs; "
               "output ", i, " has shape ", shape_str(y.shape()), " (pass grad_outputs)");
      grad_outputs[i] = ones_like(y);
    }
  }

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

    Tensors outs;
    for (auto& s : n->saved_out) outs.push_back(s.unpack());
    Tensors gin = n->op->vjp(RuleCtx{n->saved_in, outs, n->attrs}, grads, needs);
    DF_CHECK(gin.size() == n->next.size(), n->name(), ": VJP rule returned ", gin.size(),
             " cotangents for ", n->next.size(), " inputs");
    if (!retain_graph) {
      n->saved_in.clear();
      n->saved_out.clear();
      n->released = true;
    }
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
  }

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
  return run_backward(outputs, grad_outputs, inputs, false, retain_graph || create_graph, create_graph,
                      allow_unused);
}

void backward(const Tensors& outputs, const Tensors& grad_outputs, bool retain_graph, bool create_graph) {
  run_backward(outputs, grad_outputs, {}, true, retain_graph || create_graph, create_graph, true);
}

// ---- forward mode -----------------------------------------------------------------------------

DualLevel::DualLevel(bool differentiable_tangents) : id_(g_next_level++) {
  LevelState s;
  s.id = id_;
  s.differentiable = differentiable_tangents;
  g_levels.push_back(std::move(s));
}

DualLevel::~DualLevel() {
  // Levels close innermost first (RAII); erase this level's tangents everywhere.
  for (auto& w : g_levels.back().touched)
    if (auto m = w.lock()) {
      auto& v = m->by_level;
      v.erase(std::remove_if(v.begin(), v.end(), [&](auto& e) { return e.first == id_; }), v.end());
    }
  g_levels.pop_back();
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
Tensors as_differentiable(const Tensors& primals) {
  Tensors xs;
  for (auto& p : primals) {
    if (p.requires_grad()) xs.push_back(p);
    else {
      // A fresh leaf aliasing p, keeping p's tangents so transforms nest inside jvp.
      Tensor x = p.detach();
      x.impl()->tangents = p.impl()->tangents;
      x.requires_grad_(true);
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
}  // namespace

std::pair<Tensors, std::function<Tensors(const Tensors&)>> vjp(const Fn& f, const Tensors& primals,
                                                               bool create_graph) {
  Tensors xs = as_differentiable(primals);
  Tensors outs;
  {
    EnableGrad eg;
    outs = f(xs);
  }
  auto pullback = [outs, xs, create_graph](const Tensors& cts) {
    return fill_zeros(grad(outs, xs, cts, true, create_graph, true), xs);
  };
  return {outs, pullback};
}

std::pair<Tensor, Tensors> value_and_grad(const ScalarFn& f, const Tensors& primals, bool create_graph) {
  Tensors xs = as_differentiable(primals);
  Tensor y;
  {
    EnableGrad eg;
    y = f(xs);
  }
  DF_CHECK(y.numel() == 1, "value_and_grad: the function must return a scalar, got ", y.desc());
  if (!y.requires_grad()) return {y, fill_zeros(Tensors(xs.size()), xs)};
  return {y, fill_zeros(grad({y}, xs, {}, create_graph, create_graph, true), xs)};
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
  Tensors leaves = as_differentiable(xs);
  Tensor y;
  {
    EnableGrad eg;
    y = f(leaves);
  }
  Tensors g = fill_zeros(grad({y}, leaves, {}, false, false, true), leaves);
  Tensors out;
  for (auto& gi : g) {
    Tensor t = gi.tangent(level.id());
    out.push_back(t.defined() ? t.detach() : zeros_like(gi));
  }
  return out;
}

}  // namespace df
