// JSON from files a user may not have written (configs, checkpoint headers and metadata): bounded size
// and nesting depth, every library exception turned into a df::Error naming the source, key and byte, and
// short excerpts of values for messages (a hostile value is never dumped whole into an error).
#pragma once
#include <cstddef>
#include <nlohmann/json.hpp>
#include <string>

namespace df {

constexpr int kJsonMaxDepth = 64;                       // nested arrays/objects; configs use 4
constexpr size_t kJsonMaxBytes = size_t(100) << 20;     // the safetensors header limit

// Parses `text`; `what` names the source in errors ("config runs/x.json", "checkpoint a.st: header").
// Nesting deeper than max_depth is rejected while parsing (before a deep tree exists), so neither the
// parser nor a later copy, dump or destructor can recurse deeply. Comments are allowed only if asked.
nlohmann::json parse_json_bounded(const std::string& text, const std::string& what, int max_depth = kJsonMaxDepth,
                                  size_t max_bytes = kJsonMaxBytes, bool allow_comments = false);
nlohmann::ordered_json parse_ordered_json_bounded(const std::string& text, const std::string& what,
                                                  int max_depth = kJsonMaxDepth, size_t max_bytes = kJsonMaxBytes,
                                                  bool allow_comments = false);

// The JSON text of `v` cut to about max_chars (then "... (N more)" style ellipsis), never throwing on
// invalid UTF-8, and never walking more of `v` than it prints.
std::string json_excerpt(const nlohmann::json& v, size_t max_chars = 80);
std::string json_excerpt(const nlohmann::ordered_json& v, size_t max_chars = 80);
// A string cut to max_chars with non-printable bytes escaped, for quoting untrusted text.
std::string text_excerpt(const std::string& s, size_t max_chars = 80);

}  // namespace df
