"""``cloudrt preview`` (cloudrt.scene.preview): the PNG's layout, the bands shown, one stretch for input and
output, the weight from an ``infer --mask-out`` file, and bad input refused with one line and exit 2."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
from runtime_helpers import VEGETATION_DN, make_onnx, realistic_scene, write_tif

from cloudrt.cli import main
from cloudrt.contract import S2_BANDS
from cloudrt.scene.preview import GUTTER, make_preview

B = {b: i for i, b in enumerate(S2_BANDS)}
H, W = 40, 56


def _read_png(path: Path) -> np.ndarray:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(path) as ds:
            assert ds.driver == "PNG" and ds.count == 3 and ds.dtypes[0] == "uint8"
            return ds.read()


def _panels(img: np.ndarray, n: int) -> list[np.ndarray]:
    w = (img.shape[2] - (n - 1) * GUTTER) // n
    assert n * w + (n - 1) * GUTTER == img.shape[2]
    return [img[:, :, i * (w + GUTTER): i * (w + GUTTER) + w] for i in range(n)]


def _textured(seed: int = 0, h: int = H, w: int = W) -> np.ndarray:
    """Clear vegetation with texture (uint16 DN): no cloud for any mask."""
    rng = np.random.default_rng(seed)
    tex = 1 + 0.15 * rng.standard_normal((h, w))
    return np.clip(VEGETATION_DN[:, None, None] * tex[None], 1, 10000).astype(np.uint16)


def _one_band_bright(band: str) -> np.ndarray:
    """Flat vegetation, with ``band`` 2000 DN brighter on the left half only."""
    dn = np.repeat(np.repeat(VEGETATION_DN[:, None, None], H, 1), W, 2)
    dn[B[band], :, : W // 2] += 2000
    return dn.astype(np.uint16)


def _bad(argv: list[str], capsys: pytest.CaptureFixture, *words: str) -> None:
    rc = main(argv)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for w in words:
        assert w in lines[0], (w, lines[0])


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("preview")
    opt, sar = realistic_scene(H, W, seed=3)
    return {"optical": write_tif(d / "s2.tif", opt), "sar": write_tif(d / "s1.tif", sar),
            "output": write_tif(d / "out.tif", _textured(1)), "reference": write_tif(d / "ref.tif", _textured(2))}


@pytest.mark.parametrize("extra, n", [((), 3), (("output",), 4), (("output", "reference"), 5)])
@pytest.mark.parametrize("size, ph, pw", [(512, H, W), (28, 20, 28)])
def test_png_size_is_panels_times_size_plus_gutters(scene, tmp_path, capsys, extra, n, size, ph, pw) -> None:
    png = tmp_path / "q.png"
    args = [a for k in extra for a in (f"--{k}", str(scene[k]))]
    assert main(["preview", "--optical", str(scene["optical"]), *args, "--size", str(size), "-o", str(png)]) == 0
    assert "wrote" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.png"]  # no .aux.xml, no temporary file
    img = _read_png(png)
    assert img.shape == (3, ph, n * pw + (n - 1) * GUTTER)
    for i in range(1, n):  # white gutters between panels
        assert (img[:, :, i * (pw + GUTTER) - GUTTER: i * (pw + GUTTER)] == 255).all()
    for p in _panels(img, n)[-2:]:  # weight and confidence are grey levels
        assert (p[0] == p[1]).all() and (p[1] == p[2]).all()


@pytest.mark.parametrize("band, channel", [("B4", 0), ("B3", 1), ("B2", 2), ("B8", None), ("B1", None),
                                           ("B5", None), ("B11", None)])
def test_rgb_panel_is_b4_b3_b2(tmp_path, band, channel) -> None:
    path = write_tif(tmp_path / "x.tif", _one_band_bright(band))
    rgb = _panels(make_preview(path), 3)[0].astype(int)
    left, right = rgb[:, :, : W // 2], rgb[:, :, W // 2:]
    for c in range(3):
        if c == channel:
            assert left[c].mean() > right[c].mean() + 100, (band, c)
        else:  # a band that is not shown in this channel leaves it the same on both halves
            assert np.array_equal(left[c], right[c]), (band, c)


def test_output_and_reference_use_the_input_stretch(tmp_path) -> None:
    dn = _textured(5)
    src = write_tif(tmp_path / "in.tif", dn)
    same = write_tif(tmp_path / "same.tif", dn)
    darker = write_tif(tmp_path / "dark.tif", (dn * 0.6).astype(np.uint16))
    p_in, p_same, p_dark, _, _ = _panels(make_preview(src, output=same, reference=darker), 5)
    np.testing.assert_array_equal(p_same, p_in)
    assert p_in.std() > 20  # a stretched picture, not a flat one
    # a darker image is shown darker (a stretch of its own would have brightened it back)
    assert p_dark.astype(float).mean() < p_in.astype(float).mean() - 40


def test_mask_out_of_infer_gives_the_weight_panel(scene, tmp_path, capsys) -> None:
    model = make_onnx(tmp_path / "m.onnx", tile=32, kernel=1)
    out, mask, png = tmp_path / "out.tif", tmp_path / "mask.tif", tmp_path / "q.png"
    assert main(["infer", "--model", str(model), "-q", "--optical", str(scene["optical"]), "--sar", str(scene["sar"]),
                 "-o", str(out), "--mask-out", str(mask)]) == 0
    assert main(["preview", "--optical", str(scene["optical"]), "--output", str(out), "--mask", str(mask),
                 "-o", str(png)]) == 0
    with rasterio.open(mask) as m:
        assert m.count == 2
        cls, pct = m.read(1), m.read(2)
    assert (pct == 100).any() and not np.array_equal(pct, np.where(cls == 1, 100, 0))  # band 2 is the weight
    weight = _panels(_read_png(png), 4)[2]
    expect = np.where(pct == 255, 0, np.rint(255 * pct.astype(float) / 100)).astype(np.uint8)
    np.testing.assert_array_equal(weight[0], expect)
    assert not np.array_equal(weight[0], np.where(cls == 1, 255, 0))  # not band 1


def test_mask_band_2_is_used_not_band_1(tmp_path) -> None:
    src = write_tif(tmp_path / "in.tif", _textured(6))
    two = np.ones((2, H, W), np.uint8)  # band 1: all cloud
    two[1, :, : W // 2], two[1, :, W // 2:] = 0, 40
    two[1, :5, :5] = 255  # nodata: nothing replaced
    mpath = write_tif(tmp_path / "m2.tif", two)
    weight = _panels(make_preview(src, mask=mpath), 3)[1][0]
    assert (weight[5:, : W // 2] == 0).all() and (weight[:5, :5] == 0).all()
    assert (weight[:, W // 2:] == 102).all()  # 40 % of 255
    one = write_tif(tmp_path / "m1.tif", (two[1:] == 40).astype(np.uint8))  # `cloudrt mask`: 1 = cloud
    weight1 = _panels(make_preview(src, mask=one), 3)[1][0]
    np.testing.assert_array_equal(weight1, np.where(two[1] == 40, 255, 0))


@pytest.mark.parametrize("flag", ["--output", "--reference", "--mask"])
def test_shape_mismatch_is_one_line_exit_2(scene, tmp_path, capsys, flag) -> None:
    small = write_tif(tmp_path / "small.tif", _textured(7, H - 8, W) if flag != "--mask"
                      else np.zeros((2, H - 8, W), np.uint8))
    png = tmp_path / "q.png"
    _bad(["preview", "--optical", str(scene["optical"]), flag, str(small), "-o", str(png)], capsys, flag)
    assert not png.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small.tif"]


def test_existing_png_needs_overwrite(scene, tmp_path, capsys) -> None:
    png = tmp_path / "q.png"
    png.write_bytes(b"keep me")
    _bad(["preview", "--optical", str(scene["optical"]), "-o", str(png)], capsys, "--overwrite")
    assert png.read_bytes() == b"keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.png"]
    assert main(["preview", "--optical", str(scene["optical"]), "-o", str(png), "--overwrite"]) == 0
    assert _read_png(png).shape[0] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.png"]


def test_missing_optical_and_tiny_size(scene, tmp_path, capsys) -> None:
    _bad(["preview", "--optical", str(tmp_path / "nope.tif"), "-o", str(tmp_path / "q.png")], capsys, "nope.tif")
    _bad(["preview", "--optical", str(scene["optical"]), "--size", "4", "-o", str(tmp_path / "q.png")], capsys,
         "--size")
    for flag in ("--output", "--reference", "--mask", "--confidence"):  # a missing extra input: one line too
        _bad(["preview", "--optical", str(scene["optical"]), flag, str(tmp_path / "gone.tif"), "-o",
              str(tmp_path / "q.png")], capsys, flag, "gone.tif")
    assert list(tmp_path.iterdir()) == []


def test_files_without_georeferencing_preview_without_warnings(tmp_path) -> None:
    """SEN12MS-CR's oriolac patches carry no georeferencing; a quicklook of them must print no rasterio
    warning, for the input nor for the mask and confidence files written beside it."""
    opt, _ = realistic_scene(H, W, seed=5)
    bare = dict(crs=None, transform=None)
    with warnings.catch_warnings():  # writing them warns too; only the preview's reading is under test
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        paths = _bare_files(tmp_path, opt, bare)
    argv = ["preview", "-o", str(tmp_path / "q.png")] + [a for k, p in paths.items() for a in (k, str(p))]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(argv) == 0
    assert not [w for w in caught if issubclass(w.category, rasterio.errors.NotGeoreferencedWarning)], caught


def _bare_files(tmp_path: Path, opt: np.ndarray, bare: dict) -> dict[str, Path]:
    return {"--optical": write_tif(tmp_path / "s2.tif", opt, **bare),
            "--output": write_tif(tmp_path / "out.tif", _textured(1), **bare),
            "--mask": write_tif(tmp_path / "mask.tif", np.zeros((2, H, W), np.uint8), **bare),
            "--confidence": write_tif(tmp_path / "conf.tif", np.full((1, H, W), 100, np.uint8), **bare)}
