"""ONNX Runtime backend: TensorRT, CUDA or CPU execution provider, whichever is present."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from cloudrt.contract import CONTRACT, OPTICAL_BANDS, OPTICAL_INPUT, OUTPUT, SAR_BANDS, SAR_INPUT
from cloudrt.errors import BackendUnavailableError, ModelError
from cloudrt.paths import cache_dir
from cloudrt.runtime.base import Backend, metadata_int

PROVIDER_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
PROVIDER_ALIASES = {
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}


def import_ort() -> Any:
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise BackendUnavailableError(
            "ONNX Runtime is not installed; pip install 'cloudrt[cpu]' (or 'cloudrt[gpu]' for CUDA/TensorRT)."
        ) from e
    return ort


def available_providers() -> list[str]:
    """The ONNX Runtime execution providers cloudrt can use here, fastest first ([] without ORT)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return []
    have = set(ort.get_available_providers())
    return [p for p in PROVIDER_ORDER if p in have]


def physical_cores() -> int:
    """Physical CPU cores available to this process (logical CPUs halved when SMT siblings are listed)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        n = os.cpu_count() or 1
    try:
        sib = Path("/sys/devices/system/cpu/cpu0/topology/thread_siblings_list").read_text().strip()
        per_core = 0
        for part in sib.split(","):
            lo, _, hi = part.partition("-")
            per_core += int(hi) - int(lo) + 1 if hi else 1
    except (OSError, ValueError):
        per_core = 1
    return max(1, n // max(1, per_core))


def session_options(ort: Any, threads: int | None = None) -> Any:
    """ONNX Runtime session options of the runtime (the bench uses them too): full
    graph optimization, ``threads`` (default: physical cores, or ``CLOUDRT_ORT_THREADS``) intra-op threads,
    sequential execution, memory pattern and arena on, and no spin-waiting, so idle ORT threads do not take
    CPU from the rest of the pipeline or from other processes on a shared machine."""
    if threads is None:
        env = os.environ.get("CLOUDRT_ORT_THREADS", "")
        threads = int(env) if env.isdigit() and int(env) > 0 else physical_cores()
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.enable_mem_pattern = True
    so.enable_cpu_mem_arena = True
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    so.log_severity_level = 3
    return so


def _first_line(e: BaseException, limit: int = 200) -> str:
    s = str(e).strip().splitlines()
    s = s[0] if s else type(e).__name__
    return s if len(s) <= limit else s[: limit - 3] + "..."


class OnnxRuntimeBackend(Backend):
    """Run an exported ONNX model with ONNX Runtime.

    ``provider``: None/"auto" picks the first available of TensorRT, CUDA, CPU; or one of
    "tensorrt", "cuda", "cpu" (or the full provider name), which must be available.
    """

    name = "onnxruntime"

    def __init__(self, path: str | os.PathLike, provider: str | None = None, device_id: int = 0,
                 batch: int | None = None) -> None:
        super().__init__()
        ort = import_ort()
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelError(f"model file {self.path} does not exist; pass an exported .onnx file.")
        have = available_providers()
        if provider in (None, "auto"):
            chosen = have[0] if have else "CPUExecutionProvider"
        else:
            chosen = PROVIDER_ALIASES.get(provider.lower(), provider)
            if chosen not in have:
                raise BackendUnavailableError(
                    f"ONNX Runtime here has no {chosen} (available: {', '.join(have) or 'none'}); "
                    "install onnxruntime-gpu with CUDA/TensorRT, or use --backend auto."
                )
        so = session_options(ort)
        providers = self._provider_chain(chosen, device_id, batch)
        try:
            self.session = ort.InferenceSession(str(self.path), so, providers=providers)
        except Exception as e:  # noqa: BLE001 - ORT raises its own exception types for bad files
            raise ModelError(
                f"model file {self.path} is not a loadable ONNX model ({_first_line(e)}); "
                f"re-export it with `cloudrt export` (expected {CONTRACT})."
            ) from e
        self.provider = self.session.get_providers()[0]
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        self._check_contract()
        if self.provider == "CPUExecutionProvider":
            self.default_batch = 1  # the bench: batch 1 is fastest for ORT on CPU (cache-resident tiles)
        else:
            self.default_batch = 8

    @staticmethod
    def _provider_chain(chosen: str, device_id: int, batch: int | None) -> list[Any]:
        chain: list[Any] = []
        start = PROVIDER_ORDER.index(chosen) if chosen in PROVIDER_ORDER else 0
        for p in PROVIDER_ORDER[start:]:
            if p == "TensorrtExecutionProvider":
                cache = cache_dir() / "ort-trt"
                cache.mkdir(parents=True, exist_ok=True)
                chain.append((p, {"device_id": device_id, "trt_engine_cache_enable": True,
                                  "trt_engine_cache_path": str(cache), "trt_timing_cache_enable": True}))
            elif p == "CUDAExecutionProvider":
                chain.append((p, {"device_id": device_id}))
            else:
                chain.append(p)
        return chain

    def _check_contract(self) -> None:
        ins = {i.name: i for i in self.session.get_inputs()}
        outs = self.session.get_outputs()
        problem = None
        if set(ins) != {OPTICAL_INPUT, SAR_INPUT}:
            problem = f"its inputs are {', '.join(sorted(ins)) or 'none'}"
        elif not outs:
            problem = "it has no output"
        else:
            for name, bands in ((OPTICAL_INPUT, OPTICAL_BANDS), (SAR_INPUT, SAR_BANDS)):
                shape = ins[name].shape
                if len(shape) != 4 or (isinstance(shape[1], int) and shape[1] != bands):
                    problem = f"input {name} has shape {shape}"
                    break
                if ins[name].type not in ("tensor(float)", "tensor(float16)"):
                    problem = f"input {name} has type {ins[name].type}"
                    break
        if problem is None:
            names = [o.name for o in outs]
            self._out_name = OUTPUT if OUTPUT in names else names[0]
            oshape = next(o.shape for o in outs if o.name == self._out_name)
            if len(oshape) != 4 or (isinstance(oshape[1], int) and oshape[1] != OPTICAL_BANDS):
                problem = f"output {self._out_name} has shape {oshape}"
        if problem:
            raise ModelError(
                f"model {self.path} does not match the cloudrt contract ({problem}); expected {CONTRACT}. "
                "Re-export it with `cloudrt export`."
            )
        oshape = ins[OPTICAL_INPUT].shape
        sshape = ins[SAR_INPUT].shape
        static = [d for d in (*oshape[2:], *sshape[2:]) if isinstance(d, int)]
        tile = metadata_int(self.metadata, "tile")
        if static:
            if len(set(static)) != 1 or len(static) != 4:
                raise ModelError(
                    f"model {self.path} has non-square or partly dynamic tiles (optical {oshape}, sar {sshape}); "
                    f"expected {CONTRACT}. Re-export it with `cloudrt export --tile T`."
                )
            tile = static[0]
        self.tile = tile
        self.size_divisor = metadata_int(self.metadata, "size_divisor") or 1
        self.fixed_batch = oshape[0] if isinstance(oshape[0], int) else None
        self._in_types = {n: (np.float16 if ins[n].type == "tensor(float16)" else np.float32) for n in ins}

    def _run(self, optical: np.ndarray, sar: np.ndarray) -> np.ndarray:
        feeds = {
            OPTICAL_INPUT: optical.astype(self._in_types[OPTICAL_INPUT], copy=False),
            SAR_INPUT: sar.astype(self._in_types[SAR_INPUT], copy=False),
        }
        (out,) = self.session.run([self._out_name], feeds)  # InferenceSession.run is thread-safe
        return np.asarray(out, dtype=np.float32)
