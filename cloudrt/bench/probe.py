"""The bench's options and the machine: which paths exist, which were asked for, which can run here and
why the others cannot, and what the result depends on (versions, CPU, GPU and its peak)."""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import platform
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cloudrt._deps import dist_version, has_module
from cloudrt._version import __version__
from cloudrt.devices import parse_device
from cloudrt.errors import BackendUnavailableError, InputError

#: The keys every measured row has, in table order.
ROW_KEYS: tuple[str, ...] = (
    "backend", "precision", "device", "batch", "tile", "ms_per_batch", "tiles_per_s", "mpix_per_s", "speedup",
    "max_err",
)

BASELINE = ("torch-eager", "fp32")

DEFAULT_BATCHES: tuple[int, ...] = (1, 4, 8)

DEFAULT_TILE = 256

#: Every path the bench knows, in table order.
ALL_PATHS: tuple[tuple[str, str], ...] = (
    ("torch-eager", "fp32"), ("torch-eager", "fp16"), ("torch-compile", "fp32"), ("torch-compile", "fp16"),
    ("onnxruntime-cpu", "fp32"), ("onnxruntime-cpu", "fp16"),
    ("onnxruntime-cuda", "fp32"), ("onnxruntime-cuda", "fp16"),
    ("onnxruntime-tensorrt", "fp32"), ("onnxruntime-tensorrt", "fp16"),
    ("tensorrt", "fp32"), ("tensorrt", "fp16"),
)

ORT_PROVIDERS = {
    "onnxruntime-cpu": "CPUExecutionProvider",
    "onnxruntime-cuda": "CUDAExecutionProvider",
    "onnxruntime-tensorrt": "TensorrtExecutionProvider",
}
# Dense (no sparsity) peak TFLOP/s by GPU name: (FP32 CUDA cores, TF32 tensor cores, FP16 tensor cores).
# Vendor datasheet figures; override with CLOUDRT_PEAK_TFLOPS_FP32 / CLOUDRT_PEAK_TFLOPS_FP16.
GPU_PEAK_TFLOPS: tuple[tuple[str, tuple[float, float, float]], ...] = (
    ("H200", (67.0, 494.7, 989.4)),
    ("H100 PCIe", (51.2, 378.0, 756.0)),
    ("H100 NVL", (60.0, 417.5, 835.5)),
    ("H100", (67.0, 494.7, 989.4)),  # SXM
    ("A100", (19.5, 156.0, 312.0)),
    ("L40S", (91.6, 183.0, 362.0)),
    ("L4", (30.3, 60.0, 121.0)),
    ("A10", (31.2, 62.5, 125.0)),
    ("RTX 4090", (82.6, 82.6, 165.2)),
    ("T4", (8.1, 8.1, 65.0)),
)


Log = Callable[[str], None]



def quiet(_msg: str) -> None:
    return None


def parse_batches(spec: str | int | Iterable[int] | None) -> list[int]:
    """``"1,4,8"`` (or ints) -> sorted unique positive batch sizes; :class:`InputError` otherwise."""
    if spec is None:
        return list(DEFAULT_BATCHES)
    if isinstance(spec, int):
        items: list[Any] = [spec]
    elif isinstance(spec, str):
        items = [s.strip() for s in spec.split(",") if s.strip()]
    else:
        items = list(spec)
    out = []
    for it in items:
        try:
            b = int(it)
        except (TypeError, ValueError):
            b = 0
        if b < 1 or str(it).strip() != str(b):
            raise InputError(f"--batch {spec!r} is not a list of positive integers; pass e.g. --batch 1,4,8.")
        out.append(b)
    if not out:
        raise InputError("--batch is empty; pass e.g. --batch 1,4,8.")
    return sorted(set(out))


def path_tokens(spec: str | Iterable[str] | None) -> list[str] | None:
    if spec is None:
        return None
    items = spec.split(",") if isinstance(spec, str) else [t for s in spec for t in str(s).split(",")]
    tokens = [t.strip().lower() for t in items if t.strip()]
    return tokens or None


def match_paths(spec: str | Iterable[str] | None) -> list[tuple[str, str]]:
    """Paths selected by ``--backends``: comma-separated tokens, each a family (``torch``, ``onnxruntime``,
    ``tensorrt``), a backend (``onnxruntime-cpu``), ``backend:precision`` (``onnxruntime-cuda:fp16``) or a
    precision (``fp16``). ``None`` selects all. :class:`InputError` names an unknown token."""
    tokens = path_tokens(spec)
    if tokens is None:
        return list(ALL_PATHS)
    chosen: list[tuple[str, str]] = []
    for tok in tokens:
        hits = [p for p in ALL_PATHS if _token_matches(tok, p)]
        if not hits:
            names = sorted({b for b, _ in ALL_PATHS})
            raise InputError(f"--backends {tok!r} matches no path; use torch, onnxruntime, tensorrt, fp32, fp16 or "
                             f"one of {', '.join(names)} (optionally :fp32/:fp16).")
        chosen += [p for p in hits if p not in chosen]
    return [p for p in ALL_PATHS if p in chosen]


def _token_matches(tok: str, path: tuple[str, str]) -> bool:
    backend, precision = path
    if ":" in tok:
        b, p = tok.split(":", 1)
        return _token_matches(b, path) and p == precision
    if tok in ("fp32", "fp16"):
        return tok == precision
    if tok in ("torch", "onnxruntime", "ort"):
        return backend.startswith("onnxruntime" if tok == "ort" else tok)
    if tok == "trt":
        tok = "tensorrt"
    if tok == "torch.compile":
        tok = "torch-compile"
    if tok in ("cpu", "cuda") or tok.startswith("ort-"):
        tok = f"onnxruntime-{tok.removeprefix('ort-')}"
    return backend == tok


def _installed(mod: str) -> str | None:
    """The installed version of an importable module, None when it is not importable."""
    return dist_version(mod, "unknown") if has_module(mod) else None


def _ort_providers() -> list[str]:
    if not has_module("onnxruntime"):
        return []
    import onnxruntime as ort

    return list(ort.get_available_providers())


def _cuda_visible() -> bool:
    if has_module("torch"):
        import torch

        return bool(torch.cuda.is_available())
    return "CUDAExecutionProvider" in _ort_providers()


def resolve_device(device: str | None) -> str:
    """``auto`` -> ``cuda:0`` when a GPU is visible, else ``cpu``; ``cuda`` -> ``cuda:0``; checks the GPU."""
    d = parse_device(device)
    if d == "auto":
        return "cuda:0" if _cuda_visible() else "cpu"
    if d.startswith("cuda") and not _cuda_visible():
        raise BackendUnavailableError(f"--device {device} asked for a GPU but none is visible to torch or ONNX "
                                      "Runtime here; pass --device cpu.")
    return d


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def gpu_peak_tflops(name: str, precision: str, tf32: bool) -> float | None:
    """Dense peak TFLOP/s of GPU ``name`` for ``precision`` (env override), None when unknown."""
    env = os.environ.get(f"CLOUDRT_PEAK_TFLOPS_{precision.upper()}")
    if env:
        return float(env)
    for key, (fp32, tf32_peak, fp16) in GPU_PEAK_TFLOPS:
        if key.lower() in name.lower():
            return fp16 if precision == "fp16" else (tf32_peak if tf32 else fp32)
    return None


def system_info(device: str, threads: int) -> dict[str, Any]:
    """Machine, library versions and settings that a result depends on."""
    info: dict[str, Any] = {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "cloudrt": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable_cpus(),
        "threads": threads,
        "numpy": np.__version__,
        "torch": _installed("torch"),
        "onnxruntime": _installed("onnxruntime"),
        "onnxruntime_providers": _ort_providers(),
        "tensorrt": _installed("tensorrt"),
        "device": device,
    }
    with contextlib.suppress(OSError, AttributeError):
        info["loadavg_start"] = [round(x, 2) for x in os.getloadavg()]
    if device.startswith("cuda") and has_module("torch"):
        import torch

        idx = torch.device(device).index or 0
        props = torch.cuda.get_device_properties(idx)
        info["gpu"] = props.name
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["compute_capability"] = f"{props.major}.{props.minor}"
        info["cuda"] = torch.version.cuda
        info["cudnn_allow_tf32"] = bool(torch.backends.cudnn.allow_tf32)
        info["matmul_allow_tf32"] = bool(torch.backends.cuda.matmul.allow_tf32)
    return info


def plan_paths(selected: Sequence[tuple[str, str]], device: str, spec_has_torch: bool, spec_is_onnx: bool,
               explicit: bool) -> tuple[list[tuple[str, str]], list[dict[str, str]]]:
    """Split ``selected`` (plus the baseline) into paths to run here and skipped ones with a reason."""
    torch_ok = has_module("torch")
    provs = _ort_providers()
    on_gpu = device.startswith("cuda")
    run: list[tuple[str, str]] = []
    skipped: list[dict[str, str]] = []
    wanted = list(selected)
    if BASELINE not in wanted:
        wanted.insert(0, BASELINE)  # speedup and max_err need it
    for backend, precision in wanted:
        reason = _skip_reason(backend, precision, device, on_gpu, torch_ok, provs, spec_has_torch, spec_is_onnx,
                              explicit)
        if reason:
            skipped.append({"backend": backend, "precision": precision, "device": device, "reason": reason})
        else:
            run.append((backend, precision))
    return run, skipped


def _skip_reason(backend: str, precision: str, device: str, on_gpu: bool, torch_ok: bool, provs: list[str],
                 has_torch_module: bool, is_onnx: bool, explicit: bool) -> str | None:
    if backend.startswith("torch"):
        if not torch_ok:
            return "torch is not installed (pip install 'cloudrt[train]')"
        if not has_torch_module:
            return "--model is an ONNX file; torch rows need a preset or a .safetensors checkpoint"
        if precision == "fp16" and not on_gpu:
            return "FP16 torch rows run on a GPU only (eager CPU FP16 is not a deployment path); use --device cuda"
        if backend == "torch-compile" and not on_gpu and not explicit:
            return ("torch.compile rows run on a GPU by default (CPU compilation takes minutes); "
                    "ask with --backends torch-compile")
        return None
    if backend.startswith("onnxruntime"):
        if not provs:
            return "onnxruntime is not installed (pip install 'cloudrt[cpu]' or 'cloudrt[gpu]')"
        if is_onnx is False and not torch_ok:
            return "no ONNX file: torch is needed to export one; pass --model MODEL.onnx"
        prov = ORT_PROVIDERS[backend]
        if backend == "onnxruntime-cpu" and on_gpu:
            return f"the bench runs on {device}; CPU rows come from --device cpu"
        if backend != "onnxruntime-cpu" and not on_gpu:
            why = "no CUDA GPU here" if not _cuda_visible() else "--device cpu"
            return f"needs a GPU and onnxruntime-gpu ({why}; providers here: {', '.join(provs)})"
        if prov not in provs:
            return f"this ONNX Runtime has no {prov} (providers: {', '.join(provs)}); install onnxruntime-gpu"
        return None
    if backend == "tensorrt":
        if not has_module("tensorrt"):
            return "TensorRT is not installed (pip install 'cloudrt[tensorrt]'; needs an NVIDIA GPU)"
        if not on_gpu:
            return "TensorRT engines need a CUDA GPU (--device cuda)"
        if is_onnx is False and not torch_ok:
            return "no ONNX file to build the engine from: pass --model MODEL.onnx"
        return None
    return f"unknown path {backend}"


def first_line(e: BaseException) -> str:
    s = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return f"{type(e).__name__}: {s[:200]}"
