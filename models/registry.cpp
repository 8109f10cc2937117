// Model presets, construction by name or config, and the JSON form of model configs. Configs from JSON
// (a config file or a checkpoint's metadata) are read strictly and bounded before any model is built.
#include "models/registry.h"

#include <cmath>
#include <nlohmann/json.hpp>

#include "train/json_safe.h"

namespace df {

namespace {

using json = nlohmann::json;

std::string names_list() {
  std::string s;
  for (const auto& n : model_names()) s += (s.empty() ? "" : ", ") + n;
  return s;
}

[[noreturn]] void bad_value(const std::string& key, const json& v, const char* expected) {
  DF_FAIL("model config: key '", key, "': expected ", expected, ", got ", json_excerpt(v));
}

// Typed reads with no conversion a hostile value could abuse: integers must be integral and in int64
// range (2.0 is accepted, 2.5 and 1e300 are not; no float-to-int cast outside the range).
void read_value(const std::string& key, const json& v, int64_t& out) {
  if (v.is_number_integer() && !(v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(INT64_MAX))) {
    out = v.get<int64_t>();
    return;
  }
  if (v.is_number_float()) {
    double x = v.get<double>();
    if (std::isfinite(x) && std::floor(x) == x && std::fabs(x) <= 9007199254740992.0) {
      out = int64_t(x);
      return;
    }
  }
  bad_value(key, v, "an integer");
}
void read_value(const std::string& key, const json& v, double& out) {
  if (!v.is_number() || !std::isfinite(v.get<double>())) bad_value(key, v, "a finite number");
  out = v.get<double>();
}
void read_value(const std::string& key, const json& v, bool& out) {
  if (!v.is_boolean()) bad_value(key, v, "true or false");
  out = v.get<bool>();
}
void read_value(const std::string& key, const json& v, std::string& out) {
  if (!v.is_string()) bad_value(key, v, "a string");
  out = v.get<std::string>();
}
void read_value(const std::string& key, const json& v, std::vector<int64_t>& out) {
  if (!v.is_array() || v.size() > 16) bad_value(key, v, "an array of at most 16 integers");
  out.clear();
  for (const json& x : v) {
    int64_t i = 0;
    read_value(key, x, i);
    out.push_back(i);
  }
}

template <class T>
void read_key(const json& j, const std::string& key, T& out) {
  read_value(key, j.at(key), out);
}

// Bounds far above any model this engine trains, low enough that no loop, shift or allocation a
// config can ask for runs away (a depth of 2^53 would otherwise build blocks until memory runs out).
void check_range(const char* key, double v, double lo, double hi) {
  DF_CHECK(v >= lo && v <= hi, "model config: key '", key, "': expected a value in [", lo, ", ", hi, "], got ", v);
}

void validate(const ModelConfig& m) {
  if (m.arch == "unet") {
    const UNetConfig& u = m.unet;
    check_range("in_channels", double(u.in_channels), 1, 64);
    check_range("resolution", double(u.resolution), 1, 4096);
    check_range("base_channels", double(u.base_channels), 1, 4096);
    DF_CHECK(!u.channel_mults.empty() && u.channel_mults.size() <= 8, "model config: key 'channel_mults': expected 1 "
             "to 8 levels, got ", u.channel_mults.size());
    for (int64_t x : u.channel_mults) check_range("channel_mults", double(x), 1, 64);
    check_range("res_blocks", double(u.res_blocks), 1, 64);
    for (int64_t x : u.attn_resolutions) check_range("attn_resolutions", double(x), 0, 4096);
    check_range("heads", double(u.heads), 1, 1024);
    check_range("norm_groups", double(u.norm_groups), 1, 4096);
    check_range("dropout", u.dropout, 0, 0.999);
    check_range("emb_mult", double(u.emb_mult), 1, 64);
    check_range("max_period", u.max_period, 1e-6, 1e12);
    check_range("skip_scale", u.skip_scale, -1e6, 1e6);
  } else {
    const DiTConfig& d = m.dit;
    check_range("in_channels", double(d.in_channels), 1, 64);
    check_range("resolution", double(d.resolution), 1, 4096);
    check_range("patch", double(d.patch), 1, 256);
    check_range("width", double(d.width), 1, 16384);
    check_range("depth", double(d.depth), 0, 1024);
    check_range("heads", double(d.heads), 1, 1024);
    check_range("mlp_ratio", d.mlp_ratio, 1e-3, 64);
    check_range("freq_dim", double(d.freq_dim), 2, 65536);
    check_range("max_period", d.max_period, 1e-6, 1e12);
  }
  double n = estimate_parameter_count(m);
  DF_CHECK(n <= double(kMaxModelParameters), "model config: about ", n, " parameters (", m.arch,
           "), more than the limit of ", double(kMaxModelParameters));
}

// Field table shared by reading and writing, so the two cannot drift apart.
template <class F>
void unet_fields(UNetConfig& c, F&& f) {
  f("base_channels", c.base_channels);
  f("channel_mults", c.channel_mults);
  f("res_blocks", c.res_blocks);
  f("attn_resolutions", c.attn_resolutions);
  f("mid_attention", c.mid_attention);
  f("heads", c.heads);
  f("norm_groups", c.norm_groups);
  f("dropout", c.dropout);
  f("emb_mult", c.emb_mult);
  f("max_period", c.max_period);
  f("adaptive_double_norm", c.adaptive_double_norm);
  f("skip_scale", c.skip_scale);
  f("zero_init", c.zero_init);
}

template <class F>
void dit_fields(DiTConfig& c, F&& f) {
  f("patch", c.patch);
  f("width", c.width);
  f("depth", c.depth);
  f("heads", c.heads);
  f("mlp_ratio", c.mlp_ratio);
  f("freq_dim", c.freq_dim);
  f("max_period", c.max_period);
  f("qkv_bias", c.qkv_bias);
  f("zero_init", c.zero_init);
}

}  // namespace

std::vector<std::string> model_names() { return {"DiT-S/2", "DiT-tiny", "UNet-128", "UNet-small", "UNet-tiny"}; }

ModelConfig model_config(const std::string& name, int64_t channels, int64_t resolution) {
  DF_CHECK(channels > 0 && resolution > 0, "model_config: expected positive channels and resolution, got ",
           channels, ", ", resolution);
  ModelConfig m;
  m.name = name;
  m.unet.in_channels = m.dit.in_channels = channels;
  m.unet.resolution = m.dit.resolution = resolution;
  UNetConfig& u = m.unet;
  DiTConfig& d = m.dit;
  if (name == "DiT-S/2") {
    m.arch = "dit";
    d.patch = 2, d.width = 384, d.depth = 12, d.heads = 6;
  } else if (name == "DiT-tiny") {
    m.arch = "dit";
    d.patch = 2, d.width = 128, d.depth = 4, d.heads = 4, d.freq_dim = 128;
  } else if (name == "UNet-128") {
    u.base_channels = 128, u.channel_mults = {1, 2, 2}, u.res_blocks = 2, u.heads = 4, u.norm_groups = 32;
    u.attn_resolutions = {resolution / 2};
  } else if (name == "UNet-small") {
    u.base_channels = 64, u.channel_mults = {1, 2, 2}, u.res_blocks = 2, u.heads = 4, u.norm_groups = 32;
    u.attn_resolutions = {resolution / 2};
  } else if (name == "UNet-tiny") {
    u.base_channels = 32, u.channel_mults = {1, 2}, u.res_blocks = 1, u.heads = 2, u.norm_groups = 8;
    u.attn_resolutions = {resolution / 2};
  } else {
    DF_FAIL("model_config: unknown model '", text_excerpt(name, 40), "' (valid: ", names_list(), ")");
  }
  return m;
}

std::shared_ptr<ImageDenoiser> make_model(const ModelConfig& cfg, Generator& g, DType dtype) {
  if (cfg.arch == "unet") return std::make_shared<UNet>(cfg.unet, g, dtype);
  if (cfg.arch == "dit") return std::make_shared<DiT>(cfg.dit, g, dtype);
  DF_FAIL("make_model: unknown arch '", cfg.arch, "' (valid: unet, dit)");
}

std::shared_ptr<ImageDenoiser> make_model(const std::string& name, int64_t channels, int64_t resolution, Generator& g,
                                          DType dtype) {
  return make_model(model_config(name, channels, resolution), g, dtype);
}

double estimate_parameter_count(const ModelConfig& m) {
  // A lower bound from the dominant weights only, in double so no product can overflow.
  if (m.arch == "unet") {
    const UNetConfig& u = m.unet;
    double n = 0;
    for (int64_t mult : u.channel_mults) {
      double ch = double(u.base_channels) * double(mult);
      n += double(2 * u.res_blocks + 1) * 18.0 * ch * ch;   // two 3x3 convs per res block, down and up
    }
    return n;
  }
  const DiTConfig& d = m.dit;
  double w = double(d.width), tokens = std::pow(std::floor(double(d.resolution) / double(d.patch)), 2.0);
  return double(d.depth) * (10.0 + 2.0 * d.mlp_ratio) * w * w + tokens * w +
         2.0 * double(d.in_channels) * double(d.patch) * double(d.patch) * w;
}

ModelConfig model_config_from_json(const json& j, int64_t channels, int64_t resolution) {
  DF_CHECK(j.is_object(), "model config: expected a JSON object, got ", json_excerpt(j));
  ModelConfig m;
  if (j.contains("name")) {
    std::string name;
    read_key(j, "name", name);
    m = model_config(name, channels, resolution);
  } else {
    m.unet.in_channels = m.dit.in_channels = channels;
    m.unet.resolution = m.dit.resolution = resolution;
  }
  if (j.contains("arch")) {
    std::string arch;
    read_key(j, "arch", arch);
    DF_CHECK(arch == "unet" || arch == "dit", "model config: key 'arch' must be \"unet\" or \"dit\", got \"",
             text_excerpt(arch, 40), "\"");
    DF_CHECK(!j.contains("name") || arch == m.arch, "model config: 'arch' \"", arch, "\" contradicts 'name' \"",
             m.name, "\" (a ", m.arch, ")");
    m.arch = arch;
  } else {
    DF_CHECK(j.contains("name"), "model config: needs 'name' (one of ", names_list(), ") or 'arch' (unet, dit)");
  }
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& key = it.key();
    if (key == "name" || key == "arch") continue;
    bool known = false;
    auto visit = [&](const char* field, auto& value) {
      if (key == field) {
        read_key(j, key, value);
        known = true;
      }
    };
    if (m.arch == "unet") unet_fields(m.unet, visit);
    else dit_fields(m.dit, visit);
    if (!known) {
      std::string keys = "name, arch";
      auto collect = [&](const char* field, auto&) { keys += std::string(", ") + field; };
      if (m.arch == "unet") unet_fields(m.unet, collect);
      else dit_fields(m.dit, collect);
      DF_FAIL("model config: unknown key '", text_excerpt(key, 40), "' for arch ", m.arch, " (valid: ", keys, ")");
    }
  }
  validate(m);
  return m;
}

json model_config_to_json(const ModelConfig& cfg) {
  json j;
  j["arch"] = cfg.arch;
  ModelConfig c = cfg;
  auto put = [&](const char* field, auto& value) { j[field] = value; };
  if (c.arch == "unet") unet_fields(c.unet, put);
  else dit_fields(c.dit, put);
  return j;
}

}  // namespace df
