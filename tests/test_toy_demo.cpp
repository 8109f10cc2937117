// Tests of the 2-D demo's pieces: the checkerboard (sampler moments, support, exact denoiser against
// Monte Carlo), the support metric, plot axes (tick pixels, read back from the PNG), and a miniature
// run of the demo pipeline (train/toy_demo.h): deterministic, thread-independent, sampler NFE.
#include <doctest/doctest.h>

#include <cmath>
#include <string>
#include <thread>
#include <unistd.h>

#include "ops/ops.h"
#include "train/consistency.h"
#include "train/metrics.h"
#include "train/plot.h"
#include "train/toy_data.h"
#include "train/toy_demo.h"

#include <stb/stb_image.h>

using namespace df;

namespace {

std::string tmp_png(const char* tag) { return "/tmp/dualflow_test_" + std::string(tag) + "_" + std::to_string(::getpid()) + ".png"; }

struct Image {
  int w = 0, h = 0;
  std::vector<unsigned char> px;
  explicit Image(const std::string& path) {
    int ch = 0;
    unsigned char* p = stbi_load(path.c_str(), &w, &h, &ch, 3);
    REQUIRE(p != nullptr);
    px.assign(p, p + size_t(w) * h * 3);
    stbi_image_free(p);
    std::remove(path.c_str());
  }
  int at(int x, int y, int c) const { return px[(size_t(y) * w + x) * 3 + c]; }
  bool dark(int x, int y) const { return at(x, y, 0) < 60 && at(x, y, 1) < 60 && at(x, y, 2) < 60; }
  bool white(int x, int y) const { return at(x, y, 0) == 255 && at(x, y, 1) == 255 && at(x, y, 2) == 255; }
  bool blue(int x, int y) const { return at(x, y, 2) > 150 && at(x, y, 0) < 80; }
};

// A tiny demo configuration: seconds, not minutes.
ToyDemoConfig tiny(const std::string& data) {
  ToyDemoConfig c;
  c.data = data;
  c.hidden = 16;
  c.depth = 1;
  c.batch = 32;
  c.teacher_iters = 40;
  c.student_iters = 16;
  return c;
}

}  // namespace

TEST_CASE("checkerboard sampler: moments, cell masses, support") {
  Generator g(21);
  const int64_t n = 40000;
  auto v = sample_toy("checkerboard", n, g, DType::F64).to_vector();
  double m[2] = {0, 0}, s2[2] = {0, 0}, xy = 0;
  int cells[4][4] = {};
  int outside = 0;
  for (int64_t i = 0; i < n; ++i) {
    double x = v[2 * i], y = v[2 * i + 1];
    m[0] += x / n, m[1] += y / n, s2[0] += x * x / n, s2[1] += y * y / n, xy += x * y / n;
    outside += !in_checkerboard(x, y);
    cells[int(std::floor((y + 3) / 1.5))][int(std::floor((x + 3) / 1.5))]++;
  }
  // Each coordinate is U[-3, 3]: mean 0 (sd sqrt(3/n)), E[x^2] = 3 (sd sqrt((81/5 - 9)/n)); 5-sigma bounds.
  for (int d = 0; d < 2; ++d) {
    CHECK(std::abs(m[d]) < 5 * std::sqrt(3.0 / n));
    CHECK(std::abs(s2[d] - 3.0) < 5 * std::sqrt(7.2 / n));
  }
  // The black cells lie along the diagonals: E[xy] = mean of the 8 cell centres' products = 0.5625,
  // Var[xy] = E[x^2 y^2] - 0.5625^2 = 9 - 0.316.
  CHECK(std::abs(xy - 0.5625) < 5 * std::sqrt(9.0 / n));
  CHECK(outside == 0);
  // Black cells (row + column even) hold 1/8 each, white cells nothing.
  const double p = 1.0 / 8, sd = std::sqrt(p * (1 - p) / n);
  for (int r = 0; r < 4; ++r)
    for (int c = 0; c < 4; ++c) {
      INFO("cell row ", r, " col ", c);
      if ((r + c) % 2 == 0) CHECK(std::abs(cells[r][c] / double(n) - p) < 5 * sd);
      else CHECK(cells[r][c] == 0);
    }
  // The support rule by hand: bottom-left cell black, its right neighbour white, the centre's upper right
  // cell black, the board's edge inclusive, outside the board never.
  CHECK(in_checkerboard(-2.9, -2.9));
  CHECK_FALSE(in_checkerboard(-1.4, -2.9));
  CHECK(in_checkerboard(0.1, 0.1));
  CHECK_FALSE(in_checkerboard(-0.1, 0.1));
  CHECK(in_checkerboard(3.0, 3.0));
  CHECK_FALSE(in_checkerboard(3.01, 2.0));
  CHECK_FALSE(in_checkerboard(NAN, 0.0));
}

TEST_CASE("checkerboard exact denoiser matches a Monte Carlo posterior mean") {
  // E[x0 | x] by self-normalised importance sampling from the prior: weights N(x; x0, sigma^2 I).
  Generator g(5);
  const int64_t M = 200000;
  auto prior = sample_toy("checkerboard", M, g, DType::F64).to_vector();
  struct Case { double x, y, sigma; };
  for (Case c : {Case{0.2, -0.4, 0.3}, Case{-1.6, 1.1, 0.7}, Case{2.4, 2.9, 1.5}, Case{-0.7, 0.8, 0.2},
                 Case{3.5, -1.0, 0.5}}) {
    INFO("x = (", c.x, ", ", c.y, "), sigma = ", c.sigma);
    double sw = 0, sw2 = 0, mx = 0, my = 0;
    std::vector<double> w(M);
    for (int64_t i = 0; i < M; ++i) {
      double dx = prior[2 * i] - c.x, dy = prior[2 * i + 1] - c.y;
      w[i] = std::exp(-(dx * dx + dy * dy) / (2 * c.sigma * c.sigma));
      sw += w[i], sw2 += w[i] * w[i];
      mx += w[i] * prior[2 * i], my += w[i] * prior[2 * i + 1];
    }
    mx /= sw, my /= sw;
    // Standard error of a self-normalised estimate: sqrt(sum w^2 (x0 - mean)^2) / sum w.
    double vx = 0, vy = 0;
    for (int64_t i = 0; i < M; ++i)
      vx += w[i] * w[i] * std::pow(prior[2 * i] - mx, 2), vy += w[i] * w[i] * std::pow(prior[2 * i + 1] - my, 2);
    const double ess = sw * sw / sw2;
    REQUIRE(ess > 500);
    auto d = checkerboard_denoise(from_vector({c.x, c.y}, {1, 2}, DType::F64), c.sigma).to_vector();
    CHECK(std::abs(d[0] - mx) < 5 * std::sqrt(vx) / sw + 1e-3);
    CHECK(std::abs(d[1] - my) < 5 * std::sqrt(vy) / sw + 1e-3);
  }
  // Limits: a small sigma inside a black cell returns x; a huge one the data mean (0, 0); a point far
  // off the board stays finite and lands on the nearest black cell's edge.
  auto d = checkerboard_denoise(from_vector({0.4, 0.6, -2.0, -2.5, 0.3, 0.1, 40.0, 1.0}, {4, 2}, DType::F64), 1e-3)
               .to_vector();
  CHECK(d[0] == doctest::Approx(0.4).epsilon(1e-9));
  CHECK(d[1] == doctest::Approx(0.6).epsilon(1e-9));
  CHECK(d[2] == doctest::Approx(-2.0).epsilon(1e-9));
  CHECK(d[3] == doctest::Approx(-2.5).epsilon(1e-9));
  // (40, 1) is right of the white cell [1.5, 3] x [0, 1.5]; the nearest black point is the corner
  // (3, 1.5) of the cell above it (the one below is 1 away in y, this one 0.5).
  CHECK(d[6] == doctest::Approx(3.0).epsilon(1e-4));
  CHECK(d[7] == doctest::Approx(1.5).epsilon(1e-4));
  CHECK(d[7] > 1.5);
  auto far = checkerboard_denoise(from_vector({0.5, -0.2}, {1, 2}, DType::F64), 1e4).to_vector();
  CHECK(std::abs(far[0]) < 1e-4);
  CHECK(std::abs(far[1]) < 1e-4);
  CHECK_THROWS_WITH_AS(checkerboard_denoise(zeros({3, 3}, DType::F64), 1.0), doctest::Contains("(B, 2)"), Error);
  CHECK_THROWS_WITH_AS(checkerboard_denoise(zeros({3, 2}, DType::F64), 0.0), doctest::Contains("sigma > 0"), Error);
}

TEST_CASE("support fraction: all of the checkerboard, 98.9% of the 8 Gaussians, none of a shifted set") {
  Generator g(8);
  CHECK(support_fraction("checkerboard", sample_toy("checkerboard", 3000, g)) == 1.0);
  // Within 3 std of a mode in 2-D: 1 - exp(-9/2) = 0.98889.
  const int64_t n = 20000;
  double f = support_fraction("8gaussians", sample_toy("8gaussians", n, g));
  CHECK(std::abs(f - (1 - std::exp(-4.5))) < 5 * std::sqrt(0.0111 * 0.9889 / n));
  // The 8 Gaussians moved by (0, 1): the modes' 3-std discs (radius 0.3) miss the shifted points
  // except where two discs' shifted copies overlap, which they do not for a unit shift.
  Tensor shifted = add(sample_toy("8gaussians", 2000, g), from_vector({0.0, 1.0}, {1, 2}));
  CHECK(support_fraction("8gaussians", shifted) < 0.02);
  CHECK(support_fraction("checkerboard", add(zeros({5, 2}), from_vector({-0.75, 0.75}, {1, 2}))) == 0.0);   // white
  CHECK(support_fraction("checkerboard", full({5, 2}, -0.75)) == 1.0);   // black
  CHECK_THROWS_WITH_AS(support_fraction("moons", zeros({2, 2})), doctest::Contains("no support rule"), Error);
}

TEST_CASE("sliced W2 against a fixed reference equals sliced_w2 exactly") {
  Generator g(31);
  Tensor b = sample_toy("checkerboard", 700, g, DType::F64);
  SlicedW2Reference ref(b, 64, 5);
  for (int64_t n : {700, 450}) {
    Tensor a = sample_toy("8gaussians", n, g, DType::F64);
    CHECK(ref(a) == sliced_w2(a, b, 64, 5));
    CHECK(ref(a) > 0.3);
  }
  CHECK(ref(b) == 0.0);
  CHECK_THROWS_WITH_AS(ref(zeros({4, 3}, DType::F64)), doctest::Contains("same dimension"), Error);
}

TEST_CASE("plot axes: pixel mapping and ticks") {
  PlotAxis x{-3, 3, 100, 340};
  CHECK(x.pixel(-3) == 100);
  CHECK(x.pixel(0) == 220);
  CHECK(x.pixel(1.5) == 280);
  PlotAxis y{-3, 3, 340, 100};   // vertical: pixels grow downwards
  CHECK(y.pixel(3) == 100);
  CHECK(y.pixel(-1.5) == 280);
  PlotAxis lg{1, 100, 0, 200, true};
  CHECK(lg.pixel(10) == doctest::Approx(100));
  CHECK(lg.pixel(2) == doctest::Approx(100 * std::log10(2.0)));
  CHECK(x.ticks(7) == std::vector<double>{-3, -2, -1, 0, 1, 2, 3});
  CHECK(x.ticks(4) == std::vector<double>{-2, 0, 2});
  CHECK(PlotAxis{0.05, 2, 0, 1, true}.ticks(7) == std::vector<double>{0.05, 0.1, 0.2, 0.5, 1, 2});
  CHECK(PlotAxis{0.9, 150, 0, 1, true}.ticks(4) == std::vector<double>{1, 10, 100});
  CHECK_THROWS_WITH_AS(PlotAxis({0, 10, 0, 1, true}).ticks(), doctest::Contains("lo > 0"), Error);
}

TEST_CASE("scatter grid: ticks and points land on the documented pixels") {
  // One panel of 200 px over [-3, 3]^2 with ticks every 1: tick v sits at column x0 + (v + 3) / 6 * 200
  // (floored) and row y0 + (3 - v) / 6 * 200. A point at (1, 2) lands at (x0 + 133, y0 + 33).
  std::string path = tmp_png("grid");
  ScatterRow row;
  row.extent = 3;
  row.tick_step = 1;
  row.panels = {{"blank", Tensor()}, {"one point", from_vector({1.0, 2.0}, {1, 2})}};
  write_scatter_grid(path, {row}, 200);
  Image im(path);
  ScatterGridLayout L;
  L.panel_px = 200;
  CHECK(im.w == L.width(2));
  CHECK(im.h == L.height(1));
  const int x0 = L.x0(1), y0 = L.y0(0);
  CHECK(x0 == 8 + 250 + 40);
  CHECK(y0 == 8 + 20);
  const int cols[] = {0, 33, 66, 100, 133, 166, 199};   // v = -3 .. 3; the last one clamped into the panel
  const int rows[] = {199, 166, 133, 100, 66, 33, 0};
  for (int k = 0; k < 7; ++k) {
    INFO("tick ", k - 3);
    CHECK(im.dark(x0 + cols[k], y0 + 200 + 3));   // the x mark below the frame
    CHECK(im.dark(x0 - 4, y0 + rows[k]));          // the y mark left of the frame
  }
  for (int c : {16, 50, 116, 150, 183}) {
    CHECK_FALSE(im.dark(x0 + c, y0 + 200 + 3));   // no mark between ticks
    CHECK_FALSE(im.dark(x0 - 4, y0 + c));
  }
  CHECK(im.blue(x0 + 133, y0 + 33));
  CHECK(im.blue(x0 + 132, y0 + 32));
  CHECK_FALSE(im.blue(x0 + 133, y0 + 166));   // where a flipped y axis would put it
  CHECK_FALSE(im.blue(x0 + 66, y0 + 33));     // and a flipped x axis
  // The blank panel is not drawn: no frame, no ticks.
  for (int c = 0; c < 200; c += 7) CHECK(im.white(L.x0(0) + c, y0 + 200));
  CHECK_THROWS_WITH_AS(write_scatter_grid(path, {}), doctest::Contains("no rows"), Error);
}

TEST_CASE("line panels: size, log-x ticks at the axis positions, series drawn") {
  std::string path = tmp_png("lines");
  LinePanel p;
  p.title = "nfe";
  p.log_x = p.log_y = true;
  p.x_ticks = {1, 2, 4, 8};
  p.series = {{"a", {1, 2, 4, 8}, {1.0, 0.5, 0.25, 0.125}}, {"floor", {1, 8}, {0.1, 0.1}, true}};
  LinePlotLayout L;
  write_line_panels(path, {p, p}, L);
  Image im(path);
  CHECK(im.w == L.width(2));
  CHECK(im.h == L.height());
  // Log x: 1, 2, 4, 8 are evenly spaced, so the tick marks below the frame are too.
  std::vector<int> marks;
  const int ybelow = LinePlotLayout::kTop + L.plot_h + 3;
  for (int x = L.x0(0); x < L.x0(0) + L.plot_w; ++x)
    if (im.dark(x, ybelow)) marks.push_back(x);
  REQUIRE(marks.size() == 4);
  CHECK(std::abs((marks[1] - marks[0]) - (marks[3] - marks[2])) <= 1);
  CHECK(std::abs((marks[2] - marks[1]) - (marks[1] - marks[0])) <= 1);
  int blue = 0;
  for (int i = 0; i < im.w * im.h; ++i) blue += im.px[3 * i] == 31 && im.px[3 * i + 1] == 119 && im.px[3 * i + 2] == 180;
  CHECK(blue > 100);
}

TEST_CASE("toy demo pipeline in miniature: every piece runs, deterministic, thread-independent") {
  ToyDemo demo(tiny("checkerboard"));
  // The data are rescaled to the configured std (the checkerboard's is sqrt(3)).
  CHECK(demo.scale() == doctest::Approx(1.0 / std::sqrt(3.0)).epsilon(0.02));
  ToyModel teacher = demo.train_teacher();
  REQUIRE(teacher.net);
  CHECK(teacher.cpu_s > 0);
  std::vector<ToyModel> students;
  for (ToyMethod m : toy_students()) students.push_back(demo.train_student(m, teacher));
  for (const ToyModel& s : students) {
    INFO(toy_method_name(s.method));
    for (int nfe : {1, 2, 4}) {
      Generator g(3);
      Tensor x = demo.sample(s, nfe, 64, g);
      REQUIRE(x.shape() == Shape{64, 2});
      for (double v : x.to_vector()) REQUIRE(std::isfinite(v));
    }
  }
  CHECK_THROWS_WITH_AS(demo.train_student(ToyMethod::SCD, students[0]), doctest::Contains("expected a trained teacher"),
                       Error);

  // The teacher's 1-NFE sample is one Euler (DDIM) step of the ODE from t_max to 0: D(x, t_max).
  {
    Generator g1(9), g2(9);
    Tensor a = demo.sample(teacher, 1, 32, g1);
    const double sd = demo.config().sigma_d, tmax = std::atan(80 / sd);
    Tensor z = g2.randn({32, 2}) * sd;
    NoGrad ng;
    Tensor F = teacher.net->forward(z / sd, full({32}, tmax));
    Tensor b = (std::cos(tmax) * z - (sd * std::sin(tmax)) * F) * (1.0 / demo.scale());
    auto va = a.to_vector(), vb = b.to_vector();
    for (size_t i = 0; i < va.size(); ++i) CHECK(va[i] == doctest::Approx(vb[i]).epsilon(1e-5));
  }
  // The students' samplers evaluate the network at the documented times.
  CHECK(toy_consistency_times(1, 0.5) == std::vector<double>{std::atan(160.0)});
  CHECK(toy_consistency_times(2, 0.5) == std::vector<double>{std::atan(160.0), 1.1});

  // Determinism, and the same numbers when two pipelines run in two threads at once (the demo trains its
  // data sets in parallel): per-method generators, thread-local engine state.
  auto pipeline = [](const std::string& data) {
    ToyDemo d(tiny(data));
    ToyModel t = d.train_teacher();
    ToyModel s = d.train_student(ToyMethod::SCD, t);
    Generator g(4);
    return d.sample(s, 2, 50, g).to_vector();
  };
  std::vector<double> seq_a = pipeline("checkerboard"), seq_b = pipeline("8gaussians"), par_a, par_b;
  std::thread ta([&] { par_a = pipeline("checkerboard"); }), tb([&] { par_b = pipeline("8gaussians"); });
  ta.join();
  tb.join();
  CHECK(seq_a == par_a);
  CHECK(seq_b == par_b);
  CHECK(seq_a != seq_b);
}

TEST_CASE("toy reference: the floor is data scored like a model; a point mass scores sqrt(3 + |c|^2 / 2)") {
  ToyReference ref("checkerboard", 1000, 3, 77);
  const ToyScore& fl = ref.floor();
  CHECK(fl.support == 1.0);
  CHECK(fl.sw2 > 0.02);
  CHECK(fl.sw2 < 0.2);
  CHECK(fl.sw2_se > 0);
  CHECK(fl.sw2_se < fl.sw2 / 2);
  ToyScore again = ref.score([](Generator& g) { return sample_toy("checkerboard", 1000, g, DType::F64); }, 78);
  CHECK(again.sw2 == fl.sw2);
  // All mass at c = (-0.75, 0.75) (a white cell): per direction W2^2 = w'Cov w + (w.c)^2 = 3 + (w.c)^2,
  // whose mean over directions is 3 + |c|^2 / 2.
  ToyScore point = ref.score([](Generator&) { return add(zeros({1000, 2}), from_vector({-0.75, 0.75}, {1, 2})); }, 1);
  CHECK(point.sw2 == doctest::Approx(std::sqrt(3 + 0.5625)).epsilon(0.03));
  CHECK(point.support == 0.0);
  CHECK_THROWS_WITH_AS(ref.score([](Generator&) { return zeros({10, 2}); }, 1), doctest::Contains("(1000, 2)"), Error);
}
