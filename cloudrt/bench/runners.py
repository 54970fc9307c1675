"""One runner per measured path: ``prepare(batch inputs)``, then a timed, synchronized ``__call__()``,
then ``output()`` on the host. Torch, ONNX Runtime and TensorRT are imported when a runner is made."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np

from cloudrt._deps import dist_version, has_module
from cloudrt.bench.load import ModelSpec
from cloudrt.bench.probe import ORT_PROVIDERS, Log, quiet
from cloudrt.devices import device_index
from cloudrt.errors import BackendUnavailableError
from cloudrt.export import get_or_build_engine
from cloudrt.paths import cache_dir
from cloudrt.runtime.onnx_backend import session_options as runtime_session_options
from cloudrt.runtime.tensorrt_backend import TensorRTBackend


def make_inputs(batch: int, tile: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The bench's input batch: optical (B, 13, T, T) and SAR (B, 2, T, T) float32 uniform in [0, 1)."""
    rng = np.random.default_rng([seed, batch, tile])
    return (rng.random((batch, 13, tile, tile), dtype=np.float32),
            rng.random((batch, 2, tile, tile), dtype=np.float32))


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
        self.device_id = device_index(device)
        so = session_options(threads)
        if provider == "CPUExecutionProvider":
            providers: list[Any] = ["CPUExecutionProvider"]
        elif provider == "CUDAExecutionProvider":
            providers = [(provider, {"device_id": self.device_id}), "CPUExecutionProvider"]
        else:
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
        self.precision = precision
        self.device_id = device_index(device)
        opt = max_batch
        log(f"TensorRT {precision} engine (batch 1:{opt}:{max_batch}): building or loading from the cache")
        engine = get_or_build_engine(onnx_fp32, half=precision == "fp16", batch=f"1:{opt}:{max_batch}",
                                     device=self.device_id)
        self.be = TensorRTBackend(engine, device_id=self.device_id)
        self.provider = f"TensorRT {dist_version('tensorrt')} ({Path(engine).name})"
        self.torch = None
        if has_module("torch"):
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

    return runtime_session_options(ort, threads)


def make_runner(path: tuple[str, str], spec: ModelSpec, device: str, tile: int, threads: int, max_batch: int,
                onnx_files: dict[str, Path], log: Log = quiet) -> Runner:
    """The :class:`Runner` of ``path`` (``onnx_files``: ``{"fp32": Path, "fp16": Path}`` as needed)."""
    backend, precision = path
    if backend.startswith("torch"):
        return TorchRunner(spec.module, device, precision, compiled=backend == "torch-compile")
    if backend.startswith("onnxruntime"):
        # TensorRT EP builds FP16 itself from the FP32 graph; CPU and CUDA EPs run the mixed-precision file.
        return OrtRunner(onnx_files[onnx_key(path)], backend, precision, device, threads, tile, max_batch)
    if backend == "tensorrt":
        return TensorRTRunner(onnx_files["fp32"], precision, device, max_batch, log)
    raise ValueError(backend)


def onnx_key(path: tuple[str, str]) -> str | None:
    """Which ONNX file a path runs: None (torch), "fp32" or "fp16". TensorRT builds FP16 from the FP32 file."""
    backend, precision = path
    if backend.startswith("torch"):
        return None
    return "fp32" if backend in ("onnxruntime-tensorrt", "tensorrt") else precision
