// CPU benchmark of a toy training step (MLP 2+64 -> 256 x4 -> 2, SiLU, batch 1024, Adam):
// a diffusion-style step, and an sCM-style step (JVP w.r.t. the inputs, then forward + backward).
// Compare with bench/torch_cpu_step.py run in the same session.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "ops/ops.h"
#include "train/optim.h"

using namespace df;

namespace {

struct Mlp {
  std::vector<Tensor> w, b;
  Mlp(Generator& g) {
    std::vector<int64_t> dims = {66, 256, 256, 256, 256, 2};
    for (size_t i = 0; i + 1 < dims.size(); ++i) {
      double bound = 1 / std::sqrt(double(dims[i]));
      NoGrad ng;
      w.push_back(add(mul(g.rand({dims[i + 1], dims[i]}), 2 * bound), -bound).detach().requires_grad_());
      b.push_back(add(mul(g.rand({dims[i + 1]}), 2 * bound), -bound).detach().requires_grad_());
    }
  }
  Tensors params() const {
    Tensors p;
    for (size_t i = 0; i < w.size(); ++i) {
      p.push_back(w[i]);
      p.push_back(b[i]);
    }
    return p;
  }
  Tensor operator()(const Tensor& x, const Tensor& t) const {
    // [x, sinusoidal(t)] -> MLP
    Tensor freqs = exp(mul(arange(0, 32, 1, x.dtype()), -std::log(10000.0) / 32));
    Tensor arg = mul(reshape(t, {-1, 1}), reshape(freqs, {1, -1}));
    Tensor h = cat({x, cos(arg), sin(arg)}, 1);
    for (size_t i = 0; i < w.size(); ++i) {
      h = linear(h, w[i], b[i]);
      if (i + 1 < w.size()) h = silu(h);
    }
    return h;
  }
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  int iters = argc > 1 ? std::atoi(argv[1]) : 30;
  Generator g(0);
  Mlp net(g);
  auto opt = make_adam(net.params(), 1e-3);
  const int64_t B = 1024;

  auto diffusion_step = [&] {
    Tensor x0 = g.randn({B, 2}), eps = g.randn({B, 2}), t = g.rand({B});
    Tensor tt = reshape(t, {B, 1});
    Tensor xt = add(mul(rsub(1.0, tt), x0), mul(tt, eps));
    Tensor loss = mse_loss(net(xt, t), sub(eps, x0));
    opt->zero_grad();
    loss.backward();
    opt->step();
    return loss.item();
  };
  auto jvp_step = [&] {
    Tensor x0 = g.randn({B, 2}), eps = g.randn({B, 2}), t = g.rand({B});
    Tensor tt = reshape(t, {B, 1});
    Tensor xt = add(mul(rsub(1.0, tt), x0), mul(tt, eps));
    Tensor dxt = sub(eps, x0);
    Tensor tangent;
    {
      // JVP of the (stop-gradient) network w.r.t. (x_t, t); nothing is kept on the tape.
      DualLevel level(false);
      NoGrad ng;
      Tensor out = net(make_dual(xt, dxt), make_dual(t, ones_like(t)));
      tangent = unpack_dual(out).second;
    }
    Tensor pred = net(xt, t);
    Tensor loss = mse_loss(pred, add(pred.detach(), mul(tangent, -0.1)));
    opt->zero_grad();
    loss.backward();
    opt->step();
    return loss.item();
  };

  for (int i = 0; i < 5; ++i) diffusion_step(), jvp_step();
  std::vector<double> td, tj;
  for (int i = 0; i < iters; ++i) {
    auto a = std::chrono::steady_clock::now();
    diffusion_step();
    auto b = std::chrono::steady_clock::now();
    jvp_step();
    auto c = std::chrono::steady_clock::now();
    td.push_back(std::chrono::duration<double, std::milli>(b - a).count());
    tj.push_back(std::chrono::duration<double, std::milli>(c - b).count());
  }
  std::printf("dualflow  diffusion step %.2f ms   jvp step %.2f ms   (median of %d, batch %ld)\n", median(td),
              median(tj), iters, (long)B);
  return 0;
}
