// Small helpers shared by the test suites: temp folders, capturing an error message, substring test,
// whether a GPU is present, where Fashion-MNIST is.
#pragma once
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <functional>
#include <string>

#include "core/error.h"
#include "core/tensor.h"
#include "train/datasets.h"

namespace df::test {

// A fresh, empty folder under /tmp unique to this process and tag.
inline std::string temp_dir(const std::string& tag) {
  std::string d = "/tmp/dualflow_test_" + tag + "_" + std::to_string(::getpid());
  std::filesystem::remove_all(d);
  std::filesystem::create_directories(d);
  return d;
}

// The message of the df::Error that f throws, or "(no error)".
inline std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

inline bool contains(const std::string& s, const std::string& sub) { return s.find(sub) != std::string::npos; }

// True when a CUDA backend registered itself (a GPU is present); the suites skip visibly otherwise.
inline bool have_cuda() { return cuda_available(); }

// Where the suites find Fashion-MNIST: $DF_FASHION_MNIST_DIR (a machine without Debian's package,
// e.g. the GPU box, with the .gz files carried), else the package's path.
inline std::string fmnist_dir() {
  const char* env = std::getenv("DF_FASHION_MNIST_DIR");
  return env && *env ? env : kFashionMnistDir;
}

}  // namespace df::test
