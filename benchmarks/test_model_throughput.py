"""Model throughput per backend and precision (pytest-benchmark), and the interleaved ``cloudrt bench`` table.

``test_path`` times one path at one batch size with pytest-benchmark (grouped by batch, so its
comparison table ranks the paths); ``extra_info`` carries tiles/s, megapixels/s, GFLOP/s and ``max_err``
against eager FP32 on the same input. ``test_interleaved`` runs :func:`cloudrt.bench.run_bench`, the
measurement of ``cloudrt bench`` (rounds interleaved across paths, so the speedups are like for like),
prints its table and stores its rows in ``extra_info``.

Targets (recorded, not asserted; see RESULTS.md): CPU ONNX Runtime FP32 >= 1.5x eager tiles/s. Asserted,
because it is accuracy, not speed: ONNX Runtime FP32 max_err <= 1e-4.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import pytest

from cloudrt import bench
from cloudrt._deps import has_module
from cloudrt.bench.probe import usable_cpus

FP32_MAX_ERR = 1e-4


@pytest.fixture(scope="module")
def plan(settings: Any, spec: Any) -> tuple[list, dict]:
    run, skipped = bench.plan_paths(bench.ALL_PATHS, settings.device, spec.module is not None, spec.onnx is not None,
                                    explicit=False)
    return run, {(s["backend"], s["precision"]): s["reason"] for s in skipped}


@pytest.fixture(scope="module")
def threads() -> int:
    if has_module("torch"):
        import torch

        return torch.get_num_threads()
    return usable_cpus()


@pytest.fixture(scope="module")
def runners() -> Any:
    """One runner per path for the module (a compiled model or engine is built once)."""
    cache: dict[tuple[str, str], Any] = {}
    yield cache
    for r in cache.values():
        r.close()


@pytest.fixture(scope="module")
def flops(spec: Any, settings: Any) -> int | None:
    return bench.count_flops(spec.module, settings.tile) if spec.module is not None else None


@pytest.fixture(scope="module")
def reference() -> dict[int, np.ndarray]:
    """Cache of eager FP32 outputs per batch size, filled by :func:`_reference`."""
    return {}


def _reference(spec: Any, settings: Any, batch: int, cache: dict) -> np.ndarray | None:
    if spec.module is None or not has_module("torch"):
        return None
    if batch not in cache:
        import torch

        o, s = bench.make_inputs(batch, settings.tile)
        m = spec.module.to(settings.device)
        with torch.inference_mode():
            cache[batch] = m(torch.from_numpy(o).to(settings.device), torch.from_numpy(s).to(settings.device)) \
                .float().cpu().numpy()
    return cache[batch]


@pytest.mark.parametrize("path", bench.ALL_PATHS, ids=[f"{b}-{p}" for b, p in bench.ALL_PATHS])
def test_path(benchmark: Any, path: tuple[str, str], batch: int, settings: Any, spec: Any, plan: tuple,
              runners: dict, threads: int, flops: int | None, reference: dict, onnx_files: dict) -> None:
    run, skipped = plan
    if path not in run:
        pytest.skip(skipped.get(path, "not selected"))
    if path not in runners:
        files = {k: v() for k, v in onnx_files.items()}
        if spec.module is not None and settings.device.startswith("cuda"):
            spec.module.to(settings.device)
        runners[path] = bench.make_runner(path, spec, settings.device, settings.tile, threads,
                                          max(settings.batches), files)
    r = runners[path]
    o, s = bench.make_inputs(batch, settings.tile)
    r.prepare(o, s)
    benchmark.group = f"model {settings.device} tile {settings.tile} batch {batch}"
    warm = 3 if settings.device.startswith("cuda") else 1
    benchmark.pedantic(r, rounds=settings.rounds, warmup_rounds=warm, iterations=1)
    med = benchmark.stats.stats.median
    tps = batch / med
    ref = _reference(spec, settings, batch, reference)
    err = float(np.abs(r.output() - ref).max()) if ref is not None else None
    benchmark.extra_info.update({
        "backend": path[0], "precision": path[1], "device": settings.device, "batch": batch, "tile": settings.tile,
        "ms_per_batch": med * 1e3, "tiles_per_s": tps, "mpix_per_s": tps * settings.tile ** 2 / 1e6,
        "max_err": err, "provider": r.provider, "io": r.io, "threads": threads,
        "gflops": flops * tps / 1e9 if flops else None,
    })
    if path[1] == "fp32" and path[0].startswith("onnxruntime") and err is not None:
        assert err <= FP32_MAX_ERR, f"{path} max_err {err:.2e} vs eager FP32"


@pytest.fixture(scope="module")
def onnx_files(spec: Any, settings: Any) -> dict:
    """Lazy exports: only the files a selected path needs are built."""
    return {"fp32": lambda: bench.export_paths(spec, settings.tile, False),
            "fp16": lambda: bench.export_paths(spec, settings.tile, True)}


def test_interleaved(benchmark: Any, settings: Any, spec: Any) -> None:
    """The ``cloudrt bench`` measurement: every available path, rounds interleaved; one table."""
    model = spec.module if spec.module is not None else spec.onnx
    holder: dict[str, Any] = {}

    def once() -> None:
        holder["r"] = bench.run_bench(model, device=settings.device, tile=settings.tile, batches=settings.batches,
                                      rounds=settings.rounds, log=lambda m: print(m, file=sys.stderr))

    benchmark.group = "cloudrt bench (interleaved)"
    benchmark.pedantic(once, rounds=1, iterations=1)
    res = holder["r"]
    print("\n" + bench.format_table(res))
    benchmark.extra_info.update({"rows": res["rows"], "system": res["system"]})
    for row in res["rows"]:
        if row["precision"] == "fp32" and row["backend"].startswith("onnxruntime") and row["max_err"] is not None:
            assert row["max_err"] <= FP32_MAX_ERR, row
