// Model presets, construction by name or config, and the JSON form of model configs.
#include "models/registry.h"

#include <nlohmann/json.hpp>

namespace df {

namespace {

using json = nlohmann::json;

std::string names_list() {
  std::string s;
  for (const auto& n : model_names()) s += (s.empty() ? "" : ", ") + n;
  return s;
}

template <class T>
void read_key(const json& j, const std::string& key, T& out) {
  try {
    out = j.at(key).get<T>();
  } catch (const json::exception& e) {
    DF_FAIL("model config: key '", key, "' has a bad value ", j.at(key).dump(), " (", e.what(), ")");
  }
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
    DF_FAIL("model_config: unknown model '", name, "' (valid: ", names_list(), ")");
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

ModelConfig model_config_from_json(const json& j, int64_t channels, int64_t resolution) {
  DF_CHECK(j.is_object(), "model config: expected a JSON object, got ", j.dump());
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
    DF_CHECK(arch == "unet" || arch == "dit", "model config: key 'arch' must be \"unet\" or \"dit\", got \"", arch,
             "\"");
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
      DF_FAIL("model config: unknown key '", key, "' for arch ", m.arch, " (valid: ", keys, ")");
    }
  }
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
