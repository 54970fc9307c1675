"""Cloud-aware loss (eqs. 17-18): limiting cases and the SSIM map against skimage."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("kornia")

from cloudrt.train.loss import CloudAwareLoss  # noqa: E402


def _pair(seed=0, n=2, c=3, h=32, w=32):
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(n, c, h, w, generator=g)
    p = (t + 0.1 * torch.randn(n, c, h, w, generator=g)).clamp(0, 1)
    m = torch.rand(n, h, w, generator=g) > 0.5
    return p, t, m


def test_weights_eq17():
    loss = CloudAwareLoss(alpha=0.8)
    m = torch.tensor([[[True, False]]])
    w = loss.weights(m)
    assert w.shape == (1, 1, 1, 2)
    assert torch.allclose(w.flatten(), torch.tensor([0.8, 0.2]))


def test_reduces_to_plain_mse_when_ssim_off_and_no_weighting():
    p, t, m = _pair()
    loss = CloudAwareLoss(lambda1=1.0, lambda2=0.0, cloud_weighting=False)
    assert torch.allclose(loss(p, t, m), torch.nn.functional.mse_loss(p, t), rtol=1e-6)


def test_reduces_to_plain_ssim_loss_when_mse_off_and_no_weighting():
    p, t, m = _pair()
    loss = CloudAwareLoss(lambda1=0.0, lambda2=1.0, cloud_weighting=False)
    from kornia.metrics import ssim

    assert torch.allclose(loss(p, t, m), 1 - ssim(p, t, 11).mean(), rtol=1e-6)


def test_alpha_half_is_uniform_half_weight():
    p, t, m = _pair()
    a = CloudAwareLoss(alpha=0.5)(p, t, m)
    b = CloudAwareLoss(cloud_weighting=False)(p, t, m)
    assert torch.allclose(a, 0.5 * b, rtol=1e-6)


def test_all_cloud_and_all_clear_masks_scale_by_alpha():
    p, t, _ = _pair()
    plain = CloudAwareLoss(cloud_weighting=False)
    cloud = CloudAwareLoss(alpha=0.8)
    ones = torch.ones(p.shape[0], p.shape[2], p.shape[3], dtype=torch.bool)
    assert torch.allclose(cloud(p, t, ones), 0.8 * plain(p, t, ones), rtol=1e-6)
    assert torch.allclose(cloud(p, t, ~ones), 0.2 * plain(p, t, ~ones), rtol=1e-6)


def test_cloudy_pixels_weigh_more():
    """An error under cloud costs more than the same error on clear ground (alpha = 0.8)."""
    t = torch.full((1, 1, 32, 32), 0.5)
    m = torch.zeros(1, 32, 32, dtype=torch.bool)
    m[:, :, :16] = True
    err_cloud, err_clear = t.clone(), t.clone()
    err_cloud[..., :16] += 0.2
    err_clear[..., 16:] += 0.2
    loss = CloudAwareLoss(lambda2=0.0)
    assert loss(err_cloud, t, m) > 3.5 * loss(err_clear, t, m)


def test_ssim_map_matches_skimage_interior():
    """kornia's SSIM map vs skimage (Gaussian 11x11, sigma 1.5, population covariance) away from borders."""
    from skimage.metrics import structural_similarity

    p, t, _ = _pair(seed=3, n=1, c=1, h=48, w=48)
    ours = CloudAwareLoss().ssim_map(p, t)[0, 0].double().numpy()
    _, ref = structural_similarity(p[0, 0].double().numpy(), t[0, 0].double().numpy(), data_range=1.0,
                                   gaussian_weights=True, sigma=1.5, use_sample_covariance=False, full=True)
    r = 5  # both use the same 11x11 window; they differ only in border padding
    np.testing.assert_allclose(ours[r:-r, r:-r], ref[r:-r, r:-r], atol=1e-4)


# ------------------------------------------------------------------ spectral-angle term, SSIM without kornia
def _np_angle(p: np.ndarray, t: np.ndarray) -> np.ndarray:
    """float64 reference: arccos of the normalized dot product over bands, (N, 1, H, W)."""
    p, t = p.astype(np.float64), t.astype(np.float64)
    cos = (p * t).sum(1, keepdims=True) / (np.linalg.norm(p, axis=1, keepdims=True)
                                           * np.linalg.norm(t, axis=1, keepdims=True))
    return np.arccos(np.clip(cos, -1, 1))


def test_spectral_angle_matches_float64_reference():
    from cloudrt.train.loss import spectral_angle

    p, t, _ = _pair(seed=5, n=2, c=13, h=17, w=23)
    p = p + 0.01  # no all-zero spectrum (its angle is undefined)
    ours = spectral_angle(p, t)
    assert ours.shape == (2, 1, 17, 23)
    ref = _np_angle(p.numpy(), t.numpy())
    assert ref.min() > 0.01  # angles well away from the clamp at 0
    np.testing.assert_allclose(ours.double().numpy(), ref, atol=1e-5)
    # scale invariance: SAM compares spectral shape, not brightness
    np.testing.assert_allclose(spectral_angle(3 * p, t).numpy(), ours.numpy(), atol=1e-5)
    # orthogonal spectra: pi / 2
    a = torch.zeros(1, 13, 1, 1)
    b = torch.zeros(1, 13, 1, 1)
    a[0, 0], b[0, 1] = 0.5, 0.5
    assert spectral_angle(a, b).item() == pytest.approx(np.pi / 2, abs=1e-5)


@pytest.mark.parametrize("w", [0.1, 1.0])
def test_sam_weight_adds_weighted_mean_angle(w):
    p, t, m = _pair(seed=6, n=2, c=13, h=24, w=24)
    p = p + 0.01
    base = CloudAwareLoss(alpha=0.8)(p, t, m).item()
    with_sam = CloudAwareLoss(alpha=0.8, sam_weight=w)(p, t, m).item()
    mf = m.numpy().astype(np.float64)[:, None]
    weights = 0.8 * mf + 0.2 * (1 - mf)  # eq. 17
    expect = base + w * float((weights * _np_angle(p.numpy(), t.numpy())).mean())
    assert with_sam == pytest.approx(expect, rel=1e-5, abs=1e-6)
    assert with_sam > base


@pytest.mark.parametrize("shape", [(1, 1, 33, 21), (2, 13, 19, 37)])
def test_ssim_map_torch_matches_kornia(shape):
    from kornia.metrics import ssim

    from cloudrt.train.loss import ssim_map_torch

    g = torch.Generator().manual_seed(sum(shape))
    x = torch.rand(*shape, generator=g)
    y = (x + 0.2 * torch.randn(*shape, generator=g)).clamp(0, 1)
    ours = ssim_map_torch(x, y, 11)
    ref = ssim(x, y, 11, max_val=1.0)
    assert ours.shape == ref.shape == shape
    assert (ref - ref.mean()).abs().max() > 0.05  # a map with structure, not a constant
    np.testing.assert_allclose(ours.numpy(), ref.numpy(), atol=1e-5)


def test_loss_without_kornia_gives_the_same_value(monkeypatch):
    import cloudrt.train.loss as loss_mod

    p, t, m = _pair(seed=7, n=2, c=13, h=29, w=35)
    loss = CloudAwareLoss(sam_weight=0.1)
    with_kornia = loss(p, t, m).item()
    monkeypatch.setattr(loss_mod, "kornia_ssim", None)
    without = loss(p, t, m).item()
    assert without == pytest.approx(with_kornia, abs=1e-5)
    # and the plain-torch path is really used (its SSIM is not kornia's object)
    monkeypatch.setattr(loss_mod, "ssim_map_torch", lambda *a, **k: torch.ones_like(p))
    assert loss(p, t, m).item() != pytest.approx(with_kornia, abs=1e-5)
