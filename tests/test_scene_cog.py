"""Cloud-Optimized GeoTIFF output: valid layout, atomic, same georeferencing, descriptions and tags."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from cloudrt.errors import InputError
from cloudrt.scene.cog import check_cog, to_cog, validate_cog

H, W = 600, 700


def _gtiff(path, count=3, dtype="uint16"):
    data = np.random.default_rng(1).integers(1, 9000, (count, H, W)).astype(dtype)
    with rasterio.open(path, "w", driver="GTiff", width=W, height=H, count=count, dtype=dtype, nodata=0,
                       crs="EPSG:32634", transform=from_origin(300000, 6100020, 10, 10), tiled=True,
                       blockxsize=256, blockysize=256, compress="deflate") as d:
        d.write(data)
        d.descriptions = tuple(f"B{i + 1}" for i in range(count))
        d.update_tags(CLOUDRT_MODEL_SHA256="ab" * 32, CLOUDRT_OPTICAL_CONVENTION="x10000")
        d.update_tags(count, BANDNAME=f"B{count}")
    return data


def test_cog_is_valid_and_keeps_pixels_georeferencing_descriptions_and_tags(tmp_path):
    src, dst = tmp_path / "plain.tif", tmp_path / "out.tif"
    data = _gtiff(src)
    assert validate_cog(src), "a plain tiled GeoTIFF without overviews must not pass as a COG"
    to_cog(src, dst)
    assert validate_cog(dst) == []
    check_cog(dst)
    with rasterio.open(src) as a, rasterio.open(dst) as b:
        assert np.array_equal(b.read(), data)
        assert (b.crs, b.transform, b.nodata, b.descriptions) == (a.crs, a.transform, a.nodata, a.descriptions)
        assert b.tags()["CLOUDRT_MODEL_SHA256"] == "ab" * 32 and b.tags(3)["BANDNAME"] == "B3"
        assert b.overviews(1) == [2]  # halved until it fits one 512-pixel tile
        # Overviews are 2x2 means of the full resolution (average resampling), rounded.
        ovr = b.read(1, out_shape=(H // 2, W // 2))
    ref = data[0].astype(np.float64).reshape(H // 2, 2, W // 2, 2).mean(axis=(1, 3))
    assert np.abs(ovr - ref).max() <= 1.0
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == [], "no temporary file left"


def test_failed_conversion_leaves_the_previous_output_and_no_temp(tmp_path):
    dst = tmp_path / "out.tif"
    dst.write_bytes(b"previous")
    (tmp_path / "broken.tif").write_bytes(b"II*\x00garbage")
    with pytest.raises(rasterio.errors.RasterioIOError):
        to_cog(tmp_path / "broken.tif", dst)
    assert dst.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.tif", "out.tif"]


def test_float_and_mask_outputs(tmp_path):
    src, dst = tmp_path / "conf.tif", tmp_path / "conf_cog.tif"
    _gtiff(src, count=1, dtype="float32")
    to_cog(src, dst, resampling="nearest", remove_src=True)
    assert not src.exists() and validate_cog(dst) == []


def test_check_cog_is_one_line(tmp_path):
    src = tmp_path / "plain.tif"
    _gtiff(src)
    with pytest.raises(InputError) as e:
        check_cog(src)
    assert "\n" not in str(e.value) and "LAYOUT=COG" in str(e.value)
