// Ops indexed by i64 tensors: gather and scatter_add (each the other's transpose, so derivatives of
// every order compose), and the tensor-index forms of index_select and embedding built on gather.
// Indices must lie in [0, size): negative indices are rejected, never wrapped.
#include "ops/cpu_kernels.h"
#include "ops/elementwise_kernels.h"
#include "ops/rules.h"
#include "ops/shape_index_kernels.h"

namespace df {

// ---- kernels ----------------------------------------------------------------------------------

void index_out_of_range(const char* op, int64_t value, int64_t axis, const Tensor& x) {
  DF_FAIL(op, ": index ", value, " is out of range for axis ", axis, " of size ", x.shape()[axis], " (input ",
          x.desc(), "); indices must be in [0, ", x.shape()[axis], ")");
}

namespace {

// Strides of t with the entry of `axis` zeroed: the offset of p with p[axis] replaced by 0.
Shape strides_without(const Tensor& t, int64_t axis) {
  Shape s = t.strides();
  s[axis] = 0;
  return s;
}

template <class T>
void gather_cpu(const Tensor& x, int64_t axis, const Tensor& index, Tensor& out, const char* op) {
  const T* xp = x.data_as<T>();
  const int64_t* ip = index.data_as<int64_t>();
  T* o = out.data_as<T>();
  const int64_t A = x.shape()[axis], xa = x.strides()[axis];
  Shape xs = strides_without(x, axis);
  for_each_strided<2>(index.shape(), {index.strides().data(), xs.data()}, [&](auto off, int64_t len, auto st) {
    for (int64_t i = 0; i < len; ++i) {
      int64_t k = ip[off[0] + i * st[0]];
      if (k < 0 || k >= A) index_out_of_range(op, k, axis, x);
      *o++ = xp[off[1] + i * st[1] + k * xa];
    }
  });
}

// Serial in index order, so repeated indices accumulate deterministically.
template <class T>
void scatter_add_cpu(Tensor& out, int64_t axis, const Tensor& index, const Tensor& src, const char* op) {
  T* o = out.data_as<T>();
  const int64_t* ip = index.data_as<int64_t>();
  const T* sp = src.data_as<T>();
  const int64_t A = out.shape()[axis], oa = out.strides()[axis];
  Shape os = strides_without(out, axis);
  for_each_strided<3>(index.shape(), {index.strides().data(), src.strides().data(), os.data()},
                      [&](auto off, int64_t len, auto st) {
                        for (int64_t i = 0; i < len; ++i) {
                          int64_t k = ip[off[0] + i * st[0]];
                          if (k < 0 || k >= A) index_out_of_range(op, k, axis, out);
                          o[off[2] + i * st[2] + k * oa] += sp[off[1] + i * st[1]];
                        }
                      });
}

}  // namespace

Tensor gather_kernel(const Tensor& x, int64_t axis, const Tensor& index, const char* op) {
  check_floating(x, op);
  if (x.device() == Device::CUDA) {
    DF_CHECK(shape_index_cuda_hooks().gather, op, ": CUDA tensor but no CUDA backend");
    return shape_index_cuda_hooks().gather(x, axis, index, op);
  }
  Tensor out = empty(index.shape(), x.dtype(), Device::CPU);
  DF_DISPATCH_FLOAT(x.dtype(), op, gather_cpu<scalar_t>(x, axis, index, out, op));
  return out;
}

Tensor scatter_add_kernel(const Tensor& x, int64_t axis, const Tensor& index, const Tensor& src, const char* op) {
  check_floating(x, op);
  check_floating(src, op);
  if (x.device() == Device::CUDA) {
    DF_CHECK(shape_index_cuda_hooks().scatter_add, op, ": CUDA tensor but no CUDA backend");
    return shape_index_cuda_hooks().scatter_add(x, axis, index, src, op);
  }
  Tensor out = copy_kernel(x, x.dtype());
  DF_DISPATCH_FLOAT(x.dtype(), op, scatter_add_cpu<scalar_t>(out, axis, index, src, op));
  return out;
}

// ---- ops ----------------------------------------------------------------------------------------

namespace {

// Which public function asked, so an out-of-range index names the op the user called.
enum Caller : int64_t { kGather, kScatterAdd, kIndexSelect, kEmbedding, kCrossEntropy, kMaxPool2d };
const char* caller_name(const Attrs& at) {
  static const char* names[] = {"gather", "scatter_add", "index_select", "embedding", "cross_entropy", "max_pool2d"};
  return names[at.dims.empty() ? 0 : at.dims[0]];
}

const OpDef& gather_op();
const OpDef& scatter_add_op();

// t zero-padded at the end of each axis up to `to` (scatter_add's src may be larger than its
// index; the part of src the index does not reach gets a zero cotangent).
Tensor pad_to(const Tensor& t, const Shape& to) {
  if (t.shape() == to) return t;
  std::vector<int64_t> pads;
  for (int64_t d = t.dim() - 1; d >= 0; --d) {
    pads.push_back(0);
    pads.push_back(to[d] - t.shape()[d]);
  }
  return pad(t, pads);
}

// gather: inputs {x, index}; attrs: i = axis, dims = {caller}. Linear in x; its transpose is
// scatter_add into zeros.
const OpDef& gather_op() {
  static OpDef op{"gather",
                  [](const Tensors& in, const Attrs& at) {
                    return Tensors{gather_kernel(in[0], at.i, in[1], caller_name(at))};
                  },
                  [](const RuleCtx& c, const Tensors& t) {
                    if (!t[0].defined()) return Tensors{Tensor()};
                    return Tensors{apply1(gather_op(), {t[0], c.in[1]}, c.attrs)};
                  },
                  [](const RuleCtx& c, const Tensors& g, const std::vector<bool>& needs) {
                    if (!needs[0]) return Tensors{Tensor(), Tensor()};
                    Tensor z = zeros(c.in[0].shape(), g[0].dtype(), g[0].device());
                    return Tensors{apply1(scatter_add_op(), {z, c.in[1], g[0]}, c.attrs), Tensor()};
                  },
                  true, false};
  return op;
}

// scatter_add: inputs {x, index, src}; attrs as gather's. Linear in (x, src): the cotangent of x
// passes through, that of src is gathered back.
const OpDef& scatter_add_op() {
  static OpDef op{"scatter_add",
                  [](const Tensors& in, const Attrs& at) {
                    return Tensors{scatter_add_kernel(in[0], at.i, in[1], in[2], caller_name(at))};
                  },
                  [](const RuleCtx& c, const Tensors& t) {
                    if (!t[2].defined()) return Tensors{t[0]};
                    return Tensors{apply1(scatter_add_op(), {or_zeros(t[0], c.in[0]), c.in[1], t[2]}, c.attrs)};
                  },
                  [](const RuleCtx& c, const Tensors& g, const std::vector<bool>& needs) {
                    Tensor gs;
                    if (needs[2]) gs = pad_to(apply1(gather_op(), {g[0], c.in[1]}, c.attrs), c.in[2].shape());
                    return Tensors{needs[0] ? g[0] : Tensor(), Tensor(), gs};
                  },
                  true, false};
  return op;
}

Attrs index_attrs(int64_t axis, Caller caller) {
  Attrs at;
  at.i = axis;
  at.dims = {caller};
  return at;
}

void check_index(const Tensor& x, const Tensor& index, const char* op) {
  DF_CHECK(x.defined() && index.defined(), op, ": input or index is undefined");
  DF_CHECK(index.dtype() == DType::I64, op, ": index must be an i64 tensor, got ", index.desc());
  DF_CHECK(index.device() == x.device(), op, ": index ", index.desc(), " and input ", x.desc(),
           " are on different devices");
}

// gather's shape rule (PyTorch's): index has x's rank and is no larger off the axis.
int64_t check_gather(const Tensor& x, int64_t axis, const Tensor& index, const char* op) {
  check_index(x, index, op);
  DF_CHECK(x.dim() >= 1, op, ": needs an input with at least one axis, got ", x.desc());
  int64_t a = normalize_axis(axis, x.dim(), op);
  DF_CHECK(index.dim() == x.dim(), op, ": index ", index.desc(), " must have the rank of the input ", x.desc());
  for (int64_t d = 0; d < x.dim(); ++d)
    DF_CHECK(d == a || index.shape()[d] <= x.shape()[d], op, ": index ", index.desc(), " is larger than the input ",
             x.desc(), " along axis ", d, " (only the gathered axis ", a, " may differ)");
  return a;
}

Tensor gather_as(const Tensor& x, int64_t axis, const Tensor& index, Caller caller) {
  return apply1(gather_op(), {x, index}, index_attrs(axis, caller));
}

// index (K) or () as a view of x's shape with K along `axis` (stride 0 elsewhere): index_select as a
// gather that reads each index once per row.
Tensor select_index(const Tensor& x, int64_t axis, const Tensor& index, const char* op) {
  check_index(x, index, op);
  DF_CHECK(index.dim() <= 1, op, ": index must be 0-D or 1-D, got ", index.desc());
  int64_t K = index.numel();
  Shape line(x.dim(), 1), selected = x.shape();
  line[axis] = K;
  selected[axis] = K;
  return broadcast_to(reshape(index, line), selected);
}

}  // namespace

Tensor gather(const Tensor& x, int64_t axis, const Tensor& index) {
  int64_t a = check_gather(x, axis, index, "gather");
  return gather_as(x, a, index, kGather);
}

Tensor scatter_add(const Tensor& x, int64_t axis, const Tensor& index, const Tensor& src) {
  const char* op = "scatter_add";
  int64_t a = check_gather(x, axis, index, op);
  DF_CHECK(src.defined(), op, ": src is undefined");
  DF_CHECK(src.dtype() == x.dtype() && src.device() == x.device(), op, ": src ", src.desc(), " and input ", x.desc(),
           " differ in dtype or device");
  DF_CHECK(src.dim() == x.dim(), op, ": src ", src.desc(), " must have the rank of the input ", x.desc());
  for (int64_t d = 0; d < x.dim(); ++d)
    DF_CHECK(index.shape()[d] <= src.shape()[d], op, ": index ", index.desc(), " is larger than src ", src.desc(),
             " along axis ", d);
  return apply1(scatter_add_op(), {x, index, src}, index_attrs(a, kScatterAdd));
}

Tensor index_select(const Tensor& x, int64_t axis, const Tensor& index) {
  const char* op = "index_select";
  DF_CHECK(x.defined() && x.dim() >= 1, op, ": needs an input with at least one axis, got ",
           x.defined() ? x.desc() : std::string("undefined"));
  int64_t a = normalize_axis(axis, x.dim(), op);
  return gather_as(x, a, select_index(x, a, index, op), kIndexSelect);
}

Tensor embedding(const Tensor& weight, const Tensor& ids) {
  const char* op = "embedding";
  DF_CHECK(weight.defined() && weight.dim() == 2, op, ": weight must be (V, D), got ",
           weight.defined() ? weight.desc() : std::string("undefined"));
  check_index(weight, ids, op);
  Tensor flat = reshape(ids, {ids.numel()});
  Tensor rows = gather_as(weight, 0, select_index(weight, 0, flat, op), kEmbedding);
  Shape out = ids.shape();
  out.push_back(weight.size(1));
  return reshape(rows, out);
}

// For cross_entropy (ops/loss.cpp): the log-probability of each row's label, labels (B) i64.
Tensor pick_labels(const Tensor& logp, const Tensor& labels) {
  const char* op = "cross_entropy";
  check_index(logp, labels, op);
  DF_CHECK(labels.dim() == 1 && labels.size(0) == logp.size(0), op, ": labels must be (B) for logits ",
           logp.desc(), ", got ", labels.desc());
  int64_t B = logp.size(0);
  return reshape(gather_as(logp, 1, reshape(labels, {B, 1}), kCrossEntropy), {B});
}

// For max_pool2d (ops/image.cpp): x (N, C, S) gathered at idx (N, C, L) along the last axis.
Tensor gather_windows(const Tensor& x, const Tensor& idx) { return gather_as(x, 2, idx, kMaxPool2d); }

}  // namespace df
