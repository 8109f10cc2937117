// A small RGB canvas (pixels, lines, rectangles, 5x7 bitmap text), axes with ticks, and the figure
// kinds built on them; PNG encoding by stb_image_write.
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
  // dash > 0: draw `dash` steps, skip `dash` steps, and so on.
  void line(double x0, double y0, double x1, double y1, RGB c, int dash = 0) {
    int n = int(std::ceil(std::max(std::abs(x1 - x0), std::abs(y1 - y0)))) + 1;
    for (int i = 0; i <= n; ++i) {
      if (dash > 0 && (i / dash) % 2 == 1) continue;
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

// ---- axes, scatter grids, line panels ---------------------------------------------------------------

double PlotAxis::pixel(double v) const {
  const double a = log ? std::log10(lo) : lo, b = log ? std::log10(hi) : hi, x = log ? std::log10(v) : v;
  return p_lo + (x - a) / (b - a) * (p_hi - p_lo);
}

std::vector<double> PlotAxis::ticks(int max_ticks) const {
  DF_CHECK(hi > lo && (!log || lo > 0), "PlotAxis::ticks: expected lo < hi", log ? " and lo > 0 (log axis)" : "",
           ", got [", lo, ", ", hi, "]");
  DF_CHECK(max_ticks >= 2, "PlotAxis::ticks: expected max_ticks >= 2, got ", max_ticks);
  const double slack = 1e-9 * (hi - lo);
  std::vector<double> out;
  if (!log) {
    const double step = nice_step((hi - lo) / (max_ticks - 1));
    for (double k = std::ceil((lo - slack) / step); k * step <= hi + slack; k += 1)
      out.push_back(std::fabs(k) < 0.5 ? 0.0 : k * step);
    return out;
  }
  for (const std::vector<double>& mant : {std::vector<double>{1, 2, 5}, std::vector<double>{1}}) {
    out.clear();
    for (int e = int(std::floor(std::log10(lo))) - 1; e <= int(std::ceil(std::log10(hi))); ++e)
      for (double m : mant) {
        double v = m * std::pow(10.0, e);
        if (v >= lo * (1 - 1e-9) && v <= hi * (1 + 1e-9)) out.push_back(v);
      }
    if (int(out.size()) <= max_ticks) break;
  }
  return out;
}

namespace {

// Ticks of one axis of a panel: grid lines inside, a 5-pixel mark outside, and the label.
// vertical = a y axis (marks to the left of x_edge); otherwise an x axis (marks below y_edge).
void draw_ticks(Canvas& cv, const PlotAxis& ax, const std::vector<double>& ticks, bool vertical, int edge,
                int span0, int span1, bool grid) {
  const int lo = int(std::min(ax.p_lo, ax.p_hi)), hi = int(std::max(ax.p_lo, ax.p_hi)) - 1;
  for (double v : ticks) {
    int p = std::clamp(int(std::floor(ax.pixel(v))), lo, hi);
    std::string s = fmt_tick(v);
    if (vertical) {
      if (grid)
        for (int x = span0; x < span1; ++x) cv.set(x, p, kGrid);
      for (int x = edge - 5; x < edge; ++x) cv.set(x, p, kBlack);
      cv.text(edge - 8 - Canvas::text_width(s, 1), p - 3, s, 1, kBlack);
    } else {
      if (grid)
        for (int y = span0; y < span1; ++y) cv.set(p, y, kGrid);
      for (int y = edge + 1; y <= edge + 5; ++y) cv.set(p, y, kBlack);
      cv.text(p - Canvas::text_width(s, 1) / 2 + 1, edge + 8, s, 1, kBlack);
    }
  }
}

void centred_title(Canvas& cv, int x0, int width, int y, const std::string& t) {
  int scale = Canvas::text_width(t, 2) <= width ? 2 : 1;
  cv.text(x0 + std::max(0, (width - Canvas::text_width(t, scale)) / 2), y + (14 - 7 * scale) / 2, t, scale, kBlack);
}

}  // namespace

void write_scatter_grid(const std::string& path, const std::vector<ScatterRow>& rows, int panel_px) {
  DF_CHECK(!rows.empty(), "write_scatter_grid: no rows for '", path, "'");
  DF_CHECK(panel_px >= 40, "write_scatter_grid: expected panel_px >= 40, got ", panel_px);
  size_t cols = 0;
  for (const ScatterRow& r : rows) {
    DF_CHECK(r.extent > 0 && r.tick_step > 0, "write_scatter_grid: expected extent > 0 and tick_step > 0, got ",
             r.extent, " and ", r.tick_step);
    cols = std::max(cols, r.panels.size());
  }
  DF_CHECK(cols > 0, "write_scatter_grid: every row of '", path, "' is empty");
  ScatterGridLayout L;
  L.panel_px = panel_px;
  const int P = panel_px;
  Canvas cv(L.width(int(cols)), L.height(int(rows.size())), kWhite);
  for (size_t r = 0; r < rows.size(); ++r) {
    const ScatterRow& row = rows[r];
    std::vector<double> ticks;
    for (double k = std::ceil(-row.extent / row.tick_step - 1e-9); k * row.tick_step <= row.extent + 1e-9; k += 1)
      ticks.push_back(std::fabs(k) < 0.5 ? 0.0 : k * row.tick_step);
    for (size_t c = 0; c < row.panels.size(); ++c) {
      const ScatterPanel& panel = row.panels[c];
      if (!panel.points.defined()) continue;
      const int x0 = L.x0(int(c)), y0 = L.y0(int(r));
      PlotAxis ax{-row.extent, row.extent, double(x0), double(x0 + P)};
      PlotAxis ay{-row.extent, row.extent, double(y0 + P), double(y0)};
      cv.rect(x0, y0, x0 + P, y0 + P, RGB{246, 246, 246});
      draw_ticks(cv, ax, ticks, false, y0 + P, y0, y0 + P, true);
      draw_ticks(cv, ay, ticks, true, x0 - 1, x0, x0 + P, true);
      std::vector<double> pts = host_points(panel.points, panel.title);
      for (size_t i = 0; i + 1 < pts.size(); i += 2) {
        double px = ax.pixel(pts[i]), py = ay.pixel(pts[i + 1]);
        if (!(px >= x0 && px < x0 + P && py >= y0 && py < y0 + P)) continue;
        int ix = int(px), iy = int(py);
        cv.rect(std::max(x0, ix - 1), std::max(y0, iy - 1), std::min(x0 + P, ix + 1), std::min(y0 + P, iy + 1),
                kPalette[0]);
      }
      cv.frame(x0 - 1, y0 - 1, x0 + P + 1, y0 + P + 1, kBlack);
      centred_title(cv, x0, P, y0 - ScatterGridLayout::kTitle + 2, panel.title);
    }
  }
  cv.save(path);
}

void write_line_panels(const std::string& path, const std::vector<LinePanel>& panels, const LinePlotLayout& L) {
  DF_CHECK(!panels.empty(), "write_line_panels: no panels for '", path, "'");
  Canvas cv(L.width(int(panels.size())), L.height(), kWhite);
  const int top = LinePlotLayout::kTop, W = L.plot_w, H = L.plot_h;
  for (size_t k = 0; k < panels.size(); ++k) {
    const LinePanel& p = panels[k];
    auto usable = [&](double v, bool log) { return std::isfinite(v) && (!log || v > 0); };
    double xlo = INFINITY, xhi = -INFINITY, ylo = INFINITY, yhi = -INFINITY;
    for (const LineSeries& s : p.series) {
      DF_CHECK(s.x.size() == s.y.size(), "write_line_panels: series '", s.name, "' has ", s.x.size(),
               " x values and ", s.y.size(), " y values");
      for (size_t i = 0; i < s.x.size(); ++i)
        if (usable(s.x[i], p.log_x) && usable(s.y[i], p.log_y))
          xlo = std::min(xlo, s.x[i]), xhi = std::max(xhi, s.x[i]), ylo = std::min(ylo, s.y[i]),
          yhi = std::max(yhi, s.y[i]);
    }
    if (!(xlo <= xhi)) xlo = 1, xhi = 10, ylo = 1, yhi = 10;   // nothing plottable: an empty frame
    // Pad the ranges so markers at the ends stay inside the frame: 5% (of the log range on log axes).
    auto pad = [](double& lo, double& hi, bool log) {
      if (log) {
        double f = std::pow(std::max(hi / lo, 1.5), 0.05);
        lo /= f, hi *= f;
      } else {
        double d = std::max(hi - lo, 1e-12 + 0.1 * std::fabs(hi));
        lo -= 0.05 * d, hi += 0.05 * d;
      }
    };
    pad(xlo, xhi, p.log_x);
    pad(ylo, yhi, p.log_y);
    const int x0 = L.x0(int(k));
    PlotAxis ax{xlo, xhi, double(x0), double(x0 + W), p.log_x};
    PlotAxis ay{ylo, yhi, double(top + H), double(top), p.log_y};
    std::vector<double> xt = p.x_ticks.empty() ? ax.ticks() : p.x_ticks, yt = p.y_ticks.empty() ? ay.ticks() : p.y_ticks;
    auto inside = [](const PlotAxis& a, const std::vector<double>& t) {
      std::vector<double> o;
      for (double v : t)
        if (v >= a.lo && v <= a.hi) o.push_back(v);
      return o;
    };
    draw_ticks(cv, ax, inside(ax, xt), false, top + H, top, top + H, true);
    draw_ticks(cv, ay, inside(ay, yt), true, x0 - 1, x0, x0 + W, true);
    cv.frame(x0 - 1, top - 1, x0 + W + 1, top + H + 1, kBlack);
    for (size_t si = 0; si < p.series.size(); ++si) {
      const LineSeries& s = p.series[si];
      const RGB col = s.dashed ? kBlack : kPalette[si % (sizeof kPalette / sizeof kPalette[0])];
      bool have = false;
      double qx = 0, qy = 0;
      for (size_t i = 0; i < s.x.size(); ++i) {
        if (!(usable(s.x[i], p.log_x) && usable(s.y[i], p.log_y))) {
          have = false;
          continue;
        }
        double x = ax.pixel(s.x[i]), y = ay.pixel(s.y[i]);
        if (have) cv.line(qx, qy, x, y, col, s.dashed ? 6 : 0);
        if (!s.dashed) cv.rect(int(x) - 2, int(y) - 2, int(x) + 3, int(y) + 3, col);
        qx = x, qy = y, have = true;
      }
    }
    centred_title(cv, x0, W, 4, p.title);
    cv.text(x0 - LinePlotLayout::kLeft + 4, top - 10, p.y_label, 1, kBlack);
    cv.text(x0 + (W - Canvas::text_width(p.x_label, 1)) / 2, top + H + 26, p.x_label, 1, kBlack);
  }
  // The legend: the first panel's series (the others are expected to use the same order).
  const int lx = L.width(int(panels.size())) - LinePlotLayout::kLegend + 4;
  for (size_t si = 0; si < panels[0].series.size(); ++si) {
    const LineSeries& s = panels[0].series[si];
    const RGB col = s.dashed ? kBlack : kPalette[si % (sizeof kPalette / sizeof kPalette[0])];
    int ly = top + 6 + int(si) * 16;
    if (s.dashed) cv.line(lx, ly + 3, lx + 18, ly + 3, col, 3);
    else cv.rect(lx, ly + 2, lx + 18, ly + 5, col), cv.rect(lx + 7, ly + 1, lx + 12, ly + 6, col);
    cv.text(lx + 24, ly, s.name, 1, kBlack);
  }
  cv.save(path);
}

}  // namespace df
