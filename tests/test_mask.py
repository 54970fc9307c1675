"""Cloud / shadow masks (METHOD.md eqs. 13-16) against independent references on the real samples."""

from __future__ import annotations

import subprocess
import sys
import warnings
from fractions import Fraction
from functools import cache
from pathlib import Path

import numpy as np
import pytest

from cloudrt.errors import InputError
from cloudrt.preprocess import normalize_optical
from cloudrt.preprocess.mask import cloud_mask, cloud_score, shadow_mask

# Eq. 13 as written in METHOD.md: (band indices summed, a, b) of rescale(sum, a, b) on reflectance.
TERMS = (((1,), "0.1", "0.5"), ((0,), "0.1", "0.3"), ((0, 10), "0.15", "0.2"), ((1, 2, 3), "0.2", "0.8"))
NEAR = 1e-9  # float64 errors here are ~1e-16; pixels this close to a threshold are re-decided exactly


@cache
def _read(path: str) -> np.ndarray:
    import rasterio

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # oriolac_* patches carry no georeferencing
        with rasterio.open(path) as src:
            return src.read()


def _s2_files(root: Path) -> list[Path]:
    files = sorted(root.glob("*/s2_cloudy/*.tif")) + sorted(root.glob("*/s2/*.tif"))
    assert len(files) >= 40, f"expected the shared s2 / s2_cloudy samples under {root}"
    return files


# ---------------------------------------------------------------- independent references
def _exact_pixel(v: np.ndarray) -> bool:
    """Eqs. 13-16 for one pixel in exact rational arithmetic, straight from METHOD.md."""
    x = [Fraction(int(a), 10000) for a in v]
    sc = min((sum(x[i] for i in idx) - Fraction(a)) / (Fraction(b) - Fraction(a)) for idx, a, b in TERMS)
    s = x[2] + x[11]
    ndsi = (x[2] - x[11]) / s if s != 0 else Fraction(0)  # zero denominator: NDSI 0, not snow
    return sc > Fraction("0.2") and ndsi < Fraction("0.6")


def _float_paper(dn: np.ndarray, dtype: type) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Eqs. 13-16 straight from the formulas in ``dtype``: (mask, score, ndsi)."""
    x = dn.astype(dtype) / dtype(10000)
    terms = [(sum(x[i] for i in idx) - dtype(a)) / (dtype(b) - dtype(a)) for idx, a, b in TERMS]
    sc = np.minimum.reduce(terms)
    den = x[2] + x[11]
    ndsi = np.divide(x[2] - x[11], den, out=np.zeros_like(den), where=den != 0)
    return (sc > dtype(0.2)) & (ndsi < dtype(0.6)), sc.astype(np.float64), ndsi.astype(np.float64)


def _reference_paper(dn: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """True eqs. 13-16 mask: float64, with every near-threshold pixel re-decided in exact rationals.

    Returns (mask, near) where ``near`` marks the pixels re-decided exactly.
    """
    m, sc, ndsi = _float_paper(dn, np.float64)
    near = (np.abs(sc - 0.2) < NEAR) | (np.abs(ndsi - 0.6) < NEAR)
    for r, c in np.argwhere(near):
        m[r, c] = _exact_pixel(dn[:, r, c])
    return m, near


# ---------------------------------------------------------------- paper method
def test_paper_mask_matches_exact_reference_on_all_samples(shared_data: Path) -> None:
    n_near = 0
    naive_f64_flips = 0
    for f in _s2_files(shared_data):
        dn = _read(str(f))
        ref, near = _reference_paper(dn)
        got = cloud_mask(dn)
        assert got.dtype == bool and got.shape == dn.shape[1:]
        assert np.array_equal(got, ref), f"{f.name}: {(got != ref).sum()} pixels differ from eqs. 13-16"
        # Same DN as float input (whole numbers) give the same mask.
        assert np.array_equal(cloud_mask(dn.astype(np.float32)), ref), f.name
        naive = _float_paper(dn, np.float64)[0]
        assert not (naive != ref)[~near].any(), "float64 may only flip on near-threshold pixels"
        naive_f64_flips += int((naive != ref).sum())
        n_near += int(near.sum())
    # The samples really contain DN sitting on a threshold, so the exact re-decision is exercised.
    assert n_near > 0
    print(f"near-threshold pixels: {n_near}, naive float64 flips: {naive_f64_flips}")


def test_float32_evaluation_flips_ties(shared_data: Path) -> None:
    """Why exact arithmetic: a float32 evaluation of the formulas disagrees on tie pixels of real data."""
    flips = 0
    for f in _s2_files(shared_data):
        dn = _read(str(f))
        exact = cloud_mask(dn)
        f32, sc, ndsi = _float_paper(dn, np.float32)
        bad = f32 != exact
        # float32 errors are ~1e-7: every disagreement sits within 1e-6 of the 0.2 or 0.6 threshold.
        assert ((np.abs(sc - 0.2) < 1e-6) | (np.abs(ndsi - 0.6) < 1e-6))[bad].all(), f.name
        flips += int(bad.sum())
    assert flips > 0, "float32 agreed everywhere on these samples"


def test_paper_exact_on_synthetic_ties_signed_and_zero_denominator() -> None:
    rng = np.random.default_rng(0)
    h, w = 30, 30
    dn = rng.integers(0, 4000, size=(13, h, w)).astype(np.int32)
    # Put pixels exactly on each threshold, just above, and around the NDSI ratio B3 = 4 B11.
    dn[1, 0, :] = 1800
    dn[1, 1, :] = 1801
    dn[0, 2, :] = 1400
    dn[0, 3, :20] = 900
    dn[10, 3, :20] = 700
    dn[1:4, 4, :] = np.array([1900, 700, 600])[:, None]  # B2+B3+B4 == 3200
    dn[2, 5, :] = 4 * dn[11, 5, :]  # NDSI == 0.6 exactly
    dn[2, 6, :] = 4 * dn[11, 6, :] - 1
    dn[[2, 11], 7, :] = 0  # B3 + B11 == 0
    dn[[0, 1, 3, 10], 7, :] = 5000
    dn[:, 8:12, :] = rng.integers(-3000, 3000, size=(13, 4, w))  # signed input, negative B3 + B11
    dn = dn.astype(np.int16)
    want = np.array([[_exact_pixel(dn[:, r, c]) for c in range(w)] for r in range(h)])
    assert np.array_equal(cloud_mask(dn), want)
    assert cloud_mask(dn)[7].all()  # zero NDSI denominator: bright pixel counts as cloud, not snow
    assert np.array_equal(cloud_mask(dn.astype(np.float64)), want)


def test_float_input_nan_pixels_are_false() -> None:
    rng = np.random.default_rng(1)
    dn = rng.integers(1000, 6000, size=(13, 16, 16)).astype(np.float32)
    ref = cloud_mask(dn.astype(np.uint16))
    assert ref.any()
    dn[2, 3, 4] = np.nan
    dn[0, 5, 6] = np.inf
    dn[7, 8, 9] = np.nan  # B8 is not used by the cloud mask
    got = cloud_mask(dn)
    want = ref.copy()
    want[3, 4] = want[5, 6] = False
    assert np.array_equal(got, want)
    sen = cloud_mask(dn, method="sen12mscr")
    assert not sen[3, 4] and not sen[5, 6]
    assert not shadow_mask(dn)[8, 9]


def test_bad_input_raises_input_error() -> None:
    with pytest.raises(InputError, match="13"):
        cloud_mask(np.zeros((12, 8, 8), np.uint16))
    with pytest.raises(InputError, match="13"):
        shadow_mask(np.zeros((8, 8), np.uint16))
    with pytest.raises(InputError, match="method"):
        cloud_mask(np.zeros((13, 8, 8), np.uint16), method="fmask")


def test_import_mask_does_not_import_torch() -> None:
    code = (
        "import sys, numpy as np, cloudrt.preprocess.mask as m; m.cloud_mask(np.zeros((13, 4, 4), np.uint16)); "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------- sen12mscr method and shadows
def _reference_sen12mscr_score(dn: np.ndarray) -> np.ndarray:
    """The dataset tool's steps, written independently (signal.convolve2d for the 7x7 mean)."""
    from scipy import ndimage, signal

    x = dn.astype(np.float64) / 10000.0
    rescale = lambda v, a, b: (v - a) / (b - a)
    score = np.ones(dn.shape[1:])
    for idx, a, b in TERMS:
        score = np.minimum(score, rescale(sum(x[i] for i in idx), float(a), float(b)))
    den = x[2] + x[11]
    den[den == 0] = 0.001
    score = np.minimum(score, rescale((x[2] - x[11]) / den, 0.8, 0.6))
    score = ndimage.grey_closing(score, size=(5, 5))
    score = signal.convolve2d(score, np.full((7, 7), 1 / 49), mode="same")
    return np.clip(score, 0.00001, 1.0)


def _reference_shadow(dn: np.ndarray) -> np.ndarray:
    from scipy import signal

    x = dn.astype(np.float64) / 10000.0
    csi = (x[7] + x[11]) / 2.0
    t3 = csi.min() + 3 / 4 * (csi.mean() - csi.min())
    t4 = x[1].min() + 5 / 6 * (x[1].mean() - x[1].min())
    dark = np.where((csi < t3) & (x[1] < t4), -1.0, 0.0)
    return signal.medfilt2d(dark, 5) < 0


def test_sen12mscr_and_shadow_match_tool_reference(shared_data: Path) -> None:
    files = _s2_files(shared_data)[::3]
    for f in files:
        dn = _read(str(f))
        ref = _reference_sen12mscr_score(dn)
        got = cloud_score(dn)
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12, err_msg=f.name)
        mask = cloud_mask(dn, method="sen12mscr")
        differ = mask != (ref >= 0.2)
        assert not differ.any() or (np.abs(ref - 0.2) < 1e-9)[differ].all(), f.name
        assert np.array_equal(shadow_mask(dn), _reference_shadow(dn)), f.name


def _agreement(root: Path, method: str) -> tuple[float, list[float]]:
    d = root / "sen12mscr-samples"
    same = total = 0
    per_patch = []
    masks = sorted((d / "cloudmask").glob("*.tif"))
    assert len(masks) == 8
    for f in masks:
        truth = _read(str(f))[0] > 0
        got = cloud_mask(_read(str(d / "s2_cloudy" / f.name)), method=method)
        per_patch.append(float((got == truth).mean()))
        same += int((got == truth).sum())
        total += truth.size
    return same / total, per_patch


@pytest.mark.parametrize(("method", "floor"), [("sen12mscr", 0.90), ("paper", 0.88)])
def test_agreement_with_dataset_cloud_masks(shared_data: Path, method: str, floor: float) -> None:
    overall, per_patch = _agreement(shared_data, method)
    assert overall >= floor, f"{method}: overall agreement {overall:.4f} < {floor}"
    assert min(per_patch) >= 0.7, f"{method}: per-patch agreement {per_patch}"


# ---------------------------------------------------------------- torch twin
def test_torch_mask_identical_to_numpy(shared_data: Path) -> None:
    torch = pytest.importorskip("torch")
    from cloudrt.model.mask_torch import cloud_mask_torch

    files = _s2_files(shared_data)
    stack = np.stack([_read(str(f)) for f in files[:12]])  # (N, 13, 256, 256) uint16
    want = np.stack([cloud_mask(s) for s in stack])
    assert want.any() and not want.all()
    for t in (
        torch.from_numpy(stack.astype(np.int32)),
        torch.from_numpy(stack.astype(np.float32)),
        torch.from_numpy(stack.astype(np.float64)),
    ):
        got = cloud_mask_torch(t)
        assert got.dtype == torch.bool and tuple(got.shape) == want.shape
        assert np.array_equal(got.numpy(), want), t.dtype
    assert np.array_equal(cloud_mask_torch(torch.from_numpy(stack[3].astype(np.int32))).numpy(), want[3])
    # Normalized optical (DN clipped to [0, 10000], / 1e4, float32) recovered with scale=10000.
    clipped = np.clip(stack, 0, 10000)
    norm = torch.from_numpy(np.stack([normalize_optical(s) for s in stack]))
    got = cloud_mask_torch(norm, scale=10000).numpy()
    assert np.array_equal(got, np.stack([cloud_mask(s) for s in clipped]))


def test_torch_mask_nan_and_bad_input() -> None:
    torch = pytest.importorskip("torch")
    from cloudrt.model.mask_torch import cloud_mask_torch

    rng = np.random.default_rng(2)
    dn = rng.integers(1000, 6000, size=(2, 13, 8, 8)).astype(np.float64)
    dn[1, 1, 2, 3] = np.nan
    want = np.stack([cloud_mask(s) for s in dn])
    assert not want[1, 2, 3]
    assert np.array_equal(cloud_mask_torch(torch.from_numpy(dn)).numpy(), want)
    with pytest.raises(InputError, match="13"):
        cloud_mask_torch(torch.zeros(1, 12, 8, 8))
    with pytest.raises(InputError, match="paper"):
        cloud_mask_torch(torch.zeros(13, 8, 8), method="sen12mscr")
