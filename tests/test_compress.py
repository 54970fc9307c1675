"""``cloudrt infer --compress/--compress-level``: the codec reaches the output (and mask) file, every codec
stores the same pixels, and bad values fail with one line, exit code 2 and no output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from runtime_helpers import make_onnx, synthetic_scene, write_tif

from cloudrt.cli import main
from cloudrt.errors import InputError
from cloudrt.scene.io import check_compression, output_profile


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    d = tmp_path_factory.mktemp("codec")
    opt, sar = synthetic_scene(70, 90)
    return make_onnx(d / "m.onnx", tile=32, kernel=3), write_tif(d / "o.tif", opt), write_tif(d / "s.tif", sar)


def _infer(scene: tuple[Path, Path, Path], out: Path, *extra: str) -> int:
    model, o, s = scene
    return main(["infer", "-q", "--model", str(model), "--optical", str(o), "--sar", str(s), "-o", str(out),
                 "--mask-out", str(out.with_name(out.stem + "_mask.tif")), *extra])


def test_codecs_reach_the_file_and_store_the_same_pixels(scene: tuple[Path, Path, Path], tmp_path: Path) -> None:
    data = {}
    for codec, extra, want, predictor in (("default", (), "deflate", 2),
                                          ("zstd", ("--compress", "zstd", "--compress-level", "9"), "zstd", 2),
                                          ("lzw", ("--compress", "LZW"), "lzw", 2),
                                          ("none", ("--compress", "none"), None, None)):
        out = tmp_path / f"{codec}.tif"
        assert _infer(scene, out, *extra) == 0
        for path in (out, out.with_name(out.stem + "_mask.tif")):
            with rasterio.open(path) as ds:
                got = ds.compression.value.lower() if ds.compression is not None else None
                assert got == want, (codec, path.name, got)
                assert ds.tags(ns="IMAGE_STRUCTURE").get("PREDICTOR") == (str(predictor) if predictor else None)
        with rasterio.open(out) as ds:
            data[codec] = ds.read()
    for codec, a in data.items():
        assert np.array_equal(a, data["default"]), codec  # lossless: the codec changes nothing but the bytes


def test_profile_levels() -> None:
    class Grid:
        width, height, crs, transform, gcps = 10, 10, None, None, None

    assert output_profile(Grid, 13, "uint16", None)["zlevel"] == 1  # the measured default: deflate 1
    p = output_profile(Grid, 13, "uint16", None, compress="zstd", level=9)
    assert (p["compress"], p["zstd_level"], p["predictor"]) == ("zstd", 9, 2)
    assert output_profile(Grid, 13, "float32", None, compress="deflate", level=6)["predictor"] == 3
    assert "compress" not in output_profile(Grid, 13, "uint16", None, compress="none")
    assert check_compression("ZSTD") == ("zstd", 1)
    for bad in (("jpeg", None), ("lzw", 3), ("deflate", 12), ("zstd", 0)):
        with pytest.raises(InputError):
            check_compression(*bad)


@pytest.mark.parametrize("extra, must", [
    (("--compress", "jpeg"), ("jpeg", "deflate, zstd, lzw, none")),
    (("--compress", "lzw", "--compress-level", "5"), ("lzw takes no level",)),
    (("--compress", "deflate", "--compress-level", "12"), ("1..9",)),
])
def test_bad_codec_one_line_exit_2(scene: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture,
                                   extra: tuple[str, ...], must: tuple[str, ...]) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    rc = _infer(scene, out_dir / "x.tif", *extra)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    for m in must:
        assert m in lines[0], (m, lines[0])
    assert list(out_dir.iterdir()) == []
