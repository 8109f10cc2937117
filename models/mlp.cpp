// MLPDenoiser construction and forward pass.
#include "models/mlp.h"

#include "ops/ops.h"

namespace df {

MLPDenoiser::MLPDenoiser(int64_t data_dim_, int64_t hidden_, int64_t depth_, Generator& g, DType dtype,
                         int64_t emb_dim_)
    : data_dim(data_dim_), hidden(hidden_), depth(depth_), emb_dim(emb_dim_) {
  DF_CHECK(data_dim > 0 && hidden > 0 && depth >= 0 && emb_dim >= 2 && emb_dim % 2 == 0,
           "MLPDenoiser: expected data_dim > 0, hidden > 0, depth >= 0, even emb_dim >= 2; got ",
           data_dim, ", ", hidden, ", ", depth, ", ", emb_dim);
  emb_in = register_module("emb_in", std::make_shared<Linear>(emb_dim, hidden, true, g, dtype));
  emb_out = register_module("emb_out", std::make_shared<Linear>(hidden, hidden, true, g, dtype));
  in = register_module("in", std::make_shared<Linear>(data_dim, hidden, true, g, dtype));
  for (int64_t i = 0; i < depth; ++i)
    blocks.push_back(register_module("blocks." + std::to_string(i),
                                     std::make_shared<Linear>(hidden, hidden, true, g, dtype)));
  out = register_module("out", std::make_shared<Linear>(hidden, data_dim, true, g, dtype));
}

Tensor MLPDenoiser::forward(const Tensor& x, const Tensor& c_noise) const {
  DF_CHECK(x.dim() == 2 && x.size(1) == data_dim, "MLPDenoiser: expected x (B, ", data_dim, "), got ",
           x.desc());
  DF_CHECK(c_noise.dim() == 1 && c_noise.size(0) == x.size(0),
           "MLPDenoiser: expected c_noise (B) with B = ", x.size(0), ", got ", c_noise.desc());
  Tensor c = c_noise.dtype() == x.dtype() ? c_noise : cast(c_noise, x.dtype());
  Tensor emb = emb_out->forward(silu(emb_in->forward(positional_embedding(c, emb_dim))));
  Tensor h = add(in->forward(x), emb);
  for (const auto& b : blocks) h = b->forward(silu(h));
  return out->forward(silu(h));
}

}  // namespace df
