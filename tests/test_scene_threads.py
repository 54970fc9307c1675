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
    for mode in ("single", "write-behind", "read-ahead"):
        out, mask = tmp_path / f"out-{mode}.tif", tmp_path / f"mask-{mode}.tif"
        rt = Runtime(k3, batch=3, panel=panel, threaded=mode != "single", read_ahead=mode == "read-ahead")
        stats = rt.predict_file(o, s, out, mask_out=mask)
        files[mode] = (out.read_bytes(), mask.read_bytes(), {k: v for k, v in stats.items() if k != "seconds"})
    for mode in ("write-behind", "read-ahead"):
        assert files[mode] == files["single"], mode
    with rasterio.open(tmp_path / "mask-read-ahead.tif") as ds:
        m = ds.read(1)
    assert (m == 1).any() and (m == 0).any() and (m == 255).any()  # clouds, clear and nodata all exercised


def test_threaded_arrays_with_given_mask_are_identical(k3: Path) -> None:
    opt, sar = synthetic_scene(150, 170, seed=5)
    given = np.zeros(opt.shape[1:], bool)
    given[20:90, 30:100] = True
    outs = [Runtime(k3, batch=2, threaded=t, read_ahead=r).predict(opt, sar, mask=given, nodata=0)
            for t, r in ((False, False), (True, False), (True, True))]
    assert np.array_equal(outs[0], outs[1], equal_nan=True) and np.array_equal(outs[0], outs[2], equal_nan=True)


def test_errors_surface_and_leave_no_output(k3: Path, scene: tuple[Path, Path], tmp_path: Path) -> None:
    o, s = scene
    rt = Runtime(k3, batch=2, read_ahead=True)  # all three threads
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
    assert max(waiting) <= depth  # handed over and not yet consumed, the one in the worker's hands included


def test_threaded_memory_stays_bounded(k3: Path) -> None:
    """Peak NumPy allocation (tracemalloc) of the threaded pipeline: at most one more input window and two
    more prediction blocks than the single pass, and with column panels still independent of the width."""
    import tracemalloc

    from cloudrt.scene.driver import run_scene
    from cloudrt.scene.sinks import ArraySink
    from cloudrt.scene.sources import ArraySource

    rt = Runtime(k3, batch=4)
    peaks = {}
    for w in (512, 2048):
        opt, sar = synthetic_scene(96, w, seed=w)
        for mode in ("single", "write-behind", "read-ahead"):
            sink = ArraySink(13, 96, w, None, want_mask=True)
            tracemalloc.start()
            run_scene(ArraySource(opt, sar), rt.backend.run, sink, tile=rt.tile, overlap=rt.overlap, batch=4,
                      want_mask=True, block=64, panel=256, threaded=mode != "single",
                      read_ahead=mode == "read-ahead")
            peaks[w, mode] = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
    # how much the stages overlap varies from run to run, within the bound
    for w in (512, 2048):
        for mode in ("write-behind", "read-ahead"):
            assert peaks[w, mode] < 1.75 * peaks[w, "single"], peaks
            assert peaks[2048, mode] < 1.75 * peaks[512, "single"], peaks  # 4x the width, 8 panels: no growth


@pytest.mark.parametrize("dtype", ["uint16", "int16", "float32", "float64"])
def test_fewer_pass_normalization_is_bit_identical(dtype: str) -> None:
    """normalize_optical / denormalize_optical(inplace) equal the plain float32 formulas, bit for bit."""
    from cloudrt.preprocess.normalize import denormalize_optical, normalize_optical

    rng = np.random.default_rng(0)
    dn = rng.integers(-50, 12000, (13, 40, 50)).astype(dtype)
    if dtype.startswith("float"):
        dn[0, 1, 1], dn[3, 2, 2], dn[5, 3, 3], dn[7, 4, 4] = np.nan, np.inf, -np.inf, 1234.5
    for nodata in (None, 0, 7):
        x = np.asarray(dn, dtype=np.float32)
        bad = ~np.isfinite(x) | ((x == np.float32(nodata)) if nodata is not None else False)
        ref = np.where(bad, np.float32(0), np.clip(x, 0.0, 10000.0) / np.float32(10000.0)).astype(np.float32)
        got = normalize_optical(dn, nodata)
        assert got.dtype == np.float32 and np.array_equal(got, ref)
    pred = rng.normal(0.5, 0.6, (13, 40, 50)).astype(np.float32)
    ref = np.clip(pred * np.float32(10000.0), 0.0, 10000.0).astype(np.float32)
    view = pred.copy()[:, :, 5:45]  # a non-contiguous view, as the driver passes
    assert np.array_equal(denormalize_optical(view, inplace=True), ref[:, :, 5:45])
    assert np.array_equal(denormalize_optical(pred), ref)


class _CountingSource:
    """A file-like (not in-memory) source over arrays that counts the optical rows read."""

    def __init__(self, opt: np.ndarray, sar: np.ndarray, nodata: float | None) -> None:
        from cloudrt.scene.sources import ArraySource

        self._a = ArraySource(opt, sar, nodata)
        self.height, self.width, self.nodata, self.sar_nodata = self._a.height, self._a.width, nodata, None
        self.rows = 0

    def optical(self, r0: int, r1: int, c0: int = 0, c1: int | None = None) -> np.ndarray:
        self.rows += r1 - r0
        return self._a.optical(r0, r1, c0, c1).copy()  # a fresh array, like a file read

    def sar(self, r0: int, r1: int, c0: int = 0, c1: int | None = None) -> np.ndarray:
        return self._a.sar(r0, r1, c0, c1).copy()

    def mask(self, r0: int, r1: int, c0: int = 0, c1: int | None = None) -> None:
        return None


@pytest.mark.parametrize("threaded", [False, True])
def test_optical_rows_are_read_once(k3: Path, threaded: bool) -> None:
    """A file source's optical rows are read about once (the compositing's haloed read and the overlap of the
    tile rows come from the kept rows), with the same output bytes as the in-memory pass."""
    from cloudrt.scene.driver import run_scene
    from cloudrt.scene.sinks import ArraySink
    from cloudrt.scene.sources import ArraySource

    rt = Runtime(k3, batch=2)
    opt, sar = synthetic_scene(400, 90, seed=6)
    opt[:, 150:190, 10:50] = 0
    sinks = [ArraySink(13, 400, 90, 0, want_mask=True) for _ in range(2)]
    counting = _CountingSource(opt, sar, 0)
    for src, sink in zip((ArraySource(opt, sar, 0), counting), sinks, strict=True):
        run_scene(src, rt.backend.run, sink, tile=rt.tile, overlap=rt.overlap, batch=2, want_mask=True,
                  block=64, threaded=threaded)
    assert sinks[0].out.tobytes() == sinks[1].out.tobytes()
    assert sinks[0].planes.tobytes() == sinks[1].planes.tobytes()
    # without the kept rows: ~1.35 x the rows for the tiles (overlap 8 of 32, reflect margins) plus several
    # times the rows for the 64-row compositing blocks with their WEIGHT_HALO (60-100 rows) on both sides
    assert counting.rows <= 400 + 2 * rt.overlap, counting.rows
