#!/usr/bin/env python3
"""Order of the wgmma waits, products and exponentials in the attention kernels' main loops.

Reads `cuobjdump -sass` output (stdin or a file) and prints, per kernel whose name contains one of
the given patterns, the sequence of barriers, wgmma batches (HGMMA), wgmma waits
(WARPGROUP.DEPBAR) and runs of MUFU instructions. A softmax that ptxas has moved below the wait for
the previous tile's products shows up as "DEPBAR.LE gsb0, 0x0 | [n MUFU]" where the source has the
exponentials first. Usage:
    cuobjdump -sass build/cuda/attention_wgmma.o | python3 bench/sass_order.py fwd_kernelILi64ELi64
"""
import re
import sys

pats = sys.argv[1:] or ["_kernel"]
text = sys.stdin.read()
for func in re.split(r"\n\s*Function : ", text)[1:]:
    name = func.split("\n")[0].strip()
    if not any(p in name for p in pats):
        continue
    out, mufu, mma = [], 0, 0
    for line in func.split("\n"):
        m = re.match(r"\s*/\*[0-9a-f]{4,}\*/\s+(.*?);", line)
        if not m:
            continue
        ins = m.group(1)
        op = re.sub(r"^@!?U?P\w+\s+", "", ins).split()[0]
        if op.startswith("MUFU"):
            mufu += 1
            continue
        if op.startswith("HGMMA"):
            mma += 1
            continue
        if op.startswith(("WARPGROUP.DEPBAR", "BAR.SYNC", "STSM")):
            if mufu:
                out.append("[%d MUFU]" % mufu)
            if mma:
                out.append("[%d HGMMA]" % mma)
            mufu = mma = 0
            out.append(ins.replace("WARPGROUP.", "").replace(".DEFER_BLOCKING", "").strip())
    print(name[:110])
    print("  " + " | ".join(out[:40]))
