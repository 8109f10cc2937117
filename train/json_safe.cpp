// Bounded JSON parsing through nlohmann's parser callback (it reports each container's depth as it
// opens, so deep nesting is refused before it is built) and short, safe excerpts for error messages.
#include "train/json_safe.h"

#include <vector>

#include "core/error.h"

namespace df {

namespace {

// The key path of the value being parsed, for messages: "model.depth", "[].name" (arrays unindexed).
std::string path_string(const std::vector<std::string>& at) {
  std::string s;
  for (const std::string& k : at) s += (s.empty() ? "" : ".") + (k.empty() ? std::string("[]") : k);
  return s;
}

template <class J>
J parse_bounded(const std::string& text, const std::string& what, int max_depth, size_t max_bytes,
                bool allow_comments) {
  DF_CHECK(text.size() <= max_bytes, what, ": expected at most ", max_bytes, " bytes of JSON, got ", text.size());
  std::vector<std::string> at;   // at[d - 1] = the key of the value at depth d ("" inside arrays)
  bool too_deep = false;
  auto callback = [&](int depth, typename J::parse_event_t event, J& parsed) {
    using E = typename J::parse_event_t;
    if (event == E::object_start || event == E::array_start) {
      if (depth >= max_depth) {
        too_deep = true;
        throw Error("");   // caught below; the message needs the position, found by the scan there
      }
      if ((int)at.size() > depth) at.resize(depth);
    } else if (event == E::key) {
      at.resize(depth > 0 ? depth - 1 : 0);
      at.push_back(parsed.is_string() ? text_excerpt(parsed.template get_ref<const std::string&>(), 40) : "?");
    }
    return true;
  };
  try {
    return J::parse(text, callback, /*allow_exceptions=*/true, allow_comments);
  } catch (const Error& e) {
    if (!too_deep) throw;
    // The byte where the nesting passes max_depth, outside strings (comments are not skipped: an
    // approximate position is enough for a message).
    size_t pos = 0;
    int depth = 0;
    bool in_string = false;
    for (; pos < text.size(); ++pos) {
      char c = text[pos];
      if (in_string) {
        if (c == '\\') ++pos;
        else if (c == '"') in_string = false;
      } else if (c == '"') {
        in_string = true;
      } else if (c == '[' || c == '{') {
        if (++depth > max_depth) break;
      } else if (c == ']' || c == '}') {
        --depth;
      }
    }
    DF_FAIL(what, ": JSON nested deeper than ", max_depth, " levels (at byte ", pos,
            at.empty() ? std::string() : ", under key '" + path_string(at) + "'", ")");
  } catch (const nlohmann::json::parse_error& e) {
    DF_FAIL(what, ": invalid JSON at byte ", e.byte, (at.empty() ? "" : " (under key '" + path_string(at) + "')"),
            ": ", text_excerpt(e.what(), 200));
  } catch (const nlohmann::json::exception& e) {
    // out_of_range.406 (a number like 1e999), excessive sizes, ...: the message quotes the token, cut short.
    DF_FAIL(what, ": bad JSON value", (at.empty() ? "" : " at key '" + path_string(at) + "'"), ": ",
            text_excerpt(e.what(), 200));
  }
}

template <class J>
void excerpt_into(const J& v, std::string& out, size_t limit) {
  if (out.size() >= limit) return;
  if (v.is_object() || v.is_array()) {
    bool obj = v.is_object();
    out += obj ? '{' : '[';
    bool first = true;
    for (auto it = v.begin(); it != v.end(); ++it) {
      if (out.size() >= limit) return;
      if (!first) out += ',';
      first = false;
      if (obj) out += J(it.key()).dump(-1, ' ', false, J::error_handler_t::replace) + ':';
      excerpt_into(it.value(), out, limit);
    }
    out += obj ? '}' : ']';
  } else if (v.is_string()) {
    const std::string& s = v.template get_ref<const std::string&>();
    J cut(s.substr(0, limit - out.size() + 1));
    out += cut.dump(-1, ' ', false, J::error_handler_t::replace);
  } else {
    out += v.dump(-1, ' ', false, J::error_handler_t::replace);
  }
}

template <class J>
std::string excerpt(const J& v, size_t max_chars) {
  std::string out;
  excerpt_into(v, out, max_chars);
  if (out.size() > max_chars) {
    out.resize(max_chars);
    out += "...";
  }
  return out;
}

}  // namespace

nlohmann::json parse_json_bounded(const std::string& text, const std::string& what, int max_depth, size_t max_bytes,
                                  bool allow_comments) {
  return parse_bounded<nlohmann::json>(text, what, max_depth, max_bytes, allow_comments);
}

nlohmann::ordered_json parse_ordered_json_bounded(const std::string& text, const std::string& what, int max_depth,
                                                  size_t max_bytes, bool allow_comments) {
  return parse_bounded<nlohmann::ordered_json>(text, what, max_depth, max_bytes, allow_comments);
}

std::string json_excerpt(const nlohmann::json& v, size_t max_chars) { return excerpt(v, max_chars); }
std::string json_excerpt(const nlohmann::ordered_json& v, size_t max_chars) { return excerpt(v, max_chars); }

std::string text_excerpt(const std::string& s, size_t max_chars) {
  std::string out;
  size_t i = 0;
  for (; i < s.size() && out.size() < max_chars; ++i) {
    unsigned char c = (unsigned char)s[i];
    if (c >= 0x20 && c < 0x7f) {
      out += char(c);
    } else {
      static const char* hex = "0123456789abcdef";
      out += "\\x";
      out += hex[c >> 4];
      out += hex[c & 15];
    }
  }
  if (i < s.size()) out += "... (" + std::to_string(s.size()) + " bytes)";
  return out;
}

}  // namespace df
