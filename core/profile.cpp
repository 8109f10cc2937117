#include "core/profile.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/tensor.h"

namespace df {

namespace {

struct Entry {
  int64_t calls = 0;
  double seconds = 0;  // exclusive
};

struct Profiler {
  int mode = 0;  // 0 off, 1 host, 2 host + device sync
  std::mutex mu;
  std::unordered_map<std::string, Entry> table;
  std::chrono::steady_clock::time_point t0 = std::chrono::steady_clock::now();
  Profiler() {
    const char* e = std::getenv("DF_PROFILE");
    if (!e || !*e || std::strcmp(e, "0") == 0) return;
    mode = std::strcmp(e, "sync") == 0 ? 2 : 1;
    std::atexit([] { profile_report(stderr); });
  }
};

// Never destroyed: the report runs from atexit, after static destructors may have run.
Profiler& prof() {
  static Profiler* p = new Profiler;
  return *p;
}

thread_local ProfileScope* g_top = nullptr;

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

void device_sync() {
  if (auto s = device_hooks().synchronize) s();
}

}  // namespace

bool profile_enabled() { return prof().mode != 0; }

void profile_reset() {
  Profiler& p = prof();
  std::lock_guard<std::mutex> lock(p.mu);
  p.table.clear();
  p.t0 = std::chrono::steady_clock::now();
}

ProfileScope::ProfileScope(const char* name) {
  if (!prof().mode) return;
  if (prof().mode == 2) device_sync();
  name_ = name;
  parent_ = g_top;
  g_top = this;
  start_ = now_s();
}

ProfileScope::~ProfileScope() {
  if (!name_) return;
  if (prof().mode == 2) device_sync();
  double total = now_s() - start_;
  g_top = parent_;
  if (parent_) parent_->child_ += total;
  Profiler& p = prof();
  std::lock_guard<std::mutex> lock(p.mu);
  Entry& e = p.table[name_];
  ++e.calls;
  e.seconds += total - child_;
}

void profile_report(std::FILE* out) {
  Profiler& p = prof();
  if (!p.mode) return;
  std::vector<std::pair<std::string, Entry>> rows;
  {
    std::lock_guard<std::mutex> lock(p.mu);
    rows.assign(p.table.begin(), p.table.end());
  }
  std::sort(rows.begin(), rows.end(), [](auto& a, auto& b) { return a.second.seconds > b.second.seconds; });
  double sum = 0;
  int64_t calls = 0;
  for (auto& r : rows) sum += r.second.seconds, calls += r.second.calls;
  double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - p.t0).count();
  std::fprintf(out, "\nDF_PROFILE=%s: %lld op calls, %.3f s in ops of %.3f s wall (exclusive times)\n",
               p.mode == 2 ? "sync" : "1", (long long)calls, sum, wall);
  std::fprintf(out, "%-28s %10s %12s %10s %7s\n", "op", "calls", "total ms", "us/call", "%");
  size_t shown = 0;
  for (auto& [name, e] : rows) {
    if (++shown > 40) break;
    std::fprintf(out, "%-28s %10lld %12.2f %10.2f %6.1f%%\n", name.c_str(), (long long)e.calls, e.seconds * 1e3,
                 e.seconds * 1e6 / double(std::max<int64_t>(e.calls, 1)), sum > 0 ? 100 * e.seconds / sum : 0);
  }
  if (rows.size() > shown) std::fprintf(out, "(%zu more ops)\n", rows.size() - shown);
}

}  // namespace df
