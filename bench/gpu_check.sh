#!/usr/bin/env bash
# On a CUDA machine: build, run the whole test suite (CUDA conformance included), run
# compute-sanitizer memcheck on the CUDA tests, benchmark our ops beside PyTorch's in the same run,
# and print one table last. Logs go to $OUT (default build/gpu_check). Usage: bench/gpu_check.sh [scale]
# The data-set tests need Fashion-MNIST: install dataset-fashion-mnist, or carry its .gz files and set
# DF_FASHION_MNIST_DIR (they skip visibly otherwise).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-build/gpu_check}
SCALE=${1:-1}
JOBS=${JOBS:-$(nproc)}
mkdir -p "$OUT"
status=0
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"

echo "== build (make -j$JOBS)"
if ! make -j"$JOBS" build/tests/run_tests build/bench/ops_bench build/bench/attention_bench >"$OUT/build.log" 2>&1; then
  tail -40 "$OUT/build.log"; echo "gpu_check: build failed"; exit 1
fi

echo "== tests (${TESTS:-full suite})"
build/tests/run_tests ${TESTS:+-tc="$TESTS"} >"$OUT/tests.log" 2>&1 || status=1
tail -4 "$OUT/tests.log"
grep -E "ERROR|FAILED|MESSAGE" -A3 "$OUT/tests.log" | head -60

echo "== compute-sanitizer memcheck on the CUDA tests"
if [ -n "${SKIP_MEMCHECK:-}" ]; then
  echo "skipped (SKIP_MEMCHECK set)"
elif command -v compute-sanitizer >/dev/null; then
  timeout "${MEMCHECK_TIMEOUT:-300}" compute-sanitizer --tool memcheck --error-exitcode 9 --print-limit 20 \
    build/tests/run_tests -tc="cuda*" >"$OUT/memcheck.log" 2>&1
  rc=$?
  grep -E "ERROR SUMMARY|test cases" "$OUT/memcheck.log"
  [ $rc = 0 ] || { echo "memcheck exit $rc"; grep -m20 -E "=========" "$OUT/memcheck.log"; status=1; }
else
  echo "compute-sanitizer not found"
fi

if [ -n "${SKIP_BENCH:-}" ]; then
  echo "gpu_check: status $status (benchmarks skipped: SKIP_BENCH set; logs in $OUT)"
  exit $status
fi
echo "== benchmarks (scale $SCALE)"
build/bench/ops_bench "$SCALE" >"$OUT/bench_dualflow.txt" 2>&1 || status=1
python3 bench/torch_ops.py "$SCALE" >"$OUT/bench_torch.txt" 2>&1 || status=1
grep -v RESULT "$OUT/bench_dualflow.txt" "$OUT/bench_torch.txt"

python3 - "$OUT/bench_dualflow.txt" "$OUT/bench_torch.txt" <<'PY' | tee "$OUT/table.md"
import sys
rows, order = {}, []
for path in sys.argv[1:]:
    for line in open(path):
        f = line.rstrip("\n").split("\t")
        if len(f) != 6 or f[0] != "RESULT":
            continue
        _, who, name, ms, val, unit = f
        if name not in rows:
            rows[name] = {}
            order.append(name)
        rows[name][who] = (float(ms), float(val), unit)
print("| op | dualflow ms | dualflow | torch ms | torch | ours/torch |")
print("|---|---:|---:|---:|---:|---:|")
for name in order:
    d, t = rows[name].get("dualflow"), rows[name].get("torch")
    unit = (d or t)[2]
    fmt = lambda r: ("%.3f" % r[0], "%.1f %s" % (r[1], unit)) if r else ("-", "-")
    lower_better = unit == "us/op"
    ratio = "-"
    if d and t and d[1] > 0 and t[1] > 0:
        ratio = "%.2f" % ((t[1] / d[1]) if lower_better else (d[1] / t[1]))
    print("| %s | %s | %s | %s | %s | %s |" % ((name,) + fmt(d) + fmt(t) + (ratio,)))
print("\nours/torch > 1 means dualflow is faster (for us/op: less host time per launch).")
PY
echo "== fused attention (bench/attention_gpu.sh: tests, sanitizers, bench beside PyTorch)"
OUT="$OUT/attn" STAGES="${ATTN_STAGES:-test sanitize bench}" bash bench/attention_gpu.sh "${ATTN_NMAX:-4096}" || status=1

echo "gpu_check: status $status (logs in $OUT)"
exit $status
