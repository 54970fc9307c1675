"""Output codec choice for cloudrt's 13-band uint16 GeoTIFFs: write speed, read speed and size per codec.

The scene is a mosaic of the real 256 x 256 Sentinel-2 L1C patches in the shared data (``s2_cloudy/`` and
``s2/`` of every folder, sorted; flipped copies when the mosaic needs more cells than there are patches),
so the codecs see real DN statistics. Each codec writes the scene the way the runtime does (tiled 256 x 256,
pixel-interleaved, whole rows of tiles per write, ``NUM_THREADS`` as given) and reads it back by 256-row
windows; rounds are interleaved across codecs (round r visits them in an order rotated by r), medians.

    python benchmarks/codec_bench.py                      # 2048 x 2048, 3 rounds, 1 GDAL thread
    python benchmarks/codec_bench.py --size 4096 --threads ALL_CPUS --json codecs.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

# (name, compress, level, predictor): GDAL creation options ZLEVEL / ZSTD_LEVEL; PREDICTOR=2 is horizontal
# differencing, the one that helps integer imagery
CODECS: tuple[tuple[str, str | None, int | None, int], ...] = (
    ("none", None, None, 1),
    ("deflate-1", "deflate", 1, 1),
    ("deflate-1 p2", "deflate", 1, 2),
    ("deflate-6 p2", "deflate", 6, 2),
    ("zstd-1", "zstd", 1, 1),
    ("zstd-1 p2", "zstd", 1, 2),
    ("zstd-9 p2", "zstd", 9, 2),
    ("lzw", "lzw", None, 1),
    ("lzw p2", "lzw", None, 2),
)
BLOCK = 256


def find_patches(data: Path) -> list[Path]:
    """Every 13-band 256 x 256 uint16 S2 patch under ``data`` (cloudy and clear), sorted."""
    import rasterio

    out = []
    for p in sorted(data.rglob("*.tif")):
        if "s1" in p.parts or "cloudmask" in p.parts or "reference" in p.parts:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = rasterio.open(p)
        with ds:
            if ds.count == 13 and ds.dtypes[0] == "uint16" and (ds.height, ds.width) == (BLOCK, BLOCK):
                out.append(p)
    return out


def mosaic(patches: list[Path], size: int) -> np.ndarray:
    """(13, size, size) uint16 from the patches, cell by cell; repeats are flipped so no tile repeats."""
    import rasterio

    if not patches:
        raise SystemExit("no 13-band 256 x 256 uint16 patches found; pass --data DIR")
    cells = size // BLOCK
    img = np.empty((13, cells * BLOCK, cells * BLOCK), np.uint16)
    for k in range(cells * cells):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with rasterio.open(patches[k % len(patches)]) as ds:
                a = ds.read()
        rep = k // len(patches)
        a = a[:, ::-1] if rep & 1 else a
        a = a[:, :, ::-1] if rep & 2 else a
        a = np.rot90(a, rep // 4, axes=(1, 2)) if rep >= 4 else a
        y, x = divmod(k, cells)
        img[:, y * BLOCK : (y + 1) * BLOCK, x * BLOCK : (x + 1) * BLOCK] = a
    return img


def profile(size: int, compress: str | None, level: int | None, predictor: int, threads: str) -> dict[str, Any]:
    p: dict[str, Any] = {"driver": "GTiff", "width": size, "height": size, "count": 13, "dtype": "uint16",
                         "tiled": True, "blockxsize": BLOCK, "blockysize": BLOCK, "num_threads": threads}
    if compress:
        p.update(compress=compress, predictor=predictor)
        if level is not None:
            p["zlevel" if compress == "deflate" else "zstd_level"] = level
    return p


def write(path: Path, img: np.ndarray, prof: dict[str, Any]) -> float:
    import rasterio
    from rasterio.windows import Window

    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with rasterio.open(path, "w", **prof) as dst:
            for r0 in range(0, img.shape[1], BLOCK):
                r1 = min(img.shape[1], r0 + BLOCK)
                dst.write(img[:, r0:r1], window=Window(0, r0, img.shape[2], r1 - r0))
    return time.perf_counter() - t


def read(path: Path, threads: str) -> float:
    import rasterio
    from rasterio.windows import Window

    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with rasterio.open(path, num_threads=threads) as ds:
            for r0 in range(0, ds.height, BLOCK):
                ds.read(window=Window(0, r0, ds.width, min(BLOCK, ds.height - r0)))
    return time.perf_counter() - t


def run(img: np.ndarray, rounds: int, threads: str, tmp: Path) -> list[dict[str, Any]]:
    """Interleaved rounds over :data:`CODECS`; checks every read-back equals the input."""
    size = img.shape[1]
    raw = img.nbytes
    times: dict[str, dict[str, list[float]]] = {c[0]: {"w": [], "r": []} for c in CODECS}
    sizes: dict[str, int] = {}
    import rasterio

    for r in range(rounds):
        order = CODECS[r % len(CODECS):] + CODECS[: r % len(CODECS)]
        for name, comp, level, pred in order:
            path = tmp / f"{name.replace(' ', '_')}.tif"
            times[name]["w"].append(write(path, img, profile(size, comp, level, pred, threads)))
            times[name]["r"].append(read(path, threads))
            sizes[name] = path.stat().st_size
            if r == 0:  # lossless check, once per codec
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    with rasterio.open(path) as ds:
                        same = np.array_equal(ds.read(), img)
                    if not same:
                        raise SystemExit(f"{name}: read-back differs from the input")
            path.unlink()
    rows = []
    for name, comp, level, pred in CODECS:
        w, rd = float(np.median(times[name]["w"])), float(np.median(times[name]["r"]))
        rows.append({"codec": name, "compress": comp or "none", "level": level, "predictor": pred,
                     "write_s": round(w, 3), "write_mb_s": round(raw / w / 1e6, 1), "read_s": round(rd, 3),
                     "read_mb_s": round(raw / rd / 1e6, 1), "size_mb": round(sizes[name] / 1e6, 2),
                     "ratio": round(raw / sizes[name], 3)})
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    cols = ["codec", "predictor", "write_s", "write_mb_s", "read_s", "read_mb_s", "size_mb", "ratio"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=None, help="folder of S2 patches (default: the shared data)")
    ap.add_argument("--size", type=int, default=2048, help="mosaic side, a multiple of 256")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", default="1", help="GDAL NUM_THREADS for writing and reading (or ALL_CPUS)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    import rasterio

    data = args.data
    if data is None:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from cloudrt.paths import shared_data_dir

        data = shared_data_dir()
        if data is None:
            raise SystemExit("shared data not found; pass --data DIR")
    patches = find_patches(data)
    img = mosaic(patches, args.size)
    load = os.getloadavg()[0]
    with rasterio.Env(GDAL_CACHEMAX=64 * 2**20), tempfile.TemporaryDirectory() as tmp:
        rows = run(img, args.rounds, args.threads, Path(tmp))
    info = {"date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "host": platform.node(),
            "cpus": os.cpu_count(), "gdal": rasterio.__gdal_version__, "rasterio": rasterio.__version__,
            "size": args.size, "patches": len(patches), "raw_mb": round(img.nbytes / 1e6, 1),
            "rounds": args.rounds, "threads": args.threads, "load_before": round(load, 2),
            "load_after": round(os.getloadavg()[0], 2)}
    print(f"{info['date_utc']}, GDAL {info['gdal']}, {args.size} x {args.size} x 13 uint16 "
          f"({info['raw_mb']} MB raw, mosaic of {len(patches)} real patches), NUM_THREADS={args.threads}, "
          f"{args.rounds} interleaved rounds, medians; load {info['load_before']} -> {info['load_after']}")
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps({"system": info, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
