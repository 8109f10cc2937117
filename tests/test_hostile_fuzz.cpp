// The fuzz targets in the normal suite: every seed (valid ones load, hostile ones end in df::Error),
// the checked-in corpus matches the seeds, and a seeded mutation loop runs each target for a bounded
// number of inputs (DF_FUZZ_ITERS per target, default 120; DF_FUZZ_SEED picks another sequence).
// `make fuzz` runs the same targets under libFuzzer with ASan and UBSan.
#include <doctest/doctest.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>

#include "fuzz/seeds.h"
#include "fuzz/targets.h"
#include "tests/test_util.h"

using namespace df;
namespace fs = std::filesystem;

namespace {

// fuzz/corpus from the repository root (where `make test` runs) or relative to this source file.
std::string corpus_dir() {
  for (std::string d : {std::string("fuzz/corpus"), fs::path(__FILE__).parent_path().string() + "/../fuzz/corpus"})
    if (fs::is_directory(d)) return d;
  return "fuzz/corpus";
}

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

int64_t env_int(const char* name, int64_t fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::strtoll(v, nullptr, 10) : fallback;
}

// One random edit of the kinds that found the bugs: bit flips, boundary integers (LE and BE),
// JSON tokens (deep brackets, 1e999, 2^53+1), cuts, duplications and splices with another seed.
void mutate_once(std::string& s, std::mt19937_64& rng, const std::string& other) {
  auto pick = [&](size_t n) { return n == 0 ? size_t(0) : size_t(rng() % n); };
  static const uint32_t ints[] = {0, 1, 0x7f, 0x80, 0xff, 0x100, 0x4000, 0x4001, 0xffff, 0x10000, 0x7fffffff,
                                  0x80000000u, 0xffffffffu};
  static const char* tokens[] = {"[[[[[[[[", "{\"a\":", "1e999", "-1", "9007199254740993", "18446744073709551616",
                                 "0.5", "null", "\"\\u0000\"", "]", "}", ",", "1e300", "-9223372036854775808"};
  switch (rng() % 10) {
    case 0:
      if (!s.empty()) s[pick(s.size())] ^= char(1u << (rng() % 8));
      break;
    case 1:
      if (!s.empty()) s[pick(s.size())] = "\x00\xff\x7f\x80[{\"9-"[rng() % 9];
      break;
    case 2: {   // a boundary integer over 4 bytes, either byte order
      if (s.size() < 4) break;
      uint32_t v = ints[rng() % (sizeof ints / sizeof *ints)];
      size_t at = pick(s.size() - 3);
      bool be = rng() % 2;
      for (int k = 0; k < 4; ++k) s[at + k] = char(v >> (8 * (be ? 3 - k : k)));
      break;
    }
    case 3: {
      size_t at = pick(s.size() + 1), len = pick(std::min<size_t>(s.size() - at, 64) + 1);
      s.erase(at, len);
      break;
    }
    case 4: {
      size_t at = pick(s.size() + 1), len = 1 + pick(16);
      std::string ins(len, '\0');
      for (char& c : ins) c = char(rng());
      s.insert(at, ins);
      break;
    }
    case 5: {
      if (s.empty()) break;
      size_t at = pick(s.size()), len = 1 + pick(std::min<size_t>(s.size() - at, 256));
      s.insert(pick(s.size() + 1), s.substr(at, len));
      break;
    }
    case 6:
      s.resize(pick(s.size() + 1));
      break;
    case 7:
      s = s.substr(0, pick(s.size() + 1)) + other.substr(pick(other.size() + 1));
      break;
    default:
      s.insert(pick(s.size() + 1), tokens[rng() % (sizeof tokens / sizeof *tokens)]);
      break;
  }
  if (s.size() > (size_t(1) << 20)) s.resize(size_t(1) << 20);
}

}  // namespace

TEST_CASE("fuzz: every seed: valid inputs load, each hostile input of issue 21 ends in df::Error") {
  int valid = 0, hostile = 0;
  for (const fuzz::Seed& s : fuzz::seeds()) {
    CAPTURE(s.target);
    CAPTURE(s.name);
    const fuzz::Target& t = fuzz::target(s.target);
    std::string outcome;
    try {
      t.run(reinterpret_cast<const uint8_t*>(s.bytes.data()), s.bytes.size());
      outcome = "loaded";
    } catch (const Error& e) {
      outcome = std::string("error: ") + e.what();
    } catch (const std::exception& e) {
      outcome = std::string("escaped: ") + e.what();
    }
    CAPTURE(outcome);
    if (s.hostile) {
      CHECK(outcome.rfind("error: ", 0) == 0);
      hostile++;
    } else {
      CHECK(outcome == "loaded");
      valid++;
    }
  }
  CHECK(valid >= 15);
  CHECK(hostile >= 20);
}

TEST_CASE("fuzz: the checked-in corpus is the seeds (DF_WRITE_FUZZ_CORPUS=1 rewrites it)") {
  std::string dir = corpus_dir();
  bool write = std::getenv("DF_WRITE_FUZZ_CORPUS") != nullptr;
  for (const fuzz::Seed& s : fuzz::seeds()) {
    std::string path = dir + "/" + s.target + "/" + s.name;
    CAPTURE(path);
    if (write) {
      fs::create_directories(dir + "/" + s.target);
      std::ofstream(path, std::ios::binary).write(s.bytes.data(), std::streamsize(s.bytes.size()));
    }
    CHECK(read_all(path) == s.bytes);
  }
}

TEST_CASE("fuzz: a seeded mutation loop over every target ends in success or df::Error, never anything else") {
  const int64_t iters = env_int("DF_FUZZ_ITERS", 120);
  const uint64_t seed0 = uint64_t(env_int("DF_FUZZ_SEED", 21));
  // A smaller file limit than the harness's 64 MB keeps the gzip bomb's mutants quick to refuse.
  (void)fuzz::scratch_dir();
  LoadLimits saved = load_limits();
  load_limits().max_file_bytes = uint64_t(4) << 20;
  int64_t total = 0;
  std::string summary;
  for (const fuzz::Target& t : fuzz::targets()) {
    std::vector<const fuzz::Seed*> pool, valid;
    for (const fuzz::Seed& s : fuzz::seeds())
      if (s.target == t.name) {
        pool.push_back(&s);
        if (!s.hostile) valid.push_back(&s);
      }
    REQUIRE(!valid.empty());
    uint64_t name_hash = 1469598103934665603ull;   // FNV-1a of the name: each target its own sequence
    for (const char* c = t.name; *c; ++c) name_hash = (name_hash ^ uint8_t(*c)) * 1099511628211ull;
    std::mt19937_64 rng(seed0 ^ name_hash);
    auto start = std::chrono::steady_clock::now();
    int64_t done = 0, loaded = 0;
    for (; done < iters; ++done) {
      // Half the inputs start from a valid file, so that mutants also get past the first checks.
      const auto& from = rng() % 2 ? valid : pool;
      std::string input = from[rng() % from.size()]->bytes;
      int edits = 1 + int(rng() % 2);
      for (int k = 0; k < edits; ++k) mutate_once(input, rng, pool[rng() % pool.size()]->bytes);
      bool ok = false;
      std::string escaped = fuzz::run_one(t, reinterpret_cast<const uint8_t*>(input.data()), input.size(), &ok);
      loaded += ok;
      if (!escaped.empty()) {
        std::string keep = fs::temp_directory_path().string() + "/dualflow_fuzz_failure_" + t.name + "_" +
                           std::to_string(done);
        std::ofstream(keep, std::ios::binary).write(input.data(), std::streamsize(input.size()));
        FAIL_CHECK("target " << t.name << ", input " << done << " (saved as " << keep << "): " << escaped);
      }
      // A safety net for slow machines (sanitizer builds): no target takes more than 20 s.
      if (std::chrono::steady_clock::now() - start > std::chrono::seconds(20)) break;
    }
    total += done;
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    summary += " " + std::string(t.name) + " " + std::to_string(done) + " (" + std::to_string(loaded) + " loaded, " +
               std::to_string(int(secs * 1000)) + " ms);";
    // Mutants still get through the loaders now and then, so the loop reaches past the first check
    // (the gzip target's valid seed is tiny, and any edit breaks its CRC: it may load none).
    if (std::string(t.name) != "gzip" && done >= 50) CHECK_MESSAGE(loaded > 0, "target " << std::string(t.name) << ": nothing loaded");
  }
  load_limits() = saved;
  MESSAGE("mutation loop:" << summary);
  CHECK(total >= int64_t(fuzz::targets().size()));
}
