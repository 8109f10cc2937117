# PyTorch (CPU, 2 threads) version of bench/cpu_step.cpp: same MLP, batch, optimizer and steps.
# Run with Debian's python3-torch: /usr/bin/python3 bench/torch_cpu_step.py [iters]
import math, sys, time
import torch
import torch.autograd.forward_ad as fwAD

torch.set_num_threads(2)
torch.manual_seed(0)
B = 1024
dims = [66, 256, 256, 256, 256, 2]
layers = [torch.nn.Linear(dims[i], dims[i + 1]) for i in range(len(dims) - 1)]
params = [p for l in layers for p in l.parameters()]
opt = torch.optim.Adam(params, lr=1e-3)
freqs = torch.exp(torch.arange(32, dtype=torch.float32) * (-math.log(10000.0) / 32))

def net(x, t):
    arg = t.reshape(-1, 1) * freqs.reshape(1, -1)
    h = torch.cat([x, torch.cos(arg), torch.sin(arg)], 1)
    for i, l in enumerate(layers):
        h = l(h)
        if i + 1 < len(layers):
            h = torch.nn.functional.silu(h)
    return h

def diffusion_step():
    x0, eps, t = torch.randn(B, 2), torch.randn(B, 2), torch.rand(B)
    tt = t.reshape(B, 1)
    xt = (1 - tt) * x0 + tt * eps
    loss = torch.nn.functional.mse_loss(net(xt, t), eps - x0)
    opt.zero_grad()
    loss.backward()
    opt.step()

def jvp_step():
    x0, eps, t = torch.randn(B, 2), torch.randn(B, 2), torch.rand(B)
    tt = t.reshape(B, 1)
    xt = (1 - tt) * x0 + tt * eps
    with torch.no_grad(), fwAD.dual_level():
        out = net(fwAD.make_dual(xt, eps - x0), fwAD.make_dual(t, torch.ones_like(t)))
        tangent = fwAD.unpack_dual(out).tangent
    pred = net(xt, t)
    loss = torch.nn.functional.mse_loss(pred, pred.detach() - 0.1 * tangent)
    opt.zero_grad()
    loss.backward()
    opt.step()

iters = int(sys.argv[1]) if len(sys.argv) > 1 else 30
for _ in range(5):
    diffusion_step(); jvp_step()
td, tj = [], []
for _ in range(iters):
    a = time.perf_counter(); diffusion_step(); b = time.perf_counter(); jvp_step(); c = time.perf_counter()
    td.append((b - a) * 1e3); tj.append((c - b) * 1e3)
td.sort(); tj.sort()
print(f"pytorch {torch.__version__}  diffusion step {td[len(td)//2]:.2f} ms   jvp step {tj[len(tj)//2]:.2f} ms   (median of {iters}, batch {B}, 2 threads)")
