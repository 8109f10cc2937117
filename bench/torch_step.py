# The PyTorch side of bench/step.cpp: the same two models (DiT-S/2, UNet-128; same layers, same
# parameter counts, checked below) and the same whole training steps (batch 128, 32x32x3 random images
# on the device, Adam, EMA, gradient clipping): TrigFlow diffusion in eager tf32, eager bf16 autocast
# and torch.compile bf16; sCT through torch.func.jvp under the MATH attention backend (the only SDPA
# backend with forward AD; the JVP under no_grad, then a forward + backward) in eager tf32 and bf16.
# Prints RESULT lines in bench/step.cpp's format. Usage:
#   python3 bench/torch_step.py [--models dit,unet] [--cases diffusion_tf32,...] [--warmup 5] [--steps 15]
import argparse
import gc
import math
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

EXPECTED_PARAMS = {"DiT-S/2": 32569740, "UNet-128": 25838595}   # dualflow's counts (tests/test_models.cpp)
SIGMA_D, P_MEAN, P_STD = 0.5, -1.2, 1.2                         # train/config.h ObjectiveConfig defaults


# ---- models (the layer order and shapes of models/dit.cpp, models/unet.cpp, models/layers.cpp) ----

def positional_embedding(c, dim, max_period=10000.0):
    half = dim // 2
    w = max_period ** (-torch.arange(half, dtype=torch.float64) / half)
    freqs = torch.cat([w, w]).to(c.device, c.dtype)
    phase = torch.cat([torch.zeros(half, dtype=torch.float64), torch.full((half,), math.pi / 2)]).to(c.device, c.dtype)
    return torch.cos(c[:, None] * freqs - phase)


class TimeEmbedding(nn.Module):
    def __init__(self, freq_dim, hidden, out):
        super().__init__()
        self.freq_dim = freq_dim
        self.fc1, self.fc2 = nn.Linear(freq_dim, hidden), nn.Linear(hidden, out)

    def forward(self, c):
        return self.fc2(F.silu(self.fc1(positional_embedding(c, self.freq_dim))))


def attend_heads(qkv, heads):
    B, N, C3 = qkv.shape
    C = C3 // 3
    t = qkv.reshape(B, N, 3, heads, C // heads).permute(2, 0, 3, 1, 4)
    o = F.scaled_dot_product_attention(t[0], t[1], t[2])
    return o.permute(0, 2, 1, 3).reshape(B, N, C)


class MultiHeadAttention(nn.Module):
    def __init__(self, ch, heads):
        super().__init__()
        self.heads = heads
        self.qkv, self.proj = nn.Linear(ch, 3 * ch), nn.Linear(ch, ch)

    def forward(self, x):
        return self.proj(attend_heads(self.qkv(x), self.heads))


def modulate(n, shift, scale):
    return n + n * scale[:, None] + shift[:, None]


class DiTBlock(nn.Module):
    def __init__(self, w, heads, mlp_ratio=4.0):
        super().__init__()
        hidden = int(round(w * mlp_ratio))
        self.w = w
        self.attn = MultiHeadAttention(w, heads)
        self.fc1, self.fc2 = nn.Linear(w, hidden), nn.Linear(hidden, w)
        self.adaLN = nn.Linear(w, 6 * w)

    def forward(self, x, c):
        m = self.adaLN(c).chunk(6, 1)
        h = modulate(F.layer_norm(x, (self.w,), eps=1e-6), m[0], m[1])
        y = x + m[2][:, None] * self.attn(h)
        h = modulate(F.layer_norm(y, (self.w,), eps=1e-6), m[3], m[4])
        return y + m[5][:, None] * self.fc2(F.gelu(self.fc1(h), approximate="tanh"))


class DiT(nn.Module):
    def __init__(self, ch=3, res=32, patch=2, width=384, depth=12, heads=6, freq_dim=256):
        super().__init__()
        self.ch, self.res, self.p, self.w = ch, res, patch, width
        n = (res // patch) ** 2
        pd = ch * patch * patch
        self.patch_embed = nn.Linear(pd, width)
        self.pos_embed = nn.Parameter(torch.randn(1, n, width) * 0.02)
        self.time_embed = TimeEmbedding(freq_dim, width, width)
        self.blocks = nn.ModuleList([DiTBlock(width, heads) for _ in range(depth)])
        self.final_adaLN, self.final_linear = nn.Linear(width, 2 * width), nn.Linear(width, pd)

    def forward(self, x, c_noise):
        N, C, H, W = x.shape
        p, h, w = self.p, H // self.p, W // self.p
        c = F.silu(self.time_embed(c_noise))
        tok = x.reshape(N, C, h, p, w, p).permute(0, 2, 4, 1, 3, 5).reshape(N, h * w, C * p * p)
        t = self.patch_embed(tok) + self.pos_embed
        for b in self.blocks:
            t = b(t, c)
        m = self.final_adaLN(c).chunk(2, 1)
        t = self.final_linear(modulate(F.layer_norm(t, (self.w,), eps=1e-6), m[0], m[1]))
        return t.reshape(N, h, w, C, p, p).permute(0, 3, 1, 4, 2, 5).reshape(N, C, H, W)


SKIP = 0.70710678118654752


class ResBlock(nn.Module):
    def __init__(self, cin, cout, emb, groups):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(groups, cin, eps=1e-5), nn.Conv2d(cin, cout, 3, padding=1)
        self.emb_proj = nn.Linear(emb, cout)
        self.norm2, self.conv2 = nn.GroupNorm(groups, cout, eps=1e-5), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.norm2(h + self.emb_proj(emb)[:, :, None, None])
        h = self.conv2(F.silu(h))
        return ((self.skip(x) if self.skip is not None else x) + h) * SKIP


class AttentionBlock2d(nn.Module):
    def __init__(self, ch, heads, groups):
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(groups, ch, eps=1e-5)
        self.qkv, self.proj = nn.Linear(ch, 3 * ch), nn.Linear(ch, ch)

    def forward(self, x):
        N, C, H, W = x.shape
        tok = self.norm(x).reshape(N, C, H * W).transpose(1, 2)
        h = self.proj(attend_heads(self.qkv(tok), self.heads))
        return (x + h.transpose(1, 2).reshape(N, C, H, W)) * SKIP


class UNet(nn.Module):
    def __init__(self, ch_in=3, res=32, base=128, mults=(1, 2, 2), res_blocks=2, heads=4, groups=32, emb_mult=4):
        super().__init__()
        emb = emb_mult * base
        attn_res = {res // 2}
        self.time_embed = TimeEmbedding(base, emb, emb)
        self.conv_in = nn.Conv2d(ch_in, base, 3, padding=1)
        skips, ch, r = [base], base, res
        self.down = nn.ModuleList()
        for l, m in enumerate(mults):
            out = base * m
            lv = nn.Module()
            lv.res, lv.attn = nn.ModuleList(), nn.ModuleList()
            for _ in range(res_blocks):
                lv.res.append(ResBlock(ch, out, emb, groups))
                ch = out
                if r in attn_res:
                    lv.attn.append(AttentionBlock2d(ch, heads, groups))
                skips.append(ch)
            lv.resample = None
            if l + 1 < len(mults):
                lv.resample = nn.Conv2d(ch, ch, 3, stride=2, padding=1)
                skips.append(ch)
                r //= 2
            self.down.append(lv)
        self.mid_res0 = ResBlock(ch, ch, emb, groups)
        self.mid_attn = AttentionBlock2d(ch, heads, groups)
        self.mid_res1 = ResBlock(ch, ch, emb, groups)
        self.up = nn.ModuleList()
        for l in reversed(range(len(mults))):
            out = base * mults[l]
            lv = nn.Module()
            lv.res, lv.attn = nn.ModuleList(), nn.ModuleList()
            for _ in range(res_blocks + 1):
                lv.res.append(ResBlock(ch + skips.pop(), out, emb, groups))
                ch = out
                if r in attn_res:
                    lv.attn.append(AttentionBlock2d(ch, heads, groups))
            lv.resample = None
            if l > 0:
                lv.resample = nn.Conv2d(ch, ch, 3, padding=1)
                r *= 2
            self.up.append(lv)
        self.norm_out = nn.GroupNorm(groups, ch, eps=1e-5)
        self.conv_out = nn.Conv2d(ch, ch_in, 3, padding=1)

    def forward(self, x, c_noise):
        emb = F.silu(self.time_embed(c_noise))
        h = self.conv_in(x)
        skips = [h]
        for lv in self.down:
            for i, rb in enumerate(lv.res):
                h = rb(h, emb)
                if len(lv.attn):
                    h = lv.attn[i](h)
                skips.append(h)
            if lv.resample is not None:
                h = lv.resample(h)
                skips.append(h)
        h = self.mid_res1(self.mid_attn(self.mid_res0(h, emb)), emb)
        for lv in self.up:
            for i, rb in enumerate(lv.res):
                h = rb(torch.cat([h, skips.pop()], 1), emb)
                if len(lv.attn):
                    h = lv.attn[i](h)
            if lv.resample is not None:
                h = lv.resample(F.interpolate(h, scale_factor=2, mode="nearest"))
        return self.conv_out(F.silu(self.norm_out(h)))


# ---- objectives (train/diffusion.cpp TrigFlow::loss, train/scm.cpp sct_loss without a weight head) ----

def sample_t(B, dev):
    return torch.atan(torch.exp(torch.randn(B, device=dev, dtype=torch.float64) * P_STD + P_MEAN) / SIGMA_D).float()


def trigflow_loss(net, x0):
    t = sample_t(x0.shape[0], x0.device)
    z = torch.randn_like(x0) * SIGMA_D
    tb = t[:, None, None, None]
    c, s = torch.cos(tb), torch.sin(tb)
    xt, vt = c * x0 + s * z, c * z - s * x0
    return ((net(xt / SIGMA_D, t).float() - vt / SIGMA_D) ** 2).mean()


def sct_loss(net, x0, r=1.0, c_norm=0.1):
    B = x0.shape[0]
    t = sample_t(B, x0.device)
    z = torch.randn_like(x0) * SIGMA_D
    tb = t[:, None, None, None]
    ct, st = torch.cos(tb), torch.sin(tb)
    xt, v = ct * x0 + st * z, ct * z - st * x0
    u = xt / SIGMA_D
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        F_jvp, J = torch.func.jvp(lambda a, b: net(a, b).float(), (u, t), (ct * st * v, SIGMA_D * torch.cos(t) * torch.sin(t)))
    Fm = F_jvp.detach()
    g = -(ct * ct) * (SIGMA_D * Fm - v) - r * (ct * st * xt + J)
    g = g.double()
    g = (g / (g.flatten(1).norm(dim=1)[:, None, None, None] + c_norm)).float()
    with sdpa_kernel(SDPBackend.MATH):
        Fo = net(u, t).float()
    ok = torch.isfinite(Fo.detach()).flatten(1).all(1) & torch.isfinite(g).flatten(1).all(1)
    okc = ok[:, None, None, None]
    g = torch.where(okc, g, torch.zeros_like(g))
    Fo = torch.where(okc, Fo, torch.zeros_like(Fo))
    per = ((Fo - Fo.detach() - g) ** 2).flatten(1).sum(1) / Fo[0].numel()
    return torch.where(ok, per, torch.zeros_like(per)).mean()


# ---- timing ----

def run_case(model_name, kind, mode, args, dev):
    label = f"{model_name} {kind} {'bf16' if mode != 'tf32' else 'tf32'}" + (" compile" if mode == "compile" else "")
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(0)
    model = (DiT() if model_name == "DiT-S/2" else UNet()).to(dev)
    nparams = sum(p.numel() for p in model.parameters())
    params = list(model.parameters())
    opt = torch.optim.Adam(params, lr=1e-4, fused=True)
    ema = [p.detach().clone() for p in params]
    x0 = torch.rand(args.batch, 3, 32, 32, device=dev) * 2 - 1
    net = torch.compile(model) if mode == "compile" else model
    loss_fn = trigflow_loss if kind == "diffusion" else sct_loss
    last = [None]

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=mode != "tf32"):
            loss = loss_fn(net, x0)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema, params, 1 - 0.9999)
        last[0] = loss.detach()

    t0 = time.time()
    for _ in range(args.warmup):
        step()
    torch.cuda.synchronize()
    warm_s = time.time() - t0
    loss0 = last[0].item()
    ms = []
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    w0 = time.time()
    for _ in range(args.steps):
        s.record()
        step()
        e.record()
        e.synchronize()
        ms.append(s.elapsed_time(e))
    wall = (time.time() - w0) * 1e3 / args.steps
    s.record()
    for _ in range(args.steps):
        step()
    e.record()
    e.synchronize()
    b2b = s.elapsed_time(e) / args.steps
    loss1 = last[0].item()
    peak = torch.cuda.max_memory_allocated() / 2**30
    ms.sort()
    med = ms[len(ms) // 2]
    print(f"{label:<34} median {med:8.2f} ms  (min {ms[0]:.2f}, max {ms[-1]:.2f}, {args.steps} steps; wall {wall:.2f} "
          f"ms/step; back to back {b2b:.2f} ms/step)  peak {peak:.2f} GiB  warm-up {warm_s:.1f} s  "
          f"loss {loss0:.4g} -> {loss1:.4g}", flush=True)
    print(f"RESULT\ttorch\t{label}\t{med:.4f}\t{peak:.4f}\tGiB\t{ms[0]:.4f}\t{ms[-1]:.4f}\t{nparams}\t0\t{b2b:.4f}",
          flush=True)
    del model, net, opt, ema, params, x0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="dit,unet")
    ap.add_argument("--cases", default="diffusion_tf32,diffusion_bf16,sct_tf32,sct_bf16,diffusion_compile")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--batch", type=int, default=128)
    args = ap.parse_args()
    dev = "cuda"
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    print(f"torch_step: torch {torch.__version__}, {torch.cuda.get_device_name()}, batch {args.batch}, 32x32x3, "
          f"warm-up {args.warmup}, timed {args.steps} steps per row (CUDA events per step)", flush=True)
    ok = True
    names = {"dit": "DiT-S/2", "unet": "UNet-128"}
    models = args.models.split(",")
    for m in models:
        name = names[m]
        n = sum(p.numel() for p in (DiT() if m == "dit" else UNet()).parameters())
        same = n == EXPECTED_PARAMS[name]
        ok &= same
        print(f"torch_step: {name}: {n} parameters ({'equal to' if same else 'MISMATCH with'} dualflow's "
              f"{EXPECTED_PARAMS[name]})", flush=True)
    # Row by row over both models, torch.compile last: a time limit then cuts the slowest rows only.
    for case in args.cases.split(","):
        kind, mode = case.split("_")
        for m in models:
            try:
                run_case(names[m], kind, mode, args, dev)
            except Exception as ex:  # one failing row (e.g. out of memory) must not hide the others
                ok = False
                print(f"torch_step: {names[m]} {case} failed: {type(ex).__name__}: {ex}", flush=True)
                gc.collect()
                torch.cuda.empty_cache()
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
