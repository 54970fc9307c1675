"""GeoTIFF I/O: validation of inputs, grid matching / --align, atomic outputs, output profile."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from runtime_helpers import synthetic_scene, write_tif

from cloudrt.errors import InputError
from cloudrt.scene.io import (
    atomic_output,
    band_descriptions,
    check_output_path,
    is_georeferenced,
    match_grids,
    open_optical,
    open_sar,
    output_profile,
    read_rows,
    write_raster,
)

GT = (10.0, 0.0, 500000.0, 0.0, -10.0, 5000000.0)
# the tests write and read plain (ungeoreferenced) rasters on purpose; rasterio's own Affine use is not ours
pytestmark = [pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning"),
              pytest.mark.filterwarnings("ignore:Use `@` matmul:PendingDeprecationWarning")]


@pytest.fixture()
def pair(tmp_path: Path) -> tuple[Path, Path]:
    opt, sar = synthetic_scene(40, 50)
    return write_tif(tmp_path / "s2.tif", opt), write_tif(tmp_path / "s1.tif", sar)


def test_open_valid_pair(pair: tuple[Path, Path]) -> None:
    with open_optical(pair[0]) as o, open_sar(pair[1]) as s:
        assert (o.count, s.count) == (13, 2)
        assert match_grids(o, s) is s
        np.testing.assert_array_equal(read_rows(o, 5, 9), o.read()[:, 5:9])


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        open_optical(tmp_path / "nope.tif")
    junk = tmp_path / "junk.tif"
    junk.write_bytes(b"this is not a tiff" * 10)
    with pytest.raises(InputError, match="cannot be read as a raster"):
        open_sar(junk)
    with pytest.raises(InputError, match="is a directory"):
        open_optical(tmp_path)


def test_band_counts_are_checked(tmp_path: Path) -> None:
    opt, sar = synthetic_scene(8, 8)
    with pytest.raises(InputError, match=r"has 4 bands; expected 13"):
        open_optical(write_tif(tmp_path / "o4.tif", opt[:4]))
    with pytest.raises(InputError, match=r"has 1 band; expected 2"):
        open_sar(write_tif(tmp_path / "s1.tif", sar[:1]))


def test_unsupported_dtype(tmp_path: Path) -> None:
    opt, _ = synthetic_scene(8, 8)
    p = write_tif(tmp_path / "c.tif", opt.astype(np.complex64))
    with pytest.raises(InputError, match="unsupported data type complex64"):
        open_optical(p)


def test_shifted_grid_refused_then_aligned(tmp_path: Path) -> None:
    opt, sar = synthetic_scene(40, 50)
    po = write_tif(tmp_path / "s2.tif", opt)
    # S1 covering a larger area, offset by (+5 rows, +3 cols): its pixel (r+5, c+3) is S2's (r, c)
    big = np.zeros((2, 60, 70), np.float32)
    big[:, 5:45, 3:53] = sar
    gt = (10.0, 0.0, GT[2] - 30.0, 0.0, -10.0, GT[5] + 50.0)
    ps = write_tif(tmp_path / "s1.tif", big, transform=gt)
    with open_optical(po) as o, open_sar(ps) as s:
        with pytest.raises(InputError, match="different grids.*--align"):
            match_grids(o, s)
        vrt = match_grids(o, s, align=True)
        try:
            got = vrt.read()
            assert got.shape == (2, 40, 50)
            np.testing.assert_allclose(got, sar, atol=1e-4)  # whole-pixel offset: bilinear is exact
        finally:
            vrt.close()


def test_align_reprojects_another_crs(tmp_path: Path) -> None:
    opt, sar = synthetic_scene(40, 50)
    po = write_tif(tmp_path / "s2.tif", opt, crs="EPSG:32631")
    with rasterio.open(po) as o:
        from rasterio.warp import calculate_default_transform

        tr, w, h = calculate_default_transform(o.crs, "EPSG:4326", o.width, o.height, *o.bounds)
    ps = write_tif(tmp_path / "s1.tif", np.full((2, h, w), -10.0, np.float32), crs="EPSG:4326",
                   transform=tuple(tr)[:6])
    with open_optical(po) as o, open_sar(ps) as s:
        with pytest.raises(InputError, match="--align"):
            match_grids(o, s)
        vrt = match_grids(o, s, align=True)
        try:
            got = vrt.read()
            inner = got[:, 3:-3, 3:-3]
            np.testing.assert_allclose(inner, -10.0, atol=1e-4)
        finally:
            vrt.close()


def test_grids_that_do_not_overlap(tmp_path: Path) -> None:
    opt, sar = synthetic_scene(20, 20)
    po = write_tif(tmp_path / "s2.tif", opt)
    far = (10.0, 0.0, GT[2] + 1e5, 0.0, -10.0, GT[5])
    ps = write_tif(tmp_path / "s1.tif", sar, transform=far)
    with open_optical(po) as o, open_sar(ps) as s:
        for align in (False, True):
            with pytest.raises(InputError, match="do not overlap"):
                match_grids(o, s, align=align)


def test_georeferencing_mismatch_and_plain_arrays(tmp_path: Path) -> None:
    opt, sar = synthetic_scene(20, 24)
    po = write_tif(tmp_path / "s2.tif", opt)
    ps_plain = write_tif(tmp_path / "s1p.tif", sar, crs=None, transform=None)
    po_plain = write_tif(tmp_path / "s2p.tif", opt, crs=None, transform=None)
    ps_small = write_tif(tmp_path / "s1s.tif", sar[:, :10], crs=None, transform=None)
    with open_optical(po) as o, open_sar(ps_plain) as s:
        with pytest.raises(InputError, match="S2 is georeferenced but S1 is not"):
            match_grids(o, s)
    with open_optical(po_plain) as o, open_sar(ps_plain) as s:
        assert not is_georeferenced(o)
        assert match_grids(o, s) is s
    with open_optical(po_plain) as o, open_sar(ps_small) as s:
        with pytest.raises(InputError, match="differ in size"):
            match_grids(o, s, align=True)


def test_atomic_output_success_failure_interrupt(tmp_path: Path) -> None:
    final = tmp_path / "out.tif"
    with atomic_output(final) as tmp:
        assert tmp.parent == tmp_path and tmp != final
        tmp.write_bytes(b"done")
        assert not final.exists()
    assert final.read_bytes() == b"done"
    for exc in (RuntimeError("boom"), KeyboardInterrupt()):
        target = tmp_path / f"x{type(exc).__name__}.tif"
        with pytest.raises(type(exc)), atomic_output(target) as tmp:
            tmp.write_bytes(b"partial")
            raise exc
        assert not target.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.tif"]  # no temp files left


def test_output_path_checks(tmp_path: Path) -> None:
    existing = tmp_path / "e.tif"
    existing.write_bytes(b"x")
    with pytest.raises(InputError, match="already exists; pass --overwrite"):
        check_output_path(existing, overwrite=False)
    assert check_output_path(existing, overwrite=True) == existing
    with pytest.raises(InputError, match="does not exist; create it"):
        check_output_path(tmp_path / "missing" / "o.tif", overwrite=False)
    made = check_output_path(tmp_path / "new" / "o.tif", overwrite=False, create_parent=True)
    assert made.parent.is_dir()
    with pytest.raises(InputError, match="is a directory"):
        check_output_path(tmp_path, overwrite=True)
    with pytest.raises(InputError, match="is also an input"):
        check_output_path(existing, overwrite=True, inputs=(existing,))
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    with pytest.raises(InputError):
        check_output_path(blocker / "o.tif", overwrite=False)


def test_output_profile_keeps_grid_and_is_tiled_compressed(tmp_path: Path) -> None:
    opt, _ = synthetic_scene(300, 270)
    src = write_tif(tmp_path / "s2.tif", opt, nodata=0)
    with rasterio.open(src) as s:
        out = write_raster(tmp_path / "o.tif", opt, s, nodata=s.nodata, descriptions=band_descriptions(s, tuple(
            f"B{i}" for i in range(13))))
        with rasterio.open(out) as o:
            assert (o.width, o.height, o.crs, o.transform, o.nodata) == (s.width, s.height, s.crs, s.transform, 0)
            assert o.block_shapes[0] == (256, 256) and o.profile["tiled"]
            assert o.compression.name.lower() == "deflate"
            np.testing.assert_array_equal(o.read(), opt)
    plain = write_tif(tmp_path / "p.tif", opt[:, :20, :20], crs=None, transform=None)
    with rasterio.open(plain) as p:
        prof = output_profile(p, 13, "uint16", None)
        assert "crs" not in prof and "transform" not in prof
        out = write_raster(tmp_path / "po.tif", opt[:, :20, :20], p)
    with rasterio.open(out) as o:
        assert o.crs is None and o.transform == Affine.identity()


def test_band_descriptions_default_and_kept(tmp_path: Path) -> None:
    opt, _ = synthetic_scene(8, 8)
    names = tuple(f"band{i}" for i in range(13))
    with rasterio.open(write_tif(tmp_path / "a.tif", opt, descriptions=names)) as a:
        assert band_descriptions(a, tuple("x" * 13)) == names
    with rasterio.open(write_tif(tmp_path / "b.tif", opt)) as b:
        assert band_descriptions(b, ("d",) * 13) == ("d",) * 13


def _gdal_cache_max_mb() -> float | None:
    """GDAL's block-cache limit in this process, asked from rasterio's bundled libgdal (None if not found)."""
    import ctypes
    import glob
    import os

    import rasterio

    libs = glob.glob(os.path.dirname(rasterio.__file__) + ".libs/libgdal*")
    if not libs:
        return None
    lib = ctypes.CDLL(libs[0])
    lib.GDALGetCacheMax64.restype = ctypes.c_int64
    return lib.GDALGetCacheMax64() / 2**20


def test_gdal_env_caps_the_block_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """gdal_env sets GDAL_CACHEMAX to GDAL_CACHE_MB megabytes (as bytes: rasterio passes a number to GDAL
    as bytes) and restores it on exit; a user-set GDAL_CACHEMAX is left alone."""
    import rasterio

    from cloudrt.scene.io import GDAL_CACHE_MB, gdal_env

    monkeypatch.delenv("GDAL_CACHEMAX", raising=False)
    before = _gdal_cache_max_mb()
    with gdal_env():
        assert rasterio.env.getenv()["GDAL_CACHEMAX"] == GDAL_CACHE_MB * 2**20
        inside = _gdal_cache_max_mb()
    if inside is not None:
        assert inside == pytest.approx(GDAL_CACHE_MB)
        assert _gdal_cache_max_mb() == pytest.approx(before)
    monkeypatch.setenv("GDAL_CACHEMAX", "64")
    with gdal_env():
        assert "GDAL_CACHEMAX" not in rasterio.env.getenv()
