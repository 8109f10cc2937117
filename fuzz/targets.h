// Fuzz targets: each feeds one input (any bytes) to one parser or loader. Returning, or throwing
// df::Error, is the expected outcome; anything else (a crash, a hang, a sanitizer report, another
// exception type) is a bug. Used by the libFuzzer binaries (fuzz/fuzz_entry.cpp, `make fuzz`) and by
// the seeded mutation loop in the test suite (tests/test_hostile_fuzz.cpp).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace df::fuzz {

struct Target {
  const char* name;                            // also the corpus folder: fuzz/corpus/<name>/
  void (*run)(const uint8_t* data, size_t size);
};

// safetensors, config, idx, cifar, image, folder, gzip.
const std::vector<Target>& targets();
const Target& target(const std::string& name);

// Runs one input; returns "" when it ended normally or with df::Error, else what escaped (the type
// and message of any other exception). Crashes and sanitizer reports abort the process as they should.
// `loaded` (if given) tells whether it ended normally.
std::string run_one(const Target& t, const uint8_t* data, size_t size, bool* loaded = nullptr);

// A scratch folder private to this process (created on first use), where inputs are written as files.
const std::string& scratch_dir();

}  // namespace df::fuzz
