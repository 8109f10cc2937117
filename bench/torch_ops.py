# The same ops and sizes as bench/ops_bench.cpp, in PyTorch eager on the same GPU, printed as the
# same RESULT lines so bench/gpu_check.sh can put the two side by side. Usage: torch_ops.py [scale]
import math
import sys
import time

import torch

scale = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
dev = "cuda"


def time_op(fn, warm=3, reps=25):
    for _ in range(warm):
        fn()
    ms = []
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for _ in range(reps):
        s.record()
        fn()
        e.record()
        e.synchronize()
        ms.append(s.elapsed_time(e))
    ms.sort()
    return ms[len(ms) // 2]


def bw(name, ms, nbytes):
    print(f"RESULT\ttorch\t{name}\t{ms:.4f}\t{nbytes / (ms * 1e-3) / 1e9:.1f}\tGB/s", flush=True)


def fl(name, ms, flops):
    print(f"RESULT\ttorch\t{name}\t{ms:.4f}\t{flops / (ms * 1e-3) / 1e12:.1f}\tTFLOP/s", flush=True)


torch.manual_seed(0)
with torch.no_grad():
    N = int((1 << 26) * scale)
    R, C = int(8192 * math.sqrt(scale)), 8192
    a, b = torch.randn(N, device=dev), torch.randn(N, device=dev)
    ab, bb = a.bfloat16(), b.bfloat16()
    m2, v = torch.randn(R, C, device=dev), torch.randn(C, device=dev)
    m2b = m2.bfloat16()
    f4, f2, rc4 = 4.0 * N, 2.0 * N, 4.0 * R * C
    gelu = lambda x: torch.nn.functional.gelu(x, approximate="tanh")
    bw("copy_f32", time_op(lambda: a.clone()), 2 * f4)
    bw("add_f32", time_op(lambda: a + b), 3 * f4)
    bw("mul_scalar_f32", time_op(lambda: a * 1.5), 2 * f4)
    bw("exp_f32", time_op(lambda: torch.exp(a)), 2 * f4)
    bw("gelu_f32", time_op(lambda: gelu(a)), 2 * f4)
    bw("add_bias_f32", time_op(lambda: m2 + v), 2 * rc4)
    bw("cast_f32_bf16", time_op(lambda: a.bfloat16()), f4 + f2)
    bw("add_bf16", time_op(lambda: ab + bb), 3 * f2)
    bw("gelu_bf16", time_op(lambda: gelu(ab)), 2 * f2)
    bw("transpose_f32", time_op(lambda: m2.t().contiguous()), 2 * rc4)
    bw("sum_all_f32", time_op(lambda: a.sum()), f4)
    bw("sum_rows_f32", time_op(lambda: m2.sum(1)), rc4)
    bw("sum_cols_f32", time_op(lambda: m2.sum(0)), rc4)
    bw("max_rows_f32", time_op(lambda: m2.amax(1)), rc4)
    bw("sum_rows_bf16", time_op(lambda: m2b.sum(1)), rc4 / 2)
    bw("randn_f32", time_op(lambda: torch.randn(N, device=dev)), f4)
    for n in (4096, 8192):
        x, y = torch.randn(n, n, device=dev), torch.randn(n, n, device=dev)
        f = 2.0 * n ** 3
        torch.backends.cuda.matmul.allow_tf32 = False
        fl(f"matmul_f32_{n}", time_op(lambda: x @ y, 2, 10), f)
        torch.backends.cuda.matmul.allow_tf32 = True
        fl(f"matmul_tf32_{n}", time_op(lambda: x @ y, 2, 10), f)
        torch.backends.cuda.matmul.allow_tf32 = False
        xb, yb = x.bfloat16(), y.bfloat16()
        fl(f"matmul_bf16_{n}", time_op(lambda: xb @ yb, 2, 10), f)
    x, y = torch.randn(64, 512, 512, device=dev).bfloat16(), torch.randn(64, 512, 512, device=dev).bfloat16()
    fl("bmm_bf16_64x512", time_op(lambda: x @ y, 2, 10), 2.0 * 64 * 512 ** 3)
    s, t = torch.randn(16, device=dev), torch.randn(16, device=dev)
    for _ in range(100):
        s + t
    torch.cuda.synchronize()
    n = 20000
    t0 = time.perf_counter()
    for _ in range(n):
        s + t
    t1 = time.perf_counter()
    torch.cuda.synchronize()
    us = (t1 - t0) / n * 1e6
    print(f"RESULT\ttorch\tlaunch_overhead_add_16\t{us * 1e-3:.4f}\t{us:.2f}\tus/op", flush=True)
