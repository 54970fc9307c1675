"""Smoothing of invented detail (cloudrt.preprocess.composite.smooth_invented, lowpass), against a float64
full-resolution Gaussian (scipy) on real SEN12MS-CR patches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from cloudrt.preprocess.composite import KEEP_BELOW, SMOOTH_SIGMA, lowpass, smooth_invented, thickness
from cloudrt.train.discovery import read_raster as _read


def _gauss64(x: np.ndarray, sigma: float) -> np.ndarray:
    return np.stack([ndimage.gaussian_filter(b.astype(np.float64), sigma, mode="reflect", truncate=4.0) for b in x])


@pytest.mark.parametrize("shape", [(256, 256), (96, 160)])
def test_lowpass_matches_a_full_resolution_gaussian(samples_dir: Path, shape: tuple[int, int]) -> None:
    """Decimated by 4, blurred, interpolated back: within 2.5e-3 reflectance (25 DN) of the float64 Gaussian
    everywhere and 3e-4 RMS, on a real clear image (roads, fields, roofs: texture at every scale)."""
    x = (_read(samples_dir / "s2" / "oriolac_4065.tif").astype(np.float32) / 1e4)[:, : shape[0], : shape[1]]
    got, ref = lowpass(x, SMOOTH_SIGMA), _gauss64(x, SMOOTH_SIGMA)
    assert got.shape == x.shape and got.dtype == np.float32
    assert np.abs(got - ref).max() < 2.5e-3
    assert np.sqrt(np.mean((got - ref) ** 2)) < 3e-4
    assert np.sqrt(np.mean((x - ref) ** 2)) > 30 * np.sqrt(np.mean((got - ref) ** 2))  # it does smooth
    const = np.full((2, 37, 53), 0.25, np.float32)  # any size; a constant stays itself
    np.testing.assert_allclose(lowpass(const, SMOOTH_SIGMA), const, atol=1e-6)


def test_smooth_invented_only_where_no_ground_shows(samples_dir: Path) -> None:
    """pred + t (G pred - pred): exactly pred where the thickness t is below KEEP_BELOW, the low-pass where
    it is 1, linear between; a clear input leaves the prediction bit for bit."""
    cloudy = _read(samples_dir / "s2_cloudy" / "oriolac_4287.tif")
    pred = _read(samples_dir / "s2" / "oriolac_4287.tif").astype(np.float32) / 1e4  # a textured "prediction"
    t = thickness(cloudy).astype(np.float64)
    t[t < KEEP_BELOW] = 0
    assert (t == 0).any() and (t > 0.99).any()
    got = smooth_invented(pred, cloudy)
    expect = pred + t * (lowpass(pred, SMOOTH_SIGMA) - pred)
    np.testing.assert_allclose(got, expect, atol=1e-6)
    np.testing.assert_array_equal(got[:, t == 0], pred[:, t == 0])
    ref = _gauss64(pred, SMOOTH_SIGMA)
    opaque = t > 0.99
    assert np.abs(got[:, opaque] - ref[:, opaque]).max() < 2.5e-3
    clear = _read(samples_dir / "s2" / "oriolac_2729.tif")
    assert not (thickness(clear) >= KEEP_BELOW).any()
    np.testing.assert_array_equal(smooth_invented(pred, clear), pred)


def test_nodata_does_not_bleed_into_the_smoothed_cloud(samples_dir: Path) -> None:
    """A swath edge: whatever the model made of the nodata pixels stays out of the low-pass of the cloud
    beside them (the result on valid pixels does not depend on it), and nodata pixels are not smoothed."""
    cloudy = _read(samples_dir / "s2_cloudy" / "oriolac_4065.tif").copy()
    valid = np.ones(cloudy.shape[1:], bool)
    valid[:, :40] = False
    cloudy[:, ~valid] = 0
    pred = _read(samples_dir / "s2" / "oriolac_4065.tif").astype(np.float32) / 1e4
    garbage = pred.copy()
    garbage[:, ~valid] = 5.0
    a, b = smooth_invented(pred, cloudy, valid), smooth_invented(garbage, cloudy, valid)
    np.testing.assert_array_equal(a[:, valid], b[:, valid])
    np.testing.assert_array_equal(b[:, ~valid], garbage[:, ~valid])
    unmasked = smooth_invented(garbage, cloudy)  # without the mask the garbage bleeds in
    assert np.abs(unmasked - b)[:, :, 40:60].max() > 0.05  # the valid columns beside the edge
