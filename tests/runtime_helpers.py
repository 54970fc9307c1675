"""Test helpers for the runtime tests: tiny ONNX models that follow the cloudrt model contract, small
synthetic GeoTIFF scenes, and float64 NumPy references of those models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np


def conv_weights(kernel: int, seed: int = 0, scale: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((13, 15, kernel, kernel)) * scale / kernel).astype(np.float32)
    b = (rng.standard_normal(13) * 0.05).astype(np.float32)
    return w, b


def make_onnx(path: Path, tile: int = 32, kernel: int = 1, gain: float = 0.5, seed: int = 0,
              batch: int | str = "N", names: tuple[str, str, str] = ("optical", "sar", "optical_clear"),
              optical_bands: int = 13, extra_meta: dict | None = None) -> Path:
    """``optical_clear = optical + gain * conv_k(concat(optical, sar))`` (zero padding), static tile."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w, b = conv_weights(kernel, seed)
    if optical_bands != 13:
        w = w[:, : optical_bands + 2][:optical_bands] if optical_bands < 13 else w
        b = b[:optical_bands]
    o_in = helper.make_tensor_value_info(names[0], TensorProto.FLOAT, [batch, optical_bands, tile, tile])
    s_in = helper.make_tensor_value_info(names[1], TensorProto.FLOAT, [batch, 2, tile, tile])
    out = helper.make_tensor_value_info(names[2], TensorProto.FLOAT, [batch, optical_bands, tile, tile])
    p = kernel // 2
    nodes = [
        helper.make_node("Concat", [names[0], names[1]], ["_cat"], axis=1),
        helper.make_node("Conv", ["_cat", "_W", "_B"], ["_conv"], pads=[p, p, p, p], kernel_shape=[kernel, kernel]),
        helper.make_node("Mul", ["_conv", "_g"], ["_scaled"]),
        helper.make_node("Add", [names[0], "_scaled"], [names[2]]),
    ]
    inits = [numpy_helper.from_array(w, "_W"), numpy_helper.from_array(b, "_B"),
             numpy_helper.from_array(np.array(gain, dtype=np.float32), "_g")]
    graph = helper.make_graph(nodes, "cloudrt-test", [o_in, s_in], [out], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    meta = {"tile": str(tile), "preset": f"test-conv{kernel}", "precision": "fp32",
            "config": json.dumps({"kernel": kernel}), "cloudrt_version": "test"}
    meta.update(extra_meta or {})
    for k, v in meta.items():
        e = model.metadata_props.add()
        e.key, e.value = k, str(v)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return Path(path)


def reference_conv(opt_n: np.ndarray, sar_n: np.ndarray, kernel: int = 1, gain: float = 0.5, seed: int = 0,
                   pad_mode: str = "reflect") -> np.ndarray:
    """float64 NumPy reference of :func:`make_onnx`'s model on a whole normalized scene, with the scene
    padded by ``pad_mode`` (the runtime reflect-pads scene borders)."""
    w, b = conv_weights(kernel, seed)
    x = np.concatenate([opt_n, sar_n]).astype(np.float64)
    p = kernel // 2
    if p:
        x = np.pad(x, ((0, 0), (p, p), (p, p)), mode=pad_mode)
    h, wd = opt_n.shape[1:]
    c = np.zeros((13, h, wd)) + b.astype(np.float64)[:, None, None]
    for dy in range(kernel):
        for dx in range(kernel):
            c += np.einsum("oi,ihw->ohw", w[:, :, dy, dx].astype(np.float64), x[:, dy : dy + h, dx : dx + wd])
    return opt_n.astype(np.float64) + gain * c


def synthetic_scene(h: int, w: int, seed: int = 0, cloud: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Smooth random S2 DN (uint16) with a bright cloud blob, and S1 dB (float32)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    base = 800 + 400 * np.sin(yy / 17.0 + seed) * np.cos(xx / 23.0)
    opt = np.stack([base * (0.6 + 0.05 * i) + rng.normal(0, 30, (h, w)) for i in range(13)])
    if cloud:
        cy, cx, r = h * 0.4, w * 0.55, max(2.0, min(h, w) * 0.2)
        blob = np.exp(-(((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r)))
        opt = opt + 5000 * blob[None]
    opt = np.clip(opt, 1, 12000).astype(np.uint16)
    sar = np.stack([-12 + 3 * np.sin(xx / 9.0) + rng.normal(0, 1, (h, w)),
                    -19 + 3 * np.cos(yy / 11.0) + rng.normal(0, 1, (h, w))]).astype(np.float32)
    return opt, sar


# A clear, vegetated L1C pixel (B1..B12 DN) and a thick low cloud (flat from blue to SWIR, no cirrus).
VEGETATION_DN = np.array([1200, 900, 800, 600, 1000, 2200, 2600, 2800, 2900, 900, 20, 1800, 1000], dtype=np.float64)
CLOUD_DN = np.array([6000, 6000, 5900, 6100, 6400, 7000, 7300, 7000, 7500, 3800, 30, 5300, 4000], dtype=np.float64)


def realistic_scene(h: int, w: int, seed: int = 0, radius: float = 0.18) -> tuple[np.ndarray, np.ndarray]:
    """Vegetation with smooth texture and a cloud blob of soft edges (alpha-blended with
    :data:`CLOUD_DN`), as uint16 DN; S1 dB as in :func:`synthetic_scene`."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    tex = 1.0 + 0.15 * np.sin(yy / 13.0 + seed) * np.cos(xx / 19.0) + rng.normal(0, 0.02, (h, w))
    ground = VEGETATION_DN[:, None, None] * tex[None]
    cy, cx, r = h * 0.4, w * 0.55, max(2.0, min(h, w) * radius)
    alpha = np.clip(1.6 * np.exp(-(((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))), 0, 1)[None]
    opt = np.clip((1 - alpha) * ground + alpha * CLOUD_DN[:, None, None], 1, 12000).astype(np.uint16)
    _, sar = synthetic_scene(h, w, seed, cloud=False)
    return opt, sar


def write_tif(path: Path, data: np.ndarray, crs: str | None = "EPSG:32631",
              transform: tuple[float, ...] | None = (10.0, 0.0, 500000.0, 0.0, -10.0, 5000000.0),
              nodata: float | None = None, descriptions: tuple[str, ...] | None = None, **kw) -> Path:
    import rasterio
    from affine import Affine

    data = np.asarray(data)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    profile = dict(driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                   dtype=data.dtype.name, nodata=nodata, **kw)
    if crs is not None:
        profile["crs"] = crs
    if transform is not None:
        profile["transform"] = Affine(*transform)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        if descriptions:
            for i, d in enumerate(descriptions, 1):
                dst.set_band_description(i, d)
    return Path(path)


GPU_HOST_MISSING = ("rasterio", "affine", "kornia")  # what a lent GPU host lacks (docs/benchmarks.md)


def run_script_without(script: Path, argv: list[str], cwd: Path, blocked: tuple[str, ...] = GPU_HOST_MISSING,
                       env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``script`` with ``argv`` in a fresh interpreter where importing any of ``blocked`` raises, and check
    afterwards that none of them was imported (as on a lent GPU host)."""
    code = textwrap.dedent(f"""
        import runpy, sys

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {tuple(blocked)!r}:
                    raise ImportError("blocked: " + name)

        sys.meta_path.insert(0, Block())
        sys.argv = [{script.name!r}, *{list(argv)!r}]
        try:
            runpy.run_path({str(script)!r}, run_name="__main__")
        except SystemExit as e:
            if e.code:
                raise
        assert not [m for m in {tuple(blocked)!r} if m in sys.modules]
    """)
    full_env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", **(env or {})}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env=full_env)
