// Tests of the image models: parameter counts of the benchmark configs (against independent formulas),
// names, shapes, init properties, dropout seeding, JSON configs, and whole-model derivative checks.
#include <doctest/doctest.h>

#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "models/registry.h"
#include "ops/ops.h"
#include "tests/checker.h"

using namespace df;
using namespace df::test;

namespace {

// ---- independent parameter counts (closed forms from the architecture description) ----
int64_t conv_params(int64_t i, int64_t o, int64_t k) { return i * o * k * k + o; }
int64_t linear_params(int64_t i, int64_t o, bool bias = true) { return i * o + (bias ? o : 0); }

int64_t unet_formula(const UNetConfig& c) {
  const int64_t T = c.emb_mult * c.base_channels;
  int64_t n = linear_params(c.base_channels, T) + linear_params(T, T) + conv_params(c.in_channels, c.base_channels, 3);
  auto res = [&](int64_t i, int64_t o) {
    return 2 * i + conv_params(i, o, 3) + linear_params(T, c.adaptive_double_norm ? 2 * o : o) + 2 * o +
           conv_params(o, o, 3) + (i != o ? conv_params(i, o, 1) : 0);
  };
  auto attn = [&](int64_t ch) { return 2 * ch + linear_params(ch, 3 * ch) + linear_params(ch, ch); };
  auto is_attn = [&](int64_t r) {
    for (int64_t a : c.attn_resolutions)
      if (a == r) return true;
    return false;
  };
  std::vector<int64_t> skips = {c.base_channels};
  int64_t ch = c.base_channels, r = c.resolution, L = (int64_t)c.channel_mults.size();
  for (int64_t l = 0; l < L; ++l) {
    for (int64_t i = 0; i < c.res_blocks; ++i) {
      n += res(ch, c.base_channels * c.channel_mults[l]);
      ch = c.base_channels * c.channel_mults[l];
      if (is_attn(r)) n += attn(ch);
      skips.push_back(ch);
    }
    if (l + 1 < L) n += conv_params(ch, ch, 3), skips.push_back(ch), r /= 2;
  }
  n += 2 * res(ch, ch) + (c.mid_attention ? attn(ch) : 0);
  for (int64_t l = L - 1; l >= 0; --l) {
    for (int64_t i = 0; i <= c.res_blocks; ++i) {
      n += res(ch + skips.back(), c.base_channels * c.channel_mults[l]);
      skips.pop_back();
      ch = c.base_channels * c.channel_mults[l];
      if (is_attn(r)) n += attn(ch);
    }
    if (l > 0) n += conv_params(ch, ch, 3), r *= 2;
  }
  return n + 2 * ch + conv_params(ch, c.in_channels, 3);
}

int64_t dit_formula(const DiTConfig& c) {
  const int64_t W = c.width, P = c.in_channels * c.patch * c.patch, N = (c.resolution / c.patch) * (c.resolution / c.patch);
  const int64_t hidden = (int64_t)(W * c.mlp_ratio);
  int64_t block = linear_params(W, 3 * W, c.qkv_bias) + linear_params(W, W) + linear_params(W, hidden) +
                  linear_params(hidden, W) + linear_params(W, 6 * W);
  return linear_params(P, W) + N * W + linear_params(c.freq_dim, W) + linear_params(W, W) + c.depth * block +
         linear_params(W, 2 * W) + linear_params(W, P);
}

// ---- tiny f64 models for derivative checks ----
UNetConfig tiny_unet(bool adaptive) {
  UNetConfig c;
  c.in_channels = 1, c.resolution = 8, c.base_channels = 8, c.channel_mults = {1, 2}, c.res_blocks = 1;
  c.attn_resolutions = {4}, c.heads = 2, c.norm_groups = 4, c.emb_mult = 2;
  c.adaptive_double_norm = adaptive;
  c.zero_init = false;  // every parameter random, so no path is trivially zero
  return c;
}

DiTConfig tiny_dit() {
  DiTConfig c;
  c.in_channels = 1, c.resolution = 8, c.patch = 2, c.width = 16, c.depth = 1, c.heads = 2, c.freq_dim = 16;
  c.zero_init = false;
  return c;
}

Tensors model_inputs(uint64_t seed) {
  NoGrad ng;
  Tensor x = randn({2, 1, 8, 8}, seed, DType::F64);
  Tensor c = add(mul(rand({2}, seed + 1, DType::F64), 1.4), 0.1);  // c_noise = t in (0.1, 1.5)
  return {x, c};
}

// Every parameter slot the layers read in forward, by full name, so a builder can substitute the
// checker's (dual or graph-carrying) tensors for the parameters.
void collect_slots(Module& m, const std::string& prefix, std::map<std::string, Tensor*>& out) {
  auto put = [&](const char* n, Tensor& t) {
    if (t.defined()) out[prefix + n] = &t;
  };
  if (auto* l = dynamic_cast<Linear*>(&m)) put("weight", l->weight), put("bias", l->bias);
  if (auto* l = dynamic_cast<Conv2d*>(&m)) put("weight", l->weight), put("bias", l->bias);
  if (auto* l = dynamic_cast<GroupNorm*>(&m)) put("weight", l->weight), put("bias", l->bias);
  if (auto* l = dynamic_cast<LayerNorm*>(&m)) put("weight", l->weight), put("bias", l->bias);
  if (auto* d = dynamic_cast<DiT*>(&m)) put("pos_embed", d->pos_embed);
  for (auto& [name, child] : m.named_children()) collect_slots(*child, prefix + name + ".", out);
}

// Builder over the parameters (x, c_noise fixed): binds the inputs into the layers' slots, runs
// forward, restores the originals.
Builder param_builder(ImageDenoiser& net, const Tensor& x, const Tensor& c, Tensors& params_out) {
  std::map<std::string, Tensor*> slots;
  collect_slots(net, "", slots);
  std::vector<Tensor*> order;
  params_out.clear();
  for (auto& [name, p] : net.named_parameters()) {
    REQUIRE_MESSAGE(slots.count(name), "no slot for parameter ", name);
    order.push_back(slots[name]);
    params_out.push_back(p.detach());
  }
  REQUIRE(slots.size() == order.size());
  return [&net, order, x, c](const Tensors& ps) {
    Tensors saved;
    for (size_t i = 0; i < order.size(); ++i) saved.push_back(*order[i]), *order[i] = ps[i];
    Tensor y = net.forward(x, c);
    for (size_t i = 0; i < order.size(); ++i) *order[i] = saved[i];
    return y;
  };
}

bool has_name(const Module& m, const std::string& name) {
  for (auto& [n, p] : m.named_parameters())
    if (n == name) return true;
  return false;
}

double max_abs(const Tensor& t) {
  double m = 0;
  for (double v : t.to_vector()) m = std::max(m, std::fabs(v));
  return m;
}

}  // namespace

TEST_CASE("models: benchmark configs by name hit their parameter counts") {
  Generator g(0);
  auto dit = make_model("DiT-S/2", 3, 32, g);
  auto unet = make_model("UNet-128", 3, 32, g);
  MESSAGE("DiT-S/2: ", dit->num_parameters(), " parameters; UNet-128: ", unet->num_parameters());
  CHECK(dit->num_parameters() == dit_formula(model_config("DiT-S/2", 3, 32).dit));
  CHECK(unet->num_parameters() == unet_formula(model_config("UNet-128", 3, 32).unet));
  // The two figures DESIGN.md quotes, within 3%.
  CHECK(std::fabs(dit->num_parameters() / 32.6e6 - 1) < 0.03);
  CHECK(std::fabs(unet->num_parameters() / 25.8e6 - 1) < 0.03);
  CHECK(dit->num_parameters() == 32569740);
  CHECK(unet->num_parameters() == 25838595);

  for (const char* n : {"patch_embed.weight", "pos_embed", "time_embed.fc1.weight", "blocks.3.attn.qkv.weight",
                        "blocks.11.mlp.fc2.bias", "blocks.0.adaLN.weight", "final.adaLN.bias", "final.linear.weight"})
    CHECK_MESSAGE(has_name(*dit, n), n);
  for (const char* n : {"time_embed.fc2.weight", "conv_in.weight", "down.0.res.1.conv2.weight",
                        "down.1.attn.0.qkv.weight", "down.1.res.0.skip.weight", "down.0.downsample.weight",
                        "mid.attn.proj.weight", "mid.res1.norm2.bias", "up.0.res.2.skip.weight",
                        "up.1.attn.2.norm.weight", "up.1.upsample.bias", "norm_out.weight", "conv_out.bias"})
    CHECK_MESSAGE(has_name(*unet, n), n);
  CHECK_FALSE(has_name(*unet, "down.2.downsample.weight"));  // no downsample after the last level
  CHECK_FALSE(has_name(*unet, "down.0.attn.0.qkv.weight"));  // attention only at 16x16
  std::set<std::string> seen;
  for (auto& [n, p] : unet->named_parameters()) CHECK(seen.insert(n).second);

  // sCM's adaptive double normalization doubles each block's embedding projection.
  ModelConfig adn = model_config("UNet-128", 3, 32);
  adn.unet.adaptive_double_norm = true;
  CHECK(make_model(adn, g)->num_parameters() == unet_formula(adn.unet));
}

TEST_CASE("models: every preset builds; small configs match the formulas; unknown names are listed") {
  Generator g(1);
  for (const auto& name : model_names()) {
    if (name == "DiT-S/2" || name == "UNet-128") continue;  // built (slowly) by the test above
    ModelConfig c = model_config(name, 1, 32);
    auto m = make_model(c, g);
    CHECK(m->in_channels == 1);
    CHECK(m->num_parameters() == (c.arch == "unet" ? unet_formula(c.unet) : dit_formula(c.dit)));
  }
  CHECK(unet_formula(tiny_unet(false)) == make_model(ModelConfig{"unet", "", tiny_unet(false), {}}, g)->num_parameters());
  CHECK(dit_formula(tiny_dit()) == make_model(ModelConfig{"dit", "", {}, tiny_dit()}, g)->num_parameters());
  try {
    make_model("UNet-1024", 3, 32, g);
    FAIL("expected an error");
  } catch (const std::exception& e) {
    CHECK(std::string(e.what()).find("UNet-1024") != std::string::npos);
    CHECK(std::string(e.what()).find("DiT-S/2") != std::string::npos);
  }
  UNetConfig bad = tiny_unet(false);
  bad.norm_groups = 3;
  CHECK_THROWS_WITH_AS(UNet(bad, g, DType::F64), doctest::Contains("norm_groups 3"), std::exception);
}

TEST_CASE("models: output shape equals input shape; zero init gives a zero output") {
  Generator g(2);
  Tensors in = model_inputs(3);
  for (bool adaptive : {false, true}) {
    UNet net(tiny_unet(adaptive), g, DType::F64);
    Tensor y = net.forward(in[0], in[1]);
    CHECK(y.shape() == in[0].shape());
    CHECK(max_abs(y) > 0);
  }
  DiT dit(tiny_dit(), g, DType::F64);
  CHECK(dit.forward(in[0], in[1]).shape() == in[0].shape());

  // Defaults zero the output layers (DDPM++'s zero conv_out; DiT's adaLN-Zero and final linear).
  UNetConfig uc = tiny_unet(false);
  uc.zero_init = true;
  CHECK(max_abs(UNet(uc, g, DType::F64).forward(in[0], in[1])) == 0);
  DiTConfig dc = tiny_dit();
  dc.zero_init = true;
  DiT dz(dc, g, DType::F64);
  CHECK(max_abs(dz.forward(in[0], in[1])) == 0);
  for (auto& [n, p] : dz.named_parameters())
    if (n.find("adaLN") != std::string::npos) CHECK_MESSAGE(max_abs(p) == 0, n);
  // The positional embedding starts at the 2-D sin-cos table: token 0 is (sin 0, cos 0) = (0, 1) per
  // quarter; token 5 (row 1, column 1) has sin(1) in channel 0 and in channel W/2.
  auto pe = dz.pos_embed.to_vector();
  CHECK(pe[0] == 0);
  CHECK(pe[4] == 1);
  CHECK(pe[5 * 16 + 0] == doctest::Approx(std::sin(1.0)));
  CHECK(pe[5 * 16 + 8] == doctest::Approx(std::sin(1.0)));

  // f32 works too, with c_noise given in f32.
  UNet n32(tiny_unet(false), g, DType::F32);
  Tensor y32 = n32.forward(cast(in[0], DType::F32), cast(in[1], DType::F32));
  CHECK(y32.dtype() == DType::F32);
  CHECK(y32.shape() == in[0].shape());

  CHECK_THROWS_WITH_AS(dit.forward(randn({2, 1, 6, 6}, 0, DType::F64), in[1]), doctest::Contains("DiT: expected x"),
                       std::exception);
}

TEST_CASE("models: the output depends on c_noise and on each image only through itself") {
  Generator g(4);
  Tensors in = model_inputs(5);
  UNet net(tiny_unet(true), g, DType::F64);
  DiT dit(tiny_dit(), g, DType::F64);
  for (ImageDenoiser* m : {(ImageDenoiser*)&net, (ImageDenoiser*)&dit}) {
    Tensor y = m->forward(in[0], in[1]);
    Tensor y2 = m->forward(in[0], add(in[1], 0.3));
    CHECK(max_abs(sub(y, y2)) > 1e-6);
    // Sample 0 alone gives the same result as in the batch (no mixing across the batch).
    Tensor y0 = m->forward(narrow(in[0], 0, 0, 1), narrow(in[1], 0, 0, 1));
    CHECK(max_abs(sub(y0, narrow(y, 0, 0, 1))) < 1e-12);
  }
}

TEST_CASE("models: U-Net JVP, VJP and reverse-over-forward in (x, c_noise) pass the generic checks (f64)") {
  Generator g(6);
  CheckTol tol{1e-6, 1e-5, 1e-8};
  for (bool adaptive : {false, true}) {
    CAPTURE(adaptive);
    UNet net(tiny_unet(adaptive), g, DType::F64);
    Builder f = [&](const Tensors& a) { return net.forward(a[0], a[1]); };
    Tensors in = model_inputs(7);
    CHECK(check_jvp(f, in, 11, tol) == "");
    CHECK(check_vjp(f, in, 12, tol) == "");
    if (adaptive) CHECK(check_rev_over_fwd(f, in, 13, tol) == "");
  }
}

TEST_CASE("models: DiT JVP, VJP, reverse-over-forward and forward-over-reverse in (x, c_noise) (f64)") {
  Generator g(8);
  DiT net(tiny_dit(), g, DType::F64);
  Builder f = [&](const Tensors& a) { return net.forward(a[0], a[1]); };
  CHECK(check_all(f, model_inputs(9), 14, CheckTol{1e-6, 1e-5, 1e-8}) == "");
}

TEST_CASE("models: JVP and VJP with respect to the parameters (f64)") {
  Generator g(10);
  Tensors in = model_inputs(11);
  CheckTol tol{1e-6, 1e-5, 1e-8};
  UNet unet(tiny_unet(true), g, DType::F64);
  DiT dit(tiny_dit(), g, DType::F64);
  for (ImageDenoiser* m : {(ImageDenoiser*)&unet, (ImageDenoiser*)&dit}) {
    Tensors params;
    Builder f = param_builder(*m, in[0], in[1], params);
    CHECK(params.size() == m->parameters().size());
    CHECK(check_jvp(f, params, 15, tol) == "");
    CHECK(check_vjp(f, params, 16, tol) == "");
  }
  // The builder restored the model's own parameters.
  auto np = unet.named_parameters();
  CHECK(np[0].second.impl() == unet.time_embed->fc1->weight.impl());
}

TEST_CASE("models: dropout masks follow the seed, so JVP and gradient passes agree") {
  Generator g(12);
  UNetConfig c = tiny_unet(false);
  c.dropout = 0.3;
  UNet net(c, g, DType::F64);
  Tensors in = model_inputs(13);
  Tensor eval_out = net.forward(in[0], in[1]);
  net.set_dropout(true, 42);
  Tensor a = net.forward(in[0], in[1]), b = net.forward(in[0], in[1]);
  CHECK(max_abs(sub(a, b)) == 0);
  CHECK(max_abs(sub(a, eval_out)) > 1e-6);
  net.set_dropout(true, 43);
  CHECK(max_abs(sub(net.forward(in[0], in[1]), a)) > 1e-6);
  // With a fixed seed the network is a deterministic function, so its JVP matches finite differences.
  Builder f = [&](const Tensors& v) { return net.forward(v[0], v[1]); };
  CHECK(check_jvp(f, in, 17, CheckTol{1e-6, 1e-5, 1e-8}) == "");
  CHECK(check_vjp(f, in, 18, CheckTol{1e-6, 1e-5, 1e-8}) == "");
  net.set_dropout(false, 0);
  CHECK(max_abs(sub(net.forward(in[0], in[1]), eval_out)) == 0);
}

TEST_CASE("models: JSON configs: presets with overrides, round trip, errors name the key") {
  using nlohmann::json;
  ModelConfig c = model_config_from_json(json{{"name", "UNet-tiny"}, {"dropout", 0.1}, {"channel_mults", {1, 2, 2}}}, 1, 32);
  CHECK(c.arch == "unet");
  CHECK(c.unet.base_channels == 32);
  CHECK(c.unet.dropout == 0.1);
  CHECK(c.unet.channel_mults == std::vector<int64_t>{1, 2, 2});
  CHECK(c.unet.in_channels == 1);

  ModelConfig d = model_config_from_json(json{{"arch", "dit"}, {"width", 64}, {"depth", 2}, {"heads", 4}}, 3, 16);
  CHECK(d.dit.width == 64);
  CHECK(d.dit.resolution == 16);

  Generator g(14);
  for (const ModelConfig& m : {c, d}) {
    json j = model_config_to_json(m);
    ModelConfig back = model_config_from_json(j, 3, 16);
    CHECK(model_config_to_json(back) == j);
    ModelConfig m2 = m;
    m2.unet.in_channels = m2.dit.in_channels = 3;
    m2.unet.resolution = m2.dit.resolution = 16;
    CHECK(make_model(back, g)->num_parameters() == make_model(m2, g)->num_parameters());
  }

  auto error_of = [](const json& j) {
    try {
      model_config_from_json(j, 3, 32);
    } catch (const std::exception& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  CHECK(error_of(json{{"name", "UNet-tiny"}, {"dropuot", 0.1}}).find("'dropuot'") != std::string::npos);
  CHECK(error_of(json{{"name", "DiT-tiny"}, {"base_channels", 64}}).find("'base_channels'") != std::string::npos);
  CHECK(error_of(json{{"arch", "unet"}, {"base_channels", "wide"}}).find("'base_channels'") != std::string::npos);
  CHECK(error_of(json{{"arch", "rnn"}}).find("'arch'") != std::string::npos);
  CHECK(error_of(json{{"name", "UNet-9"}}).find("UNet-9") != std::string::npos);
  CHECK(error_of(json{{"depth", 3}}).find("'name'") != std::string::npos);
}
