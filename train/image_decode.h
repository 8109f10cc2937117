// Decoding one image file for the image-folder loader, safely: only PNG, JPEG, BMP and binary PPM/PGM;
// the container is checked first (format by signature, dimensions, complete and uncorrupted structure),
// sizes are capped before anything is decoded, and only then does stb_image decode the pixels.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace df {

enum class ImageFormat { PNG, JPEG, BMP, PNM };
const char* image_format_name(ImageFormat f);

// Fixed caps: stb_image is built with the same largest side, and one image's pixels (8-bit, all
// channels) may not exceed kMaxImageBytes, whatever its header claims.
constexpr int64_t kMaxImageSide = 16384;
constexpr int64_t kMaxImageBytes = int64_t(256) << 20;

struct ImageHeader {
  ImageFormat format;
  int64_t width = 0, height = 0;
  int64_t channels = 0;        // as stored: 1 (gray), 2 (gray+alpha), 3 (RGB), 4 (RGBA)
};

// Reads the container of `bytes` (a whole file; `name` is used in errors) without decoding pixels:
// the format from its signature, the dimensions (a top-down BMP's negative height is its size), and
// structural checks that find truncation and corruption (PNG: every chunk present with a good CRC up
// to IEND, and the zlib stream complete and no longer than the image needs; JPEG: segment lengths and
// an EOI marker; BMP, PNM: the pixel data the header implies is all there). Throws df::Error naming
// the file, the format and what was wrong; never allocates more than the file's own size.
ImageHeader inspect_image(const uint8_t* bytes, size_t size, const std::string& name);

struct DecodedImage {
  int64_t width = 0, height = 0, channels = 0;
  std::vector<uint8_t> pixels;   // height x width x channels, interleaved, row 0 at the top
};

// inspect_image, then stb_image decodes into `want_channels` (1 or 3; 0 keeps what is stored). With
// expect_width > 0, a header of another size is an error (naming `like`) before anything is decoded.
DecodedImage decode_image(const uint8_t* bytes, size_t size, const std::string& name, int want_channels,
                          int64_t expect_width = 0, int64_t expect_height = 0, const std::string& like = "");

}  // namespace df
