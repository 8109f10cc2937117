// A per-op profiler for finding where a training step's time goes. Off unless the environment
// variable DF_PROFILE is set when the program starts:
//   DF_PROFILE=1     host time per op (what the CPU spends issuing each op, its rules included)
//   DF_PROFILE=sync  also synchronises the device after every op, so each op's time includes its
//                    kernels (slows the run down; use it to rank ops, not to measure the step)
// Times are exclusive: an op called from another op's JVP rule is charged to itself, not to both.
// The table is printed to stderr at exit, or on demand with profile_report().
#pragma once
#include <cstdio>

namespace df {

bool profile_enabled();
void profile_reset();
void profile_report(std::FILE* out = stderr);

// One timed region named by a string with static storage (op names, phase labels).
class ProfileScope {
 public:
  explicit ProfileScope(const char* name);
  ~ProfileScope();
  ProfileScope(const ProfileScope&) = delete;
  ProfileScope& operator=(const ProfileScope&) = delete;

 private:
  const char* name_ = nullptr;
  double start_ = 0, child_ = 0;
  ProfileScope* parent_ = nullptr;
};

}  // namespace df
