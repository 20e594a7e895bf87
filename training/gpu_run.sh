#!/usr/bin/env bash
# The one-command GPU training run, for a session lent the device machine (one call, at most 10 minutes).
# Here, first:   python -m training.pack training/recipes/campaign-classification.toml --out .gpu-pack/train.tar.gz
# Then, through the device tool, carrying .gpu-pack:   bash training/gpu_run.sh
# Extra arguments go to `python -m training` (e.g. --set max_minutes=0.1 to try it on a CPU).
# Writes under $OUT: train.log, log.jsonl, curves.png, engine.pt (best validated), latest.pt (latest
# weights, fp16: commit it as engines/weights/campaign-classification.pt and point the campaign recipes' init_from there to continue from it).
set -euo pipefail
cd "$(dirname "$0")/.."
: "${OUT:?set OUT to the folder that receives the results}"
export PYTHONUNBUFFERED=1
run="${GPU_RUN_DIR:-/tmp/colorize-gpu-run}"
(nvidia-smi --query-gpu=name,memory.total --format=csv 2>&1 || echo "no nvidia-smi") > "$OUT/device.txt"
set +e
python3 -m training training/recipes/gpu-classification.toml --out "$run" "$@" 2>&1 | tee "$OUT/train.log"
status=${PIPESTATUS[0]}
set -e
# Whatever the run reached is brought back, also when it was stopped.
for f in log.jsonl curves.png engine.pt; do
  if [ -f "$run/$f" ]; then cp "$run/$f" "$OUT/"; fi
done
if [ -f "$run/state.pt" ] && [ -f "$run/engine.pt" ]; then
  python3 -m training.snapshot "$run" --out "$OUT/latest.pt"
fi
exit "$status"
