"""``cloudrt bench-scene``: the whole-scene pipeline against its own floors, measured in one run (issue 12).

1. **Pipeline vs I/O floor** (default 4096 x 4096, identity ONNX model that costs nothing): ``cloudrt infer``'s
   path (:meth:`cloudrt.runtime.Runtime.predict_file`), threaded and single-threaded, against the floor:
   read every S2 and S1 block by rows of tiles and write the optical data as the 13-band output with the same
   codec at its fastest level. Rounds interleave the three, medians. Target: threaded / floor <= 1.5.
2. **Real model vs model alone** (default 2048 x 2048): wall time of the threaded pipeline with the real
   ONNX model against the same backend running the same batches alone (the sizes recorded during the run,
   each on the first real batch of that size), same ONNX Runtime threads. Target <= 1.15.
3. **Scaling** of the pipeline alone (identity model) from 1 to 2 CPUs (the process's CPU affinity), with the
   stage times of the single-threaded pass, and a projection to 16 host cores (Amdahl from the 1 -> 2 CPU
   speed-up, capped by the slowest stage, which threads do not split).

Scenes are synthetic 13-band uint16 / 2-band float32 GeoTIFFs (deflate, tiled), mosaics of the real
SEN12MS-CR patches when the shared data is found, else procedural fields with cloud blobs; they are cached
under the cloudrt cache (``bench-scenes/``). Needs onnx (the ``export`` extra) for the identity model.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

CELL = 256
Log = Callable[[str], None]


def identity_onnx(path: Path, tile: int = 256) -> Path:
    """``optical_clear = optical + 0 * mean_c(sar)`` with the cloudrt contract: reads both inputs, costs ~0."""
    import onnx
    from onnx import TensorProto, helper

    if path.is_file():
        return path
    o = helper.make_tensor_value_info("optical", TensorProto.FLOAT, ["N", 13, tile, tile])
    s = helper.make_tensor_value_info("sar", TensorProto.FLOAT, ["N", 2, tile, tile])
    y = helper.make_tensor_value_info("optical_clear", TensorProto.FLOAT, ["N", 13, tile, tile])
    zero = helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])
    nodes = [helper.make_node("ReduceMean", ["sar"], ["sar_mean"], axes=[1], keepdims=1),
             helper.make_node("Mul", ["sar_mean", "zero"], ["sar_zero"]),
             helper.make_node("Add", ["optical", "sar_zero"], ["optical_clear"])]
    m = helper.make_model(helper.make_graph(nodes, "identity", [o, s], [y], initializer=[zero]),
                          opset_imports=[helper.make_opsetid("", 17)], producer_name="cloudrt-bench")
    m.ir_version = 8
    helper.set_model_props(m, {"tile": str(tile), "precision": "fp32", "preset": "identity (benchmark)"})
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(m, str(path))
    return path


def _cells() -> tuple[list[np.ndarray], list[np.ndarray]] | None:
    """The real (S2 cloudy, S1) 256 x 256 patch pairs of the shared data, or None."""
    import warnings

    import rasterio

    from cloudrt.paths import shared_data_dir

    d = shared_data_dir()
    root = d / "sen12mscr-samples" if d is not None else None
    if root is None or not (root / "s1").is_dir():
        return None
    opt, sar = [], []
    for f in sorted((root / "s2_cloudy").glob("*.tif")):
        g = root / "s1" / f.name
        if g.is_file():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # patches without georeferencing
                with rasterio.open(f) as a, rasterio.open(g) as b:
                    o, s = a.read(), b.read()
            if o.shape[1:] == s.shape[1:] == (CELL, CELL):
                opt.append(o.astype(np.uint16))
                sar.append(np.nan_to_num(s.astype(np.float32), nan=-20.0))
    return (opt, sar) if opt else None


def _rows(cells: list[np.ndarray], r0: int, r1: int, width: int) -> np.ndarray:
    out = np.empty((cells[0].shape[0], r1 - r0, width), dtype=cells[0].dtype)
    for cy in range(r0 // CELL, (r1 - 1) // CELL + 1):
        ya, yb = max(r0, cy * CELL), min(r1, (cy + 1) * CELL)
        for cx in range(-(-width // CELL)):
            rng = np.random.default_rng([1, cy, cx])
            cell = cells[int(rng.integers(len(cells)))]
            cell = cell[:, ::-1] if rng.integers(2) else cell
            cell = cell[:, :, ::-1] if rng.integers(2) else cell
            xa, xb = cx * CELL, min(width, (cx + 1) * CELL)
            out[:, ya - r0 : yb - r0, xa:xb] = cell[:, ya - cy * CELL : yb - cy * CELL, : xb - xa]
    return out


def _procedural(r0: int, r1: int, width: int, sar: bool) -> np.ndarray:
    y = np.arange(r0, r1, dtype=np.float32)[:, None]
    x = np.arange(width, dtype=np.float32)[None, :]
    base = np.sin(x / 97.0) * np.cos(y / 131.0)
    if sar:
        return np.stack([-12 + 4 * base, -19 + 4 * base]).astype(np.float32)
    cloud = np.clip(np.sin(x / 410.0 + 1.3) * np.sin(y / 370.0) * 3 - 1.5, 0, 1)
    return np.clip(np.stack([1200 + 600 * base * (1 + 0.1 * i) + 6000 * cloud for i in range(13)]), 0,
                   10000).astype(np.uint16)


def synthetic_pair(size: int, folder: Path) -> tuple[Path, Path]:
    """Cached ``s2-SIZE.tif`` (13 x uint16) and ``s1-SIZE.tif`` (2 x float32) on one UTM 10 m grid."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    op, sp = folder / f"s2-{size}.tif", folder / f"s1-{size}.tif"
    if op.is_file() and sp.is_file():
        return op, sp
    folder.mkdir(parents=True, exist_ok=True)
    cells = _cells()
    common = dict(driver="GTiff", width=size, height=size, crs="EPSG:32633", tiled=True, blockxsize=CELL,
                  blockysize=CELL, transform=from_origin(300000, 5000040, 10, 10), compress="deflate", zlevel=1,
                  BIGTIFF="IF_SAFER", num_threads="ALL_CPUS")
    to, ts = op.with_suffix(".partial.tif"), sp.with_suffix(".partial.tif")
    with rasterio.open(to, "w", count=13, dtype="uint16", predictor=2, **common) as a, \
            rasterio.open(ts, "w", count=2, dtype="float32", predictor=3, **common) as b:
        for r0 in range(0, size, 512):
            r1 = min(size, r0 + 512)
            w = Window(0, r0, size, r1 - r0)
            a.write(_rows(cells[0], r0, r1, size) if cells else _procedural(r0, r1, size, False), window=w)
            b.write(_rows(cells[1], r0, r1, size) if cells else _procedural(r0, r1, size, True), window=w)
    os.replace(to, op)
    os.replace(ts, sp)
    return op, sp


def io_floor(optical: Path, sar: Path, out: Path, compress: str) -> float:
    """Seconds to read every S2 and S1 block (rows of tiles) and write the S2 rows as a 13-band output with
    the runtime's profile and ``compress`` at its fastest level: what any pipeline must at least do."""
    from rasterio.windows import Window

    from cloudrt.scene.io import BLOCK, gdal_env, open_optical, open_sar, open_writer, output_profile

    level = {"deflate": 1, "zstd": 1}.get(compress)
    t = time.perf_counter()
    with gdal_env(), open_optical(optical) as o, open_sar(sar) as s:
        prof = output_profile(o, 13, o.dtypes[0], o.nodata, compress=compress, level=level)
        with open_writer(out, prof) as dst:
            for r0 in range(0, o.height, BLOCK):
                w = Window(0, r0, o.width, min(BLOCK, o.height - r0))
                s.read(window=w)
                dst.write(o.read(window=w), window=w)
    return time.perf_counter() - t


def timed_runtime(rt: Any, record: bool = False) -> dict[str, Any]:
    """Wrap ``rt.backend.run`` to sum its seconds and calls; with ``record``, keep each batch size and the
    first batch of every size (to rerun the model alone on the same batches)."""
    inner = rt.backend.run
    acc: dict[str, Any] = {"model_s": 0.0, "calls": 0, "sizes": [], "first": {}}

    def run(o: np.ndarray, s: np.ndarray) -> np.ndarray:
        t0 = time.perf_counter()
        out = inner(o, s)
        acc["model_s"] += time.perf_counter() - t0
        acc["calls"] += 1
        if record:
            acc["sizes"].append(o.shape[0])
            acc["first"].setdefault(o.shape[0], (o.copy(), s.copy()))
        return out

    rt.backend.run = run
    acc["inner"] = inner
    return acc


def pipeline_once(rt: Any, optical: Path, sar: Path, out: Path, compress: str) -> float:
    t = time.perf_counter()
    rt.predict_file(optical, sar, out, overwrite=True, compress=compress)
    return time.perf_counter() - t


@contextlib.contextmanager
def cpus(n: int | None) -> Iterator[int]:
    """Restrict every thread of this process (and the threads they start) to the first ``n`` usable CPUs."""
    if n is None or not hasattr(os, "sched_setaffinity"):
        yield len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return
    before = os.sched_getaffinity(0)
    use = set(sorted(before)[:n])

    def apply(mask: set[int]) -> None:
        for tid in os.listdir("/proc/self/task"):
            with contextlib.suppress(OSError):
                os.sched_setaffinity(int(tid), mask)

    apply(use)
    try:
        yield len(use)
    finally:
        apply(before)


def _median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def stage_times(rt: Any, optical: Path, sar: Path, out: Path, compress: str) -> dict[str, float]:
    """Seconds per stage of one single-threaded pass: reading (S2, S1, S2 re-read for the mask), model,
    writing (casting excluded, compression included), and the rest (normalize, tile, blend, mask, composite)."""
    from cloudrt.scene import sinks, sources

    spent = {"read": 0.0, "write": 0.0}

    def timed(fn: Callable[..., Any], key: str) -> Callable[..., Any]:
        def wrapper(*a: Any, **k: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[key] += time.perf_counter() - t0
        return wrapper

    patches = [(sources.RasterSource, name, "read") for name in ("optical", "sar")]
    patches.append((sinks.RasterSink, "write", "write"))
    saved = [(cls, name, getattr(cls, name)) for cls, name, _ in patches]
    for cls, name, key in patches:
        setattr(cls, name, timed(getattr(cls, name), key))
    acc = timed_runtime(rt)
    try:
        rt.threaded = False
        total = pipeline_once(rt, optical, sar, out, compress)
    finally:
        for cls, name, fn in saved:
            setattr(cls, name, fn)
        rt.backend.run = acc["inner"]
    rest = total - spent["read"] - spent["write"] - acc["model_s"]
    return {"total_s": total, "read_s": spent["read"], "model_s": acc["model_s"], "write_s": spent["write"],
            "compute_s": rest}


def _pipeline_vs_floor(model: Path, size: int, folder: Path, tmp: Path, compress: str, rounds: int,
                       log: Log) -> dict[str, Any]:
    from cloudrt.runtime import Runtime

    o, s = synthetic_pair(size, folder)
    rt = Runtime(model, backend="onnxruntime", device="cpu")
    times: dict[str, list[float]] = {"floor": [], "threaded": [], "single": []}
    order = list(times)
    for r in range(rounds):
        for key in order[r % 3:] + order[: r % 3]:  # interleaved, rotated per round
            if key == "floor":
                times[key].append(io_floor(o, s, tmp / "floor.tif", compress))
            else:
                rt.threaded = key == "threaded"
                times[key].append(pipeline_once(rt, o, s, tmp / f"{key}.tif", compress))
            log(f"bench-scene: {size} {key} {times[key][-1]:.2f} s")
    med = {k: _median(v) for k, v in times.items()}
    stages = stage_times(rt, o, s, tmp / "stages.tif", compress)
    rt.close()
    return {"size": size, "rounds": rounds, "compress": compress, "seconds": times,
            "floor_s": med["floor"], "threaded_s": med["threaded"], "single_s": med["single"],
            "ratio_threaded": med["threaded"] / med["floor"], "ratio_single": med["single"] / med["floor"],
            "stages_single": stages}


def _model_vs_alone(model: Path, size: int, folder: Path, tmp: Path, compress: str, log: Log) -> dict[str, Any]:
    from cloudrt.runtime import Runtime

    o, s = synthetic_pair(size, folder)
    rt = Runtime(model, backend="onnxruntime", device="cpu")
    acc = timed_runtime(rt, record=True)
    wall = pipeline_once(rt, o, s, tmp / "real.tif", compress)
    log(f"bench-scene: {size} real model {wall:.2f} s ({acc['calls']} calls, {acc['model_s']:.2f} s inside)")
    alone = 0.0
    for n in acc["sizes"]:  # the same batches again, the model alone
        a, b = acc["first"][n]
        t = time.perf_counter()
        acc["inner"](a, b)
        alone += time.perf_counter() - t
    rt.close()
    return {"size": size, "model": str(model), "wall_s": wall, "model_in_run_s": acc["model_s"],
            "model_alone_s": alone, "calls": acc["calls"], "tiles": int(sum(acc["sizes"])),
            "ratio": wall / alone, "backend_batch": rt.batch}


def _scaling(model: Path, size: int, folder: Path, tmp: Path, compress: str, rounds: int, log: Log,
             stages: dict[str, float] | None) -> dict[str, Any]:
    from cloudrt.runtime import Runtime

    o, s = synthetic_pair(size, folder)
    out: dict[str, Any] = {"size": size, "seconds": {}}
    for n in (1, 2):
        with cpus(n) as got:
            rt = Runtime(model, backend="onnxruntime", device="cpu")
            out["seconds"][got] = [pipeline_once(rt, o, s, tmp / "scale.tif", compress) for _ in range(rounds)]
            rt.close()
            log(f"bench-scene: {size} identity, {got} CPU(s): {out['seconds'][got]}")
    t1 = _median(out["seconds"].get(1, [float("nan")]))
    t2 = _median(out["seconds"].get(2, [float("nan")]))
    speedup = t1 / t2
    p = min(1.0, max(0.0, 2.0 * (1.0 - t2 / t1)))  # Amdahl: t2 / t1 = (1 - p) + p / 2
    t16 = t1 * ((1 - p) + p / 16)
    out.update(t1_s=t1, t2_s=t2, speedup_1_to_2=speedup, parallel_fraction=p, amdahl_16_s=t16)
    if stages:  # the threads overlap stages but do not split one: the slowest stage bounds the time
        slowest = max(stages["read_s"], stages["write_s"], stages["compute_s"] + stages["model_s"])
        out["stage_bound_s"] = slowest
        out["projected_16_s"] = max(t16, slowest)
    return out


def run_scene_bench(model: str | os.PathLike | None = None, *, size: int = 4096, model_size: int = 2048,
                    compress: str = "deflate", rounds: int = 2, threads: int | None = None,
                    parts: tuple[str, ...] = ("pipeline", "model", "scaling"), folder: Path | None = None,
                    log: Log = lambda _m: None) -> dict[str, Any]:
    """Run the parts of the scene bench (module docstring); returns a JSON-able dict."""
    from cloudrt.paths import cache_dir

    folder = folder or cache_dir() / "bench-scenes"
    ncpu = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = threads or ncpu
    before = os.environ.get("CLOUDRT_ORT_THREADS")
    os.environ["CLOUDRT_ORT_THREADS"] = str(threads)  # the same ONNX Runtime threads for every run
    try:
        return _run_parts(model, size, model_size, compress, rounds, threads, ncpu, parts, folder, log)
    finally:
        if before is None:
            os.environ.pop("CLOUDRT_ORT_THREADS", None)
        else:
            os.environ["CLOUDRT_ORT_THREADS"] = before


def _run_parts(model: str | os.PathLike | None, size: int, model_size: int, compress: str, rounds: int,
               threads: int, ncpu: int, parts: tuple[str, ...], folder: Path, log: Log) -> dict[str, Any]:
    from cloudrt.paths import DEFAULT_ONNX

    identity = identity_onnx(folder / "identity-256.onnx")
    real = Path(model) if model is not None else DEFAULT_ONNX
    res: dict[str, Any] = {"system": {"date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                                      "cpus": ncpu, "ort_threads": threads, "load_before": os.getloadavg()[0],
                                      "compress": compress}}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=folder) as td:
        tmp = Path(td)
        if "pipeline" in parts:
            res["pipeline"] = _pipeline_vs_floor(identity, size, folder, tmp, compress, rounds, log)
        if "model" in parts:
            res["model"] = _model_vs_alone(real, model_size, folder, tmp, compress, log)
        if "scaling" in parts:
            stages = res.get("pipeline", {}).get("stages_single")
            res["scaling"] = _scaling(identity, size, folder, tmp, compress, rounds, log, stages)
    res["system"].update(load_after=os.getloadavg()[0], elapsed_s=time.perf_counter() - t0)
    return res


def format_report(res: dict[str, Any]) -> str:
    """Markdown lines for the terminal and RESULTS.md."""
    s = res["system"]
    lines = [f"cloudrt bench-scene, {s['date_utc']}, {s['cpus']} CPUs, ONNX Runtime threads {s['ort_threads']}, "
             f"codec {s['compress']}, load {s['load_before']:.2f} -> {s['load_after']:.2f}, "
             f"{s['elapsed_s']:.0f} s", ""]
    if "pipeline" in res:
        p = res["pipeline"]
        st = p["stages_single"]
        lines += [f"| {p['size']} x {p['size']}, identity model | seconds (median of {p['rounds']}) | / floor |",
                  "|---|---|---|",
                  f"| I/O floor (read all S2+S1 blocks, write 13 bands, {p['compress']} fastest) | "
                  f"{p['floor_s']:.2f} | 1.00 |",
                  f"| pipeline, threaded (target <= 1.5) | {p['threaded_s']:.2f} | **{p['ratio_threaded']:.2f}** |",
                  f"| pipeline, single thread | {p['single_s']:.2f} | {p['ratio_single']:.2f} |", "",
                  f"Single-thread stages: read {st['read_s']:.2f} s, model {st['model_s']:.2f} s, normalize/tile/"
                  f"blend/mask/composite/cast {st['compute_s']:.2f} s, write {st['write_s']:.2f} s "
                  f"(total {st['total_s']:.2f} s).", ""]
    if "model" in res:
        m = res["model"]
        lines += [f"Real model, {m['size']} x {m['size']}: wall {m['wall_s']:.2f} s, model alone on the same "
                  f"{m['tiles']} tiles ({m['calls']} calls) {m['model_alone_s']:.2f} s: **{m['ratio']:.3f}x** "
                  f"(target <= 1.15); inside the run the model took {m['model_in_run_s']:.2f} s.", ""]
    if "scaling" in res:
        c = res["scaling"]
        extra = (f", slowest stage {c['stage_bound_s']:.2f} s, so projected {c['projected_16_s']:.2f} s"
                 if "stage_bound_s" in c else "")
        lines += [f"Pipeline alone (identity), {c['size']} x {c['size']}: 1 CPU {c['t1_s']:.2f} s, 2 CPUs "
                  f"{c['t2_s']:.2f} s (x{c['speedup_1_to_2']:.2f}); Amdahl with p = {c['parallel_fraction']:.2f}: "
                  f"16 cores {c['amdahl_16_s']:.2f} s{extra}."]
    return "\n".join(lines)
