// Regression tests for issue 21's hostile inputs, one case per numbered problem: deep JSON (1), element
// counts past int64 (2), hangs and allocation bombs (5), image-folder errors (8), and library exceptions
// and undefined behaviour (9). Each input is the one from the report (fuzz/seeds.cpp builds them).
#include <doctest/doctest.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "fuzz/seeds.h"
#include "models/registry.h"
#include "ops/ops.h"
#include "tests/test_util.h"
#include "train/checkpoint.h"
#include "train/config.h"
#include "train/image_decode.h"
#include "train/json_safe.h"
#include "train/trainer.h"

using namespace df;
namespace fs = std::filesystem;
using df::fuzz::seed;
using df::test::contains;
using df::test::error_of;
using df::test::temp_dir;

namespace {

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary).write(bytes.data(), std::streamsize(bytes.size()));
}

std::string write_seed(const std::string& dir, const std::string& target, const std::string& name,
                       const std::string& file) {
  std::string path = dir + "/" + file;
  write_bytes(path, seed(target, name).bytes);
  return path;
}

std::vector<unsigned char> ramp(int w, int h, int comp) {
  std::vector<unsigned char> px(size_t(w * h * comp));
  for (size_t i = 0; i < px.size(); ++i) px[i] = (unsigned char)(i * 11 + 3);
  return px;
}

}  // namespace

TEST_CASE("hostile 1: deeply nested JSON in a checkpoint header, its metadata or a config is an error, not a crash") {
  std::string dir = temp_dir("hostile_json");
  std::string ck = write_seed(dir, "safetensors", "deep_header", "deep.safetensors");
  REQUIRE(seed("safetensors", "deep_header").bytes.size() > 200000);
  std::string msg = error_of([&] { load_safetensors(ck); });
  CHECK(contains(msg, ck));
  CHECK(contains(msg, "nested deeper than 64 levels"));
  CHECK(msg.size() < 400);   // the 200 KB value is not quoted
  // `dualflow sample --ckpt` with 100,000 levels inside the config metadata.
  std::string meta = write_seed(dir, "safetensors", "deep_metadata_config", "meta.safetensors");
  msg = error_of([&] { load_run(meta, Device::CPU); });
  CHECK(contains(msg, meta));
  CHECK(contains(msg, "dualflow.config"));
  CHECK(contains(msg, "nested deeper"));
  // `dualflow train` with the nesting under any key of the config.
  std::string cfg = write_seed(dir, "config", "deep_comment", "deep.json");
  msg = error_of([&] { load_config(cfg); });
  CHECK(contains(msg, cfg));
  CHECK(contains(msg, "nested deeper"));
  CHECK(contains(msg, "'comment'"));
  // The bound is exact: 64 levels parse, 65 do not, with the byte where it passed.
  CHECK(parse_json_bounded(fuzz::nested_json(64), "t").is_array());
  msg = error_of([&] { parse_json_bounded(fuzz::nested_json(65), "t"); });
  CHECK(contains(msg, "at byte 64"));
  // Strings holding brackets do not count; the other limits hold too.
  CHECK(parse_json_bounded("[\"" + std::string(100, '[') + "\"]", "t").size() == 1);
  CHECK(contains(error_of([&] { parse_json_bounded("[1, 2]", "t", 64, 3); }), "at most 3 bytes"));
  // An offending value is quoted by a short prefix only: a 1 MB dtype string gives a short message.
  std::string big = fuzz::safetensors_bytes(
      R"({"a":{"dtype":")" + std::string(1 << 20, 'Q') + R"(","shape":[2],"data_offsets":[0,8]}})", "12345678");
  write_bytes(ck, big);
  msg = error_of([&] { load_safetensors(ck); });
  CHECK(contains(msg, "unsupported dtype"));
  CHECK(msg.size() < 400);
  // A good config and a good training checkpoint still load.
  write_bytes(cfg, seed("config", "valid_unet").bytes);
  CHECK(load_config(cfg).model["name"] == "UNet-tiny");
  std::string good = write_seed(dir, "safetensors", "valid_train_ckpt", "good.safetensors");
  LoadedRun run = load_run(good, Device::CPU);
  CHECK(run.channels == 1);
  CHECK(run.resolution == 8);
  fs::remove_all(dir);
}

TEST_CASE("hostile 2: element counts past int64 or 2^48 are errors wherever a shape is made") {
  const int64_t p60 = int64_t(1) << 60, p40 = int64_t(1) << 40;
  std::string msg = error_of([&] { sum(ones({16, p60 + 1}), {1}); });   // was a heap overflow
  CHECK(contains(msg, "2^48"));
  CHECK(contains(msg, "1152921504606846977"));
  CHECK(contains(error_of([&] { empty({p40, p40, 16}); }), "2^48"));   // 2^84 elements wrapped to 0
  CHECK(contains(error_of([&] { empty({int64_t(1) << 46, 3}, DType::F64); }), "bytes"));
  CHECK(contains(error_of([&] { empty({3, -2}); }), "negative dimension"));
  // A zero dimension makes a huge product empty, not too large.
  CHECK(empty({0, int64_t(1) << 62, int64_t(1) << 62}).numel() == 0);
  // Reshape, broadcast and raw views check through the same function.
  CHECK(contains(error_of([&] { reshape(zeros({0}), {-1, int64_t(1) << 62, 8}); }), "reshape"));
  CHECK(contains(error_of([&] { broadcast_to(zeros({1, 1}), {p40, p40}); }), "2^48"));
  CHECK(contains(error_of([&] { add(zeros({1, 2}), zeros({3, 1})).numel(); }), "(no error)"));
  Tensor base = zeros({4});
  CHECK(contains(error_of([&] { make_view(base, {5}, {1}, 0); }), "outside the storage of 4 elements"));
  CHECK(contains(error_of([&] { make_view(base, {2}, {3}, 1); }), "outside the storage"));
  CHECK(contains(error_of([&] { make_view(base, {2}, {p60 * 4}, 0); }), "outside the storage"));
  CHECK(make_view(base, {4}, {-1}, 3).numel() == 4);   // a reversed view stays inside
  CHECK(make_view(base, {0, 7}, {1, 1}, 0).numel() == 0);
  // The checkpoint loader: shape [2^50, 2^50, 2^28] with 0 bytes of data.
  std::string dir = temp_dir("hostile_shape");
  std::string ck = write_seed(dir, "safetensors", "huge_shape", "huge.safetensors");
  msg = error_of([&] { load_safetensors(ck); });
  CHECK(contains(msg, ck));
  CHECK(contains(msg, "tensor 'a'"));
  CHECK(contains(msg, "2^48"));
  fs::remove_all(dir);
}

TEST_CASE("hostile 5: formats that hang or over-allocate, 2^53 depths and gzip bombs are refused up front") {
  std::string dir = temp_dir("hostile_bombs");
  // The truncated run-length .hdr looped forever in stb; the PSD allocated 1 GB from 808 bytes. Both
  // are refused by extension in a folder, and by content under an accepted extension.
  fs::create_directories(dir + "/f");
  std::string hdr = write_seed(dir + "/f", "image", "hdr_truncated_rle", "x.hdr");
  std::string msg = error_of([&] { load_image_folder(dir + "/f"); });
  CHECK(contains(msg, hdr));
  CHECK(contains(msg, ".hdr images are not supported"));
  fs::remove(hdr);
  std::string png = write_seed(dir + "/f", "image", "hdr_truncated_rle", "x.png");
  msg = error_of([&] { load_image_folder(dir + "/f"); });
  CHECK(contains(msg, png));
  CHECK(contains(msg, "a Radiance HDR image; supported formats are PNG, JPEG, BMP and binary PPM/PGM"));
  write_bytes(png, seed("image", "psd_bomb").bytes);
  CHECK(contains(error_of([&] { load_image_folder(dir + "/f"); }), "a PSD image"));
  // Dimensions are capped before decoding (and w * h * 3 no longer overflows an int).
  write_bytes(png, seed("image", "bmp_40000_square").bytes);
  msg = error_of([&] { load_image_folder(dir + "/f"); });
  CHECK(contains(msg, "BMP image of 40000x40000 is larger than the 16384 pixel limit"));
  // Depths and block counts of 2^53 from a config or from checkpoint metadata.
  std::string cfg = write_seed(dir, "config", "depth_2p53", "c.json");
  msg = error_of([&] { model_config_from_json(load_config(cfg).model, 3, 32); });
  CHECK(contains(msg, "'depth'"));
  CHECK(contains(msg, "[0, 1024]"));
  write_bytes(cfg, seed("config", "res_blocks_2p53").bytes);
  CHECK(contains(error_of([&] { model_config_from_json(load_config(cfg).model, 3, 32); }), "'res_blocks'"));
  std::string ck = write_seed(dir, "safetensors", "huge_res_blocks_metadata", "m.safetensors");
  msg = error_of([&] { load_run(ck, Device::CPU); });
  CHECK(contains(msg, ck + ": metadata 'dualflow.model_config': model config: key 'res_blocks'"));
  // Within every per-key bound, the total size is bounded too.
  msg = error_of([&] {
    model_config_from_json(nlohmann::json{{"arch", "dit"}, {"width", 16384}, {"depth", 1024}}, 3, 32);
  });
  CHECK(contains(msg, "parameters"));
  // gzip output is capped (the limit is configurable; the message says how).
  LoadLimits saved = load_limits();
  load_limits().max_file_bytes = 1 << 20;
  std::string gz = dir + "/bomb.bin.gz";
  write_bytes(gz, fuzz::gzip_bytes(std::string(size_t(2) << 20, '\0')));
  msg = error_of([&] { read_file_maybe_gz(gz); });
  CHECK(contains(msg, gz));
  CHECK(contains(msg, "decompresses to more than 1048576 bytes"));
  CHECK(contains(msg, "DF_MAX_FILE_BYTES"));
  CHECK(contains(error_of([&] { load_cifar10({gz}); }), "more than 1048576"));
  write_bytes(gz, fuzz::gzip_bytes(std::string(size_t(1) << 20, '\x07')));   // exactly at the limit
  CHECK(read_file_maybe_gz(gz).size() == size_t(1) << 20);
  std::string plain = dir + "/plain.bin";
  write_bytes(plain, std::string((size_t(1) << 20) + 1, 'p'));
  CHECK(contains(error_of([&] { read_file_maybe_gz(plain); }), "more than 1048576"));
  load_limits() = saved;
  fs::remove_all(dir);
}

TEST_CASE("hostile 8: image folders read top-down BMPs; truncated files are errors naming the file and format") {
  std::string dir = temp_dir("hostile_folder");
  const int w = 5, h = 3;
  std::vector<unsigned char> rgb = ramp(w, h, 3);
  fs::create_directories(dir + "/ok");
  write_bytes(dir + "/ok/a_bottom_up.bmp", fuzz::bmp_bytes(w, h, rgb));
  write_bytes(dir + "/ok/b_top_down.bmp", fuzz::bmp_top_down_bytes(w, h, rgb));
  write_bytes(dir + "/ok/c.png", fuzz::png_bytes(w, h, 3, rgb));
  write_bytes(dir + "/ok/d.ppm", fuzz::ppm_bytes(w, h, 3, rgb));
  ImageDataset ds = load_image_folder(dir + "/ok");   // failed with "vector::reserve" before
  REQUIRE(ds.size() == 4);
  REQUIRE(ds.channels() == 3);
  REQUIRE(ds.height() == h);
  REQUIRE(ds.width() == w);
  // Every lossless format gives the source pixels exactly, row 0 at the top.
  for (int64_t i = 0; i < 4; ++i) {
    CAPTURE(i);
    const uint8_t* img = ds.image(i);
    int bad = 0;
    for (int c = 0; c < 3; ++c)
      for (int p = 0; p < w * h; ++p) bad += img[c * w * h + p] != rgb[size_t(p * 3 + c)];
    CHECK(bad == 0);
  }
  // A truncated file of each format in an otherwise good folder: the error names it and its format.
  struct Case { const char* seed; const char* file; const char* format; };
  for (Case c : {Case{"ppm_truncated", "t.ppm", "PPM/PGM truncated"}, Case{"bmp_truncated", "t.bmp", "BMP truncated"},
                 Case{"png_truncated", "t.png", "PNG truncated"}, Case{"jpg_truncated", "t.jpg", "JPEG truncated"}}) {
    CAPTURE(c.seed);
    fs::create_directories(dir + "/bad");
    write_bytes(dir + "/bad/a.ppm", fuzz::ppm_bytes(16, 16, 3, ramp(16, 16, 3)));
    std::string path = write_seed(dir + "/bad", "image", c.seed, c.file);
    std::string msg = error_of([&] { load_image_folder(dir + "/bad"); });
    CAPTURE(msg);
    CHECK(contains(msg, path));
    CHECK(contains(msg, c.format));
    fs::remove_all(dir + "/bad");
  }
  // TGA (no signature, often truncated) is no longer read, and says so.
  fs::create_directories(dir + "/tga");
  std::string tga = write_seed(dir + "/tga", "image", "tga_truncated", "x.tga");
  CHECK(contains(error_of([&] { load_image_folder(dir + "/tga"); }), tga + ": .tga images are not supported"));
  // A corrupted PNG byte fails its CRC; a size mismatch is found before decoding.
  std::string good_png = fuzz::png_bytes(w, h, 3, rgb);
  std::string flipped = good_png;
  flipped[40] ^= 1;
  CHECK(contains(error_of([&] { decode_image((const uint8_t*)flipped.data(), flipped.size(), "f.png", 0); }),
                 "bad CRC"));
  std::string small = fuzz::png_bytes(2, 2, 3, ramp(2, 2, 3));
  CHECK(contains(error_of([&] { decode_image((const uint8_t*)small.data(), small.size(), "s.png", 3, w, h, "a.png"); }),
                 "expected 5x3 like a.png, got 2x2"));
  fs::remove_all(dir);
}

TEST_CASE("hostile 9: library exceptions carry the file and key; out-of-range numbers cause no undefined behaviour") {
  std::string dir = temp_dir("hostile_misc");
  // [json.exception.out_of_range.406] used to escape with no file named.
  std::string cfg = write_seed(dir, "config", "lr_1e999", "lr.json");
  std::string msg = error_of([&] { load_config(cfg); });
  CHECK(contains(msg, cfg));
  CHECK(contains(msg, "'optimizer.lr'"));
  CHECK(contains(msg, "1e999"));
  std::string ck = write_seed(dir, "safetensors", "number_overflow", "n.safetensors");
  CHECK(contains(error_of([&] { load_safetensors(ck); }), "key 'a.shape'"));
  // Float-to-int conversion of model config numbers is range-checked first (1e300 was UB).
  write_bytes(cfg, seed("config", "depth_1e300").bytes);
  msg = error_of([&] { model_config_from_json(load_config(cfg).model, 3, 32); });
  CHECK(contains(msg, "'depth': expected an integer, got 1e+300"));
  CHECK(contains(error_of([&] { model_config_from_json(nlohmann::json{{"arch", "dit"}, {"depth", 2.5}}, 3, 32); }),
                 "expected an integer"));
  CHECK(model_config_from_json(nlohmann::json{{"arch", "dit"}, {"depth", 2.0}}, 3, 32).dit.depth == 2);
  // unet.cpp:60 shifted by the level count: 18 levels (from a config) or 100 (a struct) are errors.
  write_bytes(cfg, seed("config", "levels_100").bytes);
  CHECK(contains(error_of([&] { model_config_from_json(load_config(cfg).model, 3, 32); }), "channel_mults"));
  UNetConfig u;
  u.channel_mults.assign(100, 1);
  Generator g(0);
  CHECK(contains(error_of([&] { UNet net(u, g); }), "at most 16 levels"));
  // datasets.cpp:199: n * rows * cols overflowed int64 for 2^32-1 images of 65536 x 65536.
  const std::string& idx = seed("idx", "count_overflow").bytes;
  size_t split = size_t((unsigned char)idx[0]) | size_t((unsigned char)idx[1]) << 8;
  write_bytes(dir + "/im", idx.substr(2, split));
  write_bytes(dir + "/lb", idx.substr(2 + split));
  msg = error_of([&] { load_idx(dir + "/im", dir + "/lb"); });
  CHECK(contains(msg, dir + "/im"));
  CHECK(contains(msg, "header says 4294967295 images of 65536x65536 (4294967296 bytes each"));
  fs::remove_all(dir);
}

TEST_CASE("hostile (found by fuzzing): a JPEG Huffman table of 320 symbols, an overflow inside stb 2.27, is refused") {
  const std::string& jpg = seed("image", "jpg_dht_320_symbols").bytes;
  std::string msg = error_of([&] { decode_image((const uint8_t*)jpg.data(), jpg.size(), "dht.jpg", 3); });
  CHECK(contains(msg, "dht.jpg: JPEG corrupt: Huffman table"));
  CHECK(contains(msg, "with 320 symbols"));
  // The same file with its counts restored decodes.
  const std::string& good = seed("image", "valid_jpg").bytes;
  CHECK(decode_image((const uint8_t*)good.data(), good.size(), "ok.jpg", 3).pixels.size() == 8 * 8 * 3);
}
