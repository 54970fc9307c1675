"""The per-device TensorRT engine cache, engine sidecars and batch profiles (no torch, no TensorRT).

An engine is valid only for the TensorRT version and GPU architecture it was built with, so cached
engines are keyed by the ONNX file's sha256, the TensorRT version, the GPU compute capability, the
precision and the batch profile::

    <cache_dir()>/engines/<onnx sha256[:16]>/trt<10.3.0>-sm<87>-<fp16>-b<1-4-8>.engine
    <same>.engine.json                                  # the sidecar

The sidecar (JSON) records what the engine was built from and for: TensorRT version (``trt_version``),
GPU name and compute capability, cloudrt version, ONNX sha256, profile, precision, and the command that
rebuilds it. The runtime (:mod:`cloudrt.runtime.tensorrt_backend`) reads the same file and refuses engines
built for another TensorRT version or GPU with its ``check_engine_compat``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path
from typing import Any

from cloudrt._version import __version__
from cloudrt.errors import InputError, ModelError
from cloudrt.fileutil import atomic_write_bytes, file_sha256

SIDECAR_FORMAT = "cloudrt-trt-engine/1"
PRECISIONS = ("fp32", "fp16")
DEFAULT_ENGINE_BATCH = "1:4:8"


def parse_batch(spec: int | str | None, default: str = DEFAULT_ENGINE_BATCH) -> tuple[int, int, int]:
    """``N`` -> (N, N, N); ``"MIN:OPT:MAX"`` -> (MIN, OPT, MAX); None -> ``default``.

    Raises :class:`InputError` unless 1 <= MIN <= OPT <= MAX.
    """
    if spec is None:
        spec = default
    text = str(spec).strip()
    parts = text.split(":")
    try:
        vals = [int(p) for p in parts]
    except ValueError:
        vals = []
    if len(vals) == 1:
        vals = vals * 3
    if len(vals) != 3 or not 1 <= vals[0] <= vals[1] <= vals[2]:
        raise InputError(
            f"--batch {text!r} is not a batch size N or a range MIN:OPT:MAX with 1 <= MIN <= OPT <= MAX; "
            "use e.g. --batch 4 or --batch 1:4:8."
        )
    return vals[0], vals[1], vals[2]


def normalize_trt_version(version: str) -> str:
    """'10.3.0.30' / '10.12.0.post1' -> '10.3.0' / '10.12.0' (major.minor.patch)."""
    nums = re.findall(r"\d+", str(version).split("+")[0].split("post")[0])
    if not nums:
        raise ValueError(f"not a TensorRT version: {version!r}")
    return ".".join((nums + ["0", "0"])[:3])


def normalize_compute_capability(cc: str | tuple[int, int]) -> str:
    """(8, 7) / '8.7' / 'sm_87' -> '8.7'."""
    if isinstance(cc, tuple):
        return f"{int(cc[0])}.{int(cc[1])}"
    s = str(cc).lower().removeprefix("sm_").removeprefix("sm")
    if "." in s:
        major, minor = s.split(".", 1)
    elif s.isdigit() and len(s) >= 2:
        major, minor = s[:-1], s[-1]
    else:
        raise ValueError(f"not a compute capability: {cc!r}")
    return f"{int(major)}.{int(minor)}"


def engine_cache_key(
    onnx_sha256: str, trt_version: str, compute_capability: str, precision: str,
    batch: int | str | tuple[int, int, int] = DEFAULT_ENGINE_BATCH,
) -> str:
    """Stable key ``<sha[:16]>/trt<ver>-sm<cc>-<precision>-b<min>-<opt>-<max>`` for one engine."""
    if precision not in PRECISIONS:
        raise InputError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}.")
    if not re.fullmatch(r"[0-9a-f]{64}", onnx_sha256):
        raise ValueError(f"not a sha256 hex digest: {onnx_sha256!r}")
    b = batch if isinstance(batch, tuple) else parse_batch(batch)
    cc = normalize_compute_capability(compute_capability).replace(".", "")
    return (f"{onnx_sha256[:16]}/trt{normalize_trt_version(trt_version)}-sm{cc}-{precision}"
            f"-b{b[0]}-{b[1]}-{b[2]}")


def _cache_root(cache_root: str | os.PathLike | None) -> Path:
    if cache_root is not None:
        return Path(cache_root)
    from cloudrt.paths import cache_dir

    return cache_dir()


def engine_cache_path(
    onnx_path: str | os.PathLike, precision: str, *, batch: int | str = DEFAULT_ENGINE_BATCH,
    trt_version: str | None = None, compute_capability: str | None = None, device: int = 0,
    cache_root: str | os.PathLike | None = None,
) -> Path:
    """Where the engine for this ONNX file, precision and batch profile lives on this device.

    ``trt_version`` and ``compute_capability`` default to the installed TensorRT and GPU ``device``
    (raising :class:`cloudrt.errors.BackendUnavailableError` when either is missing).
    """
    if trt_version is None or compute_capability is None:
        from cloudrt.export.tensorrt import gpu_info, require_tensorrt

        if trt_version is None:
            trt_version = require_tensorrt().__version__
        if compute_capability is None:
            compute_capability = gpu_info(device).compute_capability
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise ModelError(f"ONNX file {onnx_path} not found; export one with `cloudrt export -o {onnx_path}`.")
    key = engine_cache_key(file_sha256(onnx_path), trt_version, compute_capability, precision, batch)
    return _cache_root(cache_root) / "engines" / f"{key}.engine"


def timing_cache_path(
    trt_version: str, compute_capability: str, cache_root: str | os.PathLike | None = None
) -> Path:
    """Persistent TensorRT timing cache for one TensorRT version and GPU architecture."""
    cc = normalize_compute_capability(compute_capability).replace(".", "")
    return _cache_root(cache_root) / "timing" / f"trt{normalize_trt_version(trt_version)}-sm{cc}.cache"


def sidecar_path(engine_path: str | os.PathLike) -> Path:
    """``model.engine`` -> ``model.engine.json``."""
    p = Path(engine_path)
    return p.with_name(p.name + ".json")


def rebuild_command(
    onnx_path: str | os.PathLike, engine_path: str | os.PathLike, precision: str,
    batch: tuple[int, int, int], workspace_gb: float | None = None, device: int = 0,
) -> str:
    """The ``cloudrt export`` command line that rebuilds this engine on the current machine."""
    parts = ["cloudrt", "export", _q(onnx_path), "--format", "engine"]
    if precision == "fp16":
        parts.append("--half")
    parts += ["--batch", f"{batch[0]}:{batch[1]}:{batch[2]}"]
    if workspace_gb is not None:
        parts += ["--workspace", f"{workspace_gb:g}"]
    if device:
        parts += ["--device", str(device)]
    parts += ["-o", _q(engine_path)]
    return " ".join(parts)


def _q(p: str | os.PathLike) -> str:
    import shlex

    return shlex.quote(os.fspath(p))


def make_sidecar(
    *, engine_path: str | os.PathLike, engine_bytes: bytes | None = None, onnx_path: str | os.PathLike,
    onnx_sha256: str, trt_version: str, gpu_name: str, compute_capability: str, precision: str,
    batch: tuple[int, int, int], input_shapes: dict[str, list[int]], strongly_typed: bool,
    workspace_gb: float, device: int = 0, onnx_metadata: dict[str, str] | None = None,
    built_from_sha256: str | None = None,
) -> dict[str, Any]:
    """The sidecar dict for an engine (see the module docstring)."""
    profile = {
        name: {k: [b, *shape[1:]] for k, b in zip(("min", "opt", "max"), batch, strict=True)}
        for name, shape in input_shapes.items()
    }
    meta = onnx_metadata or {}
    return {
        "format": SIDECAR_FORMAT,
        "engine": os.fspath(Path(engine_path).resolve()),
        "trt_version": normalize_trt_version(trt_version),
        "trt_version_full": str(trt_version),
        "gpu_name": gpu_name,
        "compute_capability": normalize_compute_capability(compute_capability),
        "cloudrt_version": __version__,
        "onnx_sha256": onnx_sha256,
        "onnx_path": os.fspath(Path(onnx_path).resolve()),
        "built_from_sha256": built_from_sha256 or onnx_sha256,
        "engine_sha256": hashlib.sha256(engine_bytes).hexdigest() if engine_bytes is not None else None,
        "precision": precision,
        "strongly_typed": bool(strongly_typed),
        "batch": {"min": batch[0], "opt": batch[1], "max": batch[2]},
        "profile": profile,
        "tile": int(meta["tile"]) if "tile" in meta else None,
        "preset": meta.get("preset"),
        "weights_sha256": meta.get("weights_sha256"),
        "workspace_gb": workspace_gb,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "rebuild_command": rebuild_command(onnx_path, engine_path, precision, batch, workspace_gb, device),
    }


def write_sidecar(engine_path: str | os.PathLike, sidecar: dict[str, Any]) -> Path:
    """Write ``ENGINE.json`` atomically."""
    return atomic_write_bytes(sidecar_path(engine_path), (json.dumps(sidecar, indent=2) + "\n").encode())


def read_sidecar(engine_path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate ``ENGINE.json``; :class:`ModelError` if it is missing or not a cloudrt sidecar."""
    sp = sidecar_path(engine_path)
    if not sp.is_file():
        raise ModelError(
            f"engine {engine_path} has no sidecar {sp.name}, so its TensorRT version and GPU are unknown; "
            "rebuild it with `cloudrt export MODEL.onnx --format engine -o ENGINE`."
        )
    try:
        data = json.loads(sp.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelError(f"engine sidecar {sp} is not valid JSON ({e}); rebuild the engine.") from e
    keys = ("trt_version", "compute_capability", "onnx_sha256", "precision")
    missing = [k for k in keys if k not in data] if isinstance(data, dict) else list(keys)
    if missing or data.get("format") != SIDECAR_FORMAT:
        raise ModelError(f"{sp} is not a {SIDECAR_FORMAT} sidecar (missing {missing}); rebuild the engine.")
    return data
