# PyTorch attention at the sizes of bench/attention_bench.cpp (B=8, H=8, N in {256, 1024, 4096},
# D in {64, 128}, bf16 and f32): SDPA forward and forward+backward per backend (flash, cuDNN, and the
# memory-efficient one, the only fused one taking f32), and torch.func.jvp of SDPA under the MATH
# backend. CUDA events, warm-up, medians; RESULT lines as attention_bench prints them.
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

B, H = 8, 8
NMAX = int(sys.argv[1]) if len(sys.argv) > 1 else 4096


def time_ms(fn):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    ms, total = [], 0.0
    while len(ms) < 40 and (total < 150 or len(ms) < 5):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        ms.append(a.elapsed_time(b))
        total += ms[-1]
    ms.sort()
    return ms[len(ms) // 2]


def peak_mb(fn):
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 1e6


def result(who, cfg, what, ms, flops, mb):
    print("RESULT\t%s\t%s\t%s\t%.4f\t%.1f\t%.1f" % (who, cfg, what, ms, flops / (ms * 1e-3) / 1e12, mb), flush=True)


def main():
    print("torch", torch.__version__, torch.cuda.get_device_name(), flush=True)
    backends = [("torch-flash", SDPBackend.FLASH_ATTENTION), ("torch-cudnn", SDPBackend.CUDNN_ATTENTION),
                ("torch-efficient", SDPBackend.EFFICIENT_ATTENTION)]
    for dt in (torch.bfloat16, torch.float32):
        for D in (64, 128):
            for N in (256, 1024, 4096):
                if N > NMAX:
                    continue
                cfg = "%s D%d N%d" % ("bf16" if dt == torch.bfloat16 else "f32", D, N)
                fwd_flops = 4.0 * N * N * D * B * H
                g = torch.Generator(device="cuda").manual_seed(0)
                mk = lambda: torch.randn(B, H, N, D, device="cuda", dtype=dt, generator=g)
                q, k, v, tq, tk, tv, go = (mk() for _ in range(7))
                for who, be in backends:
                    if who == "torch-efficient" and dt == torch.bfloat16:
                        continue  # flash and cuDNN are the bf16 references
                    try:
                        with sdpa_kernel(be):
                            def fwd():
                                with torch.no_grad():
                                    F.scaled_dot_product_attention(q, k, v)
                            qa, ka, va = (t.detach().requires_grad_() for t in (q, k, v))

                            def fb():
                                o = F.scaled_dot_product_attention(qa, ka, va)
                                torch.autograd.grad(o, (qa, ka, va), go)
                            result(who, cfg, "fwd", time_ms(fwd), fwd_flops, peak_mb(fwd))
                            result(who, cfg, "fwd+bwd", time_ms(fb), 3.5 * fwd_flops, peak_mb(fb))
                    except Exception as e:  # a backend that refuses this dtype or size
                        print("note\t%s\t%s\tunsupported: %s" % (who, cfg, str(e).splitlines()[0][:100]), flush=True)
                try:
                    with sdpa_kernel(SDPBackend.MATH):
                        def jv():
                            torch.func.jvp(lambda a, b, c: F.scaled_dot_product_attention(a, b, c), (q, k, v),
                                           (tq, tk, tv))
                        result("torch-math-jvp", cfg, "jvp", time_ms(jv), 3.0 * fwd_flops, peak_mb(jv))
                except Exception as e:
                    print("note\ttorch-math-jvp\t%s\tfailed: %s" % (cfg, str(e).splitlines()[0][:100]), flush=True)
                del q, k, v, tq, tk, tv, go
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
