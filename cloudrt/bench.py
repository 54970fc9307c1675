"""``cloudrt bench``: eager PyTorch against every deployment path, on the same inputs, in one run.

Paths (``backend`` / ``precision``), each on ``device``:

=======================  =========  ==========================================================
backend                  precision  what runs
=======================  =========  ==========================================================
torch-eager              fp32       the model as trained, ``torch.inference_mode`` (the baseline)
torch-eager              fp16       ``torch.autocast(float16)`` (GPU only)
torch-compile            fp32/fp16  ``torch.compile(model)`` (GPU; on CPU only when asked for)
onnxruntime-cpu          fp32/fp16  exported ONNX (:func:`cloudrt.export.export_onnx`), CPU EP
onnxruntime-cuda         fp32/fp16  the same files on the CUDA EP, inputs and outputs bound on the GPU
onnxruntime-tensorrt     fp32/fp16  the FP32 file on the TensorRT EP (``trt_fp16_enable`` for fp16)
tensorrt                 fp32/fp16  engines from :func:`cloudrt.export.get_or_build_engine`
=======================  =========  ==========================================================

Method: one input batch per batch size (uniform [0, 1], fixed seed, model units); every path is warmed
up, then timed for ``rounds`` rounds that are interleaved across paths (round ``r`` visits the paths in
an order rotated by ``r``), so a noisy machine slows them alike; the reported time is the median. Each
call is synchronized (``torch.cuda.synchronize``, ONNX Runtime's synchronous ``run``). Torch and ONNX
Runtime get the same number of CPU threads, and both pools wait passively (ONNX Runtime
``allow_spinning=0``, OpenMP ``OMP_WAIT_POLICY=PASSIVE``; see :func:`_passive_openmp`). ``speedup`` is
eager FP32's median time per tile divided by the path's, same device, same batch, same run; ``max_err``
the largest absolute difference from eager FP32's output on the same input, in model units
(reflectance / 10000, [0, 1]).

FLOPs per tile are counted with ``torch.utils.flop_counter.FlopCounterMode`` (convolutions and matrix
products, 2 FLOPs per multiply-add; element-wise ops are not counted). On a GPU of known peak the rows
carry ``peak_share``: achieved FLOP/s over the device's dense tensor-core peak for the precision (TF32
for fp32 when cuDNN/cuBLAS allow TF32), the compute roof of the roofline.

This module imports torch, ONNX Runtime and TensorRT only when a path needs them: without torch the
eager rows are skipped with the reason, and an ``.onnx`` ``model`` still runs on ONNX Runtime.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cloudrt._version import __version__
from cloudrt.errors import BackendUnavailableError, InputError, ModelError

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


def _quiet(_msg: str) -> None:
    return None


# --------------------------------------------------------------------------------------------------
# options


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


def _path_tokens(spec: str | Iterable[str] | None) -> list[str] | None:
    if spec is None:
        return None
    items = spec.split(",") if isinstance(spec, str) else [t for s in spec for t in str(s).split(",")]
    tokens = [t.strip().lower() for t in items if t.strip()]
    return tokens or None


def match_paths(spec: str | Iterable[str] | None) -> list[tuple[str, str]]:
    """Paths selected by ``--backends``: comma-separated tokens, each a family (``torch``, ``onnxruntime``,
    ``tensorrt``), a backend (``onnxruntime-cpu``), ``backend:precision`` (``onnxruntime-cuda:fp16``) or a
    precision (``fp16``). ``None`` selects all. :class:`InputError` names an unknown token."""
    tokens = _path_tokens(spec)
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


# --------------------------------------------------------------------------------------------------
# environment


def _has(mod: str) -> bool:
    try:
        return importlib.util.find_spec(mod) is not None
    except (ImportError, ValueError):
        return False


def _version(mod: str) -> str | None:
    if not _has(mod):
        return None
    from importlib.metadata import PackageNotFoundError, version

    names = {"onnxruntime": ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino")}.get(mod, (mod,))
    for n in names:
        try:
            return version(n)
        except PackageNotFoundError:
            continue
    return "unknown"


def _ort_providers() -> list[str]:
    if not _has("onnxruntime"):
        return []
    import onnxruntime as ort

    return list(ort.get_available_providers())


def _cuda_visible() -> bool:
    if _has("torch"):
        import torch

        return bool(torch.cuda.is_available())
    return "CUDAExecutionProvider" in _ort_providers()


def resolve_device(device: str | None) -> str:
    """``auto`` -> ``cuda:0`` when a GPU is visible, else ``cpu``; ``cuda`` -> ``cuda:0``; checks the GPU."""
    d = (device or "auto").strip().lower()
    if d == "auto":
        return "cuda:0" if _cuda_visible() else "cpu"
    if d == "cpu":
        return d
    if d == "cuda" or (d.startswith("cuda:") and d[5:].isdigit()):
        if not _cuda_visible():
            raise BackendUnavailableError(f"--device {device} asked for a GPU but none is visible to torch or ONNX "
                                          "Runtime here; pass --device cpu.")
        return "cuda:0" if d == "cuda" else d
    raise InputError(f"--device {device!r} is not cpu, cuda or cuda:N; pass --device cpu or --device cuda.")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _usable_cpus() -> int:
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
        "usable_cpus": _usable_cpus(),
        "threads": threads,
        "numpy": np.__version__,
        "torch": _version("torch"),
        "onnxruntime": _version("onnxruntime"),
        "onnxruntime_providers": _ort_providers(),
        "tensorrt": _version("tensorrt"),
        "device": device,
    }
    with contextlib.suppress(OSError, AttributeError):
        info["loadavg_start"] = [round(x, 2) for x in os.getloadavg()]
    if device.startswith("cuda") and _has("torch"):
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


# --------------------------------------------------------------------------------------------------
# model


@dataclass
class ModelSpec:
    """What is benchmarked: a torch module (may be None) and/or an FP32 ONNX file."""

    module: Any | None
    onnx: Path | None
    info: dict[str, Any]


def perturb_untrained(model: Any, seed: int = 0, std: float = 0.01) -> Any:
    """Give a randomly initialized CARF a non-zero last IRN convolution (it starts at zero, which makes the
    model the identity through the global residual, eq. 12, and every ``max_err`` trivially 0)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    conv = model.irn.conv2
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * std)
    return model


def load_model(model: Any = None, *, seed: int = 0, log: Log = _quiet) -> ModelSpec:
    """Resolve ``--model``: None (shipped weights; else an untrained carf-small), a preset name (random
    init, perturbed), a ``.safetensors`` checkpoint, an ``.onnx`` file (ONNX Runtime rows only) or a module."""
    from cloudrt.paths import DEFAULT_ONNX, DEFAULT_WEIGHTS

    torch_ok = _has("torch")
    if model is not None and not isinstance(model, (str, os.PathLike)):
        cfg = dict(getattr(model, "config", {}) or {})
        return ModelSpec(model.eval(), None, {"source": "in-memory module", "preset": cfg.get("preset")})
    if model is None:
        if torch_ok and DEFAULT_WEIGHTS.is_file():
            model = DEFAULT_WEIGHTS
        elif torch_ok:
            log(f"note: {DEFAULT_WEIGHTS} not found; benchmarking an untrained carf-small (random init).")
            model = "carf-small"
        elif DEFAULT_ONNX.is_file():
            model = DEFAULT_ONNX
        else:
            raise ModelError(f"torch is not installed and {DEFAULT_ONNX} is missing; pass --model MODEL.onnx "
                             "(or install cloudrt[train] to benchmark a checkpoint).")
    name = str(model)
    p = Path(name)
    if name.startswith("carf-") and not p.suffix and not p.exists():
        if not torch_ok:
            raise BackendUnavailableError(f"--model {name} needs torch to build the preset; pip install "
                                          "'cloudrt[train]', or pass --model MODEL.onnx.")
        import torch

        from cloudrt.model import build

        torch.manual_seed(seed)
        m = perturb_untrained(build(name), seed).eval()
        return ModelSpec(m, None, {"source": f"preset {name}, random init (seed {seed}), last IRN conv ~N(0, 0.01) "
                                             "so the output is not the identity", "preset": name})
    if p.suffix.lower() == ".onnx":
        if not p.is_file():
            raise ModelError(f"ONNX model {p} does not exist; export one with `cloudrt export`.")
        meta = _onnx_meta(p)
        return ModelSpec(None, p, {"source": str(p), "preset": meta.get("preset"),
                                   "weights_sha256": meta.get("weights_sha256")})
    if p.suffix.lower() in (".safetensors", ".json") or p.with_suffix(".safetensors").is_file():
        if not p.with_suffix(".safetensors").is_file():
            raise ModelError(f"checkpoint {p.with_suffix('.safetensors')} does not exist; pass NAME.safetensors, "
                             "a preset (carf-tiny, carf-small, carf-base) or an .onnx file.")
        if not torch_ok:
            raise BackendUnavailableError(f"{p} is a PyTorch checkpoint and torch is not installed; pip install "
                                          "'cloudrt[train]', or pass an exported .onnx file.")
        from cloudrt.checkpoint import load_checkpoint, weights_sha256

        m, meta = load_checkpoint(p)
        cfg = meta.get("config", {}) if isinstance(meta, dict) else {}
        return ModelSpec(m.eval(), None, {"source": str(p.with_suffix(".safetensors")),
                                          "preset": cfg.get("preset") or getattr(m, "config", {}).get("preset"),
                                          "weights_sha256": weights_sha256(p)})
    raise ModelError(f"--model {name!r} is not a preset (carf-tiny, carf-small, carf-base), a .safetensors "
                     "checkpoint or an .onnx file.")


def _onnx_meta(path: Path) -> dict[str, str]:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    meta = dict(sess.get_modelmeta().custom_metadata_map)
    shape = sess.get_inputs()[0].shape
    meta["_tile"] = str(shape[2])
    meta["_batch"] = str(shape[0]) if isinstance(shape[0], int) else "dynamic"
    return meta


def export_paths(spec: ModelSpec, tile: int, half: bool, log: Log = _quiet) -> Path:
    """The ONNX file for ``spec`` at ``tile`` (FP32 or mixed FP16): the shipped ``export/carf-demo*.onnx``
    when it was exported from these very weights at this tile (dynamic batch), else exported once into the
    user cache."""
    if spec.module is None:
        assert spec.onnx is not None
        if not half:
            return spec.onnx
        import onnx

        from cloudrt.export import convert_fp16
        from cloudrt.fileutil import atomic_write_bytes, file_sha256
        from cloudrt.paths import cache_dir

        out = cache_dir() / "onnx" / f"{file_sha256(spec.onnx)[:16]}-fp16.onnx"
        if not out.is_file():
            log(f"converting {spec.onnx.name} to mixed-precision FP16")
            atomic_write_bytes(out, convert_fp16(onnx.load(str(spec.onnx))).SerializeToString())
        return out
    from cloudrt.export import default_onnx_path, export_onnx, resolve_model
    from cloudrt.paths import DEFAULT_ONNX, DEFAULT_ONNX_FP16

    sha = spec.info.get("weights_sha256")
    shipped = DEFAULT_ONNX_FP16 if half else DEFAULT_ONNX
    if sha and shipped.is_file():
        meta = _onnx_meta(shipped)
        if (meta.get("weights_sha256"), meta["_tile"], meta["_batch"], meta.get("precision")) == (
                sha, str(tile), "dynamic", "fp16" if half else "fp32"):
            return shipped
    _, prov = resolve_model(spec.module)
    preset = str((getattr(spec.module, "config", {}) or {}).get("preset", "model"))
    path = default_onnx_path(preset, prov["weights_sha256"], tile, half, None)
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


# --------------------------------------------------------------------------------------------------
# runners: one per path; prepare(batch inputs) -> __call__() timed, synchronized -> output() on host


class Runner:
    backend = ""
    precision = ""
    provider = ""
    io = "host"  # where the timed call's inputs and outputs live: "host" or "device"

    def prepare(self, optical: np.ndarray, sar: np.ndarray) -> None:
        raise NotImplementedError

    def __call__(self) -> None:
        raise NotImplementedError

    def output(self) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        return None


class TorchRunner(Runner):
    """Eager (optionally autocast FP16) or ``torch.compile`` on a torch device."""

    def __init__(self, module: Any, device: str, precision: str, compiled: bool) -> None:
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.backend = "torch-compile" if compiled else "torch-eager"
        self.precision = precision
        self.provider = str(self.device)
        self.io = "device" if self.cuda else "host"
        if compiled:
            for knob in ("cache_size_limit", "recompile_limit"):  # one graph per batch size and precision
                if hasattr(torch._dynamo.config, knob):
                    setattr(torch._dynamo.config, knob, max(64, getattr(torch._dynamo.config, knob)))
        self.fn = torch.compile(module, dynamic=False) if compiled else module
        self._out = None

    def prepare(self, optical: np.ndarray, sar: np.ndarray) -> None:
        t = self.torch
        self.o = t.from_numpy(optical).to(self.device)
        self.s = t.from_numpy(sar).to(self.device)
        self._out = None

    def __call__(self) -> None:
        t = self.torch
        amp = (t.autocast(device_type=self.device.type, dtype=t.float16) if self.precision == "fp16"
               else contextlib.nullcontext())
        with t.inference_mode(), amp:
            self._out = self.fn(self.o, self.s)
        if self.cuda:
            t.cuda.synchronize(self.device)

    def output(self) -> np.ndarray:
        return self._out.float().cpu().numpy()

    def close(self) -> None:
        self.o = self.s = self._out = None


class OrtRunner(Runner):
    """ONNX Runtime on one execution provider; on a GPU, inputs and outputs are bound on the device."""

    def __init__(self, path: Path, backend: str, precision: str, device: str, threads: int, tile: int,
                 max_batch: int) -> None:
        import onnxruntime as ort

        self.ort = ort
        self.backend, self.precision = backend, precision
        provider = ORT_PROVIDERS[backend]
        self.device_id = int(device.split(":", 1)[1]) if ":" in device else 0
        so = session_options(threads)
        if provider == "CPUExecutionProvider":
            providers: list[Any] = ["CPUExecutionProvider"]
        elif provider == "CUDAExecutionProvider":
            providers = [(provider, {"device_id": self.device_id}), "CPUExecutionProvider"]
        else:
            from cloudrt.paths import cache_dir

            cache = cache_dir() / "ort-trt"
            cache.mkdir(parents=True, exist_ok=True)
            shp = lambda n: f"optical:{n}x13x{tile}x{tile},sar:{n}x2x{tile}x{tile}"
            providers = [(provider, {
                "device_id": self.device_id, "trt_fp16_enable": precision == "fp16",
                "trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache),
                "trt_timing_cache_enable": True, "trt_timing_cache_path": str(cache),
                "trt_profile_min_shapes": shp(1), "trt_profile_opt_shapes": shp(max_batch),
                "trt_profile_max_shapes": shp(max_batch),
            }), ("CUDAExecutionProvider", {"device_id": self.device_id}), "CPUExecutionProvider"]
        self.sess = ort.InferenceSession(str(path), so, providers=providers)
        got = self.sess.get_providers()[0]
        if got != provider:
            raise BackendUnavailableError(f"ONNX Runtime fell back to {got} instead of {provider}")
        self.provider = got
        self.io = "host" if provider == "CPUExecutionProvider" else "device"
        self.out_name = self.sess.get_outputs()[0].name
        self.in_types = {i.name: (np.float16 if i.type == "tensor(float16)" else np.float32)
                         for i in self.sess.get_inputs()}

    def prepare(self, optical: np.ndarray, sar: np.ndarray) -> None:
        feeds = {"optical": optical, "sar": sar}
        self.feeds = {k: np.ascontiguousarray(v, dtype=self.in_types[k]) for k, v in feeds.items()}
        self._out = None
        if self.io == "device":
            self.binding = self.sess.io_binding()
            self._dev = {k: self.ort.OrtValue.ortvalue_from_numpy(v, "cuda", self.device_id)
                         for k, v in self.feeds.items()}
            for k, v in self._dev.items():
                self.binding.bind_ortvalue_input(k, v)
            self.binding.bind_output(self.out_name, "cuda", self.device_id)

    def __call__(self) -> None:
        if self.io == "device":
            self.sess.run_with_iobinding(self.binding)
        else:
            self._out = self.sess.run([self.out_name], self.feeds)[0]

    def output(self) -> np.ndarray:
        if self.io == "device":
            return np.asarray(self.binding.copy_outputs_to_cpu()[0], dtype=np.float32)
        return np.asarray(self._out, dtype=np.float32)

    def close(self) -> None:
        self.feeds = {}
        self.binding = self._dev = None


class TensorRTRunner(Runner):
    """A cloudrt TensorRT engine; with torch present the tensors stay on the GPU (no host copies timed)."""

    backend = "tensorrt"

    def __init__(self, onnx_fp32: Path, precision: str, device: str, max_batch: int, log: Log) -> None:
        from cloudrt.export import get_or_build_engine
        from cloudrt.runtime.tensorrt_backend import TensorRTBackend

        self.precision = precision
        self.device_id = int(device.split(":", 1)[1]) if ":" in device else 0
        opt = max_batch
        log(f"TensorRT {precision} engine (batch 1:{opt}:{max_batch}): building or loading from the cache")
        engine = get_or_build_engine(onnx_fp32, half=precision == "fp16", batch=f"1:{opt}:{max_batch}",
                                     device=self.device_id)
        self.be = TensorRTBackend(engine, device_id=self.device_id)
        self.provider = f"TensorRT {_version('tensorrt')} ({Path(engine).name})"
        self.torch = None
        if _has("torch"):
            import torch

            if torch.cuda.is_available():
                self.torch = torch
        self.io = "device" if self.torch is not None else "host"

    def prepare(self, optical: np.ndarray, sar: np.ndarray) -> None:
        self.host = (optical, sar)
        self._out = None
        if self.torch is None:
            return
        t = self.torch
        dev = t.device(f"cuda:{self.device_id}")
        dt = lambda n: getattr(t, np.dtype(self.be.dtypes[n]).name)
        self.o = t.from_numpy(optical).to(dev, dt("optical"))
        self.s = t.from_numpy(sar).to(dev, dt("sar"))
        self.out = t.empty((optical.shape[0], 13, *optical.shape[2:]), device=dev, dtype=dt(self.be.out_name))
        ctx = self.be.context
        for name, ten in (("optical", self.o), ("sar", self.s)):
            ctx.set_input_shape(name, tuple(ten.shape))
            ctx.set_tensor_address(name, ten.data_ptr())
        ctx.set_tensor_address(self.be.out_name, self.out.data_ptr())

    def __call__(self) -> None:
        if self.torch is None:
            self._out = self.be.run(*self.host)
            return
        stream = self.torch.cuda.current_stream(self.o.device)
        if not self.be.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        stream.synchronize()

    def output(self) -> np.ndarray:
        if self.torch is None:
            return np.asarray(self._out, dtype=np.float32)
        return self.out.float().cpu().numpy()

    def close(self) -> None:
        self.o = self.s = self.out = None
        self.be.close()


def session_options(threads: int) -> Any:
    """ONNX Runtime options of the bench: exactly the runtime's (full graph optimization, ``threads``
    intra-op threads, sequential execution, memory pattern and arena on, no spin-waiting, which would take
    CPU from the next path in an interleaved round)."""
    import onnxruntime as ort

    from cloudrt.runtime.onnx_backend import session_options as runtime_session_options

    return runtime_session_options(ort, threads)


# --------------------------------------------------------------------------------------------------
# planning: which paths run, and why the others do not


def plan_paths(selected: Sequence[tuple[str, str]], device: str, spec_has_torch: bool, spec_is_onnx: bool,
               explicit: bool) -> tuple[list[tuple[str, str]], list[dict[str, str]]]:
    """Split ``selected`` (plus the baseline) into paths to run here and skipped ones with a reason."""
    torch_ok = _has("torch")
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
                 has_module: bool, is_onnx: bool, explicit: bool) -> str | None:
    if backend.startswith("torch"):
        if not torch_ok:
            return "torch is not installed (pip install 'cloudrt[train]')"
        if not has_module:
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
        if not _has("tensorrt"):
            return "TensorRT is not installed (pip install 'cloudrt[tensorrt]'; needs an NVIDIA GPU)"
        if not on_gpu:
            return "TensorRT engines need a CUDA GPU (--device cuda)"
        if is_onnx is False and not torch_ok:
            return "no ONNX file to build the engine from: pass --model MODEL.onnx"
        return None
    return f"unknown path {backend}"


# --------------------------------------------------------------------------------------------------
# the run


def make_inputs(batch: int, tile: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The bench's input batch: optical (B, 13, T, T) and SAR (B, 2, T, T) float32 uniform in [0, 1)."""
    rng = np.random.default_rng([seed, batch, tile])
    return (rng.random((batch, 13, tile, tile), dtype=np.float32),
            rng.random((batch, 2, tile, tile), dtype=np.float32))


def make_runner(path: tuple[str, str], spec: ModelSpec, device: str, tile: int, threads: int, max_batch: int,
                onnx_files: dict[str, Path], log: Log = _quiet) -> Runner:
    """The :class:`Runner` of ``path`` (``onnx_files``: ``{"fp32": Path, "fp16": Path}`` as needed)."""
    backend, precision = path
    if backend.startswith("torch"):
        return TorchRunner(spec.module, device, precision, compiled=backend == "torch-compile")
    if backend.startswith("onnxruntime"):
        # TensorRT EP builds FP16 itself from the FP32 graph; CPU and CUDA EPs run the mixed-precision file.
        return OrtRunner(onnx_files[_onnx_key(path)], backend, precision, device, threads, tile, max_batch)
    if backend == "tensorrt":
        return TensorRTRunner(onnx_files["fp32"], precision, device, max_batch, log)
    raise ValueError(backend)


def _onnx_key(path: tuple[str, str]) -> str | None:
    """Which ONNX file a path runs: None (torch), "fp32" or "fp16". TensorRT builds FP16 from the FP32 file."""
    backend, precision = path
    if backend.startswith("torch"):
        return None
    return "fp32" if backend in ("onnxruntime-tensorrt", "tensorrt") else precision


def _first_line(e: BaseException) -> str:
    s = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return f"{type(e).__name__}: {s[:200]}"


def run_bench(
    model: Any = None, *, device: str | None = "auto", tile: int = DEFAULT_TILE,
    batches: str | Iterable[int] | None = None, backends: str | Iterable[str] | None = None,
    warmup: int | None = None, rounds: int = 5, threads: int | None = None, seed: int = 0, log: Log = _quiet,
) -> dict[str, Any]:
    """Benchmark every available path on the same inputs; returns ``{"system": {...}, "rows": [...]}``.

    ``model``: see :func:`load_model`. ``device``: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``. ``batches``:
    ``"1,4,8"`` or ints. ``backends``: see :func:`match_paths` (eager FP32 always runs: it is the
    reference). ``warmup``: untimed calls per path and batch (default 1 on CPU, 3 on GPU). ``rounds``:
    timed, interleaved rounds (median reported). ``threads``: CPU threads for torch and ONNX Runtime
    alike (default: torch's current count, else the usable CPUs).
    """
    t_start = time.perf_counter()
    omp_policy = _passive_openmp()
    bs = parse_batches(batches)
    if rounds < 1:
        raise InputError(f"--rounds {rounds} must be >= 1.")
    dev = resolve_device(device)
    on_gpu = dev.startswith("cuda")
    warmup = (3 if on_gpu else 1) if warmup is None else int(warmup)
    if warmup < 0:
        raise InputError(f"--warmup {warmup} must be >= 0.")
    explicit = _path_tokens(backends) is not None
    selected = match_paths(backends)
    spec = load_model(model, seed=seed, log=log)

    # tile: a multiple of the model's size divisor; an ONNX file fixes it
    if spec.module is not None:
        div = int(getattr(spec.module, "size_divisor", 1))
        if tile < div or tile % div:
            raise InputError(f"--tile {tile} is not a positive multiple of the model's size divisor {div}; "
                             f"pass --tile {max(div, tile - tile % div)}.")
    else:
        assert spec.onnx is not None
        ft = _onnx_meta(spec.onnx)["_tile"]
        if ft.isdigit() and int(ft) != tile:
            raise InputError(f"{spec.onnx.name} was exported for {ft}x{ft} tiles; pass --tile {ft}.")

    torch_threads_before = None
    if _has("torch"):
        import torch

        torch_threads_before = torch.get_num_threads()
        threads = int(threads or torch_threads_before)
        torch.set_num_threads(threads)
    threads = int(threads or _usable_cpus())
    try:
        result = _run(spec, dev, on_gpu, tile, bs, selected, explicit, warmup, rounds, threads, seed, log, t_start)
        result["system"]["omp_wait_policy"] = omp_policy
        return result
    finally:
        if torch_threads_before is not None:
            import torch

            torch.set_num_threads(torch_threads_before)


def _passive_openmp() -> str:
    """Make torch's OpenMP pool wait passively, like ONNX Runtime's pool with ``allow_spinning=0``.

    libgomp reads ``OMP_WAIT_POLICY`` when torch is first imported, so this only takes effect if torch is
    not imported yet (``cloudrt bench`` imports it after this). With the default active (spinning) wait,
    eager torch collapses on a shared CPU: a parallel region waits for a descheduled thread while its
    partner spins (measured here: 0.5 s -> 1 to 12 s per carf-small tile with 2 threads and one other busy
    process on 2 cores). Returns the policy in effect, for the report.
    """
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        return os.environ["OMP_WAIT_POLICY"]
    return f"{os.environ.get('OMP_WAIT_POLICY', 'unset (spinning)')} (torch was imported before the bench)"


def _run(spec: ModelSpec, dev: str, on_gpu: bool, tile: int, bs: list[int], selected: list[tuple[str, str]],
         explicit: bool, warmup: int, rounds: int, threads: int, seed: int, log: Log,
         t_start: float) -> dict[str, Any]:
    system = system_info(dev, threads)
    torch_ok = _has("torch")
    if spec.module is not None:
        spec.module = spec.module.to("cpu")
        system["parameters"] = int(sum(p.numel() for p in spec.module.parameters()))
    run_paths, skipped = plan_paths(selected, dev, spec.module is not None, spec.onnx is not None, explicit)

    flops = None
    if spec.module is not None and torch_ok:
        flops = count_flops(spec.module, tile)

    onnx_files: dict[str, Path] = {}
    for prec in sorted({_onnx_key(q) for q in run_paths if _onnx_key(q)}):
        try:
            onnx_files[prec] = export_paths(spec, tile, prec == "fp16", log)
        except Exception as e:  # noqa: BLE001 - an export failure skips its rows, with the reason
            for q in [q for q in run_paths if _onnx_key(q) == prec]:
                skipped.append({"backend": q[0], "precision": q[1], "device": dev,
                                "reason": f"ONNX {prec} export failed: {_first_line(e)}"})
            run_paths = [q for q in run_paths if _onnx_key(q) != prec]
    if spec.module is not None and on_gpu:
        spec.module = spec.module.to(dev)

    runners: dict[tuple[str, str], Runner] = {}
    for path in run_paths:
        try:
            runners[path] = make_runner(path, spec, dev, tile, threads, max(bs), onnx_files, log)
        except Exception as e:  # noqa: BLE001 - a path that cannot start is skipped with its reason
            skipped.append({"backend": path[0], "precision": path[1], "device": dev, "reason": _first_line(e)})

    rows: list[dict[str, Any]] = []
    peak_tf = {}
    if on_gpu and "gpu" in system:
        tf32 = bool(system.get("cudnn_allow_tf32"))
        peak_tf = {p: gpu_peak_tflops(system["gpu"], p, tf32) for p in ("fp32", "fp16")}
        system["peak_tflops"] = peak_tf
    for b in bs:
        optical, sar = make_inputs(b, tile, seed)
        live: dict[tuple[str, str], Runner] = {}
        for path, r in runners.items():
            try:
                r.prepare(optical, sar)
                live[path] = r
            except Exception as e:  # noqa: BLE001
                skipped.append({"backend": path[0], "precision": path[1], "device": dev, "batch": b,
                                "reason": _first_line(e)})
        log(f"batch {b}: {len(live)} paths, {warmup} warm-up + {rounds} interleaved rounds")
        order = list(live)
        for _ in range(warmup):
            for path in list(order):
                try:
                    live[path]()
                except Exception as e:  # noqa: BLE001 - e.g. out of memory at this batch
                    skipped.append({"backend": path[0], "precision": path[1], "device": dev, "batch": b,
                                    "reason": _first_line(e)})
                    order.remove(path)
        times: dict[tuple[str, str], list[float]] = {p: [] for p in order}
        for r in range(rounds):
            k = r % max(1, len(order))
            for path in order[k:] + order[:k]:
                if path not in times:
                    continue
                t0 = time.perf_counter()
                try:
                    live[path]()
                except Exception as e:  # noqa: BLE001
                    skipped.append({"backend": path[0], "precision": path[1], "device": dev, "batch": b,
                                    "reason": _first_line(e)})
                    del times[path]
                    continue
                times[path].append(time.perf_counter() - t0)
        order = [p for p in order if p in times]
        outs = {p: live[p].output() for p in order}
        ref = outs.get(BASELINE)
        base_ms = statistics.median(times[BASELINE]) * 1e3 if BASELINE in times else None
        for path in order:
            ms = statistics.median(times[path]) * 1e3
            r_ = live[path]
            tps = b / (ms / 1e3)
            row: dict[str, Any] = {
                "backend": path[0], "precision": path[1], "device": dev, "batch": b, "tile": tile,
                "ms_per_batch": round(ms, 3), "tiles_per_s": round(tps, 3),
                "mpix_per_s": round(tps * tile * tile / 1e6, 4),
                "speedup": round(base_ms / ms, 3) if base_ms else None,
                "max_err": (float(np.max(np.abs(outs[path] - ref))) if ref is not None else None),
                "provider": r_.provider, "io": r_.io, "rounds": len(times[path]),
                "ms_min": round(min(times[path]) * 1e3, 3),
                "ms_iqr": round(_iqr(times[path]) * 1e3, 3),
            }
            if flops:
                row["gflops"] = round(flops * tps / 1e9, 2)
                pk = peak_tf.get(path[1])
                row["peak_share"] = round(flops * tps / (pk * 1e12), 4) if pk else None
            rows.append(row)
    for r_ in runners.values():
        with contextlib.suppress(Exception):
            r_.close()

    order_key = {p: i for i, p in enumerate(ALL_PATHS)}
    rows.sort(key=lambda r: (r["batch"], order_key.get((r["backend"], r["precision"]), 99)))
    system.update({
        "model": spec.info,
        "tile": tile,
        "batches": bs,
        "warmup": warmup,
        "rounds": rounds,
        "seed": seed,
        "inputs": "uniform [0, 1) float32 in model units, one fixed batch per batch size (numpy seed)",
        "baseline": f"torch-eager fp32 on {dev}",
        "max_err_units": "model output units (reflectance / 10000, range [0, 1])",
        "timing": "median of interleaved rounds; each call synchronized; rows with io=host include "
                  "host<->device copies",
        "flops_per_tile": flops,
        "flops_counter": "torch.utils.flop_counter.FlopCounterMode (conv + matmul, 2 FLOPs per MAC)"
        if flops else None,
        "onnx_files": {k: str(v) for k, v in onnx_files.items()},
        "ort_session": "ORT_ENABLE_ALL, intra_op_num_threads=threads, inter_op 1, sequential, mem pattern + "
                       "arena on, allow_spinning 0",
        "torch_fp16": "torch.autocast(float16)",
        "skipped": skipped,
        "elapsed_s": round(time.perf_counter() - t_start, 1),
    })
    with contextlib.suppress(OSError, AttributeError):
        system["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    return {"system": system, "rows": rows}


def _iqr(xs: Sequence[float]) -> float:
    if len(xs) < 2:
        return 0.0
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[2] - q[0]


# --------------------------------------------------------------------------------------------------
# output


def _fmt(v: Any, key: str) -> str:
    if v is None:
        return "-"
    if key == "max_err":
        return f"{v:.1e}"
    if key == "speedup":
        return f"{v:.2f}x"
    if key in ("ms_per_batch", "tiles_per_s", "gflops"):
        return f"{v:.1f}" if v >= 10 else f"{v:.2f}"
    if key == "mpix_per_s":
        return f"{v:.3f}"
    if key == "peak_share":
        return f"{100 * v:.1f}%"
    return str(v)


def table_columns(result: dict[str, Any]) -> list[str]:
    """Columns of the terminal table: the row keys, plus GFLOP/s and peak share when known."""
    cols = list(ROW_KEYS)
    if any("gflops" in r for r in result["rows"]):
        cols.append("gflops")
    if any(r.get("peak_share") is not None for r in result["rows"]):
        cols.append("peak_share")
    return cols


def format_table(result: dict[str, Any]) -> str:
    """Plain-text (Markdown) table of ``result``, skipped paths listed below it."""
    cols = table_columns(result)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in result["rows"]:
        lines.append("| " + " | ".join(_fmt(r.get(c), c) for c in cols) + " |")
    sk = result["system"].get("skipped") or []
    if sk:
        lines.append("")
        lines.append("skipped:")
        for s in sk:
            b = f" batch {s['batch']}" if "batch" in s else ""
            lines.append(f"- {s['backend']} {s['precision']}{b}: {s['reason']}")
    return "\n".join(lines)


def to_json(result: dict[str, Any]) -> str:
    """``result`` as JSON text (NaN/inf become null)."""
    def clean(x: Any) -> Any:
        if isinstance(x, float) and not np.isfinite(x):
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        if isinstance(x, np.generic):
            return clean(x.item())
        return x

    return json.dumps(clean(result), indent=2)


if __name__ == "__main__":  # python -m cloudrt.bench ... == cloudrt bench ...
    from cloudrt.cli import main

    sys.exit(main(["bench", *sys.argv[1:]]))
