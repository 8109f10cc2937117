// Views and layout ops: reshape/view, permute, broadcast, squeeze, copies across dtype and device.
// Views share storage; all are linear, so their JVP is the op itself on the tangent.
#include "ops/cpu_kernels.h"
#include "ops/elementwise_kernels.h"
#include "ops/rules.h"

namespace df {

namespace {

Shape infer_shape(const Shape& shape, int64_t numel, const char* op, const Tensor& x) {
  Shape out = shape;
  int64_t known = 1, infer = -1;
  for (size_t i = 0; i < out.size(); ++i) {
    if (out[i] == -1) {
      DF_CHECK(infer < 0, op, ": only one -1 allowed in ", shape_str(shape));
      infer = (int64_t)i;
    } else {
      DF_CHECK(out[i] >= 0, op, ": negative size in ", shape_str(shape));
      known *= out[i];
    }
  }
  if (infer >= 0) {
    DF_CHECK(known > 0 && numel % known == 0, op, ": cannot reshape ", x.desc(), " to ", shape_str(shape));
    out[infer] = numel / known;
  }
  DF_CHECK(shape_numel(out) == numel, op, ": cannot reshape ", x.desc(), " (", numel,
           " elements) to ", shape_str(shape));
  return out;
}

// Strides for viewing x as `shape` without a copy, or empty if impossible.
bool view_strides(const Tensor& x, const Shape& shape, Shape& strides) {
  if (x.is_contiguous()) {
    strides = contiguous_strides(shape);
    return true;
  }
  // General case: match groups of old dims to new dims (as in PyTorch's computeStride).
  const Shape &os = x.shape(), &ost = x.strides();
  int64_t numel = x.numel();
  strides.assign(shape.size(), 0);
  if (numel == 0) { strides = contiguous_strides(shape); return true; }
  int64_t view_d = (int64_t)shape.size() - 1;
  int64_t chunk_base_stride = ost.empty() ? 1 : ost.back();
  int64_t tensor_numel = 1, view_numel = 1;
  for (int64_t d = (int64_t)os.size() - 1; d >= 0; --d) {
    tensor_numel *= os[d];
    if (d == 0 || (os[d - 1] != 1 && ost[d - 1] != tensor_numel * chunk_base_stride)) {
      while (view_d >= 0 && (view_numel < tensor_numel || shape[view_d] == 1)) {
        strides[view_d] = view_numel * chunk_base_stride;
        view_numel *= shape[view_d];
        --view_d;
      }
      if (view_numel != tensor_numel) return false;
      if (d > 0) {
        chunk_base_stride = ost[d - 1];
        tensor_numel = 1;
        view_numel = 1;
      }
    }
  }
  return view_d == -1;
}

// attrs: dims = target shape, dims2 = input shape.
const OpDef& view_op();
const OpDef& view_op() {
  static OpDef op = def_linear(
      "view",
      [](const Tensors& in, const Attrs& at) {
        Shape st;
        DF_CHECK(view_strides(in[0], at.dims, st), "view: ", in[0].desc(), " cannot be viewed as ",
                 shape_str(at.dims), " without a copy (its strides are ", shape_str(in[0].strides()),
                 "); use reshape()");
        return Tensors{make_view(in[0], at.dims, st, in[0].offset())};
      },
      [](const RuleCtx& c, const Tensors& g, const std::vector<bool>&) { return Tensors{reshape(g[0], c.attrs.dims2)}; },
      view_op);
  return op;
}

// attrs: dims = permutation.
const OpDef& permute_op();
const OpDef& permute_op() {
  static OpDef op = def_linear(
      "permute",
      [](const Tensors& in, const Attrs& at) {
        Shape sh, st;
        for (auto p : at.dims) {
          sh.push_back(in[0].shape()[p]);
          st.push_back(in[0].strides()[p]);
        }
        return Tensors{make_view(in[0], sh, st, in[0].offset())};
      },
      [](const RuleCtx& c, const Tensors& g, const std::vector<bool>&) {
        Shape inv(c.attrs.dims.size());
        for (size_t i = 0; i < inv.size(); ++i) inv[c.attrs.dims[i]] = (int64_t)i;
        return Tensors{permute(g[0], inv)};
      },
      permute_op);
  return op;
}

// attrs: dims = target shape, dims2 = input shape.
const OpDef& broadcast_op();
const OpDef& broadcast_op() {
  static OpDef op = def_linear(
      "broadcast_to",
      [](const Tensors& in, const Attrs& at) {
        return Tensors{make_view(in[0], at.dims, broadcast_strides(in[0], at.dims), in[0].offset())};
      },
      [](const RuleCtx& c, const Tensors& g, const std::vector<bool>&) { return Tensors{sum_to(g[0], c.attrs.dims2)}; },
      broadcast_op);
  return op;
}

const OpDef& copy_op();
const OpDef& copy_op() {
  static OpDef op = def_linear(
      "copy", [](const Tensors& in, const Attrs&) { return Tensors{copy_kernel(in[0], in[0].dtype())}; },
      [](const RuleCtx&, const Tensors& g, const std::vector<bool>&) { return Tensors{g[0]}; }, copy_op);
  return op;
}

// attrs: i = target dtype, flag unused. The cotangent goes back to the source dtype.
const OpDef& cast_op();
const OpDef& cast_op() {
  static OpDef op = def_linear(
      "cast", [](const Tensors& in, const Attrs& at) { return Tensors{copy_kernel(in[0], DType(at.i))}; },
      [](const RuleCtx& c, const Tensors& g, const std::vector<bool>&) { return Tensors{cast(g[0], DType(c.attrs.dims2[0]))}; },
      cast_op);
  return op;
}

// A cast to or from i64 (index tensors): no derivative, so no tape node and no tangent.
const OpDef& cast_index_op() {
  static OpDef op{"cast",
                  [](const Tensors& in, const Attrs& at) { return Tensors{copy_kernel(in[0], DType(at.i))}; },
                  [](const RuleCtx&, const Tensors&) { return Tensors{Tensor()}; },
                  [](const RuleCtx&, const Tensors&, const std::vector<bool>&) { return Tensors{Tensor()}; },
                  false, false, false};
  return op;
}

// attrs: i = target device, dims2[0] = source device.
const OpDef& to_device_op();
const OpDef& to_device_op() {
  static OpDef op = def_linear(
      "to_device",
      [](const Tensors& in, const Attrs& at) {
        Tensor src = in[0].is_contiguous() ? in[0] : copy_kernel(in[0], in[0].dtype());
        Tensor out = empty(src.shape(), src.dtype(), Device(at.i));
        DF_CHECK(device_hooks().copy, "to_device: moving ", src.desc(), " to ", device_name(Device(at.i)),
                 " needs the CUDA backend");
        device_hooks().copy(out.data(), out.device(), src.data(), src.device(), src.numel() * dtype_size(src.dtype()));
        return Tensors{out};
      },
      [](const RuleCtx& c, const Tensors& g, const std::vector<bool>&) {
        return Tensors{to_device(g[0], Device(c.attrs.dims2[0]))};
      },
      to_device_op);
  return op;
}

}  // namespace

Tensor view(const Tensor& x, const Shape& shape) {
  Attrs at;
  at.dims = infer_shape(shape, x.numel(), "view", x);
  at.dims2 = x.shape();
  return apply1(view_op(), {x}, at);
}

Tensor reshape(const Tensor& x, const Shape& shape) {
  Shape target = infer_shape(shape, x.numel(), "reshape", x);
  if (target == x.shape()) return x;
  Shape st;
  if (view_strides(x, target, st)) return view(x, target);
  return view(copy(x), target);
}

Tensor flatten(const Tensor& x, int64_t start, int64_t end) {
  if (x.dim() == 0) return reshape(x, {1});
  int64_t s = normalize_axis(start, x.dim(), "flatten"), e = normalize_axis(end, x.dim(), "flatten");
  DF_CHECK(s <= e, "flatten: start axis ", start, " is after end axis ", end);
  Shape sh;
  for (int64_t i = 0; i < s; ++i) sh.push_back(x.shape()[i]);
  int64_t m = 1;
  for (int64_t i = s; i <= e; ++i) m *= x.shape()[i];
  sh.push_back(m);
  for (int64_t i = e + 1; i < x.dim(); ++i) sh.push_back(x.shape()[i]);
  return reshape(x, sh);
}

Tensor unsqueeze(const Tensor& x, int64_t axis) {
  int64_t a = axis < 0 ? axis + x.dim() + 1 : axis;
  DF_CHECK(a >= 0 && a <= x.dim(), "unsqueeze: axis ", axis, " out of range for ", x.desc());
  Shape sh = x.shape();
  sh.insert(sh.begin() + a, 1);
  return reshape(x, sh);
}

Tensor squeeze(const Tensor& x, int64_t axis) {
  int64_t a = normalize_axis(axis, x.dim(), "squeeze");
  DF_CHECK(x.shape()[a] == 1, "squeeze: axis ", axis, " of ", x.desc(), " has size ", x.shape()[a], ", not 1");
  Shape sh = x.shape();
  sh.erase(sh.begin() + a);
  return reshape(x, sh);
}

Tensor permute(const Tensor& x, const Shape& perm) {
  DF_CHECK((int64_t)perm.size() == x.dim(), "permute: ", perm.size(), " axes given for ", x.desc());
  Shape p;
  std::vector<bool> seen(perm.size());
  for (auto a : perm) {
    int64_t n = normalize_axis(a, x.dim(), "permute");
    DF_CHECK(!seen[n], "permute: axis ", a, " repeated in ", shape_str(perm));
    seen[n] = true;
    p.push_back(n);
  }
  Attrs at;
  at.dims = p;
  return apply1(permute_op(), {x}, at);
}

Tensor transpose(const Tensor& x, int64_t a, int64_t b) {
  Shape p;
  for (int64_t i = 0; i < x.dim(); ++i) p.push_back(i);
  std::swap(p[normalize_axis(a, x.dim(), "transpose")], p[normalize_axis(b, x.dim(), "transpose")]);
  return permute(x, p);
}

Tensor broadcast_to(const Tensor& x, const Shape& shape) {
  if (x.shape() == shape) return x;
  DF_CHECK(shape.size() >= x.shape().size(), "broadcast_to: cannot broadcast ", x.desc(), " to fewer dims ",
           shape_str(shape));
  size_t off = shape.size() - x.shape().size();
  for (size_t i = 0; i < x.shape().size(); ++i)
    DF_CHECK(x.shape()[i] == shape[off + i] || x.shape()[i] == 1, "broadcast_to: cannot broadcast ",
             x.desc(), " to ", shape_str(shape));
  Attrs at;
  at.dims = shape;
  at.dims2 = x.shape();
  return apply1(broadcast_op(), {x}, at);
}

Tensor copy(const Tensor& x) { return apply1(copy_op(), {x}); }

Tensor cast(const Tensor& x, DType dtype) {
  if (x.dtype() == dtype) return x;
  Attrs at;
  at.i = (int64_t)dtype;
  at.dims2 = {(int64_t)x.dtype()};
  if (!is_floating(x.dtype()) || !is_floating(dtype)) return apply1(cast_index_op(), {x}, at);
  return apply1(cast_op(), {x}, at);
}

Tensor to_device(const Tensor& x, Device device) {
  if (x.device() == device) return x;
  Attrs at;
  at.i = (int64_t)device;
  at.dims2 = {(int64_t)x.device()};
  return apply1(to_device_op(), {x}, at);
}

}  // namespace df
