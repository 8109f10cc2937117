// The public op API. Every function here goes through apply() and is differentiable in both
// modes, to any order. Dimension letters: B batch, H heads, N tokens, D head dim; images N, C, H, W.
#pragma once
#include <initializer_list>
#include <utility>
#include <vector>

#include "core/autograd.h"
#include "core/tensor.h"

namespace df {

// ---- elementwise, unary (ops/unary.cpp) ----
Tensor neg(const Tensor& x);
Tensor exp(const Tensor& x);
Tensor expm1(const Tensor& x);           // exp(x) - 1, accurate near 0
Tensor log(const Tensor& x);
Tensor log1p(const Tensor& x);           // log(1 + x), accurate near 0
Tensor erf(const Tensor& x);
Tensor sin(const Tensor& x);
Tensor cos(const Tensor& x);
Tensor tan(const Tensor& x);
Tensor atan(const Tensor& x);
Tensor tanh(const Tensor& x);
Tensor sigmoid(const Tensor& x);
Tensor relu(const Tensor& x);             // NaN in, NaN out (as PyTorch)
Tensor leaky_relu(const Tensor& x, double slope = 0.01);
Tensor elu(const Tensor& x, double alpha = 1);
Tensor silu(const Tensor& x);
Tensor silu_grad(const Tensor& x);       // d silu / dx, fused (differentiable again)
// GELU: the tanh approximation by default (the models' choice; PyTorch's default is the exact
// form), GeluApprox::None for the exact x Phi(x) through erf.
enum class GeluApprox { Tanh, None };
Tensor gelu(const Tensor& x);
Tensor gelu(const Tensor& x, GeluApprox approx);
Tensor softplus(const Tensor& x);
Tensor sqrt(const Tensor& x);
Tensor rsqrt(const Tensor& x);
Tensor square(const Tensor& x);
Tensor abs(const Tensor& x);
Tensor sign(const Tensor& x);            // derivative zero
Tensor clamp(const Tensor& x, double lo, double hi);
// Tensor bounds (broadcasting; an undefined bound is no bound): the derivative goes to x inside
// [lo, hi], to the bound it is clamped to outside (to hi when lo > hi).
Tensor clamp(const Tensor& x, const Tensor& lo, const Tensor& hi);
Tensor pow(const Tensor& x, double exponent);
Tensor add(const Tensor& x, double s);
Tensor sub(const Tensor& x, double s);    // x - s
Tensor mul(const Tensor& x, double s);
Tensor rsub(double s, const Tensor& x);  // s - x

// ---- elementwise, binary with broadcasting (ops/binary.cpp) ----
Tensor add(const Tensor& a, const Tensor& b);
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor div(const Tensor& a, const Tensor& b);
Tensor pow(const Tensor& a, const Tensor& b);   // a > 0 where b's derivative is needed
Tensor maximum(const Tensor& a, const Tensor& b);
Tensor minimum(const Tensor& a, const Tensor& b);
Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b);  // cond != 0 picks a
// Comparisons give 0/1 of the input dtype and carry no derivative.
Tensor gt(const Tensor& a, const Tensor& b);
Tensor lt(const Tensor& a, const Tensor& b);
Tensor ge(const Tensor& a, const Tensor& b);
Tensor isfinite(const Tensor& x);

// ---- reductions (ops/reduce.cpp); empty axes = all axes; negative axes count from the end ----
Tensor sum(const Tensor& x, const Shape& axes = {}, bool keepdim = false);
Tensor mean(const Tensor& x, const Shape& axes = {}, bool keepdim = false);
// max/min: a NaN in the reduced set gives NaN; ties share the derivative equally (like amax/amin).
Tensor max(const Tensor& x, const Shape& axes = {}, bool keepdim = false);
Tensor min(const Tensor& x, const Shape& axes = {}, bool keepdim = false);
// p-norm (sum |x|^p)^(1/p) for p >= 1, or max |x| for p = INFINITY; the derivative is 0 where the
// norm is 0 (PyTorch's choice).
Tensor norm(const Tensor& x, double p = 2, const Shape& axes = {}, bool keepdim = false);
Tensor logsumexp(const Tensor& x, const Shape& axes = {}, bool keepdim = false);
Tensor var(const Tensor& x, const Shape& axes = {}, bool keepdim = false, int64_t correction = 0);
// Sum a broadcast result back to `shape` (the adjoint of broadcast_to).
Tensor sum_to(const Tensor& x, const Shape& shape);

// ---- shape and indexing (ops/shape.cpp) ----
Tensor reshape(const Tensor& x, const Shape& shape);   // one -1 allowed; copies if it must
Tensor view(const Tensor& x, const Shape& shape);      // never copies; errors if impossible
Tensor flatten(const Tensor& x, int64_t start = 0, int64_t end = -1);
Tensor unsqueeze(const Tensor& x, int64_t axis);
Tensor squeeze(const Tensor& x, int64_t axis);
Tensor permute(const Tensor& x, const Shape& perm);
Tensor transpose(const Tensor& x, int64_t a, int64_t b);
Tensor broadcast_to(const Tensor& x, const Shape& shape);
inline Tensor expand(const Tensor& x, const Shape& shape) { return broadcast_to(x, shape); }
Tensor slice(const Tensor& x, int64_t axis, int64_t start, int64_t end, int64_t step = 1);
Tensor narrow(const Tensor& x, int64_t axis, int64_t start, int64_t length);
Tensor index_select(const Tensor& x, int64_t axis, const std::vector<int64_t>& index);
inline Tensor index_select(const Tensor& x, int64_t axis, std::initializer_list<int64_t> index) {
  return index_select(x, axis, std::vector<int64_t>(index));
}
// Tensor indices (i64, on x's device; ops/gather.cpp). Indices must lie in [0, size) along the axis:
// anything else, negative included, is an error naming the op, the value and the bound (on CUDA the
// check reads one flag back, a device synchronisation).
Tensor index_select(const Tensor& x, int64_t axis, const Tensor& index);   // index 1-D (or 0-D)
// out[p] = x[p with p[axis] = index[p]], out shaped like index (x's rank, no larger off the axis).
Tensor gather(const Tensor& x, int64_t axis, const Tensor& index);
// x plus src[p] added at p with p[axis] = index[p], p over index's shape (index no larger than src,
// nor than x off the axis); repeated indices accumulate. Differentiable in x and src.
Tensor scatter_add(const Tensor& x, int64_t axis, const Tensor& index, const Tensor& src);
Tensor cat(const Tensors& xs, int64_t axis);
Tensor stack(const Tensors& xs, int64_t axis);
Tensors split(const Tensor& x, const std::vector<int64_t>& sizes, int64_t axis);
Tensors chunk(const Tensor& x, int64_t chunks, int64_t axis);
// pads: (before, after) per trailing axis, last axis first, like PyTorch's F.pad.
Tensor pad(const Tensor& x, const std::vector<int64_t>& pads, double value = 0);
Tensor flip(const Tensor& x, const Shape& axes);
Tensor copy(const Tensor& x);                       // a contiguous copy
// Differentiable dtype change between float dtypes; to and from i64 it carries no derivative, and
// float -> i64 truncates toward zero (NaN and out-of-range values give INT64_MIN).
Tensor cast(const Tensor& x, DType dtype);
Tensor to_device(const Tensor& x, Device device);   // differentiable device change

// ---- linear algebra (ops/linalg.cpp) ----
// (..., n, k) @ (..., k, m) with broadcast batch dims; 1-D operands as in NumPy.
Tensor matmul(const Tensor& a, const Tensor& b);
// x (..., in) @ w^T (out, in) + b (out); b may be undefined.
Tensor linear(const Tensor& x, const Tensor& w, const Tensor& b = Tensor());

// ---- normalisation and activations over an axis (ops/nn.cpp) ----
Tensor softmax(const Tensor& x, int64_t axis = -1);
Tensor log_softmax(const Tensor& x, int64_t axis = -1);
// Normalise over the trailing dims of normalized_shape's size; weight/bias may be undefined.
Tensor layer_norm(const Tensor& x, int64_t normalized_dims, const Tensor& weight = Tensor(),
                  const Tensor& bias = Tensor(), double eps = 1e-5);
Tensor rms_norm(const Tensor& x, int64_t normalized_dims, const Tensor& weight = Tensor(),
                double eps = 1e-6);

// ---- losses (ops/loss.cpp) ----
// Mean (the default) and Sum reduce the per-element (mse) or per-sample values to a scalar; None
// returns them.
enum class Reduction { None, Mean, Sum };
Tensor mse_loss(const Tensor& pred, const Tensor& target, Reduction reduction = Reduction::Mean);
// sqrt(||d||^2 + c^2) - c per sample (B) over all non-batch dims.
Tensor pseudo_huber_loss(const Tensor& pred, const Tensor& target, double c,
                         Reduction reduction = Reduction::Mean);
// logits (B, K); labels as class indices (a list, or an i64 (B) tensor on the logits' device);
// -log softmax(logits)[b, label_b] per sample (B).
Tensor cross_entropy(const Tensor& logits, const std::vector<int64_t>& labels,
                     Reduction reduction = Reduction::Mean);
Tensor cross_entropy(const Tensor& logits, const Tensor& labels, Reduction reduction = Reduction::Mean);
inline Tensor cross_entropy(const Tensor& logits, std::initializer_list<int64_t> labels,
                            Reduction reduction = Reduction::Mean) {
  return cross_entropy(logits, std::vector<int64_t>(labels), reduction);
}

// ---- images and sequences (ops/conv.cpp, ops/image.cpp, ops/attention.cpp) ----
// x (N, C, H, W), w (O, C/groups, kh, kw), b (O) or undefined.
Tensor conv2d(const Tensor& x, const Tensor& w, const Tensor& b = Tensor(), int64_t stride = 1,
              int64_t padding = 0, int64_t groups = 1);
// x (N, C, ...) normalised over each group of C/groups channels and all spatial positions.
Tensor group_norm(const Tensor& x, int64_t groups, const Tensor& weight = Tensor(),
                  const Tensor& bias = Tensor(), double eps = 1e-5);
Tensor upsample_nearest2d(const Tensor& x, int64_t factor);        // (N, C, H, W) -> (N, C, fH, fW)
Tensor avg_pool2d(const Tensor& x, int64_t kernel, int64_t stride = -1);  // stride -1 = kernel
// Inverted dropout. The mask depends only on (seed, offset), so a JVP pass and a gradient pass that
// use the same (seed, offset) drop the same units. training = false returns x.
Tensor dropout(const Tensor& x, double p, uint64_t seed, uint64_t offset = 0, bool training = true);
Tensor embedding(const Tensor& weight, const std::vector<int64_t>& ids);  // (V, D) -> (len(ids), D)
inline Tensor embedding(const Tensor& weight, std::initializer_list<int64_t> ids) {
  return embedding(weight, std::vector<int64_t>(ids));
}
Tensor embedding(const Tensor& weight, const Tensor& ids);  // i64 ids of any shape -> ids.shape + (D)
// Max over kernel x kernel windows of x (N, C, H, W), stride -1 = kernel, padding reads -inf
// (padding <= kernel / 2). The derivative goes to the first maximum of each window in row-major
// order (as PyTorch); a NaN in a window is its maximum.
Tensor max_pool2d(const Tensor& x, int64_t kernel, int64_t stride = -1, int64_t padding = 0);
// x / sqrt(mean(x^2 over axis) + eps) (EDM2 / sCM pixel norm).
Tensor pixel_norm(const Tensor& x, int64_t axis = 1, double eps = 1e-8);
// softmax(q k^T * scale) v with q (B, H, N, D), k (B, H, M, D), v (B, H, M, Dv); scale <= 0 means
// 1/sqrt(D). `attention` is the op models call (fused on CUDA when available); the composite
// reference (matmul, softmax, matmul) is its oracle.
Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, double scale = -1);
Tensor attention_reference(const Tensor& q, const Tensor& k, const Tensor& v, double scale = -1);

// ---- operators ----
inline Tensor operator-(const Tensor& x) { return neg(x); }
inline Tensor operator+(const Tensor& a, const Tensor& b) { return add(a, b); }
inline Tensor operator-(const Tensor& a, const Tensor& b) { return sub(a, b); }
inline Tensor operator*(const Tensor& a, const Tensor& b) { return mul(a, b); }
inline Tensor operator/(const Tensor& a, const Tensor& b) { return div(a, b); }
inline Tensor operator+(const Tensor& a, double s) { return add(a, s); }
inline Tensor operator+(double s, const Tensor& a) { return add(a, s); }
inline Tensor operator-(const Tensor& a, double s) { return sub(a, s); }
inline Tensor operator-(double s, const Tensor& a) { return rsub(s, a); }
inline Tensor operator*(const Tensor& a, double s) { return mul(a, s); }
inline Tensor operator*(double s, const Tensor& a) { return mul(a, s); }
inline Tensor operator/(const Tensor& a, double s) { return mul(a, 1.0 / s); }
Tensor operator/(double s, const Tensor& a);

}  // namespace df
