"""cloudrt.train.metrics against independent references: float64 NumPy formulas and scikit-image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from cloudrt.preprocess import normalize_optical
from cloudrt.train import metrics as M
from cloudrt.train.discovery import find_samples, load_sample

# kornia computes SSIM in float32; against scikit-image's float64 it differs by <= 7e-7 on the shared
# samples (measured), so 2e-5 is a safe bound that still catches any window/constant/border mismatch
# (a 'same'-padded map is already 3e-4..7e-3 away).
SSIM_TOL = 2e-5


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _sk_ssim(pred: np.ndarray, target: np.ndarray) -> float:
    p = np.clip(pred.astype(np.float64), 0, 1)
    t = np.clip(target.astype(np.float64), 0, 1)
    return float(np.mean([
        structural_similarity(t[b], p[b], gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                              data_range=1.0)
        for b in range(p.shape[0])
    ]))


@pytest.fixture(scope="module")
def real_pairs() -> list[tuple[str, np.ndarray, np.ndarray]]:
    from cloudrt.paths import shared_data_dir

    d = shared_data_dir()
    if d is None:
        pytest.skip("shared SEN12MS-CR samples not found")
    out = []
    for s in find_samples(Path(d) / "sen12mscr-samples")[:4]:
        raw = load_sample(s)
        out.append((s.name, normalize_optical(raw["s2_cloudy"]), normalize_optical(raw["s2"])))
    return out


def _random_pair(seed: int, shape: tuple[int, ...] = (13, 40, 48)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = rng.uniform(0, 0.6, shape).astype(np.float32)
    p = (t + rng.normal(0, 0.05, shape)).astype(np.float32)
    return p, t


def test_psnr_mae_against_formula_and_skimage(real_pairs) -> None:
    cases = [_random_pair(0), _random_pair(1, (13, 17, 23))] + [(p, t) for _, p, t in real_pairs]
    for p, t in cases:
        p64, t64 = np.clip(p.astype(np.float64), 0, 1), np.clip(t.astype(np.float64), 0, 1)
        mse = np.mean((p64 - t64) ** 2)
        assert M.psnr(p, t) == pytest.approx(-10 * np.log10(mse), abs=1e-9)
        assert M.psnr(p, t) == pytest.approx(peak_signal_noise_ratio(t64, p64, data_range=1.0), abs=1e-9)
        assert M.mae(p, t) == pytest.approx(np.abs(p64 - t64).sum() / p64.size, abs=1e-12)


def test_metrics_clip_to_unit_range() -> None:
    p, t = _random_pair(2)
    over = p.copy()
    over[0, :5] = 1.7
    over[1, :5] = -0.3
    clipped = np.clip(over, 0, 1)
    for f in (M.psnr, M.mae, M.sam, M.ssim):
        assert f(over, t) == pytest.approx(f(clipped, t), abs=1e-12)


def test_perfect_prediction() -> None:
    _, t = _random_pair(3)
    assert M.psnr(t, t) == float("inf")
    assert M.mae(t, t) == 0.0
    assert M.sam(t, t) == pytest.approx(0.0, abs=1e-5)
    assert M.ssim(t, t) == pytest.approx(1.0, abs=1e-6)


def test_sam_known_angles_in_degrees() -> None:
    h, w = 4, 5
    theta = np.deg2rad(np.linspace(0, 80, h * w)).reshape(h, w)
    t = np.zeros((13, h, w))
    p = np.zeros((13, h, w))
    t[0] = 0.5
    p[0], p[1] = 0.3 * np.cos(theta), 0.3 * np.sin(theta)  # scaled: SAM ignores brightness
    assert M.sam(p, t) == pytest.approx(np.rad2deg(theta).mean(), abs=1e-6)
    p2 = p.copy()
    p2[:, 0, 0] = 0.0  # an all-zero spectrum has no angle: skipped, not counted as 90 degrees
    assert M.sam(p2, t) == pytest.approx(np.rad2deg(theta).ravel()[1:].mean(), abs=1e-6)
    assert np.isnan(M.sam(np.zeros_like(t), t))


def test_sam_against_per_pixel_loop(real_pairs) -> None:
    _, p, t = real_pairs[0]
    p64, t64 = p.astype(np.float64)[:, ::8, ::8], t.astype(np.float64)[:, ::8, ::8]
    angles = []
    for y in range(p64.shape[1]):
        for x in range(p64.shape[2]):
            a, b = p64[:, y, x], t64[:, y, x]
            c = np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b))
            angles.append(np.degrees(np.arccos(min(1.0, max(-1.0, c)))))
    assert M.sam(p64, t64) == pytest.approx(np.mean(angles), abs=1e-9)


def test_ssim_matches_skimage_per_band(real_pairs) -> None:
    for seed, shape in ((4, (13, 40, 48)), (5, (3, 11, 30))):
        p, t = _random_pair(seed, shape)
        assert M.ssim(p, t) == pytest.approx(_sk_ssim(p, t), abs=SSIM_TOL)
    for name, p, t in real_pairs:
        ours, ref = M.ssim(p, t), _sk_ssim(p, t)
        assert ours == pytest.approx(ref, abs=SSIM_TOL), name
        # the 'same' (reflect-padded) map differs only at the 5-pixel border: measured 3e-4..7e-3 here
        assert abs(M.ssim(p, t, padding="same") - ref) < 0.02, name


def test_ssim_symmetric_and_ordered() -> None:
    p, t = _random_pair(6)
    assert M.ssim(p, t) == pytest.approx(M.ssim(t, p), abs=1e-6)
    rng = np.random.default_rng(6)
    worse = np.clip(t + rng.normal(0, 0.2, t.shape), 0, 1)
    assert M.ssim(worse, t) < M.ssim(p, t) < 1.0


def test_ssim_too_small_for_valid() -> None:
    with pytest.raises(ValueError, match="11"):
        M.ssim(np.zeros((13, 8, 8)), np.zeros((13, 8, 8)))


def test_metrics_dn_and_mean(real_pairs) -> None:
    rng = np.random.default_rng(7)
    t_dn = rng.integers(0, 12000, (13, 24, 24)).astype(np.uint16)  # > 10000 is clipped
    p_dn = rng.integers(0, 12000, (13, 24, 24)).astype(np.uint16)
    got = M.metrics_dn(p_dn, t_dn)
    ref = M.all_metrics(np.minimum(p_dn, 10000) / 10000.0, np.minimum(t_dn, 10000) / 10000.0)
    for k in M.METRICS:
        assert got[k] == pytest.approx(ref[k], abs=1e-6)
    rows = [{"psnr": 10.0, "ssim": 0.5, "mae": 0.1, "sam": float("nan")},
            {"psnr": 20.0, "ssim": 0.7, "mae": 0.3, "sam": 4.0}]
    m = M.mean_metrics(rows)
    assert m == pytest.approx({"psnr": 15.0, "ssim": 0.6, "mae": 0.2, "sam": 4.0})
