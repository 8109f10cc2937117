// PNG figures without a plotting library: side-by-side 2-D scatter panels over an optional density
// heat map, and log-scale loss curves, with titles and legends in a built-in 5x7 bitmap font.
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

}  // namespace df
