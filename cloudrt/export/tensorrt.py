"""Build TensorRT engines from the exported ONNX graph (TensorRT 10.x and 11.x Python API).

Precision: FP16 engines come from the mixed-precision ONNX graph (:mod:`cloudrt.export.fp16`) parsed
into a *strongly typed* network, so TensorRT keeps exactly the FP32 islands the graph declares. That is
the only mode TensorRT 11 has, and the recommended one from 10.12 on (weak typing and
``BuilderFlag.FP16`` were deprecated in 10.12 and removed in 11). Older 10.x releases (Jetson) fall back
to the FP32 graph with ``BuilderFlag.FP16``.

Every build sets an optimization profile for the batch range, a workspace limit and a persistent timing
cache, and writes the engine plus a JSON sidecar. GPU probing, the engine cache, sidecars and the
compatibility rules are the runtime's (:mod:`cloudrt.runtime.trt_meta`): the runtime loads what this builds.

Nothing here imports torch; onnx is imported only to read metadata and make the FP16 graph. Without
TensorRT or a GPU the functions raise :class:`cloudrt.errors.BackendUnavailableError` (one line; exit 2).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from cloudrt.errors import BackendUnavailableError, InputError, ModelError
from cloudrt.export.fp16 import convert_fp16
from cloudrt.fileutil import atomic_write_bytes, file_sha256
from cloudrt.runtime import trt_meta
from cloudrt.runtime.trt_meta import (
    DEFAULT_ENGINE_BATCH,
    engine_cache_path,
    make_sidecar,
    parse_batch,
    timing_cache_path,
    trt_version_tuple,
    write_sidecar,
)

STRONG_TYPING_DEFAULT_FROM = (10, 12)  # weak typing deprecated in 10.12, removed in 11.0


@dataclass(frozen=True)
class BuildMode:
    """How a TensorRT version builds the requested precision."""

    strongly_typed: bool
    fp16_flag: bool  # BuilderFlag.FP16 (weak typing; TensorRT < 10.12 only by default)
    needs_fp16_graph: bool  # FP16 must come from the mixed-precision ONNX graph


def trt_build_mode(trt_version: str, half: bool, strongly_typed: bool | None = None) -> BuildMode:
    """Pick strong typing vs the FP16 builder flag for ``trt_version`` (pure logic, testable anywhere).

    TensorRT 11: always strongly typed. 10.12+: strongly typed unless ``strongly_typed=False``.
    Older 10.x: ``BuilderFlag.FP16`` on the FP32 graph unless ``strongly_typed=True``.
    """
    ver = trt_version_tuple(trt_version)
    if ver < (10, 0):
        raise BackendUnavailableError(f"TensorRT {trt_version} is too old; cloudrt needs TensorRT 10 or newer.")
    if ver >= (11, 0):
        if strongly_typed is False:
            raise InputError(f"TensorRT {trt_version} builds only strongly typed networks; drop the override.")
        strong = True
    elif strongly_typed is None:
        strong = ver >= STRONG_TYPING_DEFAULT_FROM
    else:
        strong = bool(strongly_typed)
    return BuildMode(strongly_typed=strong, fp16_flag=half and not strong, needs_fp16_graph=half and strong)


def _onnx_metadata(onnx_path: Path) -> dict[str, str]:
    import onnx

    m = onnx.load(str(onnx_path), load_external_data=False)
    return {p.key: p.value for p in m.metadata_props}


def _fp16_graph_for(onnx_path: Path, onnx_sha: str, cache_root: str | os.PathLike | None) -> Path:
    """The mixed-precision version of an FP32 ONNX file, converted once and cached next to the engines."""
    import onnx

    out = trt_meta._cache_root(cache_root) / "onnx" / f"{onnx_sha[:16]}-fp16.onnx"
    if not out.is_file():
        m16 = convert_fp16(onnx.load(str(onnx_path)))
        atomic_write_bytes(out, m16.SerializeToString())
    return out


# build_engine is ~100 lines: one linear TensorRT recipe (parse, config, profile, timing cache, build,
# sidecar) whose steps share the builder objects; split up, each step would take half a dozen of them.
def build_engine(
    onnx_path: str | os.PathLike, path: str | os.PathLike | None = None, *, half: bool = True,
    batch: int | str = DEFAULT_ENGINE_BATCH, workspace_gb: float = 4, device: int | str | None = 0,
    timing_cache: str | os.PathLike | None = None, strongly_typed: bool | None = None,
    cache_root: str | os.PathLike | None = None, verbose: bool = True,
) -> Path:
    """Build a TensorRT engine from ``onnx_path``; write it to ``path`` (default: the engine cache).

    ``half``: FP16 (strongly typed from the mixed-precision graph on TensorRT 10.12+/11, else the FP16
    builder flag). ``batch``: ``N`` or ``"MIN:OPT:MAX"`` optimization profile. ``workspace_gb``: builder
    workspace limit in GiB. ``timing_cache``: file to load and update (default: per TensorRT version and
    GPU architecture under the cache directory). Returns the engine path; the sidecar is ``PATH.json``.
    """
    trt = trt_meta.require_tensorrt()
    gpu = trt_meta.gpu_info(device)
    index = gpu.index
    bmin, bopt, bmax = parse_batch(batch)
    if workspace_gb <= 0:
        raise InputError(f"--workspace {workspace_gb} must be a positive number of GiB, e.g. --workspace 4.")
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise ModelError(f"ONNX file {onnx_path} not found; export it first with `cloudrt export -o {onnx_path}`.")
    precision = "fp16" if half else "fp32"
    meta = _onnx_metadata(onnx_path)
    graph_precision = meta.get("precision", "fp32")
    if graph_precision == "fp16" and not half:
        raise InputError(f"{onnx_path} is a mixed-precision FP16 graph; pass --half, or give the FP32 ONNX.")
    mode = trt_build_mode(trt.__version__, half, strongly_typed)
    onnx_sha = file_sha256(onnx_path)
    source = onnx_path
    if mode.needs_fp16_graph and graph_precision != "fp16":
        source = _fp16_graph_for(onnx_path, onnx_sha, cache_root)
    engine_path = Path(path) if path is not None else engine_cache_path(
        onnx_path, precision, batch=f"{bmin}:{bopt}:{bmax}", trt_version=trt.__version__,
        compute_capability=gpu.compute_capability, cache_root=cache_root)
    tc_path = Path(timing_cache) if timing_cache is not None else timing_cache_path(
        trt.__version__, gpu.compute_capability, cache_root)
    say = print if verbose else (lambda *a, **k: None)
    say(f"building {precision.upper()} TensorRT {trt.__version__} engine "
        f"({'strongly typed' if mode.strongly_typed else 'FP16 builder flag'}) for {gpu.name} "
        f"(sm {gpu.compute_capability}), batch {bmin}:{bopt}:{bmax}, from {source.name}")

    trt_meta.activate_device(index)
    t0 = time.perf_counter()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if mode.strongly_typed:
        flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
        if flag is not None:  # TensorRT 11 keeps the flag for compatibility and ignores it
            flags |= 1 << int(flag)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(source)):
        errs = "; ".join(str(parser.get_error(i).desc()) for i in range(parser.num_errors))
        raise ModelError(f"TensorRT could not parse {source.name}: {errs or 'unknown error'}; "
                         "re-export it with `cloudrt export` (opset 17).")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if mode.fp16_flag:
        config.set_flag(trt.BuilderFlag.FP16)

    profile = builder.create_optimization_profile()
    input_shapes: dict[str, list[int]] = {}
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shape = [int(d) for d in tensor.shape]
        if shape[0] != -1 and (bmin, bmax) != (shape[0], shape[0]):
            raise InputError(f"{onnx_path.name} has a static batch of {shape[0]}; use --batch {shape[0]} or "
                             "re-export without --batch N for a dynamic batch.")
        if any(d < 0 for d in shape[1:]):
            raise ModelError(f"{onnx_path.name} input {tensor.name} has dynamic non-batch dims {shape}; "
                             "re-export it with a static --tile.")
        input_shapes[tensor.name] = shape
        rest = tuple(shape[1:])
        profile.set_shape(tensor.name, (bmin, *rest), (bopt, *rest), (bmax, *rest))
    config.add_optimization_profile(profile)

    blob = tc_path.read_bytes() if tc_path.is_file() else b""
    try:
        tcache = config.create_timing_cache(blob)
    except Exception:  # a corrupt or foreign cache: start a fresh one
        tcache = config.create_timing_cache(b"")
    config.set_timing_cache(tcache, False)

    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ModelError(f"TensorRT failed to build an engine from {source.name} (see the log above); try a "
                         "larger --workspace or a smaller --batch range.")
    engine_bytes = bytes(plan)
    atomic_write_bytes(engine_path, engine_bytes)
    atomic_write_bytes(tc_path, bytes(config.get_timing_cache().serialize()))
    sidecar = make_sidecar(
        engine_path=engine_path, engine_bytes=engine_bytes, onnx_path=onnx_path, onnx_sha256=onnx_sha,
        trt_version=trt.__version__, gpu_name=gpu.name, compute_capability=gpu.compute_capability,
        precision=precision, batch=(bmin, bopt, bmax), input_shapes=input_shapes,
        strongly_typed=mode.strongly_typed, workspace_gb=workspace_gb, device=index, onnx_metadata=meta,
        built_from_sha256=file_sha256(source) if source != onnx_path else onnx_sha,
    )
    write_sidecar(engine_path, sidecar)
    say(f"wrote {engine_path} ({len(engine_bytes) / 2**20:.1f} MiB) in {time.perf_counter() - t0:.1f} s; "
        f"sidecar {engine_path.name}.json; timing cache {tc_path}")
    return engine_path


def get_or_build_engine(
    onnx_path: str | os.PathLike, *, half: bool = True, batch: int | str = DEFAULT_ENGINE_BATCH,
    workspace_gb: float = 4, device: int | str | None = 0, cache_root: str | os.PathLike | None = None,
    verbose: bool = False,
) -> Path:
    """The cached engine for this ONNX file, precision and batch profile on this device; built on first use.

    A cached engine whose sidecar names another TensorRT version or GPU is rebuilt, not loaded.
    """
    cached = trt_meta.cached_engine(onnx_path, half=half, batch=batch, device=device, cache_root=cache_root)
    if cached is not None:
        return cached
    return build_engine(onnx_path, None, half=half, batch=batch, workspace_gb=workspace_gb, device=device,
                        cache_root=cache_root, verbose=verbose)
