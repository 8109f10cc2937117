// Checkpoints in the safetensors format (loadable by safetensors.torch.load_file): an 8-byte little-endian
// header length, a JSON header naming each tensor's dtype, shape and data offsets plus string metadata,
// then the raw little-endian data. Writes are atomic (temp file, fsync, rename); reads validate everything.
#pragma once
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"

namespace df {

using NamedTensors = std::vector<std::pair<std::string, Tensor>>;

// Writes `tensors` (any device, any strides; CUDA tensors are copied to the host) in the given order,
// without gaps, and `metadata` as "__metadata__". The file appears complete or not at all: it is written
// to path + ".tmp.<pid>", fsynced and renamed over `path`; on failure the temp file is removed and any
// previous file at `path` is left untouched. Names must be unique, non-empty and not "__metadata__".
void save_safetensors(const std::string& path, const NamedTensors& tensors,
                      const std::map<std::string, std::string>& metadata = {});

struct Checkpoint {
  NamedTensors tensors;                          // CPU, contiguous, in data-offset order (= save order)
  std::map<std::string, std::string> metadata;
  const Tensor* find(const std::string& name) const;  // nullptr if absent
  const Tensor& at(const std::string& name) const;    // throws naming the file's tensors if absent
};

// Reads a safetensors file with dtypes F32, F64 or BF16. Any malformed input (short file, header
// length beyond the file, bad JSON, unknown dtype, offsets out of range/overlapping/with gaps, a shape
// that does not match its byte range) throws df::Error naming the file and what was expected vs found.
Checkpoint load_safetensors(const std::string& path);

// A JSON summary {name: {"dtype", "shape", "sum", "first": [up to 8 values]}} for cross-checking a file
// with another reader (tools/check_safetensors.py compares it against safetensors.torch.load_file).
std::string tensor_summary_json(const NamedTensors& tensors);

}  // namespace df
