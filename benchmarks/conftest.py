"""Fixtures and options of the benchmark suites (``pytest benchmarks/``; never part of ``tests/``).

Options (each also an environment variable, for CI):

=====================  =========================  ================================================
option                 env                        default
=====================  =========================  ================================================
--bench-model          CLOUDRT_BENCH_MODEL        shipped weights, else untrained carf-small
--bench-device         CLOUDRT_BENCH_DEVICE       auto (cuda when visible, else cpu)
--bench-tile           CLOUDRT_BENCH_TILE         256
--bench-batches        CLOUDRT_BENCH_BATCHES      1,4
--bench-rounds         CLOUDRT_BENCH_ROUNDS       3
--scene-size           CLOUDRT_BENCH_SCENE        2048 (real model, end to end)
--granule-size         CLOUDRT_BENCH_GRANULE      10980 (streamed, synthetic)
--granule-model        CLOUDRT_BENCH_GRANULE_MODEL  ``real`` on a GPU, ``identity`` on a CPU
=====================  =========================  ================================================

Synthetic scenes are mosaics of the real SEN12MS-CR patches in ``../shared/data`` when present (random
flips per 256 px cell, so the cloud mask and compositing see real clouds), else smooth procedural
fields with cloud blobs. They are written once, streamed by rows (constant memory), into
``$CLOUDRT_BENCH_DIR`` (default: the cloudrt cache ``bench-scenes/``) and reused.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

# Before torch is imported: torch's OpenMP pool waits passively, like ONNX Runtime's (see cloudrt.bench).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

HERE = Path(__file__).resolve().parent
WORKER = HERE / "_scene_worker.py"
CELL = 256


def _opt(config: pytest.Config, name: str, env: str, default: str | None) -> str | None:
    v = config.getoption(name)
    if v is None:
        v = os.environ.get(env, default)
    return v


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("cloudrt-bench")
    g.addoption("--bench-model", default=None, help="preset, .safetensors or .onnx (CLOUDRT_BENCH_MODEL)")
    g.addoption("--bench-device", default=None, help="auto, cpu, cuda (CLOUDRT_BENCH_DEVICE)")
    g.addoption("--bench-tile", default=None, help="tile size (CLOUDRT_BENCH_TILE, 256)")
    g.addoption("--bench-batches", default=None, help="batch sizes (CLOUDRT_BENCH_BATCHES, 1,4)")
    g.addoption("--bench-rounds", default=None, help="timed rounds per path (CLOUDRT_BENCH_ROUNDS, 3)")
    g.addoption("--scene-size", default=None, help="scene side for the real-model end-to-end run (2048)")
    g.addoption("--granule-size", default=None, help="granule side for the streamed run (10980)")
    g.addoption("--granule-model", default=None, help="identity or real (CLOUDRT_BENCH_GRANULE_MODEL)")


class BenchSettings:
    def __init__(self, config: pytest.Config) -> None:
        from cloudrt.bench import parse_batches, resolve_device

        self.model = _opt(config, "--bench-model", "CLOUDRT_BENCH_MODEL", None)
        self.device = resolve_device(_opt(config, "--bench-device", "CLOUDRT_BENCH_DEVICE", "auto"))
        self.tile = int(_opt(config, "--bench-tile", "CLOUDRT_BENCH_TILE", "256"))
        self.batches = parse_batches(_opt(config, "--bench-batches", "CLOUDRT_BENCH_BATCHES", "1,4"))
        self.rounds = int(_opt(config, "--bench-rounds", "CLOUDRT_BENCH_ROUNDS", "3"))
        self.scene = int(_opt(config, "--scene-size", "CLOUDRT_BENCH_SCENE", "2048"))
        self.granule = int(_opt(config, "--granule-size", "CLOUDRT_BENCH_GRANULE", "10980"))
        gm = _opt(config, "--granule-model", "CLOUDRT_BENCH_GRANULE_MODEL", None)
        self.granule_model = gm or ("real" if self.device.startswith("cuda") else "identity")
        if self.granule_model not in ("identity", "real"):
            raise pytest.UsageError("--granule-model must be identity or real")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "batch" in metafunc.fixturenames:
        from cloudrt.bench import parse_batches

        b = parse_batches(_opt(metafunc.config, "--bench-batches", "CLOUDRT_BENCH_BATCHES", "1,4"))
        metafunc.parametrize("batch", b, ids=[f"b{x}" for x in b])


@pytest.fixture(scope="session")
def settings(request: pytest.FixtureRequest) -> BenchSettings:
    return BenchSettings(request.config)


@pytest.fixture(scope="session")
def spec(settings: BenchSettings) -> Any:
    from cloudrt.bench import load_model

    return load_model(settings.model, log=lambda m: print(m, file=sys.stderr))


@pytest.fixture(scope="session")
def onnx_fp32(spec: Any, settings: BenchSettings) -> Path:
    from cloudrt.bench import export_paths

    return export_paths(spec, settings.tile, half=False)


@pytest.fixture(scope="session")
def onnx_fp16(spec: Any, settings: BenchSettings) -> Path:
    from cloudrt.bench import export_paths

    return export_paths(spec, settings.tile, half=True)


# --------------------------------------------------------------------------------------------------
# a trivially cheap model with the cloudrt ONNX contract: measures everything except the network


def bench_dir() -> Path:
    env = os.environ.get("CLOUDRT_BENCH_DIR")
    if env:
        d = Path(env)
    else:
        from cloudrt.paths import cache_dir

        d = cache_dir() / "bench-scenes"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _patches() -> tuple[list[np.ndarray], list[np.ndarray]] | None:
    from cloudrt.paths import shared_data_dir

    d = shared_data_dir()
    if d is None or not (d / "sen12mscr-samples" / "s1").is_dir():
        return None
    import warnings

    import rasterio

    opt, sar = [], []
    root = d / "sen12mscr-samples"
    for f in sorted((root / "s2_cloudy").glob("*.tif")):
        g = root / "s1" / f.name
        if not g.is_file():
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the oriolac_* patches carry no georeferencing
            with rasterio.open(f) as a, rasterio.open(g) as b:
                o, s = a.read(), b.read().astype(np.float32)
        if o.shape[1:] == (CELL, CELL) and s.shape[1:] == (CELL, CELL):
            opt.append(o.astype(np.uint16))
            sar.append(np.nan_to_num(s, nan=-20.0))
    return (opt, sar) if opt else None


def _procedural(bands: int, r0: int, r1: int, width: int, sar: bool) -> np.ndarray:
    y = np.arange(r0, r1, dtype=np.float32)[:, None]
    x = np.arange(width, dtype=np.float32)[None, :]
    base = np.sin(x / 97.0) * np.cos(y / 131.0)
    cloud = np.clip(np.sin(x / 410.0 + 1.3) * np.sin(y / 370.0) * 3 - 1.5, 0, 1)
    if sar:
        return np.stack([-12 + 4 * base - 2 * (i + 1) for i in range(bands)]).astype(np.float32)
    out = np.stack([1200 + 600 * base * (1 + 0.1 * i) + 6000 * cloud for i in range(bands)])
    return np.clip(out, 0, 10000).astype(np.uint16)


def _mosaic_rows(cells: list[np.ndarray], r0: int, r1: int, width: int, seed: int) -> np.ndarray:
    """Rows [r0, r1) of a mosaic of ``cells`` (C, 256, 256), one random cell and flip per grid position."""
    c = cells[0].shape[0]
    out = np.empty((c, r1 - r0, width), dtype=cells[0].dtype)
    for cy in range(r0 // CELL, (r1 - 1) // CELL + 1):
        ya, yb = max(r0, cy * CELL), min(r1, (cy + 1) * CELL)
        for cx in range(0, (width + CELL - 1) // CELL):
            rng = np.random.default_rng([seed, cy, cx])
            cell = cells[int(rng.integers(len(cells)))]
            if rng.integers(2):
                cell = cell[:, ::-1]
            if rng.integers(2):
                cell = cell[:, :, ::-1]
            xa, xb = cx * CELL, min(width, (cx + 1) * CELL)
            out[:, ya - r0 : yb - r0, xa:xb] = cell[:, ya - cy * CELL : yb - cy * CELL, : xb - xa]
    return out


def synthetic_scene(size: int, width: int | None = None) -> tuple[Path, Path]:
    """(optical uint16 13-band, SAR float32 2-band) GeoTIFFs of ``size`` rows x ``width`` (default ``size``)
    columns on one UTM 10 m grid."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    d = bench_dir()
    width = width or size
    tag = f"{size}" if width == size else f"{size}x{width}"
    op, sp = d / f"s2-{tag}.tif", d / f"s1-{tag}.tif"
    if op.is_file() and sp.is_file():
        return op, sp
    cells = _patches()
    common = dict(driver="GTiff", width=width, height=size, crs="EPSG:32633",
                  transform=from_origin(300000, 5000040, 10, 10), tiled=True, blockxsize=256, blockysize=256,
                  compress="deflate", zlevel=1, BIGTIFF="IF_SAFER", num_threads="ALL_CPUS")
    t0 = time.perf_counter()
    tmp_o, tmp_s = op.with_suffix(".partial.tif"), sp.with_suffix(".partial.tif")
    with rasterio.open(tmp_o, "w", count=13, dtype="uint16", predictor=2, **common) as a, \
            rasterio.open(tmp_s, "w", count=2, dtype="float32", predictor=3, **common) as b:
        for r0 in range(0, size, 512):
            r1 = min(size, r0 + 512)
            if cells is not None:
                o = _mosaic_rows(cells[0], r0, r1, width, 1)
                s = _mosaic_rows(cells[1], r0, r1, width, 1)
            else:
                o, s = _procedural(13, r0, r1, width, False), _procedural(2, r0, r1, width, True)
            w = Window(0, r0, width, r1 - r0)
            a.write(o, window=w)
            b.write(s, window=w)
    os.replace(tmp_o, op)
    os.replace(tmp_s, sp)
    print(f"wrote synthetic {size}x{width} scene ({'real-patch mosaic' if cells else 'procedural'}) in "
          f"{time.perf_counter() - t0:.0f} s: {op}", file=sys.stderr)
    return op, sp


# --------------------------------------------------------------------------------------------------
# running a scene in a fresh process: its own peak RSS, untouched by the others


def run_scene_process(optical: Path, sar: Path, model: Path, *, backend: str, device: str, tile: int,
                      batch: int | None, timeout: float = 3600) -> dict[str, Any]:
    """Run ``_scene_worker.py`` in a child; returns its JSON (``peak_rss_mib``: the child's own VmHWM).

    ``ru_maxrss_mib`` (``os.wait4``) is kept for reference only: Linux carries the parent's high-water mark
    across fork + exec into it, so under pytest it reads the pytest process's size.
    """
    with tempfile.TemporaryDirectory(dir=bench_dir()) as td:
        out = Path(td) / "out.tif"
        args = dict(optical=str(optical), sar=str(sar), model=str(model), out=str(out), backend=backend,
                    device=device, tile=tile, batch=batch)
        log = Path(td) / "worker.json"
        t0 = time.perf_counter()
        with open(log, "w") as fh:
            p = subprocess.Popen([sys.executable, str(WORKER), json.dumps(args)], stdout=fh, stderr=subprocess.PIPE,
                                 text=True)
            deadline = t0 + timeout
            while True:
                pid, status, usage = os.wait4(p.pid, os.WNOHANG)
                if pid:
                    break
                if time.perf_counter() > deadline:
                    p.kill()
                    _, status, usage = os.wait4(p.pid, 0)
                    break
                time.sleep(0.05)
            p.returncode = os.waitstatus_to_exitcode(status)
            err = p.stderr.read() if p.stderr else ""
        if p.returncode != 0:
            raise RuntimeError(f"scene worker failed ({p.returncode}): {err[-2000:]}")
        res = json.loads(log.read_text().strip().splitlines()[-1])
    res["process_s"] = time.perf_counter() - t0
    res["ru_maxrss_mib"] = usage.ru_maxrss / 1024  # Linux: KiB
    if res.get("peak_rss_mib") is None:  # not Linux: the best available, with the caveat above
        res["peak_rss_mib"] = res["ru_maxrss_mib"]
    return res
