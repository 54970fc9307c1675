"""The bench run: plan the paths, prepare the runners, warm up, then time interleaved rounds per batch size
and compare every path with eager FP32 on the same inputs (the method is in :mod:`cloudrt.bench`)."""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cloudrt._deps import has_module
from cloudrt.bench.load import ModelSpec, count_flops, export_paths, load_model, onnx_meta
from cloudrt.bench.probe import (
    ALL_PATHS,
    BASELINE,
    DEFAULT_TILE,
    Log,
    first_line,
    gpu_peak_tflops,
    match_paths,
    parse_batches,
    path_tokens,
    plan_paths,
    quiet,
    resolve_device,
    system_info,
    usable_cpus,
)
from cloudrt.bench.runners import Runner, make_inputs, make_runner, onnx_key
from cloudrt.errors import InputError


def run_bench(
    model: Any = None, *, device: str | None = "auto", tile: int = DEFAULT_TILE,
    batches: str | Iterable[int] | None = None, backends: str | Iterable[str] | None = None,
    warmup: int | None = None, rounds: int = 5, threads: int | None = None, seed: int = 0, log: Log = quiet,
) -> dict[str, Any]:
    """Benchmark every available path on the same inputs; returns ``{"system": {...}, "rows": [...]}``.

    ``model``: see :func:`load_model`. ``device``: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``. ``batches``:
    ``"1,4,8"`` or ints. ``backends``: see :func:`match_paths` (eager FP32 always runs: it is the
    reference). ``warmup``: untimed calls per path and batch (default 1 on CPU, 3 on GPU). ``rounds``:
    timed, interleaved rounds (median reported). ``threads``: CPU threads for torch and ONNX Runtime
    alike (default: torch's current count, else the usable CPUs).
    """
    t_start = time.perf_counter()
    omp_policy = _passive_openmp()
    bs = parse_batches(batches)
    if rounds < 1:
        raise InputError(f"--rounds {rounds} must be >= 1.")
    dev = resolve_device(device)
    on_gpu = dev.startswith("cuda")
    warmup = (3 if on_gpu else 1) if warmup is None else int(warmup)
    if warmup < 0:
        raise InputError(f"--warmup {warmup} must be >= 0.")
    explicit = path_tokens(backends) is not None
    selected = match_paths(backends)
    spec = load_model(model, seed=seed, log=log)

    # tile: a multiple of the model's size divisor; an ONNX file fixes it
    if spec.module is not None:
        div = int(getattr(spec.module, "size_divisor", 1))
        if tile < div or tile % div:
            raise InputError(f"--tile {tile} is not a positive multiple of the model's size divisor {div}; "
                             f"pass --tile {max(div, tile - tile % div)}.")
    else:
        assert spec.onnx is not None
        ft = onnx_meta(spec.onnx)["_tile"]
        if ft.isdigit() and int(ft) != tile:
            raise InputError(f"{spec.onnx.name} was exported for {ft}x{ft} tiles; pass --tile {ft}.")

    torch_threads_before = None
    if has_module("torch"):
        import torch

        torch_threads_before = torch.get_num_threads()
        threads = int(threads or torch_threads_before)
        torch.set_num_threads(threads)
    threads = int(threads or usable_cpus())
    try:
        result = _run(spec, dev, on_gpu, tile, bs, selected, explicit, warmup, rounds, threads, seed, log, t_start)
        result["system"]["omp_wait_policy"] = omp_policy
        return result
    finally:
        if torch_threads_before is not None:
            import torch

            torch.set_num_threads(torch_threads_before)


def _passive_openmp() -> str:
    """Make torch's OpenMP pool wait passively, like ONNX Runtime's pool with ``allow_spinning=0``.

    libgomp reads ``OMP_WAIT_POLICY`` when torch is first imported, so this only takes effect if torch is
    not imported yet (``cloudrt bench`` imports it after this). With the default active (spinning) wait,
    eager torch collapses on a shared CPU: a parallel region waits for a descheduled thread while its
    partner spins (measured here: 0.5 s -> 1 to 12 s per carf-small tile with 2 threads and one other busy
    process on 2 cores). Returns the policy in effect, for the report.
    """
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        return os.environ["OMP_WAIT_POLICY"]
    return f"{os.environ.get('OMP_WAIT_POLICY', 'unset (spinning)')} (torch was imported before the bench)"


def _run(spec: ModelSpec, dev: str, on_gpu: bool, tile: int, bs: list[int], selected: list[tuple[str, str]],
         explicit: bool, warmup: int, rounds: int, threads: int, seed: int, log: Log,
         t_start: float) -> dict[str, Any]:
    system = system_info(dev, threads)
    if spec.module is not None:
        spec.module = spec.module.to("cpu")
        system["parameters"] = int(sum(p.numel() for p in spec.module.parameters()))
    run_paths, skipped = plan_paths(selected, dev, spec.module is not None, spec.onnx is not None, explicit)
    flops = count_flops(spec.module, tile) if spec.module is not None and has_module("torch") else None
    onnx_files, runners = _prepare(spec, run_paths, skipped, dev, on_gpu, tile, threads, max(bs), log)
    peak_tf: dict[str, float | None] = {}
    if on_gpu and "gpu" in system:
        tf32 = bool(system.get("cudnn_allow_tf32"))
        peak_tf = {p: gpu_peak_tflops(system["gpu"], p, tf32) for p in ("fp32", "fp16")}
        system["peak_tflops"] = peak_tf
    rows: list[dict[str, Any]] = []
    for b in bs:
        rows += _measure_batch(runners, b, tile, seed, dev, warmup, rounds, flops, peak_tf, skipped, log)
    for r_ in runners.values():
        with contextlib.suppress(Exception):
            r_.close()
    order_key = {p: i for i, p in enumerate(ALL_PATHS)}
    rows.sort(key=lambda r: (r["batch"], order_key.get((r["backend"], r["precision"]), 99)))
    system.update({
        "model": spec.info,
        "tile": tile,
        "batches": bs,
        "warmup": warmup,
        "rounds": rounds,
        "seed": seed,
        "inputs": "uniform [0, 1) float32 in model units, one fixed batch per batch size (numpy seed)",
        "baseline": f"torch-eager fp32 on {dev}",
        "max_err_units": "model output units (reflectance / 10000, range [0, 1])",
        "timing": "median of interleaved rounds; each call synchronized; rows with io=host include "
                  "host<->device copies",
        "flops_per_tile": flops,
        "flops_counter": "torch.utils.flop_counter.FlopCounterMode (conv + matmul, 2 FLOPs per MAC)"
        if flops else None,
        "onnx_files": {k: str(v) for k, v in onnx_files.items()},
        "ort_session": "ORT_ENABLE_ALL, intra_op_num_threads=threads, inter_op 1, sequential, mem pattern + "
                       "arena on, allow_spinning 0",
        "torch_fp16": "torch.autocast(float16)",
        "skipped": skipped,
        "elapsed_s": round(time.perf_counter() - t_start, 1),
    })
    with contextlib.suppress(OSError, AttributeError):
        system["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    return {"system": system, "rows": rows}


def _skip(skipped: list[dict[str, Any]], path: tuple[str, str], dev: str, reason: str, batch: int | None = None
          ) -> None:
    entry: dict[str, Any] = {"backend": path[0], "precision": path[1], "device": dev}
    if batch is not None:
        entry["batch"] = batch
    skipped.append({**entry, "reason": reason})


def _prepare(spec: ModelSpec, run_paths: list[tuple[str, str]], skipped: list[dict[str, Any]], dev: str,
             on_gpu: bool, tile: int, threads: int, max_batch: int, log: Log
             ) -> tuple[dict[str, Path], dict[tuple[str, str], Runner]]:
    """Export the ONNX files the paths need and make their runners; a path that cannot start is skipped."""
    onnx_files: dict[str, Path] = {}
    for prec in sorted({onnx_key(q) for q in run_paths if onnx_key(q)}):
        try:
            onnx_files[prec] = export_paths(spec, tile, prec == "fp16", log)
        except Exception as e:  # noqa: BLE001 - an export failure skips its rows, with the reason
            for q in [q for q in run_paths if onnx_key(q) == prec]:
                _skip(skipped, q, dev, f"ONNX {prec} export failed: {first_line(e)}")
            run_paths = [q for q in run_paths if onnx_key(q) != prec]
    if spec.module is not None and on_gpu:
        spec.module = spec.module.to(dev)
    runners: dict[tuple[str, str], Runner] = {}
    for path in run_paths:
        try:
            runners[path] = make_runner(path, spec, dev, tile, threads, max_batch, onnx_files, log)
        except Exception as e:  # noqa: BLE001 - a path that cannot start is skipped with its reason
            _skip(skipped, path, dev, first_line(e))
    return onnx_files, runners


def _measure_batch(runners: dict[tuple[str, str], Runner], b: int, tile: int, seed: int, dev: str, warmup: int,
                   rounds: int, flops: int | None, peak_tf: dict[str, float | None],
                   skipped: list[dict[str, Any]], log: Log) -> list[dict[str, Any]]:
    """Warm up and time every live path on one batch size (interleaved rounds); one row per path."""
    optical, sar = make_inputs(b, tile, seed)
    live: dict[tuple[str, str], Runner] = {}
    for path, r in runners.items():
        try:
            r.prepare(optical, sar)
            live[path] = r
        except Exception as e:  # noqa: BLE001
            _skip(skipped, path, dev, first_line(e), b)
    log(f"batch {b}: {len(live)} paths, {warmup} warm-up + {rounds} interleaved rounds")
    order = list(live)
    for _ in range(warmup):
        for path in list(order):
            try:
                live[path]()
            except Exception as e:  # noqa: BLE001 - e.g. out of memory at this batch
                _skip(skipped, path, dev, first_line(e), b)
                order.remove(path)
    times: dict[tuple[str, str], list[float]] = {p: [] for p in order}
    for r in range(rounds):
        k = r % max(1, len(order))
        for path in order[k:] + order[:k]:
            if path not in times:
                continue
            t0 = time.perf_counter()
            try:
                live[path]()
            except Exception as e:  # noqa: BLE001
                _skip(skipped, path, dev, first_line(e), b)
                del times[path]
                continue
            times[path].append(time.perf_counter() - t0)
    order = [p for p in order if p in times]
    outs = {p: live[p].output() for p in order}
    ref = outs.get(BASELINE)
    base_ms = statistics.median(times[BASELINE]) * 1e3 if BASELINE in times else None
    rows = []
    for path in order:
        ms = statistics.median(times[path]) * 1e3
        tps = b / (ms / 1e3)
        row: dict[str, Any] = {
            "backend": path[0], "precision": path[1], "device": dev, "batch": b, "tile": tile,
            "ms_per_batch": round(ms, 3), "tiles_per_s": round(tps, 3),
            "mpix_per_s": round(tps * tile * tile / 1e6, 4),
            "speedup": round(base_ms / ms, 3) if base_ms else None,
            "max_err": (float(np.max(np.abs(outs[path] - ref))) if ref is not None else None),
            "provider": live[path].provider, "io": live[path].io, "rounds": len(times[path]),
            "ms_min": round(min(times[path]) * 1e3, 3),
            "ms_iqr": round(_iqr(times[path]) * 1e3, 3),
        }
        if flops:
            row["gflops"] = round(flops * tps / 1e9, 2)
            pk = peak_tf.get(path[1])
            row["peak_share"] = round(flops * tps / (pk * 1e12), 4) if pk else None
        rows.append(row)
    return rows


def _iqr(xs: Sequence[float]) -> float:
    if len(xs) < 2:
        return 0.0
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[2] - q[0]
