// PNG sample grids. The stb_image_write implementation is compiled in train/plot.cpp.
#include "train/image_grid.h"

#include <cmath>
#include <cstdint>
#include <vector>

#include <stb/stb_image_write.h>

#include "core/autograd.h"
#include "ops/ops.h"

namespace df {

void write_image_grid(const std::string& path, const Tensor& images, int64_t cols, int scale) {
  DF_CHECK(images.defined() && images.dim() == 4 && (images.size(1) == 1 || images.size(1) == 3) &&
               images.size(0) > 0,
           "write_image_grid: expected images (N, 1 or 3, H, W), got ", images.defined() ? images.desc() : "undefined");
  DF_CHECK(scale >= 1 && scale <= 16, "write_image_grid: expected scale in [1, 16], got ", scale);
  const int64_t n = images.size(0), c = images.size(1), h = images.size(2), w = images.size(3);
  if (cols <= 0) cols = (int64_t)std::ceil(std::sqrt(double(n)));
  const int64_t rows = (n + cols - 1) / cols, pad = 2;
  const int64_t cell_h = h * scale + pad, cell_w = w * scale + pad;
  const int64_t H = rows * cell_h + pad, W = cols * cell_w + pad;
  std::vector<double> v;
  {
    NoGrad ng;
    v = images.detach().to_vector();   // host copy, row-major
  }
  std::vector<uint8_t> img(size_t(H * W * c), 24);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t y0 = pad + (i / cols) * cell_h, x0 = pad + (i % cols) * cell_w;
    for (int64_t ch = 0; ch < c; ++ch)
      for (int64_t y = 0; y < h * scale; ++y)
        for (int64_t x = 0; x < w * scale; ++x) {
          double p = v[size_t(((i * c + ch) * h + y / scale) * w + x / scale)];
          if (!std::isfinite(p)) p = -1;
          double q = std::round((std::min(1.0, std::max(-1.0, p)) + 1) * 127.5);
          img[size_t(((y0 + y) * W + (x0 + x)) * c + ch)] = uint8_t(q);
        }
  }
  DF_CHECK(stbi_write_png(path.c_str(), int(W), int(H), int(c), img.data(), int(W * c)) != 0,
           "write_image_grid: cannot write ", path);
}

}  // namespace df
