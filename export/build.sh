#!/usr/bin/env bash
# Rebuild the shipped ONNX models from weights/carf-demo.safetensors and write export/RECIPE.md.
# Run from anywhere; needs `pip install -e ".[export]"` (torch, onnx, onnxslim, onnxconverter-common,
# onnxruntime). tests/test_export_shipped.py checks the results still match the weights.
set -euo pipefail
cd "$(dirname "$0")/.."
test -f weights/carf-demo.safetensors || { echo "weights/carf-demo.safetensors is missing" >&2; exit 2; }
python -m cloudrt.cli export weights/carf-demo.safetensors --format onnx --tile 256 -o export/carf-demo.onnx
python -m cloudrt.cli export weights/carf-demo.safetensors --format onnx --half --tile 256 \
    -o export/carf-demo-fp16.onnx
python -m cloudrt.export.recipe
