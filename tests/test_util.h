// Small helpers shared by the test suites: temp folders, capturing an error message, substring test.
#pragma once
#include <unistd.h>

#include <filesystem>
#include <functional>
#include <string>

#include "core/error.h"

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

}  // namespace df::test
