"""TensorRT engine backend (TensorRT 10 Python API). Loads engines only; building them and the engine
cache belong to :mod:`cloudrt.export`.

Each engine ``X.engine`` has a JSON sidecar ``X.engine.json`` (or ``X.json``) written by the exporter with
at least ``trt_version``, ``compute_capability`` and ``gpu_name``. A serialized engine runs only on the
TensorRT version and GPU architecture it was built for, so :func:`cloudrt.runtime.trt_meta.check_engine_compat`
compares them before deserializing and raises :class:`~cloudrt.errors.EngineMismatchError` with the rebuild
command.

Device memory comes from cuda-python (``cuda.bindings.runtime`` / ``cuda.cudart``) when installed, else
from torch CUDA tensors; one execution context is shared behind a lock (contexts are not thread-safe).
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from cloudrt.contract import OPTICAL_BANDS, OPTICAL_INPUT, OUTPUT, SAR_INPUT
from cloudrt.errors import BackendUnavailableError, EngineMismatchError, ModelError
from cloudrt.runtime.base import Backend, metadata_int
from cloudrt.runtime.trt_meta import (
    REBUILD,
    check_engine_compat,
    local_environment,
    normalize_compute_capability,
    read_sidecar,
    require_tensorrt,
)


class _Cuda:
    """Minimal CUDA memory/stream helper over cuda-python, falling back to torch."""

    def __init__(self, device_id: int) -> None:
        self.device_id = device_id
        self.rt = None
        self.torch = None
        try:
            try:
                from cuda.bindings import runtime as rt  # cuda-python >= 12.6
            except ImportError:
                from cuda import cudart as rt  # older cuda-python
            self.rt = rt
            self._check(rt.cudaSetDevice(device_id))
            self.stream = self._check(rt.cudaStreamCreate())
        except ImportError:
            try:
                import torch
            except ImportError as e:
                raise BackendUnavailableError(
                    "the TensorRT backend needs cuda-python (pip install cuda-python) or torch for GPU memory."
                ) from e
            if not torch.cuda.is_available():
                raise BackendUnavailableError("no CUDA GPU is visible; use --backend onnxruntime.") from None
            self.torch = torch
            self.tdev = torch.device(f"cuda:{device_id}")
            self.tstream = torch.cuda.Stream(self.tdev)
            self.stream = self.tstream.cuda_stream

    def _check(self, res: Any) -> Any:
        err, *rest = res if isinstance(res, tuple) else (res,)
        if int(err) != 0:
            raise BackendUnavailableError(f"CUDA call failed ({err}); check the driver and the GPU.")
        return rest[0] if len(rest) == 1 else (rest or None)

    def compute_capability(self) -> str:
        if self.rt is not None:
            rt = self.rt
            major = self._check(rt.cudaDeviceGetAttribute(
                rt.cudaDeviceAttr.cudaDevAttrComputeCapabilityMajor, self.device_id))
            minor = self._check(rt.cudaDeviceGetAttribute(
                rt.cudaDeviceAttr.cudaDevAttrComputeCapabilityMinor, self.device_id))
            return f"{major}.{minor}"
        return normalize_compute_capability(self.torch.cuda.get_device_capability(self.tdev))

    def alloc(self, nbytes: int) -> Any:
        if self.rt is not None:
            return self._check(self.rt.cudaMalloc(nbytes))
        return self.torch.empty(nbytes, dtype=self.torch.uint8, device=self.tdev)

    def ptr(self, buf: Any) -> int:
        return int(buf) if self.rt is not None else int(buf.data_ptr())

    def free(self, buf: Any) -> None:
        if self.rt is not None:
            self.rt.cudaFree(buf)

    def h2d(self, buf: Any, host: np.ndarray) -> None:
        if self.rt is not None:
            self._check(self.rt.cudaMemcpyAsync(
                self.ptr(buf), host.ctypes.data, host.nbytes,
                self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice, self.stream))
        else:
            with self.torch.cuda.stream(self.tstream):
                flat = self.torch.from_numpy(host.reshape(-1).view(np.uint8))
                buf[: host.nbytes].copy_(flat, non_blocking=False)

    def d2h(self, host: np.ndarray, buf: Any) -> None:
        if self.rt is not None:
            self._check(self.rt.cudaMemcpyAsync(
                host.ctypes.data, self.ptr(buf), host.nbytes,
                self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.stream))
        else:
            with self.torch.cuda.stream(self.tstream):
                host.reshape(-1).view(np.uint8)[:] = buf[: host.nbytes].cpu().numpy()

    def sync(self) -> None:
        if self.rt is not None:
            self._check(self.rt.cudaStreamSynchronize(self.stream))
        else:
            self.tstream.synchronize()


class TensorRTBackend(Backend):
    """Run a serialized TensorRT 10 engine (``.engine`` / ``.plan``) built by ``cloudrt export``."""

    name = "tensorrt"

    def __init__(self, path: str | os.PathLike, device_id: int = 0) -> None:
        super().__init__()
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelError(f"engine file {self.path} does not exist; build one with "
                             f"`{REBUILD.format(path=self.path)}`.")
        sidecar = read_sidecar(self.path)
        check_engine_compat(sidecar, *local_environment(device_id))
        trt = require_tensorrt()
        self.cuda = _Cuda(device_id)
        self.metadata = {k: (v if isinstance(v, str) else json.dumps(v)) for k, v in sidecar.items()}
        logger = trt.Logger(trt.Logger.ERROR)
        self.trt_runtime = trt.Runtime(logger)
        self.engine = self.trt_runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise EngineMismatchError(
                f"TensorRT could not deserialize {self.path} (corrupt, or built for another TensorRT/GPU); "
                f"rebuild it with `{REBUILD.format(path=self.path)}`."
            )
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        modes = {n: self.engine.get_tensor_mode(n) for n in names}
        inputs = {n for n in names if modes[n] == trt.TensorIOMode.INPUT}
        outputs = [n for n in names if modes[n] == trt.TensorIOMode.OUTPUT]
        if inputs != {OPTICAL_INPUT, SAR_INPUT} or not outputs:
            raise ModelError(
                f"engine {self.path} has inputs {sorted(inputs)} and outputs {outputs}; expected inputs "
                f"{OPTICAL_INPUT}, {SAR_INPUT} and output {OUTPUT}. Rebuild it with `cloudrt export`."
            )
        self.out_name = OUTPUT if OUTPUT in outputs else outputs[0]
        self.dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        shape = tuple(self.engine.get_tensor_shape(OPTICAL_INPUT))
        self.tile = shape[2] if shape[2] > 0 else metadata_int(sidecar, "tile")
        if shape[0] > 0:
            self.fixed_batch = shape[0]
        else:
            prof = self.engine.get_tensor_profile_shape(OPTICAL_INPUT, 0)  # (min, opt, max)
            self.max_batch = int(prof[2][0])
        self.default_batch = min(8, self.fixed_batch or self.max_batch or 8)
        self.provider = f"cuda:{device_id}"
        self._buffers: dict[str, tuple[Any, int]] = {}
        self._lock = threading.Lock()

    def _buffer(self, name: str, nbytes: int) -> Any:
        buf = self._buffers.get(name)
        if buf is None or buf[1] < nbytes:
            if buf is not None:
                self.cuda.free(buf[0])
            buf = (self.cuda.alloc(nbytes), nbytes)
            self._buffers[name] = buf
        return buf[0]

    def _run(self, optical: np.ndarray, sar: np.ndarray) -> np.ndarray:
        b, _, t, _ = optical.shape
        with self._lock:  # one execution context: serialize
            hosts = {
                OPTICAL_INPUT: np.ascontiguousarray(optical, dtype=self.dtypes[OPTICAL_INPUT]),
                SAR_INPUT: np.ascontiguousarray(sar, dtype=self.dtypes[SAR_INPUT]),
            }
            for name, host in hosts.items():
                self.context.set_input_shape(name, host.shape)
                buf = self._buffer(name, host.nbytes)
                self.cuda.h2d(buf, host)
                self.context.set_tensor_address(name, self.cuda.ptr(buf))
            out = np.empty((b, OPTICAL_BANDS, t, t), dtype=self.dtypes[self.out_name])
            obuf = self._buffer(self.out_name, out.nbytes)
            self.context.set_tensor_address(self.out_name, self.cuda.ptr(obuf))
            if not self.context.execute_async_v3(self.cuda.stream):
                raise RuntimeError("TensorRT execution failed")
            self.cuda.d2h(out, obuf)
            self.cuda.sync()
        return out.astype(np.float32, copy=False)

    def close(self) -> None:
        for buf, _ in self._buffers.values():
            self.cuda.free(buf)
        self._buffers.clear()
