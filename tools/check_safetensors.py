#!/usr/bin/env python3
"""Cross-check a dualflow safetensors file with PyTorch's reader (safetensors.torch.load_file).

Usage:
    python3 tools/check_safetensors.py FILE.safetensors SUMMARY.json [--rtol 1e-6]

SUMMARY.json is what dualflow's tensor_summary_json() writes (train/checkpoint.h):
    {name: {"dtype": "F32"|"F64"|"BF16", "shape": [...], "sum": float, "first": [up to 8 floats]}}

To make a sample pair (the round-trip test writes them when the variable is set):
    make -j2 build/tests/run_tests
    DF_SAFETENSORS_EXPORT=out/st build/tests/run_tests -tc="*safetensors round trip*"
    python3 tools/check_safetensors.py out/st/sample.safetensors out/st/sample.json

Checks that PyTorch sees exactly the same tensor names, dtypes and shapes, the same first values
(exactly) and the same sums (to rtol, since the summation order differs), plus the same metadata when
the file has any. Exits 0 and prints "OK" when everything matches, 1 with one line per mismatch otherwise.
"""
import argparse
import json
import math
import sys

DTYPES = {"F32": "torch.float32", "F64": "torch.float64", "BF16": "torch.bfloat16"}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("file", help="the .safetensors file written by dualflow")
    ap.add_argument("summary", help="the JSON summary written by dualflow for the same tensors")
    ap.add_argument("--rtol", type=float, default=1e-6, help="relative tolerance on sums (default 1e-6)")
    args = ap.parse_args()

    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file

    tensors = load_file(args.file)
    with open(args.summary) as f:
        want = json.load(f)
    with safe_open(args.file, framework="pt") as f:
        metadata = f.metadata() or {}

    bad = []
    if set(tensors) != set(want):
        bad.append(f"names: only in file {sorted(set(tensors) - set(want))}, "
                   f"only in summary {sorted(set(want) - set(tensors))}")
    for name in sorted(set(tensors) & set(want)):
        t, w = tensors[name], want[name]
        if str(t.dtype) != DTYPES.get(w["dtype"], w["dtype"]):
            bad.append(f"{name}: dtype {t.dtype}, expected {w['dtype']}")
        if list(t.shape) != list(w["shape"]):
            bad.append(f"{name}: shape {list(t.shape)}, expected {w['shape']}")
            continue
        flat = t.double().flatten()
        first = flat[: len(w["first"])].tolist()
        if first != [float(x) for x in w["first"]]:
            bad.append(f"{name}: first values {first}, expected {w['first']}")
        s = flat.sum().item()
        ws = float(w["sum"])
        scale = max(1.0, flat.abs().sum().item())
        if not math.isfinite(s) or abs(s - ws) > args.rtol * scale:
            bad.append(f"{name}: sum {s!r}, expected {ws!r} (rtol {args.rtol} of sum |x| = {scale:.6g})")
    print(f"{args.file}: {len(tensors)} tensors, {sum(t.numel() for t in tensors.values())} values, "
          f"metadata keys {sorted(metadata)}")
    for line in bad:
        print("MISMATCH " + line)
    if bad:
        return 1
    print("OK: safetensors.torch.load_file reads the same tensors dualflow wrote")
    return 0


if __name__ == "__main__":
    sys.exit(main())
