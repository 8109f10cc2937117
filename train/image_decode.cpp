// Safe single-image decoding: a structural reader for each accepted format (PNG, JPEG, BMP, PPM/PGM)
// runs before stb_image, which is compiled here with those formats only (the project's one
// STB_IMAGE_IMPLEMENTATION), so formats that hang or over-allocate (HDR, PSD, ...) are never reached.
#include "train/image_decode.h"

#include <zlib.h>

#include <algorithm>
#include <climits>
#include <cstring>
#include <memory>

#include "core/error.h"

#define STB_IMAGE_IMPLEMENTATION
#define STBI_ONLY_PNG
#define STBI_ONLY_JPEG
#define STBI_ONLY_BMP
#define STBI_ONLY_PNM
#define STBI_NO_LINEAR
#define STBI_MAX_DIMENSIONS 16384
#include <stb/stb_image.h>

namespace df {

static_assert(kMaxImageSide == STBI_MAX_DIMENSIONS, "the side cap and stb_image's must agree");

const char* image_format_name(ImageFormat f) {
  switch (f) {
    case ImageFormat::PNG: return "PNG";
    case ImageFormat::JPEG: return "JPEG";
    case ImageFormat::BMP: return "BMP";
    case ImageFormat::PNM: return "PPM/PGM";
  }
  return "?";
}

namespace {

uint32_t be32(const uint8_t* p) { return (uint32_t(p[0]) << 24) | (uint32_t(p[1]) << 16) | (uint32_t(p[2]) << 8) | p[3]; }
uint32_t be16(const uint8_t* p) { return (uint32_t(p[0]) << 8) | p[1]; }
uint32_t le32(const uint8_t* p) { return (uint32_t(p[3]) << 24) | (uint32_t(p[2]) << 16) | (uint32_t(p[1]) << 8) | p[0]; }
uint32_t le16(const uint8_t* p) { return (uint32_t(p[1]) << 8) | p[0]; }

std::string hex2(int v) {
  static const char* digits = "0123456789abcdef";
  return std::string("0x") + digits[(v >> 4) & 15] + digits[v & 15];
}

bool starts(const uint8_t* b, size_t n, const char* sig, size_t len) { return n >= len && std::memcmp(b, sig, len) == 0; }

// Names a format we do not accept, from its signature, so the error says what the file really is.
const char* other_format(const uint8_t* b, size_t n) {
  if (starts(b, n, "GIF8", 4)) return "GIF";
  if (starts(b, n, "8BPS", 4)) return "PSD";
  if (starts(b, n, "#?RADIANCE", 10) || starts(b, n, "#?RGBE", 6)) return "Radiance HDR";
  if (starts(b, n, "II*\0", 4) || starts(b, n, "MM\0*", 4)) return "TIFF";
  if (n >= 12 && starts(b, n, "RIFF", 4) && std::memcmp(b + 8, "WEBP", 4) == 0) return "WebP";
  if (starts(b, n, "\x53\x80\xF6\x34", 4)) return "Softimage PIC";
  if (n >= 2 && b[0] == 'P' && (b[1] == '1' || b[1] == '2' || b[1] == '3' || b[1] == '4' || b[1] == '7'))
    return "ASCII or bitmap Netpbm (only binary P5/P6 are read)";
  if (starts(b, n, "\x89PNG", 4)) return "PNG with a damaged signature";
  return nullptr;
}

// Width x height x channels x bytes per sample must fit the per-image cap (checked before decoding).
void check_size(const std::string& name, ImageFormat f, int64_t w, int64_t h, int64_t ch, int64_t bytes_per_sample) {
  DF_CHECK(w >= 1 && h >= 1, name, ": ", image_format_name(f), " header gives an empty image (", w, "x", h, ")");
  DF_CHECK(w <= kMaxImageSide && h <= kMaxImageSide, name, ": ", image_format_name(f), " image of ", w, "x", h,
           " is larger than the ", kMaxImageSide, " pixel limit per side");
  int64_t bytes = w * h * std::max<int64_t>(ch, 3) * bytes_per_sample;
  DF_CHECK(bytes <= kMaxImageBytes, name, ": ", image_format_name(f), " image of ", w, "x", h, "x", ch,
           " needs ", bytes, " bytes to decode, more than the ", kMaxImageBytes, "-byte limit per image");
}

// ---- PNG: chunks up to IEND with CRCs, IHDR fields, and the zlib stream's exact length ----

int64_t png_samples(int color_type) {
  switch (color_type) {
    case 0: return 1;
    case 2: return 3;
    case 3: return 1;
    case 4: return 2;
    case 6: return 4;
  }
  return 0;
}

bool png_depth_ok(int color_type, int depth) {
  switch (color_type) {
    case 0: return depth == 1 || depth == 2 || depth == 4 || depth == 8 || depth == 16;
    case 3: return depth == 1 || depth == 2 || depth == 4 || depth == 8;
    case 2: case 4: case 6: return depth == 8 || depth == 16;
  }
  return false;
}

// Bytes of filtered scanlines the image needs (with Adam7, the sum over its seven passes).
int64_t png_raw_bytes(int64_t w, int64_t h, int64_t bits_per_pixel, bool interlaced) {
  auto pass = [&](int64_t pw, int64_t ph) { return pw == 0 || ph == 0 ? 0 : ph * (1 + (pw * bits_per_pixel + 7) / 8); };
  if (!interlaced) return pass(w, h);
  static const int xo[7] = {0, 4, 0, 2, 0, 1, 0}, yo[7] = {0, 0, 4, 0, 2, 0, 1}, xs[7] = {8, 8, 4, 4, 2, 2, 1},
                   ys[7] = {8, 8, 8, 4, 4, 2, 2};
  int64_t total = 0;
  for (int p = 0; p < 7; ++p)
    total += pass(w > xo[p] ? (w - xo[p] + xs[p] - 1) / xs[p] : 0, h > yo[p] ? (h - yo[p] + ys[p] - 1) / ys[p] : 0);
  return total;
}

ImageHeader inspect_png(const uint8_t* b, size_t n, const std::string& name) {
  ImageHeader hd{ImageFormat::PNG};
  size_t pos = 8;
  bool seen_ihdr = false, seen_iend = false, trns = false;
  int depth = 0, color = 0, interlace = 0;
  std::vector<uint8_t> idat;
  while (!seen_iend) {
    DF_CHECK(pos + 12 <= n, name, ": PNG truncated: expected a chunk at byte ", pos, " (no IEND chunk), the file has ",
             n, " bytes");
    uint64_t len = be32(b + pos);
    char type[5] = {char(b[pos + 4]), char(b[pos + 5]), char(b[pos + 6]), char(b[pos + 7]), 0};
    DF_CHECK(len <= 0x7fffffffu && pos + 12 + len <= n, name, ": PNG truncated: chunk '", type, "' at byte ", pos,
             " needs ", len + 12, " bytes, ", n - pos, " left");
    const uint8_t* data = b + pos + 8;
    bool critical = (b[pos + 4] & 0x20) == 0;
    if (critical) {
      uint32_t crc = uint32_t(crc32(crc32(0L, Z_NULL, 0), b + pos + 4, uInt(len + 4)));
      DF_CHECK(crc == be32(data + len), name, ": PNG corrupt: bad CRC in chunk '", type, "' at byte ", pos);
    }
    std::string t(type);
    DF_CHECK(seen_ihdr || t == "IHDR", name, ": PNG corrupt: expected IHDR as the first chunk, got '", type, "'");
    if (t == "IHDR") {
      DF_CHECK(!seen_ihdr && len == 13, name, ": PNG corrupt: bad IHDR chunk (length ", len, ")");
      seen_ihdr = true;
      hd.width = be32(data);
      hd.height = be32(data + 4);
      depth = data[8];
      color = data[9];
      interlace = data[12];
      DF_CHECK(png_depth_ok(color, depth) && data[10] == 0 && data[11] == 0 && interlace <= 1, name,
               ": PNG corrupt: invalid IHDR (bit depth ", depth, ", color type ", color, ", compression ",
               int(data[10]), ", filter ", int(data[11]), ", interlace ", interlace, ")");
    } else if (t == "CgBI") {
      DF_FAIL(name, ": an Apple CgBI PNG (not a standard PNG); not supported");
    } else if (t == "tRNS") {
      trns = true;
    } else if (t == "IDAT") {
      idat.insert(idat.end(), data, data + len);
    } else if (t == "IEND") {
      seen_iend = true;
    }
    pos += 12 + len;
  }
  DF_CHECK(!idat.empty(), name, ": PNG corrupt: no IDAT chunk");
  hd.channels = png_samples(color) + (trns && color != 4 && color != 6 ? 1 : 0);
  check_size(name, hd.format, hd.width, hd.height, hd.channels, depth == 16 ? 2 : 1);
  // The compressed pixels must inflate to exactly the scanlines the header implies: a short stream is
  // a truncated image, and a longer one (a zlib bomb in a tiny image) is refused before stb sees it.
  int64_t want = png_raw_bytes(hd.width, hd.height, png_samples(color) * depth, interlace == 1);
  z_stream z{};
  DF_CHECK(inflateInit(&z) == Z_OK, name, ": PNG: zlib init failed");
  z.next_in = idat.data();
  z.avail_in = uInt(idat.size());
  uint8_t scratch[1 << 14];
  int64_t got = 0;
  int rc = Z_OK;
  while (rc == Z_OK && got <= want) {
    z.next_out = scratch;
    z.avail_out = sizeof scratch;
    rc = inflate(&z, Z_NO_FLUSH);
    got += int64_t(sizeof scratch - z.avail_out);
    if (rc == Z_BUF_ERROR && z.avail_in == 0) break;   // input exhausted before the stream's end
  }
  std::string msg = z.msg ? z.msg : "";
  inflateEnd(&z);
  DF_CHECK(got <= want, name, ": PNG corrupt: the image data inflates to more than the ", want,
           " bytes a ", hd.width, "x", hd.height, " image needs");
  DF_CHECK(rc == Z_STREAM_END, name, ": PNG truncated or corrupt: the compressed image data ",
           rc == Z_BUF_ERROR ? "ends early" : "is invalid (" + msg + ")", " after ", got, " of ", want, " bytes");
  DF_CHECK(got == want, name, ": PNG corrupt: the image data inflates to ", got, " bytes, the header implies ", want);
  return hd;
}

// ---- JPEG: marker segments from SOI through the entropy-coded scans to EOI ----

// Huffman tables: each is a class/index byte, 16 code counts summing to at most 256, then the symbols.
// Checked here because the stb_image this project builds against (Debian's 2.27) writes past its
// 257-entry size table when the counts sum to more (found by `make fuzz`).
void check_jpeg_dht(const uint8_t* seg, size_t len, const std::string& name, size_t at) {
  size_t p = 0;
  while (p < len) {
    DF_CHECK(p + 17 <= len, name, ": JPEG corrupt: Huffman table header cut short in the segment at byte ", at);
    int tc = seg[p] >> 4, th = seg[p] & 15;
    size_t symbols = 0;
    for (int i = 1; i <= 16; ++i) symbols += seg[p + i];
    DF_CHECK(tc <= 1 && th <= 3 && symbols <= 256, name, ": JPEG corrupt: Huffman table (class ", tc, ", index ", th,
             ") with ", symbols, " symbols in the segment at byte ", at, " (at most 256, class <= 1, index <= 3)");
    p += 17 + symbols;
    DF_CHECK(p <= len, name, ": JPEG corrupt: Huffman table symbols run past the segment at byte ", at);
  }
}

ImageHeader inspect_jpeg(const uint8_t* b, size_t n, const std::string& name) {
  ImageHeader hd{ImageFormat::JPEG};
  size_t pos = 2;
  bool sof = false;
  int64_t scans = 0;
  for (;;) {
    DF_CHECK(pos < n, name, ": JPEG truncated: no EOI marker (the file ends at byte ", n, ")");
    DF_CHECK(b[pos] == 0xFF, name, ": JPEG corrupt: expected a marker at byte ", pos, ", got ", hex2(b[pos]));
    while (pos < n && b[pos] == 0xFF) ++pos;   // fill bytes
    DF_CHECK(pos < n, name, ": JPEG truncated: no EOI marker (the file ends at byte ", n, ")");
    int m = b[pos++];
    if (m == 0xD9) break;                                       // EOI
    if ((m >= 0xD0 && m <= 0xD7) || m == 0x01) continue;        // RSTn, TEM: no length
    DF_CHECK(m != 0xD8 && m != 0x00, name, ": JPEG corrupt: unexpected marker ", hex2(m), " at byte ", pos - 2);
    DF_CHECK(pos + 2 <= n, name, ": JPEG truncated inside the marker at byte ", pos - 2);
    size_t len = be16(b + pos);
    DF_CHECK(len >= 2 && pos + len <= n, name, ": JPEG truncated: segment ", hex2(m), " at byte ",
             pos - 2, " needs ", len, " bytes, ", n - pos, " left");
    const uint8_t* seg = b + pos + 2;
    bool is_sof = m >= 0xC0 && m <= 0xCF && m != 0xC4 && m != 0xC8 && m != 0xCC;
    if (is_sof) {
      DF_CHECK(m == 0xC0 || m == 0xC1 || m == 0xC2, name, ": JPEG coding ", hex2(m),
               " (lossless, hierarchical or arithmetic) is not supported; baseline and progressive are");
      DF_CHECK(!sof && len >= 8, name, ": JPEG corrupt: ", sof ? "a second frame header" : "short frame header");
      sof = true;
      hd.height = be16(seg + 1);
      hd.width = be16(seg + 3);
      int comps = seg[5];
      DF_CHECK(seg[0] == 8 && (comps == 1 || comps == 3 || comps == 4) && len >= 8 + 3 * size_t(comps), name,
               ": JPEG corrupt or unsupported frame header (precision ", int(seg[0]), ", ", comps, " components)");
      hd.channels = comps >= 3 ? 3 : 1;
      check_size(name, hd.format, hd.width, hd.height, std::max(comps, 3), 1);
    }
    if (m == 0xC4) check_jpeg_dht(seg, len - 2, name, pos - 2);
    pos += len;
    if (m == 0xDA) {
      DF_CHECK(sof, name, ": JPEG corrupt: scan before the frame header");
      // Each progressive scan is a pass over the whole image: bound the passes times the pixels.
      ++scans;
      DF_CHECK(scans * hd.width * hd.height <= (int64_t(1) << 31), name, ": JPEG with more than ", scans - 1,
               " scans of ", hd.width, "x", hd.height, " pixels; refused (decoding cost)");
      // Entropy-coded data runs to the next marker that is not a stuffed 0xff00 or a restart marker.
      while (pos + 1 < n && !(b[pos] == 0xFF && b[pos + 1] != 0 && b[pos + 1] != 0xFF &&
                              !(b[pos + 1] >= 0xD0 && b[pos + 1] <= 0xD7)))
        ++pos;
      DF_CHECK(pos + 1 < n, name, ": JPEG truncated: the scan data ends without an EOI marker");
    }
  }
  DF_CHECK(sof && scans > 0, name, ": JPEG corrupt: ", sof ? "no scan" : "no frame header", " before EOI");
  return hd;
}

// ---- BMP: headers, and the pixel rows the header implies ----

ImageHeader inspect_bmp(const uint8_t* b, size_t n, const std::string& name) {
  ImageHeader hd{ImageFormat::BMP};
  DF_CHECK(n >= 26, name, ": BMP truncated: ", n, " bytes is shorter than its headers");
  uint64_t off = le32(b + 10), hsz = le32(b + 14);
  DF_CHECK(hsz == 12 || hsz == 40 || hsz == 56 || hsz == 108 || hsz == 124, name,
           ": BMP with an unsupported header of ", hsz, " bytes (expected 12, 40, 56, 108 or 124)");
  DF_CHECK(n >= 14 + hsz, name, ": BMP truncated: the ", hsz, "-byte info header runs past the end (", n,
           " bytes)");
  int64_t w, h;
  int bpp, compression = 0;
  if (hsz == 12) {
    w = le16(b + 18);
    h = le16(b + 20);
    bpp = int(le16(b + 24));
    DF_CHECK(le16(b + 22) == 1, name, ": BMP corrupt: planes must be 1");
  } else {
    w = int32_t(le32(b + 18));
    h = int32_t(le32(b + 22));   // negative: rows stored top-down
    DF_CHECK(le16(b + 26) == 1, name, ": BMP corrupt: planes must be 1");
    bpp = int(le16(b + 28));
    compression = int(le32(b + 30));
  }
  DF_CHECK(compression == 0 || compression == 3, name, ": BMP compression ", compression,
           compression == 1 || compression == 2 ? " (RLE)" : "", " is not supported (uncompressed or bitfields only)");
  DF_CHECK(bpp == 1 || bpp == 4 || bpp == 8 || bpp == 16 || bpp == 24 || bpp == 32, name, ": BMP with ", bpp,
           " bits per pixel is not supported");
  DF_CHECK(compression == 0 || bpp == 16 || bpp == 32, name, ": BMP corrupt: bitfields need 16 or 32 bits per pixel");
  int64_t rows = h < 0 ? -h : h;
  hd.width = w;
  hd.height = rows;
  hd.channels = bpp == 32 ? 4 : 3;
  check_size(name, hd.format, w, rows, 4, 1);
  DF_CHECK(off >= 14 + hsz && off <= n, name, ": BMP corrupt: pixel data offset ", off, " outside [", 14 + hsz, ", ",
           n, "]");
  int64_t stride = (w * bpp + 31) / 32 * 4;
  DF_CHECK(int64_t(n - off) >= stride * rows, name, ": BMP truncated: ", rows, " rows of ", stride,
           " bytes need ", stride * rows, " bytes from offset ", off, ", the file has ", n - off);
  return hd;
}

// ---- PNM: binary P5 (PGM) and P6 (PPM), the header grammar stb_image reads ----

ImageHeader inspect_pnm(const uint8_t* b, size_t n, const std::string& name) {
  ImageHeader hd{ImageFormat::PNM};
  hd.channels = b[1] == '6' ? 3 : 1;
  size_t pos = 2;
  auto skip_space = [&] {
    while (pos < n) {
      char c = char(b[pos]);
      if (c == '#') {
        while (pos < n && b[pos] != '\n' && b[pos] != '\r') ++pos;
      } else if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f') {
        ++pos;
      } else {
        break;
      }
    }
  };
  auto number = [&](const char* what) {
    skip_space();
    int64_t v = 0;
    size_t start = pos;
    while (pos < n && b[pos] >= '0' && b[pos] <= '9' && v <= 1000000) v = v * 10 + (b[pos++] - '0');
    DF_CHECK(pos > start, name, ": PPM/PGM corrupt or truncated: expected the ", what, " at byte ", start);
    DF_CHECK(v <= 1000000, name, ": PPM/PGM ", what, " too large at byte ", start);
    return v;
  };
  hd.width = number("width");
  hd.height = number("height");
  int64_t maxval = number("maximum value");
  DF_CHECK(maxval >= 1 && maxval <= 65535, name, ": PPM/PGM maximum value ", maxval, " outside [1, 65535]");
  int64_t bps = maxval > 255 ? 2 : 1;
  check_size(name, hd.format, hd.width, hd.height, hd.channels, bps);
  DF_CHECK(pos < n, name, ": PPM/PGM truncated after the header");
  ++pos;   // the single whitespace byte that ends the header
  int64_t need = hd.width * hd.height * hd.channels * bps;
  DF_CHECK(int64_t(n - pos) >= need, name, ": PPM/PGM truncated: ", hd.width, "x", hd.height, "x", hd.channels,
           " samples need ", need, " bytes after the header, the file has ", n - pos);
  return hd;
}

}  // namespace

ImageHeader inspect_image(const uint8_t* b, size_t n, const std::string& name) {
  if (starts(b, n, "\x89PNG\r\n\x1a\n", 8)) return inspect_png(b, n, name);
  if (n >= 3 && b[0] == 0xFF && b[1] == 0xD8 && b[2] == 0xFF) return inspect_jpeg(b, n, name);
  if (starts(b, n, "BM", 2)) return inspect_bmp(b, n, name);
  if (n >= 2 && b[0] == 'P' && (b[1] == '5' || b[1] == '6')) return inspect_pnm(b, n, name);
  const char* other = other_format(b, n);
  DF_FAIL(name, ": ", other ? std::string("a ") + other + " image" : std::string("not a recognised image (") +
          std::to_string(n) + " bytes)", "; supported formats are PNG, JPEG, BMP and binary PPM/PGM");
}

DecodedImage decode_image(const uint8_t* bytes, size_t size, const std::string& name, int want_channels,
                          int64_t expect_width, int64_t expect_height, const std::string& like) {
  DF_CHECK(want_channels >= 0 && want_channels <= 4, "decode_image ", name, ": want_channels must be 0..4, got ",
           want_channels);
  ImageHeader hd = inspect_image(bytes, size, name);
  DF_CHECK(expect_width == 0 || (hd.width == expect_width && hd.height == expect_height), name, ": expected ",
           expect_width, "x", expect_height, like.empty() ? "" : " like " + like, ", got ", hd.width, "x", hd.height);
  DF_CHECK(size <= size_t(INT_MAX), name, ": file of ", size, " bytes is too large to decode");
  int w = 0, h = 0, c = 0;
  stbi_uc* px = stbi_load_from_memory(bytes, int(size), &w, &h, &c, want_channels);
  DF_CHECK(px != nullptr, name, ": ", image_format_name(hd.format), " decoding failed (", stbi_failure_reason(), ")");
  std::unique_ptr<stbi_uc, void (*)(void*)> owner(px, &stbi_image_free);
  DF_CHECK(w == hd.width && h == hd.height, name, ": ", image_format_name(hd.format), " decoder read ", w, "x", h,
           ", the header says ", hd.width, "x", hd.height);
  DecodedImage out;
  out.width = w;
  out.height = h;
  out.channels = want_channels ? want_channels : c;
  out.pixels.assign(px, px + size_t(out.width) * size_t(out.height) * size_t(out.channels));
  return out;
}

}  // namespace df
