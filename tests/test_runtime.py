"""The Runtime: backends, whole-scene prediction against NumPy / eager references, compositing, nodata,
thread safety, streaming memory, bad models, TensorRT engine checks."""

from __future__ import annotations

import importlib.util
import json
import threading
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import rasterio
from runtime_helpers import make_onnx, realistic_scene, reference_conv, synthetic_scene, write_tif
from scipy import ndimage

from cloudrt.errors import BackendUnavailableError, EngineMismatchError, InputError, ModelError
from cloudrt.preprocess import denormalize_optical, normalize_optical, normalize_sar
from cloudrt.preprocess.composite import composite_weight, thickness
from cloudrt.preprocess.mask import cloud_mask, shadow_mask
from cloudrt.runtime import Runtime, check_engine_compat, default_overlap
from cloudrt.scene.masking import mask_scene
from cloudrt.scene.sinks import ArraySink
from cloudrt.scene.sources import ArraySource

HAS_TORCH = importlib.util.find_spec("torch") is not None


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("models")
    return {
        "k1": make_onnx(d / "k1.onnx", tile=32, kernel=1),
        "k3": make_onnx(d / "k3.onnx", tile=32, kernel=3),
        "k1b1": make_onnx(d / "k1b1.onnx", tile=32, kernel=1, batch=1),
        "names": make_onnx(d / "names.onnx", tile=32, names=("x", "y", "z")),
        "bands": make_onnx(d / "bands.onnx", tile=32, optical_bands=4),
    }


def _ref_dn(opt: np.ndarray, sar: np.ndarray, kernel: int = 1) -> np.ndarray:
    """float64 reference of the test model on the whole scene, in DN (clipped like the runtime)."""
    x = reference_conv(normalize_optical(opt).astype(np.float64), normalize_sar(sar).astype(np.float64), kernel)
    return np.clip(x * 10000.0, 0, 10000)


# -- selection, description -------------------------------------------------------------------------------

def test_auto_picks_onnxruntime_and_says_so(models: dict[str, Path]) -> None:
    rt = Runtime(models["k1"])
    assert rt.backend.name == "onnxruntime"
    assert rt.backend_name == "onnxruntime (CPUExecutionProvider)"
    assert "auto-selected" in rt.describe() and "tile 32" in rt.describe()
    assert rt.tile == 32 and rt.overlap == default_overlap(32)


def test_unavailable_backends_are_refused(models: dict[str, Path]) -> None:
    with pytest.raises(BackendUnavailableError, match="no CUDAExecutionProvider"):
        Runtime(models["k1"], backend="cuda")
    with pytest.raises(InputError, match="unknown backend"):
        Runtime(models["k1"], backend="magic")
    with pytest.raises(InputError, match="runs a .safetensors checkpoint"):
        Runtime(models["k1"], backend="torch")


def test_default_model_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import cloudrt.paths

    monkeypatch.setattr(cloudrt.paths, "DEFAULT_ONNX", tmp_path / "carf-demo.onnx")
    with pytest.raises(ModelError, match=r"default model .*carf-demo.onnx is missing; export it with"):
        Runtime()


def test_tile_and_overlap_validation(models: dict[str, Path]) -> None:
    with pytest.raises(InputError, match="takes 32x32 tiles, not 64"):
        Runtime(models["k1"], tile=64)
    with pytest.raises(InputError, match="overlap 20 is outside"):
        Runtime(models["k1"], overlap=20)
    assert Runtime(models["k1"], tile=32, overlap=0, batch=3).batch == 3


def test_default_overlap_is_aligned_to_size_divisor() -> None:
    assert default_overlap(256, 32) == 32 and default_overlap(64, 32) == 32 and default_overlap(256, 16) == 32
    assert default_overlap(128, 32) % 32 == 0
    assert default_overlap(32, 32) <= 16  # no aligned overlap fits: a plain eighth
    assert default_overlap(16) == 8


# -- bad models --------------------------------------------------------------------------------------------

def test_corrupt_model(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(ModelError, match="not a loadable ONNX model"):
        Runtime(bad)
    with pytest.raises(ModelError, match="does not exist"):
        Runtime(tmp_path / "missing.onnx")


def test_wrong_model_inputs(models: dict[str, Path]) -> None:
    with pytest.raises(ModelError, match=r"its inputs are x, y\); expected inputs optical \(N,13,T,T\)"):
        Runtime(models["names"])
    with pytest.raises(ModelError, match=r"input optical has shape \['N', 4, 32, 32\]"):
        Runtime(models["bands"])


# -- predictions -------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("h", "w"), [(1, 1), (5, 7), (33, 300), (70, 45)])
def test_predict_matches_numpy_reference_any_size(models: dict[str, Path], h: int, w: int) -> None:
    opt, sar = synthetic_scene(h, w, seed=h + w)
    rt = Runtime(models["k1"], batch=3)
    out = rt.predict(opt, sar, composite=False)
    assert out.shape == (13, h, w) and out.dtype == np.float32
    np.testing.assert_allclose(out, _ref_dn(opt, sar), atol=0.02)  # float32 vs float64, DN units


def test_fixed_batch_model_with_larger_batch(models: dict[str, Path]) -> None:
    opt, sar = synthetic_scene(50, 80)
    rt = Runtime(models["k1b1"], batch=4)
    assert rt.batch == 1 and rt.backend.fixed_batch == 1
    np.testing.assert_allclose(rt.predict(opt, sar, composite=False), _ref_dn(opt, sar), atol=0.02)


def test_conv_model_blends_to_whole_scene_reference(models: dict[str, Path]) -> None:
    """The 3x3 model is wrong on each tile's outer ring (zero padding); blending leaves at most the ring
    error times the edge weight sin^2(pi/64) = 0.24 %. Measured: hard tiles (overlap 0) max 5969 DN /
    mean 52 DN; overlap 16: max 19 DN (0.32 %) / mean 0.23 DN."""
    opt, sar = synthetic_scene(120, 100, seed=3)
    ref = _ref_dn(opt, sar, 3)
    err = np.abs(Runtime(models["k3"], overlap=16).predict(opt, sar, composite=False) - ref)
    hard = np.abs(Runtime(models["k3"], overlap=0).predict(opt, sar, composite=False) - ref)
    assert hard.max() > 1000  # the seams are real
    assert err.max() < 0.005 * hard.max() and err.mean() < 0.01 * hard.mean()


def test_soft_compositing_follows_the_weight(models: dict[str, Path]) -> None:
    """out = w * raw + (1 - w) * input with w from preprocess.composite on the whole scene; w == 0 is
    bit-exact input; the confidence band is 100 (1 - w * thickness) and comes back with return_confidence."""
    opt, sar = realistic_scene(320, 300, seed=5, radius=0.06)  # a small cloud: clear ground far from it
    rt = Runtime(models["k1"])
    raw = rt.predict(opt, sar, composite=False)
    out, conf = rt.predict(opt, sar, return_confidence=True)
    # the prediction that is composited: each tile's output with its invented detail smoothed (a mask of
    # ones gives weight 1 everywhere, so the output is that prediction itself)
    smoothed = rt.predict(opt, sar, mask=np.ones(opt.shape[1:], bool))
    w, conf_ref = composite_weight(opt, return_confidence=True)
    assert 0.02 < (w == 0).mean() < 0.98 and (w == 1).any()
    keep = w == 0
    np.testing.assert_array_equal(out[:, keep], opt[:, keep].astype(np.float32))  # bit-exact input
    expected = w * smoothed + (1 - w) * opt.astype(np.float64)
    np.testing.assert_allclose(out, expected, atol=1e-2)
    clear = thickness(opt) == 0  # no cloud over them: the smoothing leaves the prediction alone
    np.testing.assert_allclose(smoothed[:, ndimage.binary_erosion(clear, iterations=40)],
                               raw[:, ndimage.binary_erosion(clear, iterations=40)], atol=1e-2)
    assert np.abs(smoothed - raw)[:, thickness(opt) > 0.5].mean() > 1.0  # under the cloud it is not
    np.testing.assert_array_equal(conf, conf_ref)
    assert conf.dtype == np.uint8 and conf.max() <= 100 and (conf[keep] == 100).all()


def test_given_mask_is_used(models: dict[str, Path]) -> None:
    opt, sar = synthetic_scene(40, 40, seed=6)
    rt = Runtime(models["k1"])
    mask = np.zeros((40, 40), bool)
    mask[10:20, 5:30] = True
    out = rt.predict(opt, sar, mask=mask)
    raw = rt.predict(opt, sar, composite=False)
    inner = ndimage.binary_erosion(mask, iterations=8)  # the softened edge is 8 px (Gaussian sigma 2, 4 sigma)
    far = ~ndimage.binary_dilation(mask, iterations=9)
    np.testing.assert_allclose(out[:, inner], raw[:, inner], atol=1e-3)
    np.testing.assert_array_equal(out[:, far], opt[:, far])
    with pytest.raises(InputError, match="mask has shape"):
        rt.predict(opt, sar, mask=mask[:5])


def test_nan_and_nodata_do_not_spread(models: dict[str, Path]) -> None:
    opt, sar = synthetic_scene(64, 64, seed=7)
    optf = opt.astype(np.float32)
    optf[:, 20, 30] = np.nan
    optf[3, 40, 10] = np.inf
    sarf = sar.copy()
    sarf[:, 5:8, 5:8] = np.nan
    rt = Runtime(models["k3"])
    out = rt.predict(optf, sarf, composite=False)
    assert np.isnan(out[:, 20, 30]).all() and np.isnan(out[:, 40, 10]).all()
    finite = np.ones((64, 64), bool)
    finite[20, 30] = finite[40, 10] = False
    assert np.isfinite(out[:, finite]).all()
    # away from the bad pixels (beyond the 3x3 reach) the output equals the clean run
    clean = rt.predict(opt, sar, composite=False)
    far = np.ones((64, 64), bool)
    for y, x in ((20, 30), (40, 10)):
        far[y - 2 : y + 3, x - 2 : x + 3] = False
    far[3:10, 3:10] = False
    np.testing.assert_allclose(out[:, far], clean[:, far], atol=0.05)
    # nodata in uint16: nodata pixels come back as nodata, the rest is valid
    optn = opt.copy()
    optn[:, :10, :] = 0
    outn = rt.predict(optn, sar, nodata=0)
    assert (outn[:, :10] == 0).all() and (outn[:, 10:] != 0).any(axis=0).all()
    outr = rt.predict(optn, sar, nodata=0, composite=False)
    np.testing.assert_allclose(outr[:, 14:], clean[:, 14:], atol=0.05)  # beyond the 3x3 reach


def test_all_invalid_inputs_are_refused(models: dict[str, Path]) -> None:
    opt, sar = synthetic_scene(20, 20)
    rt = Runtime(models["k1"])
    with pytest.raises(InputError, match="no valid pixel"):
        rt.predict(np.full((13, 20, 20), np.nan, np.float32), sar)
    with pytest.raises(InputError, match=r"SAR has no valid pixel"):
        rt.predict(opt, np.full((2, 20, 20), np.inf, np.float32))
    with pytest.raises(InputError, match=r"nodata=0"):
        rt.predict(np.zeros_like(opt), sar, nodata=0)
    with pytest.raises(InputError, match="expected \\(13, H, W\\)"):
        rt.predict(opt[:12], sar)
    with pytest.raises(InputError, match="expected \\(2, H, W\\)"):
        rt.predict(opt, sar[:1])
    with pytest.raises(InputError, match="differ in size"):
        rt.predict(opt, sar[:, :10])
    with pytest.raises(InputError, match="unsupported dtype"):
        rt.predict(opt.astype(np.complex64), sar)


def test_thread_safe_shared_runtime(models: dict[str, Path]) -> None:
    rt = Runtime(models["k3"], batch=2)
    scenes = [synthetic_scene(40 + 7 * i, 50 + 5 * i, seed=i) for i in range(6)]
    serial = [rt.predict(o, s) for o, s in scenes]
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for _ in range(2):
                results[i] = rt.predict(*scenes[i])
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(scenes))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i, ref in enumerate(serial):
        np.testing.assert_array_equal(results[i], ref)


# -- streaming -------------------------------------------------------------------------------------------

def test_streaming_memory_is_independent_of_rows(models: dict[str, Path], tmp_path: Path) -> None:
    """Peak NumPy memory (tracemalloc) of predict_file for a 2x taller scene stays within 25 % of the short
    one's: it is O(min(width, panel)), measured ~58 KB per column here (tile 32, a single panel at this
    width; test_panel_memory_is_independent_of_width covers wide scenes)."""
    rt = Runtime(models["k1"], batch=4)
    files = {}
    for h in (64, 512, 1024):  # both taller than a block plus its two compositing halos (460 rows)
        opt, sar = synthetic_scene(h, 384, seed=h)
        files[h] = write_tif(tmp_path / f"o{h}.tif", opt), write_tif(tmp_path / f"s{h}.tif", sar)
    rt.predict_file(*files[64], tmp_path / "warm.tif", mask_out=tmp_path / "warm_m.tif")  # imports, caches
    peaks = {}
    for h in (512, 1024):
        tracemalloc.start()
        rt.predict_file(*files[h], tmp_path / f"out{h}.tif", mask_out=tmp_path / f"m{h}.tif")
        peaks[h] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peaks[1024] < 1.25 * peaks[512]
    assert peaks[1024] / 384 < 70e3


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_windowed_mask_equals_whole_scene_mask(shared_data: Path) -> None:
    """Masks computed by 16-row x 40-column windows with a halo equal the whole-scene masks (both methods and
    the shadow mask with scene-wide thresholds)."""
    with rasterio.open(shared_data / "sen12mscr-samples" / "s2_cloudy" / "oriolac_4287.tif") as ds:
        dn = ds.read()
    for method in ("paper", "sen12mscr"):
        sink = ArraySink(13, 256, 256, None, want_mask=True)
        src = ArraySource(dn, np.zeros((2, 256, 256), np.float32))
        mask_scene(src, sink, method=method, shadow=True, block=16, chunk=40)
        cloud = cloud_mask(dn, method)
        np.testing.assert_array_equal(sink.mask == 1, cloud)
        np.testing.assert_array_equal(sink.mask == 2, shadow_mask(dn) & ~cloud)


# -- files -----------------------------------------------------------------------------------------------

def test_column_chunks_do_not_change_the_result(models: dict[str, Path]) -> None:
    """Compositing by 37-column chunks with a halo gives exactly what one chunk gives (sen12mscr mask)."""
    from cloudrt.scene.driver import run_scene

    opt, sar = synthetic_scene(70, 150, seed=9)
    rt = Runtime(models["k1"], mask_method="sen12mscr")
    outs = []
    for chunk in (37, 4096):
        sink = ArraySink(13, 70, 150, None, want_mask=True)
        run_scene(ArraySource(opt, sar), rt.backend.run, sink, tile=rt.tile, overlap=rt.overlap, batch=4,
                  mask_method="sen12mscr", want_mask=True, block=24, chunk=chunk)
        outs.append((sink.out, sink.mask))
    np.testing.assert_array_equal(outs[0][0], outs[1][0])
    np.testing.assert_array_equal(outs[0][1], outs[1][1])
    np.testing.assert_array_equal(outs[0][1] == 1, cloud_mask(opt, "sen12mscr"))


@pytest.mark.parametrize("composite", [True, False])
def test_column_panels_equal_the_single_pass(models: dict[str, Path], composite: bool) -> None:
    """A scene 6 panels wide (panel 64 columns, tile 32, 3x3 conv: tile edges matter) with a NaN stripe
    (skipped tiles) gives bit-identical output and mask to the single pass: the panel windows are on the
    single pass's tile grid and cover every tile and mask halo (16 px) of their core columns, and ORT's
    conv is per-sample, so no tolerance is needed."""
    from cloudrt.scene.driver import run_scene

    h, w = 70, 365
    opt, sar = synthetic_scene(h, w, seed=11)
    opt = opt.astype(np.float32)
    opt[:, 10:60, 150:200] = np.nan
    rt = Runtime(models["k3"], mask_method="sen12mscr")
    outs, stats = [], []
    for panel in (64, 10_000):
        sink = ArraySink(13, h, w, None, want_mask=True)
        stats.append(run_scene(ArraySource(opt, sar), rt.backend.run, sink, tile=rt.tile, overlap=rt.overlap,
                               batch=3, composite=composite, mask_method="sen12mscr", want_mask=True, block=32,
                               chunk=48, panel=panel))
        outs.append((sink.out, sink.mask))
    assert stats[0]["panels"] == 6 and stats[1]["panels"] == 1
    assert stats[0]["tiles"] > stats[1]["tiles"]  # the panel margins are recomputed
    assert (stats[0]["valid"], stats[0]["cloud"]) == (stats[1]["valid"], stats[1]["cloud"])
    np.testing.assert_array_equal(outs[0][0], outs[1][0])
    np.testing.assert_array_equal(outs[0][1], outs[1][1])
    assert np.isnan(outs[0][0][:, 20, 170]).all() and outs[0][1][20, 170] == 255


def test_panelled_predict_file_equals_single_pass(models: dict[str, Path], tmp_path: Path) -> None:
    """Through predict_file (column-window reads and block-aligned column-window writes of GeoTIFFs, image and
    mask): panels of 256 columns on a 600-px-wide scene give the same files as one pass."""
    opt, sar = synthetic_scene(48, 600, seed=5)
    o, s = write_tif(tmp_path / "o.tif", opt), write_tif(tmp_path / "s.tif", sar)
    res = {}
    for panel in (256, 4096):
        rt = Runtime(models["k3"], panel=panel)
        stats = rt.predict_file(o, s, tmp_path / f"out{panel}.tif", mask_out=tmp_path / f"m{panel}.tif")
        with rasterio.open(tmp_path / f"out{panel}.tif") as a, rasterio.open(tmp_path / f"m{panel}.tif") as m:
            res[panel] = (a.read(), m.read(), stats["panels"])
    assert res[256][2] == 3 and res[4096][2] == 1
    np.testing.assert_array_equal(res[256][0], res[4096][0])
    np.testing.assert_array_equal(res[256][1], res[4096][1])


def test_panel_memory_is_independent_of_width(models: dict[str, Path]) -> None:
    """Peak NumPy allocation (tracemalloc; inputs and output preallocated) of a whole-scene run with mask:
    with 128-column panels it is the same for a 1024- and a 4096-px-wide scene (within 15 %), while the
    single pass grows with the width (the measurement can tell)."""
    from cloudrt.scene.driver import run_scene

    rt = Runtime(models["k1"], batch=4)
    peaks = {}
    for w in (1024, 4096):
        opt, sar = synthetic_scene(64, w, seed=w)
        for panel in (128, 100_000):
            sink = ArraySink(13, 64, w, None, want_mask=True)
            tracemalloc.start()
            # single-threaded: the threaded pipeline's peak also depends on how its stages happen to overlap
            # (bounded; tests/test_scene_threads.py checks that bound)
            run_scene(ArraySource(opt, sar), rt.backend.run, sink, tile=rt.tile, overlap=rt.overlap, batch=4,
                      want_mask=True, block=64, panel=panel, threaded=False)
            peaks[w, panel] = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
    print({k: f"{v / 2**20:.2f} MiB" for k, v in peaks.items()})
    assert peaks[4096, 128] < 1.15 * peaks[1024, 128]
    assert peaks[4096, 100_000] > 2.5 * peaks[1024, 100_000]


def test_predict_file_caps_gdal_cache(models: dict[str, Path], tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The Python API (not only the CLI) streams a file scene with GDAL's block cache capped."""
    from cloudrt.scene.io import GDAL_CACHE_MB

    monkeypatch.delenv("GDAL_CACHEMAX", raising=False)
    opt, sar = synthetic_scene(40, 50, seed=2)
    o, s = write_tif(tmp_path / "o.tif", opt), write_tif(tmp_path / "s.tif", sar)
    seen = []
    Runtime(models["k1"]).predict_file(o, s, tmp_path / "out.tif",
                                       progress=lambda d, t: seen.append(rasterio.env.getenv().get("GDAL_CACHEMAX")))
    assert seen and set(seen) == {GDAL_CACHE_MB * 2**20}


def test_mask_file_caps_gdal_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`cloudrt mask` streams through the same cache cap as inference (one mechanism, cloudrt.scene.io.gdal_env)."""
    from cloudrt.scene.io import GDAL_CACHE_MB
    from cloudrt.scene.masking import mask_file

    monkeypatch.delenv("GDAL_CACHEMAX", raising=False)
    opt, _ = synthetic_scene(40, 50, seed=2)
    seen = []
    mask_file(write_tif(tmp_path / "o.tif", opt), tmp_path / "m.tif",
              progress=lambda d, t: seen.append(rasterio.env.getenv().get("GDAL_CACHEMAX")))
    assert seen and set(seen) == {GDAL_CACHE_MB * 2**20}


def test_onnx_cpu_session_options(models: dict[str, Path]) -> None:
    """The CPU session uses the bench's options: physical-core intra-op threads, no spin-waiting, full graph
    optimization, and batch 1 by default (fastest for ORT on CPU in the bench)."""
    import onnxruntime as ort

    from cloudrt.runtime.onnx_backend import physical_cores

    rt = Runtime(models["k1"], backend="cpu")
    so = rt.backend.session.get_session_options()
    assert so.intra_op_num_threads == physical_cores()
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert rt.batch == 1


def test_predict_file_on_real_sample(models: dict[str, Path], shared_data: Path, tmp_path: Path) -> None:
    d = shared_data / "sen12mscr-samples"
    name = "ROIs1970_fall_139_p839.tif"
    rt = Runtime(models["k3"])
    out, mask = tmp_path / "o.tif", tmp_path / "m.tif"
    stats = rt.predict_file(d / "s2_cloudy" / name, d / "s1" / name, out, mask_out=mask)
    with rasterio.open(d / "s2_cloudy" / name) as s, rasterio.open(out) as o, rasterio.open(mask) as m:
        assert (o.crs, o.transform, o.width, o.height, o.dtypes[0]) == (s.crs, s.transform, 256, 256, "uint16")
        got, dn, sar = o.read(), s.read(), None
        with rasterio.open(d / "s1" / name) as s1:
            sar = s1.read()
        arr = rt.predict(dn, sar)
        np.testing.assert_array_equal(got, np.clip(np.rint(arr), 0, 65535).astype(np.uint16))
        np.testing.assert_array_equal(m.read(1) == 1, cloud_mask(dn))
    assert stats["cloud_fraction"] == pytest.approx(cloud_mask(dn).mean())


# -- TensorRT engines (pure checks; the engine itself needs a GPU) ------------------------------------------

SIDECAR = {"trt_version": "10.3.0", "compute_capability": "8.9", "gpu_name": "NVIDIA L4",
           "engine": "/m/carf.engine"}


def test_engine_compat_accepts_same_trt_and_sm() -> None:
    check_engine_compat(SIDECAR, "10.3.0.26", "8.9")
    check_engine_compat(SIDECAR, "10.3.0", "sm_89")
    check_engine_compat({**SIDECAR, "gpu_name": "other name"}, "10.3.0", (8, 9))  # same SM: fine


@pytest.mark.parametrize(("trt", "cc", "msg"), [
    ("10.4.0", "8.9", "built with TensorRT 10.3.0 but this machine has TensorRT 10.4.0"),
    ("10.3.0", "9.0", "built for NVIDIA L4 \\(compute capability 8.9\\) but this GPU has compute capability 9.0"),
])
def test_engine_compat_rejects_other_trt_or_gpu(trt: str, cc: str, msg: str) -> None:
    with pytest.raises(EngineMismatchError, match=msg) as e:
        check_engine_compat(SIDECAR, trt, cc)
    assert "cloudrt export WEIGHTS --format engine --half -o /m/carf.engine" in str(e.value)
    assert "\n" not in str(e.value)
    with pytest.raises(EngineMismatchError, match="lacks trt_version"):
        check_engine_compat({"gpu_name": "x"}, trt, cc)
    with pytest.raises(EngineMismatchError, match="`cloudrt export a.onnx --format engine`"):
        check_engine_compat({**SIDECAR, "rebuild_command": "cloudrt export a.onnx --format engine"}, "9.0", cc)


def test_engine_for_another_gpu_is_refused_before_loading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cloudrt.runtime import tensorrt_backend

    engine = tmp_path / "m.engine"
    engine.write_bytes(b"not really an engine")
    (tmp_path / "m.engine.json").write_text(json.dumps(SIDECAR))
    monkeypatch.setattr(tensorrt_backend, "local_environment", lambda device_id=0: ("10.3.0", "8.0"))
    with pytest.raises(EngineMismatchError, match="compute capability 8.0"):
        Runtime(engine)
    (tmp_path / "m.engine.json").unlink()
    with pytest.raises(EngineMismatchError, match="no JSON sidecar"):
        Runtime(engine)
    with pytest.raises(InputError, match="runs only with --backend tensorrt"):
        Runtime(engine, backend="cpu")


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_engine_without_tensorrt_installed(tmp_path: Path) -> None:
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"x")
    (tmp_path / "m.engine.json").write_text(json.dumps(SIDECAR))
    with pytest.raises(BackendUnavailableError, match="TensorRT is not installed"):
        Runtime(engine)


# -- the real model: eager (torch) vs exported ONNX through the runtime ------------------------------------

@pytest.fixture(scope="module")
def carf_tiny(tmp_path_factory: pytest.TempPathFactory):
    if not HAS_TORCH:
        pytest.skip("torch is not installed")
    torch = pytest.importorskip("torch")
    try:
        from cloudrt.export import export_onnx
        from cloudrt.model import build
    except ImportError as e:  # pragma: no cover - export or model not there yet
        pytest.skip(f"export/model unavailable: {e}")
    torch.manual_seed(0)
    model = build("carf-tiny").eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # random init leaves the residual branch at zero; make the model non-trivial
        for p in model.parameters():
            if p.abs().max() == 0:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    path = export_onnx(model, tmp_path_factory.mktemp("carf") / "carf-tiny.onnx", tile=64, verbose=False)
    return model, Path(path)


def test_carf_tiny_onnx_runtime_matches_eager(carf_tiny) -> None:
    """Whole non-tile-multiple scene (100 x 130, tile 64, overlap 16): the runtime on the exported ONNX and
    on the eager torch module agree within 0.05 DN (float32 rounding; measured ~0.002 DN). On a 64 x 64
    crop (exactly one tile without overlap) the runtime equals the eager model called directly."""
    import torch

    model, path = carf_tiny
    opt, sar = synthetic_scene(100, 130, seed=11)
    ort_out = Runtime(path, overlap=16).predict(opt, sar, composite=False)
    eager_out = Runtime(model, backend="torch", tile=64, overlap=16).predict(opt, sar, composite=False)
    assert np.abs(ort_out - eager_out).max() < 0.05
    assert np.abs(ort_out - np.clip(opt, 0, 10000)).mean() > 50  # the model really changes the scene
    # independent check of one interior 64 x 64 crop: eager on the crop vs the runtime on the crop
    on, sn = normalize_optical(opt[:, 32:96, 32:96]), normalize_sar(sar[:, 32:96, 32:96])
    with torch.no_grad():
        e = model(torch.from_numpy(on[None]), torch.from_numpy(sn[None]))[0].numpy()
    rt = Runtime(path, overlap=0)  # a 64 x 64 scene is exactly one tile when there is no overlap
    np.testing.assert_allclose(rt.predict(opt[:, 32:96, 32:96], sar[:, 32:96, 32:96], composite=False),
                               denormalize_optical(e), atol=0.05)


def test_carf_tiny_shift_test(carf_tiny, tmp_path: Path) -> None:
    """Same scene cropped by 64 px (a multiple of the model's size divisor 32: CARF's pixel-unshuffle and
    Swin windows are not equivariant to other shifts, even untiled), tile 128, so the tile seams fall
    elsewhere on the content (stride 96). Compared on the interior (64 px from the borders, beyond the
    reflect-padded border tiles). This random-weight carf-tiny is very context-sensitive (its residual is
    ~570 DN); measured mean |diff| 23 DN (max 233) with the default 32-px overlap vs 135 DN (max 1967)
    with hard tiles: blending removes > 80 % of the tile-placement dependence."""
    from cloudrt.export import export_onnx

    model, _ = carf_tiny
    path = export_onnx(model, tmp_path / "carf-tiny-128.onnx", tile=128, verbose=False)
    opt, sar = synthetic_scene(320, 320, seed=12)
    sh = 64
    diff, resid = {}, 0.0
    for overlap in (None, 0):
        rt = Runtime(path, overlap=overlap)
        a = rt.predict(opt, sar, composite=False)
        b = rt.predict(opt[:, sh:, sh:], sar[:, sh:, sh:], composite=False)
        diff[overlap] = np.abs(a[:, sh + 64 : -64, sh + 64 : -64] - b[:, 64:-64, 64:-64]).mean()
        resid = np.abs(a - np.clip(opt, 0, 10000)).mean()
    assert Runtime(path).overlap == 32
    assert diff[None] < 0.3 * diff[0]
    assert diff[None] < 0.06 * resid


def test_batched_tiles_are_smoothed_in_parallel_with_the_same_result(models: dict[str, Path]) -> None:
    """With batch > 1 the invented detail of a batch's tiles is smoothed on a thread pool: the composited
    output is bit-identical to batch 1, and the smoothing did happen (it differs from the raw blend)."""
    opt, sar = realistic_scene(160, 200, seed=11, radius=0.2)
    one = Runtime(models["k1"], batch=1).predict(opt, sar, mask=np.ones(opt.shape[1:], bool))
    four = Runtime(models["k1"], batch=4).predict(opt, sar, mask=np.ones(opt.shape[1:], bool))
    np.testing.assert_array_equal(four, one)
    raw = Runtime(models["k1"], batch=4).predict(opt, sar, composite=False)
    assert np.abs(four - raw)[:, thickness(opt) > 0.5].mean() > 1.0


def test_tiles_without_sar_get_the_wider_smoothing(models: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """No SAR (sar_db=None, or a SAR input with no signal) -> SMOOTH_SIGMA_NO_SAR for every tile; real SAR
    -> SMOOTH_SIGMA; and the output differs accordingly."""
    from cloudrt.preprocess import composite as soft

    seen: list[float] = []
    real = soft.smooth_invented

    def spy(pred, dn, valid=None, sigma=None):
        seen.append(sigma)
        return real(pred, dn, valid, sigma)

    monkeypatch.setattr(soft, "smooth_invented", spy)
    opt, sar = realistic_scene(96, 96, seed=12, radius=0.25)
    rt = Runtime(models["k1"])
    with_sar = rt.predict(opt, sar)
    assert seen and set(seen) == {soft.SMOOTH_SIGMA}
    seen.clear()
    without = rt.predict(opt, None)
    assert seen and set(seen) == {soft.SMOOTH_SIGMA_NO_SAR}
    seen.clear()
    floor = rt.predict(opt, np.full_like(sar, -40.0))  # below the clip floor everywhere: no signal
    assert set(seen) == {soft.SMOOTH_SIGMA_NO_SAR}
    np.testing.assert_array_equal(floor, without)
    assert not np.array_equal(with_sar, without)
