// The single dispatch point apply(), the reverse-mode tape, dual levels for forward mode, and the
// functional transforms built on them (grad, vjp, jvp, hvp).
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace df {

// Non-tensor arguments of an op. Each op documents which fields it reads.
struct Attrs {
  Shape dims;                    // axes, target shape, permutation, pads, indices ...
  Shape dims2;                   // a second integer list when one is not enough
  double a = 0, b = 0;           // scalars (clamp bounds, eps, exponent, scale ...)
  bool flag = false;             // keepdim and similar switches
  int64_t i = 0;                 // one integer (axis, output count ...)
};

using Tensors = std::vector<Tensor>;

// What a rule sees: the op's primal inputs and outputs and its attributes.
struct RuleCtx {
  const Tensors& in;
  const Tensors& out;
  const Attrs& attrs;
};

// An op. forward computes raw outputs (recording is off while it runs). jvp maps input tangents
// (undefined = zero) to output tangents; vjp maps output cotangents (undefined = zero) to input
// cotangents for the inputs whose `needs` flag is set. Both rules are written with public,
// differentiable ops, so they compose to any order.
struct OpDef {
  std::string name;
  std::function<Tensors(const Tensors& in, const Attrs& attrs)> forward;
  std::function<Tensors(const RuleCtx& c, const Tensors& tangents)> jvp;
  std::function<Tensors(const RuleCtx& c, const Tensors& grads, const std::vector<bool>& needs)> vjp;
  bool save_inputs = true;       // the vjp reads c.in
  bool save_outputs = true;      // the vjp reads c.out
  bool reverse_differentiable = true;  // false: outputs never join the tape (masks, stop_gradient)
  // Optional: outputs and their tangents in one pass, for kernels whose JVP recomputes the forward
  // anyway (fused attention). apply() uses it in place of forward + jvp when exactly one open level
  // carries input tangents and no reverse-mode graph of the tangent is wanted (the level's tangents
  // are non-differentiable, grad mode is off, or nothing involved requires grad). `jvp` remains the
  // rule for every other case, so the two must agree.
  std::function<std::pair<Tensors, Tensors>(const Tensors& in, const Tensors& tangents, const Attrs& attrs)>
      forward_with_tangents;
};

// The one dispatch point (DESIGN.md "Core contract"):
//  1. forward with recording off (or forward_with_tangents, see OpDef);
//  2. record a tape node if grad mode is on and an input requires grad;
//  3. for each active dual level where an input has a tangent, run the jvp rule and attach the
//     result to the outputs.
Tensors apply(const OpDef& op, const Tensors& inputs, const Attrs& attrs = {});
Tensor apply1(const OpDef& op, const Tensors& inputs, const Attrs& attrs = {});

// ---- reverse mode -----------------------------------------------------------------------------

// A saved output: an alias sharing storage and tangents, with a weak link to its producer (a
// strong one would make a cycle output -> node -> output).
struct SavedTensor {
  Tensor value;
  std::weak_ptr<Node> fn;
  int output_nr = 0;
  uint64_t version = 0;                   // the storage's version when saved
  Tensor unpack() const;
};

// Where a node's input came from: another node's output, a leaf that requires grad, or nothing.
struct Edge {
  std::shared_ptr<Node> fn;
  int output_nr = 0;
  std::weak_ptr<TensorImpl> leaf;
  bool is_leaf = false;
  bool active() const { return fn != nullptr || is_leaf; }
};

struct Node {
  const OpDef* op = nullptr;
  Attrs attrs;
  std::vector<Edge> next;                 // one per op input
  Tensors saved_in;                       // inputs, held strongly (no cycle: they point upstream)
  std::vector<uint64_t> saved_in_versions;  // their storages' versions when saved
  std::vector<SavedTensor> saved_out;
  std::vector<Shape> in_shapes;
  std::vector<Shape> out_shapes;          // to build zeros when a cotangent is missing
  std::vector<DType> out_dtypes;
  std::vector<Device> out_devices;
  int num_outputs = 0;
  bool released = false;
  uint64_t seq = 0;                       // creation order; backward runs newest first
  std::string creation_site;              // anomaly mode: where the forward op was called
  std::string name() const { return op ? op->name : "?"; }
  Node();
  ~Node();
};

// Gradients of `outputs` w.r.t. `inputs`; grad_outputs may be empty for scalar outputs.
// allow_unused: an input the outputs do not depend on gets an undefined Tensor instead of an error.
Tensors grad(const Tensors& outputs, const Tensors& inputs, const Tensors& grad_outputs = {},
             bool retain_graph = false, bool create_graph = false, bool allow_unused = false);
void backward(const Tensors& outputs, const Tensors& grad_outputs = {}, bool retain_graph = false,
              bool create_graph = false);

// Called during backward() (the accumulating pass, not grad()) once per leaf when that leaf's
// gradient for this pass is final: every node that adds to it has run. Leaves become final in a
// deterministic order (the same graph gives the same order); a leaf the pass reaches only as an
// output, or that no cotangent reaches, is announced after the last node. Data-parallel training
// launches gradient all-reduces from here while backward continues. One hook per thread; returns the
// previous one; an empty function removes it.
using GradReadyHook = std::function<void(const Tensor& leaf)>;
GradReadyHook set_grad_ready_hook(GradReadyHook hook);

bool grad_enabled();
struct NoGrad {
  NoGrad();
  ~NoGrad();
  bool prev;
};
struct EnableGrad {
  EnableGrad();
  ~EnableGrad();
  bool prev;
};

// The value of x as a constant in both modes: no gradient path and a zero tangent (like JAX's).
Tensor stop_gradient(const Tensor& x);

// ---- anomaly mode -----------------------------------------------------------------------------

// With anomaly mode on (the environment variable DF_DETECT_ANOMALY=1, or a DetectAnomaly scope), every
// op's inputs, outputs and tangents and every VJP's cotangents are checked for NaN/Inf as they are
// made (one device sync per tensor: a debugging mode). The first non-finite value raises an error
// naming the op, what held it (output k, the tangent at level L, the cotangent of input k), its index
// and value and the shapes involved; a backward error also shows where the forward op was called
// (a stack trace taken when the node was recorded).
bool anomaly_enabled();
struct DetectAnomaly {
  explicit DetectAnomaly(bool on = true);
  ~DetectAnomaly();
  bool prev;
};

// ---- forward mode -----------------------------------------------------------------------------

// RAII dual level. Tangents attached at this level are erased when it closes.
// differentiable_tangents = false: JVP rules run with recording off, so the tangent computation
// leaves nothing on the tape (the sCM case: the tangent is stop-gradient).
class DualLevel {
 public:
  explicit DualLevel(bool differentiable_tangents = true);
  ~DualLevel() noexcept(false);   // closing a level while an inner one is open raises
  DualLevel(const DualLevel&) = delete;
  DualLevel& operator=(const DualLevel&) = delete;
  int id() const { return id_; }

 private:
  int id_;
};

// A tensor equal to `primal` whose tangent at `level` (default: the innermost) is `tangent`.
// Differentiable in reverse w.r.t. both.
Tensor make_dual(const Tensor& primal, const Tensor& tangent, int level = -1);
// (primal, tangent) at `level`; the tangent is undefined where it is a symbolic zero.
std::pair<Tensor, Tensor> unpack_dual(const Tensor& t, int level = -1);
int current_level();             // innermost open level, -1 if none
int num_open_levels();
size_t live_tangent_count();     // tensors holding a tangent at an open level (for tests)

// ---- functional transforms --------------------------------------------------------------------

using Fn = std::function<Tensors(const Tensors&)>;
using ScalarFn = std::function<Tensor(const Tensors&)>;

// (f(primals), J tangents).
std::pair<Tensors, Tensors> jvp(const Fn& f, const Tensors& primals, const Tensors& tangents,
                                bool differentiable_tangents = true);
// (f(primals), pullback); the pullback maps output cotangents to input cotangents and may be called
// more than once.
std::pair<Tensors, std::function<Tensors(const Tensors&)>> vjp(const Fn& f, const Tensors& primals,
                                                               bool create_graph = false);
// Gradient of a scalar function w.r.t. all its inputs.
Tensors grad_of(const ScalarFn& f, const Tensors& primals, bool create_graph = false);
std::pair<Tensor, Tensors> value_and_grad(const ScalarFn& f, const Tensors& primals,
                                          bool create_graph = false);
// Hessian-vector product of a scalar function (forward-over-reverse).
Tensors hvp(const ScalarFn& f, const Tensors& primals, const Tensors& tangents);

// Every transform returns ordinary differentiable values: they carry the tangents of enclosing dual
// levels, and the reverse graph whenever it can be differentiated further (grad mode on and
// something outside the transform requires grad), so transforms apply to each other in any order and
// depth. Outputs that do not depend on the inputs contribute zero cotangents.

// Dense Jacobians and Hessians for small inputs: J[i][j] has shape out_i.shape + in_j.shape (built
// from one JVP per input element, or one pullback per output element); H[i][j] has shape
// in_i.shape + in_j.shape.
std::vector<Tensors> jacfwd(const Fn& f, const Tensors& primals);
std::vector<Tensors> jacrev(const Fn& f, const Tensors& primals);
std::vector<Tensors> hessian(const ScalarFn& f, const Tensors& primals);
Tensor jacfwd(const std::function<Tensor(const Tensor&)>& f, const Tensor& x);
Tensor jacrev(const std::function<Tensor(const Tensor&)>& f, const Tensor& x);
Tensor hessian(const std::function<Tensor(const Tensor&)>& f, const Tensor& x);

// Live tape nodes (for memory tests).
int64_t live_node_count();

}  // namespace df
