// MLPDenoiser: a small residual-free SiLU MLP for low-dimensional (2-D toy) data, conditioned on a
// per-sample noise/time scalar through a sinusoidal embedding.
#pragma once
#include "models/module.h"

namespace df {

// emb = Linear(SiLU(Linear(positional_embedding(c_noise, emb_dim)))) (hidden wide),
// h = Linear(x) + emb, then `depth` blocks h = Linear(SiLU(h)) (hidden -> hidden),
// out = Linear(SiLU(h)) -> data_dim. Parameter names: "emb_in", "emb_out", "in", "blocks.<i>", "out".
class MLPDenoiser : public Module {
 public:
  MLPDenoiser(int64_t data_dim, int64_t hidden, int64_t depth, Generator& g, DType dtype = DType::F32,
              int64_t emb_dim = 64);
  Tensor forward(const Tensor& x, const Tensor& c_noise) const;  // x (B, data_dim), c_noise (B) -> (B, data_dim)

  int64_t data_dim, hidden, depth, emb_dim;
  std::shared_ptr<Linear> emb_in, emb_out, in, out;
  std::vector<std::shared_ptr<Linear>> blocks;
};

}  // namespace df
