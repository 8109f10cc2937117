// CUDA conformance: every op-table row run on the GPU (forward, JVP, VJP in f32; forward in bf16)
// against the CPU, plus allocator, RNG and copy tests. Without a device: one visible skip message.
#include <doctest/doctest.h>

#include <cmath>
#include <set>
#include <sstream>

#include "tests/checker.h"
#include "tests/test_util.h"
#include "train/optim.h"
#include "train/optim_kernels.h"
#ifdef DF_WITH_CUDA
#include "cuda/cuda.h"
#endif

using namespace df;
using namespace df::test;

TEST_CASE("cuda: backend present or visibly skipped") {
  if (!have_cuda()) {
    MESSAGE("skipped: no CUDA device (all CUDA conformance tests are skipped in this run)");
    return;
  }
  Tensor x = from_vector({1, 2, 3}, {3}).to(Device::CUDA);
  CHECK(x.device() == Device::CUDA);
  CHECK(x.to_vector() == std::vector<double>{1, 2, 3});
}

#ifdef DF_WITH_CUDA

namespace {
// Every block the allocator hands out during these tests starts as NaN, so an element a kernel
// forgets to write makes the comparison fail instead of passing on stale memory.
struct PoisonScope {
  PoisonScope() { cuda::set_poison_allocations(true); }
  ~PoisonScope() { cuda::set_poison_allocations(false); }
};

Tensors to_dev(const Tensors& xs, Device d) {
  Tensors out;
  for (auto& x : xs) out.push_back(x.defined() ? x.to(d) : Tensor());
  return out;
}

// Undefined (symbolic zero) compares equal to all-zero values of `like`'s size.
std::vector<double> values_or_zeros(const Tensor& t, int64_t n) {
  return t.defined() ? t.to_vector() : std::vector<double>(n, 0.0);
}

std::string cmp(const char* what, const Tensor& got, const Tensor& want, int64_t n, double rtol, double atol) {
  if (got.defined() && got.device() != Device::CUDA) return std::string(what) + ": result left the device";
  auto g = values_or_zeros(got, n), w = values_or_zeros(want, n);
  double m = df::test::mismatch(g, w, rtol, atol);
  if (m <= 1) return "";
  std::ostringstream os;
  os << what << ": CUDA vs CPU mismatch " << m << "x tolerance; first values got/want";
  for (size_t i = 0; i < std::min<size_t>(g.size(), 3); ++i) os << " " << g[i] << "/" << w[i];
  return os.str();
}

Fn as_fn(const OpRow& row) {
  return [&row](const Tensors& a) { return Tensors{row.fn(a)}; };
}

}  // namespace

TEST_CASE("cuda: op table forward, JVP and VJP in f32 match the CPU") {
  if (!have_cuda()) return;
  PoisonScope poison;
  REQUIRE(op_table().size() > 0);
  for (auto& row : op_table()) {
    CAPTURE(row.name);
    Fn f = as_fn(row);
    Tensors x = row_inputs(row, 11, DType::F32);
    Tensors xd = to_dev(x, Device::CUDA);
    double rtol = std::max(2e-4, 4 * row.f32_rtol), atol = rtol;
    std::string err;
    try {
      Tensor y, yd;
      {
        NoGrad ng;
        y = row.fn(x);
        yd = row.fn(xd);
      }
      err = cmp("forward", yd, y, y.numel(), rtol, atol);
      CHECK_MESSAGE(err == "", row.name, ": ", err);

      Tensors v;
      for (size_t i = 0; i < x.size(); ++i) v.push_back(randn_like(x[i], 21, 1000 * i));
      auto jc = jvp(f, x, v, false);
      auto jd = jvp(f, xd, to_dev(v, Device::CUDA), false);
      err = cmp("jvp", jd.second[0], jc.second[0], y.numel(), rtol, atol);
      CHECK_MESSAGE(err == "", row.name, ": ", err);

      Tensor u = randn_like(y, 22);
      auto pc = vjp(f, x);
      auto pd = vjp(f, xd);
      Tensors gc = pc.second({u}), gd = pd.second({u.to(Device::CUDA)});
      REQUIRE(gc.size() == gd.size());
      for (size_t i = 0; i < gc.size(); ++i) {
        err = cmp("vjp", gd[i], gc[i], x[i].numel(), rtol, atol);
        CHECK_MESSAGE(err == "", row.name, ": input ", i, ": ", err);
      }
    } catch (const std::exception& e) {
      FAIL_CHECK(row.name, ": threw on CUDA: ", std::string(e.what()));
    }
  }
}

TEST_CASE("cuda: op table compositions in f32 (nested levels read both ways, jvp of hvp, vjp of jvp) match the CPU") {
  if (!have_cuda()) return;
  PoisonScope poison;
  for (auto& row : op_table()) {
    if (!row.second_order) continue;
    CAPTURE(row.name);
    Tensors x = row_inputs(row, 13, DType::F32);
    Tensor y0;
    {
      NoGrad ng;
      y0 = row.fn(x);
    }
    Tensors v1, v2;
    for (size_t i = 0; i < x.size(); ++i) {
      v1.push_back(randn_like(x[i], 31, 1000 * i));
      v2.push_back(randn_like(x[i], 32, 1000 * i));
    }
    Tensor u = randn_like(y0, 33);
    // Each quantity on one device: the mixed tangent in both reading orders, H v of <u, f>, the
    // pullback of x -> J(x) v1.
    auto quantities = [&](Device d) {
      Tensors xd = to_dev(x, d), a = to_dev(v1, d), b = to_dev(v2, d);
      Tensor ud = u.to(d);
      Tensors out;
      {
        DualLevel outer, inner;
        Tensors duals;
        for (size_t i = 0; i < xd.size(); ++i) duals.push_back(make_dual(make_dual(xd[i], a[i], outer.id()), b[i], inner.id()));
        Tensor y = row.fn(duals);
        for (auto order : {std::vector<int>{outer.id(), inner.id()}, std::vector<int>{inner.id(), outer.id()}}) {
          Tensor t = y.tangent(order[0]);
          t = t.defined() ? t.tangent(order[1]) : Tensor();
          out.push_back(t.defined() ? t.detach() : zeros_like(y0).to(d));
        }
      }
      auto s = [&](const Tensors& z) { return sum(mul(row.fn(z), ud)); };
      Tensors jh = jvp([&](const Tensors& z) { return hvp(s, z, a); }, xd, b).second;
      for (auto& h : jh) out.push_back(h.detach());
      auto G = [&](const Tensors& z) { return Tensors{jvp([&](const Tensors& w) { return Tensors{row.fn(w)}; }, z, a).second[0]}; };
      for (auto& g : vjp(G, xd).second({ud})) out.push_back(g.detach());
      return out;
    };
    try {
      Tensors c = quantities(Device::CPU), g = quantities(Device::CUDA);
      REQUIRE(c.size() == g.size());
      const char* names[] = {"outer-then-inner", "inner-then-outer"};
      for (size_t i = 0; i < c.size(); ++i) {
        std::string what = i < 2 ? names[i] : i < 2 + x.size() ? "jvp of hvp" : "vjp of jvp";
        double rtol = std::max(2e-3, 40 * row.f32_rtol);
        std::string err = cmp(what.c_str(), g[i], c[i], c[i].numel(), rtol, rtol);
        CHECK_MESSAGE(err == "", row.name, ": ", err);
      }
    } catch (const std::exception& e) {
      FAIL_CHECK(row.name, ": threw on CUDA: ", std::string(e.what()));
    }
  }
}

TEST_CASE("cuda: op table forward in bf16 (f32 math) matches the CPU on the same rounded inputs") {
  if (!have_cuda()) return;
  PoisonScope poison;
  std::vector<std::string> unsupported;
  int checked = 0;
  for (auto& row : op_table()) {
    CAPTURE(row.name);
    Tensors x = row_inputs(row, 12, DType::F32);
    Tensors xr, xb;
    for (auto& t : x) {
      Tensor b = t.to(DType::BF16);
      xr.push_back(b.to(DType::F32));  // the exact values the bf16 run sees
      xb.push_back(b.to(Device::CUDA));
    }
    NoGrad ng;
    Tensor want = row.fn(xr);
    Tensor got;
    try {
      got = row.fn(xb);
    } catch (const std::exception& e) {
      unsupported.push_back(row.name + " (" + std::string(e.what()) + ")");
      continue;
    }
    CHECK(got.dtype() == DType::BF16);
    // Each op rounds its output to bf16 (8 bits of mantissa); composites round several times.
    std::string err = cmp("bf16 forward", got, want, want.numel(), 3e-2, 3e-2);
    CHECK_MESSAGE(err == "", row.name, ": ", err);
    ++checked;
  }
  CHECK(checked > 0);
  if (!unsupported.empty()) {
    std::ostringstream os;
    for (auto& s : unsupported) os << "\n  " << s;
    MESSAGE("rows with no bf16 CUDA path (not compared): ", os.str());
  }
}

TEST_CASE("cuda: random numbers equal the CPU's (same Philox stream)") {
  if (!have_cuda()) return;
  PoisonScope poison;
  // n and offset cover: offset not a multiple of 4 (element stores), a multiple of 4 (vector
  // stores) with a tail of 1 or 3, and tensors shorter than one block.
  struct Case {
    int64_t n;
    uint64_t offset;
  };
  for (Case k : {Case{1001, 5}, Case{1001, 8}, Case{4099, 0}, Case{3, 2}, Case{1, 0}, Case{70001, 4002}}) {
    for (DType dt : {DType::F32, DType::F64, DType::BF16}) {
      CAPTURE(dtype_name(dt));
      CAPTURE(k.n);
      CAPTURE(k.offset);
      for (bool normal : {true, false}) {
        CAPTURE(normal);
        Tensor c = normal ? randn({k.n}, 7, dt, Device::CPU, k.offset) : rand({k.n}, 7, dt, Device::CPU, k.offset);
        Tensor d = normal ? randn({k.n}, 7, dt, Device::CUDA, k.offset) : rand({k.n}, 7, dt, Device::CUDA, k.offset);
        CHECK(d.device() == Device::CUDA);
        // Uniforms: double math on both, bit-identical after rounding. f64 normals: device double
        // math may differ from glibc by an ulp. f32 normals: logf/sincosf of CUDA vs glibc, a few f32
        // ulp (8 allowed); bf16 normals: that difference may flip one bf16 rounding (one bf16 ulp).
        double tol = !normal ? 0 : dt == DType::F64 ? 1e-14 : dt == DType::F32 ? 1e-6 : 1e-2;
        CHECK(df::test::mismatch(d.to_vector(), c.to_vector(), tol, tol * 1e-2) <= 1);
      }
    }
  }
}

TEST_CASE("cuda: copies, casts and strided views round-trip") {
  if (!have_cuda()) return;
  PoisonScope poison;
  Tensor x = randn({5, 7, 3}, 3, DType::F64);
  Tensor xd = x.to(Device::CUDA);
  CHECK(xd.to_vector() == x.to_vector());
  Tensor p = permute(x, {2, 0, 1}), pd = permute(xd, {2, 0, 1});
  CHECK(copy(pd).to_vector() == copy(p).to_vector());
  for (DType a : {DType::F32, DType::F64, DType::BF16})
    for (DType b : {DType::F32, DType::F64, DType::BF16}) {
      CAPTURE(dtype_name(a));
      CAPTURE(dtype_name(b));
      Tensor c = cast(cast(p, a), b), cd = cast(cast(pd, a), b);
      CHECK(cd.dtype() == b);
      CHECK(cd.to_vector() == c.to_vector());
    }
  // Slices with odd offsets take the unaligned paths of unary/binary kernels.
  Tensor s = slice(x, 1, 1, 6), sd = slice(xd, 1, 1, 6);
  CHECK(df::test::mismatch(exp(sd).to_vector(), exp(s).to_vector(), 1e-14, 1e-14) <= 1);
  CHECK(df::test::mismatch(add(sd, sd).to_vector(), add(s, s).to_vector(), 0, 0) <= 1);
}

TEST_CASE("cuda: elementwise vector paths: odd sizes, tails, misaligned views, scalars and bias blocks") {
  if (!have_cuda()) return;
  PoisonScope poison;
  for (DType dt : {DType::F32, DType::BF16, DType::F64}) {
    CAPTURE(dtype_name(dt));
    // Sizes around the vector width (4 f32, 8 bf16, 2 f64) and the block chunk (256 threads x 4
    // vectors), so every kernel runs with a scalar tail and with several blocks.
    for (int64_t n : {1, 3, 7, 8, 9, 17, 1023, 8192 + 5, 32768 * 3 + 7}) {
      CAPTURE(n);
      // The inputs are exactly representable in dt, and the CPU computes in f32 (f64 for f64), so
      // the results agree bit for bit after rounding to dt.
      DType wide = dt == DType::F64 ? DType::F64 : DType::F32;
      Tensor a = cast(randn({n + 1}, 31, wide), dt), b = cast(add(abs(randn({n + 1}, 32, wide)), 0.5), dt);
      Tensor aw = a.to(wide), bw = b.to(wide);
      Tensor ad = a.to(Device::CUDA), bd = b.to(Device::CUDA);
      auto same = [&](const Tensor& got, const Tensor& want_wide) {
        return df::test::mismatch(got.to_vector(), cast(want_wide, dt).to_vector(), 0, 0) <= 1;
      };
      // Same-shape operands, aligned (offset 0) and one element in (not 16-byte aligned).
      for (int64_t off : {0, 1}) {
        CAPTURE(off);
        Tensor x = slice(ad, 0, off, off + n), y = slice(bd, 0, off, off + n);
        Tensor xw = slice(aw, 0, off, off + n), yw = slice(bw, 0, off, off + n);
        CHECK(same(add(x, y), add(xw, yw)));
        CHECK(same(sub(x, y), sub(xw, yw)));
        CHECK(same(mul(x, y), mul(xw, yw)));
        CHECK(same(div(x, y), div(xw, yw)));
        CHECK(same(maximum(x, y), maximum(xw, yw)));
        // A one-element operand on either side.
        Tensor s = slice(bd, 0, 0, 1), sw = slice(bw, 0, 0, 1);
        CHECK(same(mul(x, s), mul(xw, sw)));
        CHECK(same(sub(s, x), sub(sw, xw)));
        CHECK(same(mul(x, 1.5), mul(xw, 1.5)));
        CHECK(same(neg(x), neg(xw)));
        // Transcendentals: CUDA's and glibc's libm differ by an ulp or two.
        double tol = dt == DType::BF16 ? 1e-2 : dt == DType::F32 ? 1e-6 : 1e-14;
        CHECK(df::test::mismatch(exp(x).to_vector(), cast(exp(xw), dt).to_vector(), tol, tol) <= 1);
        CHECK(df::test::mismatch(tanh(x).to_vector(), cast(tanh(xw), dt).to_vector(), tol, tol) <= 1);
      }
    }
    // Bias blocks on either side, with a block of exactly one vector, several, and a leading 1.
    for (std::pair<Shape, Shape> fv : {std::pair<Shape, Shape>{{37, 8}, {8}}, {{37, 24}, {24}}, {{37, 3, 16}, {1, 3, 16}}}) {
      CAPTURE(shape_str(fv.second));
      Tensor m = randn(fv.first, 33, dt), v = randn(fv.second, 34, dt);
      Tensor md = m.to(Device::CUDA), vd = v.to(Device::CUDA);
      DType wide = dt == DType::F64 ? DType::F64 : DType::F32;
      Tensor mw = m.to(wide), vw = v.to(wide);
      CHECK(df::test::mismatch(add(md, vd).to_vector(), cast(add(mw, vw), dt).to_vector(), 0, 0) <= 1);
      CHECK(df::test::mismatch(sub(vd, md).to_vector(), cast(sub(vw, mw), dt).to_vector(), 0, 0) <= 1);
    }
  }
}

TEST_CASE("cuda: tiled transposes (batched, odd shapes, sliced rows, casts) equal the CPU copy") {
  if (!have_cuda()) return;
  PoisonScope poison;
  auto check_copy = [](const Tensor& view_cpu, const Tensor& view_dev) {
    CHECK(!view_dev.is_contiguous());
    Tensor same = copy(view_dev);
    CHECK(same.is_contiguous());
    CHECK(same.to_vector() == copy(view_cpu).to_vector());
    for (DType dt : {DType::F32, DType::F64, DType::BF16}) {
      if (dt == view_dev.dtype()) continue;
      CAPTURE(dtype_name(dt));
      Tensor got = cast(view_dev, dt);  // a copy with a dtype change, through the same kernels
      CHECK(got.is_contiguous());
      CHECK(got.to_vector() == cast(view_cpu, dt).to_vector());
    }
  };
  for (DType src : {DType::F32, DType::BF16, DType::F64}) {
    CAPTURE(dtype_name(src));
    // 2-D, partial tiles on both sides, a dimension below one tile, and a 1 x n batch.
    for (Shape sh : {Shape{37, 45}, Shape{64, 64}, Shape{65, 129}, Shape{16, 300}, Shape{1, 33, 70},
                     Shape{3, 37, 45}, Shape{2, 3, 70, 17}, Shape{5, 1, 16, 16}, Shape{2, 3, 8, 40}}) {
      CAPTURE(shape_str(sh));
      Tensor x = randn(sh, 41, src), xd = x.to(Device::CUDA);
      int64_t nd = int64_t(sh.size());
      check_copy(transpose(x, nd - 2, nd - 1), transpose(xd, nd - 2, nd - 1));
    }
    Tensor x = randn({4, 5, 33, 40}, 42, src), xd = x.to(Device::CUDA);
    // Batch dims that do not collapse (swapped): the general strided copy.
    check_copy(permute(x, {1, 0, 3, 2}), permute(xd, {1, 0, 3, 2}));
    // A transposed column range (row stride > rows, storage offset 3: not 16-byte aligned).
    Tensor m = randn({80, 64}, 43, src), md = m.to(Device::CUDA);
    check_copy(transpose(slice(m, 1, 3, 50), 0, 1), transpose(slice(md, 1, 3, 50), 0, 1));
    // A broadcast batch (batch stride 0).
    Tensor t = transpose(randn({40, 33}, 44, src), 0, 1);
    check_copy(broadcast_to(t, {3, 33, 40}), broadcast_to(t.to(Device::CUDA), {3, 33, 40}));
  }
}

TEST_CASE("cuda: large reductions and elementwise ops (vector paths, split reductions)") {
  if (!have_cuda()) return;
  PoisonScope poison;
  for (Shape sh : {Shape{3, 1000003}, Shape{1, 4000000}, Shape{2000, 513}, Shape{64, 3000, 40}, Shape{700, 5, 3}}) {
    CAPTURE(shape_str(sh));
    Tensor x = randn(sh, 9, DType::F32);
    Tensor xd = x.to(Device::CUDA);
    for (int64_t ax = 0; ax < (int64_t)sh.size(); ++ax) {
      CAPTURE(ax);
      double n = double(sh[ax]);
      CHECK(df::test::mismatch(sum(xd, {ax}).to_vector(), sum(x, {ax}).to_vector(), 1e-4, 1e-4 * std::sqrt(n)) <= 1);
      CHECK(df::test::mismatch(max(xd, {ax}).to_vector(), max(x, {ax}).to_vector(), 0, 0) <= 1);
    }
    CHECK(df::test::mismatch(sum(xd).to_vector(), sum(x).to_vector(), 1e-4, 1e-1) <= 1);
    CHECK(df::test::mismatch(mul(tanh(xd), xd).to_vector(), mul(tanh(x), x).to_vector(), 1e-5, 1e-6) <= 1);
  }
  // Bias-style broadcasts (a trailing block repeated) on both sides, f32 and bf16.
  for (DType dt : {DType::F32, DType::BF16}) {
    Tensor m = randn({1000, 64}, 4, dt), v = randn({64}, 5, dt);
    Tensor md = m.to(Device::CUDA), vd = v.to(Device::CUDA);
    Tensor mf = m.to(DType::F32), vf = v.to(DType::F32);
    double tol = dt == DType::BF16 ? 1e-2 : 0;
    CHECK(df::test::mismatch(add(md, vd).to_vector(), add(mf, vf).to_vector(), tol, tol) <= 1);
    CHECK(df::test::mismatch(sub(vd, md).to_vector(), sub(vf, mf).to_vector(), tol, tol) <= 1);
  }
  // NaN propagates through max like on the CPU.
  Tensor y = from_vector({1, NAN, 3, 4}, {2, 2}).to(Device::CUDA);
  auto m = max(y, {1}).to_vector();
  CHECK(std::isnan(m[0]));
  CHECK(m[1] == 4);
}

TEST_CASE("cuda: caching allocator reuses blocks and stays flat over 10^4 iterations") {
  if (!have_cuda()) return;
  cuda_synchronize();
  void* first;
  {
    Tensor a = empty({1 << 18}, DType::F32, Device::CUDA);
    first = a.data();
  }
  {
    Tensor b = empty({1 << 18}, DType::F32, Device::CUDA);
    CHECK(b.data() == first);  // same bucket, handed back at once
  }
  // Warm up one iteration's sizes, then the loop must not reach cudaMalloc again.
  auto step = [](int i) {
    Tensor t1 = empty({1000 + (i % 7) * 100}, DType::F32, Device::CUDA);
    Tensor t2 = empty({(1 << 20) + (i % 3) * 4096}, DType::F32, Device::CUDA);
    Tensor t3 = empty({i % 5, 33}, DType::BF16, Device::CUDA);
  };
  for (int i = 0; i < 100; ++i) step(i);
  auto before = cuda::memory_stats();
  for (int i = 0; i < 10000; ++i) step(i);
  auto after = cuda::memory_stats();
  CHECK(after.num_device_mallocs == before.num_device_mallocs);
  CHECK(after.reserved == before.reserved);
  CHECK(after.allocated == before.allocated);
  CHECK(after.num_allocs == before.num_allocs + 30000);

  // Peak statistics track the high-water mark; empty_cache hands cached blocks back.
  cuda::reset_peak_memory_stats();
  size_t base = cuda::memory_stats().allocated;
  {
    Tensor a = empty({1 << 22}, DType::F32, Device::CUDA);
    Tensor b = empty({1 << 22}, DType::F32, Device::CUDA);
    CHECK(cuda::memory_stats().allocated >= base + 2 * (size_t(16) << 20));
  }
  auto s = cuda::memory_stats();
  CHECK(s.allocated == base);
  CHECK(s.peak_allocated >= base + 2 * (size_t(16) << 20));
  cuda::empty_cache();
  CHECK(cuda::memory_stats().reserved <= cuda::memory_stats().allocated + 0);
}

TEST_CASE("cuda: a training-style loop keeps tangents and gradients on the device") {
  if (!have_cuda()) return;
  Tensor w = randn({16, 8}, 1, DType::F32, Device::CUDA).requires_grad_();
  Tensor x = randn({32, 16}, 2, DType::F32, Device::CUDA);
  size_t mallocs = 0;
  for (int it = 0; it < 20; ++it) {
    Tensor h = tanh(sum(mul(unsqueeze(x, 2), w), {1}));  // (32, 8) without needing matmul
    Tensor loss = mean(square(h));
    loss.backward();
    CHECK(w.grad().device() == Device::CUDA);
    w.zero_grad();
    if (it == 2) mallocs = cuda::memory_stats().num_device_mallocs;
  }
  CHECK(cuda::memory_stats().num_device_mallocs == mallocs);  // steady state: cache only
}

TEST_CASE("cuda: fused Adam/AdamW/RAdam, EMA and gradient clipping match the CPU") {
  if (!have_cuda()) return;
  const bool registered = optim_cuda_hooks().adam && optim_cuda_hooks().ema && optim_cuda_hooks().sum_squares;
  REQUIRE(registered);   // the backend registered the fused kernels
  using Make = std::function<std::unique_ptr<Optimizer>(Tensors)>;
  std::vector<std::pair<const char*, Make>> makers = {
      {"adam", [](Tensors ps) { return make_adam(ps, 0.01, 0.9, 0.999, 1e-8, 0.1); }},
      {"adamw", [](Tensors ps) { return make_adamw(ps, 0.01, 0.9, 0.999, 1e-8, 0.1); }},
      {"radam", [](Tensors ps) { return make_radam(ps, 0.01, 0.9, 0.9, 1e-8, 0.1); }}};   // rectifies from step 6
  for (DType dt : {DType::F32, DType::F64}) {
    for (auto& [name, make] : makers) {
      CAPTURE(name);
      CAPTURE(dtype_name(dt));
      auto run = [&](Device dev) {
        Tensors ps = {randn({1000}, 1, dt).to(dev), randn({7, 3}, 2, dt).to(dev)};
        for (auto& p : ps) p.requires_grad_();
        auto opt = make(ps);
        EMA ema(ps, 0.9);
        for (int t = 0; t < 8; ++t) {
          for (size_t i = 0; i < ps.size(); ++i) ps[i].set_grad(randn(ps[i].shape(), 10 + 7 * t + i, dt).to(dev));
          opt->step();
          ema.update(ps);
        }
        std::vector<double> out;
        for (const Tensors* list : {static_cast<const Tensors*>(&ps), &ema.shadow()})
          for (auto& p : *list)
            for (double x : p.to_vector()) out.push_back(x);
        return out;
      };
      std::vector<double> c = run(Device::CPU), d = run(Device::CUDA);
      double tol = dt == DType::F64 ? 1e-12 : 1e-5;
      CHECK(mismatch(d, c, tol, tol) <= 1);
    }
  }
  // clip_grad_norm_async's fused sum of squares (fixed order: the same bits every call).
  for (double max_norm : {0.5, 1e6}) {
    auto make = [](Device dev) {
      Tensors ps = {randn({3, 4}, 1).to(dev), randn({50001}, 2).to(dev), randn({}, 3).to(dev)};
      for (size_t i = 0; i < ps.size(); ++i) {
        ps[i].requires_grad_();
        ps[i].set_grad(mul(randn(ps[i].shape(), 9 + i), 3.0).to(dev));
      }
      return ps;
    };
    Tensors a = make(Device::CPU), b = make(Device::CUDA), b2 = make(Device::CUDA);
    double n1 = clip_grad_norm(a, max_norm);
    Tensor n2 = clip_grad_norm_async(b, max_norm), n3 = clip_grad_norm_async(b2, max_norm);
    CHECK(n2.device() == Device::CUDA);
    CHECK(n2.item() == doctest::Approx(n1).epsilon(1e-5));
    CHECK(n3.item() == n2.item());
    for (size_t i = 0; i < a.size(); ++i) CHECK(mismatch(b[i].grad().to_vector(), a[i].grad().to_vector(), 1e-5, 1e-6) <= 1);
  }
}

TEST_CASE("cuda: contiguous copies and casts (packed path, tails, unaligned views) equal the CPU's") {
  if (!have_cuda()) return;
  PoisonScope poison;
  for (int64_t n : {1, 7, 8, 9, 63, 1001, 65543}) {
    for (int64_t off : {0, 1, 3}) {
      for (DType from : {DType::F32, DType::BF16, DType::F64}) {
        for (DType to : {DType::F32, DType::BF16, DType::F64}) {
          CAPTURE(n);
          CAPTURE(off);
          CAPTURE(dtype_name(from));
          CAPTURE(dtype_name(to));
          Tensor base = randn({n + off}, 40 + n, from);
          Tensor c = slice(base, 0, off, off + n);
          Tensor d = slice(base.to(Device::CUDA), 0, off, off + n);
          Tensor want = cast(c, to), got = cast(d, to);   // straight from the (maybe unaligned) view
          CHECK(got.device() == Device::CUDA);
          CHECK(got.to_vector() == want.to_vector());
          CHECK(copy(d).to_vector() == c.to_vector());
        }
      }
    }
  }
}

#endif  // DF_WITH_CUDA
