"""Image-quality metrics in the SEN12MS-CR convention (the numbers compared with papers).

Every metric takes optical images on the [0, 1] reflectance scale, i.e. L1C DN clipped to [0, 10000] and
divided by 10000 (:func:`cloudrt.preprocess.normalize.normalize_optical`; use :func:`metrics_dn` for DN input), and
clips both images to [0, 1] first. Shapes are (13, H, W) (all bands of one patch); results are per patch,
and dataset figures are the mean over patches, as in the UnCRtainTS evaluation code
(``model/src/learning/metrics.py`` of PatrickTUM/UnCRtainTS):

- ``psnr``: 10 log10(1 / MSE), MSE over all bands and pixels, data range 1 (dB).
- ``ssim``: Gaussian-window SSIM (11 x 11, sigma 1.5, K1 0.01, K2 0.03, data range 1) from
  ``kornia.metrics.ssim``, averaged over the map and the 13 bands. ``padding="valid"`` (default) keeps only
  pixels whose window lies inside the image, which equals ``skimage.metrics.structural_similarity(...,
  gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1)`` per band;
  ``padding="same"`` reflect-pads and averages the full map (UnCRtainTS zero-pads instead).
- ``mae``: mean absolute error over all bands and pixels.
- ``sam``: spectral angle mapper in **degrees** (UnCRtainTS / SEN12MS-CR convention), the per-pixel angle
  between the 13-band spectra, averaged over pixels. Pixels where either spectrum is all zero have no angle
  and are left out.

NumPy; ``ssim`` imports torch + kornia when called (the training/eval extra), never at import time.
"""

from __future__ import annotations

import numpy as np

from cloudrt.preprocess.normalize import normalize_optical

__all__ = [
    "psnr", "ssim", "mae", "sam", "all_metrics", "metrics_dn", "mean_metrics", "METRICS", "SSIM_WINDOW",
    "SSIM_SIGMA",
]

METRICS = ("psnr", "ssim", "mae", "sam")
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5  # kornia fixes sigma = 1.5 for its SSIM window


def _prep(pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.clip(np.asarray(pred, dtype=np.float64), 0.0, 1.0)
    t = np.clip(np.asarray(target, dtype=np.float64), 0.0, 1.0)
    if p.shape != t.shape:
        raise ValueError(f"prediction {p.shape} and target {t.shape} differ in shape")
    return p, t


def psnr(pred: np.ndarray, target: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB, data range 1, over all bands and pixels (inf if identical)."""
    p, t = _prep(pred, target)
    mse = float(np.mean((p - t) ** 2))
    return float("inf") if mse == 0.0 else float(10.0 * np.log10(1.0 / mse))


def mae(pred: np.ndarray, target: np.ndarray) -> float:
    """Mean absolute error on the [0, 1] scale."""
    p, t = _prep(pred, target)
    return float(np.mean(np.abs(p - t)))


def sam(pred: np.ndarray, target: np.ndarray) -> float:
    """Mean spectral angle in degrees between (C, H, W) images; all-zero spectra are skipped (nan if all)."""
    p, t = _prep(pred, target)
    dot = np.sum(p * t, axis=0)
    norm = np.sqrt(np.sum(p * p, axis=0)) * np.sqrt(np.sum(t * t, axis=0))
    ok = norm > 0
    if not ok.any():
        return float("nan")
    cos = np.clip(dot[ok] / norm[ok], -1.0, 1.0)
    return float(np.degrees(np.mean(np.arccos(cos))))


def ssim(pred: np.ndarray, target: np.ndarray, padding: str = "valid") -> float:
    """Mean SSIM over bands of (C, H, W) images (kornia, Gaussian 11 x 11, sigma 1.5).

    Computed in float32 (kornia's float64 path is ~30x slower on CPU); it agrees with scikit-image's
    float64 result to about 1e-6 (tests allow 2e-5).

    ``padding="valid"`` needs H, W >= 11 and matches scikit-image; ``"same"`` reflect-pads the border.
    """
    import kornia.metrics
    import torch

    p, t = _prep(pred, target)
    if p.ndim == 2:
        p, t = p[None], t[None]
    if padding == "valid" and min(p.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(f"SSIM with padding='valid' needs images of at least {SSIM_WINDOW} x {SSIM_WINDOW}")
    with torch.no_grad():
        m = kornia.metrics.ssim(
            torch.from_numpy(p[None].astype(np.float32)), torch.from_numpy(t[None].astype(np.float32)),
            SSIM_WINDOW, max_val=1.0, eps=0.0, padding=padding,
        )
    return float(m.double().mean())


def all_metrics(pred: np.ndarray, target: np.ndarray, ssim_padding: str = "valid") -> dict[str, float]:
    """``{"psnr", "ssim", "mae", "sam"}`` for one (13, H, W) patch on the [0, 1] scale."""
    return {
        "psnr": psnr(pred, target),
        "ssim": ssim(pred, target, padding=ssim_padding),
        "mae": mae(pred, target),
        "sam": sam(pred, target),
    }


def metrics_dn(pred_dn: np.ndarray, target_dn: np.ndarray, ssim_padding: str = "valid") -> dict[str, float]:
    """:func:`all_metrics` for L1C digital numbers (clipped to [0, 10000], divided by 10000)."""
    return all_metrics(normalize_optical(pred_dn), normalize_optical(target_dn), ssim_padding=ssim_padding)


def mean_metrics(rows: list[dict[str, float]]) -> dict[str, float]:
    """Mean of per-patch metric dicts over patches (nan-aware: skips undefined values)."""
    out = {}
    for k in METRICS:
        v = np.array([r[k] for r in rows if k in r], dtype=np.float64)
        v = v[~np.isnan(v)]
        out[k] = float(np.mean(v)) if v.size else float("nan")
    return out
