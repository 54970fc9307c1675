"""Deployment exports: one entry, :func:`export`, for every format (the ``cloudrt export`` command calls it).

>>> from cloudrt.export import export
>>> export("weights/carf-demo.safetensors", format="onnx", tile=256)        # ./carf-demo.onnx
>>> export(None, format="onnx-fp16")                                      # ./carf-demo-fp16.onnx
>>> export("carf-demo-fp16.onnx", format="engine", half=True, batch="1:4:8")  # needs TensorRT + a GPU

Formats: ``onnx`` (FP32), ``onnx-fp16`` (mixed precision, FP32 I/O; the same as ``onnx`` with
``half=True``), ``engine`` (TensorRT; from a checkpoint via an intermediate ONNX file in the user cache, or
from an ``.onnx`` file). Options mean one thing for every format: ``half`` FP16, ``batch`` ``N`` (static)
or ``MIN:OPT:MAX``, ``workspace`` TensorRT builder GiB, ``device`` where the export runs (``cpu``,
``cuda:N``; engines need a GPU). Default outputs: ``./NAME[-fp16].onnx`` for ONNX, the per-device engine cache
(:func:`cloudrt.runtime.trt_meta.engine_cache_path`) for engines.

Importing this package imports neither torch, onnx nor TensorRT; each is imported when a build needs it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cloudrt._deps import require
from cloudrt.devices import parse_device
from cloudrt.errors import InputError
from cloudrt.export.fp16 import convert_fp16, fp32_islands
from cloudrt.export.onnx_export import DEFAULT_OPSET, default_onnx_path, export_onnx
from cloudrt.export.tensorrt import build_engine, get_or_build_engine, trt_build_mode
from cloudrt.export.trt_ops import op_histogram, trt_problems
from cloudrt.paths import DEFAULT_NAME
from cloudrt.runtime import trt_meta
from cloudrt.runtime.trt_meta import DEFAULT_ENGINE_BATCH, parse_batch

FORMATS = ("onnx", "onnx-fp16", "engine")

__all__ = [
    "FORMATS", "build_engine", "convert_fp16", "default_onnx_path", "default_output", "export", "export_onnx",
    "fp32_islands", "get_or_build_engine", "op_histogram", "trt_build_mode", "trt_problems",
]


def _is_onnx(model: Any) -> bool:
    return isinstance(model, (str, os.PathLike)) and Path(model).suffix.lower() == ".onnx"


def default_output(model: Any, half: bool) -> Path:
    """Where an ONNX export goes without ``output``: ``./NAME[-fp16].onnx`` in the working directory, NAME the
    checkpoint's stem, the preset of a module, or the shipped model's name."""
    if model is None:
        name = DEFAULT_NAME
    elif isinstance(model, (str, os.PathLike)):
        name = Path(model).with_suffix("").name
    else:
        name = str((getattr(model, "config", None) or {}).get("preset") or "model")
    return Path(f"{name}{'-fp16' if half else ''}.onnx")


def export(
    model: Any = None, format: str = "onnx", *, output: str | os.PathLike | None = None, tile: int = 256,
    batch: int | str | None = None, opset: int = DEFAULT_OPSET, half: bool = False, workspace: float = 4.0,
    device: str | int | None = None, timing_cache: str | os.PathLike | None = None, simplify: bool = True,
    verbose: bool = True,
) -> Path:
    """Export ``model`` (None: the shipped weights; a checkpoint path; a preset name; a module; for
    ``engine`` also an ``.onnx`` file) to ``format``; returns the written path (see the module docstring)."""
    fmt = str(format).lower()
    if fmt not in FORMATS:
        raise InputError(f"--format {format!r} is not supported; use one of {', '.join(FORMATS)}.")
    half = half or fmt == "onnx-fp16"
    dev = parse_device(device, default="cpu" if fmt != "engine" else "cuda:0")
    if fmt == "engine":
        return _export_engine(model, output, tile, batch, opset, half, workspace, dev, timing_cache, simplify,
                              verbose)
    if batch is not None:
        parse_batch(batch)  # fail fast, before loading torch
    if _is_onnx(model):
        raise InputError(f"{model} is already ONNX; pass a .safetensors checkpoint, or use --format engine "
                         "to build a TensorRT engine from it.")
    if dev == "auto":
        dev = "cpu"
    require("torch", "exporting a checkpoint", "export")
    require("onnx", "exporting to ONNX")
    out = Path(output) if output is not None else default_output(model, half)
    return export_onnx(model, out, tile=tile, batch=batch, opset=opset, half=half, simplify=simplify,
                       device=dev, verbose=verbose)


def _export_engine(model: Any, output: str | os.PathLike | None, tile: int, batch: int | str | None, opset: int,
                   half: bool, workspace: float, device: str, timing_cache: str | os.PathLike | None,
                   simplify: bool, verbose: bool) -> Path:
    """Checkpoint or ONNX -> TensorRT engine; TensorRT and the GPU are checked before any export work."""
    lo, opt, hi = parse_batch(batch, default=DEFAULT_ENGINE_BATCH)
    if device == "cpu":
        raise InputError("--format engine builds on a GPU; pass --device cuda:N (or leave --device out).")
    trt_meta.require_tensorrt()  # one line + exit 2 when TensorRT is missing ...
    trt_meta.gpu_info(device)  # ... or when there is no GPU
    require("onnx", "building a TensorRT engine")
    if _is_onnx(model):
        onnx_path = Path(model)
    else:
        require("torch", "exporting a checkpoint", "export")
        onnx_path = export_onnx(model, None, tile=tile, opset=opset, half=half, simplify=simplify,
                                batch=f"{lo}:{opt}:{hi}", verbose=verbose)
    return build_engine(onnx_path, output, half=half, batch=f"{lo}:{opt}:{hi}", workspace_gb=workspace,
                        device=device, timing_cache=timing_cache, verbose=verbose)
