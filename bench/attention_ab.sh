#!/usr/bin/env bash
# A/B timing of two versions of cuda/attention_wgmma.cu in one device call: the working tree's (A)
# and FILE (B), built in turn and run alternately ROUNDS times (bf16, N = 4096, the rows named in
# DF_BENCH_ONLY), so that clock drift between runs hits both alike. Prints the median per row.
# Usage: ROUNDS=3 DF_BENCH_ONLY=dualflow,dualflow-wgmma-c2 bench/attention_ab.sh FILE
set -euo pipefail
cd "$(dirname "$0")/.."
B_SRC=$1
OUT=${OUT:-build/attn_ab}
ROUNDS=${ROUNDS:-3}
JOBS=${JOBS:-$(nproc)}
export DF_BENCH_ONLY=${DF_BENCH_ONLY:-dualflow}
mkdir -p "$OUT"
cp cuda/attention_wgmma.cu "$OUT/a_wgmma.cu"
build() {  # $1: source for cuda/attention_wgmma.cu; $2: where the bench binary goes
  cp "$1" cuda/attention_wgmma.cu
  make -j"$JOBS" build/bench/attention_bench >"$OUT/build_$(basename "$2").log" 2>&1
  cp build/bench/attention_bench "$2"
  cp build/cuda/attention_wgmma.o "$2.o"
}
trap 'cp "$OUT/a_wgmma.cu" cuda/attention_wgmma.cu' EXIT
build "$OUT/a_wgmma.cu" "$OUT/bench_a"
build "$B_SRC" "$OUT/bench_b"
for r in $(seq "$ROUNDS"); do
  for x in a b; do "$OUT/bench_$x" 4096 bf16 4096 | sed "s/^RESULT/$x/" >>"$OUT/ab.txt"; done
done
python3 - "$OUT/ab.txt" <<'PY'
import sys, statistics
r = {}
for line in open(sys.argv[1]):
    f = line.rstrip("\n").split("\t")
    if len(f) == 7:
        r.setdefault((f[2], f[1], f[3], f[0]), []).append(float(f[4]))
keys = sorted({k[:3] for k in r})
print("%-20s %-16s %-8s %9s %9s %7s" % ("row", "config", "pass", "A ms", "B ms", "B/A"))
for k in keys:
    a, b = r.get(k + ("a",), []), r.get(k + ("b",), [])
    if a and b:
        ma, mb = statistics.median(a), statistics.median(b)
        print("%-20s %-16s %-8s %9.3f %9.3f %7.3f" % (k[1], k[0], k[2], ma, mb, mb / ma))
PY
