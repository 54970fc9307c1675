"""Pick and load a backend for a model: TensorRT engine, ONNX Runtime (TensorRT/CUDA/CPU EP), torch.

The runtime loads engines and never builds them: building is :mod:`cloudrt.export`'s job
(``cloudrt export MODEL.onnx --format engine``; ``cloudrt infer --backend tensorrt`` chains the two).
"""

from __future__ import annotations

import importlib
import logging
import os
from pathlib import Path
from typing import Any

from cloudrt import paths
from cloudrt._deps import has_module, missing_extra_message
from cloudrt.devices import device_index, parse_device
from cloudrt.errors import BackendUnavailableError, InputError, ModelError
from cloudrt.runtime import trt_meta
from cloudrt.runtime.base import Backend
from cloudrt.runtime.onnx_backend import OnnxRuntimeBackend, available_providers
from cloudrt.runtime.tensorrt_backend import TensorRTBackend

log = logging.getLogger("cloudrt.runtime")

BACKENDS: tuple[str, ...] = ("auto", "tensorrt", "onnxruntime", "cuda", "cpu", "torch")
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
CHECKPOINT_SUFFIXES = (".safetensors", ".json")
#: The eager torch backend lives with the model (it needs torch and the checkpoint reader); the runtime
#: names it here and imports it only when asked for, so the runtime package itself never depends on the
#: training side (see docs/architecture.md).
TORCH_BACKEND = "cloudrt.model.torch_backend"


def available_backends() -> dict[str, bool]:
    """Which backends can run here (no model needed). ``onnxruntime`` lists its providers separately."""
    provs = available_providers()
    return {
        "tensorrt": has_module("tensorrt"),
        "onnxruntime": bool(provs),
        "onnxruntime:tensorrt": "TensorrtExecutionProvider" in provs,
        "onnxruntime:cuda": "CUDAExecutionProvider" in provs,
        "onnxruntime:cpu": "CPUExecutionProvider" in provs,
        "torch": has_module("torch"),
    }


def default_model() -> Path:
    """The shipped default ONNX model, or ModelError saying how to produce it."""
    if not paths.DEFAULT_ONNX.is_file():
        raise ModelError(
            f"the default model {paths.DEFAULT_ONNX} is missing; export it with "
            f"`cloudrt export {paths.DEFAULT_WEIGHTS} -o {paths.DEFAULT_ONNX}` or pass --model MODEL.onnx."
        )
    return paths.DEFAULT_ONNX


def torch_backend(model: Any, device: str | None) -> Backend:
    """The eager torch backend (:data:`TORCH_BACKEND`) for a module or checkpoint; one line if torch is missing."""
    if not has_module("torch"):
        raise BackendUnavailableError(missing_extra_message("torch", "--backend torch (a PyTorch checkpoint)"))
    return importlib.import_module(TORCH_BACKEND).TorchBackend(model, device)


def _cached_engine(onnx_path: Path, device: str, required: bool) -> Path | None:
    """The FP16 engine for ``onnx_path`` from the per-device cache (default batch profile), or None.

    ``required`` (``--backend tensorrt``): a missing engine is an error naming the export command;
    otherwise (``auto``) any problem (no GPU, stale cache) falls back to ONNX Runtime.
    """
    try:
        path = trt_meta.cached_engine(onnx_path, half=True, device=device)
    except Exception as e:  # noqa: BLE001 - no GPU, no driver...: auto falls back to ONNX Runtime
        if required:
            raise
        log.info("no cached TensorRT engine for %s (%s); using ONNX Runtime", onnx_path, e)
        return None
    if path is None and required:
        raise ModelError(
            f"no TensorRT engine for {onnx_path.name} on this GPU; build it with `cloudrt export {onnx_path} "
            "--format engine --half` (or pass --model ENGINE.engine, or --backend onnxruntime)."
        )
    return path


def _normalize_backend(backend: str | None) -> str:
    b = (backend or "auto").lower()
    b = {"ort": "onnxruntime", "onnx": "onnxruntime", "trt": "tensorrt"}.get(b, b)
    if b not in BACKENDS:
        raise InputError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}.")
    return b


def _ort_provider(backend: str, device: str) -> str | None:
    """The ONNX Runtime provider for ``backend`` on ``device`` (None: the fastest available)."""
    if backend in ("tensorrt", "cuda", "cpu"):  # tensorrt here: ORT's TensorRT EP (no native TensorRT)
        return backend
    if device == "cpu":
        return "cpu"
    if device.startswith("cuda"):
        have = available_providers()
        for name, prov in (("tensorrt", "TensorrtExecutionProvider"), ("cuda", "CUDAExecutionProvider")):
            if prov in have:
                return name
        raise BackendUnavailableError(
            "ONNX Runtime here has no CUDA or TensorRT provider; install onnxruntime-gpu or pass --device cpu."
        )
    return None


def load_backend(model: Any = None, backend: str = "auto", device: str | None = None,
                 batch: int | None = None) -> Backend:
    """Load ``model`` (ONNX path, engine path, checkpoint path, torch module, or None for the shipped
    default) on ``backend`` (one of :data:`BACKENDS`). ``auto`` takes the fastest available: a TensorRT
    engine runs on TensorRT; an ONNX model natively on TensorRT when an engine for it is in the per-device
    cache, else on ONNX Runtime with the TensorRT, CUDA or CPU execution provider, in that order
    (``device="cpu"`` forces the CPU one); a checkpoint or module on torch. ``tensorrt`` with an ONNX model
    runs its cached engine when TensorRT is installed (a missing engine is an error naming the export
    command), else ONNX Runtime's TensorRT execution provider."""
    backend = _normalize_backend(backend)
    dev = parse_device(device)
    if backend == "torch":
        if not has_module("torch"):  # before looking at the model: the missing extra is the real problem
            raise BackendUnavailableError(missing_extra_message("torch", "--backend torch"))
    if model is None:
        model = paths.DEFAULT_WEIGHTS if backend == "torch" else default_model()
    if not isinstance(model, (str, os.PathLike)):
        if backend not in ("auto", "torch"):
            raise InputError(f"a torch module runs on the torch backend, not {backend}; use backend='torch'.")
        return torch_backend(model, device)
    p = Path(model)
    if not p.exists():
        raise ModelError(f"model file {p} does not exist; pass an exported .onnx (or .engine) file.")
    if p.is_dir():
        raise ModelError(f"model path {p} is a directory; pass an exported .onnx (or .engine) file.")
    suffix = p.suffix.lower()
    if suffix in ENGINE_SUFFIXES:
        if backend not in ("auto", "tensorrt"):
            raise InputError(f"{p} is a TensorRT engine; it runs only with --backend tensorrt (or auto).")
        return TensorRTBackend(p, device_id=device_index(dev))
    if suffix in CHECKPOINT_SUFFIXES:
        if backend not in ("auto", "torch"):
            raise InputError(f"{p} is a PyTorch checkpoint; run it with --backend torch, or export it to ONNX.")
        return torch_backend(p, device)
    if backend == "torch":
        raise InputError(f"--backend torch runs a .safetensors checkpoint, not {p.name}; pass --model WEIGHTS.")
    # Anything else is treated as ONNX.
    if backend in ("tensorrt", "auto") and dev != "cpu" and has_module("tensorrt"):
        engine = _cached_engine(p, dev, required=backend == "tensorrt")
        if engine is not None:
            return TensorRTBackend(engine, device_id=device_index(dev))
    return OnnxRuntimeBackend(p, provider=_ort_provider(backend, dev), device_id=device_index(dev), batch=batch)
