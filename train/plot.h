// PNG figures without a plotting library: side-by-side 2-D scatter panels over an optional density
// heat map, grids of scatter panels with ticked axes, log-scale loss curves, and line plots on
// linear or log axes, with titles and legends in a built-in 5x7 bitmap font.
#pragma once
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"

namespace df {

struct ScatterPanel {
  std::string title;
  Tensor points;  // (N, 2)
};

// One panel per entry, each a 320x320 view of [-extent, extent]^2 under a 26-pixel title row, with
// 10-pixel margins: the image is (10 + 330 n) x 356 pixels. Points are 2x2 dots; `density` (if
// given) is drawn as a grey-scale background (darker = denser), evaluated once per pixel centre.
void write_scatter_panels(const std::string& path, const std::vector<ScatterPanel>& panels,
                          const std::function<double(double, double)>& density = nullptr,
                          double extent = 4.0);
// Loss against step, one colour per curve and a legend with the curve names; point i is drawn at
// step i * steps_per_point. The y axis is logarithmic when every finite value is positive, linear
// otherwise; non-finite values are skipped. The image is 760x440.
void write_loss_curves(const std::string& path,
                       const std::vector<std::pair<std::string, std::vector<double>>>& curves,
                       double steps_per_point = 1);

// A linear or log10 axis: the data range [lo, hi] maps onto the pixel range [p_lo, p_hi]
// (p_hi < p_lo for a vertical axis, whose pixels grow downwards). A point's pixel is the floor of
// pixel(v) (so [p_lo, p_hi) holds the range, as a panel of P pixels starting at p_lo does).
struct PlotAxis {
  double lo = 0, hi = 1;
  double p_lo = 0, p_hi = 1;
  bool log = false;     // then lo and hi must be positive
  double pixel(double v) const;
  // Tick values inside [lo, hi] (with a 1e-9 relative slack): linear axes step by the smallest 1, 2
  // or 5 times a power of ten giving at most max_ticks ticks; log axes put 1, 2 and 5 times each
  // power of ten, or only the powers of ten when that would give more than max_ticks.
  std::vector<double> ticks(int max_ticks = 7) const;
};

// A grid of scatter panels with ticked axes: one row per entry, each with its own extent (the view
// [-extent, extent]^2) and tick step. A panel whose points are undefined is left blank.
struct ScatterRow {
  double extent = 4, tick_step = 2;
  std::vector<ScatterPanel> panels;
};
// Pixel layout of write_scatter_grid: panel (row, col) covers columns [x0, x0 + panel_px) and rows
// [y0, y0 + panel_px); x ticks hang below it (5 px) with labels under them, y ticks stick out
// to the left with labels left of them, and the title sits above.
struct ScatterGridLayout {
  int panel_px = 220;
  static constexpr int kMargin = 8, kLeft = 40, kTitle = 20, kBottom = 24, kGap = 10;
  int cell_w() const { return kLeft + panel_px + kGap; }
  int cell_h() const { return kTitle + panel_px + kBottom; }
  int x0(int col) const { return kMargin + col * cell_w() + kLeft; }
  int y0(int row) const { return kMargin + row * cell_h() + kTitle; }
  int width(int cols) const { return 2 * kMargin + cols * cell_w(); }
  int height(int rows) const { return 2 * kMargin + rows * cell_h(); }
};
void write_scatter_grid(const std::string& path, const std::vector<ScatterRow>& rows, int panel_px = 220);

// Line plots side by side with a shared legend: y against x on linear or log axes, one colour and a
// square marker per series (dashed series, e.g. a floor, have no markers). Non-finite points and, on
// log axes, non-positive ones are skipped. x_ticks / y_ticks override PlotAxis::ticks when given.
struct LineSeries {
  std::string name;
  std::vector<double> x, y;
  bool dashed = false;
};
struct LinePanel {
  std::string title, x_label, y_label;
  std::vector<LineSeries> series;
  bool log_x = false, log_y = false;
  std::vector<double> x_ticks, y_ticks;
};
// Pixel layout: panel k's plot area is [x0(k), x0(k) + plot_w) x [kTop, kTop + plot_h); the legend
// column starts after the last panel.
struct LinePlotLayout {
  int plot_w = 380, plot_h = 300;
  static constexpr int kLeft = 56, kRight = 24, kTop = 28, kBottom = 44, kLegend = 130;
  int x0(int k) const { return kLeft + k * (kLeft + plot_w + kRight); }
  int width(int panels) const { return panels * (kLeft + plot_w + kRight) + kLegend; }
  int height() const { return kTop + plot_h + kBottom; }
};
void write_line_panels(const std::string& path, const std::vector<LinePanel>& panels,
                       const LinePlotLayout& layout = LinePlotLayout{});

}  // namespace df
