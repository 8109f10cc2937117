// Image data sets for training: Fashion-MNIST (gzipped IDX), CIFAR-10 (official binary layout, .bin or
// .bin.gz) and image folders (stb_image), kept as uint8 in memory; batches scaled to [-1, 1] with optional
// horizontal flips, and an epoch order that depends only on (seed, epoch) so a resumed run replays it.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace df {

// N images of C x H x W uint8 pixels (row-major, channel planes), one integer label each.
class ImageDataset {
 public:
  ImageDataset() = default;
  ImageDataset(std::vector<uint8_t> pixels, std::vector<int32_t> labels, int64_t channels, int64_t height,
               int64_t width, int64_t num_classes, std::string source);

  int64_t size() const { return (int64_t)labels_.size(); }
  int64_t channels() const { return c_; }
  int64_t height() const { return h_; }
  int64_t width() const { return w_; }
  int64_t num_classes() const { return classes_; }
  int64_t image_numel() const { return c_ * h_ * w_; }
  int label(int64_t i) const;
  const uint8_t* image(int64_t i) const;             // C*H*W bytes
  const std::vector<uint8_t>& pixels() const { return pixels_; }
  const std::vector<int32_t>& labels() const { return labels_; }
  const std::string& source() const { return source_; }  // where it came from, for messages

  // (B, C, H, W) batch of images `indices`, scaled x / 127.5 - 1 into [-1, 1], on `device`.
  // `flips` (if not empty, one per index) mirrors the chosen images left-right.
  Tensor batch(const std::vector<int64_t>& indices, Device device = Device::CPU, DType dtype = DType::F32,
               const std::vector<bool>& flips = {}) const;
  // Same, with a coin from `flip_rng` per image (one uniform draw each).
  Tensor batch(const std::vector<int64_t>& indices, Generator& flip_rng, Device device = Device::CPU,
               DType dtype = DType::F32) const;
  std::vector<int64_t> batch_labels(const std::vector<int64_t>& indices) const;
  std::vector<int64_t> class_counts() const;         // images per label 0..num_classes-1

  // A new dataset of the images `indices` (e.g. a held-out split or a small subset for tests).
  ImageDataset subset(const std::vector<int64_t>& indices) const;

 private:
  std::vector<uint8_t> pixels_;
  std::vector<int32_t> labels_;
  int64_t c_ = 0, h_ = 0, w_ = 0, classes_ = 0;
  std::string source_;
};

// ---- loaders (every error names the file and what was expected vs found) ----

// What a loader will read, against mistaken or hostile files; exceeding one is an error saying how to
// raise it. Initialised from the environment (DF_MAX_FILE_BYTES, DF_MAX_DATASET_BYTES) on first use.
struct LoadLimits {
  uint64_t max_file_bytes;      // one file, after gunzip (default 2 GiB)
  uint64_t max_dataset_bytes;   // the decoded pixels of one image folder (default 16 GiB)
};
LoadLimits& load_limits();

// A whole file, gunzipped if it is gzip (plain files read unchanged), at most max_file_bytes of output.
std::vector<uint8_t> read_file_maybe_gz(const std::string& path);

// Default location of Debian's dataset-fashion-mnist package.
extern const char* const kFashionMnistDir;

// Fashion-MNIST / MNIST from a pair of IDX files (gzipped or not). `pad_to_32` surrounds each 28x28
// image with 2 pixels of the background value 0, giving 32x32.
ImageDataset load_idx(const std::string& images_path, const std::string& labels_path, bool pad_to_32 = false,
                      int64_t num_classes = 10);
// {train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz] under `dir`.
ImageDataset load_fashion_mnist(bool train, bool pad_to_32 = false, const std::string& dir = kFashionMnistDir);

// CIFAR-10 binary records (1 label byte + 3072 pixel bytes) from the given files, in order; each file
// may be plain `.bin` or gzipped `.bin.gz`.
ImageDataset load_cifar10(const std::vector<std::string>& files);
// From a directory: train = data_batch_*.bin[.gz] (sorted), test = test_batch*.bin[.gz].
ImageDataset load_cifar10_dir(const std::string& dir, bool train);

// One image per file: PNG, JPEG (baseline, progressive), BMP (uncompressed, either row order) and binary
// PPM/PGM (train/image_decode.h checks each file's structure before decoding it; truncated files and
// other formats are errors naming the file). Sub-folders (sorted by name) are the classes; a folder with
// only files gives label 0 everywhere. All images must have the same size. `channels` 1 or 3
// converts; 0 keeps the channel count of the first image (1, 3; 2/4 drop alpha).
ImageDataset load_image_folder(const std::string& dir, int channels = 0);

// By name, for configs: "fashion_mnist" (path = its directory, "" = the Debian location),
// "cifar10" (path = directory or one file), "folder" (path = directory). Error lists the names.
ImageDataset load_dataset(const std::string& name, const std::string& path, bool train, bool pad_to_32 = false);

// ---- shuffling and batching ----

// A permutation of 0..n-1 that depends only on (seed, epoch): Fisher-Yates with Philox draws.
std::vector<int64_t> epoch_permutation(int64_t n, uint64_t seed, uint64_t epoch);

struct Batch {
  Tensor images;                  // (B, C, H, W) in [-1, 1]
  std::vector<int64_t> labels;    // (B)
};

// Endless batches over shuffled epochs. Its whole state is (epoch, position), and both the order and
// the flips are functions of (seed, epoch, position), so restoring the state replays the stream exactly.
// With drop_last the tail of an epoch smaller than a batch is skipped (every batch has `batch` images).
class Batcher {
 public:
  // `data` must outlive the Batcher.
  Batcher(const ImageDataset& data, int64_t batch, uint64_t seed, bool hflip = false, bool drop_last = true,
          Device device = Device::CPU, DType dtype = DType::F32);
  Batch next();
  uint64_t epoch() const { return epoch_; }
  int64_t position() const { return pos_; }
  void set_state(uint64_t epoch, int64_t position);

 private:
  const ImageDataset& data_;
  int64_t batch_;
  uint64_t seed_;
  bool hflip_, drop_last_;
  Device device_;
  DType dtype_;
  uint64_t epoch_ = 0;
  int64_t pos_ = 0;
  std::vector<int64_t> order_;    // the permutation of epoch order_epoch_
  uint64_t order_epoch_ = ~uint64_t(0);
};

}  // namespace df
