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
