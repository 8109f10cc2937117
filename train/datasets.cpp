// Image data set loaders (IDX, CIFAR-10 binary, image folders), batching to [-1, 1] and the epoch shuffler.
// Every size read from a file is checked against the file and the load limits before it is used.
#include "train/datasets.h"

#include <zlib.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "core/philox.h"
#include "train/image_decode.h"

namespace df {

namespace fs = std::filesystem;

const char* const kFashionMnistDir = "/usr/share/datasets/fashion-mnist";

// ---- ImageDataset ----

ImageDataset::ImageDataset(std::vector<uint8_t> pixels, std::vector<int32_t> labels, int64_t channels,
                           int64_t height, int64_t width, int64_t num_classes, std::string source)
    : pixels_(std::move(pixels)), labels_(std::move(labels)), c_(channels), h_(height), w_(width),
      classes_(num_classes), source_(std::move(source)) {
  DF_CHECK(c_ > 0 && h_ > 0 && w_ > 0, "ImageDataset(", source_, ")", ": expected positive C, H, W, got ", c_,
           ", ", h_, ", ", w_);
  DF_CHECK((int64_t)pixels_.size() == size() * image_numel(), "ImageDataset(", source_, ")", ": expected ",
           size(), " x ", image_numel(), " pixel bytes, got ", pixels_.size());
  for (int64_t i = 0; i < size(); ++i)
    DF_CHECK(labels_[i] >= 0 && labels_[i] < classes_, "ImageDataset(", source_, ")", ": label ", labels_[i],
             " of image ", i, " outside [0, ", classes_, ")");
}

int ImageDataset::label(int64_t i) const {
  DF_CHECK(i >= 0 && i < size(), "ImageDataset::label", ": index ", i, " outside [0, ", size(), ")");
  return labels_[i];
}

const uint8_t* ImageDataset::image(int64_t i) const {
  DF_CHECK(i >= 0 && i < size(), "ImageDataset::image", ": index ", i, " outside [0, ", size(), ")");
  return pixels_.data() + i * image_numel();
}

Tensor ImageDataset::batch(const std::vector<int64_t>& indices, Device device, DType dtype,
                           const std::vector<bool>& flips) const {
  DF_CHECK(flips.empty() || flips.size() == indices.size(), "ImageDataset::batch", ": expected ", indices.size(),
           " flip flags, got ", flips.size());
  int64_t b = (int64_t)indices.size();
  for (int64_t k = 0; k < b; ++k)
    DF_CHECK(indices[k] >= 0 && indices[k] < size(), "ImageDataset::batch", ": index ", indices[k],
             " outside [0, ", size(), ") of ", source_);
  // Filled on the host in f64 or f32 (one table lookup per byte), then cast/moved once.
  DType host_dt = dtype == DType::F64 ? DType::F64 : DType::F32;
  Tensor out = empty({b, c_, h_, w_}, host_dt);
  double table[256];
  for (int v = 0; v < 256; ++v) table[v] = v / 127.5 - 1.0;
  int64_t plane = h_ * w_;
  auto fill = [&](auto* dst) {
    for (int64_t k = 0; k < b; ++k) {
      const uint8_t* src = image(indices[k]);
      auto* d = dst + k * image_numel();
      bool flip = !flips.empty() && flips[k];
      for (int64_t c = 0; c < c_; ++c)
        for (int64_t y = 0; y < h_; ++y) {
          const uint8_t* row = src + c * plane + y * w_;
          auto* drow = d + c * plane + y * w_;
          if (flip)
            for (int64_t x = 0; x < w_; ++x) drow[x] = table[row[w_ - 1 - x]];
          else
            for (int64_t x = 0; x < w_; ++x) drow[x] = table[row[x]];
        }
    }
  };
  if (host_dt == DType::F64) fill(out.data_as<double>());
  else fill(out.data_as<float>());
  if (dtype != host_dt) out = out.to(dtype);
  return out.to(device);
}

Tensor ImageDataset::batch(const std::vector<int64_t>& indices, Generator& flip_rng, Device device,
                           DType dtype) const {
  std::vector<bool> flips(indices.size());
  for (size_t k = 0; k < indices.size(); ++k) flips[k] = flip_rng.uniform() < 0.5;
  return batch(indices, device, dtype, flips);
}

std::vector<int64_t> ImageDataset::batch_labels(const std::vector<int64_t>& indices) const {
  std::vector<int64_t> out;
  out.reserve(indices.size());
  for (int64_t i : indices) out.push_back(label(i));
  return out;
}

std::vector<int64_t> ImageDataset::class_counts() const {
  std::vector<int64_t> counts(classes_, 0);
  for (int32_t l : labels_) counts[l]++;
  return counts;
}

ImageDataset ImageDataset::subset(const std::vector<int64_t>& indices) const {
  std::vector<uint8_t> px;
  std::vector<int32_t> lb;
  px.reserve(indices.size() * image_numel());
  for (int64_t i : indices) {
    const uint8_t* p = image(i);
    px.insert(px.end(), p, p + image_numel());
    lb.push_back(labels_[i]);
  }
  return ImageDataset(std::move(px), std::move(lb), c_, h_, w_, classes_, source_ + " (subset)");
}

// ---- load limits ----

namespace {
uint64_t env_bytes(const char* name, uint64_t fallback) {
  const char* v = std::getenv(name);
  if (!v || !*v) return fallback;
  char* end = nullptr;
  unsigned long long x = std::strtoull(v, &end, 10);
  DF_CHECK(end && *end == '\0' && x > 0, name, ": expected a positive number of bytes, got '", v, "'");
  return x;
}
}  // namespace

LoadLimits& load_limits() {
  static LoadLimits limits{env_bytes("DF_MAX_FILE_BYTES", uint64_t(2) << 30),
                           env_bytes("DF_MAX_DATASET_BYTES", uint64_t(16) << 30)};
  return limits;
}

// ---- file reading ----

namespace {

void check_regular_file(const std::string& path) {
  std::error_code ec;
  DF_CHECK(fs::is_regular_file(path, ec), "read ", path, ": expected a readable file, got ",
           fs::exists(path, ec) ? "something that is not a regular file" : "no such file");
}

[[noreturn]] void fail_too_big(const std::string& path, uint64_t limit, const char* what) {
  DF_FAIL("read ", path, ": ", what, " more than ", limit, " bytes (the limit per file; raise it with "
          "DF_MAX_FILE_BYTES or load_limits().max_file_bytes)");
}

// Whole file, gunzipped if it is gzip (zlib reads plain files unchanged), at most max_file_bytes of output:
// a gzip bomb stops at the limit with an error instead of filling memory.
std::vector<uint8_t> read_maybe_gz(const std::string& path) {
  check_regular_file(path);
  const uint64_t limit = load_limits().max_file_bytes;
  gzFile f = gzopen(path.c_str(), "rb");
  DF_CHECK(f != nullptr, "read ", path, ": cannot open (", std::strerror(errno), ")");
  gzbuffer(f, 1 << 18);
  std::vector<uint8_t> out;
  for (;;) {
    size_t n0 = out.size();
    if (n0 > limit) {
      gzclose(f);
      fail_too_big(path, limit, "decompresses to");
    }
    // Chunks grow with the output (64 KB to 4 MB), and never reach more than one byte past the limit,
    // so exceeding it costs no more memory than the limit.
    size_t grow = std::min<size_t>(std::max<size_t>(n0, size_t(1) << 16), size_t(1) << 22);
    size_t chunk = size_t(std::min<uint64_t>(grow, limit + 1 - n0));
    out.resize(n0 + chunk);
    int got = gzread(f, out.data() + n0, (unsigned)chunk);
    if (got < 0) {
      int errnum = 0;
      std::string msg = gzerror(f, &errnum);
      gzclose(f);
      DF_FAIL("read ", path, ": corrupt gzip data after ", n0, " decompressed bytes (", msg, ")");
    }
    out.resize(n0 + (size_t)got);
    if (got == 0) break;
  }
  int errnum = 0;
  std::string msg = gzerror(f, &errnum);
  gzclose(f);
  // A gzip stream cut short reads as a clean end with Z_BUF_ERROR set.
  DF_CHECK(errnum == Z_OK || errnum == Z_STREAM_END, "read ", path, ": truncated or corrupt gzip data after ",
           out.size(), " decompressed bytes (", msg, ")");
  return out;
}

// Whole file as is (images), at most max_file_bytes.
std::vector<uint8_t> read_plain(const std::string& path) {
  check_regular_file(path);
  const uint64_t limit = load_limits().max_file_bytes;
  std::ifstream in(path, std::ios::binary);
  DF_CHECK(in.good(), "read ", path, ": cannot open (", std::strerror(errno), ")");
  in.seekg(0, std::ios::end);
  std::streamoff size = in.tellg();
  DF_CHECK(size >= 0, "read ", path, ": cannot tell its size");
  if (uint64_t(size) > limit) fail_too_big(path, limit, "file of");
  in.seekg(0);
  std::vector<uint8_t> out(static_cast<size_t>(size));
  in.read(reinterpret_cast<char*>(out.data()), size);
  DF_CHECK(in.gcount() == size, "read ", path, ": short read (", in.gcount(), " of ", size, " bytes)");
  return out;
}

uint32_t be32(const uint8_t* p) { return (uint32_t(p[0]) << 24) | (uint32_t(p[1]) << 16) | (uint32_t(p[2]) << 8) | p[3]; }

std::string hex32(uint32_t v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%08x", v);
  return buf;
}

std::string lower(std::string s) {
  for (auto& ch : s) ch = (char)std::tolower((unsigned char)ch);
  return s;
}

bool ends_with(const std::string& s, const std::string& suf) {
  return s.size() >= suf.size() && s.compare(s.size() - suf.size(), suf.size(), suf) == 0;
}

// `stem` or `stem.gz`, whichever exists (the .gz preferred).
std::string find_gz_or_plain(const std::string& dir, const std::string& stem) {
  std::error_code ec;
  for (const std::string& p : {dir + "/" + stem + ".gz", dir + "/" + stem})
    if (fs::exists(p, ec)) return p;
  DF_FAIL("find ", dir, "/", stem, "[.gz]: no such file (Fashion-MNIST on Debian: apt-get install "
          "dataset-fashion-mnist)");
}

}  // namespace

std::vector<uint8_t> read_file_maybe_gz(const std::string& path) { return read_maybe_gz(path); }

// ---- IDX (Fashion-MNIST, MNIST) ----

ImageDataset load_idx(const std::string& images_path, const std::string& labels_path, bool pad_to_32,
                      int64_t num_classes) {
  std::vector<uint8_t> im = read_maybe_gz(images_path), lb = read_maybe_gz(labels_path);
  DF_CHECK(im.size() >= 16, "load_idx ", images_path, ": expected an IDX header of 16 bytes, got a file of ",
           im.size(), " bytes");
  DF_CHECK(lb.size() >= 8, "load_idx ", labels_path, ": expected an IDX header of 8 bytes, got a file of ",
           lb.size(), " bytes");
  uint32_t im_magic = be32(im.data()), lb_magic = be32(lb.data());
  DF_CHECK(im_magic == 0x803, "load_idx ", images_path, ": expected IDX magic 0x00000803 (uint8, 3 dims), got ",
           hex32(im_magic));
  DF_CHECK(lb_magic == 0x801, "load_idx ", labels_path, ": expected IDX magic 0x00000801 (uint8, 1 dim), got ",
           hex32(lb_magic));
  int64_t n = be32(im.data() + 4), rows = be32(im.data() + 8), cols = be32(im.data() + 12);
  int64_t nl = be32(lb.data() + 4);
  DF_CHECK(rows > 0 && cols > 0 && rows <= 65536 && cols <= 65536, "load_idx ", images_path,
           ": implausible image size ", rows, "x", cols);
  // n, rows and cols are each below 2^32, so their product can pass 2^64: compare through a division.
  const int64_t per_image = rows * cols, data_bytes = (int64_t)im.size() - 16;
  DF_CHECK(data_bytes % per_image == 0 && data_bytes / per_image == n, "load_idx ", images_path, ": header says ",
           n, " images of ", rows, "x", cols, " (", per_image, " bytes each after the 16-byte header), got a file of ",
           im.size(), " bytes");
  DF_CHECK((int64_t)lb.size() == 8 + nl, "load_idx ", labels_path, ": header says ", nl, " labels = ", 8 + nl,
           " bytes, got ", lb.size(), " bytes");
  DF_CHECK(n == nl, "load_idx ", images_path, ": ", n, " images but ", labels_path, " has ", nl, " labels");
  std::vector<int32_t> labels(n);
  for (int64_t i = 0; i < n; ++i) {
    labels[i] = lb[8 + i];
    DF_CHECK(labels[i] < num_classes, "load_idx ", labels_path, ": label ", labels[i], " at byte offset ", 8 + i,
             " outside [0, ", num_classes, ")");
  }
  int64_t pad = pad_to_32 ? 2 : 0;
  if (pad_to_32)
    DF_CHECK(rows == 28 && cols == 28, "load_idx ", images_path, ": pad_to_32 expects 28x28 images, got ", rows,
             "x", cols);
  int64_t h = rows + 2 * pad, w = cols + 2 * pad;
  std::vector<uint8_t> px(size_t(n * h * w), 0);  // 0 = the background of (Fashion-)MNIST
  for (int64_t i = 0; i < n; ++i)
    for (int64_t y = 0; y < rows; ++y)
      std::memcpy(&px[size_t(i * h * w + (y + pad) * w + pad)], &im[size_t(16 + i * rows * cols + y * cols)],
                  size_t(cols));
  return ImageDataset(std::move(px), std::move(labels), 1, h, w, num_classes, images_path);
}

ImageDataset load_fashion_mnist(bool train, bool pad_to_32, const std::string& dir) {
  std::string prefix = train ? "train" : "t10k";
  std::string images = find_gz_or_plain(dir, prefix + "-images-idx3-ubyte");
  std::string labels = find_gz_or_plain(dir, prefix + "-labels-idx1-ubyte");
  return load_idx(images, labels, pad_to_32, 10);
}

// ---- CIFAR-10 ----

ImageDataset load_cifar10(const std::vector<std::string>& files) {
  DF_CHECK(!files.empty(), "load_cifar10", ": expected at least one file, got none");
  const int64_t rec = 3073, npx = 3072;
  std::vector<uint8_t> px;
  std::vector<int32_t> labels;
  for (const std::string& path : files) {
    std::vector<uint8_t> raw = read_maybe_gz(path);
    int64_t size = (int64_t)raw.size(), nrec = size / rec;
    DF_CHECK(size > 0, "load_cifar10 ", path, ": file is empty (expected records of ", rec, " bytes)");
    DF_CHECK(size % rec == 0, "load_cifar10 ", path, ": truncated: ", size, " bytes is not a multiple of the ",
             rec, "-byte record; record ", nrec, " at byte offset ", nrec * rec, " has only ", size - nrec * rec,
             " bytes");
    px.reserve(px.size() + size_t(nrec * npx));
    for (int64_t r = 0; r < nrec; ++r) {
      const uint8_t* p = raw.data() + r * rec;
      DF_CHECK(p[0] < 10, "load_cifar10 ", path, ": label byte ", int(p[0]), " at byte offset ", r * rec,
               " (record ", r, ") outside [0, 10)");
      labels.push_back(p[0]);
      px.insert(px.end(), p + 1, p + rec);
    }
  }
  std::string src = files.size() == 1 ? files[0] : files[0] + " (+" + std::to_string(files.size() - 1) + " files)";
  return ImageDataset(std::move(px), std::move(labels), 3, 32, 32, 10, src);
}

ImageDataset load_cifar10_dir(const std::string& dir, bool train) {
  std::error_code ec;
  DF_CHECK(fs::is_directory(dir, ec), "load_cifar10_dir ", dir, ": expected a directory, got ",
           fs::exists(dir, ec) ? "a file" : "no such path");
  std::string prefix = train ? "data_batch_" : "test_batch";
  std::vector<std::string> files;
  for (const auto& e : fs::directory_iterator(dir)) {
    std::string name = e.path().filename().string();
    if (name.rfind(prefix, 0) == 0 && (ends_with(name, ".bin") || ends_with(name, ".bin.gz")))
      files.push_back(e.path().string());
  }
  std::sort(files.begin(), files.end());
  // The same batch as .bin and .bin.gz would load twice: keep the plain one.
  std::vector<std::string> unique;
  for (const auto& f : files)
    if (!(ends_with(f, ".gz") && std::find(files.begin(), files.end(), f.substr(0, f.size() - 3)) != files.end()))
      unique.push_back(f);
  DF_CHECK(!unique.empty(), "load_cifar10_dir ", dir, ": expected ", prefix, "*.bin or ", prefix,
           "*.bin.gz files, found none");
  return load_cifar10(unique);
}

// ---- image folders ----

ImageDataset load_image_folder(const std::string& dir, int channels) {
  std::error_code ec;
  DF_CHECK(fs::is_directory(dir, ec), "load_image_folder ", dir, ": expected a directory, got ",
           fs::exists(dir, ec) ? "a file" : "no such path");
  DF_CHECK(channels == 0 || channels == 1 || channels == 3, "load_image_folder ", dir,
           ": channels must be 0 (as stored), 1 or 3, got ", channels);
  // Formats a data set needs; other image files are an error rather than silently left out.
  static const char* supported[] = {".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".pnm"};
  static const char* unsupported[] = {".tga", ".gif", ".psd", ".hdr", ".pic", ".tif", ".tiff", ".webp"};
  auto has_ext = [](const fs::path& p, const auto& list) {
    std::string e = lower(p.extension().string());
    for (const char* x : list)
      if (e == x) return true;
    return false;
  };
  auto hidden = [](const fs::path& p) { return p.filename().string().rfind('.', 0) == 0; };
  // Listing errors (permissions, a folder removed meanwhile) become df::Errors naming the folder.
  auto list = [&](const fs::path& d, bool want_dirs) {
    std::vector<std::string> out;
    std::error_code ec;
    fs::directory_iterator it(d, ec), end;
    for (; !ec && it != end; it.increment(ec)) {
      const fs::path& p = it->path();
      std::error_code ec2;
      if (hidden(p)) continue;
      if (want_dirs) {
        if (it->is_directory(ec2)) out.push_back(p.string());
      } else if (it->is_regular_file(ec2)) {
        DF_CHECK(!has_ext(p, unsupported), "load_image_folder ", p.string(), ": ", p.extension().string(),
                 " images are not supported (PNG, JPEG, BMP and binary PPM/PGM are); convert or remove it");
        if (has_ext(p, supported)) out.push_back(p.string());
      }
    }
    DF_CHECK(!ec, "load_image_folder ", d.string(), ": cannot list the folder (", ec.message(), ")");
    std::sort(out.begin(), out.end());
    return out;
  };
  std::vector<std::string> subdirs = list(dir, true);
  std::vector<std::pair<std::string, int32_t>> files;
  std::vector<std::string> top = list(dir, false);
  if (subdirs.empty()) {
    for (auto& f : top) files.push_back({f, 0});
  } else {
    DF_CHECK(top.empty(), "load_image_folder ", dir, ": expected either class sub-folders or images, got both (",
             top[0], " next to ", subdirs[0], ")");
    DF_CHECK(subdirs.size() <= 65536, "load_image_folder ", dir, ": ", subdirs.size(),
             " class sub-folders (at most 65536)");
    for (size_t k = 0; k < subdirs.size(); ++k)
      for (auto& f : list(subdirs[k], false)) files.push_back({f, (int32_t)k});
  }
  DF_CHECK(!files.empty(), "load_image_folder ", dir, ": no image files found");

  // The first image's header fixes the size and (with channels 0) the channel count; every file is
  // checked against it before its pixels are decoded, and the whole set against the memory limit.
  const std::string& first = files[0].first;
  std::vector<uint8_t> bytes = read_plain(first);
  ImageHeader ref = inspect_image(bytes.data(), bytes.size(), "load_image_folder " + first);
  const int want = channels ? channels : (ref.channels <= 2 ? 1 : 3);
  const int64_t plane = ref.width * ref.height, per_image = want * plane;
  const uint64_t limit = load_limits().max_dataset_bytes;
  DF_CHECK(uint64_t(per_image) * files.size() <= limit, "load_image_folder ", dir, ": ", files.size(), " images of ",
           want, "x", ref.height, "x", ref.width, " need ", uint64_t(per_image) * files.size(), " bytes, more than the ",
           limit, "-byte limit (raise it with DF_MAX_DATASET_BYTES or load_limits().max_dataset_bytes)");
  std::vector<uint8_t> px;
  std::vector<int32_t> labels;
  px.reserve(size_t(per_image) * files.size());
  for (size_t k = 0; k < files.size(); ++k) {
    const std::string& path = files[k].first;
    if (k > 0) bytes = read_plain(path);
    DecodedImage img = decode_image(bytes.data(), bytes.size(), "load_image_folder " + path, want, ref.width,
                                    ref.height, first);
    size_t base = px.size();
    px.resize(base + size_t(per_image));
    for (int64_t ch = 0; ch < want; ++ch)  // interleaved HWC -> planar CHW
      for (int64_t i = 0; i < plane; ++i) px[base + size_t(ch * plane + i)] = img.pixels[size_t(i * want + ch)];
    labels.push_back(files[k].second);
  }
  int64_t classes = subdirs.empty() ? 1 : (int64_t)subdirs.size();
  return ImageDataset(std::move(px), std::move(labels), want, ref.height, ref.width, classes, dir);
}

ImageDataset load_dataset(const std::string& name, const std::string& path, bool train, bool pad_to_32) {
  if (name == "fashion_mnist") return load_fashion_mnist(train, pad_to_32, path.empty() ? kFashionMnistDir : path);
  if (name == "cifar10") {
    std::error_code ec;
    DF_CHECK(!path.empty(), "load_dataset cifar10", ": expected a path (directory of data_batch_*.bin[.gz])");
    return fs::is_directory(path, ec) ? load_cifar10_dir(path, train) : load_cifar10({path});
  }
  if (name == "folder") return load_image_folder(path);
  DF_FAIL("load_dataset", ": unknown data set '", name, "', expected one of fashion_mnist, cifar10, folder");
}

// ---- shuffling and batching ----

std::vector<int64_t> epoch_permutation(int64_t n, uint64_t seed, uint64_t epoch) {
  DF_CHECK(n >= 0, "epoch_permutation", ": expected n >= 0, got ", n);
  DF_CHECK(epoch < (uint64_t(1) << 22), "epoch_permutation", ": epoch ", epoch, " beyond 2^22");
  std::vector<int64_t> p(n);
  for (int64_t i = 0; i < n; ++i) p[i] = i;
  // Each epoch owns the counter range [epoch * 2^42, (epoch + 1) * 2^42), so no state carries over.
  Generator g(seed, epoch << 42);
  for (int64_t i = n - 1; i > 0; --i) {
    // Multiply-high maps 64 random bits to [0, i]; the bias (<= n / 2^64) is far below anything measurable.
    uint64_t j = uint64_t((__uint128_t(g.next_u64()) * uint64_t(i + 1)) >> 64);
    std::swap(p[i], p[j]);
  }
  return p;
}

Batcher::Batcher(const ImageDataset& data, int64_t batch, uint64_t seed, bool hflip, bool drop_last, Device device,
                 DType dtype)
    : data_(data), batch_(batch), seed_(seed), hflip_(hflip), drop_last_(drop_last), device_(device),
      dtype_(dtype) {
  DF_CHECK(batch > 0, "Batcher", ": expected batch > 0, got ", batch);
  DF_CHECK(data.size() > 0, "Batcher", ": data set ", data.source(), " is empty");
  DF_CHECK(!drop_last || batch <= data.size(), "Batcher", ": batch ", batch, " larger than the data set (",
           data.size(), " images) with drop_last");
}

void Batcher::set_state(uint64_t epoch, int64_t position) {
  DF_CHECK(position >= 0 && position <= data_.size(), "Batcher::set_state", ": position ", position,
           " outside [0, ", data_.size(), "]");
  epoch_ = epoch;
  pos_ = position;
}

Batch Batcher::next() {
  int64_t n = data_.size();
  if (pos_ >= n || (drop_last_ && pos_ + batch_ > n)) {
    epoch_++;
    pos_ = 0;
  }
  if (order_epoch_ != epoch_) {
    order_ = epoch_permutation(n, seed_, epoch_);
    order_epoch_ = epoch_;
  }
  int64_t end = std::min(n, pos_ + batch_);
  std::vector<int64_t> idx(order_.begin() + pos_, order_.begin() + end);
  std::vector<bool> flips;
  if (hflip_) {
    // A stream apart from the shuffle's: position k of epoch e is counter e * 2^42 + k.
    uint64_t flip_seed = seed_ ^ 0x9E3779B97F4A7C15ull;
    for (int64_t k = pos_; k < end; ++k) flips.push_back(philox_uniform(flip_seed, (epoch_ << 42) + k) < 0.5);
  }
  Batch b{data_.batch(idx, device_, dtype_, flips), data_.batch_labels(idx)};
  pos_ = end;
  return b;
}

}  // namespace df
