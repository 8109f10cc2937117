// Seed and regression inputs for the fuzz targets (see seeds.h): small valid files of every accepted
// kind, and the crashing, hanging or over-allocating inputs reported in issue 21, rebuilt byte for byte.
#include "fuzz/seeds.h"

#include <zlib.h>

#include <cstring>
#include <fstream>
#include <iterator>

#include <nlohmann/json.hpp>
#include <stb/stb_image_write.h>

#include "core/error.h"
#include "fuzz/targets.h"
#include "models/registry.h"
#include "train/checkpoint.h"

namespace df::fuzz {

namespace {

void append_to_string(void* ctx, void* data, int size) {
  static_cast<std::string*>(ctx)->append(static_cast<const char*>(data), size_t(size));
}

std::string le32(uint32_t v) { return std::string{char(v), char(v >> 8), char(v >> 16), char(v >> 24)}; }
std::string le16(uint32_t v) { return std::string{char(v), char(v >> 8)}; }
std::string be32(uint32_t v) { return std::string{char(v >> 24), char(v >> 16), char(v >> 8), char(v)}; }
std::string be16(uint32_t v) { return std::string{char(v >> 8), char(v)}; }

std::vector<unsigned char> gradient(int w, int h, int comp) {
  std::vector<unsigned char> px(size_t(w * h * comp));
  for (size_t i = 0; i < px.size(); ++i) px[i] = (unsigned char)(i * 37 + i / 5);
  return px;
}

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// A small but complete training checkpoint (what `dualflow sample --ckpt` reads), with the given
// metadata overrides: the EMA weights of a tiny U-Net on 1x8x8 images.
std::string train_checkpoint(const std::map<std::string, std::string>& overrides) {
  const char* model = R"({"name":"UNet-tiny","base_channels":8,"norm_groups":4,"attn_resolutions":[]})";
  std::map<std::string, std::string> md = {
      {"format", "dualflow-train-v1"},
      {"dualflow.config", std::string(R"({"model":)") + model + R"(,"objective":{"name":"trigflow"},)" +
                              R"("data":{"name":"folder","path":"","batch":4},"device":"cpu"})"},
      {"dualflow.model_config", model},
      {"dualflow.image_shape", "[1,8,8]"},
      {"dualflow.step", "0"},
      {"dualflow.objective", "trigflow"},
  };
  for (const auto& [k, v] : overrides) md[k] = v;
  Generator g(0);
  auto net = make_model(model_config_from_json(nlohmann::json::parse(model), 1, 8), g);
  NamedTensors ts;
  for (const auto& [n, t] : net->named_parameters()) ts.emplace_back("ema." + n, t);
  std::string path = scratch_dir() + "/seed.safetensors";
  save_safetensors(path, ts, md);
  return read_all(path);
}

std::vector<Seed> build_seeds() {
  std::vector<Seed> s;
  auto add = [&](const char* target, const char* name, std::string bytes, bool hostile) {
    s.push_back({target, name, std::move(bytes), hostile});
  };

  // ---- safetensors ----
  add("safetensors", "valid_small", safetensors_bytes(
      R"({"__metadata__":{"k":"v"},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
      R"("b":{"dtype":"BF16","shape":[1,2],"data_offsets":[8,12]}})", std::string("\0\0\x80\x3f\0\0\0\xc0\x80\x3f\0\xc0", 12)),
      false);
  add("safetensors", "valid_train_ckpt", train_checkpoint({}), false);
  // Issue 21, 1: a 200 KB header, a tensor entry of 100,000 nested arrays (SIGSEGV in `dualflow sample
  // --ckpt`: the parser copes, the error message's dump of the entry recursed until the stack ran out).
  add("safetensors", "deep_header", safetensors_bytes("{\"a\":" + nested_json(100000) + "}", ""), true);
  // Issue 21, 2: shape [2^50, 2^50, 2^28] with 0 bytes of data (the 128-bit size check overflowed).
  add("safetensors", "huge_shape", safetensors_bytes(
      R"({"a":{"dtype":"F32","shape":[1125899906842624,1125899906842624,268435456],"data_offsets":[0,0]}})", ""), true);
  add("safetensors", "number_overflow", safetensors_bytes(R"({"a":{"dtype":"F32","shape":[1e999],"data_offsets":[0,4]}})",
      "abcd"), true);
  // Issue 21, 1 and 5: deep JSON and a 2^53 depth in a training checkpoint's metadata.
  add("safetensors", "deep_metadata_config", train_checkpoint({{"dualflow.config", nested_json(100000)}}), true);
  add("safetensors", "huge_res_blocks_metadata", train_checkpoint({{"dualflow.model_config",
      R"({"name":"UNet-tiny","res_blocks":9007199254740993,"attn_resolutions":[]})"}}), true);

  // ---- config ----
  const std::string good_config = R"({"model":{"name":"UNet-tiny","base_channels":8,"norm_groups":4,"attn_resolutions":[]},)"
                                  R"("objective":{"name":"trigflow"},"data":{"name":"folder","batch":4},)"
                                  R"("optimizer":{"name":"adam","lr":0.001},"schedule":{"steps":10},"device":"cpu"})";
  add("config", "valid_unet", good_config, false);
  add("config", "valid_dit", R"({"model":{"arch":"dit","patch":2,"width":32,"depth":2,"heads":2,"freq_dim":16},)"
                             R"("objective":{"name":"sct"},"data":{"name":"folder","batch":2},"ema":{"decay":0.9}})",
      false);
  add("config", "deep_comment", R"({"model":{"name":"UNet-tiny"},"objective":{"name":"trigflow"},"comment":)" +
      nested_json(100000) + "}", true);
  add("config", "lr_1e999", R"({"model":{"name":"UNet-tiny"},"objective":{"name":"trigflow"},"optimizer":{"lr":1e999}})",
      true);
  add("config", "depth_2p53", R"({"model":{"arch":"dit","depth":9007199254740993},"objective":{"name":"trigflow"}})",
      true);
  add("config", "depth_1e300", R"({"model":{"arch":"dit","depth":1e300},"objective":{"name":"trigflow"}})", true);
  add("config", "res_blocks_2p53", R"({"model":{"name":"UNet-tiny","res_blocks":9007199254740992},)"
                                   R"("objective":{"name":"trigflow"}})", true);
  add("config", "levels_100", R"({"model":{"name":"UNet-tiny","channel_mults":[1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1]},)"
                              R"("objective":{"name":"trigflow"}})", true);

  // ---- IDX: two split bytes, then the images file, then the labels file ----
  {
    std::string im = be32(0x803) + be32(3) + be32(4) + be32(4) + std::string(48, '\x40');
    std::string lb = be32(0x801) + be32(3) + std::string("\x01\x02\x03", 3);
    add("idx", "valid_3x4x4", le16(uint32_t(im.size())) + im + lb, false);
    // Issue 21, 9 (datasets.cpp:199): 2^32-1 images of 65536x65536 overflow n * rows * cols.
    std::string big = be32(0x803) + be32(0xffffffffu) + be32(65536) + be32(65536);
    add("idx", "count_overflow", le16(uint32_t(big.size())) + big + lb, true);
  }

  // ---- CIFAR-10 ----
  {
    std::string rec = std::string(1, '\x03') + std::string(3072, '\x7f');
    add("cifar", "valid_2_records", rec + rec, false);
    add("cifar", "truncated_record", rec + rec.substr(0, 100), true);
  }

  // ---- images (the image and folder targets share them) ----
  auto image = [&](const char* name, const std::string& bytes, bool hostile) {
    add("image", name, bytes, hostile);
    add("folder", name, bytes, hostile);
  };
  image("valid_png_rgb", png_bytes(5, 4, 3, gradient(5, 4, 3)), false);
  image("valid_png_gray_alpha", png_bytes(4, 4, 2, gradient(4, 4, 2)), false);
  image("valid_jpg", jpg_bytes(8, 8, 3, gradient(8, 8, 3)), false);
  image("valid_bmp", bmp_bytes(5, 3, gradient(5, 3, 3)), false);
  // Issue 21, 8: a valid top-down BMP (stb's info reported a negative height).
  image("valid_bmp_top_down", bmp_top_down_bytes(5, 3, gradient(5, 3, 3)), false);
  image("valid_ppm", ppm_bytes(3, 2, 3, gradient(3, 2, 3)), false);
  image("valid_pgm", ppm_bytes(4, 4, 1, gradient(4, 4, 1)), false);
  // Issue 21, 5: a truncated run-length .hdr (stb looped forever) and an 808-byte PSD claiming
  // 16777216 x 16 pixels (1 GB allocated).
  image("hdr_truncated_rle", "#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y 8 +X 16\n" + std::string("\x02\x02\x00\x10\x85", 5),
        true);
  {
    std::string psd = "8BPS" + be16(1) + std::string(6, '\0') + be16(3) + be32(16) + be32(16777216) + be16(8) +
                      be16(3) + be32(0) + be32(0) + be32(0) + be16(0);
    psd.resize(808, '\0');
    image("psd_bomb", psd, true);
  }
  // Issue 21, 8: truncated files that stb accepted as data.
  {
    std::string ppm = ppm_bytes(16, 16, 3, gradient(16, 16, 3));
    image("ppm_truncated", ppm.substr(0, ppm.size() - 100), true);
    std::string bmp = bmp_bytes(16, 16, gradient(16, 16, 3));
    image("bmp_truncated", bmp.substr(0, bmp.size() - 100), true);
    std::string png = png_bytes(16, 16, 3, gradient(16, 16, 3));
    image("png_truncated", png.substr(0, png.size() - 20), true);
    std::string jpg = jpg_bytes(16, 16, 3, gradient(16, 16, 3));
    image("jpg_truncated", jpg.substr(0, jpg.size() * 2 / 3), true);
    std::string tga = std::string("\0\0\x02", 3) + std::string(9, '\0') + le16(16) + le16(16) + "\x18\x00";
    image("tga_truncated", tga + std::string(100, '\x55'), true);
    // Issue 21, 9 (datasets.cpp:325): a BMP header claiming 40000 x 40000 (int overflow of w * h * 3).
    std::string huge = bmp_bytes(2, 2, gradient(2, 2, 3));
    std::memcpy(&huge[18], le32(40000).data(), 4);
    std::memcpy(&huge[22], le32(40000).data(), 4);
    image("bmp_40000_square", huge, true);
    // Found by `make fuzz`: a Huffman table whose 16 counts sum to 320 makes Debian's stb_image 2.27
    // write past its 257-entry size table (UBSan: stb_image.h:1990).
    std::string dht = jpg_bytes(8, 8, 3, gradient(8, 8, 3));
    size_t at = dht.find("\xff\xc4");
    DF_CHECK(at != std::string::npos && at + 21 < dht.size(), "seeds: no DHT segment in the JPEG");
    for (size_t i = at + 5; i < at + 21; ++i) dht[i] = '\x14';
    image("jpg_dht_320_symbols", dht, true);
  }

  // ---- gzip ----
  add("gzip", "valid", gzip_bytes("hello gzip " + std::string(1000, 'x')), false);
  {
    std::string gz = gzip_bytes(std::string(100000, 'y'));
    add("gzip", "truncated", gz.substr(0, gz.size() - 10), true);
    // 80 MB of zeros in 80 KB: over the fuzz harness's 64 MB limit (the default limit is 2 GiB).
    add("gzip", "bomb_80mb", gzip_bytes(std::string(80u << 20, '\0')), true);
  }
  return s;
}

}  // namespace

std::string png_bytes(int w, int h, int comp, const std::vector<unsigned char>& px) {
  std::string out;
  DF_CHECK(stbi_write_png_to_func(append_to_string, &out, w, h, comp, px.data(), w * comp), "png_bytes failed");
  return out;
}

std::string jpg_bytes(int w, int h, int comp, const std::vector<unsigned char>& px) {
  std::string out;
  DF_CHECK(stbi_write_jpg_to_func(append_to_string, &out, w, h, comp, px.data(), 90), "jpg_bytes failed");
  return out;
}

std::string bmp_bytes(int w, int h, const std::vector<unsigned char>& rgb) {
  std::string out;
  DF_CHECK(stbi_write_bmp_to_func(append_to_string, &out, w, h, 3, rgb.data()), "bmp_bytes failed");
  return out;
}

std::string bmp_top_down_bytes(int w, int h, const std::vector<unsigned char>& rgb) {
  int stride = (w * 3 + 3) / 4 * 4;
  std::string px;
  for (int y = 0; y < h; ++y) {   // first row stored first; BGR order
    for (int x = 0; x < w; ++x)
      for (int c = 2; c >= 0; --c) px += char(rgb[size_t((y * w + x) * 3 + c)]);
    px.append(size_t(stride - w * 3), '\0');
  }
  std::string info = le32(40) + le32(uint32_t(w)) + le32(uint32_t(-h)) + le16(1) + le16(24) + le32(0) +
                     le32(uint32_t(px.size())) + le32(2835) + le32(2835) + le32(0) + le32(0);
  return "BM" + le32(uint32_t(14 + info.size() + px.size())) + le32(0) + le32(uint32_t(14 + info.size())) + info + px;
}

std::string ppm_bytes(int w, int h, int comp, const std::vector<unsigned char>& px) {
  return std::string(comp == 3 ? "P6" : "P5") + "\n# a comment\n" + std::to_string(w) + " " + std::to_string(h) +
         "\n255\n" + std::string(px.begin(), px.end());
}

std::string gzip_bytes(const std::string& data) {
  z_stream z{};
  DF_CHECK(deflateInit2(&z, 9, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) == Z_OK, "gzip_bytes: init");
  std::string out(deflateBound(&z, uLong(data.size())) + 32, '\0');
  z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(data.data()));
  z.avail_in = uInt(data.size());
  z.next_out = reinterpret_cast<Bytef*>(&out[0]);
  z.avail_out = uInt(out.size());
  int rc = deflate(&z, Z_FINISH);
  out.resize(z.total_out);
  deflateEnd(&z);
  DF_CHECK(rc == Z_STREAM_END, "gzip_bytes: deflate failed");
  return out;
}

std::string safetensors_bytes(const std::string& header, const std::string& data) {
  uint64_t n = header.size();
  std::string out(8, '\0');
  std::memcpy(&out[0], &n, 8);
  return out + header + data;
}

std::string nested_json(int levels) { return std::string(size_t(levels), '[') + std::string(size_t(levels), ']'); }

const std::vector<Seed>& seeds() {
  static const std::vector<Seed> all = build_seeds();
  return all;
}

const Seed& seed(const std::string& target, const std::string& name) {
  for (const Seed& s : seeds())
    if (s.target == target && s.name == name) return s;
  DF_FAIL("fuzz: no seed ", target, "/", name);
}

}  // namespace df::fuzz
