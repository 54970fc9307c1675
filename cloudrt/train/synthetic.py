"""Synthetic clouds over clear Sentinel-2 images (training augmentation; NumPy only)."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from cloudrt.contract import S2_BANDS
from cloudrt.errors import InputError

# Thick-cloud top-of-atmosphere reflectance relative to B2, measured as the 90th percentile of the fully
# clouded SEN12MS-CR patch oriolac_3968 (low clouds: flat over visible/NIR, lower in B9 water vapour and
# SWIR). B10 (cirrus, 1375 nm) is drawn separately: near zero for low clouds, higher for high/thin ones.
CLOUD_SPECTRUM = np.array(
    [1.00, 1.00, 0.98, 1.02, 1.06, 1.16, 1.22, 1.17, 1.25, 0.63, 0.00, 0.88, 0.66], dtype=np.float32
)
_B10 = S2_BANDS.index("B10")
# Relative opacity of thin cloud / haze per band (B1..B12): scattering falls with wavelength; the B10 cirrus
# band sees thin high cloud strongly.
HAZE_SPECTRUM = np.array(
    [1.00, 0.97, 0.93, 0.88, 0.85, 0.82, 0.80, 0.78, 0.76, 0.70, 0.90, 0.60, 0.55], dtype=np.float32
)


def shadow_alpha(alpha: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Cloud shadow: the cloud's footprint displaced 8-40 px by the sun/view geometry, softened (sigma 2)."""
    ang = rng.uniform(0, 2 * np.pi)
    dist = rng.uniform(8, 40)
    s = ndimage.shift(alpha, (dist * np.sin(ang), dist * np.cos(ang)), order=1, mode="constant", cval=0.0)
    return np.clip(ndimage.gaussian_filter(s, 2.0), 0.0, 1.0).astype(np.float32)


def _upsample_bilinear(grid: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bilinear interpolation of a (gh, gw) lattice spanning the whole (h, w) image."""
    gh, gw = grid.shape
    y = np.linspace(0, gh - 1, h)
    x = np.linspace(0, gw - 1, w)
    y0 = np.minimum(np.floor(y).astype(int), gh - 2)
    x0 = np.minimum(np.floor(x).astype(int), gw - 2)
    fy = (y - y0)[:, None]
    fx = (x - x0)[None, :]
    a = grid[y0][:, x0]
    b = grid[y0][:, x0 + 1]
    c = grid[y0 + 1][:, x0]
    d = grid[y0 + 1][:, x0 + 1]
    return (a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy


def fractal_noise(
    shape: tuple[int, int], rng: np.random.Generator, base: int = 2, octaves: int = 6, persistence: float = 0.55
) -> np.ndarray:
    """Value noise summed over octaves (lattice ``base * 2**k``, amplitude ``persistence**k``) -> [0, 1]."""
    h, w = shape
    acc = np.zeros((h, w), dtype=np.float64)
    amp = 1.0
    for k in range(octaves):
        g = base * 2**k + 1
        if g > max(h, w):
            break
        acc += amp * _upsample_bilinear(rng.random((g, g)), h, w)
        amp *= persistence
    lo, hi = acc.min(), acc.max()
    return ((acc - lo) / (hi - lo if hi > lo else 1.0)).astype(np.float32)


def synthetic_cloud_alpha(
    shape: tuple[int, int],
    rng: np.random.Generator,
    coverage: float | None = None,
    softness: float = 0.2,
    haze: float | None = None,
    opacity: float | None = None,
) -> np.ndarray:
    """Cloud opacity in [0, 1], (H, W) float32: fractal noise thresholded into a soft alpha.

    ``coverage`` (fraction of pixels with alpha > 0; random in [0.1, 0.8] if None) sets the threshold as a
    noise quantile; ``softness`` the width of the smoothstep edge in noise units (at most half the noise
    range above the threshold, so every cloud has an opaque core); ``opacity`` the peak
    alpha of the thick cloud (random in [0.85, 1] if None); ``haze`` (random in [0, 0.25] with probability
    0.5 if None, else that opacity) adds thin haze everywhere, modulated by a second smooth noise field.
    """
    h, w = shape
    if coverage is None:
        coverage = float(rng.uniform(0.1, 0.8))
    if opacity is None:
        opacity = float(rng.uniform(0.85, 1.0))
    noise = fractal_noise(shape, rng)
    alpha = np.zeros((h, w), dtype=np.float32)
    if coverage > 0:
        thr = float(np.quantile(noise, 1.0 - min(coverage, 1.0)))
        width = max(min(softness, 0.5 * (float(noise.max()) - thr)), 1e-6)  # the core always goes opaque
        t = np.clip((noise - thr) / width, 0.0, 1.0)
        alpha = (t * t * (3.0 - 2.0 * t)).astype(np.float32)  # smoothstep: soft cloud edges
        if coverage >= 1.0:
            alpha = np.maximum(alpha, np.float32(0.5))
        alpha *= np.float32(opacity)
    if haze is None:
        haze = float(rng.uniform(0.0, 0.25)) if rng.random() < 0.5 else 0.0
    if haze > 0:
        hz = haze * (0.5 + 0.5 * fractal_noise(shape, rng, base=1, octaves=3))
        alpha = 1.0 - (1.0 - alpha) * (1.0 - hz.astype(np.float32))
    return np.clip(alpha, 0.0, 1.0).astype(np.float32)


def add_synthetic_clouds(
    clear: np.ndarray,
    rng: np.random.Generator,
    alpha: np.ndarray | None = None,
    brightness: float | None = None,
    cirrus: float | None = None,
    shadow: float | None = 0.0,
    **alpha_kw: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """Lay a synthetic cloud over a clear (13, H, W) image in [0, 1] reflectance units.

    ``cloudy = (1 - alpha) * clear + alpha * cloud`` per band, where ``cloud`` is
    :data:`CLOUD_SPECTRUM` times ``brightness`` (random in [0.45, 0.8] if None), with a mild fractal texture,
    and the B10 cirrus response ``cirrus`` (random in [0.005, 0.08] reflectance if None). ``shadow``: the
    strength of a cloud shadow (the cloud's footprint displaced, :func:`shadow_alpha`) that darkens the ground
    before the cloud is laid over it; 0 for none. ``shadow=None`` with ``alpha=None`` draws the full model
    used for training: a thick cloud, with probability 0.6 a thin haze whose opacity per band follows
    :data:`HAZE_SPECTRUM`, and with probability 0.6 a shadow of strength 0.3-0.75; with a given ``alpha`` it
    means no shadow. Returns ``(cloudy float32 clipped to [0, 1], alpha (H, W))`` (alpha including the haze,
    as seen in the visible); ``clear`` is not modified.
    """
    clear = np.asarray(clear, dtype=np.float32)
    if clear.ndim != 3 or clear.shape[0] != len(S2_BANDS):
        raise InputError(f"clear image has shape {clear.shape}; expected (13, H, W) in [0, 1] units.")
    shape = clear.shape[-2:]
    haze_field = None
    if alpha is None and shadow is None:  # the full model: thick cloud, spectral haze, cloud shadow
        alpha = synthetic_cloud_alpha(shape, rng, **{"haze": 0.0, **alpha_kw})
        if rng.random() < 0.6:
            haze_field = float(rng.uniform(0.05, 0.5)) * fractal_noise(shape, rng, base=1, octaves=3)
        shadow = float(rng.uniform(0.3, 0.75)) if rng.random() < 0.6 else 0.0
    elif alpha is None:
        alpha = synthetic_cloud_alpha(shape, rng, **alpha_kw)
    if shadow:
        clear = clear * (1.0 - np.float32(shadow) * shadow_alpha(alpha, rng))[None]
    if brightness is None:
        brightness = float(rng.uniform(0.45, 0.8))
    if cirrus is None:
        cirrus = float(rng.uniform(0.005, 0.08))
    spectrum = CLOUD_SPECTRUM * np.float32(brightness)
    spectrum[_B10] = cirrus
    texture = 0.9 + 0.2 * fractal_noise(shape, rng, base=4, octaves=4)  # thick cores brighter than edges
    cloud = spectrum[:, None, None] * texture[None]
    a = alpha[None].astype(np.float32)
    if haze_field is not None:  # thin cloud scatters more at short wavelengths: per-band opacity
        hz = haze_field[None] * HAZE_SPECTRUM[:, None, None]
        a = 1.0 - (1.0 - a) * (1.0 - hz)
        alpha = 1.0 - (1.0 - alpha) * (1.0 - haze_field)
    cloudy = (1.0 - a) * clear + a * cloud
    return np.clip(cloudy, 0.0, 1.0).astype(np.float32), alpha.astype(np.float32)
