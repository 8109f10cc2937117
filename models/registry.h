// Image models by name ("DiT-S/2", "UNet-128", small presets) or from explicit configs (structs or
// the trainer's JSON objects), all behind ImageDenoiser::forward(x, c_noise).
#pragma once
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

#include "models/dit.h"
#include "models/unet.h"

namespace df {

struct ModelConfig {
  std::string arch = "unet";   // "unet" or "dit": which of the two structs is used
  std::string name;            // the preset it started from, if any (informational)
  UNetConfig unet;
  DiTConfig dit;
};

// Presets: "DiT-S/2" (benchmark), "DiT-tiny", "UNet-128" (benchmark), "UNet-small", "UNet-tiny".
std::vector<std::string> model_names();
// Preset `name` for images of `channels` x `resolution` x `resolution`. U-Net presets put their
// attention at resolution / 2 (16x16 for 32x32 inputs). Unknown names list the valid ones.
ModelConfig model_config(const std::string& name, int64_t channels, int64_t resolution);

std::shared_ptr<ImageDenoiser> make_model(const ModelConfig& cfg, Generator& g, DType dtype = DType::F32);
std::shared_ptr<ImageDenoiser> make_model(const std::string& name, int64_t channels, int64_t resolution, Generator& g,
                                          DType dtype = DType::F32);

// JSON: {"name": "UNet-small", ...overrides} starts from a preset; {"arch": "unet" | "dit", ...} from
// the struct defaults. Keys are the struct field names (e.g. "base_channels", "channel_mults",
// "attn_resolutions", "adaptive_double_norm"; "patch", "width", "depth", "heads"). Channels and
// resolution come from the data. Unknown keys and wrongly typed values are errors naming the key.
ModelConfig model_config_from_json(const nlohmann::json& j, int64_t channels, int64_t resolution);
// A lower bound on the parameter count (dominant weights only); model_config_from_json refuses
// configs above kMaxModelParameters, and sizes, depths and counts outside generous fixed ranges.
constexpr int64_t kMaxModelParameters = int64_t(1) << 32;
double estimate_parameter_count(const ModelConfig& cfg);
// Every field, so a checkpoint's metadata rebuilds the same model (round-trips through the above).
nlohmann::json model_config_to_json(const ModelConfig& cfg);

}  // namespace df
