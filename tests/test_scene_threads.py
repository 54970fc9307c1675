"""The threaded host pipeline (read-ahead, write-behind) gives byte-identical outputs to the single-threaded
pass, keeps its queues bounded, and fails like the single pass: the first error, no output file."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from runtime_helpers import make_onnx, synthetic_scene, write_tif

from cloudrt.runtime import Runtime
from cloudrt.scene.pipeline import WriteBehind


@pytest.fixture(scope="module")
def k3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_onnx(tmp_path_factory.mktemp("m") / "k3.onnx", tile=32, kernel=3)


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("scene")
    opt, sar = synthetic_scene(300, 530, seed=4)
    opt[:, 100:140, 200:260] = 0  # a nodata hole: skipped tiles, nodata pixels
    return write_tif(d / "o.tif", opt, nodata=0), write_tif(d / "s.tif", sar)


@pytest.mark.parametrize("panel", [None, 256])  # one pass, and column panels (several write-behind runs)
def test_threaded_file_output_is_byte_identical(k3: Path, scene: tuple[Path, Path], tmp_path: Path,
                                                panel: int | None) -> None:
    o, s = scene
    files = {}
    for threaded in (False, True):
        out, mask = tmp_path / f"out-{threaded}.tif", tmp_path / f"mask-{threaded}.tif"
        stats = Runtime(k3, batch=3, panel=panel, threaded=threaded).predict_file(o, s, out, mask_out=mask)
        files[threaded] = (out.read_bytes(), mask.read_bytes(), stats)
    (a, ma, sa), (b, mb, sb) = files[False], files[True]
    assert a == b and ma == mb
    assert {k: v for k, v in sa.items() if k != "seconds"} == {k: v for k, v in sb.items() if k != "seconds"}
    with rasterio.open(tmp_path / "mask-True.tif") as ds:
        m = ds.read(1)
    assert (m == 1).any() and (m == 0).any() and (m == 255).any()  # clouds, clear and nodata all exercised


def test_threaded_arrays_with_given_mask_are_identical(k3: Path) -> None:
    opt, sar = synthetic_scene(150, 170, seed=5)
    given = np.zeros(opt.shape[1:], bool)
    given[20:90, 30:100] = True
    outs = [Runtime(k3, batch=2, threaded=t).predict(opt, sar, mask=given, nodata=0) for t in (False, True)]
    assert np.array_equal(outs[0], outs[1], equal_nan=True)


def test_errors_surface_and_leave_no_output(k3: Path, scene: tuple[Path, Path], tmp_path: Path) -> None:
    o, s = scene
    rt = Runtime(k3, batch=2)
    calls = [0]
    inner = rt.backend.run

    def failing_run(a: np.ndarray, b: np.ndarray) -> np.ndarray:  # the inference thread fails mid-scene
        calls[0] += 1
        if calls[0] == 7:
            raise RuntimeError("model exploded")
        return inner(a, b)

    rt.backend.run = failing_run
    with pytest.raises(RuntimeError, match="model exploded"):
        rt.predict_file(o, s, tmp_path / "a.tif")

    def bad_progress(done: int, total: int) -> None:  # the write-behind thread fails
        raise ValueError(f"stop at {done}")

    rt.backend.run = inner
    with pytest.raises(ValueError, match="stop at"):
        rt.predict_file(o, s, tmp_path / "b.tif", progress=bad_progress)
    assert list(tmp_path.iterdir()) == []
    assert not [t for t in threading.enumerate() if t.name.startswith("cloudrt-")]  # no thread left behind


def test_write_behind_is_bounded_and_ordered() -> None:
    seen, waiting = [], []
    depth = 2
    with WriteBehind(lambda i: (time.sleep(0.01), seen.append(i)), depth=depth) as wb:
        for i in range(20):
            wb.put(i)
            waiting.append(i + 1 - len(seen))  # items given but not yet consumed
    assert seen == list(range(20))
    assert max(waiting) <= depth + 1  # the queue plus the one in the worker's hands
