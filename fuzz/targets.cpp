// The fuzz targets behind `make fuzz` and the test suite's mutation loop: inputs are written to files
// in a private scratch folder and read through the same public loaders the trainer and CLI use.
#include "fuzz/targets.h"

#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <typeinfo>

#include "core/error.h"
#include "models/registry.h"
#include "train/checkpoint.h"
#include "train/config.h"
#include "train/datasets.h"
#include "train/image_decode.h"
#include "train/json_safe.h"
#include "train/trainer.h"

namespace df::fuzz {

namespace fs = std::filesystem;

namespace {

// Models bigger than this are not built by the harness (building is slow, not unsafe: the limits
// themselves are tested directly); it keeps each execution in milliseconds.
constexpr double kHarnessMaxParameters = 3e5;

void write_file(const std::string& path, const uint8_t* data, size_t size) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(data), std::streamsize(size));
  DF_CHECK(out.good(), "fuzz: cannot write ", path);
}

// Eight 8x8 gray PGM images: the data set the config target trains on (small, so Trainer
// construction takes milliseconds whatever model the input asks for within kHarnessMaxParameters).
const std::string& tiny_folder() {
  static const std::string dir = [] {
    std::string d = scratch_dir() + "/tiny_data";
    fs::create_directories(d);
    for (int i = 0; i < 8; ++i) {
      std::string img = "P5 8 8 255\n" + std::string(64, char(i * 30));
      write_file(d + "/" + std::to_string(i) + ".pgm", reinterpret_cast<const uint8_t*>(img.data()), img.size());
    }
    return d;
  }();
  return dir;
}

void run_safetensors(const uint8_t* data, size_t size) {
  std::string path = scratch_dir() + "/in.safetensors";
  write_file(path, data, size);
  Checkpoint ck = load_safetensors(path);
  for (const auto& [name, t] : ck.tensors) (void)t.numel();
  // A training checkpoint goes on to load_run (what `dualflow sample --ckpt` does), if its model is small.
  auto fmt = ck.metadata.find("format");
  auto mc = ck.metadata.find("dualflow.model_config");
  auto shape = ck.metadata.find("dualflow.image_shape");
  if (fmt == ck.metadata.end() || fmt->second != "dualflow-train-v1" || mc == ck.metadata.end() ||
      shape == ck.metadata.end())
    return;
  nlohmann::json sh = parse_json_bounded(shape->second, "fuzz: image_shape");
  if (!sh.is_array() || sh.size() != 3 || !sh[0].is_number_integer() || !sh[1].is_number_integer()) return;
  ModelConfig m = model_config_from_json(parse_json_bounded(mc->second, "fuzz: model_config"),
                                         sh[0].get<int64_t>(), sh[1].get<int64_t>());
  if (estimate_parameter_count(m) > kHarnessMaxParameters) return;
  LoadedRun run = load_run(path, Device::CPU);
  (void)run;
}

void run_config(const uint8_t* data, size_t size) {
  std::string path = scratch_dir() + "/config.json";
  write_file(path, data, size);
  TrainConfig cfg = load_config(path);
  // The data set is replaced by the tiny folder (the loaders have targets of their own), and the run
  // stays on the CPU in the scratch folder; everything else is the input's.
  cfg.data.name = "folder";
  cfg.data.path = tiny_folder();
  cfg.device = "cpu";
  if (cfg.data.batch > 8) cfg.data.batch = 8;
  ModelConfig m = model_config_from_json(cfg.model, 1, 8);
  if (estimate_parameter_count(m) > kHarnessMaxParameters) return;
  TrainOptions opt;
  opt.out_dir = scratch_dir() + "/run";
  opt.verbose = false;
  opt.device = "cpu";
  Trainer trainer(cfg, opt);
  (void)trainer.total_steps();
}

// The input is split into the two IDX files at a point given by its first two bytes.
void run_idx(const uint8_t* data, size_t size) {
  if (size < 2) return;
  size_t rest = size - 2, split = (size_t(data[0]) | size_t(data[1]) << 8) % (rest + 1);
  std::string im = scratch_dir() + "/images-idx3-ubyte", lb = scratch_dir() + "/labels-idx1-ubyte";
  write_file(im, data + 2, split);
  write_file(lb, data + 2 + split, rest - split);
  ImageDataset ds = load_idx(im, lb, /*pad_to_32=*/size % 2 == 0);
  if (ds.size() > 0) (void)ds.batch({0, ds.size() - 1});
}

void run_cifar(const uint8_t* data, size_t size) {
  std::string path = scratch_dir() + "/data_batch_1.bin";
  write_file(path, data, size);
  ImageDataset ds = load_cifar10({path});
  if (ds.size() > 0) (void)ds.batch({ds.size() - 1});
}

void run_image(const uint8_t* data, size_t size) {
  DecodedImage img = decode_image(data, size, "fuzz input", 0);
  DF_CHECK(img.pixels.size() == size_t(img.width * img.height * img.channels), "fuzz: decoded size mismatch");
}

void run_folder(const uint8_t* data, size_t size) {
  std::string dir = scratch_dir() + "/folder";
  fs::remove_all(dir);
  fs::create_directories(dir + "/a");
  fs::create_directories(dir + "/b");
  write_file(dir + "/a/x.png", data, size);
  write_file(dir + "/b/y.jpg", data, size);
  ImageDataset ds = load_image_folder(dir, size % 3 == 0 ? 0 : size % 3 == 1 ? 1 : 3);
  DF_CHECK(ds.size() == 2 && ds.label(1) == 1, "fuzz: folder of 2 images read as ", ds.size());
}

void run_gzip(const uint8_t* data, size_t size) {
  std::string path = scratch_dir() + "/in.bin.gz";
  write_file(path, data, size);
  std::vector<uint8_t> out = read_file_maybe_gz(path);
  DF_CHECK(out.size() <= load_limits().max_file_bytes, "fuzz: gzip output past the limit");
}

}  // namespace

namespace {
// Removes the scratch folder at exit (a crash leaves it, with the input that caused it).
struct ScratchCleanup {
  std::string dir;
  ~ScratchCleanup() {
    std::error_code ec;
    if (!dir.empty()) fs::remove_all(dir, ec);
  }
};
}  // namespace

const std::string& scratch_dir() {
  static ScratchCleanup cleanup;
  static const std::string dir = [] {
    std::string d = (fs::temp_directory_path() / ("dualflow_fuzz_" + std::to_string(::getpid()))).string();
    fs::remove_all(d);
    fs::create_directories(d);
    // Smaller limits than the defaults, so that no input can make the harness use gigabytes (libFuzzer
    // treats 2 GB of RSS as a failure); the limit checks are the same code either way.
    load_limits().max_file_bytes = uint64_t(64) << 20;
    load_limits().max_dataset_bytes = uint64_t(256) << 20;
    cleanup.dir = d;
    return d;
  }();
  return dir;
}

const std::vector<Target>& targets() {
  static const std::vector<Target> all = {
      {"safetensors", run_safetensors}, {"config", run_config}, {"idx", run_idx},     {"cifar", run_cifar},
      {"image", run_image},             {"folder", run_folder}, {"gzip", run_gzip},
  };
  return all;
}

const Target& target(const std::string& name) {
  for (const Target& t : targets())
    if (name == t.name) return t;
  DF_FAIL("fuzz: unknown target '", name, "'");
}

std::string run_one(const Target& t, const uint8_t* data, size_t size, bool* loaded) {
  (void)scratch_dir();
  if (loaded) *loaded = false;
  try {
    t.run(data, size);
    if (loaded) *loaded = true;
  } catch (const Error&) {
    return "";
  } catch (const std::exception& e) {
    return std::string(typeid(e).name()) + ": " + text_excerpt(e.what(), 300);
  } catch (...) {
    return "an exception that is not a std::exception";
  }
  return "";
}

}  // namespace df::fuzz
