"""Export a CARF model to ONNX (FP32, or mixed-precision FP16) with its metadata inside.

The graph computes exactly ``model(optical, sar)`` (eqs. 1-12, docs/method.md) in normalized units:
inputs ``optical`` (N, 13, T, T) and ``sar`` (N, 2, T, T) float32, output ``optical_clear``
(N, 13, T, T) float32; static tile T, dynamic batch N (or a static one with ``batch=N``).

Exporter: ``torch.onnx.export(..., dynamo=False)``, the TorchScript exporter. With torch 2.13 the
default (dynamo) exporter needs ``onnxscript``, which the export extra does not install; the model's
window attention is written for static shapes (fixed windows, roll on static shapes, bias index and
shift masks as constants), which the TorchScript exporter traces into plain Reshape/Transpose,
Slice+Concat, MatMul-Softmax-MatMul. onnxslim then folds the shape arithmetic and constants.
"""

from __future__ import annotations

import io
import json
import os
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from cloudrt._deps import dist_version
from cloudrt._version import __version__
from cloudrt.contract import INPUT_NAMES, NORMALIZATION, OPTICAL_INPUT, OUTPUT, S1_BANDS, S2_BANDS, SAR_INPUT
from cloudrt.errors import InputError, ModelError
from cloudrt.export.fp16 import convert_fp16, fp32_islands
from cloudrt.export.trt_ops import op_histogram, trt_problems
from cloudrt.fileutil import atomic_write_bytes
from cloudrt.paths import cache_dir
from cloudrt.runtime.trt_meta import parse_batch

DEFAULT_OPSET = 17
FP32_MAX_ABS_TOL = 1e-4  # ONNX Runtime FP32 vs eager
FP16_REL_L2_TOL = 1e-2  # ONNX Runtime FP16 graph vs eager FP32


def _batch_mode(batch: int | str | None) -> tuple[int | None, tuple[int, int, int] | None]:
    """-> (static batch or None for dynamic, profile hint or None)."""
    if batch is None:
        return None, None
    lo, opt, hi = parse_batch(batch)
    if isinstance(batch, int) or ":" not in str(batch):
        return lo, None
    return None, (lo, opt, hi)


def default_onnx_path(preset: str, weights_sha256: str, tile: int, half: bool, static_batch: int | None) -> Path:
    """Where intermediate ONNX files go (bench, engine builds): the user cache, keyed by weights and shape."""
    name = f"{preset}-{weights_sha256[:12]}-t{tile}-{'fp16' if half else 'fp32'}"
    if static_batch is not None:
        name += f"-b{static_batch}"
    return cache_dir() / "onnx" / f"{name}.onnx"


# export_onnx is ~110 lines: one linear recipe (trace, slim, check, FP16, metadata, verify, write, report) whose
# steps share the traced inputs and the graph; each step is a few lines, so splitting would only add plumbing.
def export_onnx(
    model_or_weights: Any = None, path: str | os.PathLike | None = None, *, tile: int = 256,
    batch: int | str | None = None, opset: int = DEFAULT_OPSET, half: bool = False, simplify: bool = True,
    verbose: bool = True, device: str | None = None, verify: bool = True,
) -> Path:
    """Export ``model_or_weights`` to ONNX at ``path``; returns the path.

    ``model_or_weights``: ``None`` (the shipped default, ``weights/carf-demo``), a checkpoint path, or
    an ``nn.Module`` (a CARF model: ``.config``, ``.size_divisor``). ``tile``: static T, a multiple of
    the model's ``size_divisor``. ``batch``: ``None`` or ``"MIN:OPT:MAX"`` -> dynamic batch (the range
    is recorded as a hint for engines), ``N`` -> static batch N. ``half``: mixed-precision FP16 graph
    (FP32 I/O). ``simplify``: onnxslim. ``verify``: run ONNX Runtime (CPU) on a random batch and
    require max abs error <= 1e-4 (FP32) or relative L2 <= 1e-2 (FP16) against the eager model.
    ``path=None`` writes to the user cache (:func:`default_onnx_path`).
    """
    import onnx  # lazy: the export extra
    import torch

    from cloudrt.model.resolve import resolve_model  # lazy: imports torch

    say = print if verbose else (lambda *a, **k: None)
    t0 = time.perf_counter()
    model, prov = resolve_model(model_or_weights)
    prov["weights_source"] = Path(prov["source"]).name if Path(prov["source"]).is_file() else prov["source"]
    cfg = dict(getattr(model, "config", {}) or {})
    preset = str(cfg.get("preset", type(model).__name__))
    divisor = int(getattr(model, "size_divisor", 1))
    if not isinstance(tile, int) or tile <= 0 or tile % divisor:
        up = max(divisor, -(-int(tile) // divisor) * divisor) if isinstance(tile, int) else divisor
        raise InputError(f"--tile {tile} must be a positive multiple of {divisor} for {preset}; use --tile {up}.")
    static_batch, profile_hint = _batch_mode(batch)
    if path is None:
        path = default_onnx_path(preset, prov["weights_sha256"], tile, half, static_batch)
    path = Path(path)

    was_training = model.training
    params = list(model.parameters())
    dev = torch.device(device) if device else (params[0].device if params else torch.device("cpu"))
    model = model.eval().to(dev)
    b0 = static_batch or 2  # trace with N > 1 so nothing specializes on a batch of one
    gen = torch.Generator().manual_seed(0)
    optical = torch.rand(b0, len(S2_BANDS), tile, tile, generator=gen).to(dev)
    sar = torch.rand(b0, len(S1_BANDS), tile, tile, generator=gen).to(dev)
    dynamic_axes = None if static_batch else {n: {0: "N"} for n in (*INPUT_NAMES, OUTPUT)}
    buf = io.BytesIO()
    try:
        with torch.no_grad():
            reference = model(optical, sar).float().cpu().numpy() if verify else None
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # TracerWarnings on the static shapes, exporter deprecation
                torch.onnx.export(
                    model, (optical, sar), buf, dynamo=False, opset_version=opset,
                    input_names=list(INPUT_NAMES), output_names=[OUTPUT], dynamic_axes=dynamic_axes,
                    do_constant_folding=True,
                )
    finally:
        model.train(was_training)
    m = onnx.load_from_string(buf.getvalue())
    raw_nodes = len(m.graph.node)
    if simplify:
        import onnxslim  # lazy: the export extra

        m = onnxslim.slim(m)
    onnx.checker.check_model(m, full_check=True)
    if half:
        m = convert_fp16(m)

    props = {p.key: p.value for p in m.metadata_props}
    props.update({
        "cloudrt_version": __version__,
        "preset": preset,
        "config": json.dumps(cfg, sort_keys=True),
        "tile": str(tile),
        "size_divisor": str(divisor),
        "band_order": json.dumps({"optical": list(S2_BANDS), "sar": list(S1_BANDS)}),
        "normalization": json.dumps(NORMALIZATION, sort_keys=True),
        "precision": "fp16" if half else "fp32",
        "weights_sha256": prov["weights_sha256"],
        "weights_source": prov["weights_source"],
        "opset": str(opset),
        "batch": str(static_batch) if static_batch else "dynamic",
        "exporter": f"torch {torch.__version__} TorchScript exporter (dynamo=False)",
        "simplifier": f"onnxslim {dist_version('onnxslim')}" if simplify else "none",
        "io": f"optical (N,{len(S2_BANDS)},{tile},{tile}) + sar (N,{len(S1_BANDS)},{tile},{tile}) float32 "
              f"in [0,1] -> {OUTPUT} (N,{len(S2_BANDS)},{tile},{tile}) float32, same units",
    })
    if profile_hint:
        props["batch_profile"] = ":".join(map(str, profile_hint))
    onnx.helper.set_model_props(m, props)
    m.producer_name, m.producer_version = "cloudrt", __version__
    m.doc_string = f"CARF cloud removal ({preset}), exported by cloudrt {__version__}"
    onnx.checker.check_model(m)

    problems = trt_problems(m)
    data = m.SerializeToString()
    if verify:
        _verify(data, optical.cpu().numpy(), sar.cpu().numpy(), reference, half, say)
    atomic_write_bytes(path, data)

    hist = op_histogram(m)
    say(f"exported {preset} to {path} ({'FP16 mixed precision' if half else 'FP32'}, opset {opset}, "
        f"tile {tile}, batch {props['batch']}) in {time.perf_counter() - t0:.1f} s")
    n_params = sum(int(_numel(i.dims)) for i in m.graph.initializer)
    say(f"graph: {len(m.graph.node)} nodes ({raw_nodes} before onnxslim), {len(m.graph.initializer)} "
        f"initializers / {n_params:,} weights, {len(data):,} bytes ({len(data) / 2**20:.2f} MiB)")
    say("ops: " + ", ".join(f"{op} {n}" for op, n in sorted(hist.items(), key=lambda kv: (-kv[1], kv[0]))))
    if half:
        isl = fp32_islands(m)
        say("fp32 islands: " + ", ".join(f"{k} {v}" for k, v in sorted(isl["fp32"].items())))
    if problems:
        say("warning: not parseable by every TensorRT 10.x: " + "; ".join(problems))
    else:
        say("TensorRT check: every op is in TensorRT 10.0's ONNX operator support list")
    return path


def _numel(dims: Any) -> int:
    n = 1
    for d in dims:
        n *= int(d)
    return n


def _verify(data: bytes, optical: Any, sar: Any, reference: Any, half: bool, say: Any) -> None:
    """ONNX Runtime (CPU) on the traced batch vs the eager output; raise ModelError past tolerance."""
    import onnxruntime as ort  # lazy: the cpu extra

    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    out = sess.run([OUTPUT], {OPTICAL_INPUT: optical, SAR_INPUT: sar})[0]
    if half:
        rel = float(np.linalg.norm(out - reference) / max(np.linalg.norm(reference), 1e-12))
        say(f"parity (ONNX Runtime CPU, FP16 graph vs eager FP32, batch {optical.shape[0]}): relative L2 "
            f"{rel:.2e} (limit {FP16_REL_L2_TOL:.0e}), max abs {float(np.abs(out - reference).max()):.2e}")
        if not rel <= FP16_REL_L2_TOL:
            raise ModelError(f"FP16 graph deviates from the eager model (relative L2 {rel:.2e} > "
                             f"{FP16_REL_L2_TOL:.0e}); export FP32 instead (drop --half) and report this.")
    else:
        err = float(np.abs(out - reference).max())
        say(f"parity (ONNX Runtime CPU vs eager, batch {optical.shape[0]}): max abs error {err:.2e} "
            f"(limit {FP32_MAX_ABS_TOL:.0e})")
        if not err <= FP32_MAX_ABS_TOL:
            raise ModelError(f"ONNX graph deviates from the eager model (max abs {err:.2e} > "
                             f"{FP32_MAX_ABS_TOL:.0e}); report this with the model config.")
