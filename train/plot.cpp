// A small RGB canvas (pixels, lines, rectangles, 5x7 bitmap text) and the two figure kinds built
// on it; PNG encoding by stb_image_write.
#include "train/plot.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>

#define STB_IMAGE_WRITE_IMPLEMENTATION
#include <stb/stb_image_write.h>

#include "core/autograd.h"

namespace df {
namespace {

struct RGB {
  uint8_t r, g, b;
};

// 5x7 glyphs, one byte per row, bit 4 = leftmost column. Lower case is drawn with upper-case glyphs.
struct Glyph {
  char c;
  uint8_t rows[7];
};
const Glyph kFont[] = {
    {'A', {0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11}}, {'B', {0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E}},
    {'C', {0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E}}, {'D', {0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C}},
    {'E', {0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F}}, {'F', {0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10}},
    {'G', {0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F}}, {'H', {0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11}},
    {'I', {0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E}}, {'J', {0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C}},
    {'K', {0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11}}, {'L', {0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F}},
    {'M', {0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11}}, {'N', {0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11}},
    {'O', {0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E}}, {'P', {0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10}},
    {'Q', {0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D}}, {'R', {0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11}},
    {'S', {0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E}}, {'T', {0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04}},
    {'U', {0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E}}, {'V', {0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04}},
    {'W', {0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A}}, {'X', {0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11}},
    {'Y', {0x11, 0x11, 0x0A, 0x04, 0x04, 0x04, 0x04}}, {'Z', {0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F}},
    {'0', {0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E}}, {'1', {0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E}},
    {'2', {0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F}}, {'3', {0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E}},
    {'4', {0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02}}, {'5', {0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E}},
    {'6', {0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E}}, {'7', {0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08}},
    {'8', {0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E}}, {'9', {0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C}},
    {' ', {0, 0, 0, 0, 0, 0, 0}},                      {'.', {0, 0, 0, 0, 0, 0x0C, 0x0C}},
    {',', {0, 0, 0, 0, 0x0C, 0x04, 0x08}},             {':', {0, 0x0C, 0x0C, 0, 0x0C, 0x0C, 0}},
    {'-', {0, 0, 0, 0x1F, 0, 0, 0}},                   {'+', {0, 0x04, 0x04, 0x1F, 0x04, 0x04, 0}},
    {'=', {0, 0, 0x1F, 0, 0x1F, 0, 0}},                {'(', {0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02}},
    {')', {0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08}}, {'/', {0, 0x01, 0x02, 0x04, 0x08, 0x10, 0}},
    {'_', {0, 0, 0, 0, 0, 0, 0x1F}},                   {'%', {0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03}},
    {'\'', {0x04, 0x04, 0x08, 0, 0, 0, 0}},            {'!', {0x04, 0x04, 0x04, 0x04, 0x04, 0, 0x04}},
    {'?', {0x0E, 0x11, 0x01, 0x02, 0x04, 0, 0x04}},    {'[', {0x0E, 0x08, 0x08, 0x08, 0x08, 0x08, 0x0E}},
    {']', {0x0E, 0x02, 0x02, 0x02, 0x02, 0x02, 0x0E}}, {'<', {0x02, 0x04, 0x08, 0x10, 0x08, 0x04, 0x02}},
    {'>', {0x08, 0x04, 0x02, 0x01, 0x02, 0x04, 0x08}}, {'*', {0, 0x04, 0x15, 0x0E, 0x15, 0x04, 0}},
    {'#', {0x0A, 0x0A, 0x1F, 0x0A, 0x1F, 0x0A, 0x0A}}, {'^', {0x04, 0x0A, 0x11, 0, 0, 0, 0}},
    {'|', {0x04, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04}},
};

const uint8_t* glyph_rows(char c) {
  if (c >= 'a' && c <= 'z') c = char(c - 'a' + 'A');
  for (const Glyph& g : kFont)
    if (g.c == c) return g.rows;
  for (const Glyph& g : kFont)
    if (g.c == '?') return g.rows;
  return nullptr;
}

struct Canvas {
  int w, h;
  std::vector<uint8_t> px;
  Canvas(int w_, int h_, RGB bg) : w(w_), h(h_), px(size_t(w_) * h_ * 3) {
    for (size_t i = 0; i < size_t(w) * h; ++i) {
      px[3 * i] = bg.r;
      px[3 * i + 1] = bg.g;
      px[3 * i + 2] = bg.b;
    }
  }
  void set(int x, int y, RGB c) {
    if (x < 0 || y < 0 || x >= w || y >= h) return;
    uint8_t* p = &px[(size_t(y) * w + x) * 3];
    p[0] = c.r;
    p[1] = c.g;
    p[2] = c.b;
  }
  void rect(int x0, int y0, int x1, int y1, RGB c) {  // filled, inclusive-exclusive
    for (int y = y0; y < y1; ++y)
      for (int x = x0; x < x1; ++x) set(x, y, c);
  }
  void frame(int x0, int y0, int x1, int y1, RGB c) {
    for (int x = x0; x < x1; ++x) set(x, y0, c), set(x, y1 - 1, c);
    for (int y = y0; y < y1; ++y) set(x0, y, c), set(x1 - 1, y, c);
  }
  void line(double x0, double y0, double x1, double y1, RGB c) {
    int n = int(std::ceil(std::max(std::abs(x1 - x0), std::abs(y1 - y0)))) + 1;
    for (int i = 0; i <= n; ++i) {
      double t = double(i) / n;
      int x = int(std::lround(x0 + t * (x1 - x0))), y = int(std::lround(y0 + t * (y1 - y0)));
      set(x, y, c);
      set(x, y + 1, c);  // two pixels thick so thin curves stay visible
    }
  }
  static int text_width(const std::string& s, int scale) { return int(s.size()) * 6 * scale; }
  void text(int x, int y, const std::string& s, int scale, RGB c) {
    for (size_t i = 0; i < s.size(); ++i) {
      const uint8_t* rows = glyph_rows(s[i]);
      for (int r = 0; r < 7; ++r)
        for (int col = 0; col < 5; ++col)
          if (rows[r] & (0x10 >> col))
            rect(x + int(i) * 6 * scale + col * scale, y + r * scale, x + int(i) * 6 * scale + (col + 1) * scale,
                 y + (r + 1) * scale, c);
    }
  }
  void save(const std::string& path) const {
    int ok = stbi_write_png(path.c_str(), w, h, 3, px.data(), w * 3);
    DF_CHECK(ok != 0, "write_png: could not write '", path, "' (", w, "x", h, ")");
  }
};

const RGB kPalette[] = {{31, 119, 180}, {255, 127, 14}, {44, 160, 44},  {214, 39, 40},
                        {148, 103, 189}, {140, 86, 75}, {227, 119, 194}, {127, 127, 127}};
const RGB kBlack{20, 20, 20}, kWhite{255, 255, 255}, kGrid{225, 225, 225};

std::vector<double> host_points(const Tensor& t, const std::string& title) {
  DF_CHECK(t.defined() && t.dim() == 2 && t.size(1) == 2, "write_scatter_panels: panel '", title,
           "' expected points (N, 2), got ", t.defined() ? t.desc() : std::string("undefined"));
  NoGrad ng;
  return t.detach().to_vector();
}

// The smallest of 1, 2, 5 times a power of ten that is at least raw (> 0).
double nice_step(double raw) {
  double mag = std::pow(10.0, std::floor(std::log10(raw)));
  return raw <= mag ? mag : raw <= 2 * mag ? 2 * mag : raw <= 5 * mag ? 5 * mag : 10 * mag;
}

std::string fmt_tick(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

}  // namespace

void write_scatter_panels(const std::string& path, const std::vector<ScatterPanel>& panels,
                          const std::function<double(double, double)>& density, double extent) {
  DF_CHECK(!panels.empty(), "write_scatter_panels: no panels for '", path, "'");
  DF_CHECK(extent > 0, "write_scatter_panels: extent must be positive, got ", extent);
  const int P = 320, margin = 10, title_h = 26;
  int W = int(panels.size()) * (P + margin) + margin, H = title_h + P + margin;
  Canvas cv(W, H, kWhite);

  // The background is shared by all panels: light grey, darker where the density is higher
  // (square-root scaled so that thin tails stay visible).
  std::vector<uint8_t> bg(size_t(P) * P, 245);
  if (density) {
    std::vector<double> d(size_t(P) * P);
    double dmax = 0;
    for (int y = 0; y < P; ++y)
      for (int x = 0; x < P; ++x) {
        double wx = -extent + (x + 0.5) * 2 * extent / P, wy = extent - (y + 0.5) * 2 * extent / P;
        double v = density(wx, wy);
        d[size_t(y) * P + x] = std::isfinite(v) && v > 0 ? v : 0;
        dmax = std::max(dmax, d[size_t(y) * P + x]);
      }
    if (dmax > 0)
      for (size_t i = 0; i < d.size(); ++i) bg[i] = uint8_t(std::lround(248 - 128 * std::sqrt(d[i] / dmax)));
  }

  for (size_t k = 0; k < panels.size(); ++k) {
    int x0 = margin + int(k) * (P + margin), y0 = title_h;
    for (int y = 0; y < P; ++y)
      for (int x = 0; x < P; ++x) {
        uint8_t v = bg[size_t(y) * P + x];
        cv.set(x0 + x, y0 + y, RGB{v, v, v});
      }
    // light axes through the origin for orientation
    int cx = x0 + P / 2, cy = y0 + P / 2;
    for (int i = 0; i < P; ++i) cv.set(x0 + i, cy, RGB{200, 200, 210}), cv.set(cx, y0 + i, RGB{200, 200, 210});
    std::vector<double> pts = host_points(panels[k].points, panels[k].title);
    RGB dot = kPalette[0];
    for (size_t i = 0; i + 1 < pts.size(); i += 2) {
      double px = (pts[i] + extent) / (2 * extent) * P, py = (extent - pts[i + 1]) / (2 * extent) * P;
      if (!(px >= 0 && px < P && py >= 0 && py < P)) continue;
      int ix = x0 + int(px), iy = y0 + int(py);
      cv.rect(std::max(x0, ix - 1), std::max(y0, iy - 1), std::min(x0 + P, ix + 1), std::min(y0 + P, iy + 1), dot);
    }
    cv.frame(x0 - 1, y0 - 1, x0 + P + 1, y0 + P + 1, kBlack);
    const std::string& t = panels[k].title;
    int scale = Canvas::text_width(t, 2) <= P ? 2 : 1;
    cv.text(x0 + std::max(0, (P - Canvas::text_width(t, scale)) / 2), (title_h - 7 * scale) / 2, t, scale, kBlack);
  }
  cv.save(path);
}

void write_loss_curves(const std::string& path,
                       const std::vector<std::pair<std::string, std::vector<double>>>& curves,
                       double steps_per_point) {
  DF_CHECK(steps_per_point > 0, "write_loss_curves: steps_per_point must be positive, got ", steps_per_point);
  DF_CHECK(!curves.empty(), "write_loss_curves: no curves for '", path, "'");
  const int W = 760, H = 440, left = 70, right = 190, top = 20, bottom = 40;
  const int pw = W - left - right, ph = H - top - bottom;
  // A log axis when every finite value is positive; a linear one otherwise (losses with learned
  // weightings, like sCT's, go negative).
  bool log_axis = true;
  size_t n_max = 1;
  for (auto& [name, v] : curves) {
    n_max = std::max(n_max, v.size());
    for (double x : v) log_axis &= !(std::isfinite(x) && x <= 0);
  }
  auto plottable = [&](double x) { return std::isfinite(x) && (!log_axis || x > 0); };
  auto T = [&](double x) { return log_axis ? std::log10(x) : x; };
  double lo = INFINITY, hi = -INFINITY;
  for (auto& [name, v] : curves)
    for (double x : v)
      if (plottable(x)) lo = std::min(lo, T(x)), hi = std::max(hi, T(x));
  if (!(lo <= hi)) lo = -1, hi = 1;  // nothing plottable: an empty frame with a sane axis
  double ylo, yhi, ytick;
  if (log_axis) {
    ylo = std::floor(lo), yhi = std::ceil(hi), ytick = 1;
    if (yhi - ylo < 1) yhi = ylo + 1;
  } else {
    if (hi - lo < 1e-12) lo -= 0.5, hi += 0.5;
    ytick = nice_step((hi - lo) / 6);
    ylo = std::floor(lo / ytick) * ytick, yhi = std::ceil(hi / ytick) * ytick;
  }
  double xmax = std::max<double>(1, double(n_max - 1));
  auto X = [&](double i) { return left + i / xmax * (pw - 1); };
  auto Y = [&](double v) { return top + (yhi - T(v)) / (yhi - ylo) * (ph - 1); };

  Canvas cv(W, H, kWhite);
  if (log_axis) {
    // decade grid lines with labels like 1E-3
    int label_every = std::max(1, int(yhi - ylo) / 8);
    for (int e = int(ylo); e <= int(yhi); ++e) {
      int y = int(std::lround(Y(std::pow(10.0, e))));
      for (int x = left; x < left + pw; ++x) cv.set(x, y, kGrid);
      if ((e - int(ylo)) % label_every == 0) {
        std::string s = "1E" + std::to_string(e);
        cv.text(left - 6 - Canvas::text_width(s, 1), y - 3, s, 1, kBlack);
      }
    }
  } else {
    for (double t = ylo; t <= yhi + ytick * 1e-6; t += ytick) {
      int y = int(std::lround(top + (yhi - t) / (yhi - ylo) * (ph - 1)));
      for (int x = left; x < left + pw; ++x) cv.set(x, y, kGrid);
      std::string s = fmt_tick(std::fabs(t) < ytick * 1e-6 ? 0.0 : t);
      cv.text(left - 6 - Canvas::text_width(s, 1), y - 3, s, 1, kBlack);
    }
  }
  // x ticks at steps that are multiples of a 1-2-5 value giving at most ~5 intervals
  const double smax = xmax * steps_per_point;
  double tick = std::max(1.0, nice_step(smax / 5));
  for (double st = 0; st <= smax + 1e-9; st += tick) {
    int x = int(std::lround(X(st / steps_per_point)));
    for (int y = top; y < top + ph; ++y) cv.set(x, y, kGrid);
    std::string s = fmt_tick(st);
    cv.text(x - Canvas::text_width(s, 1) / 2, top + ph + 6, s, 1, kBlack);
  }
  cv.text(left + pw / 2 - Canvas::text_width("step", 1) / 2, top + ph + 22, "step", 1, kBlack);
  cv.frame(left - 1, top - 1, left + pw + 1, top + ph + 1, kBlack);

  for (size_t c = 0; c < curves.size(); ++c) {
    RGB col = kPalette[c % (sizeof kPalette / sizeof kPalette[0])];
    const auto& v = curves[c].second;
    bool have_prev = false;
    double px = 0, py = 0;
    for (size_t i = 0; i < v.size(); ++i) {
      if (!plottable(v[i])) {
        have_prev = false;
        continue;
      }
      double x = X(double(i)), y = Y(v[i]);
      if (have_prev) cv.line(px, py, x, y, col);
      else cv.set(int(std::lround(x)), int(std::lround(y)), col);
      px = x, py = y, have_prev = true;
    }
    int ly = top + 8 + int(c) * 16;
    cv.rect(left + pw + 12, ly + 2, left + pw + 30, ly + 5, col);
    cv.text(left + pw + 36, ly, curves[c].first, 1, kBlack);
  }
  cv.save(path);
}

}  // namespace df
