"""Read speed of a Sentinel-2 L1C SAFE product (JPEG 2000 decoding) in the runtime's access pattern.

Builds (once, cached in ``--workdir``) a synthetic L1C product of ``--size`` x ``--size`` 10 m pixels with
JPEG 2000 files tiled like ESA's (``--block``: 1024; 0 = one tile per file) and image-like content (a
smooth field plus noise, lossless, about as compressible as real L1C bands), then times
:class:`cloudrt.scene.safe.SafeReader` reading

- ``stream``: full-width windows of 256 rows, top to bottom, each window once;
- ``runtime``: exactly the windows ``run_scene`` asks for (column panels, tile rows with their overlap,
  the compositing halo), recorded with a stub model, under the runtime's GDAL environment;
- ``window``: one 256 x 256 window of a freshly opened product, against decoding the whole product once
  (``full``): if windows decoded whole bands, the window would cost as much as the full read;
- ``panels``: arithmetic, no reads: how often the runtime's column panels decode each tile (:func:`tile_decodes`).

Prints one JSON line per measurement (scene megapixels per second: scene pixels / seconds).

    nice -n 10 python benchmarks/safe_read.py --size 4392 --block 1024 --workdir /tmp/cloudrt-safe-bench
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import rasterio

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def make_product(root: Path, n10: int, block: int, seed: int = 0) -> Path:
    """A synthetic L1C SAFE (see the module docstring); reuses ``root`` when already built."""
    import rasterio
    from rasterio.transform import from_origin
    from safe_factory import EPSG, NATIVE, ULX, ULY, _product_xml, _tile_xml
    from scipy import ndimage

    safe = root / f"S2B_MSIL1C_20230823T095559_N0509_R122_T34UCF_20230823T120234_{n10}_{block}.SAFE"
    done = safe / ".complete"
    if done.exists():
        return safe
    granule = "GRANULE/L1C_T34UCF_A033753_20230823T095553"
    (safe / granule / "IMG_DATA").mkdir(parents=True, exist_ok=True)
    (safe / "MTD_MSIL1C.xml").write_text(_product_xml("05.09", granule, -1000))
    (safe / granule / "MTD_TL.xml").write_text(_tile_xml(n10))
    rng = np.random.default_rng(seed)
    for b, r in NATIVE:
        n = n10 * 10 // r
        coarse = rng.uniform(1500, 4500, (max(2, n // 64), max(2, n // 64)))
        field = ndimage.zoom(coarse, n / coarse.shape[0], order=1)[:n, :n]
        a = np.clip(field + rng.normal(0, 25, (n, n)), 1001, 65534).astype(np.uint16)
        opts = {"BLOCKXSIZE": block, "BLOCKYSIZE": block} if block else {}
        path = safe / granule / "IMG_DATA" / f"T34UCF_20230823T095559_{b}.jp2"
        with rasterio.open(path, "w", driver="JP2OpenJPEG", width=n, height=n, count=1, dtype="uint16",
                           crs=f"EPSG:{EPSG}", transform=from_origin(ULX, ULY, r, r), QUALITY=100,
                           REVERSIBLE="YES", **opts) as dst:
            dst.write(a, 1)
    done.touch()
    return safe


def runtime_windows(height: int, width: int, tile: int = 256, overlap: int = 32) -> list[tuple[int, int, int, int]]:
    """The optical windows ``(r0, r1, c0, c1)`` that ``run_scene`` reads, recorded with a stub model."""
    from cloudrt.scene import driver

    seen: list[tuple[int, int, int, int]] = []

    class Src:
        nodata, sar_nodata = 0.0, None

        def __init__(self) -> None:
            self.height, self.width = height, width

        def optical(self, r0: int, r1: int, c0: int = 0, c1: int | None = None) -> np.ndarray:
            c1 = width if c1 is None else c1
            seen.append((r0, r1, c0, c1))
            return np.full((13, r1 - r0, c1 - c0), 2000, dtype=np.uint16)

        def sar(self, r0: int, r1: int, c0: int = 0, c1: int | None = None) -> np.ndarray:
            return np.zeros((2, r1 - r0, (width if c1 is None else c1) - c0), dtype=np.float32)

        def mask(self, *a: Any) -> None:
            return None

    class Sink:
        dtype, nodata = np.dtype(np.uint16), 0.0

        def write(self, *a: Any, **k: Any) -> None:
            pass

    stub_w = driver.window_weight
    driver.window_weight = lambda raw, valid, given: (np.zeros(valid.shape, np.float32),  # noqa: ARG005
                                                      np.zeros(valid.shape, np.uint8))
    try:
        driver.run_scene(Src(), lambda o, s: o[:, :13].copy(), Sink(), tile=tile, overlap=overlap, batch=8,
                         threaded=False)
    finally:
        driver.window_weight = stub_w
    return seen


def tile_decodes(n: int, panel: int, tile: int = 256, overlap: int = 32, jp2_tile: int = 1024) -> float:
    """How many times ``run_scene``'s column panels decode each JPEG 2000 tile of an ``n x n`` product, on
    average over all band pixels, when the cache keeps a row of tiles (1.0: each tile decoded once).

    Every panel reads its window (core plus tiling margin and halo) top to bottom, so the tiles under the
    windows' overlaps, and any tile wider than a panel (20 m and 60 m tiles cover 2048 and 6144 columns of
    the 10 m grid), are decoded once per panel that touches them.
    """
    import math

    from cloudrt.scene.driver import WEIGHT_HALO
    from cloudrt.scene.io import BLOCK
    from cloudrt.scene.tiling import panel_cores, panel_window

    cores = panel_cores(n, panel, BLOCK)
    wins = [panel_window(c0, c1, n, tile, overlap, reach=WEIGHT_HALO) if len(cores) > 1 else (0, n)
            for c0, c1 in cores]
    decoded = total = 0.0
    for res, bands in ((10, 4), (20, 6), (60, 3)):
        w = n * 10 // res
        per_row = sum((math.ceil(x1 * 10 / res) - 1) // jp2_tile - (x0 * 10 // res) // jp2_tile + 1 for x0, x1 in wins)
        decoded += w * w * bands * per_row / math.ceil(w / jp2_tile)
        total += w * w * bands
    return decoded / total


def timed_reads(safe: Path, windows: list[tuple[int, int, int, int]], cache_mb: int | None) -> tuple[float, float, int]:
    """Wall and CPU seconds (all threads of this process: GDAL decodes JPEG 2000 tiles in threads) of the reads,
    and the GDAL block cache they ran with: ``cache_mb``, else the runtime's (:func:`gdal_env` with the reader's
    ``cache_bytes``)."""
    from rasterio.windows import Window

    from cloudrt.scene.io import gdal_env
    from cloudrt.scene.safe import SafeReader

    r = SafeReader(safe)
    env = gdal_env(r.cache_bytes) if cache_mb is None else rasterio.Env(GDAL_CACHEMAX=cache_mb * 2**20)
    cache = env.options.get("GDAL_CACHEMAX", 0)
    with env:
        try:
            t0, c0_ = time.perf_counter(), time.process_time()
            for r0, r1, c0, c1 in windows:
                r.read(window=Window(c0, r0, c1 - c0, r1 - r0))
            return time.perf_counter() - t0, time.process_time() - c0_, cache
        finally:
            r.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=4392)
    ap.add_argument("--block", type=int, default=1024)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/cloudrt-safe-bench"))
    ap.add_argument("--modes", default="window,stream,runtime,full,panels")
    ap.add_argument("--cache-mb", type=int, default=None,
                    help="GDAL block cache; default: the runtime's (64 MB + the reader's cache_bytes)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    safe = make_product(args.workdir, args.size, args.block)
    n = args.size
    build_s = time.perf_counter() - t0
    base = {"size": n, "block": args.block, "build_s": round(build_s, 1)}
    for mode in args.modes.split(","):
        if mode == "panels":  # arithmetic only: tile decodes per panel width, for this size and a granule
            from cloudrt.scene.driver import PANEL

            for size in (n, 10980):
                widths = {f"panel {p}": p for p in (PANEL, 4096, 5632)} | {"single pass": size + 256}
                print(json.dumps({"mode": "panels", "size": size, "tile_decodes": {
                    k: round(tile_decodes(size, p), 2) for k, p in widths.items()}}), flush=True)
            continue
        if mode == "window":
            wins = [(n // 2, n // 2 + 256, n // 2, n // 2 + 256)]
        elif mode == "full":
            wins = [(0, n, 0, n)]
        elif mode == "stream":
            wins = [(r, min(n, r + 256), 0, n) for r in range(0, n, 256)]
        else:
            wins = runtime_windows(n, n)
        s, cpu, cache = timed_reads(safe, wins, args.cache_mb)
        read_px = sum((r1 - r0) * (c1 - c0) for r0, r1, c0, c1 in wins)
        print(json.dumps({**base, "mode": mode, "cache_mib": round(cache / 2**20), "windows": len(wins),
                          "seconds": round(s, 2), "cpu_s": round(cpu, 2),
                          "read_amplification": round(read_px / (n * n), 2),
                          "scene_mpx_per_s": round(n * n / s / 1e6, 3) if mode != "window" else None}), flush=True)


if __name__ == "__main__":
    main()
