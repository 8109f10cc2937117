#!/usr/bin/env bash
# On a CUDA machine, in one call: build, the mixed-precision and CUDA step tests, then whole training
# steps of DiT-S/2 and UNet-128 (bench/step.cpp) beside PyTorch (bench/torch_step.py), printing a merged
# markdown table last (ours vs torch, ratios). Logs go to $OUT (default build/step_gpu).
# Usage: bench/step_gpu.sh
# STAGES picks the steps (default "build test ours torch"; add "profile" to rerun two bf16 rows briefly
# under DF_PROFILE=1 (host time per op) and DF_PROFILE=sync (device time per op), logs profile_*.txt).
# WARMUP / STEPS set the timed loops (5 / 15); TORCH_CASES narrows PyTorch's rows (default all five:
# diffusion_tf32, diffusion_bf16, diffusion_compile, sct_tf32, sct_bf16).
# Time: the CUDA build is ~2-3 min from scratch, the tests < 1 min, our rows < 1 min, PyTorch's 2-4 min
# (torch.compile's two warm-ups). If one call must stay short, run STAGES="build test" first and
# STAGES="ours torch" in a second call on the same machine (ours and torch always in the same call).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-build/step_gpu}
JOBS=${JOBS:-$(nproc)}
STAGES=${STAGES:-build test ours torch}
WARMUP=${WARMUP:-5}
STEPS=${STEPS:-15}
mkdir -p "$OUT"
status=0
t_start=$(date +%s)
stamp() { echo "   ($(( $(date +%s) - t_start )) s so far)"; }
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"

if [[ $STAGES == *build* ]]; then
  echo "== build (make -j$JOBS)"
  if ! make -j"$JOBS" build/tests/run_tests build/bench/step >"$OUT/build.log" 2>&1; then
    grep -E "error|Error" "$OUT/build.log" | head -30; echo "step_gpu: build failed"; exit 1
  fi
  stamp
fi

if [[ $STAGES == *test* ]]; then
  # amp*: the mixed-precision suites (CPU logic, CUDA conformance of the casts, bf16 vs f32 short runs
  # of every objective, which attention kernels run); cuda: op table*: the casts and elementwise ops
  # on the device; trainer: CUDA*: a CUDA training run against the CPU's first loss.
  echo "== tests (amp*, cuda: op table*, cuda: copies*, trainer: CUDA*)"
  timeout 300 build/tests/run_tests -tc="amp*,cuda: op table*,cuda: copies*,trainer: CUDA*" >"$OUT/tests.log" 2>&1 || status=1
  grep -E "^\[doctest\] (test cases|assertions)" "$OUT/tests.log"
  grep -E "ERROR|FAILED" -A8 "$OUT/tests.log" | head -80
  grep -E "MESSAGE: (amp|bf16|attention|wgmma|skipped)" -A1 "$OUT/tests.log" | grep -v "^--" | head -60
  stamp
fi

if [[ $STAGES == *ours* ]]; then
  echo "== dualflow steps (build/bench/step --warmup $WARMUP --steps $STEPS)"
  timeout "${OURS_TIMEOUT:-240}" build/bench/step --warmup "$WARMUP" --steps "$STEPS" >"$OUT/step_ours.txt" 2>&1 || status=1
  grep -v RESULT "$OUT/step_ours.txt"
  stamp
fi

if [[ $STAGES == *torch* ]]; then
  echo "== PyTorch steps (bench/torch_step.py --warmup $WARMUP --steps $STEPS)"
  PYTHONUNBUFFERED=1 timeout "${TORCH_TIMEOUT:-420}" python3 bench/torch_step.py --warmup "$WARMUP" --steps "$STEPS" \
    ${TORCH_CASES:+--cases "$TORCH_CASES"} >"$OUT/step_torch.txt" 2>&1 || status=1
  grep -v RESULT "$OUT/step_torch.txt" | grep -v "^\s*$" | tail -30
  stamp
fi

if [[ $STAGES == *profile* ]]; then
  # Per-op host and device time of two bf16 rows (build, warm-up and 5 steps; apply() ops only: the
  # fused optimizer, EMA and clipping kernels are not ops). Op calls / 12 ~ ops per step.
  for row in "dit diffusion" "unet sct"; do
    set -- $row
    for mode in 1 sync; do
      DF_PROFILE=$mode build/bench/step --models "$1" --kinds "$2" --precisions bf16 --warmup 2 --steps 5 \
        >"$OUT/profile_${1}_${2}_${mode}.txt" 2>&1 || status=1
      echo "== DF_PROFILE=$mode, $1 $2 bf16 (2 warm-up + 5 + 5 back-to-back steps): top ops"
      grep -A14 "^DF_PROFILE=" "$OUT/profile_${1}_${2}_${mode}.txt" | head -15
    done
  done
  stamp
fi

echo "== table"
python3 - "$OUT"/step_ours.txt "$OUT"/step_torch.txt <<'PY' | tee "$OUT/table.md"
import os, sys
rows = {}
for path in sys.argv[1:]:
    if not os.path.exists(path):
        continue
    for line in open(path):
        f = line.rstrip("\n").split("\t")
        if len(f) < 6 or f[0] != "RESULT":
            continue
        rows[(f[1], f[2])] = {"ms": float(f[3]), "gib": float(f[4]), "min": float(f[6]), "max": float(f[7]),
                              "params": int(f[8]), "tflop": float(f[9]) if len(f) > 9 else 0.0,
                              "b2b": float(f[10]) if len(f) > 10 else 0.0}
goals = {("DiT-S/2", "diffusion"): 20, ("DiT-S/2", "sct"): 35, ("UNet-128", "diffusion"): 30, ("UNet-128", "sct"): 60}
mem_goal = {"DiT-S/2": 7.6, "UNet-128": 6.2}
def get(who, label):
    return rows.get((who, label))
def fmt(r):
    return "%.2f" % r["ms"] if r else "-"
print("ms per step, median of the timed steps (CUDA events, one step at a time); peak device memory in GiB;")
print("ratio = PyTorch / dualflow (> 1: dualflow is faster). Batch 128, 32x32x3, Adam + EMA + clipping.\n")
print("| model | step | ours tf32 | torch eager tf32 | ratio | ours bf16 | torch eager bf16 | ratio | torch.compile bf16 | ratio | goal (bf16) | ours bf16 TFLOP/s | peak ours / torch bf16 GiB |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for model in ("DiT-S/2", "UNet-128"):
    for kind in ("diffusion", "sct"):
        o32, t32 = get("dualflow", f"{model} {kind} tf32"), get("torch", f"{model} {kind} tf32")
        o16, t16 = get("dualflow", f"{model} {kind} bf16"), get("torch", f"{model} {kind} bf16")
        tc = get("torch", f"{model} {kind} bf16 compile")
        if not any((o32, t32, o16, t16, tc)):
            continue
        ratio = lambda a, b: "%.2f" % (b["ms"] / a["ms"]) if a and b else "-"
        tflops = "%.0f" % (o16["tflop"] / (o16["ms"] * 1e-3)) if o16 and o16["tflop"] else "-"
        mem = "%s / %s" % ("%.2f" % o16["gib"] if o16 else "-", "%.2f" % t16["gib"] if t16 else "-")
        goal = goals[(model, kind)]
        met = "" if not o16 else (" (met)" if o16["ms"] <= goal else " (not met)")
        print(f"| {model} | {kind} | {fmt(o32)} | {fmt(t32)} | {ratio(o32, t32)} | {fmt(o16)} | {fmt(t16)} | "
              f"{ratio(o16, t16)} | {fmt(tc)} | {ratio(o16, tc)} | <= {goal}{met} | {tflops} | {mem} |")
print("\nSpread (min-max ms) and back-to-back ms/step (steps queued without a wait, as the trainer runs):\n")
print("| row | ours min-max | ours back-to-back | torch min-max | torch back-to-back | peak ours / torch GiB |")
print("|---|---:|---:|---:|---:|---:|")
labels = []
for (who, label) in rows:
    if label not in labels:
        labels.append(label)
for label in labels:
    o, t = get("dualflow", label), get("torch", label)
    mm = lambda r: "%.2f-%.2f" % (r["min"], r["max"]) if r else "-"
    bb = lambda r: "%.2f" % r["b2b"] if r and r["b2b"] else "-"
    gb = lambda r: "%.2f" % r["gib"] if r else "-"
    print(f"| {label} | {mm(o)} | {bb(o)} | {mm(t)} | {bb(t)} | {gb(o)} / {gb(t)} |")
for model in ("DiT-S/2", "UNet-128"):
    p = {who: r["params"] for (who, label), r in rows.items() if label.startswith(model + " ")}
    if p:
        same = len(set(p.values())) == 1
        print(f"\nparameters, {model}: " + ", ".join(f"{w} {n}" for w, n in sorted(p.items())) +
              (" (equal)" if same else " (MISMATCH)"))
print("\nGoals (issue 17, H200): bf16 DiT diffusion <= 20 ms, DiT sCT <= 35, UNet diffusion <= 30, UNet sCT <= 60;")
print("peak memory at or below PyTorch's bf16 figure (DiT 7.6 GiB, UNet 6.2 GiB); tf32 >= 1.25x PyTorch eager tf32.")
PY
echo "step_gpu: status $status (logs in $OUT; total $(( $(date +%s) - t_start )) s)"
exit $status
