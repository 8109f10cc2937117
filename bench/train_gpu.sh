#!/usr/bin/env bash
# Train one config on a CUDA machine that lacks Debian's dataset-fashion-mnist package: the
# Fashion-MNIST .gz files are carried in $DATA (default .gpu-trainer/data) and written into a copy of
# the config. Logs and the run directory go to $OUT (default build/train_gpu).
# Usage: bench/train_gpu.sh CONFIG MAX_MINUTES [more `dualflow train` arguments]
# DF_PROFILE=1 (host time per op) or DF_PROFILE=sync (device time per op) prints a per-op table at exit.
set -euo pipefail
cd "$(dirname "$0")/.."
cfg=$1
minutes=$2
shift 2
OUT=${OUT:-build/train_gpu}
DATA=${DATA:-.gpu-trainer/data}
name=$(basename "$cfg" .json)
mkdir -p "$OUT"
python3 - "$cfg" "$DATA" "$OUT/$name.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
c["data"]["path"] = sys.argv[2]
json.dump(c, open(sys.argv[3], "w"), indent=2)
PY
make -s -j"${JOBS:-$(nproc)}" build/dualflow
build/dualflow train --config "$OUT/$name.json" --out "$OUT/$name" --max-minutes "$minutes" "$@" 2>&1 |
  tr '\r' '\n' | tee "$OUT/$name.train.log" | grep -v "^step" || true
grep "^step" "$OUT/$name.train.log" | tail -3
