// Tests of the data loaders on the real files (CIFAR-10 from shared/data, Fashion-MNIST from Debian),
// image folders written here with stb_image_write, batching to [-1, 1], flips, the epoch shuffler and
// the error messages for truncated or malformed files.
#include <doctest/doctest.h>
#include <stb/stb_image_write.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <cmath>
#include <cstdlib>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>

#include "tests/test_util.h"
#include "train/datasets.h"

using namespace df;
namespace fs = std::filesystem;
using df::test::contains;
using df::test::error_of;
using df::test::fmnist_dir;
using df::test::temp_dir;

namespace {

std::string cifar_dir() {
  for (const char* d : {"../shared/data/cifar10", "/work/shared/data/cifar10", "shared/data/cifar10"})
    if (fs::exists(std::string(d) + "/data_batch_1.bin.gz") || fs::exists(std::string(d) + "/data_batch_1.bin"))
      return d;
  return "";
}

bool have_fashion_mnist() { return fs::exists(fmnist_dir() + "/train-images-idx3-ubyte.gz"); }

// Per-channel mean and (population) std on 0-255, accumulated in integers so they are exact.
void channel_stats(const ImageDataset& d, std::vector<double>& mean, std::vector<double>& stdev) {
  int64_t c = d.channels(), plane = d.height() * d.width();
  std::vector<uint64_t> s(c, 0), s2(c, 0);
  const uint8_t* p = d.pixels().data();
  for (int64_t i = 0; i < d.size(); ++i)
    for (int64_t ch = 0; ch < c; ++ch) {
      uint64_t a = 0, a2 = 0;
      for (int64_t k = 0; k < plane; ++k, ++p) a += *p, a2 += uint64_t(*p) * *p;
      s[ch] += a;
      s2[ch] += a2;
    }
  double n = double(d.size()) * plane;
  mean.resize(c);
  stdev.resize(c);
  for (int64_t ch = 0; ch < c; ++ch) {
    mean[ch] = s[ch] / n;
    stdev[ch] = std::sqrt(s2[ch] / n - mean[ch] * mean[ch]);
  }
}


void write_gz(const std::string& path, const std::vector<uint8_t>& bytes) {
  gzFile f = gzopen(path.c_str(), "wb");
  REQUIRE(f != nullptr);
  REQUIRE(gzwrite(f, bytes.data(), (unsigned)bytes.size()) == (int)bytes.size());
  gzclose(f);
}

}  // namespace

TEST_CASE("data: CIFAR-10 real files give the known labels, class counts and channel statistics") {
  std::string dir = cifar_dir();
  if (dir.empty()) {
    MESSAGE("SKIP: CIFAR-10 not found at ../shared/data/cifar10 or /work/shared/data/cifar10");
    return;
  }
  ImageDataset b1 = load_cifar10({dir + "/data_batch_1.bin.gz"});
  REQUIRE(b1.size() == 10000);
  CHECK(b1.channels() == 3);
  CHECK(b1.height() == 32);
  CHECK(b1.width() == 32);
  CHECK(b1.num_classes() == 10);
  std::vector<int> first = {6, 9, 9, 4, 1, 1, 2, 7, 8, 3};
  for (int i = 0; i < 10; ++i) CHECK(b1.label(i) == first[i]);
  // data_batch_1 alone, against an independent pure-python pass over the same file.
  std::vector<double> mean, sd;
  channel_stats(b1, mean, sd);
  const double want_m1[3] = {125.83175029296875, 123.2606662109375, 114.03068681640625};
  const double want_s1[3] = {63.143397759467305, 62.36920597307947, 66.96580514129316};
  for (int c = 0; c < 3; ++c) {
    CHECK(mean[c] == doctest::Approx(want_m1[c]).epsilon(1e-12));
    CHECK(sd[c] == doctest::Approx(want_s1[c]).epsilon(1e-9));
  }

  ImageDataset test = load_cifar10_dir(dir, false);
  REQUIRE(test.size() == 1000);
  std::vector<int> first_test = {3, 8, 8, 0, 6, 6, 1, 6, 3, 1};
  for (int i = 0; i < 10; ++i) CHECK(test.label(i) == first_test[i]);

  auto t0 = std::chrono::steady_clock::now();
  ImageDataset train = load_cifar10_dir(dir, true);
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  MESSAGE("CIFAR-10 training set (5 gzipped batches) loaded in " << secs << " s");
  REQUIRE(train.size() == 50000);
  for (int i = 0; i < 10; ++i) CHECK(train.label(i) == first[i]);
  for (int64_t n : train.class_counts()) CHECK(n == 5000);
  channel_stats(train, mean, sd);
  const double want_m[3] = {125.307, 122.950, 113.865}, want_s[3] = {62.993, 62.089, 66.705};
  for (int c = 0; c < 3; ++c) {
    CHECK(std::abs(mean[c] - want_m[c]) < 5e-4);
    CHECK(std::abs(sd[c] - want_s[c]) < 5e-4);
  }
  // The named entry point, the same pixels as the first batch (red plane of image 0).
  CHECK(std::equal(train.image(0), train.image(0) + 3072, b1.image(0)));
}

TEST_CASE("data: Fashion-MNIST from Debian's package: sizes, class counts, pixel statistics, padding") {
  if (!have_fashion_mnist()) {
    MESSAGE("SKIP: Fashion-MNIST not found under " << fmnist_dir()
            << " (apt-get install dataset-fashion-mnist, or set DF_FASHION_MNIST_DIR)");
    return;
  }
  ImageDataset train = load_fashion_mnist(true, false, fmnist_dir());
  REQUIRE(train.size() == 60000);
  CHECK(train.channels() == 1);
  CHECK(train.height() == 28);
  CHECK(train.width() == 28);
  for (int64_t n : train.class_counts()) CHECK(n == 6000);
  std::vector<double> mean, sd;
  channel_stats(train, mean, sd);
  CHECK(std::abs(mean[0] / 255 - 0.2860) < 5e-5);
  CHECK(std::abs(sd[0] / 255 - 0.3530) < 5e-5);

  ImageDataset test = load_fashion_mnist(false, false, fmnist_dir());
  REQUIRE(test.size() == 10000);
  for (int64_t n : test.class_counts()) CHECK(n == 1000);

  ImageDataset padded = load_fashion_mnist(false, true, fmnist_dir());
  REQUIRE(padded.size() == 10000);
  CHECK(padded.height() == 32);
  CHECK(padded.width() == 32);
  bool inner_same = true, border_zero = true;
  for (int64_t i : {0, 1, 9999}) {
    CHECK(padded.label(i) == test.label(i));
    for (int y = 0; y < 32; ++y)
      for (int x = 0; x < 32; ++x) {
        uint8_t v = padded.image(i)[y * 32 + x];
        if (y < 2 || y >= 30 || x < 2 || x >= 30) border_zero &= v == 0;
        else inner_same &= v == test.image(i)[(y - 2) * 28 + (x - 2)];
      }
  }
  CHECK(inner_same);
  CHECK(border_zero);
}

TEST_CASE("data: image folders read back PNGs written with stb_image_write, labels from sorted sub-folders") {
  std::string dir = temp_dir("imgfolder");
  fs::create_directories(dir + "/b_second");
  fs::create_directories(dir + "/a_first");
  // 3x2 RGB images with known pixels: value = 10 * (channel + 1) + 3 * y + x, plus a per-image shift.
  auto make = [](int shift) {
    std::vector<uint8_t> hwc(2 * 3 * 3);
    for (int y = 0; y < 2; ++y)
      for (int x = 0; x < 3; ++x)
        for (int c = 0; c < 3; ++c) hwc[(y * 3 + x) * 3 + c] = uint8_t(10 * (c + 1) + 3 * y + x + shift);
    return hwc;
  };
  REQUIRE(stbi_write_png((dir + "/a_first/img0.png").c_str(), 3, 2, 3, make(0).data(), 9));
  REQUIRE(stbi_write_png((dir + "/b_second/img1.png").c_str(), 3, 2, 3, make(100).data(), 9));
  { std::ofstream(dir + "/b_second/notes.txt") << "not an image"; }  // ignored by extension

  ImageDataset d = load_image_folder(dir);
  REQUIRE(d.size() == 2);
  CHECK(d.channels() == 3);
  CHECK(d.height() == 2);
  CHECK(d.width() == 3);
  CHECK(d.num_classes() == 2);
  CHECK(d.label(0) == 0);
  CHECK(d.label(1) == 1);
  bool same = true;
  for (int k = 0; k < 2; ++k)
    for (int c = 0; c < 3; ++c)
      for (int y = 0; y < 2; ++y)
        for (int x = 0; x < 3; ++x) same &= d.image(k)[c * 6 + y * 3 + x] == 10 * (c + 1) + 3 * y + x + 100 * k;
  CHECK(same);
  ImageDataset grey = load_image_folder(dir, 1);
  CHECK(grey.channels() == 1);

  // A flat folder: label 0 for all; a different size is an error naming the file.
  std::string flat = temp_dir("imgflat");
  REQUIRE(stbi_write_png((flat + "/x.png").c_str(), 3, 2, 3, make(0).data(), 9));
  ImageDataset f = load_image_folder(flat);
  CHECK(f.size() == 1);
  CHECK(f.num_classes() == 1);
  CHECK(f.label(0) == 0);
  std::vector<uint8_t> big(4 * 4 * 3, 7);
  REQUIRE(stbi_write_png((flat + "/y.png").c_str(), 4, 4, 3, big.data(), 12));
  std::string msg = error_of([&] { load_image_folder(flat); });
  CHECK(contains(msg, "y.png"));
  CHECK(contains(msg, "3x2"));
  fs::remove_all(dir);
  fs::remove_all(flat);
}

TEST_CASE("data: batches are scaled to [-1, 1], flips mirror rows, labels follow the indices") {
  // Two 1x2x3 images with pixels 0, 51, 102 / 153, 204, 255 (and reversed for the second).
  std::vector<uint8_t> px = {0, 51, 102, 153, 204, 255, 255, 204, 153, 102, 51, 0};
  ImageDataset d(px, {3, 7}, 1, 2, 3, 10, "synthetic");
  Tensor b = d.batch({1, 0, 1});
  CHECK(b.shape() == Shape{3, 1, 2, 3});
  CHECK(b.dtype() == DType::F32);
  std::vector<double> v = b.to_vector();
  for (int k = 0; k < 3; ++k) {
    int img = k == 1 ? 0 : 1;
    for (int j = 0; j < 6; ++j) CHECK(v[k * 6 + j] == doctest::Approx(px[img * 6 + j] / 127.5 - 1).epsilon(1e-7));
  }
  CHECK(v[6] == -1.0);
  CHECK(v[11] == 1.0);
  CHECK(d.batch_labels({1, 0, 1}) == std::vector<int64_t>{7, 3, 7});

  Tensor f = d.batch({0, 0}, Device::CPU, DType::F64, {true, false});
  CHECK(f.dtype() == DType::F64);
  std::vector<double> fv = f.to_vector();
  for (int y = 0; y < 2; ++y)
    for (int x = 0; x < 3; ++x) {
      CHECK(fv[y * 3 + x] == px[y * 3 + (2 - x)] / 127.5 - 1);  // mirrored
      CHECK(fv[6 + y * 3 + x] == px[y * 3 + x] / 127.5 - 1);    // untouched
    }
  // Coin flips from a Generator: about half of 400 are mirrored, and the same seed repeats them.
  std::vector<int64_t> many(400, 0);
  Generator g1(5), g2(5);
  std::vector<double> a = d.batch(many, g1).to_vector(), a2 = d.batch(many, g2).to_vector();
  CHECK(a == a2);
  int mirrored = 0;
  for (int k = 0; k < 400; ++k) mirrored += a[k * 6] != -1.0;
  CHECK(mirrored > 150);
  CHECK(mirrored < 250);
  if (cuda_available()) {
    Tensor c = d.batch({0, 1}, Device::CUDA);
    CHECK(c.device() == Device::CUDA);
    CHECK(c.to_vector() == d.batch({0, 1}).to_vector());
  }
  CHECK_THROWS_AS(d.batch({2}), Error);
  CHECK(d.subset({1}).label(0) == 7);
}

TEST_CASE("data: epoch shuffles depend only on (seed, epoch); a Batcher resumes exactly from its state") {
  std::vector<int64_t> p = epoch_permutation(1000, 42, 3);
  std::set<int64_t> seen(p.begin(), p.end());
  CHECK(seen.size() == 1000);
  CHECK(*seen.begin() == 0);
  CHECK(*seen.rbegin() == 999);
  CHECK(p == epoch_permutation(1000, 42, 3));
  CHECK(p != epoch_permutation(1000, 42, 4));
  CHECK(p != epoch_permutation(1000, 43, 3));
  int fixed = 0;
  for (int i = 0; i < 1000; ++i) fixed += p[i] == i;
  CHECK(fixed < 10);  // a shuffle, not the identity (expected ~1 fixed point)
  // Uniformity: where element 0 lands over 2000 epochs, in 4 bins of 250 positions (expected 500 each).
  int bins[4] = {0, 0, 0, 0};
  for (uint64_t e = 0; e < 2000; ++e) {
    std::vector<int64_t> q = epoch_permutation(1000, 7, e);
    bins[(std::find(q.begin(), q.end(), 0) - q.begin()) / 250]++;
  }
  for (int b : bins) CHECK(std::abs(b - 500) < 100);

  // 10 images with a distinct pixel each, batches of 3: drop_last skips the 10th of each epoch.
  std::vector<uint8_t> px(10 * 2);
  std::vector<int32_t> lb(10);
  for (int i = 0; i < 10; ++i) px[2 * i] = uint8_t(20 * i), px[2 * i + 1] = uint8_t(20 * i + 5), lb[i] = i % 4;
  ImageDataset d(px, lb, 1, 1, 2, 4, "tiny");
  Batcher straight(d, 3, 11, true);
  std::vector<std::vector<double>> seq;
  std::vector<std::vector<int64_t>> labels;
  std::vector<std::pair<uint64_t, int64_t>> states;
  for (int s = 0; s < 8; ++s) {
    states.push_back({straight.epoch(), straight.position()});
    Batch b = straight.next();
    CHECK(b.images.shape() == Shape{3, 1, 1, 2});
    seq.push_back(b.images.to_vector());
    labels.push_back(b.labels);
  }
  // Epoch 0 is batches 0-2 (9 distinct images), epoch 1 starts at batch 3.
  std::set<double> ep0;
  for (int s = 0; s < 3; ++s)
    for (int k = 0; k < 3; ++k) ep0.insert(std::min(seq[s][2 * k], seq[s][2 * k + 1]));
  CHECK(ep0.size() == 9);
  CHECK(states[3] == std::pair<uint64_t, int64_t>{0, 9});
  CHECK(straight.epoch() == 2);
  int flipped = 0;
  for (auto& v : seq)
    for (int k = 0; k < 3; ++k) flipped += v[2 * k] > v[2 * k + 1];
  CHECK(flipped > 0);
  CHECK(flipped < 24);
  Batcher resumed(d, 3, 11, true);
  resumed.set_state(states[4].first, states[4].second);
  for (int s = 4; s < 8; ++s) {
    Batch b = resumed.next();
    CHECK(b.images.to_vector() == seq[s]);
    CHECK(b.labels == labels[s]);
  }
  Batcher keep_tail(d, 3, 11, false, false);
  for (int s = 0; s < 3; ++s) keep_tail.next();
  CHECK(keep_tail.next().labels.size() == 1);  // the 10th image, alone
  CHECK_THROWS_AS(Batcher(d, 11, 0), Error);
}

TEST_CASE("data: truncated CIFAR files and bad IDX files give errors naming the file") {
  std::string dir = temp_dir("baddata");
  std::vector<uint8_t> two(2 * 3073 + 100, 1);
  two[0] = 3;
  two[3073] = 4;
  { std::ofstream(dir + "/cut.bin", std::ios::binary).write((const char*)two.data(), two.size()); }
  std::string msg = error_of([&] { load_cifar10({dir + "/cut.bin"}); });
  CHECK(contains(msg, dir + "/cut.bin"));
  CHECK(contains(msg, "6146"));  // byte offset of the partial record
  CHECK(contains(msg, "100 bytes"));
  write_gz(dir + "/cut.bin.gz", two);
  msg = error_of([&] { load_cifar10({dir + "/cut.bin.gz"}); });
  CHECK(contains(msg, "cut.bin.gz"));
  CHECK(contains(msg, "6146"));
  // Whole records load, from .bin and .bin.gz alike.
  two.resize(2 * 3073);
  write_gz(dir + "/ok.bin.gz", two);
  ImageDataset ok = load_cifar10({dir + "/ok.bin.gz"});
  CHECK(ok.size() == 2);
  CHECK(ok.label(1) == 4);
  // A gzip stream cut in the middle (not a whole-record issue): still names the file.
  {
    std::ifstream in(dir + "/ok.bin.gz", std::ios::binary);
    std::string all((std::istreambuf_iterator<char>(in)), {});
    std::ofstream(dir + "/halfgz.bin.gz", std::ios::binary).write(all.data(), all.size() / 2);
  }
  msg = error_of([&] { load_cifar10({dir + "/halfgz.bin.gz"}); });
  CHECK(contains(msg, "halfgz.bin.gz"));
  CHECK(contains(error_of([&] { load_cifar10({dir + "/missing.bin"}); }), "missing.bin"));

  // IDX: labels magic in the images file.
  std::vector<uint8_t> idx = {0, 0, 8, 1, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 2, 1, 2, 3, 4};
  std::vector<uint8_t> lab = {0, 0, 8, 1, 0, 0, 0, 1, 5};
  write_gz(dir + "/img-idx3-ubyte.gz", idx);
  write_gz(dir + "/lab-idx1-ubyte.gz", lab);
  msg = error_of([&] { load_idx(dir + "/img-idx3-ubyte.gz", dir + "/lab-idx1-ubyte.gz"); });
  CHECK(contains(msg, "img-idx3-ubyte.gz"));
  CHECK(contains(msg, "magic 0x00000803"));
  CHECK(contains(msg, "got 0x00000801"));
  idx[3] = 3;  // fixed magic; now a short pixel section
  write_gz(dir + "/img-idx3-ubyte.gz", std::vector<uint8_t>(idx.begin(), idx.end() - 1));
  msg = error_of([&] { load_idx(dir + "/img-idx3-ubyte.gz", dir + "/lab-idx1-ubyte.gz"); });
  CHECK(contains(msg, "img-idx3-ubyte.gz"));
  CHECK(contains(msg, "19 bytes"));
  write_gz(dir + "/img-idx3-ubyte.gz", idx);
  ImageDataset one = load_idx(dir + "/img-idx3-ubyte.gz", dir + "/lab-idx1-ubyte.gz");
  CHECK(one.size() == 1);
  CHECK(one.label(0) == 5);
  CHECK(one.image(0)[3] == 4);
  msg = error_of([&] { load_fashion_mnist(true, false, dir); });
  INFO(msg);
  CHECK(contains(msg, "train-images-idx3-ubyte"));
  CHECK(contains(error_of([&] { load_dataset("mnist3", "", true); }), "fashion_mnist, cifar10, folder"));
  fs::remove_all(dir);
}
