"""TensorRT engine metadata, torch-free and onnx-free: GPU probing (CUDA driver via ctypes), the one set
of engine compatibility rules, sidecars, the per-device engine cache and batch profiles. The runtime uses it to
load engines; :mod:`cloudrt.export.tensorrt` uses it to build them (never the reverse).

An engine is valid only for the TensorRT version and GPU architecture it was built with, so cached
engines are keyed by the ONNX file's sha256, the TensorRT version, the GPU compute capability, the
precision and the batch profile::

    <cache_dir()>/engines/<onnx sha256[:16]>/trt<10.3.0>-sm<87>-<fp16>-b<1-4-8>.engine
    <same>.engine.json                                  # the sidecar

The sidecar (JSON) records what the engine was built from and for: TensorRT version (``trt_version``),
GPU name and compute capability, cloudrt version, ONNX sha256, profile, precision, and the command that
rebuilds it. :func:`read_sidecar` and :func:`check_engine_compat` refuse engines built for another TensorRT
release or GPU architecture, for the exporter's cache and the runtime alike.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import json
import os
import re
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from cloudrt._version import __version__
from cloudrt.devices import device_index
from cloudrt.errors import BackendUnavailableError, EngineMismatchError, InputError, ModelError
from cloudrt.fileutil import atomic_write_bytes, file_sha256
from cloudrt.paths import cache_dir

SIDECAR_FORMAT = "cloudrt-trt-engine/1"
PRECISIONS = ("fp32", "fp16")
DEFAULT_ENGINE_BATCH = "1:4:8"
REBUILD = "cloudrt export WEIGHTS --format engine --half -o {path}"


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


def normalize_compute_capability(cc: str | tuple[int, int] | list[int]) -> str:
    """(8, 7) / '8.7' / 'sm_87' / '87' -> '8.7'; ValueError for anything else."""
    if isinstance(cc, (tuple, list)):
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
    return Path(cache_root) if cache_root is not None else cache_dir()


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
    """``model.engine`` -> ``model.engine.json`` (where sidecars are written)."""
    p = Path(engine_path)
    return p.with_name(p.name + ".json")


def find_sidecar(engine_path: str | os.PathLike) -> Path | None:
    """The existing sidecar of an engine: ``model.engine.json``, else ``model.json``; None if neither exists."""
    p = Path(engine_path)
    for cand in (sidecar_path(p), p.with_suffix(".json")):
        if cand.is_file():
            return cand
    return None


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
        parts += ["--device", f"cuda:{device}"]
    parts += ["-o", _q(engine_path)]
    return " ".join(parts)


def _q(p: str | os.PathLike) -> str:
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
    """Read an engine's sidecar; :class:`EngineMismatchError` if it is missing or lacks the TensorRT version
    and compute capability, :class:`ModelError` if it is not JSON or names another format."""
    engine = Path(engine_path)
    sp = find_sidecar(engine)
    rebuild = f"rebuild it with `{REBUILD.format(path=engine)}`."
    if sp is None:
        raise EngineMismatchError(
            f"engine {engine} has no JSON sidecar ({engine.name}.json) to check its TensorRT version and GPU; "
            + rebuild)
    try:
        data = json.loads(sp.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelError(f"engine sidecar {sp} is not valid JSON ({e}); {rebuild}") from e
    keys = ("trt_version", "compute_capability")
    missing = [k for k in keys if k not in data] if isinstance(data, dict) else list(keys)
    if missing:
        raise EngineMismatchError(f"engine sidecar {sp} lacks {'/'.join(missing)}, so the engine cannot be "
                                  f"checked; {rebuild}")
    if data.get("format", SIDECAR_FORMAT) != SIDECAR_FORMAT:
        raise ModelError(f"{sp} is a {data.get('format')!r} file, not a {SIDECAR_FORMAT} sidecar; {rebuild}")
    data.setdefault("engine", str(engine))
    return data


def check_engine_compat(sidecar: dict[str, Any], trt_version: str, compute_capability: Any) -> None:
    """Raise :class:`EngineMismatchError` unless the engine described by ``sidecar`` runs on this TensorRT
    version and GPU compute capability.

    The one rule, for the exporter's cache and the runtime alike: a serialized engine is tied to the TensorRT
    release (major.minor.patch) and the GPU architecture (SM); another GPU model of the same SM is accepted.
    Pure function: no TensorRT needed.
    """
    path = sidecar.get("engine") or sidecar.get("path") or "ENGINE.engine"
    fix = f"rebuild it here: `{sidecar.get('rebuild_command') or REBUILD.format(path=path)}`."
    built_trt, built_cc = sidecar.get("trt_version"), sidecar.get("compute_capability")
    gpu = sidecar.get("gpu_name") or "another GPU"
    if built_trt is None or built_cc is None:
        raise EngineMismatchError(
            f"engine sidecar lacks trt_version/compute_capability, so the engine cannot be checked; {fix}")
    try:
        same_trt = normalize_trt_version(built_trt) == normalize_trt_version(trt_version)
        built_sm, here_sm = normalize_compute_capability(built_cc), normalize_compute_capability(compute_capability)
    except ValueError as e:
        raise EngineMismatchError(f"engine sidecar has an unreadable version ({e}); {fix}") from e
    if not same_trt:
        raise EngineMismatchError(
            f"engine was built with TensorRT {built_trt} but this machine has TensorRT {trt_version}; {fix}")
    if built_sm != here_sm:
        raise EngineMismatchError(
            f"engine was built for {gpu} (compute capability {built_sm}) but this GPU has compute "
            f"capability {here_sm}; {fix}")


# --------------------------------------------------------------------------- TensorRT and the GPU


def require_tensorrt() -> ModuleType:
    """Import ``tensorrt`` (10+) or raise :class:`BackendUnavailableError` with one clear line."""
    try:
        import tensorrt as trt
    except ImportError as e:
        raise BackendUnavailableError(
            "TensorRT is not installed here; TensorRT engines need TensorRT 10 or newer and an NVIDIA GPU: "
            "pip install 'cloudrt[tensorrt]' where the GPU is, or use ONNX (--format onnx, --backend onnxruntime)."
        ) from e
    except OSError as e:  # the wheel is there but libnvinfer / CUDA libraries do not load
        raise BackendUnavailableError(
            f"TensorRT is installed but its libraries do not load ({e}); fix the CUDA/TensorRT install or "
            "use --format onnx."
        ) from e
    if trt_version_tuple(getattr(trt, "__version__", "0")) < (10, 0):
        raise BackendUnavailableError(
            f"TensorRT {trt.__version__} is installed but cloudrt needs TensorRT 10 or newer; upgrade it "
            "(pip install -U 'tensorrt>=10') or use --format onnx."
        )
    return trt


def trt_version_tuple(v: str) -> tuple[int, int]:
    """(major, minor) of a TensorRT version string; (0, 0) when unreadable."""
    try:
        major, minor, _ = normalize_trt_version(v).split(".")
        return int(major), int(minor)
    except ValueError:
        return (0, 0)


@dataclass(frozen=True)
class GpuInfo:
    """One CUDA device as the driver reports it."""

    index: int
    name: str
    compute_capability: str  # "8.7"
    total_memory: int | None = None


_CU_ATTR_CC_MAJOR, _CU_ATTR_CC_MINOR = 75, 76


def _libcuda() -> Any:
    names = ["nvcuda.dll"] if sys.platform == "win32" else ["libcuda.so.1", "libcuda.so"]
    found = ctypes.util.find_library("cuda")
    if found:
        names.append(found)
    for name in names:
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None


def _driver_gpu_info(index: int) -> GpuInfo:
    """Query device ``index`` through the CUDA driver (no torch, no CUDA toolkit needed)."""
    lib = _libcuda()
    if lib is None:
        raise BackendUnavailableError(
            "TensorRT engines need an NVIDIA GPU, and no CUDA driver (libcuda) is present on this machine; "
            "build and run engines on the GPU machine, or use ONNX (--format onnx)."
        )
    if lib.cuInit(0) != 0:
        raise BackendUnavailableError(
            "TensorRT engines need an NVIDIA GPU, and the CUDA driver reports none usable here (cuInit "
            "failed); check nvidia-smi and CUDA_VISIBLE_DEVICES, or use ONNX (--format onnx)."
        )
    count = ctypes.c_int(0)
    lib.cuDeviceGetCount(ctypes.byref(count))
    if not 0 <= index < count.value:
        raise BackendUnavailableError(
            f"--device {index} does not exist: this machine has {count.value} CUDA GPU(s); pass "
            f"--device 0{'..' + str(count.value - 1) if count.value > 1 else ''}."
            if count.value else
            "TensorRT engines need an NVIDIA GPU, and none is visible here; use ONNX (--format onnx)."
        )
    dev = ctypes.c_int(0)
    lib.cuDeviceGet(ctypes.byref(dev), index)
    buf = ctypes.create_string_buffer(256)
    lib.cuDeviceGetName(buf, 256, dev)
    major, minor = ctypes.c_int(0), ctypes.c_int(0)
    lib.cuDeviceGetAttribute(ctypes.byref(major), _CU_ATTR_CC_MAJOR, dev)
    lib.cuDeviceGetAttribute(ctypes.byref(minor), _CU_ATTR_CC_MINOR, dev)
    mem = ctypes.c_size_t(0)
    total = mem.value if lib.cuDeviceTotalMem_v2(ctypes.byref(mem), dev) == 0 else None
    return GpuInfo(index, buf.value.decode(errors="replace"), f"{major.value}.{minor.value}", total)


def gpu_info(device: int | str | None = 0) -> GpuInfo:
    """Name and compute capability of CUDA device ``device`` (``0``, ``"1"`` or ``"cuda:1"``)."""
    return _driver_gpu_info(device_index(device))


def activate_device(index: int) -> None:
    """Make ``index`` the current CUDA device for TensorRT (primary context via the driver API)."""
    lib = _libcuda()
    if lib is None:
        return
    dev, ctx = ctypes.c_int(0), ctypes.c_void_p()
    if lib.cuDeviceGet(ctypes.byref(dev), index) == 0 and \
            lib.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev) == 0:
        lib.cuCtxSetCurrent(ctx)


def local_environment(device: int | str | None = 0) -> tuple[str, str]:
    """(TensorRT version, compute capability of GPU ``device``) on this machine."""
    trt = require_tensorrt()
    return str(trt.__version__), gpu_info(device).compute_capability


def check_engine(engine_path: str | os.PathLike, device: int | str | None = 0) -> dict[str, Any]:
    """Read the engine's sidecar and refuse it if it was built for another TensorRT or GPU."""
    sidecar = read_sidecar(engine_path)
    check_engine_compat(sidecar, *local_environment(device))
    return sidecar


def cached_engine(onnx_path: str | os.PathLike, *, half: bool = True, batch: int | str = DEFAULT_ENGINE_BATCH,
                  device: int | str | None = 0, cache_root: str | os.PathLike | None = None) -> Path | None:
    """The usable cached engine for this ONNX file, precision and batch profile on this GPU, or None."""
    trt_version, cc = local_environment(device)
    path = engine_cache_path(onnx_path, "fp16" if half else "fp32", batch=batch, trt_version=trt_version,
                             compute_capability=cc, cache_root=cache_root)
    if not path.is_file():
        return None
    try:
        check_engine_compat(read_sidecar(path), trt_version, cc)
    except ModelError:  # includes EngineMismatchError: stale, to be rebuilt by export
        return None
    return path
