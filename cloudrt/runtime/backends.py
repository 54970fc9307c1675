"""Pick and load a backend for a model: TensorRT engine, ONNX Runtime (TensorRT/CUDA/CPU EP), torch."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from cloudrt.errors import BackendUnavailableError, InputError, ModelError
from cloudrt.runtime.base import Backend

log = logging.getLogger("cloudrt.runtime")

BACKENDS: tuple[str, ...] = ("auto", "tensorrt", "onnxruntime", "cuda", "cpu", "torch")
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
CHECKPOINT_SUFFIXES = (".safetensors",)


def available_backends() -> dict[str, bool]:
    """Which backends can run here (no model needed). ``onnxruntime`` lists its providers separately."""
    import importlib.util

    from cloudrt.runtime.onnx_backend import available_providers

    provs = available_providers()
    return {
        "tensorrt": importlib.util.find_spec("tensorrt") is not None,
        "onnxruntime": bool(provs),
        "onnxruntime:tensorrt": "TensorrtExecutionProvider" in provs,
        "onnxruntime:cuda": "CUDAExecutionProvider" in provs,
        "onnxruntime:cpu": "CPUExecutionProvider" in provs,
        "torch": importlib.util.find_spec("torch") is not None,
    }


def _device_id(device: str | None) -> int:
    if device and ":" in device:
        try:
            return int(device.split(":", 1)[1])
        except ValueError:
            pass
    return 0


def default_model() -> Path:
    """The shipped default ONNX model, or ModelError saying how to produce it."""
    from cloudrt.paths import DEFAULT_ONNX, DEFAULT_WEIGHTS

    if not DEFAULT_ONNX.is_file():
        raise ModelError(
            f"the default model {DEFAULT_ONNX} is missing; export it with "
            f"`cloudrt export {DEFAULT_WEIGHTS} -o {DEFAULT_ONNX}` or pass --model MODEL.onnx."
        )
    return DEFAULT_ONNX


def _native_engine_for(onnx_path: Path, device: str | None, build: bool) -> Path | None:
    """A TensorRT engine for ``onnx_path`` on this GPU from the export helper's per-device cache (FP16,
    default batch profile): built on first use when ``build``, else only an already cached one. None when
    TensorRT is not installed (or, for ``auto``, when no usable engine is cached)."""
    import importlib.util

    if importlib.util.find_spec("tensorrt") is None:
        return None
    if build:
        from cloudrt.export.tensorrt import get_or_build_engine

        return get_or_build_engine(onnx_path, half=True, device=_device_id(device))
    try:
        from cloudrt.export.engine_cache import DEFAULT_ENGINE_BATCH, engine_cache_path
        from cloudrt.runtime.tensorrt_backend import check_engine_compat, local_environment, read_sidecar

        trt_version, cc = local_environment(_device_id(device))
        path = engine_cache_path(onnx_path, "fp16", batch=DEFAULT_ENGINE_BATCH, trt_version=trt_version,
                                 compute_capability=cc)
        if path.is_file():
            check_engine_compat(read_sidecar(path), trt_version, cc)
            return path
    except Exception as e:  # noqa: BLE001 - no GPU, stale cache...: fall back to ONNX Runtime
        log.info("no cached TensorRT engine for %s (%s); using ONNX Runtime", onnx_path, e)
    return None


def load_backend(model: Any = None, backend: str = "auto", device: str | None = None,
                 batch: int | None = None) -> Backend:
    """Load ``model`` (ONNX path, engine path, checkpoint path, torch module, or None for the shipped
    default) on ``backend`` (one of :data:`BACKENDS`). ``auto`` takes the fastest available: a TensorRT
    engine runs on TensorRT; an ONNX model on ONNX Runtime with the TensorRT, CUDA or CPU execution
    provider, in that order (``device="cpu"`` forces the CPU one), or natively on TensorRT when an engine
    for it is already in the export helper's per-device cache; a checkpoint or module on torch.
    ``tensorrt`` with an ONNX model builds (once, cached) and runs a native FP16 engine when TensorRT is
    installed, else uses ONNX Runtime's TensorRT execution provider."""
    backend = (backend or "auto").lower()
    if backend in ("ort", "onnx"):
        backend = "onnxruntime"
    if backend == "trt":
        backend = "tensorrt"
    if backend not in BACKENDS:
        raise InputError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}.")
    if model is None:
        model = default_model()
    if not isinstance(model, (str, os.PathLike)):
        if backend not in ("auto", "torch"):
            raise InputError(f"a torch module runs on the torch backend, not {backend}; use backend='torch'.")
        from cloudrt.runtime.torch_backend import TorchBackend

        return TorchBackend(model, device)
    p = Path(model)
    if not p.exists():
        raise ModelError(f"model file {p} does not exist; pass an exported .onnx (or .engine) file.")
    if p.is_dir():
        raise ModelError(f"model path {p} is a directory; pass an exported .onnx (or .engine) file.")
    suffix = p.suffix.lower()
    if suffix in ENGINE_SUFFIXES:
        if backend not in ("auto", "tensorrt"):
            raise InputError(f"{p} is a TensorRT engine; it runs only with --backend tensorrt (or auto).")
        from cloudrt.runtime.tensorrt_backend import TensorRTBackend

        return TensorRTBackend(p, device_id=_device_id(device))
    if suffix in CHECKPOINT_SUFFIXES or suffix == ".json":
        if backend not in ("auto", "torch"):
            raise InputError(f"{p} is a PyTorch checkpoint; run it with --backend torch, or export it to ONNX.")
        from cloudrt.runtime.torch_backend import TorchBackend

        return TorchBackend(p, device)
    # Anything else is treated as ONNX.
    if backend in ("tensorrt", "auto") and device != "cpu":
        native = _native_engine_for(p, device, build=backend == "tensorrt")
        if native is not None:
            from cloudrt.runtime.tensorrt_backend import TensorRTBackend

            return TensorRTBackend(native, device_id=_device_id(device))
    if backend == "torch":
        raise InputError(f"--backend torch runs a .safetensors checkpoint, not {p.name}; pass --model WEIGHTS.")
    from cloudrt.runtime.onnx_backend import OnnxRuntimeBackend, available_providers

    provider: str | None
    if backend in ("tensorrt", "cuda", "cpu"):  # tensorrt here: ORT's TensorRT EP (no native TensorRT)
        provider = backend
    elif device == "cpu":
        provider = "cpu"
    elif device and device.startswith("cuda"):
        have = available_providers()
        provider = next((q for q in ("tensorrt", "cuda") if
                         {"tensorrt": "TensorrtExecutionProvider", "cuda": "CUDAExecutionProvider"}[q] in have),
                        None)
        if provider is None:
            raise BackendUnavailableError(
                "ONNX Runtime here has no CUDA or TensorRT provider; install onnxruntime-gpu or pass --device cpu."
            )
    else:
        provider = None
    return OnnxRuntimeBackend(p, provider=provider, device_id=_device_id(device), batch=batch)
