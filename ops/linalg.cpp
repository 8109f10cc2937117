// matmul (NumPy semantics, broadcast batch) and linear (one GEMM with the bias folded in), on OpenBLAS
// for CPU and through LinalgCudaHooks for CUDA. Both are bilinear, so their rules are matmul/linear
// again and compose to any order.
#include <cblas.h>

#include <algorithm>

#include "ops/autocast.h"
#include "ops/cpu_kernels.h"
#include "ops/elementwise_kernels.h"
#include "ops/linalg_kernels.h"
#include "ops/rules.h"

namespace df {

LinalgCudaHooks& linalg_cuda_hooks() {
  static LinalgCudaHooks h;
  return h;
}

namespace {

// How a rows x cols matrix with strides (s_row, s_col) reaches BLAS without a copy: as a row-major
// matrix (ld = row stride) or as the transpose of one (ld = column stride). Size-1 dims have
// meaningless strides, so they never force a copy.
struct BlasMat {
  bool ok = false, trans = false;
  int64_t ld = 1;
};

BlasMat blas_layout(int64_t rows, int64_t cols, int64_t s_row, int64_t s_col) {
  BlasMat r;
  if ((cols <= 1 || s_col == 1) && (rows <= 1 || s_row >= std::max<int64_t>(cols, 1))) {
    r.ok = true;
    r.ld = rows <= 1 ? std::max<int64_t>(cols, 1) : s_row;
  } else if ((rows <= 1 || s_row == 1) && (cols <= 1 || s_col >= std::max<int64_t>(rows, 1))) {
    r.ok = true;
    r.trans = true;
    r.ld = cols <= 1 ? std::max<int64_t>(rows, 1) : s_col;
  }
  return r;
}

// One GEMM operand: the tensor whose data() is the first matrix, its BLAS layout, and the element
// offset of each batch problem.
struct Operand {
  Tensor t;
  BlasMat lay;
  std::vector<int64_t> offs;
};

void cpu_gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, double alpha, const float* a, int64_t lda,
              const float* b, int64_t ldb, double beta, float* c, int64_t ldc) {
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, (int)m, (int)n, (int)k,
              (float)alpha, a, (int)lda, b, (int)ldb, (float)beta, c, (int)ldc);
}

void cpu_gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, double alpha, const double* a, int64_t lda,
              const double* b, int64_t ldb, double beta, double* c, int64_t ldc) {
  cblas_dgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, (int)m, (int)n, (int)k,
              alpha, a, (int)lda, b, (int)ldb, beta, c, (int)ldc);
}

bool uniform_step(const std::vector<int64_t>& offs) {
  for (size_t j = 2; j < offs.size(); ++j)
    if (offs[j] - offs[j - 1] != offs[1] - offs[0]) return false;
  return true;
}

Tensor shifted(const Tensor& t, int64_t off) { return make_view(t, {1}, {1}, t.offset() + off); }

// C[j] = A[j] B[j] (+ beta C[j]) for every batch problem j; C is row-major with row stride ldc.
void gemm_batched(int64_t m, int64_t n, int64_t k, const Operand& A, const Operand& B, double beta, Tensor& C,
                  int64_t ldc, const std::vector<int64_t>& offs_c) {
  size_t nb = offs_c.size();
  if (C.device() == Device::CUDA) {
    auto gemm = linalg_cuda_hooks().gemm;
    DF_CHECK(gemm, "matmul: CUDA tensor but no CUDA GEMM backend is registered");
    if (nb == 1 || (uniform_step(A.offs) && uniform_step(B.offs) && uniform_step(offs_c))) {
      auto step = [&](const std::vector<int64_t>& o) { return o.size() > 1 ? o[1] - o[0] : 0; };
      Tensor c0 = shifted(C, offs_c[0]);
      gemm(A.lay.trans, B.lay.trans, m, n, k, 1.0, shifted(A.t, A.offs[0]), A.lay.ld, shifted(B.t, B.offs[0]),
           B.lay.ld, beta, c0, ldc, (int64_t)nb, step(A.offs), step(B.offs), step(offs_c));
    } else {
      for (size_t j = 0; j < nb; ++j) {
        Tensor cj = shifted(C, offs_c[j]);
        gemm(A.lay.trans, B.lay.trans, m, n, k, 1.0, shifted(A.t, A.offs[j]), A.lay.ld, shifted(B.t, B.offs[j]),
             B.lay.ld, beta, cj, ldc, 1, 0, 0, 0);
      }
    }
    return;
  }
  DF_DISPATCH_FLOAT(C.dtype(), "matmul", {
    const scalar_t* a = A.t.data_as<scalar_t>();
    const scalar_t* b = B.t.data_as<scalar_t>();
    scalar_t* c = C.data_as<scalar_t>();
    // OpenBLAS threads each GEMM itself; the batch loop stays serial so the two do not fight.
    for (size_t j = 0; j < nb; ++j)
      cpu_gemm(A.lay.trans, B.lay.trans, m, n, k, 1.0, a + A.offs[j], A.lay.ld, b + B.offs[j], B.lay.ld, beta,
               c + offs_c[j], ldc);
  });
}

// Strides of t's batch dims (all but the last two) seen at the broadcast batch shape bs.
Shape batch_strides(const Tensor& t, const Shape& bs) {
  int64_t nb = t.dim() - 2, lead = (int64_t)bs.size() - nb;
  Shape st(bs.size(), 0);
  for (int64_t i = 0; i < nb; ++i)
    if (t.shape()[i] != 1) st[lead + i] = t.strides()[i];
  return st;
}

std::vector<int64_t> batch_offsets(const Shape& bs, const Shape& st) {
  int64_t nb = shape_numel(bs), rank = (int64_t)bs.size();
  std::vector<int64_t> offs(nb);
  std::vector<int64_t> idx(rank, 0);
  int64_t off = 0;
  for (int64_t j = 0; j < nb; ++j) {
    offs[j] = off;
    for (int64_t d = rank - 1; d >= 0; --d) {
      ++idx[d];
      off += st[d];
      if (idx[d] < bs[d]) break;
      off -= st[d] * bs[d];
      idx[d] = 0;
    }
  }
  return offs;
}

// A matrix operand (last two dims rows x cols) in a BLAS-usable layout, copied only when needed.
Operand matrix_operand(const Tensor& t, int64_t rows, int64_t cols) {
  Operand o;
  int64_t r = t.dim();
  o.t = t;
  o.lay = blas_layout(rows, cols, t.strides()[r - 2], t.strides()[r - 1]);
  if (!o.lay.ok) {
    o.t = copy_kernel(t, t.dtype());
    o.lay = blas_layout(rows, cols, cols, 1);
  }
  return o;
}

Shape batch_shape(const Tensor& t) { return Shape(t.shape().begin(), t.shape().end() - 2); }

void check_pair(const Tensor& a, const Tensor& b, const char* op) {
  DF_CHECK(a.dtype() == b.dtype(), op, ": dtypes differ: ", a.desc(), " and ", b.desc());
  DF_CHECK(a.device() == b.device(), op, ": devices differ: ", a.desc(), " and ", b.desc());
}

}  // namespace

Tensor matmul_kernel(const Tensor& a, const Tensor& b) {
  check_floating(a, "matmul");
  check_floating(b, "matmul");
  int64_t n = a.size(-2), k = a.size(-1), m = b.size(-1);
  Shape bs = broadcast_shapes(batch_shape(a), batch_shape(b), "matmul");
  Shape os = bs;
  os.push_back(n);
  os.push_back(m);
  if (shape_numel(os) == 0 || k == 0) return zeros(os, a.dtype(), a.device());
  Tensor out = empty(os, a.dtype(), a.device());
  Operand A = matrix_operand(a, n, k), B = matrix_operand(b, k, m);
  Shape sa = batch_strides(A.t, bs), sb = batch_strides(B.t, bs);
  bool b_shared = std::all_of(sb.begin(), sb.end(), [](int64_t s) { return s == 0; });
  if (shape_numel(bs) > 1 && b_shared && !A.lay.trans && A.t.is_contiguous() && batch_shape(a) == bs) {
    // The same B for every problem and A's matrices stacked back to back: one tall GEMM.
    A.offs = {0};
    B.offs = {0};
    gemm_batched(shape_numel(bs) * n, m, k, A, B, 0.0, out, m, {0});
    return out;
  }
  A.offs = batch_offsets(bs, sa);
  B.offs = batch_offsets(bs, sb);
  if (out.device() == Device::CUDA && A.offs.size() > 1) {
    // cuBLAS takes one strided batch; an operand whose batch offsets are not evenly spaced (e.g.
    // heads split out of a (B, N, H, D) tensor) is materialised at the full batch shape once,
    // instead of launching one GEMM per matrix.
    auto even = [&](Operand& O, const Tensor& t, int64_t rows, int64_t cols) {
      if (uniform_step(O.offs)) return;
      Shape full = bs, st = batch_strides(O.t, bs);
      full.push_back(rows);
      full.push_back(cols);
      st.push_back(O.t.strides()[O.t.dim() - 2]);
      st.push_back(O.t.strides()[O.t.dim() - 1]);
      O.t = copy_kernel(make_view(O.t, full, st, O.t.offset()), t.dtype());
      O.lay = blas_layout(rows, cols, cols, 1);
      O.offs = batch_offsets(bs, batch_strides(O.t, bs));
    };
    even(A, a, n, k);
    even(B, b, k, m);
  }
  std::vector<int64_t> offs_c(A.offs.size());
  for (size_t j = 0; j < offs_c.size(); ++j) offs_c[j] = (int64_t)j * n * m;
  gemm_batched(n, m, k, A, B, 0.0, out, m, offs_c);
  return out;
}

Tensor linear_kernel(const Tensor& x, const Tensor& w, const Tensor& bias) {
  for (const Tensor* t : {&x, &w, &bias}) check_floating(*t, "linear");
  int64_t in = w.size(1), nout = w.size(0);
  Shape lead(x.shape().begin(), x.shape().end() - 1);
  int64_t M = shape_numel(lead);
  Shape os = lead;
  os.push_back(nout);
  Tensor y;
  double beta = 0;
  if (bias.defined() && M * nout > 0) {
    // The bias is written into C first and the GEMM accumulates onto it (beta = 1): one pass over C.
    beta = 1;
    int64_t bst = bias.strides()[0];
    if (x.device() == Device::CUDA) {
      y = copy_kernel(make_view(bias, {M, nout}, {0, bst}, bias.offset()), bias.dtype());
    } else {
      y = empty({M, nout}, x.dtype(), Device::CPU);
      DF_DISPATCH_FLOAT(x.dtype(), "linear", {
        const scalar_t* bp = bias.data_as<scalar_t>();
        scalar_t* yp = y.data_as<scalar_t>();
        for (int64_t r = 0; r < M; ++r)
          for (int64_t j = 0; j < nout; ++j) yp[r * nout + j] = bp[j * bst];
      });
    }
  } else if (in == 0) {
    y = zeros({M, nout}, x.dtype(), x.device());
  } else {
    y = empty({M, nout}, x.dtype(), x.device());
  }
  if (M * nout > 0 && in > 0) {
    Operand X;
    if (x.dim() <= 2) {
      X = matrix_operand(x.dim() == 1 ? make_view(x, {1, in}, {0, x.strides()[0]}, x.offset()) : x, M, in);
    } else {
      X.t = x.is_contiguous() ? x : copy_kernel(x, x.dtype());
      X.lay = blas_layout(M, in, in, 1);
    }
    Operand W = matrix_operand(w, nout, in);
    W.lay.trans = !W.lay.trans;  // B = w^T
    X.offs = W.offs = {0};
    gemm_batched(M, nout, in, X, W, beta, y, nout, {0});
  }
  return make_view(y, os, contiguous_strides(os), y.offset());
}

namespace {

// The core matmul on operands of rank >= 2 (the public function handles 1-D promotion).
Tensor matmul_nd(const Tensor& a, const Tensor& b);

Tensor mT(const Tensor& t) { return transpose(t, t.dim() - 2, t.dim() - 1); }

const OpDef& matmul_op() {
  static OpDef op{"matmul",
                  [](const Tensors& in, const Attrs&) { return Tensors{matmul_kernel(in[0], in[1])}; },
                  [](const RuleCtx& c, const Tensors& t) {
                    Tensor y;
                    if (t[0].defined()) y = matmul_nd(t[0], c.in[1]);
                    if (t[1].defined()) {
                      Tensor z = matmul_nd(c.in[0], t[1]);
                      y = y.defined() ? add(y, z) : z;
                    }
                    return Tensors{y};
                  },
                  [](const RuleCtx& c, const Tensors& g, const std::vector<bool>& needs) {
                    const Tensor &a = c.in[0], &b = c.in[1];
                    return Tensors{needs[0] ? sum_to(matmul_nd(g[0], mT(b)), a.shape()) : Tensor(),
                                   needs[1] ? sum_to(matmul_nd(mT(a), g[0]), b.shape()) : Tensor()};
                  },
                  true, false};
  return op;
}

Tensor matmul_nd(const Tensor& a, const Tensor& b) { return apply1(matmul_op(), {a, b}); }

// inputs (x, w, b); b may be undefined.
const OpDef& linear_op() {
  static OpDef op{"linear",
                  [](const Tensors& in, const Attrs&) { return Tensors{linear_kernel(in[0], in[1], in[2])}; },
                  [](const RuleCtx& c, const Tensors& t) {
                    // The bias tangent rides along in one of the GEMMs instead of a separate add.
                    Tensor y, tb = t[2];
                    if (t[0].defined()) {
                      y = linear(t[0], c.in[1], tb);
                      tb = Tensor();
                    }
                    if (t[1].defined()) {
                      Tensor z = linear(c.in[0], t[1], tb);
                      tb = Tensor();
                      y = y.defined() ? add(y, z) : z;
                    }
                    if (tb.defined()) y = broadcast_to(tb, c.out[0].shape());
                    return Tensors{y};
                  },
                  [](const RuleCtx& c, const Tensors& g, const std::vector<bool>& needs) {
                    const Tensor &x = c.in[0], &w = c.in[1];
                    const Tensor& gy = g[0];
                    int64_t in = w.size(1), nout = w.size(0);
                    Tensors r(3);
                    if (needs[0]) r[0] = linear(gy, transpose(w, 0, 1));  // g @ w, w^T as a view
                    if (needs[1]) r[1] = matmul_nd(transpose(reshape(gy, {-1, nout}), 0, 1), reshape(x, {-1, in}));
                    if (needs[2] && c.in[2].defined()) {
                      Shape lead;
                      for (int64_t i = 0; i + 1 < gy.dim(); ++i) lead.push_back(i);
                      r[2] = lead.empty() ? gy : sum(gy, lead);
                    }
                    return r;
                  },
                  true, false};
  return op;
}

}  // namespace

Tensor matmul(const Tensor& a_in, const Tensor& b_in) {
  DF_CHECK(a_in.defined() && b_in.defined(), "matmul: an operand is undefined");
  const Tensor a = autocast_compute(a_in, "matmul"), b = autocast_compute(b_in, "matmul");
  DF_CHECK(a.dim() >= 1 && b.dim() >= 1, "matmul: operands must be at least 1-D, got ", a.desc(), " and ",
           b.desc());
  check_pair(a, b, "matmul");
  int64_t k_a = a.size(-1), k_b = b.dim() == 1 ? b.size(0) : b.size(-2);
  DF_CHECK(k_a == k_b, "matmul: inner dims differ: ", a.desc(), " @ ", b.desc(), " (", k_a, " vs ", k_b, ")");
  if (a.dim() > 2 || b.dim() > 2) {
    Shape ba = a.dim() > 2 ? Shape(a.shape().begin(), a.shape().end() - 2) : Shape{};
    Shape bb = b.dim() > 2 ? Shape(b.shape().begin(), b.shape().end() - 2) : Shape{};
    size_t r = std::max(ba.size(), bb.size());
    for (size_t i = 0; i < r; ++i) {
      int64_t x = i + ba.size() >= r ? ba[i + ba.size() - r] : 1, y = i + bb.size() >= r ? bb[i + bb.size() - r] : 1;
      DF_CHECK(x == y || x == 1 || y == 1, "matmul: batch dims do not broadcast: ", a.desc(), " @ ", b.desc());
    }
  }
  Tensor a2 = a.dim() == 1 ? unsqueeze(a, 0) : a;
  Tensor b2 = b.dim() == 1 ? unsqueeze(b, 1) : b;
  Tensor y = matmul_nd(a2, b2);
  if (b.dim() == 1) y = squeeze(y, -1);
  if (a.dim() == 1) y = squeeze(y, a.dim() == 1 && b.dim() == 1 ? -1 : -2);
  return y;
}

Tensor linear(const Tensor& x_in, const Tensor& w_in, const Tensor& b_in) {
  DF_CHECK(x_in.defined() && w_in.defined(), "linear: input or weight is undefined");
  const Tensor x = autocast_compute(x_in, "linear"), w = autocast_compute(w_in, "linear");
  const Tensor b = autocast_compute(b_in, "linear");
  DF_CHECK(w.dim() == 2, "linear: weight must be 2-D (out, in), got ", w.desc());
  DF_CHECK(x.dim() >= 1 && x.size(-1) == w.size(1), "linear: input ", x.desc(), " does not end in the weight's in ",
           "features ", w.size(1), " (weight ", w.desc(), ")");
  check_pair(x, w, "linear");
  if (b.defined()) {
    DF_CHECK(b.dim() == 1 && b.size(0) == w.size(0), "linear: bias must be (", w.size(0), "), got ", b.desc());
    check_pair(x, b, "linear");
  }
  return apply1(linear_op(), {x, w, b});
}

}  // namespace df
