"""Deployment exports: ONNX (FP32 / mixed-precision FP16) and TensorRT engines with a per-device cache.

Python API (the same options as ``cloudrt export``)::

    from cloudrt.export import export_onnx, build_engine, engine_cache_path
    onnx_path = export_onnx("weights/carf-demo.safetensors", "carf.onnx", tile=256)   # FP32
    fp16_path = export_onnx(None, "carf-fp16.onnx", half=True)                          # default model
    engine = build_engine(fp16_path, "carf.engine", half=True, batch="1:4:8")          # needs TensorRT + GPU

Attributes load lazily: importing this package does not import torch, onnx or TensorRT
(``engine_cache`` and ``trt_ops`` are usable from the torch-free runtime).
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "export_onnx": "onnx_export",
    "resolve_model": "onnx_export",
    "default_onnx_path": "onnx_export",
    "convert_fp16": "fp16",
    "fp32_islands": "fp16",
    "build_engine": "tensorrt",
    "get_or_build_engine": "tensorrt",
    "check_engine": "tensorrt",
    "check_engine_compat": "tensorrt",
    "gpu_info": "tensorrt",
    "require_tensorrt": "tensorrt",
    "trt_build_mode": "tensorrt",
    "engine_cache_path": "engine_cache",
    "engine_cache_key": "engine_cache",
    "parse_batch": "engine_cache",
    "read_sidecar": "engine_cache",
    "sidecar_path": "engine_cache",
    "op_histogram": "trt_ops",
    "trt_problems": "trt_ops",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'cloudrt.export' has no attribute {name!r}")
    return getattr(importlib.import_module(f"cloudrt.export.{mod}"), name)
