#!/usr/bin/env bash
# On a CUDA machine, in one go: build, the attention tests, compute-sanitizer memcheck and racecheck
# (trimmed sweep), then bench/attention_bench beside bench/torch_attention.py, printing the merged
# table last. Logs go to $OUT (default build/attn_gpu). Usage: bench/attention_gpu.sh [max N]
# STAGES picks the steps (default "build test sanitize bench"); "quick" times our bf16 kernels at
# N = 4096 alone; "configs" compares the wgmma configs at N = 4096, each in its own process,
# alternated ROUNDS times (default 3): rows timed later in one process run up to ~10% slower, so
# versions are only compared across processes.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-build/attn_gpu}
NMAX=${1:-4096}
JOBS=${JOBS:-$(nproc)}
STAGES=${STAGES:-build test sanitize bench}
mkdir -p "$OUT"
status=0
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader

if [[ $STAGES == *build* ]]; then
  echo "== build (make -j$JOBS)"
  if ! make -j"$JOBS" build/tests/run_tests build/bench/attention_bench >"$OUT/build.log" 2>&1; then
    grep -E "error|Error" "$OUT/build.log" | head -30; echo "attention_gpu: build failed"; exit 1
  fi
fi

if [[ $STAGES == *test* ]]; then
  echo "== tests (attention + CUDA op table)"
  timeout 300 build/tests/run_tests -tc="attention*,cuda: op table*" >"$OUT/tests.log" 2>&1 || status=1
  grep -E "^\[doctest\] (test cases|assertions)" "$OUT/tests.log"
  grep -E "ERROR|FAILED|skipped" -A6 "$OUT/tests.log" | head -80
fi

if [[ $STAGES == *sanitize* ]]; then
  echo "== compute-sanitizer memcheck (trimmed sweep, all attention cases)"
  DF_ATTN_QUICK=1 timeout 240 compute-sanitizer --tool memcheck --error-exitcode 9 --print-limit 10 \
    build/tests/run_tests -tc="attention_cuda*" >"$OUT/memcheck.log" 2>&1
  rc=$?; grep -E "ERROR SUMMARY|test cases" "$OUT/memcheck.log"; [ $rc = 0 ] || { echo "memcheck exit $rc"; status=1; }
  # One kernel family at a time (DF_ATTN_KERNELS): the SIMT kernels alone outlast ~100 s under
  # racecheck, and a run cut by its timeout says nothing about the families after it.
  for fam in wgmma tc simt; do
    echo "== compute-sanitizer racecheck (trimmed kernel sweep, $fam kernels)"
    DF_ATTN_QUICK=1 DF_ATTN_KERNELS=$fam timeout "${RACECHECK_TIMEOUT:-240}" compute-sanitizer --tool racecheck \
      --error-exitcode 9 --print-limit 10 build/tests/run_tests -tc="attention_cuda: forward*" >"$OUT/racecheck_$fam.log" 2>&1
    rc=$?; grep -E "RACECHECK SUMMARY|Race reported|test cases" "$OUT/racecheck_$fam.log" | head; [ $rc = 0 ] || { echo "racecheck exit $rc"; status=1; }
  done
fi

if [[ $STAGES == *quick* ]]; then
  # N = 4096, bf16 only, our kernels only: one line per version and pass, for comparing kernel
  # changes in a short device call (no PyTorch, no f32).
  echo "== quick bench (bf16, N = 4096)"
  build/bench/attention_bench 4096 bf16 4096 >"$OUT/bench_quick.txt" 2>&1 || status=1
  awk -F'\t' '$1 == "RESULT" { printf "%-20s %-15s %-8s %8.3f ms %6.0f TFLOP/s\n", $2, $3, $4, $5, $6 }' "$OUT/bench_quick.txt"
fi

if [[ $STAGES == *configs* ]]; then
  echo "== wgmma configs (bf16, N = 4096, one process per config, ${ROUNDS:-3} alternating rounds)"
  : >"$OUT/bench_configs.txt"
  for r in $(seq "${ROUNDS:-3}"); do
    for c in dualflow-wgmma dualflow-wgmma-c1 dualflow-wgmma-c2 dualflow-wgmma-c3 dualflow-wgmma-c4 \
             dualflow-wgmma-c5 dualflow-wgmma-c6 dualflow-wgmma-c7; do
      DF_BENCH_ONLY=$c build/bench/attention_bench 4096 bf16 4096 >>"$OUT/bench_configs.txt" 2>&1 || status=1
    done
  done
  python3 - "$OUT/bench_configs.txt" <<'PY'
import statistics, sys
r = {}
for line in open(sys.argv[1]):
    f = line.rstrip("\n").split("\t")
    if len(f) == 7 and f[0] == "RESULT":
        r.setdefault((f[2], f[3], f[1]), []).append(float(f[4]))
for (cfg, what, who), ms in sorted(r.items()):
    print("%-16s %-8s %-20s median %7.3f ms  (%s)" % (cfg, what, who, statistics.median(ms), " ".join("%.3f" % x for x in ms)))
PY
fi

if [[ $STAGES == *bench* ]]; then
  echo "== bench (N <= $NMAX)"
  build/bench/attention_bench "$NMAX" >"$OUT/bench_ours.txt" 2>&1 || status=1
  PYTHONUNBUFFERED=1 python3 bench/torch_attention.py "$NMAX" >"$OUT/bench_torch.txt" 2>&1 || status=1
  grep -hv RESULT "$OUT/bench_ours.txt" "$OUT/bench_torch.txt" | head -20
  python3 - "$OUT/bench_ours.txt" "$OUT/bench_torch.txt" <<'PY' | tee "$OUT/table.md"
import sys
r, cfgs = {}, []
for path in sys.argv[1:]:
    for line in open(path):
        f = line.rstrip("\n").split("\t")
        if len(f) != 7 or f[0] != "RESULT":
            continue
        _, who, cfg, what, ms, tf, mb = f
        r[(who, cfg, what)] = (float(ms), float(tf), float(mb))
        if cfg not in cfgs:
            cfgs.append(cfg)
def cell(who, cfg, what):
    x = r.get((who, cfg, what))
    return "%.3f (%.0f)" % (x[0], x[1]) if x else "-"
def mem(who, cfg, what):
    x = r.get((who, cfg, what))
    return "%.0f" % x[2] if x else "-"
print("ms (TFLOP/s); forward 4 N^2 D per head, fwd+bwd 3.5x, JVP 3x. B=8, H=8.\n")
cols = [("ours", "dualflow", "fwd"), ("flash", "torch-flash", "fwd"), ("cuDNN", "torch-cudnn", "fwd"),
        ("mem-eff", "torch-efficient", "fwd"),
        ("ours", "dualflow", "fwd+bwd"), ("flash", "torch-flash", "fwd+bwd"), ("cuDNN", "torch-cudnn", "fwd+bwd"),
        ("mem-eff", "torch-efficient", "fwd+bwd"),
        ("ours kernel", "dualflow", "jvp"), ("ours op", "dualflow-op", "jvp"), ("torch func.jvp MATH", "torch-math-jvp", "jvp")]
print("| config | " + " | ".join("%s %s" % (w, c) for c, _, w in cols) + " |")
print("|---|" + "---:|" * len(cols))
for cfg in cfgs:
    print("| %s | %s |" % (cfg, " | ".join(cell(who, cfg, what) for _, who, what in cols)))
print("\nPeak extra device memory, MB (inputs excluded, outputs included):\n")
mcols = [("ours op fwd", "dualflow-op", "fwd"), ("ours op fwd+bwd", "dualflow-op", "fwd+bwd"),
         ("ours op jvp", "dualflow-op", "jvp"), ("flash fwd", "torch-flash", "fwd"),
         ("flash fwd+bwd", "torch-flash", "fwd+bwd"), ("cuDNN fwd+bwd", "torch-cudnn", "fwd+bwd"),
         ("mem-eff fwd+bwd", "torch-efficient", "fwd+bwd"), ("torch jvp", "torch-math-jvp", "jvp")]
print("| config | " + " | ".join(c for c, _, _ in mcols) + " |")
print("|---|" + "---:|" * len(mcols))
for cfg in cfgs:
    print("| %s | %s |" % (cfg, " | ".join(mem(who, cfg, what) for _, who, what in mcols)))
print("\nVersions: engine path (dualflow-op: allocations, saved lse, zero lse cotangent; jvp() through the op), tensor-core blocks of 4 and 8 warps, the wgmma kernels (sm_90; config 0 default, c1-c7 other block shapes / loops / load paths (c5: cp.async loads); fwd+bwd and bwd = wgmma forward + wgmma backward, whose configs 1 and 3 are its one-warpgroup block and 5 its cp.async loads), and the SIMT kernels (first version) on bf16:\n")
vers = [("op", "dualflow-op"), ("w4", "dualflow-w4"), ("w8", "dualflow-w8"), ("wgmma", "dualflow-wgmma"),
        ("wgmma c1", "dualflow-wgmma-c1"), ("wgmma c2", "dualflow-wgmma-c2"), ("wgmma c3", "dualflow-wgmma-c3"), ("wgmma c4", "dualflow-wgmma-c4"),
        ("wgmma c5", "dualflow-wgmma-c5"), ("wgmma c6", "dualflow-wgmma-c6"), ("wgmma c7", "dualflow-wgmma-c7"),
        ("simt", "dualflow-simt")]
print("| config | " + " | ".join("%s %s" % (n, x) for x in ("fwd", "fwd+bwd", "bwd", "jvp") for n, _ in vers) + " |")
print("|---|" + "---:|" * (4 * len(vers)))
for cfg in cfgs:
    print("| %s | %s |" % (cfg, " | ".join(cell(w, cfg, x) for x in ("fwd", "fwd+bwd", "bwd", "jvp") for _, w in vers)))
PY
fi
echo "attention_gpu: status $status (logs in $OUT)"
exit $status
