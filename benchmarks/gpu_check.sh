#!/usr/bin/env bash
# GPU check (≤ 8 minutes on one GPU): the packaged SmolLM2-135M on cuda in bfloat16 next to
# the CPU float32 run — score + prune (block, 25% of params), save with verification, reload,
# perplexity and decode tokens/s before/after — and a table of both.
#
#   bash benchmarks/gpu_check.sh                 # cuda bfloat16 (when there is a GPU) + cpu float32
#   MODEL=DIR bash benchmarks/gpu_check.sh       # another model directory
#
# Without CUDA only the CPU float32 row runs (that fallback is what the tests exercise).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
MODEL=${MODEL:-smollm2-135m}
WINDOWS=${WINDOWS:-8}
EXTRA=${EXTRA:-}              # flags for prune and eval (e.g. --eval-text FILE --window 64)
PRUNE_EXTRA=${PRUNE_EXTRA:-}  # flags for prune only (e.g. --calib FILE --n-samples 8)
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

rows=("cpu float32")
if "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  rows=("cuda bfloat16" "${rows[@]}")
  "$PY" -c 'import torch; print("gpu:", torch.cuda.get_device_name(0), "| torch", torch.__version__)'
else
  echo "gpu: none (torch.cuda.is_available() is False): CPU float32 row only"
fi

for row in "${rows[@]}"; do
  read -r device dtype <<<"$row"
  tag="$device-$dtype"
  start=$(date +%s.%N)
  # shellcheck disable=SC2086  # EXTRA holds several flags
  "$PY" -m depthcut.cli prune "$MODEL" --units block --budget params=0.25 --device "$device" \
    --dtype "$dtype" --perplexity --latency --max-windows "$WINDOWS" --repeats 2 $EXTRA $PRUNE_EXTRA \
    --out "$OUT/$tag" >"$OUT/$tag.log" 2>"$OUT/$tag.err" || { cat "$OUT/$tag.err"; exit 1; }
  end=$(date +%s.%N)
  # shellcheck disable=SC2086
  "$PY" -m depthcut.cli eval "$OUT/$tag" --device "$device" --dtype "$dtype" --perplexity \
    --max-windows "$WINDOWS" $EXTRA --json "$OUT/$tag.reload.json" >/dev/null 2>&1
  "$PY" - "$OUT/$tag" "$tag" "$start" "$end" <<'PY'
import json, sys
from pathlib import Path
run, tag, start, end = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
report = json.loads((run / "report.json").read_text())
before, after = report["before"], report["after"]
reloaded = json.loads(Path(f"{run}.reload.json").read_text())["after"]
def ppl(r): return r["perplexity"]["perplexity"]
def tps(r): return max(r["latency"]["decode_tps"].values())
print(f"{tag:<15} prune+save {end - start:6.1f} s | ppl {ppl(before):8.2f} -> {ppl(after):8.2f}"
      f" (reloaded {ppl(reloaded):8.2f}) | decode tok/s {tps(before):8.1f} -> {tps(after):8.1f}")
PY
done
