// Fused attention: each CUDA kernel (forward + lse, one-pass JVP, backward; bf16 tensor-core (mma.sync
// and, on sm_90, wgmma) and SIMT variants, f32) against an f64 loop over odd sizes, the JVP against finite differences of the fused
// forward, and the engine wiring (grad, jvp, reverse-over-forward, double backward, forward-over-reverse)
// against the CPU composite in f64. Without a GPU the CUDA cases print a visible skip message.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <sstream>

#include "ops/fused_attention.h"
#include "ops/ops.h"
#include "tests/checker.h"
#include "tests/test_util.h"
#ifdef DF_WITH_CUDA
#include "cuda/attention.h"
#include "cuda/cuda.h"
#endif

using namespace df;
using df::test::have_cuda;

namespace {

using Vec = std::vector<double>;

struct Problem {
  int64_t B, H, N, M, D;
  double scale;
};

// Everything the kernels produce, from one f64 pass: forward, JVP along (tq, tk, tv) and the
// cotangents of (o, lse) for cotangents (go, glse).
struct Ref {
  Vec o, lse, to, tlse, dq, dk, dv;
};

Ref reference(const Problem& p, const Vec& q, const Vec& k, const Vec& v, const Vec& tq, const Vec& tk, const Vec& tv,
              const Vec& go, const Vec& glse) {
  const int64_t N = p.N, M = p.M, D = p.D;
  Ref r;
  r.o.assign(p.B * p.H * N * D, 0);
  r.to = r.dq = r.o;
  r.dk.assign(p.B * p.H * M * D, 0);
  r.dv = r.dk;
  r.lse.assign(p.B * p.H * N, 0);
  r.tlse = r.lse;
  Vec S(M), P(M), tS(M);
  for (int64_t bh = 0; bh < p.B * p.H; ++bh) {
    const int64_t qb = bh * N * D, kb = bh * M * D;
    for (int64_t i = 0; i < N; ++i) {
      const double* qi = &q[qb + i * D];
      const double* tqi = &tq[qb + i * D];
      double m = -INFINITY;
      for (int64_t j = 0; j < M; ++j) {
        double s = 0, ts = 0;
        for (int64_t d = 0; d < D; ++d) {
          s += qi[d] * k[kb + j * D + d];
          ts += tqi[d] * k[kb + j * D + d] + qi[d] * tk[kb + j * D + d];
        }
        S[j] = s * p.scale;
        tS[j] = ts * p.scale;
        m = std::max(m, S[j]);
      }
      double l = 0;
      for (int64_t j = 0; j < M; ++j) l += (P[j] = std::exp(S[j] - m));
      double tl = 0;
      for (int64_t j = 0; j < M; ++j) {
        P[j] /= l;
        tl += P[j] * tS[j];
      }
      const int64_t row = bh * N + i;
      r.lse[row] = m + std::log(l);
      r.tlse[row] = tl;
      double* oi = &r.o[qb + i * D];
      double* toi = &r.to[qb + i * D];
      for (int64_t j = 0; j < M; ++j)
        for (int64_t d = 0; d < D; ++d) {
          oi[d] += P[j] * v[kb + j * D + d];
          toi[d] += P[j] * (tS[j] - tl) * v[kb + j * D + d] + P[j] * tv[kb + j * D + d];
        }
      const double* gi = &go[qb + i * D];
      double delta = 0;
      for (int64_t d = 0; d < D; ++d) delta += gi[d] * oi[d];
      for (int64_t j = 0; j < M; ++j) {
        double dp = 0;
        for (int64_t d = 0; d < D; ++d) dp += gi[d] * v[kb + j * D + d];
        const double ds = P[j] * (dp - delta + glse[row]);
        for (int64_t d = 0; d < D; ++d) {
          r.dv[kb + j * D + d] += P[j] * gi[d];
          r.dq[qb + i * D + d] += p.scale * ds * k[kb + j * D + d];
          r.dk[kb + j * D + d] += p.scale * ds * qi[d];
        }
      }
    }
  }
  return r;
}

// ||got - want|| / ||want|| and max |got - want| / max |want|; a NaN anywhere makes both infinite.
// `size`, when given, is a second vector of the same problem whose norms floor the denominators:
// a reference that is exactly zero (dq and dk without an lse cotangent when M = 1: P = 1 and
// dS = dP - rowsum(dO * O) = 0) is then judged against the size of that problem's gradients
// instead of dividing rounding noise by zero.
struct Err {
  double l2 = 0, max = 0;
};
Err error_of(const Vec& got, const Vec& want, const Vec* size = nullptr) {
  double num = 0, den = 0, mx = 0, wmax = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    if (!std::isfinite(got[i])) return {INFINITY, INFINITY};
    const double e = got[i] - want[i];
    num += e * e;
    den += want[i] * want[i];
    mx = std::max(mx, std::fabs(e));
    wmax = std::max(wmax, std::fabs(want[i]));
  }
  if (size) {
    double sden = 0, smax = 0;
    for (double x : *size) {
      sden += x * x;
      smax = std::max(smax, std::fabs(x));
    }
    den = std::max(den, sden);
    wmax = std::max(wmax, smax);
  }
  return {std::sqrt(num / std::max(den, 1e-300)), mx / std::max(wmax, 1e-300)};
}

[[maybe_unused]] std::string verdict(const char* what, const Vec& got, const Vec& want, double tol_l2, double tol_max,
                                     const Vec* size = nullptr) {
  Err e = error_of(got, want, size);
  if (got.size() == want.size() && e.l2 <= tol_l2 && e.max <= tol_max) return "";
  std::ostringstream os;
  os << what << ": rel l2 error " << e.l2 << " (tol " << tol_l2 << "), max error " << e.max << " of max |ref| (tol "
     << tol_max << ")";
  return os.str();
}


// A visible note once per test case when there is no device.
bool skip_without_cuda() {
  if (have_cuda()) return false;
  MESSAGE("skipped: no CUDA device (fused attention kernels not run)");
  return true;
}

}  // namespace

TEST_CASE("attention: the CPU path is the composite and bad shapes name the op") {
  Tensor q = randn({2, 3, 5, 4}, 1, DType::F64), k = randn({2, 3, 7, 4}, 2, DType::F64);
  Tensor v = randn({2, 3, 7, 4}, 3, DType::F64);
  CHECK_FALSE(fused_attention_available(q, k, v));
  Tensor a = fused_attention(q, k, v, 0.3), b = attention_composite(q, k, v, 0.3);
  CHECK(test::mismatch(a.to_vector(), b.to_vector(), 1e-12, 1e-12) <= 1);
  // lse from the composite fallback: logsumexp of the scaled scores.
  Tensors ol = fused_attention_with_lse(q, k, v, 0.3);
  Tensor lse_ref = logsumexp(mul(matmul(q, transpose(k, -2, -1)), 0.3), {-1});
  CHECK(test::mismatch(ol[1].to_vector(), lse_ref.to_vector(), 1e-5, 1e-5) <= 1);
  std::string msg;
  try {
    fused_attention(q, randn({2, 3, 7, 5}, 4, DType::F64), v);
  } catch (const std::exception& e) {
    msg = e.what();
  }
  CHECK(msg.find("attention") != std::string::npos);
  CHECK(msg.find("[2, 3, 7, 5]") != std::string::npos);
}

// In every build: with no device (or no CUDA in the build) this prints the skip message.
TEST_CASE("attention_cuda: fused kernels present or visibly skipped") {
  if (skip_without_cuda()) return;
  Tensor q = randn({1, 2, 3, 64}, 1, DType::BF16, Device::CUDA);
  CHECK(fused_attention_available(q, q, q));
  CHECK_FALSE(fused_attention_available(q.to(DType::F64), q.to(DType::F64), q.to(DType::F64)));
  Tensor q48 = randn({1, 2, 3, 48}, 1, DType::F32, Device::CUDA);
  CHECK_FALSE(fused_attention_available(q48, q48, q48));  // head dim 48: composite path
  CHECK(fused_attention(q48, q48, q48).shape() == Shape{1, 2, 3, 48});
}

#ifdef DF_WITH_CUDA

namespace {

struct Inputs {
  Tensor q, k, v, tq, tk, tv, go, glse;  // on the device, in the dtype under test
  Vec vq, vk, vv, vtq, vtk, vtv, vgo, vglse;
};

// Random inputs in `dtype` (values read back after rounding, so the reference sees what the kernel
// sees); q is scaled up so rows of P are peaked and the online rescaling matters.
Inputs make_inputs(const Problem& p, DType dtype, uint64_t seed) {
  const Device G = Device::CUDA;
  Shape qs{p.B, p.H, p.N, p.D}, ks{p.B, p.H, p.M, p.D};
  auto gen = [&](const Shape& s, uint64_t off, double mult) {
    return mul(randn(s, seed, DType::F32, G, off), mult).to(dtype);
  };
  Inputs in;
  in.q = gen(qs, 0, 2.5);
  in.k = gen(ks, 1 << 24, 1.0);
  in.v = gen(ks, 2 << 24, 1.0);
  in.tq = gen(qs, 3 << 24, 1.0);
  in.tk = gen(ks, 4 << 24, 1.0);
  in.tv = gen(ks, 5 << 24, 1.0);
  in.go = gen(qs, 6 << 24, 1.0);
  in.glse = randn({p.B, p.H, p.N}, seed, DType::F32, G, 7 << 24);
  in.vq = in.q.to_vector();
  in.vk = in.k.to_vector();
  in.vv = in.v.to_vector();
  in.vtq = in.tq.to_vector();
  in.vtk = in.tk.to_vector();
  in.vtv = in.tv.to_vector();
  in.vgo = in.go.to_vector();
  in.vglse = in.glse.to_vector();
  return in;
}

struct PoisonScope {
  PoisonScope() { cuda::set_poison_allocations(true); }
  ~PoisonScope() { cuda::set_poison_allocations(false); }
};

attn::Elem elem(DType t) { return t == DType::BF16 ? attn::Elem::BF16 : attn::Elem::F32; }

// Runs the three launchers and compares with the reference. Returns the failures, one per line.
// ref0: the reference with a zero lse cotangent, for a second backward call with glse = nullptr.
std::string run_kernels(const Problem& p, DType dtype, const Inputs& in, const Ref& ref, const Ref& ref0) {
  const Device G = Device::CUDA;
  const attn::Dims d{p.B, p.H, p.N, p.M, p.D};
  const float s = float(p.scale);
  Shape qs{p.B, p.H, p.N, p.D}, ks{p.B, p.H, p.M, p.D}, rs{p.B, p.H, p.N};
  Tensor o = empty(qs, dtype, G), lse = empty(rs, DType::F32, G);
  attn::forward(elem(dtype), d, s, in.q.data(), in.k.data(), in.v.data(), o.data(), lse.data_as<float>());
  Tensor o2 = empty(qs, dtype, G), to = empty(qs, dtype, G), lse2 = empty(rs, DType::F32, G),
         tlse = empty(rs, DType::F32, G);
  attn::jvp(elem(dtype), d, s, in.q.data(), in.k.data(), in.v.data(), in.tq.data(), in.tk.data(), in.tv.data(),
            o2.data(), to.data(), lse2.data_as<float>(), tlse.data_as<float>());
  Tensor dq = empty(qs, dtype, G), dk = empty(ks, dtype, G), dv = empty(ks, dtype, G);
  Tensor acc = empty(qs, DType::F32, G), delta = empty(rs, DType::F32, G);
  // The backward reads the forward's own o and lse, as in training.
  attn::backward(elem(dtype), d, s, in.q.data(), in.k.data(), in.v.data(), o.data(), lse.data_as<float>(),
                 in.go.data(), in.glse.data_as<float>(), dq.data(), dk.data(), dv.data(), acc.data_as<float>(),
                 delta.data_as<float>());
  // The backward without an lse cotangent (glse = nullptr: delta is rowsum(go * o) alone).
  Tensor dq0 = empty(qs, dtype, G), dk0 = empty(ks, dtype, G), dv0 = empty(ks, dtype, G);
  attn::backward(elem(dtype), d, s, in.q.data(), in.k.data(), in.v.data(), o.data(), lse.data_as<float>(),
                 in.go.data(), nullptr, dq0.data(), dk0.data(), dv0.data(), acc.data_as<float>(),
                 delta.data_as<float>());
  cuda_synchronize();

  const bool bf = dtype == DType::BF16;
  // bf16: P, H and dS enter the tensor cores rounded to 8 bits, and outputs are stored in bf16.
  const double fl2 = bf ? 1.5e-2 : 2e-5, fmax = bf ? 4e-2 : 2e-4;
  const double bl2 = bf ? 2.5e-2 : 5e-5, bmax = bf ? 6e-2 : 5e-4;
  std::string out;
  auto add = [&](const std::string& e) {
    if (!e.empty()) out += e + "\n";
  };
  add(verdict("forward o", o.to_vector(), ref.o, fl2, fmax));
  add(verdict("forward lse", lse.to_vector(), ref.lse, 1e-5, bf ? 1e-4 : 1e-5));
  add(verdict("jvp o", o2.to_vector(), ref.o, fl2, fmax));
  add(verdict("jvp lse", lse2.to_vector(), ref.lse, 1e-5, bf ? 1e-4 : 1e-5));
  add(verdict("jvp to", to.to_vector(), ref.to, bl2, bmax));
  add(verdict("jvp tlse", tlse.to_vector(), ref.tlse, bl2, bmax));
  add(verdict("backward dq", dq.to_vector(), ref.dq, bl2, bmax));
  add(verdict("backward dk", dk.to_vector(), ref.dk, bl2, bmax));
  add(verdict("backward dv", dv.to_vector(), ref.dv, bl2, bmax));
  add(verdict("backward (no glse) dq", dq0.to_vector(), ref0.dq, bl2, bmax, &ref.dq));
  add(verdict("backward (no glse) dk", dk0.to_vector(), ref0.dk, bl2, bmax, &ref.dk));
  add(verdict("backward (no glse) dv", dv0.to_vector(), ref0.dv, bl2, bmax, &ref.dv));
  return out;
}

// The f64 references for the inputs' lse cotangent and for none (the backward's second call).
std::pair<Ref, Ref> references(const Problem& p, const Inputs& in) {
  return {reference(p, in.vq, in.vk, in.vv, in.vtq, in.vtk, in.vtv, in.vgo, in.vglse),
          reference(p, in.vq, in.vk, in.vv, in.vtq, in.vtk, in.vtv, in.vgo, Vec(in.vglse.size(), 0.0))};
}

// A visible note once per test case without a device, or on one that is not sm_90.
bool skip_without_wgmma() {
  if (skip_without_cuda()) return true;
  if (attn::wgmma_available()) return false;
  MESSAGE("skipped: the device is not sm_90 (wgmma kernels not run)");
  return true;
}

// warps: block size of the mma.sync kernels (0: default); for Variant::Wgmma, the config (block
// shape and main loop, attn::set_wgmma_config).
struct VariantScope {
  VariantScope(attn::Variant v, int warps) {
    attn::set_variant(v);
    attn::set_tc_block_warps(v == attn::Variant::Wgmma ? 0 : warps);
    attn::set_wgmma_config(v == attn::Variant::Wgmma ? warps : 0);
  }
  ~VariantScope() {
    attn::set_variant(attn::Variant::Auto);
    attn::set_tc_block_warps(0);
    attn::set_wgmma_config(0);
  }
};

// DF_ATTN_QUICK=1 trims the sweep (for compute-sanitizer runs, which are slow).
bool quick() {
  const char* e = std::getenv("DF_ATTN_QUICK");
  return e && std::atoi(e) != 0;
}
// DF_ATTN_KERNELS=simt,tc,wgmma (any of them) keeps those kernel families in the sweep below (f32
// runs the SIMT kernels): racecheck of all of them at once outlasts a device call.
bool family_wanted(attn::Variant v) {
  const char* e = std::getenv("DF_ATTN_KERNELS");
  if (!e || !*e) return true;
  const char* name = v == attn::Variant::Wgmma ? "wgmma" : v == attn::Variant::TensorCore ? "tc" : "simt";
  return (std::string(",") + e + ",").find(std::string(",") + name + ",") != std::string::npos;
}

}  // namespace

// Every config the sweeps and benches name is the one that runs (an internal limit once sent the
// last two to config 0 without a word).
TEST_CASE("attention_cuda: every wgmma config can be selected") {
  if (skip_without_cuda()) return;
  for (int c = 0; c < attn::kWgmmaConfigs; ++c) {
    attn::set_wgmma_config(c);
    CHECK(attn::wgmma_config() == c);
  }
  attn::set_wgmma_config(attn::kWgmmaConfigs);
  CHECK(attn::wgmma_config() == 0);
  attn::set_wgmma_config(-1);
  CHECK(attn::wgmma_config() == 0);
}

TEST_CASE("attention_cuda: forward, JVP and backward kernels match an f64 loop") {
  if (skip_without_cuda()) return;
  PoisonScope poison;
  std::vector<int64_t> Ds = quick() ? std::vector<int64_t>{32, 128} : std::vector<int64_t>{32, 64, 128};
  std::vector<int64_t> Ns = quick() ? std::vector<int64_t>{17, 129} : std::vector<int64_t>{1, 17, 64, 129, 256};
  struct Case {
    int64_t N, M;
  };
  std::vector<Case> cases;
  for (int64_t n : Ns) cases.push_back({n, n});
  cases.push_back({17, 129});  // cross-attention shapes: more keys than queries, and fewer
  cases.push_back({129, 1});
  cases.push_back({1, 190});                  // one query against several key blocks with a tail
  if (!quick()) cases.push_back({190, 333});  // several query blocks and key tiles, both with tails
  // The wgmma kernels (Hopper only) join the bf16 variants at head dim 64 and 128.
  const bool wgmma = attn::wgmma_available();
  if (!wgmma) MESSAGE("attention: Variant::Wgmma not checked (the device is not sm_90)");
  int checked = 0, checked_wgmma = 0;
  for (int64_t D : Ds)
    for (const Case& c : cases)
      for (DType dt : {DType::F32, DType::BF16}) {
        // Odd sizes get B*H = 6 (several blocks in y), even ones B*H = 2.
        Problem p{c.N % 2 ? 2 : 1, c.N % 2 ? 3 : 2, c.N, c.M, D, 1.0 / std::sqrt(double(D))};
        if (D == 32 && c.N == 64) p.scale = 0.3;  // an explicit scale, not 1/sqrt(D)
        Inputs in = make_inputs(p, dt, uint64_t(7 + D + 1000 * c.N + c.M));
        const auto [ref, ref0] = references(p, in);
        // bf16: tensor cores with 4- and 8-warp blocks, and the SIMT kernels; f32: SIMT.
        std::vector<std::pair<attn::Variant, int>> vs{{attn::Variant::Auto, 0}};
        if (dt == DType::BF16) vs = {{attn::Variant::TensorCore, 4}, {attn::Variant::TensorCore, 8}, {attn::Variant::Simt, 0}};
        if (dt == DType::BF16 && wgmma && D >= 64)
          for (int c = 0; c < attn::kWgmmaConfigs; ++c) vs.push_back({attn::Variant::Wgmma, c});
        for (const auto& vw : vs) {
          const attn::Variant var = vw.first;
          const int warps = vw.second;
          if (!family_wanted(var == attn::Variant::Auto ? attn::Variant::Simt : var)) continue;
          VariantScope scope(var, warps);
          // Variant::Wgmma runs the wgmma backward at head dim 64/128 (and only then).
          const attn::Dims dims{p.B, p.H, p.N, p.M, p.D};
          CHECK(attn::backward_uses_wgmma(elem(dt), dims) == (var == attn::Variant::Wgmma));
          std::string err = run_kernels(p, dt, in, ref, ref0);
          const char* name = var == attn::Variant::Simt ? " simt" : var == attn::Variant::Wgmma ? " wgmma" : "";
          CHECK_MESSAGE(err.empty(), dtype_name(dt), name, " warps/config=", warps, " B=", p.B, " H=", p.H, " N=", p.N,
                        " M=", p.M, " D=", p.D, ":\n", err);
          ++checked;
          checked_wgmma += var == attn::Variant::Wgmma;
        }
      }
  CHECK(checked > 0);
  if (wgmma && family_wanted(attn::Variant::Wgmma)) CHECK(checked_wgmma > 0);
}

// The wgmma backward on the shapes of its blocks' edges (64 or 128 keys per block, query tiles of 64
// or 128): key counts one below, at and one past a block, query counts the same around a tile, at
// head dims 64 and 128 and both block shapes (configs 0 and 1), against the f64 loop.
TEST_CASE("attention_cuda: wgmma backward at block edges") {
  if (skip_without_wgmma()) return;
  PoisonScope poison;
  struct Case {
    int64_t N, M;
  };
  const std::vector<Case> cases = quick() ? std::vector<Case>{{65, 127}, {128, 129}}
                                          : std::vector<Case>{{63, 64}, {64, 65}, {65, 127}, {127, 128},
                                                              {128, 129}, {129, 63}, {2, 257}, {300, 2}};
  int checked = 0;
  for (int64_t D : {64, 128})
    for (const Case& c : cases) {
      Problem p{1, 2, c.N, c.M, D, 1.0 / std::sqrt(double(D))};
      Inputs in = make_inputs(p, DType::BF16, uint64_t(31 + D + 1000 * c.N + c.M));
      const auto [ref, ref0] = references(p, in);
      for (int config : {0, 1}) {
        VariantScope scope(attn::Variant::Wgmma, config);
        REQUIRE(attn::backward_uses_wgmma(attn::Elem::BF16, attn::Dims{p.B, p.H, p.N, p.M, p.D}));
        std::string err = run_kernels(p, DType::BF16, in, ref, ref0);
        CHECK_MESSAGE(err.empty(), "wgmma config=", config, " N=", p.N, " M=", p.M, " D=", p.D, ":\n", err);
        ++checked;
      }
    }
  CHECK(checked > 0);
}

// The wgmma softmax takes a tile's exponentials against the reference m set by the first key tile,
// with no running maximum, and rebases when the row sums say the maximum outgrew m (by a factor
// ~256), or recomputes the tile's scores when an exponential overflowed (a jump of 2^128). Scores
// that climb by ~12 log2 units per 64 keys take the rebase in almost every tile; one key ~150 nats
// above all others takes the overflow path; rows whose largest scores sit in the last (tail) tile
// take either there. Forward, JVP and backward against the f64 loop, every config, both head dims.
TEST_CASE("attention_cuda: wgmma softmax when the row maximum grows across key tiles") {
  if (skip_without_wgmma()) return;
  PoisonScope poison;
  int checked = 0;
  for (int64_t D : {64, 128})
    for (int kind = 0; kind < 4; ++kind) {
      Problem p{1, 2, 70, 333, D, 1.0 / std::sqrt(double(D))};
      Inputs in = make_inputs(p, DType::BF16, uint64_t(500 + 10 * D + kind));
      // q gets a component 1 along the first axis; key j's first component sets its score there.
      // The tangents have none along it: tS stays O(1) (else the tangent output is a difference of
      // terms ~150 times larger, beyond what bf16 H can resolve, in any kernel).
      Vec q = in.vq, k = in.vk, tq = in.vtq, tk = in.vtk;
      for (int64_t r = 0; r < p.B * p.H * p.N; ++r) {
        for (int64_t d = 0; d < D; ++d) q[r * D + d] *= 0.2;
        q[r * D] = 1.0;
        tq[r * D] = 0.0;
      }
      for (int64_t r = 0; r < p.B * p.H * p.M; ++r) tk[r * D] = 0.0;
      const double root = std::sqrt(double(D));
      for (int64_t bh = 0; bh < p.B * p.H; ++bh)
        for (int64_t j = 0; j < p.M; ++j) {
          double lift = 0;  // score added to key j, in nats
          if (kind == 0) lift = 0.13 * double(j);              // climbs ~8.3 nats (12 log2) per 64 keys
          if (kind == 1) lift = j == 200 ? 150.0 : 0.0;         // one key far above the rest
          if (kind == 2) lift = j >= 320 ? 150.0 + double(j - 320) : 0.0;  // the tail tile, overflowing
          if (kind == 3) lift = j >= 320 ? 60.0 + double(j - 320) : 0.0;   // the tail tile, rebased
          k[(bh * p.M + j) * D] = lift * root;
        }
      in.q = from_vector(q, in.q.shape(), DType::F32, Device::CUDA).to(DType::BF16);
      in.k = from_vector(k, in.k.shape(), DType::F32, Device::CUDA).to(DType::BF16);
      in.tq = from_vector(tq, in.tq.shape(), DType::F32, Device::CUDA).to(DType::BF16);
      in.tk = from_vector(tk, in.tk.shape(), DType::F32, Device::CUDA).to(DType::BF16);
      in.vq = in.q.to_vector();
      in.vk = in.k.to_vector();
      in.vtq = in.tq.to_vector();
      in.vtk = in.tk.to_vector();
      const auto [ref, ref0] = references(p, in);
      for (int config = 0; config < attn::kWgmmaConfigs; ++config) {
        VariantScope scope(attn::Variant::Wgmma, config);
        std::string err = run_kernels(p, DType::BF16, in, ref, ref0);
        CHECK_MESSAGE(err.empty(), "wgmma config=", config, " kind=", kind, " D=", D, ":\n", err);
        ++checked;
      }
    }
  CHECK(checked > 0);
}

// The launchers refuse a pointer off a 16-byte boundary and name it; the op copies such views (here
// contiguous narrows at an odd element offset) and so gives, bit for bit, what aligned copies give:
// forward, JVP and gradients, at both wgmma head dims (K and V loaded by TMA; the backward's Q and
// dO too).
TEST_CASE("attention_cuda: tensors off a 16-byte boundary") {
  if (skip_without_cuda()) return;
  for (int64_t D : {64, 128}) {
    const Shape s{1, 2, 70, D};
    const int64_t n = 2 * 70 * D;
    auto odd_view = [&](uint64_t seed) {  // bf16 data starting 2 bytes into an allocation
      Tensor flat = randn({n + 1}, seed, DType::F32, Device::CUDA).to(DType::BF16);
      return reshape(narrow(flat, 0, 1, n), s);
    };
    Tensors x{odd_view(1), odd_view(2), odd_view(3)}, t{odd_view(4), odd_view(5), odd_view(6)};
    REQUIRE(x[1].is_contiguous());
    REQUIRE(reinterpret_cast<uintptr_t>(x[1].data()) % 16 != 0);
    Tensor o = empty(s, DType::BF16, Device::CUDA), lse = empty({1, 2, 70}, DType::F32, Device::CUDA);
    CHECK_THROWS_WITH_AS(attn::forward(attn::Elem::BF16, attn::Dims{1, 2, 70, 70, D}, 0.1f, o.data(), x[1].data(),
                                       x[2].data(), o.data(), lse.data_as<float>()),
                         doctest::Contains("attention forward: k must start on a 16-byte boundary"), Error);

    Tensors xc{copy(x[0]), copy(x[1]), copy(x[2])}, tc{copy(t[0]), copy(t[1]), copy(t[2])};
    auto att = [](const Tensors& a) { return Tensors{fused_attention(a[0], a[1], a[2])}; };
    auto loss = [](const Tensors& a) { return sum(mul(fused_attention(a[0], a[1], a[2]), a[0])); };
    CHECK(att(x)[0].to_vector() == att(xc)[0].to_vector());
    CHECK(jvp(att, x, t, false).second[0].to_vector() == jvp(att, xc, tc, false).second[0].to_vector());
    Tensors g = grad_of(loss, x), gc = grad_of(loss, xc);
    for (int i = 0; i < 3; ++i) CHECK_MESSAGE(g[i].to_vector() == gc[i].to_vector(), "gradient ", i, " D=", D);
  }
}

TEST_CASE("attention_cuda: the JVP kernel agrees with central differences of the fused forward") {
  if (skip_without_cuda()) return;
  NoGrad ng;
  Problem p{1, 2, 70, 70, 64, 0.125};
  Inputs in = make_inputs(p, DType::F32, 99);
  const double eps = 1e-2;
  auto fwd = [&](double sgn) {
    return fused_attention(add(in.q, mul(in.tq, sgn * eps)), add(in.k, mul(in.tk, sgn * eps)),
                           add(in.v, mul(in.tv, sgn * eps)), p.scale)
        .to_vector();
  };
  Vec plus = fwd(1), minus = fwd(-1), fd(plus.size());
  for (size_t i = 0; i < fd.size(); ++i) fd[i] = (plus[i] - minus[i]) / (2 * eps);
  auto [outs, tans] = jvp([&](const Tensors& x) { return Tensors{fused_attention(x[0], x[1], x[2], p.scale)}; },
                          {in.q, in.k, in.v}, {in.tq, in.tk, in.tv}, false);
  std::string err = verdict("jvp vs finite differences", tans[0].to_vector(), fd, 2e-3, 1e-2);
  CHECK_MESSAGE(err.empty(), err);
}

TEST_CASE("attention_cuda: engine wiring matches the CPU composite in f64 to second order") {
  if (skip_without_cuda()) return;
  PoisonScope poison;
  const Problem p{2, 2, 33, 41, 32, 0.2};
  Shape qs{p.B, p.H, p.N, p.D}, ks{p.B, p.H, p.M, p.D};
  Tensors x64{randn(qs, 5, DType::F64), randn(ks, 6, DType::F64), randn(ks, 7, DType::F64)};
  Tensors t64{randn(qs, 8, DType::F64), randn(ks, 9, DType::F64), randn(ks, 10, DType::F64)};
  Tensor w64 = randn(qs, 11, DType::F64), u64 = randn(qs, 12, DType::F64);
  auto dev = [](const Tensors& xs) {
    Tensors r;
    for (auto& x : xs) r.push_back(x.to(DType::F32).to(Device::CUDA));
    return r;
  };
  const double s = p.scale;

  // Each quantity computed the same way on both sides; on the CPU everything is the composite.
  auto quantities = [&](const Tensors& x, const Tensors& t, const Tensor& w, const Tensor& u) {
    std::vector<std::pair<std::string, Vec>> out;
    auto att = [s](const Tensors& a) { return Tensors{fused_attention(a[0], a[1], a[2], s)}; };
    auto loss = [&](const Tensors& a) { return sum(mul(fused_attention(a[0], a[1], a[2], s), w)); };
    {
      Tensors xs = x;
      for (auto& xi : xs) xi = xi.detach().requires_grad_();
      Tensor o = fused_attention(xs[0], xs[1], xs[2], s);
      if (x[0].device() == Device::CUDA) CHECK(o.grad_fn()->name() == "attention_fused");
      out.push_back({"o", o.to_vector()});
    }
    Tensors g = grad_of(loss, x);
    for (int i = 0; i < 3; ++i) out.push_back({"grad " + std::to_string(i), g[i].to_vector()});
    auto jt = jvp(att, x, t, false).second;
    out.push_back({"jvp", jt[0].to_vector()});
    // Reverse over forward: d/d(x, t) of <u, J(x) t>; on CUDA this differentiates the fused JVP op.
    Tensors xt = x;
    xt.insert(xt.end(), t.begin(), t.end());
    Tensors rof = grad_of(
        [&](const Tensors& a) {
          auto r = jvp(att, {a[0], a[1], a[2]}, {a[3], a[4], a[5]}, true).second;
          return sum(mul(r[0], u));
        },
        xt);
    for (int i = 0; i < 6; ++i) out.push_back({"rev-over-fwd " + std::to_string(i), rof[i].to_vector()});
    // Double backward: d/dx of <grad L(x), t>, through the fused backward op's composite VJP.
    Tensors dd = grad_of(
        [&](const Tensors& a) {
          Tensors ga = grad_of(loss, a, true);
          return add(add(sum(mul(ga[0], t[0])), sum(mul(ga[1], t[1]))), sum(mul(ga[2], t[2])));
        },
        x);
    for (int i = 0; i < 3; ++i) out.push_back({"double backward " + std::to_string(i), dd[i].to_vector()});
    // Forward over reverse: Hessian-vector product, through the fused backward op's composite JVP.
    Tensors hv = hvp(loss, x, t);
    for (int i = 0; i < 3; ++i) out.push_back({"hvp " + std::to_string(i), hv[i].to_vector()});
    return out;
  };
  auto want = quantities(x64, t64, w64, u64);
  auto got = quantities(dev(x64), dev(t64), w64.to(DType::F32).to(Device::CUDA), u64.to(DType::F32).to(Device::CUDA));
  REQUIRE(got.size() == want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    std::string err = verdict(got[i].first.c_str(), got[i].second, want[i].second, 1e-4, 1e-3);
    CHECK_MESSAGE(err.empty(), err);
  }

  // bf16 through the engine: the one-pass JVP and the gradient, loosely.
  Tensors xb, tb;
  for (auto& a : dev(x64)) xb.push_back(a.to(DType::BF16));
  for (auto& a : dev(t64)) tb.push_back(a.to(DType::BF16));
  Tensors x64r, t64r;  // the rounded values, in f64 on the CPU
  for (auto& a : xb) x64r.push_back(a.to(DType::F32).to(Device::CPU).to(DType::F64));
  for (auto& a : tb) t64r.push_back(a.to(DType::F32).to(Device::CPU).to(DType::F64));
  auto att = [s](const Tensors& a) { return Tensors{fused_attention(a[0], a[1], a[2], s)}; };
  auto jb = jvp(att, xb, tb, false).second[0].to_vector();
  auto jr = jvp(att, x64r, t64r, false).second[0].to_vector();
  std::string err = verdict("bf16 jvp", jb, jr, 3e-2, 8e-2);
  CHECK_MESSAGE(err.empty(), err);
}

#endif  // DF_WITH_CUDA

// One op-table row: on the CPU the generic checker runs all four derivative checks (f64, through the
// composite); tests/test_cuda.cpp runs the same row on the GPU, where it hits the fused kernels.
namespace {
std::vector<double> attention_row_reference(const std::vector<std::vector<double>>& in, const std::vector<Shape>& s) {
  Problem p{s[0][0], s[0][1], s[0][2], s[1][2], s[0][3], 0.25};
  Vec zq(in[0].size(), 0.0), zk(in[1].size(), 0.0), zr(p.B * p.H * p.N, 0.0);
  return reference(p, in[0], in[1], in[2], zq, zk, zk, zq, zr).o;
}
test::RegisterRows attention_rows({{"fused_attention (D 32, N 5, M 7)",
                                    [](const Tensors& x) { return fused_attention(x[0], x[1], x[2], 0.25); },
                                    {{1, 2, 5, 32}, {1, 2, 7, 32}, {1, 2, 7, 32}},
                                    -1.5,
                                    1.5,
                                    attention_row_reference,
                                    {1e-6, 1e-5, 1e-7},
                                    1e-5,
                                    true,
                                    nullptr}});
}  // namespace
