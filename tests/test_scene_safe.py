"""Sentinel-2 L1C SAFE input: GDAL's SENTINEL2 driver, 13 bands on the 10 m grid, offset, windows."""

from __future__ import annotations

import numpy as np
import pytest
from rasterio.windows import Window
from safe_factory import EPSG, NATIVE, ULX, ULY, make_safe, zip_safe

from cloudrt.errors import InputError
from cloudrt.scene.safe import S2_BANDS, SafeReader, is_safe_path, to_sen12mscr


def _bilinear_up(a: np.ndarray, s: int) -> tuple[np.ndarray, np.ndarray]:
    """Float64 reference: bilinear upsampling by ``s`` with pixel-centre alignment and edge clamping.

    Returns the values and a mask of the 10 m pixels whose four source neighbours are all valid (DN != 0);
    only those are compared (GDAL renormalises the weights around NODATA, which is not re-derived here).
    """
    n = a.shape[0]
    u = (np.arange(n * s) + 0.5) / s - 0.5
    i0 = np.floor(u).astype(int)
    f = u - i0
    lo, hi = np.clip(i0, 0, n - 1), np.clip(i0 + 1, 0, n - 1)
    x = a.astype(np.float64)
    rows = x[lo] * (1 - f)[:, None] + x[hi] * f[:, None]
    out = rows[:, lo] * (1 - f)[None, :] + rows[:, hi] * f[None, :]
    v = a != 0
    valid = v[lo][:, lo] & v[lo][:, hi] & v[hi][:, lo] & v[hi][:, hi]
    return out, valid


@pytest.fixture(scope="module", params=[("05.09", -1000), ("03.01", None)], ids=["offset", "no-offset"])
def product(request, tmp_path_factory):
    baseline, offset = request.param
    safe, data = make_safe(tmp_path_factory.mktemp("safe"), n10=60, baseline=baseline, offset=offset)
    return safe, data, (offset or 0)


def test_reads_13_bands_in_model_order_with_offset(product):
    safe, data, off = product
    with SafeReader(safe) as r:
        assert (r.count, r.width, r.height) == (13, 60, 60)
        assert r.crs.to_epsg() == EPSG and r.transform.c == ULX and r.transform.f == ULY and r.res == (10.0, 10.0)
        assert r.descriptions == S2_BANDS
        assert list(r.offsets) == [off] * 13
        got = r.read()
    assert got.dtype == np.uint16 and got.shape == (13, 60, 60)
    for k, (name, res) in enumerate(NATIVE):
        s = res // 10
        ref, valid = _bilinear_up(data[name], s)
        # Independent: DN + offset; NODATA stays 0, valid pixels floor at 1.
        expect = np.where(valid, np.clip(np.rint(ref) + off, 1, None), 0)
        diff = np.abs(got[k].astype(np.int64) - expect.astype(np.int64))[valid]
        assert diff.max() <= 1, f"{S2_BANDS[k]} ({res} m) differs by up to {diff.max()} DN"
        if s == 1:
            assert np.array_equal(got[k][valid], expect[valid].astype(np.uint16)), "10 m bands must be exact"
        nodata_cells = data[name] == 0
        full = np.kron(nodata_cells, np.ones((s, s), bool))
        assert (got[k][full] == 0).all(), "NODATA must stay 0"
        assert (got[k][~full] > 0).all(), "valid pixels must not become NODATA"


def test_offset_is_what_separates_the_conventions(tmp_path):
    """Same DNs, baseline 05.09 with offset vs 03.01 without: the reads differ by exactly 1000 where valid."""
    a, _ = make_safe(tmp_path / "a", baseline="05.09", offset=-1000, seed=3)
    b, _ = make_safe(tmp_path / "b", baseline="03.01", offset=None, seed=3)
    with SafeReader(a) as ra, SafeReader(b) as rb:
        xa, xb = ra.read().astype(np.int64), rb.read().astype(np.int64)
    valid = (xb > 1001)
    assert np.array_equal(xb[valid] - xa[valid], np.full(valid.sum(), 1000))


def test_windows_tile_the_grid_exactly(product):
    safe, _, _ = product
    with SafeReader(safe) as r:
        whole = r.read()
        tiled = np.zeros_like(whole)
        for r0 in range(0, 60, 25):
            for c0 in range(0, 60, 17):
                h, w = min(25, 60 - r0), min(17, 60 - c0)
                tiled[:, r0:r0 + h, c0:c0 + w] = r.read(window=Window(c0, r0, w, h))
        assert np.array_equal(tiled, whole)
        assert np.array_equal(r.read(9, window=Window(3, 4, 5, 6)), whole[8, 4:10, 3:8])


def test_tiled_product_reads_the_same_and_sizes_the_cache_for_one_tile_row(tmp_path, monkeypatch):
    plain, _ = make_safe(tmp_path / "plain", n10=192, seed=3)
    tiled, _ = make_safe(tmp_path / "tiled", n10=192, seed=3, jp2_block=64)  # like ESA's 1024 px JP2 tiles
    with SafeReader(plain) as p, SafeReader(tiled) as t:
        whole = p.read()
        assert np.array_equal(t.read(), whole)
        rows = [np.concatenate([t.read(window=Window(c, r, min(80, 192 - c), min(56, 192 - r)))
                                for c in range(0, 192, 80)], axis=2)
                for r in range(0, 192, 56)]  # windows across tile borders, the last ones cut short
        assert np.array_equal(np.concatenate(rows, axis=1), whole)
        assert np.array_equal(t.read([11, 3], window=Window(10, 20, 30, 40)), whole[[10, 2], 20:60, 10:40])
    # GDAL's block cache must hold one row of whole JPEG 2000 blocks (GDAL's JP2 blocks: the tiles, or
    # tile rows for small tiles) of all 13 band files at their native resolution, not whole bands
    import rasterio

    row = band = 0
    for f in tiled.rglob("*.jp2"):
        with rasterio.open(f) as ds:
            (by, bx), = set(ds.block_shapes)
            row += -(-ds.width // bx) * bx * by * 2
            band += ds.width * ds.height * 2
    assert t.cache_bytes == row and row <= band / 2
    from cloudrt.scene.io import GDAL_CACHE_MB, gdal_env

    monkeypatch.delenv("GDAL_CACHEMAX", raising=False)
    assert gdal_env(t.cache_bytes).options["GDAL_CACHEMAX"] == GDAL_CACHE_MB * 2**20 + t.cache_bytes


def test_folder_zip_and_xml_read_the_same(product):
    safe, _, _ = product
    z = zip_safe(safe)
    assert is_safe_path(safe) and is_safe_path(z) and is_safe_path(safe / "MTD_MSIL1C.xml")
    with SafeReader(safe) as r1, SafeReader(z) as r2, SafeReader(safe / "MTD_MSIL1C.xml") as r3:
        a = r1.read()
        assert np.array_equal(a, r2.read()) and np.array_equal(a, r3.read())
        tags = r1.tags()
    assert tags["CLOUDRT_RESAMPLING_20M_60M"] == "bilinear"
    assert "reflectance x 10000" in tags["CLOUDRT_OPTICAL_CONVENTION"]


def test_nearest_resampling_replicates_coarse_pixels(product):
    safe, data, off = product
    with SafeReader(safe, resampling="nearest") as r:
        b1 = r.read(1)
    expect = to_sen12mscr(np.kron(data["B01"], np.ones((6, 6), np.uint16)), off)
    assert np.array_equal(b1, expect)


@pytest.mark.parametrize("breakage", ["no-xml", "missing-band", "not-safe", "truncated-band"])
def test_broken_products_are_one_line_errors(tmp_path, breakage):
    safe, _ = make_safe(tmp_path, n10=12)
    if breakage == "no-xml":
        (safe / "MTD_MSIL1C.xml").unlink()
    elif breakage == "missing-band":
        next(safe.rglob("*_B8A.jp2")).unlink()
    elif breakage == "truncated-band":
        f = next(safe.rglob("*_B11.jp2"))
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    else:
        safe = tmp_path / "empty.SAFE"
        safe.mkdir()
    with pytest.raises(InputError) as e:
        SafeReader(safe).read()
    msg = str(e.value)
    assert "\n" not in msg and str(safe.name) in msg


def test_to_sen12mscr_keeps_nodata_and_saturation():
    dn = np.array([[0, 1, 999, 1000, 1001, 5000, 65535]], np.uint16)
    assert to_sen12mscr(dn, -1000).tolist() == [[0, 1, 1, 1, 1, 4000, 65535]]
    assert to_sen12mscr(dn, 0).tolist() == dn.tolist()
