#!/usr/bin/env bash
# Train the demo model on a lent GPU host and score it on the held-out triplets (scripts/gpu_train.py).
#
# Here, first (rasterio is needed to read the samples; runs/ is git-ignored):
#   python scripts/make_npz.py --data DATA/sen12mscr-samples --data DATA/s2-pairs --data DATA/s2-timeseries-clear \
#       --holdout oriolac_6553 --holdout oriolac_4287 --holdout oriolac_4065 -o runs/mix.npz --max-mb 20
#   python scripts/make_npz.py --data DATA/sen12mscr-samples \
#       --only oriolac_6553 --only oriolac_4287 --only oriolac_4065 -o runs/heldout.npz
# Then the device `run` call, with carry ["runs/mix.npz", "runs/heldout.npz"] and timeout_s 600:
#   bash scripts/gpu_train.sh [--minutes 8] [--init weights/carf-demo.safetensors]
# Size: the device receives at most 64 MiB of working tree, tracked files (~36 MB today: the ONNX exports and
# the demo weights) plus the carried .npz files (heldout ~6 MB); size --max-mb of the mix to what is left.
# $OUT comes back with gpu_train.json, gpu_train.md, gpu_train.log and run/final.safetensors + .json.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-runs/gpu_train}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"${PYTHON:-python3}" scripts/gpu_train.py --out "$OUT" "$@" 2>&1 | tee "$OUT/gpu_train.log"
