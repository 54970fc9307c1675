"""What the bench measures: resolve ``--model`` (via :func:`cloudrt.model.resolve.resolve_model` for the torch
side, or an ``.onnx`` file), find or export its ONNX files, count its FLOPs."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloudrt import paths
from cloudrt._deps import has_module
from cloudrt.bench.probe import Log, quiet
from cloudrt.errors import BackendUnavailableError, ModelError
from cloudrt.export import convert_fp16, default_onnx_path, export_onnx
from cloudrt.fileutil import atomic_write_bytes, file_sha256
from cloudrt.paths import cache_dir


@dataclass
class ModelSpec:
    """What is benchmarked: a torch module (may be None) and/or an FP32 ONNX file."""

    module: Any | None
    onnx: Path | None
    info: dict[str, Any]


def load_model(model: Any = None, *, seed: int = 0, log: Log = quiet) -> ModelSpec:
    """Resolve ``--model``: None (shipped weights; else an untrained carf-small; without torch the shipped
    ONNX), a preset name (random init, perturbed), a ``.safetensors`` checkpoint, an ``.onnx`` file (ONNX
    Runtime rows only) or a module."""
    torch_ok = has_module("torch")
    if model is None:
        if torch_ok and paths.DEFAULT_WEIGHTS.is_file():
            model = paths.DEFAULT_WEIGHTS
        elif torch_ok:
            log(f"note: {paths.DEFAULT_WEIGHTS} not found; benchmarking an untrained carf-small (random init).")
            model = "carf-small"
        elif paths.DEFAULT_ONNX.is_file():
            model = paths.DEFAULT_ONNX
        else:
            raise ModelError(f"torch is not installed and {paths.DEFAULT_ONNX} is missing; pass --model MODEL.onnx "
                             "(or install cloudrt[train] to benchmark a checkpoint).")
    if isinstance(model, (str, os.PathLike)) and Path(model).suffix.lower() == ".onnx":
        p = Path(model)
        if not p.is_file():
            raise ModelError(f"ONNX model {p} does not exist; export one with `cloudrt export`.")
        meta = onnx_meta(p)
        return ModelSpec(None, p, {"source": str(p), "preset": meta.get("preset"),
                                   "weights_sha256": meta.get("weights_sha256")})
    if not torch_ok:
        raise BackendUnavailableError(f"--model {model} needs torch (a preset or a checkpoint); pip install "
                                      "'cloudrt[train]', or pass --model MODEL.onnx.")
    from cloudrt.model.resolve import resolve_model  # lazy: imports torch

    m, info = resolve_model(model, seed=seed)
    return ModelSpec(m.eval(), None, info)


def onnx_meta(path: Path) -> dict[str, str]:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    meta = dict(sess.get_modelmeta().custom_metadata_map)
    shape = sess.get_inputs()[0].shape
    meta["_tile"] = str(shape[2])
    meta["_batch"] = str(shape[0]) if isinstance(shape[0], int) else "dynamic"
    return meta


def export_paths(spec: ModelSpec, tile: int, half: bool, log: Log = quiet) -> Path:
    """The ONNX file for ``spec`` at ``tile`` (FP32 or mixed FP16): the shipped ``export/carf-demo*.onnx``
    when it was exported from these very weights at this tile (dynamic batch), else exported once into the
    user cache."""
    if spec.module is None:
        assert spec.onnx is not None
        if not half:
            return spec.onnx
        import onnx  # lazy: the export extra

        out = cache_dir() / "onnx" / f"{file_sha256(spec.onnx)[:16]}-fp16.onnx"
        if not out.is_file():
            log(f"converting {spec.onnx.name} to mixed-precision FP16")
            atomic_write_bytes(out, convert_fp16(onnx.load(str(spec.onnx))).SerializeToString())
        return out
    sha = spec.info.get("weights_sha256")
    shipped = paths.DEFAULT_ONNX_FP16 if half else paths.DEFAULT_ONNX
    if sha and shipped.is_file():
        meta = onnx_meta(shipped)
        if (meta.get("weights_sha256"), meta["_tile"], meta["_batch"], meta.get("precision")) == (
                sha, str(tile), "dynamic", "fp16" if half else "fp32"):
            return shipped
    preset = str((getattr(spec.module, "config", {}) or {}).get("preset", "model"))
    path = default_onnx_path(preset, str(sha), tile, half, None)
    if not path.is_file():
        log(f"exporting {preset} to ONNX ({'fp16' if half else 'fp32'}, tile {tile}) -> {path}")
        export_onnx(spec.module, path, tile=tile, half=half, verbose=False, verify=False, device="cpu")
    return path


def count_flops(module: Any, tile: int) -> int | None:
    """FLOPs of one (1, 13, T, T) + (1, 2, T, T) forward pass (FlopCounterMode: convs and matmuls, 2/MAC)."""
    if module is None:
        return None
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    dev = next(module.parameters()).device
    o = torch.zeros(1, 13, tile, tile, device=dev)
    s = torch.zeros(1, 2, tile, tile, device=dev)
    with FlopCounterMode(display=False) as fc, torch.inference_mode():
        module(o, s)
    return int(fc.get_total_flops())
