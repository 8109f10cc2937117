// Tests of the safetensors checkpoints: round trips of every dtype and odd shape, the exact bytes of a
// tiny file, atomic replacement, and a clear error for each kind of corrupt file.
// With DF_SAFETENSORS_EXPORT=<dir> the round-trip test also leaves sample.safetensors + sample.json
// there for tools/check_safetensors.py (the PyTorch cross-check).
#include <doctest/doctest.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>

#include "tests/test_util.h"
#include "ops/ops.h"
#include "train/checkpoint.h"

using namespace df;
namespace fs = std::filesystem;
using df::test::contains;
using df::test::error_of;
using df::test::temp_dir;

namespace {


std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), {});
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary).write(bytes.data(), bytes.size());
}

// A file with the given header text (length field = its size unless `hlen` is given) and data bytes.
std::string raw_file(const std::string& header, const std::string& data, int64_t hlen = -1) {
  uint64_t n = hlen < 0 ? header.size() : uint64_t(hlen);
  std::string out(8, '\0');
  std::memcpy(&out[0], &n, 8);
  return out + header + data;
}

bool same_bytes(const Tensor& a, const Tensor& b) {
  if (a.dtype() != b.dtype() || a.shape() != b.shape()) return false;
  size_t n = size_t(a.numel()) * dtype_size(a.dtype());
  if (n == 0) return true;   // an empty tensor's data() may be null, and memcmp(null, ...) is undefined
  Tensor ac = a.contiguous(), bc = b.contiguous();
  return std::memcmp(ac.data(), bc.data(), n) == 0;
}

}  // namespace

TEST_CASE("checkpoint: safetensors round trip of f32, f64, bf16, 0-d, empty and strided tensors with metadata") {
  std::string dir = temp_dir("ckpt_rt");
  std::string path = dir + "/model.safetensors";
  Tensor base = randn({3, 4}, 1, DType::F32);
  Tensor strided = make_view(base, {4, 3}, {1, 4}, 0);  // the transpose, not contiguous
  REQUIRE(!strided.is_contiguous());
  NamedTensors ts = {
      {"blocks.0.attn.qkv.weight", randn({2, 3, 5}, 2, DType::F32)},
      {"ema.blocks.0.bias", randn({7}, 3, DType::F64)},
      {"half", from_vector({1.5, -2.0, 0.15625, 1e20, -0.0, 3.0}, {3, 2}, DType::BF16)},
      {"scalar", scalar_tensor(-4.25, DType::F64)},
      {"empty", zeros({0, 5}, DType::F32)},
      {"transposed", strided},
  };
  std::map<std::string, std::string> md = {{"step", "1234"}, {"config", "{\"lr\": 0.001}"}, {"note", "d\xc3\xa9j\xc3\xa0"}};
  save_safetensors(path, ts, md);
  Checkpoint ck = load_safetensors(path);
  REQUIRE(ck.tensors.size() == ts.size());
  for (size_t i = 0; i < ts.size(); ++i) {
    CAPTURE(ts[i].first);
    CHECK(ck.tensors[i].first == ts[i].first);  // save order is kept
    CHECK(ck.tensors[i].second.device() == Device::CPU);
    CHECK(same_bytes(ck.tensors[i].second, ts[i].second));
  }
  CHECK(ck.at("scalar").shape() == Shape{});
  CHECK(ck.at("scalar").item() == -4.25);
  CHECK(ck.at("empty").shape() == Shape{0, 5});
  CHECK(ck.at("transposed").to_vector() == strided.to_vector());
  CHECK(ck.metadata == md);
  CHECK(ck.find("nope") == nullptr);
  CHECK(contains(error_of([&] { ck.at("nope"); }), "blocks.0.attn.qkv.weight"));
  // Overwriting with another set replaces the file; no metadata is fine too.
  save_safetensors(path, {{"x", ones({2})}});
  Checkpoint ck2 = load_safetensors(path);
  CHECK(ck2.tensors.size() == 1);
  CHECK(ck2.metadata.empty());
  if (cuda_available()) {
    Tensor g = randn({3, 3}, 9, DType::F32, Device::CUDA);
    save_safetensors(path, {{"g", g}});
    CHECK(load_safetensors(path).at("g").to_vector() == g.to_vector());
  }
  if (const char* out = std::getenv("DF_SAFETENSORS_EXPORT")) {
    // Cross-check sample for tools/check_safetensors.py: includes the odd cases and a 2-D tensor.
    NamedTensors sample = ts;
    sample.push_back({"big", randn({6, 7}, 4, DType::F32)});
    fs::create_directories(out);
    save_safetensors(std::string(out) + "/sample.safetensors", sample, md);
    std::ofstream(std::string(out) + "/sample.json") << tensor_summary_json(sample);
    MESSAGE("wrote " << std::string(out) << "/sample.safetensors and sample.json");
  }
  fs::remove_all(dir);
}

TEST_CASE("checkpoint: safetensors bytes match the format exactly and a file from PyTorch reads back") {
  std::string dir = temp_dir("ckpt_bytes");
  std::string path = dir + "/tiny.safetensors";
  save_safetensors(path, {{"a", from_vector({1.0, -2.0}, {2}, DType::F32)}}, {{"k", "v"}});
  std::string header = R"({"__metadata__":{"k":"v"},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  REQUIRE(header.size() == 79);
  std::string want = std::string("\x50\0\0\0\0\0\0\0", 8) + header + " " +  // 80 = 79 + 1 space of padding
                     std::string("\x00\x00\x80\x3f\x00\x00\x00\xc0", 8);     // 1.0f, -2.0f little-endian
  CHECK(read_bytes(path) == want);
  // A file written by another writer (no padding, tensors listed out of order) reads back.
  std::string other = R"({"b":{"dtype":"F64","shape":[],"data_offsets":[4,12]},"a":{"dtype":"BF16","shape":[2],"data_offsets":[0,4]}})";
  double b = 0.5;
  std::string data = std::string("\x80\x3f\x00\xc0", 4) + std::string((const char*)&b, 8);  // bf16 1.0, -2.0
  write_bytes(path, raw_file(other, data));
  Checkpoint ck = load_safetensors(path);
  REQUIRE(ck.tensors.size() == 2);
  CHECK(ck.tensors[0].first == "a");  // data order
  CHECK(ck.at("a").to_vector() == std::vector<double>{1.0, -2.0});
  CHECK(ck.at("a").dtype() == DType::BF16);
  CHECK(ck.at("b").item() == 0.5);
  // The exact bytes safetensors.torch.save_file (safetensors 0.8.0, torch 2.11) wrote for
  // {d: f64 [1.5, -2.25], s: f32 7, w: f32 arange(6).reshape(2, 3), b: bf16 [[0.5, 3]]}, metadata format=pt.
  std::string torch_header =
      R"({"__metadata__":{"format":"pt"},"d":{"dtype":"F64","shape":[2],"data_offsets":[0,16]},)"
      R"("s":{"dtype":"F32","shape":[],"data_offsets":[16,20]},"w":{"dtype":"F32","shape":[2,3],)"
      R"("data_offsets":[20,44]},"b":{"dtype":"BF16","shape":[1,2],"data_offsets":[44,48]}} )";
  std::string torch_data(
      "\x00\x00\x00\x00\x00\x00\xf8\x3f\x00\x00\x00\x00\x00\x00\x02\xc0\x00\x00\xe0\x40\x00\x00\x00\x00"
      "\x00\x00\x80\x3f\x00\x00\x00\x40\x00\x00\x40\x40\x00\x00\x80\x40\x00\x00\xa0\x40\x00\x3f\x40\x40",
      48);
  REQUIRE(torch_header.size() == 256);
  write_bytes(path, raw_file(torch_header, torch_data));
  Checkpoint tk = load_safetensors(path);
  REQUIRE(tk.tensors.size() == 4);
  CHECK(tk.metadata.at("format") == "pt");
  CHECK(tk.at("d").to_vector() == std::vector<double>{1.5, -2.25});
  CHECK(tk.at("s").shape() == Shape{});
  CHECK(tk.at("s").item() == 7.0);
  CHECK(tk.at("w").shape() == Shape{2, 3});
  CHECK(tk.at("w").to_vector() == std::vector<double>{0, 1, 2, 3, 4, 5});
  CHECK(tk.at("b").dtype() == DType::BF16);
  CHECK(tk.at("b").to_vector() == std::vector<double>{0.5, 3.0});
  // Written back by dualflow in the same order, the file is byte-identical to PyTorch's.
  save_safetensors(path + "2", tk.tensors, tk.metadata);
  CHECK(read_bytes(path + "2") == raw_file(torch_header, torch_data));
  fs::remove_all(dir);
}

TEST_CASE("checkpoint: writes are atomic: a failed save keeps the old file and leaves no temp file") {
  std::string dir = temp_dir("ckpt_atomic");
  std::string path = dir + "/run.safetensors";
  Tensor old_w = randn({4, 4}, 5, DType::F32);
  save_safetensors(path, {{"w", old_w}}, {{"step", "10"}});
  // The temp name is taken by a directory, so the new file cannot be created.
  std::string tmp = path + ".tmp." + std::to_string(::getpid());
  fs::create_directories(tmp);
  std::string msg = error_of([&] { save_safetensors(path, {{"w", zeros({4, 4})}}, {{"step", "20"}}); });
  CHECK(contains(msg, path));
  CHECK(contains(msg, "temp"));
  fs::remove_all(tmp);
  Checkpoint ck = load_safetensors(path);
  CHECK(ck.metadata.at("step") == "10");
  CHECK(same_bytes(ck.at("w"), old_w));
  // Rejected inputs fail before any file is touched.
  CHECK(contains(error_of([&] { save_safetensors(path, {{"w", Tensor()}}); }), "undefined"));
  CHECK(contains(error_of([&] { save_safetensors(path, {{"w", old_w}, {"w", old_w}}); }), "duplicate"));
  CHECK(contains(error_of([&] { save_safetensors(path, {{"__metadata__", old_w}}); }), "invalid tensor name"));
  CHECK(contains(error_of([&] { save_safetensors(dir + "/no/such/dir/x.safetensors", {{"w", old_w}}); }),
                 "no/such/dir"));
  CHECK(load_safetensors(path).metadata.at("step") == "10");
  save_safetensors(path, {{"w", old_w}}, {{"step", "30"}});
  CHECK(load_safetensors(path).metadata.at("step") == "30");
  int entries = 0;
  for (const auto& e : fs::directory_iterator(dir)) {
    entries++;
    CHECK(e.path().string() == path);
  }
  CHECK(entries == 1);
  fs::remove_all(dir);
}

TEST_CASE("checkpoint: every kind of corrupt safetensors file gives an error naming the file") {
  std::string dir = temp_dir("ckpt_bad");
  std::string path = dir + "/bad.safetensors";
  std::string eight(8, '\x01');
  auto expect = [&](const std::string& bytes, const std::string& what) {
    write_bytes(path, bytes);
    std::string msg = error_of([&] { load_safetensors(path); });
    CAPTURE(what);
    CAPTURE(msg);
    CHECK(contains(msg, path));
    CHECK(contains(msg, what));
  };
  auto hdr = [](const std::string& entries) { return "{" + entries + "}"; };
  std::string a8 = R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";

  CHECK(contains(error_of([&] { load_safetensors(dir + "/missing.safetensors"); }), "missing.safetensors"));
  expect("abc", "at least 8 bytes");
  expect(raw_file(hdr(a8), eight, 1000), "runs past the end");
  expect(raw_file(hdr(a8), eight, 0), "header length");
  expect(raw_file("{\"a\": {\"dtype\": ", eight), "invalid JSON");
  expect(raw_file("[1, 2]", ""), "JSON object");
  expect(raw_file(hdr(R"("a":{"dtype":"I32","shape":[2],"data_offsets":[0,8]})"), eight), "unsupported dtype");
  expect(raw_file(hdr(R"("a":{"dtype":7,"shape":[2],"data_offsets":[0,8]})"), eight), "dtype a string");
  expect(raw_file(hdr(R"("a":{"dtype":"F32","shape":[2]})"), eight), "data_offsets");
  expect(raw_file(hdr(R"("a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]})"), eight), "non-negative");
  expect(raw_file(hdr(R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,-8]})"), eight), "non-negative");
  expect(raw_file(hdr(R"("a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]})"), eight), "begin <= end");
  expect(raw_file(hdr(R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8,9]})"), eight), "[begin, end]");
  expect(raw_file(hdr(R"("a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]})"), eight), "beyond the data section");
  expect(raw_file(hdr(a8), "1234"), "beyond the data section");  // data truncated
  expect(raw_file(hdr(R"("a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]})"), eight), "needs 12 bytes");
  expect(raw_file(hdr(R"("a":{"dtype":"F64","shape":[1000000000000,1000000000000],"data_offsets":[0,8]})"), eight),
         "shape");
  expect(raw_file(hdr(a8 + R"(,"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]})"), eight), "overlap");
  expect(raw_file(hdr(R"("a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]})"), eight), "gap");
  expect(raw_file(hdr(a8), eight + "xx"), "trailing");
  expect(raw_file(hdr(a8 + R"(,"__metadata__":{"step":3})"), eight), "metadata 'step'");
  expect(raw_file(hdr(R"("a":[1,2])"), eight), "expected an object");
  // The file still closes cleanly after all these: a good file at the same path loads.
  save_safetensors(path, {{"a", ones({2})}});
  CHECK(load_safetensors(path).at("a").to_vector() == std::vector<double>{1, 1});
  fs::remove_all(dir);
}
