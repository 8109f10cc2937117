// Errors that name the op (or file) and what was expected vs what was got, with file:line.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace df {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

namespace detail {
inline void cat_into(std::ostringstream&) {}
template <class A, class... R>
void cat_into(std::ostringstream& os, const A& a, const R&... r) {
  os << a;
  cat_into(os, r...);
}
template <class... A>
[[noreturn]] void fail(const char* file, int line, const A&... a) {
  std::ostringstream os;
  cat_into(os, a...);
  os << " [" << file << ":" << line << "]";
  throw Error(os.str());
}
}  // namespace detail

template <class... A>
std::string cat(const A&... a) {
  std::ostringstream os;
  detail::cat_into(os, a...);
  return os.str();
}

}  // namespace df

// DF_CHECK(cond, "op_name", ": expected ", x, ", got ", y)
#define DF_CHECK(cond, ...) \
  do { if (!(cond)) ::df::detail::fail(__FILE__, __LINE__, __VA_ARGS__); } while (0)
#define DF_FAIL(...) ::df::detail::fail(__FILE__, __LINE__, __VA_ARGS__)
