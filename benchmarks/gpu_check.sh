#!/usr/bin/env bash
# GPU rows of issue 12 on a lent GPU machine, in under 8 minutes (budget 420 s + start-up, hard stop 470 s).
#
#   bash benchmarks/gpu_check.sh                 # results under $OUT (or ./gpu-check-out)
#   BUDGET_S=200 bash benchmarks/gpu_check.sh --compile-modes ''   # shorter; extra args go to gpu_check.py
#
# Needs Python with torch (CUDA), safetensors, numpy, scipy; no rasterio, kornia, TensorRT or network.
# Writes gpu_check.json, gpu_check.md, gpu_check.log, nvidia-smi.txt and env.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${OUT:-$PWD/gpu-check-out}"
mkdir -p "$OUT_DIR"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"

{ nvidia-smi || echo "nvidia-smi not available"; } > "$OUT_DIR/nvidia-smi.txt" 2>&1
{
  echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"; echo "host: $(hostname)"; echo "cpus: $(nproc)"
  echo "python: $(command -v "$PY")"; "$PY" --version
  "$PY" - <<'EOF'
import importlib
for m in ("torch", "torchvision", "numpy", "scipy", "safetensors", "onnx", "onnxruntime", "rasterio", "kornia"):
    try:
        print(m, getattr(importlib.import_module(m), "__version__", "?"))
    except Exception as e:  # noqa: BLE001
        print(m, "missing:", type(e).__name__)
import torch
print("cuda", torch.version.cuda, "available", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
EOF
} > "$OUT_DIR/env.txt" 2>&1
cat "$OUT_DIR/env.txt"

timeout -k 10 "${HARD_STOP_S:-470}" "$PY" benchmarks/gpu_check.py --out "$OUT_DIR" --budget-s "${BUDGET_S:-420}" "$@" \
  2>&1 | tee "$OUT_DIR/gpu_check.log"
rc=${PIPESTATUS[0]}
echo "gpu_check.py exit status: $rc (124 = hard stop; the JSON keeps every section finished before it)"
exit "$rc"
