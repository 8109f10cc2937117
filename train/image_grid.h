// Sample grids: a batch of images in [-1, 1] written as one PNG (stb_image_write), for the trainer's
// periodic samples and `dualflow sample`.
#pragma once
#include <string>

#include "core/tensor.h"

namespace df {

// images (N, C, H, W), C = 1 (grey) or 3 (RGB), values in [-1, 1] (clipped), any device/dtype. Tiles
// them row-major in `cols` columns (0 = ceil(sqrt(N))) with a 2-pixel dark border, each pixel
// repeated `scale` times. Throws naming the path if the file cannot be written.
void write_image_grid(const std::string& path, const Tensor& images, int64_t cols = 0, int scale = 1);

}  // namespace df
