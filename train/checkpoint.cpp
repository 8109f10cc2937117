// safetensors writer (atomic: temp file, fsync, rename) and a reader that validates the header against
// the file before touching any data, so corrupt or truncated checkpoints give an error, never a crash.
#include "train/checkpoint.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>

#include "train/json_safe.h"

namespace df {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "safetensors data is little-endian; so is this code");

using ojson = nlohmann::ordered_json;

namespace {

const char* st_dtype(DType t) {
  return t == DType::F64 ? "F64" : t == DType::F32 ? "F32" : t == DType::BF16 ? "BF16" : "I64";
}

bool parse_st_dtype(const std::string& s, DType* out) {
  if (s == "F32") *out = DType::F32;
  else if (s == "F64") *out = DType::F64;
  else if (s == "BF16") *out = DType::BF16;
  else if (s == "I64") *out = DType::I64;
  else return false;
  return true;
}

// The real safetensors library refuses headers above 100 MB; so do we, before allocating.
constexpr uint64_t kMaxHeader = 100u << 20;

// Closes the fd and removes the temp file unless released: any early exit leaves no .tmp behind.
struct TempFile {
  std::string path;
  int fd = -1;
  bool keep = false;
  ~TempFile() {
    if (fd >= 0) ::close(fd);
    if (!keep) ::unlink(path.c_str());
  }
};

void write_all(TempFile& f, const std::string& final_path, const void* p, size_t n) {
  const char* c = static_cast<const char*>(p);
  while (n > 0) {
    ssize_t w = ::write(f.fd, c, std::min(n, size_t(1) << 30));
    if (w < 0 && errno == EINTR) continue;
    DF_CHECK(w > 0, "save_safetensors ", final_path, ": write to ", f.path, " failed (", std::strerror(errno), ")");
    c += w;
    n -= size_t(w);
  }
}

}  // namespace

void save_safetensors(const std::string& path, const NamedTensors& tensors,
                      const std::map<std::string, std::string>& metadata) {
  // Host, contiguous copies first, so every check happens before the file is created.
  std::vector<Tensor> host;
  host.reserve(tensors.size());
  ojson header = ojson::object();
  if (!metadata.empty()) {
    ojson md = ojson::object();
    for (const auto& [k, v] : metadata) md[k] = v;
    header["__metadata__"] = md;
  }
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    DF_CHECK(!name.empty() && name != "__metadata__", "save_safetensors ", path, ": invalid tensor name '", name,
             "'");
    DF_CHECK(!header.contains(name), "save_safetensors ", path, ": duplicate tensor name '", name, "'");
    DF_CHECK(t.defined(), "save_safetensors ", path, ": tensor '", name, "' is undefined");
    Tensor h = t.detach();
    if (h.device() != Device::CPU) h = h.to(Device::CPU);
    h = h.contiguous();
    uint64_t nbytes = uint64_t(h.numel()) * dtype_size(h.dtype());
    header[name] = {{"dtype", st_dtype(h.dtype())}, {"shape", h.shape()}, {"data_offsets", {offset, offset + nbytes}}};
    offset += nbytes;
    host.push_back(h);
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const nlohmann::json::exception& e) {
    DF_FAIL("save_safetensors ", path, ": cannot encode the header (names and metadata must be UTF-8): ", e.what());
  }
  text.append((8 - text.size() % 8) % 8, ' ');  // the data section starts 8-byte aligned
  uint64_t hlen = text.size();

  TempFile tmp;
  tmp.path = path + ".tmp." + std::to_string(::getpid());
  tmp.fd = ::open(tmp.path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  DF_CHECK(tmp.fd >= 0, "save_safetensors ", path, ": cannot create temp file ", tmp.path, " (",
           std::strerror(errno), ")");
  write_all(tmp, path, &hlen, 8);
  write_all(tmp, path, text.data(), text.size());
  for (const Tensor& h : host)
    if (h.numel() > 0) write_all(tmp, path, h.data(), size_t(h.numel()) * dtype_size(h.dtype()));
  DF_CHECK(::fsync(tmp.fd) == 0, "save_safetensors ", path, ": fsync of ", tmp.path, " failed (",
           std::strerror(errno), ")");
  int rc = ::close(tmp.fd);
  tmp.fd = -1;
  DF_CHECK(rc == 0, "save_safetensors ", path, ": close of ", tmp.path, " failed (", std::strerror(errno), ")");
  DF_CHECK(::rename(tmp.path.c_str(), path.c_str()) == 0, "save_safetensors ", path, ": rename from ", tmp.path,
           " failed (", std::strerror(errno), ")");
  tmp.keep = true;
  // Persist the rename itself; a failure here cannot lose the old file any more, so it is not an error.
  std::string dir = path.find('/') == std::string::npos ? "." : path.substr(0, path.rfind('/') + 1);
  int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

namespace {

struct Entry {
  std::string name;
  DType dtype;
  Shape shape;
  uint64_t begin, end;
};

// Tensor names quoted in messages are cut short too: a header may hold a 100 MB key.
std::string name_excerpt(const std::string& name) { return text_excerpt(name, 80); }

uint64_t get_offset(const std::string& path, const std::string& name, const ojson& v, int k) {
  DF_CHECK(v.is_number_unsigned() || (v.is_number_integer() && v.get<int64_t>() >= 0), "load_safetensors ", path,
           ": tensor '", name_excerpt(name), "': expected data_offsets[", k, "] a non-negative integer, got ",
           json_excerpt(v));
  return v.get<uint64_t>();
}

// Ranks beyond this are refused (no model has them; it bounds the per-tensor work of a hostile header).
constexpr size_t kMaxRank = 64;

Entry parse_entry(const std::string& path, const std::string& name, const ojson& e) {
  auto where = [&] { return "load_safetensors " + path + ": tensor '" + name_excerpt(name) + "'"; };
  DF_CHECK(e.is_object(), where(), ": expected an object {dtype, shape, data_offsets}, got ", json_excerpt(e));
  for (const char* key : {"dtype", "shape", "data_offsets"})
    DF_CHECK(e.contains(key), where(), ": expected key '", key, "', got ", json_excerpt(e));
  Entry out;
  out.name = name;
  const ojson& dt = e["dtype"];
  DF_CHECK(dt.is_string(), where(), ": expected dtype a string, got ", json_excerpt(dt));
  DF_CHECK(parse_st_dtype(dt.get<std::string>(), &out.dtype), where(), ": unsupported dtype ", json_excerpt(dt),
           " (expected F32, F64 or BF16)");
  const ojson& sh = e["shape"];
  DF_CHECK(sh.is_array() && sh.size() <= kMaxRank, where(), ": expected shape an array of at most ", kMaxRank,
           " entries, got ", json_excerpt(sh));
  for (const ojson& d : sh) {
    // The parser stores non-negative integers as unsigned: accept those below 2^63 and no negatives.
    bool ok = d.is_number_unsigned() ? d.get<uint64_t>() <= uint64_t(INT64_MAX)
                                     : d.is_number_integer() && d.get<int64_t>() >= 0;
    DF_CHECK(ok, where(), ": expected shape entries non-negative integers below 2^63, got ", json_excerpt(sh));
    out.shape.push_back(d.get<int64_t>());
  }
  const ojson& off = e["data_offsets"];
  DF_CHECK(off.is_array() && off.size() == 2, where(), ": expected data_offsets [begin, end], got ",
           json_excerpt(off));
  out.begin = get_offset(path, name, off[0], 0);
  out.end = get_offset(path, name, off[1], 1);
  DF_CHECK(out.begin <= out.end, where(), ": expected data_offsets begin <= end, got ", json_excerpt(off));
  return out;
}

}  // namespace

Checkpoint load_safetensors(const std::string& path) {
  // O_NONBLOCK: opening a FIFO (or a device) must not wait for a writer; it is refused just below.
  int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  DF_CHECK(fd >= 0, "load_safetensors ", path, ": cannot open (", std::strerror(errno), ")");
  FILE* f = ::fdopen(fd, "rb");
  if (!f) ::close(fd);
  DF_CHECK(f != nullptr, "load_safetensors ", path, ": cannot open (", std::strerror(errno), ")");
  std::unique_ptr<FILE, int (*)(FILE*)> closer(f, &std::fclose);
  struct stat st;
  DF_CHECK(::fstat(fileno(f), &st) == 0 && S_ISREG(st.st_mode), "load_safetensors ", path,
           ": expected a regular file");
  uint64_t fsize = uint64_t(st.st_size);
  DF_CHECK(fsize >= 8, "load_safetensors ", path, ": expected at least 8 bytes (header length), got a file of ",
           fsize, " bytes");
  uint64_t hlen = 0;
  DF_CHECK(std::fread(&hlen, 8, 1, f) == 1, "load_safetensors ", path, ": cannot read the header length");
  DF_CHECK(hlen <= fsize - 8, "load_safetensors ", path, ": header length ", hlen, " runs past the end of the file (",
           fsize - 8, " bytes after the length field)");
  DF_CHECK(hlen >= 2 && hlen <= kMaxHeader, "load_safetensors ", path, ": expected a header length in [2, ",
           kMaxHeader, "], got ", hlen);
  std::string text(hlen, '\0');
  DF_CHECK(std::fread(&text[0], 1, hlen, f) == hlen, "load_safetensors ", path, ": short read of the ", hlen,
           "-byte header");
  ojson header = parse_ordered_json_bounded(text, "load_safetensors " + path + ": header");
  DF_CHECK(header.is_object(), "load_safetensors ", path, ": expected the header to be a JSON object, got ",
           header.type_name());

  Checkpoint ck;
  std::vector<Entry> entries;
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") {
      DF_CHECK(it.value().is_object(), "load_safetensors ", path, ": expected __metadata__ an object, got ",
               it.value().type_name());
      for (auto m = it.value().begin(); m != it.value().end(); ++m) {
        DF_CHECK(m.value().is_string(), "load_safetensors ", path, ": expected metadata '", name_excerpt(m.key()),
                 "' a string, got ", json_excerpt(m.value()));
        ck.metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    entries.push_back(parse_entry(path, it.key(), it.value()));
  }

  // The byte ranges must tile the data section exactly: in range, no overlaps, no gaps.
  uint64_t data_size = fsize - 8 - hlen;
  for (const Entry& e : entries) {
    DF_CHECK(e.end <= data_size, "load_safetensors ", path, ": tensor '", name_excerpt(e.name), "': data_offsets [",
             e.begin, ", ", e.end, "] beyond the data section of ", data_size, " bytes (file truncated?)");
    int64_t want = 0;
    try {
      want = checked_nbytes(e.shape, e.dtype, "shape");
    } catch (const Error& err) {
      DF_FAIL("load_safetensors ", path, ": tensor '", name_excerpt(e.name), "': ", err.what());
    }
    DF_CHECK(uint64_t(want) == e.end - e.begin, "load_safetensors ", path, ": tensor '", name_excerpt(e.name),
             "': shape ", shape_str(e.shape), " ", dtype_name(e.dtype), " needs ", want, " bytes, data_offsets give ",
             e.end - e.begin);
  }
  std::stable_sort(entries.begin(), entries.end(),
                   [](const Entry& a, const Entry& b) { return a.begin != b.begin ? a.begin < b.begin : a.end < b.end; });
  uint64_t covered = 0;
  const Entry* prev = nullptr;
  for (const Entry& e : entries) {
    DF_CHECK(e.begin >= covered, "load_safetensors ", path, ": tensor '", name_excerpt(e.name), "' bytes [", e.begin,
             ", ", e.end, ") overlap tensor '", prev ? name_excerpt(prev->name) : "", "' ending at ", covered);
    DF_CHECK(e.begin == covered, "load_safetensors ", path, ": gap before tensor '", name_excerpt(e.name),
             "': expected it to start at ", covered, ", got ", e.begin);
    covered = e.end;
    prev = &e;
  }
  DF_CHECK(covered == data_size, "load_safetensors ", path, ": tensors cover ", covered,
           " bytes but the data section has ", data_size, " (trailing bytes)");

  for (const Entry& e : entries) {
    Tensor t = empty(e.shape, e.dtype);
    uint64_t nbytes = e.end - e.begin;
    if (nbytes > 0) {
      DF_CHECK(::fseeko(f, off_t(8 + hlen + e.begin), SEEK_SET) == 0 && std::fread(t.data(), 1, nbytes, f) == nbytes,
               "load_safetensors ", path, ": short read of tensor '", name_excerpt(e.name), "' (", nbytes,
               " bytes at data offset ",
               e.begin, ")");
    }
    ck.tensors.push_back({e.name, t});
  }
  return ck;
}

const Tensor* Checkpoint::find(const std::string& name) const {
  for (const auto& [n, t] : tensors)
    if (n == name) return &t;
  return nullptr;
}

const Tensor& Checkpoint::at(const std::string& name) const {
  if (const Tensor* t = find(name)) return *t;
  std::string names;
  for (size_t i = 0; i < tensors.size() && i < 20; ++i) names += (i ? ", " : "") + name_excerpt(tensors[i].first);
  if (tensors.size() > 20) names += ", ...";
  DF_FAIL("Checkpoint::at", ": no tensor '", name_excerpt(name), "'; have ", tensors.size(), ": ", names);
}

std::string tensor_summary_json(const NamedTensors& tensors) {
  ojson out = ojson::object();
  for (const auto& [name, t] : tensors) {
    DF_CHECK(t.defined(), "tensor_summary_json", ": tensor '", name, "' is undefined");
    std::vector<double> v = t.detach().to_vector();
    double sum = 0;
    for (double x : v) sum += x;
    std::vector<double> first(v.begin(), v.begin() + std::min<size_t>(8, v.size()));
    out[name] = {{"dtype", st_dtype(t.dtype())}, {"shape", t.shape()}, {"sum", sum}, {"first", first}};
  }
  return out.dump(1);
}

}  // namespace df
