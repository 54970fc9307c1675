"""SAR units (auto/db/linear) and the optical DN convention."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from cloudrt.errors import InputError
from cloudrt.scene.units import (
    check_optical_scale,
    detect_sar_units,
    linear_to_db,
    resolve_sar_units,
    sample_values,
    scale_optical,
)

rng = np.random.default_rng(0)
# Realistic sigma0: VV ~ -10 dB, VH ~ -17 dB over land, a few bright targets, a zero no-data border.
DB = np.stack([rng.normal(-10, 3, (64, 64)), rng.normal(-17, 3, (64, 64))]).astype(np.float32)
LINEAR = (10 ** (DB / 10)).astype(np.float32)
LINEAR_WITH_BORDER = LINEAR.copy()
LINEAR_WITH_BORDER[:, :8, :] = 0


@pytest.mark.parametrize("data,expected", [(DB, "db"), (LINEAR, "linear"), (LINEAR_WITH_BORDER, "linear")])
def test_auto_detects_units_and_says_so(data, expected):
    units, line = resolve_sar_units("auto", data)
    assert units == expected
    assert line.startswith("SAR units: auto -> ") and ("dB" in line if expected == "db" else "linear" in line)


def test_auto_refuses_uncalibrated_dn():
    dn = rng.integers(50, 900, (2, 32, 32)).astype(np.uint16)
    with pytest.raises(InputError, match="neither sigma0 in dB nor linear power"):
        detect_sar_units(dn)


def test_explicit_units_that_contradict_the_data_are_refused():
    with pytest.raises(InputError, match="--sar-units linear"):
        resolve_sar_units("db", LINEAR)
    with pytest.raises(InputError, match="--sar-units db"):
        resolve_sar_units("linear", DB)
    assert resolve_sar_units("db", DB)[0] == "db"
    with pytest.raises(InputError, match="unknown --sar-units"):
        resolve_sar_units("amplitude", DB)


def test_linear_to_db_matches_reference_and_guards_zeros_and_nodata():
    out = linear_to_db(LINEAR_WITH_BORDER)
    assert out.dtype == np.float32
    assert np.isnan(out[:, :8]).all(), "zero power (no-data border) must become invalid, not -inf or a value"
    np.testing.assert_allclose(out[:, 8:], DB[:, 8:], atol=1e-4)  # float32 round trip of 10**(x/10)
    x = np.array([1.0, 0.1, -1.0, np.nan, -9999.0, 0.0])
    got = linear_to_db(x, nodata=-9999.0)
    assert got[:2].tolist() == [0.0, -10.0] and np.isnan(got[2:]).all()


def test_optical_dn_accepted_reflectance_refused_with_the_convention():
    dn = rng.integers(500, 9000, (13, 32, 32)).astype(np.uint16)
    assert "DN" in check_optical_scale(dn, "uint16")
    refl = dn.astype(np.float32) / 10000
    with pytest.raises(InputError) as e:
        check_optical_scale(refl, "float32")
    msg = str(e.value)
    assert "reflectance x 10000" in msg and "--optical-scale reflectance" in msg and "\n" not in msg
    assert "reflectance" in check_optical_scale(refl, "float32", scale="reflectance")
    np.testing.assert_allclose(scale_optical(refl, "reflectance"), dn.astype(np.float32), rtol=1e-6)


@pytest.mark.parametrize("data,dtype,match", [
    (rng.integers(0, 255, (13, 8, 8)).astype(np.uint8), "uint8", "8-bit"),
    (rng.integers(30000, 65000, (13, 8, 8)).astype(np.uint16), "uint16", "too large"),
])
def test_optical_wrong_scales_refused(data, dtype, match):
    with pytest.raises(InputError, match=match):
        check_optical_scale(data, dtype)


def test_reflectance_option_on_dn_data_is_refused():
    with pytest.raises(InputError, match="not 0..1 reflectance"):
        check_optical_scale(np.full((13, 4, 4), 3000.0), "float32", scale="reflectance")


def test_nodata_zeros_do_not_fool_the_optical_check():
    x = np.zeros((13, 32, 32), np.float32)
    x[:, :4] = 0.2  # mostly no-data, a strip of 0..1 reflectance
    with pytest.raises(InputError, match="look like reflectance"):
        check_optical_scale(x, "float32")


def test_sample_values_reads_windows_spread_over_the_raster(tmp_path):
    p = tmp_path / "s1.tif"
    data = np.arange(2 * 600 * 700, dtype=np.float32).reshape(2, 600, 700)
    with rasterio.open(p, "w", driver="GTiff", width=700, height=600, count=2, dtype="float32",
                       crs="EPSG:32632", transform=from_origin(0, 0, 10, 10)) as d:
        d.write(data)
    with rasterio.open(p) as d:
        s = sample_values(d, size=100, per_axis=3)  # 9 windows
    assert s.shape == (2, 9 * 100 * 100)
    assert s[0].min() == 0 and s[0].max() == data[0].max(), "windows must reach the first and last pixel"
