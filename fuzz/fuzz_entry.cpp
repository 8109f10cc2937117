// libFuzzer entry point for one target of fuzz/targets.cpp, chosen when it is built
// (-DDF_FUZZ_TARGET='"image"'; `make fuzz` builds one binary per target).
#include <cstdio>
#include <cstdlib>

#include "fuzz/targets.h"

#ifndef DF_FUZZ_TARGET
#error "build with -DDF_FUZZ_TARGET='\"<target name>\"'"
#endif

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const df::fuzz::Target& target = df::fuzz::target(DF_FUZZ_TARGET);
  std::string escaped = df::fuzz::run_one(target, data, size);
  if (!escaped.empty()) {
    // Only df::Error is an expected outcome: anything else is a finding, so make libFuzzer keep it.
    std::fprintf(stderr, "fuzz %s: escaped exception: %s\n", target.name, escaped.c_str());
    std::abort();
  }
  return 0;
}
