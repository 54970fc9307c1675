"""Synthetic clouds, full model (``add_synthetic_clouds(..., shadow=None)``): cloud shadows displaced from the
cloud, spectral haze that is thicker at short wavelengths, values in range. NumPy only, tiny images."""

from __future__ import annotations

import numpy as np
import pytest

from cloudrt.contract import S2_BANDS
from cloudrt.train import synthetic

B = {b: i for i, b in enumerate(S2_BANDS)}


def _disc(n: int = 128, r: float = 14.0) -> np.ndarray:
    yy, xx = np.mgrid[0:n, 0:n]
    return (((yy - n / 2) ** 2 + (xx - n / 2) ** 2) <= r * r).astype(np.float32)


def _centroid(a: np.ndarray) -> np.ndarray:
    yy, xx = np.mgrid[0 : a.shape[0], 0 : a.shape[1]]
    return np.array([(a * yy).sum(), (a * xx).sum()]) / a.sum()


def test_shadow_alpha_is_the_cloud_displaced_8_to_40_px() -> None:
    alpha = _disc()
    c0 = _centroid(alpha)
    dirs = set()
    for seed in range(40):
        sh = synthetic.shadow_alpha(alpha, np.random.default_rng(seed))
        assert sh.shape == alpha.shape and sh.dtype == np.float32
        assert sh.min() >= 0.0 and sh.max() <= 1.0
        d = _centroid(sh) - c0
        assert 8 - 0.5 <= np.hypot(*d) <= 40 + 0.5, (seed, d)
        assert sh.sum() == pytest.approx(alpha.sum(), rel=0.02)  # same footprint, moved and softened
        assert sh.max() > 0.9  # a disc of radius 14 keeps an opaque core after a sigma-2 blur
        dirs.add((bool(d[0] > 0), bool(d[1] > 0)))
    assert len(dirs) == 4  # the sun/view direction is drawn, not fixed


def test_explicit_shadow_darkens_ground_outside_the_cloud_flat_across_bands() -> None:
    rng = np.random.default_rng(0)
    clear = np.clip(0.05 + 0.3 * rng.random((13, 128, 128)), 0, 1).astype(np.float32)
    alpha = _disc()
    free = alpha == 0
    for seed in range(10):
        cloudy, _ = synthetic.add_synthetic_clouds(clear, np.random.default_rng(seed), alpha=alpha, shadow=0.6)
        ratio = cloudy[:, free] / clear[:, free]
        assert ratio.max() <= 1.0 + 1e-6  # a shadow never brightens
        assert ratio.min() >= 0.4 - 1e-5  # at most 60 % darker, as asked
        np.testing.assert_allclose(ratio, ratio[:1].repeat(13, axis=0), atol=1e-5)  # spectrally flat
        under = ratio[0] < 0.9
        assert under.sum() > 100  # a sizeable shadow falls outside the cloud
        for b in range(13):
            assert cloudy[b, free][under].mean() < 0.9 * clear[b, free][under].mean()


def test_full_model_changes_the_image_and_stays_in_range() -> None:
    rng = np.random.default_rng(1)
    clear = rng.random((13, 64, 64)).astype(np.float32)
    clear[:, :4] = 0.0
    clear[:, -4:] = 1.0  # extremes must stay in range too
    before = clear.copy()
    for seed in range(12):
        cloudy, alpha = synthetic.add_synthetic_clouds(clear, np.random.default_rng(seed), shadow=None)
        np.testing.assert_array_equal(clear, before)
        assert cloudy.shape == clear.shape and cloudy.dtype == np.float32
        assert cloudy.min() >= 0.0 and cloudy.max() <= 1.0
        assert alpha.shape == (64, 64) and alpha.min() >= 0.0 and alpha.max() <= 1.0
        assert np.abs(cloudy - clear).max() > 0.05


def test_full_model_draws_shadows_in_some_images_not_all() -> None:
    """In B2 the cloud (>= 0.4 reflectance) is brighter than this dark ground: a darker pixel is shadow."""
    clear = np.full((13, 128, 128), 0.1, dtype=np.float32)
    n = 60
    shadowed = 0
    for seed in range(n):
        cloudy, _ = synthetic.add_synthetic_clouds(clear, np.random.default_rng(seed), shadow=None)
        shadowed += bool((cloudy[B["B2"]] < 0.099).any())
        assert cloudy[B["B2"]].min() >= 0.1 * (1 - 0.75) - 1e-6  # shadow strength at most 0.75
    assert 0.25 < shadowed / n < 0.85  # drawn with probability 0.6; some are hidden under the cloud


def _per_band_opacity(seed: int, shape: tuple[int, int] = (64, 64)) -> tuple[np.ndarray, np.ndarray]:
    """Haze only (coverage 0): the same draw over two flat grounds g gives cloudy = (1 - a_b) g + a_b cloud_b,
    so the per-band opacity is a_b = 1 - (cloudy_hi - cloudy_lo) / (g_hi - g_lo)."""
    lo, a = synthetic.add_synthetic_clouds(np.zeros((13, *shape), np.float32), np.random.default_rng(seed),
                                           shadow=None, coverage=0.0)
    hi, a2 = synthetic.add_synthetic_clouds(np.full((13, *shape), 0.3, np.float32), np.random.default_rng(seed),
                                            shadow=None, coverage=0.0)
    np.testing.assert_array_equal(a, a2)
    return 1.0 - (hi.astype(np.float64) - lo) / 0.3, a


def test_haze_is_thicker_in_blue_than_in_swir() -> None:
    hazy = 0
    for seed in range(20):
        a_b, alpha = _per_band_opacity(seed)
        if alpha.max() == 0:  # no haze drawn for this image (it is drawn with probability 0.6)
            np.testing.assert_allclose(a_b, 0.0, atol=1e-6)
            continue
        hazy += 1
        assert alpha.max() <= 0.5 + 1e-6  # haze stays thin
        # the opacity of each band is the returned (band-flat) alpha times HAZE_SPECTRUM
        np.testing.assert_allclose(a_b, alpha[None] * synthetic.HAZE_SPECTRUM[:, None, None].astype(np.float64),
                                   atol=1e-5)
        mean = a_b.mean(axis=(1, 2))
        assert mean[B["B1"]] > mean[B["B2"]] > mean[B["B4"]] > mean[B["B8"]] > mean[B["B11"]] > mean[B["B12"]]
        assert mean[B["B2"]] > 1.5 * mean[B["B12"]]
    assert 4 <= hazy <= 18


def test_haze_spectrum_falls_with_wavelength_except_cirrus() -> None:
    hs = synthetic.HAZE_SPECTRUM
    assert hs.shape == (13,) and hs.max() == 1.0 and hs.min() > 0
    order = [B[b] for b in ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B11", "B12")]
    assert (np.diff(hs[order]) < 0).all()  # Rayleigh/Mie-like: shorter wavelengths scatter more
