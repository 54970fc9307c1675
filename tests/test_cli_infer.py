"""``cloudrt infer`` / ``cloudrt mask`` end to end: real samples, georeferencing, batch mode, and every bad
input rejected with one line, exit code 2 and no output file."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from runtime_helpers import make_onnx, synthetic_scene, write_tif

from cloudrt.cli import main
from cloudrt.paths import DEFAULT_ONNX, SAMPLE_DIR
from cloudrt.preprocess.mask import cloud_mask, shadow_mask

FALL = "ROIs1970_fall_139_p839.tif"
PLAIN = "oriolac_4287.tif"


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_onnx(tmp_path_factory.mktemp("m") / "k3.onnx", tile=64, kernel=3)


@pytest.fixture(scope="module")
def samples(shared_data: Path) -> Path:
    return shared_data / "sen12mscr-samples"


def _infer(model: Path, *args: str | Path) -> list[str]:
    return ["infer", "--model", str(model), "-q", *map(str, args)]


def _bad(capsys: pytest.CaptureFixture, argv: list[str], *must: str, out_dir: Path | None = None) -> str:
    """Run argv; require exit 2, exactly one stderr line starting with 'error:' and naming ``must``."""
    before = set(out_dir.iterdir()) if out_dir else set()
    rc = main(argv)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for m in must:
        assert m in lines[0], (m, lines[0])
    if out_dir is not None:
        assert set(out_dir.iterdir()) == before  # no output, no temporary file left
    return lines[0]


# -- good runs on the real samples -----------------------------------------------------------------------

def test_infer_real_georeferenced_sample(model: Path, samples: Path, tmp_path: Path) -> None:
    out, mask = tmp_path / "clear.tif", tmp_path / "mask.tif"
    rc = main(_infer(model, "--optical", samples / "s2_cloudy" / FALL, "--sar", samples / "s1" / FALL,
                     "-o", out, "--mask-out", mask))
    assert rc == 0
    with rasterio.open(samples / "s2_cloudy" / FALL) as s, rasterio.open(out) as o, rasterio.open(mask) as m:
        assert (o.width, o.height, o.count, o.dtypes[0]) == (s.width, s.height, 13, "uint16")
        assert o.crs == s.crs and o.transform == s.transform and o.nodata == s.nodata
        assert o.descriptions == ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12")
        assert o.compression.name.lower() == "deflate" and o.block_shapes[0] == (256, 256)
        assert o.tags()["cloudrt_backend"].startswith("onnxruntime")
        dn, got = s.read(), o.read()
        cloud = cloud_mask(dn)
        np.testing.assert_array_equal(m.read(1), cloud.astype(np.uint8))
        assert m.count == 2 and m.crs == s.crs
        weight = m.read(2)
    from cloudrt.preprocess.composite import composite_weight

    np.testing.assert_array_equal(weight, np.rint(100 * composite_weight(dn)).astype(np.uint8))
    assert (weight == 100).any()
    assert np.abs(got[:, weight == 100].astype(float) - dn[:, weight == 100]).mean() > 1  # clouds are changed


def test_clear_input_comes_back_unchanged(model: Path, samples: Path, tmp_path: Path) -> None:
    """The sample's cloud-free date as input: weight 0 almost everywhere, and there the output is the input
    bit for bit (do no harm; the whole-corpus check is tests/test_quality.py)."""
    out, mask = tmp_path / "clear.tif", tmp_path / "mask.tif"
    assert main(_infer(model, "--optical", samples / "s2" / FALL, "--sar", samples / "s1" / FALL,
                       "-o", out, "--mask-out", mask)) == 0
    with rasterio.open(samples / "s2" / FALL) as s, rasterio.open(out) as o, rasterio.open(mask) as m:
        dn, got, weight = s.read(), o.read(), m.read(2)
    keep = weight == 0
    assert keep.mean() > 0.95
    np.testing.assert_array_equal(got[:, keep], dn[:, keep])


def test_nodata_and_descriptions_are_kept(model: Path, tmp_path: Path) -> None:
    opt, sar = synthetic_scene(300, 280, seed=3)
    opt[:, :, :40] = 0  # a nodata strip at the swath edge
    names = tuple(f"S2 {b}" for b in ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11",
                                       "B12"))
    o = write_tif(tmp_path / "o.tif", opt, nodata=0, descriptions=names)
    s = write_tif(tmp_path / "s.tif", sar)
    out, mask = tmp_path / "out.tif", tmp_path / "mask.tif"
    assert main(_infer(model, "--optical", o, "--sar", s, "-o", out, "--mask-out", mask)) == 0
    with rasterio.open(out) as r, rasterio.open(mask) as m:
        assert r.nodata == 0 and r.descriptions == names and r.block_shapes[0] == (256, 256)
        got, mk = r.read(), m.read(1)
    assert (got[:, :, :40] == 0).all() and (mk[:, :40] == 255).all()
    assert (got[:, :, 40:] != 0).any(axis=0).all() and (mk[:, 40:] != 255).all()


def test_no_composite_returns_raw_output(model: Path, samples: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "a.tif", tmp_path / "b.tif"
    base = ["--optical", samples / "s2_cloudy" / FALL, "--sar", samples / "s1" / FALL]
    assert main(_infer(model, *base, "-o", a)) == 0
    assert main(_infer(model, *base, "-o", b, "--no-composite")) == 0
    with rasterio.open(a) as x, rasterio.open(b) as y, rasterio.open(samples / "s2_cloudy" / FALL) as s:
        ra, rb, dn = x.read(), y.read(), s.read()
    from cloudrt.preprocess.composite import composite_weight
    from cloudrt.runtime import Runtime

    with rasterio.open(samples / "s1" / FALL) as s1:
        sar = s1.read()
    # what is composited: the raw output with its invented detail smoothed, per tile (weight 1 everywhere
    # under a mask of ones gives exactly that)
    smoothed = Runtime(model).predict(dn, sar, mask=np.ones(dn.shape[1:], bool))
    w = composite_weight(dn)
    full = w == 1
    assert full.mean() > 0.5
    np.testing.assert_allclose(ra[:, full], np.rint(smoothed[:, full]), atol=1)  # fully replaced
    np.testing.assert_allclose(ra, np.rint(w * smoothed + (1 - w) * dn.astype(np.float64)), atol=1)
    assert (rb != dn).mean() > 0.5  # the raw output touches every kind of pixel
    assert np.abs(ra[:, full].astype(float) - rb[:, full]).mean() > 1  # and is not what is composited


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_infer_without_georeferencing(model: Path, samples: Path, tmp_path: Path) -> None:
    out = tmp_path / "o.tif"
    assert main(_infer(model, "--optical", samples / "s2_cloudy" / PLAIN, "--sar", samples / "s1" / PLAIN,
                       "-o", out)) == 0
    with rasterio.open(out) as o:
        assert o.crs is None and o.transform == rasterio.Affine.identity() and o.shape == (256, 256)


def test_align_reprojects_sar(model: Path, samples: Path, tmp_path: Path) -> None:
    """S1 cropped and shifted by whole pixels: refused without --align; with it, identical to the co-registered run."""
    with rasterio.open(samples / "s1" / FALL) as s1:
        sar, tr, crs = s1.read(), s1.transform, s1.crs
    shifted = sar[:, 10:, 6:]
    p = write_tif(tmp_path / "s1_shift.tif", shifted, crs=crs.to_string(),
                  transform=tuple(tr @ rasterio.Affine.translation(6, 10))[:6])
    opt = samples / "s2_cloudy" / FALL
    _bad_line = main(_infer(model, "--optical", opt, "--sar", p, "-o", tmp_path / "x.tif"))
    assert _bad_line == 2
    # raw outputs (--no-composite): the smoothing of invented detail reaches 64 px and would carry the
    # uncovered border's difference inwards; the alignment is what is under test
    assert main(_infer(model, "--optical", opt, "--sar", p, "-o", tmp_path / "al.tif", "--align",
                       "--no-composite")) == 0
    assert main(_infer(model, "--optical", opt, "--sar", samples / "s1" / FALL, "-o", tmp_path / "co.tif",
                       "--no-composite")) == 0
    with rasterio.open(tmp_path / "al.tif") as a, rasterio.open(tmp_path / "co.tif") as c:
        assert a.shape == (256, 256) and a.transform == tr
        # where the shifted S1 still covers the scene (beyond the 3x3 model's reach) the results agree
        np.testing.assert_allclose(a.read()[:, 12:, 8:].astype(float), c.read()[:, 12:, 8:], atol=1)


def test_mask_command(samples: Path, tmp_path: Path) -> None:
    src = samples / "s2_cloudy" / FALL
    with rasterio.open(src) as s:
        dn = s.read()
    for method in ("paper", "sen12mscr"):
        out = tmp_path / f"{method}.tif"
        assert main(["mask", "--optical", str(src), "-o", str(out), "--method", method, "-q"]) == 0
        with rasterio.open(out) as m:
            np.testing.assert_array_equal(m.read(1), cloud_mask(dn, method).astype(np.uint8))
            assert m.crs is not None and m.nodata == 255
    out = tmp_path / "shadow.tif"
    assert main(["mask", "--optical", str(src), "-o", str(out), "--shadow", "-q"]) == 0
    with rasterio.open(out) as m:
        v = m.read(1)
    cloud = cloud_mask(dn)
    np.testing.assert_array_equal(v == 1, cloud)
    np.testing.assert_array_equal(v == 2, shadow_mask(dn) & ~cloud)


def test_bad_mask_inputs(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    opt, _ = synthetic_scene(16, 16)
    p = write_tif(tmp_path / "s2.tif", opt)
    _bad(capsys, ["mask", "--optical", str(p), "-o", str(tmp_path / "m.tif"), "--method", "magic"],
         "unknown cloud-mask method", out_dir=tmp_path)
    _bad(capsys, ["mask", "--optical", str(tmp_path / "no.tif"), "-o", str(tmp_path / "m.tif")],
         "does not exist", out_dir=tmp_path)


# -- batch mode ------------------------------------------------------------------------------------------

def test_batch_mode_pairs_skips_finished_and_reports_bad_pairs(model: Path, samples: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    inp = tmp_path / "in"
    for sub in ("s2_cloudy", "s1"):
        (inp / sub).mkdir(parents=True)
        for name in (FALL, "ROIs2017_winter_112_p797.tif"):
            shutil.copy(samples / sub / name, inp / sub / name)
    out = tmp_path / "out"
    assert main(_infer(model, "--input-dir", inp, "--output-dir", out)) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([FALL, "ROIs2017_winter_112_p797.tif"])
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    # resumable: a rerun skips finished outputs
    (out / FALL).unlink()
    assert main(_infer(model, "--input-dir", inp, "--output-dir", out)) == 0
    assert (out / FALL).exists()
    assert (out / "ROIs2017_winter_112_p797.tif").stat().st_mtime_ns == mtimes["ROIs2017_winter_112_p797.tif"]
    # a bad pair is reported, the good ones still run, exit code 2
    bad = np.zeros((4, 8, 8), np.uint16)
    write_tif(inp / "s2_cloudy" / "bad.tif", bad)
    write_tif(inp / "s1" / "bad.tif", np.zeros((2, 8, 8), np.float32))
    capsys.readouterr()
    rc = main(_infer(model, "--input-dir", inp, "--output-dir", out))
    err = capsys.readouterr().err
    assert rc == 2
    assert "error: bad.tif: optical (S2) file" in err and "has 4 bands; expected 13" in err
    assert not (out / "bad.tif").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_batch_pairing_flat_names(tmp_path: Path) -> None:
    from cloudrt.cli.infer import find_pairs

    for n in ("T31_S2.tif", "T31_S1.tif", "x-s2_cloudy-7.tif", "x-s1-7.tif", "lonely_S2.tif", "notes.txt"):
        (tmp_path / n).write_bytes(b"")
    pairs, unpaired = find_pairs(tmp_path)
    assert [(n, o.name, s.name) for n, o, s in pairs] == [("T31_S2.tif", "T31_S2.tif", "T31_S1.tif"),
                                                          ("x-s2_cloudy-7.tif", "x-s2_cloudy-7.tif", "x-s1-7.tif")]
    assert len(unpaired) == 1 and "lonely_S2.tif" in unpaired[0]


# -- bad input: one line, exit 2, no output --------------------------------------------------------------

@pytest.fixture()
def good(tmp_path: Path) -> tuple[Path, Path, Path]:
    d = tmp_path / "data"
    d.mkdir()
    opt, sar = synthetic_scene(48, 40)
    out = tmp_path / "out"
    out.mkdir()
    return write_tif(d / "s2.tif", opt), write_tif(d / "s1.tif", sar), out


def test_bad_band_counts(capsys, model, good) -> None:
    o, s, out = good
    opt, sar = synthetic_scene(48, 40)
    o12 = write_tif(o.parent / "o12.tif", opt[:12])
    s3 = write_tif(o.parent / "s3.tif", np.concatenate([sar, sar[:1]]))
    _bad(capsys, _infer(model, "--optical", o12, "--sar", s, "-o", out / "x.tif"),
         "has 12 bands; expected 13", out_dir=out)
    _bad(capsys, _infer(model, "--optical", o, "--sar", s3, "-o", out / "x.tif"),
         "has 3 bands; expected 2", out_dir=out)


def test_bad_grids(capsys, model, good) -> None:
    o, s, out = good
    _, sar = synthetic_scene(48, 40)
    moved = write_tif(o.parent / "moved.tif", sar, transform=(10.0, 0.0, 500050.0, 0.0, -10.0, 5000000.0))
    far = write_tif(o.parent / "far.tif", sar, transform=(10.0, 0.0, 900000.0, 0.0, -10.0, 5000000.0))
    _bad(capsys, _infer(model, "--optical", o, "--sar", moved, "-o", out / "x.tif"),
         "different grids", "--align", out_dir=out)
    _bad(capsys, _infer(model, "--optical", o, "--sar", far, "-o", out / "x.tif", "--align"),
         "do not overlap", out_dir=out)


def test_missing_and_unreadable_files(capsys, model, good) -> None:
    o, s, out = good
    junk = o.parent / "junk.tif"
    junk.write_text("not a raster")
    _bad(capsys, _infer(model, "--optical", o.parent / "nope.tif", "--sar", s, "-o", out / "x.tif"),
         "does not exist", out_dir=out)
    _bad(capsys, _infer(model, "--optical", o, "--sar", junk, "-o", out / "x.tif"),
         "cannot be read as a raster", out_dir=out)
    _bad(capsys, _infer(model, "--optical", o, "--sar", s), "missing -o", out_dir=out)


def test_unsupported_dtype(capsys, model, good) -> None:
    o, s, out = good
    opt, _ = synthetic_scene(48, 40)
    c = write_tif(o.parent / "c.tif", opt.astype(np.complex64))
    _bad(capsys, _infer(model, "--optical", c, "--sar", s, "-o", out / "x.tif"),
         "unsupported data type complex64", out_dir=out)


def test_nan_everywhere_and_all_nodata(capsys, model, good) -> None:
    o, s, out = good
    nan_s1 = write_tif(o.parent / "nan.tif", np.full((2, 48, 40), np.nan, np.float32))
    inf_s2 = write_tif(o.parent / "inf.tif", np.full((13, 48, 40), np.inf, np.float32))
    nodata = write_tif(o.parent / "nd.tif", np.zeros((13, 48, 40), np.uint16), nodata=0)
    _bad(capsys, _infer(model, "--optical", o, "--sar", nan_s1, "-o", out / "x.tif"),
         "SAR (S1)", "no valid pixel", out_dir=out)
    _bad(capsys, _infer(model, "--optical", inf_s2, "--sar", s, "-o", out / "x.tif"),
         "optical (S2)", "no valid pixel", out_dir=out)
    _bad(capsys, _infer(model, "--optical", nodata, "--sar", s, "-o", out / "x.tif"),
         "nodata=0", out_dir=out)


def test_bad_models(capsys, good, tmp_path: Path) -> None:
    o, s, out = good
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(os.urandom(2000))
    wrong = make_onnx(tmp_path / "wrong.onnx", tile=32, names=("image", "radar", "y"))
    base = ["--optical", o, "--sar", s, "-o", out / "x.tif"]
    _bad(capsys, _infer(corrupt, *base), "not a loadable ONNX model", out_dir=out)
    _bad(capsys, _infer(wrong, *base), "its inputs are image, radar", "expected inputs optical", out_dir=out)
    _bad(capsys, _infer(tmp_path / "none.onnx", *base), "does not exist", out_dir=out)


def test_engine_for_another_gpu(capsys, good, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cloudrt.runtime import tensorrt_backend

    o, s, out = good
    engine = tmp_path / "carf.engine"
    engine.write_bytes(b"\x00" * 64)
    (tmp_path / "carf.engine.json").write_text(json.dumps(
        {"trt_version": "10.3.0", "compute_capability": "8.9", "gpu_name": "NVIDIA L4", "engine": str(engine)}))
    monkeypatch.setattr(tensorrt_backend, "local_environment", lambda device_id=0: ("10.8.0", "8.9"))
    _bad(capsys, _infer(engine, "--optical", o, "--sar", s, "-o", out / "x.tif"),
         "TensorRT 10.3.0", "TensorRT 10.8.0", "cloudrt export", "--format engine", out_dir=out)
    monkeypatch.setattr(tensorrt_backend, "local_environment", lambda device_id=0: ("10.3.0", "9.0"))
    _bad(capsys, _infer(engine, "--optical", o, "--sar", s, "-o", out / "x.tif"),
         "compute capability 8.9", out_dir=out)


def test_existing_output_and_unwritable_path(capsys, model, good) -> None:
    o, s, out = good
    existing = out / "exists.tif"
    existing.write_bytes(b"keep me")
    _bad(capsys, _infer(model, "--optical", o, "--sar", s, "-o", existing), "already exists", "--overwrite",
         out_dir=out)
    assert existing.read_bytes() == b"keep me"
    blocker = out / "file"
    blocker.write_bytes(b"")
    _bad(capsys, _infer(model, "--optical", o, "--sar", s, "-o", blocker / "sub" / "x.tif"),
         "cannot create output directory", out_dir=out)
    _bad(capsys, _infer(model, "--optical", o, "--sar", s, "-o", blocker / "x.tif"), "is a file, not a directory",
         out_dir=out)
    # a missing output folder is created (the README's `-o out/clear.tif` on a fresh clone)
    assert main(_infer(model, "--optical", o, "--sar", s, "-o", out / "new" / "dir" / "x.tif")) == 0
    assert (out / "new" / "dir" / "x.tif").exists()
    assert main(_infer(model, "--optical", o, "--sar", s, "-o", existing, "--overwrite")) == 0
    with rasterio.open(existing) as r:
        assert r.count == 13


def test_debug_shows_traceback(model, good) -> None:
    from cloudrt.errors import InputError

    o, s, out = good
    with pytest.raises(InputError):
        main(["--debug", *_infer(model, "--optical", o.parent / "nope.tif", "--sar", s, "-o", out / "x.tif")])


def test_interrupted_run_leaves_nothing(model, good, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from cloudrt.runtime.onnx_backend import OnnxRuntimeBackend

    o, s, out = good
    opt, sar = synthetic_scene(300, 200)
    big_o, big_s = write_tif(o.parent / "bo.tif", opt), write_tif(o.parent / "bs.tif", sar)
    calls = {"n": 0}
    real = OnnxRuntimeBackend._run

    def flaky(self, a, b):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self, a, b)

    monkeypatch.setattr(OnnxRuntimeBackend, "_run", flaky)
    rc = main(_infer(model, "--optical", big_o, "--sar", big_s, "-o", out / "x.tif", "--mask-out", out / "m.tif",
                     "--batch", "1"))
    assert rc == 130 and calls["n"] == 3
    assert list(out.iterdir()) == []
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: interrupted; the unfinished output was removed (finished ones are kept). Rerun the "
                   "same command to continue."]


def test_console_script_sigterm_and_exit_code(model, good, tmp_path: Path) -> None:
    """The installed ``cloudrt`` script: exit 2 with one line on bad input; SIGTERM mid-run leaves no file."""
    exe = shutil.which("cloudrt") or [sys.executable, "-m", "cloudrt.cli"]
    cmd = [exe] if isinstance(exe, str) else exe
    o, s, out = good
    r = subprocess.run([*cmd, "infer", "--optical", str(o), "--sar", str(s), "-o", str(out / "x.tif"),
                        "--model", str(model), "--backend", "cuda"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith("error: ")
    assert "Traceback" not in r.stderr and list(out.iterdir()) == []
    opt, sar = synthetic_scene(1200, 1200)
    big_o, big_s = write_tif(tmp_path / "bo.tif", opt), write_tif(tmp_path / "bs.tif", sar)
    small = make_onnx(tmp_path / "small.onnx", tile=32, kernel=3)
    p = subprocess.Popen([*cmd, "infer", "--optical", str(big_o), "--sar", str(big_s), "-o", str(out / "x.tif"),
                          "--model", str(small), "--batch", "1", "--overlap", "16"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and not any(out.iterdir()) and p.poll() is None:
        time.sleep(0.02)
    assert p.poll() is None, p.communicate()
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert list(out.iterdir()) == []


@pytest.mark.skipif(not DEFAULT_ONNX.exists(), reason="the shipped model export/carf-demo.onnx is not built yet")
def test_readme_first_command_on_bundled_sample(tmp_path: Path) -> None:
    name = FALL
    rc = main(["infer", "-q", "--optical", str(SAMPLE_DIR / "s2_cloudy" / name), "--sar", str(SAMPLE_DIR / "s1" / name),
               "-o", str(tmp_path / "clear.tif")])
    assert rc == 0
    with rasterio.open(tmp_path / "clear.tif") as o, rasterio.open(SAMPLE_DIR / "s2_cloudy" / name) as s:
        assert o.crs == s.crs and o.shape == s.shape


def test_readme_flow_with_a_stand_in_default_model(tmp_path: Path) -> None:
    """The README's first command (default model, bundled sample, `-o out/clear.tif` into a folder that does
    not exist yet) as a fresh process, with a tiny stand-in for export/carf-demo.onnx (CLOUDRT_EXPORT_DIR)."""
    export = tmp_path / "export"
    export.mkdir()
    make_onnx(export / "carf-demo.onnx", tile=64, kernel=3)
    env = {**os.environ, "CLOUDRT_EXPORT_DIR": str(export)}
    exe = shutil.which("cloudrt")
    cmd = [exe] if exe else [sys.executable, "-m", "cloudrt.cli"]
    r = subprocess.run([*cmd, "infer", "--optical", str(SAMPLE_DIR / "s2_cloudy" / FALL), "--sar",
                        str(SAMPLE_DIR / "s1" / FALL), "-o", "out/clear.tif", "--mask-out", "out/mask.tif",
                        "--overwrite"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "auto-selected" in r.stderr and "wrote out/clear.tif" in r.stderr
    with rasterio.open(tmp_path / "out" / "clear.tif") as o, rasterio.open(SAMPLE_DIR / "s2_cloudy" / FALL) as s:
        assert o.crs == s.crs and o.transform == s.transform and o.shape == s.shape
    assert (tmp_path / "out" / "mask.tif").exists()


def test_bundled_sample_is_small_real_and_attributed() -> None:
    files = sorted(SAMPLE_DIR.rglob("*.tif"))
    assert {f.parent.name for f in files} == {"s1", "s2", "s2_cloudy"}
    assert sum(f.stat().st_size for f in files) < 3e6
    readme = (SAMPLE_DIR / "README.md").read_text()
    assert "CC-BY 4.0" in readme and "Ebel" in readme and "Copernicus Sentinel" in readme
    with rasterio.open(SAMPLE_DIR / "s2_cloudy" / FALL) as s2, rasterio.open(SAMPLE_DIR / "s1" / FALL) as s1:
        assert (s2.count, s1.count, s2.crs, s2.transform) == (13, 2, s1.crs, s1.transform)


def test_no_sar_runs_on_optical_alone(model: Path, samples: Path, tmp_path: Path) -> None:
    """--no-sar: the model gets the normalized "no SAR" input (0), as Runtime.predict(dn, None) does."""
    from cloudrt.runtime import Runtime

    out = tmp_path / "o.tif"
    opt = samples / "s2_cloudy" / FALL
    assert main(_infer(model, "--optical", opt, "--no-sar", "-o", out)) == 0
    with rasterio.open(opt) as s, rasterio.open(out) as o:
        dn, got = s.read(), o.read()
        assert o.crs == s.crs and o.transform == s.transform
    ref = Runtime(model).predict(dn, None)
    assert np.abs(got.astype(np.float64) - np.rint(ref)).max() <= 1
    with_sar = tmp_path / "s.tif"
    assert main(_infer(model, "--optical", opt, "--sar", samples / "s1" / FALL, "-o", with_sar)) == 0
    with rasterio.open(with_sar) as w:
        assert (w.read() != got).any()  # the SAR evidence does change the reconstruction


def test_no_sar_conflicts_are_one_line(model: Path, samples: Path, tmp_path: Path, capsys) -> None:
    opt = samples / "s2_cloudy" / FALL
    assert main(_infer(model, "--optical", opt, "--no-sar", "--sar", samples / "s1" / FALL, "-o",
                       tmp_path / "a.tif")) == 2
    assert main(_infer(model, "--optical", opt, "-o", tmp_path / "b.tif")) == 2
    err = capsys.readouterr().err
    assert "--no-sar is for a single scene" in err and "missing --sar" in err and "--no-sar instead" in err
    assert not list(tmp_path.glob("*.tif"))
