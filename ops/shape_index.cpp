// Slicing and indexing ops: slice/narrow (views), index_select with its scatter-add transpose,
// cat/stack/split/chunk, constant pad and flip. All are linear, each op's VJP is another op of this
// file (slice <-> slice_scatter, index_select <-> index_add, cat -> slices, pad -> slices, flip -> flip).
#include <algorithm>

#include "ops/cpu_kernels.h"
#include "ops/elementwise_kernels.h"
#include "ops/reduce_kernels.h"
#include "ops/rules.h"
#include "ops/shape_index_kernels.h"

namespace df {

ShapeIndexCudaHooks& shape_index_cuda_hooks() {
  static ShapeIndexCudaHooks h;
  return h;
}

// ---- kernels ----------------------------------------------------------------------------------

void assign_kernel(const Tensor& dst, const Tensor& src) {
  DF_CHECK(dst.shape() == src.shape() && dst.dtype() == src.dtype() && dst.device() == src.device(),
           "assign: cannot write ", src.desc(), " into ", dst.desc());
  if (dst.device() == Device::CUDA) {
    DF_CHECK(shape_index_cuda_hooks().assign, "assign: CUDA tensor but no CUDA backend");
    shape_index_cuda_hooks().assign(dst, src);
    return;
  }
  // A plain copy: moved as same-size words, so every dtype (i64 and bf16 too) takes this path.
  auto move_as = [&](auto word) {
    using W = decltype(word);
    W* dp = dst.data_as<W>();
    const W* sp = src.data_as<W>();
    for_each_strided<2>(dst.shape(), {dst.strides().data(), src.strides().data()}, [&](auto off, int64_t len, auto st) {
      for (int64_t i = 0; i < len; ++i) dp[off[0] + i * st[0]] = sp[off[1] + i * st[1]];
    });
  };
  switch (dtype_size(dst.dtype())) {
    case 2: move_as(uint16_t()); break;
    case 4: move_as(uint32_t()); break;
    case 8: move_as(uint64_t()); break;
    default: DF_FAIL("assign: unexpected element size for ", dst.desc());
  }
}

namespace {

// Split `shape` around `axis` into (outer, axis, inner) sizes.
void oai(const Shape& shape, int64_t axis, int64_t& O, int64_t& A, int64_t& I) {
  O = 1, I = 1, A = shape[axis];
  for (int64_t d = 0; d < axis; ++d) O *= shape[d];
  for (int64_t d = axis + 1; d < (int64_t)shape.size(); ++d) I *= shape[d];
}

Tensor contiguous_kernel(const Tensor& x) { return x.is_contiguous() ? x : copy_kernel(x, x.dtype()); }

// x (O, A, I) -> out (O, K, I), out[o, k] = x[o, index[k]].
template <class T>
void gather_rows(const T* x, T* out, int64_t O, int64_t A, int64_t I, const std::vector<int64_t>& index) {
  int64_t K = (int64_t)index.size();
#pragma omp parallel for if (O * K * I > (1 << 16) && O > 1) schedule(static)
  for (int64_t o = 0; o < O; ++o)
    for (int64_t k = 0; k < K; ++k) {
      const T* src = x + (o * A + index[k]) * I;
      T* dst = out + (o * K + k) * I;
      for (int64_t i = 0; i < I; ++i) dst[i] = src[i];
    }
}

// g (O, K, I) added into zeroed out (O, A, I) at out[o, index[k]]. Parallel over o only, so
// repeated indices within one o accumulate without races.
template <class T>
void scatter_add_rows(const T* g, T* out, int64_t O, int64_t A, int64_t I, const std::vector<int64_t>& index) {
  int64_t K = (int64_t)index.size();
#pragma omp parallel for if (O * K * I > (1 << 16) && O > 1) schedule(static)
  for (int64_t o = 0; o < O; ++o)
    for (int64_t k = 0; k < K; ++k) {
      const T* src = g + (o * K + k) * I;
      T* dst = out + (o * A + index[k]) * I;
      for (int64_t i = 0; i < I; ++i) dst[i] += src[i];
    }
}

}  // namespace

Tensor index_select_kernel(const Tensor& x, int64_t axis, const std::vector<int64_t>& index) {
  check_floating(x, "index_select");
  int64_t O, A, I, K = (int64_t)index.size();
  oai(x.shape(), axis, O, A, I);
  Tensor xc = contiguous_kernel(x);
  Shape out_shape = x.shape();
  out_shape[axis] = K;
  if (x.device() == Device::CUDA) {
    DF_CHECK(shape_index_cuda_hooks().index_select, "index_select: CUDA tensor but no CUDA backend");
    Tensor r = shape_index_cuda_hooks().index_select(xc, O, A, I, index);
    return make_view(r, out_shape, contiguous_strides(out_shape), 0);
  }
  Tensor out = empty(out_shape, x.dtype(), Device::CPU);
  DF_DISPATCH_FLOAT(x.dtype(), "index_select",
                    gather_rows(xc.data_as<scalar_t>(), out.data_as<scalar_t>(), O, A, I, index));
  return out;
}

Tensor index_add_kernel(const Tensor& g, int64_t axis, const std::vector<int64_t>& index, const Shape& out_shape) {
  check_floating(g, "index_add");
  int64_t O, A, I, K = (int64_t)index.size();
  oai(out_shape, axis, O, A, I);
  DF_CHECK(g.dim() == (int64_t)out_shape.size() && g.shape()[axis] == K, "index_add: ", g.desc(), " does not match ",
           K, " indices along axis ", axis);
  Tensor gc = contiguous_kernel(g);
  if (g.device() == Device::CUDA) {
    DF_CHECK(shape_index_cuda_hooks().index_add, "index_add: CUDA tensor but no CUDA backend");
    Tensor r = shape_index_cuda_hooks().index_add(gc, O, A, I, index);
    return make_view(r, out_shape, contiguous_strides(out_shape), 0);
  }
  Tensor out = zeros(out_shape, g.dtype(), Device::CPU);
  DF_DISPATCH_FLOAT(g.dtype(), "index_add",
                    scatter_add_rows(gc.data_as<scalar_t>(), out.data_as<scalar_t>(), O, A, I, index));
  return out;
}

// ---- ops ----------------------------------------------------------------------------------------

namespace {

// slice and slice_scatter share attrs: i = axis, dims = {start, step, count}, dims2 = unsliced shape.
Tensor slice_view(const Tensor& x, const Attrs& at) {
  Shape sh = x.shape(), st = x.strides();
  int64_t a = at.i, start = at.dims[0], step = at.dims[1], count = at.dims[2];
  int64_t off = x.offset() + (count > 0 ? start * st[a] : 0);
  sh[a] = count;
  st[a] *= step;
  return make_view(x, sh, st, off);
}

const OpDef& slice_op();
const OpDef& slice_scatter_op();

const OpDef& slice_op() {
  static OpDef op = def_linear(
      "slice", [](const Tensors& in, const Attrs& at) { return Tensors{slice_view(in[0], at)}; },
      by_op(slice_scatter_op),
      slice_op);
  return op;
}

// Embeds a slice-shaped tensor into zeros of the unsliced shape: the transpose of slice.
const OpDef& slice_scatter_op() {
  static OpDef op = def_linear(
      "slice_scatter",
      [](const Tensors& in, const Attrs& at) {
        Tensor out = zeros(at.dims2, in[0].dtype(), in[0].device());
        assign_kernel(slice_view(out, at), in[0]);
        return Tensors{out};
      },
      by_op(slice_op),
      slice_scatter_op);
  return op;
}

// index_select and index_add share attrs: i = axis, dims = index, dims2 = the unselected shape.
const OpDef& index_select_op();
const OpDef& index_add_op();

const OpDef& index_select_op() {
  static OpDef op = def_linear(
      "index_select",
      [](const Tensors& in, const Attrs& at) { return Tensors{index_select_kernel(in[0], at.i, at.dims)}; },
      by_op(index_add_op),
      index_select_op);
  return op;
}

const OpDef& index_add_op() {
  static OpDef op = def_linear(
      "index_add",
      [](const Tensors& in, const Attrs& at) { return Tensors{index_add_kernel(in[0], at.i, at.dims, at.dims2)}; },
      by_op(index_select_op),
      index_add_op);
  return op;
}

// attrs: i = axis, dims = each input's size along the axis.
const OpDef& cat_op();
const OpDef& cat_op() {
  static OpDef op = def_linear(
      "cat",
      [](const Tensors& in, const Attrs& at) {
        int64_t a = at.i, total = 0;
        for (auto s : at.dims) total += s;
        Shape sh = in[0].shape();
        sh[a] = total;
        Tensor out = empty(sh, in[0].dtype(), in[0].device());
        int64_t off = 0;
        for (auto& x : in) {
          assign_kernel(make_view(out, x.shape(), out.strides(), off * out.strides()[a]), x);
          off += x.shape()[a];
        }
        return Tensors{out};
      },
      [](const RuleCtx& c, const Tensors& g, const std::vector<bool>& needs) {
        Tensors r(c.attrs.dims.size());
        int64_t off = 0;
        for (size_t k = 0; k < r.size(); ++k) {
          if (needs[k]) r[k] = slice(g[0], c.attrs.i, off, off + c.attrs.dims[k]);
          off += c.attrs.dims[k];
        }
        return r;
      },
      cat_op);
  return op;
}

// split into views along axis i with sizes dims (dims2 = the input's shape): one op with several
// outputs, so the VJP is a single cat of the pieces' cotangents (zeros for unused pieces), not a
// slice_scatter per piece summed by the engine.
const OpDef& split_op();
const OpDef& split_op() {
  static OpDef op = def_linear(
      "split",
      [](const Tensors& in, const Attrs& at) {
        Tensors out;
        Shape st = in[0].strides();
        int64_t off = 0;
        for (int64_t s : at.dims) {
          Shape sh = in[0].shape();
          sh[at.i] = s;
          out.push_back(make_view(in[0], sh, st, in[0].offset() + (s > 0 ? off * st[at.i] : 0)));
          off += s;
        }
        return out;
      },
      [](const RuleCtx& c, const Tensors& g, const std::vector<bool>& needs) {
        const Tensor* any = nullptr;
        for (const Tensor& t : g)
          if (t.defined()) {
            any = &t;
            break;
          }
        if (!needs[0] || !any) return Tensors{Tensor()};
        Tensors parts(g.size());
        for (size_t k = 0; k < g.size(); ++k) {
          if (g[k].defined()) {
            parts[k] = g[k];
            continue;
          }
          Shape sh = c.attrs.dims2;
          sh[c.attrs.i] = c.attrs.dims[k];
          parts[k] = zeros(sh, any->dtype(), any->device());
        }
        return Tensors{cat(parts, c.attrs.i)};
      },
      split_op);
  return op;
}

// attrs: dims = pad before each axis, dims2 = pad after each axis (all >= 0), a = fill value.
// Affine, not linear: the tangent is padded with zeros, not with the value.
const OpDef& pad_op();
const OpDef& pad_op() {
  static OpDef op{"pad",
                  [](const Tensors& in, const Attrs& at) {
                    const Tensor& x = in[0];
                    Shape sh = x.shape();
                    for (size_t d = 0; d < sh.size(); ++d) sh[d] += at.dims[d] + at.dims2[d];
                    Tensor out = full(sh, at.a, x.dtype(), x.device());
                    int64_t off = 0;
                    for (size_t d = 0; d < sh.size(); ++d) off += at.dims[d] * out.strides()[d];
                    assign_kernel(make_view(out, x.shape(), out.strides(), off), x);
                    return Tensors{out};
                  },
                  [](const RuleCtx& c, const Tensors& t) {
                    if (!t[0].defined()) return Tensors{Tensor()};
                    Attrs z = c.attrs;
                    z.a = 0;
                    return Tensors{apply1(pad_op(), {t[0]}, z)};
                  },
                  [](const RuleCtx& c, const Tensors& g, const std::vector<bool>&) {
                    Tensor r = g[0];
                    for (int64_t d = 0; d < r.dim(); ++d) {
                      int64_t lo = c.attrs.dims[d], hi = c.attrs.dims2[d];
                      if (lo || hi) r = slice(r, d, lo, r.shape()[d] - hi);
                    }
                    return Tensors{r};
                  },
                  false, false};
  return op;
}

// attrs: dims = normalised axes to reverse. A negative-stride view copied out, so no other kernel
// ever sees negative strides.
const OpDef& flip_op();
const OpDef& flip_op() {
  static OpDef op = def_linear(
      "flip",
      [](const Tensors& in, const Attrs& at) {
        const Tensor& x = in[0];
        Shape st = x.strides();
        int64_t off = x.offset();
        for (auto a : at.dims) {
          if (x.shape()[a] > 0) off += (x.shape()[a] - 1) * st[a];
          st[a] = -st[a];
        }
        return Tensors{copy_kernel(make_view(x, x.shape(), st, off), x.dtype())};
      },
      by_op(flip_op),
      flip_op);
  return op;
}

void check_has_axes(const Tensor& x, const char* op) {
  DF_CHECK(x.defined(), op, ": undefined input tensor");
  DF_CHECK(x.dim() >= 1, op, ": needs a tensor with at least one axis, got ", x.desc());
}

}  // namespace

// ---- public API -------------------------------------------------------------------------------

Tensor slice(const Tensor& x, int64_t axis, int64_t start, int64_t end, int64_t step) {
  check_has_axes(x, "slice");
  int64_t a = normalize_axis(axis, x.dim(), "slice");
  DF_CHECK(step >= 1, "slice: step must be >= 1, got ", step, " for ", x.desc());
  int64_t n = x.shape()[a];
  // Python semantics: negative positions count from the end, then clamp to [0, n].
  auto fix = [n](int64_t p) { return std::min(std::max(p < 0 ? p + n : p, int64_t(0)), n); };
  int64_t s = fix(start), e = fix(end);
  int64_t count = e > s ? (e - s + step - 1) / step : 0;
  if (s == 0 && count == n && step == 1) return x;
  Attrs at;
  at.i = a;
  at.dims = {s, step, count};
  at.dims2 = x.shape();
  return apply1(slice_op(), {x}, at);
}

Tensor narrow(const Tensor& x, int64_t axis, int64_t start, int64_t length) {
  check_has_axes(x, "narrow");
  int64_t a = normalize_axis(axis, x.dim(), "narrow");
  int64_t n = x.shape()[a];
  int64_t s = start < 0 ? start + n : start;
  DF_CHECK(s >= 0 && s <= n && length >= 0 && s + length <= n, "narrow: start ", start, " length ", length,
           " does not fit axis ", axis, " of ", x.desc());
  return slice(x, a, s, s + length, 1);
}

Tensor index_select(const Tensor& x, int64_t axis, const std::vector<int64_t>& index) {
  check_has_axes(x, "index_select");
  int64_t a = normalize_axis(axis, x.dim(), "index_select");
  for (auto k : index)
    DF_CHECK(k >= 0 && k < x.shape()[a], "index_select: index ", k, " out of range for axis ", axis, " of ",
             x.desc());
  Attrs at;
  at.i = a;
  at.dims = Shape(index.begin(), index.end());
  at.dims2 = x.shape();
  return apply1(index_select_op(), {x}, at);
}

Tensor cat(const Tensors& xs, int64_t axis) {
  DF_CHECK(!xs.empty(), "cat: needs at least one tensor");
  const Tensor& x0 = xs[0];
  check_has_axes(x0, "cat");
  int64_t a = normalize_axis(axis, x0.dim(), "cat");
  Attrs at;
  at.i = a;
  for (size_t k = 0; k < xs.size(); ++k) {
    const Tensor& x = xs[k];
    DF_CHECK(x.defined(), "cat: input ", k, " is undefined");
    bool ok = x.dim() == x0.dim() && x.dtype() == x0.dtype() && x.device() == x0.device();
    for (int64_t d = 0; ok && d < x.dim(); ++d) ok = d == a || x.shape()[d] == x0.shape()[d];
    DF_CHECK(ok, "cat: input ", k, " is ", x.desc(), " but input 0 is ", x0.desc(),
             "; all must match except along axis ", axis);
    at.dims.push_back(x.shape()[a]);
  }
  if (xs.size() == 1) return x0;
  return apply1(cat_op(), xs, at);
}

Tensor stack(const Tensors& xs, int64_t axis) {
  DF_CHECK(!xs.empty(), "stack: needs at least one tensor");
  int64_t r = xs[0].dim();
  int64_t a = axis < 0 ? axis + r + 1 : axis;
  DF_CHECK(a >= 0 && a <= r, "stack: axis ", axis, " out of range for inputs like ", xs[0].desc());
  Tensors us;
  for (size_t k = 0; k < xs.size(); ++k) {
    DF_CHECK(xs[k].defined() && xs[k].shape() == xs[0].shape(), "stack: input ", k, " is ", xs[k].desc(),
             " but input 0 is ", xs[0].desc(), "; all shapes must be equal");
    us.push_back(unsqueeze(xs[k], a));
  }
  return cat(us, a);
}

Tensors split(const Tensor& x, const std::vector<int64_t>& sizes, int64_t axis) {
  check_has_axes(x, "split");
  int64_t a = normalize_axis(axis, x.dim(), "split");
  int64_t total = 0;
  for (auto s : sizes) {
    DF_CHECK(s >= 0, "split: negative size ", s, " for ", x.desc());
    total += s;
  }
  DF_CHECK(total == x.shape()[a], "split: sizes add up to ", total, " but axis ", axis, " of ", x.desc(),
           " has ", x.shape()[a]);
  Attrs at;
  at.i = a;
  at.dims = Shape(sizes.begin(), sizes.end());
  at.dims2 = x.shape();
  return apply(split_op(), {x}, at);
}

Tensors chunk(const Tensor& x, int64_t chunks, int64_t axis) {
  check_has_axes(x, "chunk");
  DF_CHECK(chunks >= 1, "chunk: chunks must be >= 1, got ", chunks, " for ", x.desc());
  int64_t a = normalize_axis(axis, x.dim(), "chunk");
  int64_t n = x.shape()[a];
  if (n == 0) return {x};
  // Like torch.chunk: equal pieces of ceil(n / chunks), the last smaller, possibly fewer pieces.
  int64_t c = (n + chunks - 1) / chunks;
  std::vector<int64_t> sizes;
  for (int64_t s = 0; s < n; s += c) sizes.push_back(std::min(c, n - s));
  return split(x, sizes, a);
}

Tensor pad(const Tensor& x, const std::vector<int64_t>& pads, double value) {
  int64_t r = x.dim();
  DF_CHECK(pads.size() % 2 == 0 && (int64_t)pads.size() <= 2 * r, "pad: ", pads.size(),
           " pad values for ", x.desc(), "; expected (before, after) pairs for at most ", r, " trailing axes");
  Shape before(r, 0), after(r, 0);
  for (size_t j = 0; j < pads.size() / 2; ++j) {
    before[r - 1 - j] = pads[2 * j];
    after[r - 1 - j] = pads[2 * j + 1];
  }
  // Negative pads crop first (a slice), then only non-negative padding remains.
  Tensor y = x;
  bool any = false;
  for (int64_t d = 0; d < r; ++d) {
    if (before[d] < 0 || after[d] < 0) {
      int64_t lo = std::max<int64_t>(0, -before[d]), hi = x.shape()[d] - std::max<int64_t>(0, -after[d]);
      DF_CHECK(lo <= hi, "pad: pads (", before[d], ", ", after[d], ") crop more than axis ", d, " of ", x.desc(),
               " holds");
      y = slice(y, d, lo, hi);
      before[d] = std::max<int64_t>(before[d], 0);
      after[d] = std::max<int64_t>(after[d], 0);
    }
    any |= before[d] > 0 || after[d] > 0;
  }
  if (!any) return y;
  Attrs at;
  at.dims = before;
  at.dims2 = after;
  at.a = value;
  return apply1(pad_op(), {y}, at);
}

Tensor flip(const Tensor& x, const Shape& axes) {
  // As with the reductions, empty axes means all axes.
  DF_CHECK(x.dim() > 0 || axes.empty(), "flip: axes ", shape_str(axes), " given for ", x.desc());
  Attrs at;
  at.dims = normalize_axes(axes, x.dim(), "flip");
  if (at.dims.empty()) return x;
  return apply1(flip_op(), {x}, at);
}

}  // namespace df
