"""Cloud-aware loss (eqs. 17-18).

    W_cloud = alpha * M' + (1 - alpha) * (1 - M')                              (17)
    L = mean_pixels( W_cloud * (lambda1 * L_MSE + lambda2 * L_SSIM) )          (18)

with per-pixel L_MSE = mean over bands of (pred - target)^2 and per-pixel L_SSIM = 1 - SSIM map (mean
over bands), the SSIM map from ``kornia.metrics.ssim`` (11x11 Gaussian window, sigma 1.5, data range 1).
M' is the paper's cloud mask (eqs. 13-16) of the cloudy input. ``cloud_weighting=False`` is the paper's
ablation (W = 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

try:
    from kornia.metrics import ssim as kornia_ssim
except ImportError:  # hosts without kornia (e.g. a lent GPU machine): the same map in plain torch below
    kornia_ssim = None
from torch import nn


class CloudAwareLoss(nn.Module):
    """Eqs. 17-18. ``forward(pred, target, cloud_mask) -> scalar``; mask is (N, H, W) bool/float."""

    def __init__(self, alpha: float = 0.8, lambda1: float = 0.5, lambda2: float = 0.5,
                 cloud_weighting: bool = True, ssim_window: int = 11, sam_weight: float = 0.0) -> None:
        super().__init__()
        self.sam_weight = sam_weight
        self.alpha, self.lambda1, self.lambda2 = alpha, lambda1, lambda2
        self.cloud_weighting = cloud_weighting
        self.ssim_window = ssim_window

    def weights(self, cloud_mask: torch.Tensor) -> torch.Tensor:
        """Eq. 17: (N, H, W) mask -> (N, 1, H, W) per-pixel weights (all ones for the ablation)."""
        m = cloud_mask.to(torch.float32).unsqueeze(1)
        if not self.cloud_weighting:
            return torch.ones_like(m)
        return self.alpha * m + (1.0 - self.alpha) * (1.0 - m)

    def ssim_map(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) per-pixel SSIM from kornia (computed in float32); plain torch without kornia."""
        if kornia_ssim is not None:
            return kornia_ssim(pred.float(), target.float(), self.ssim_window, max_val=1.0)
        return ssim_map_torch(pred.float(), target.float(), self.ssim_window)

    def forward(self, pred: torch.Tensor, target: torch.Tensor, cloud_mask: torch.Tensor) -> torch.Tensor:
        w = self.weights(cloud_mask)  # (N, 1, H, W)
        mse = (pred.float() - target.float()).pow(2).mean(dim=1, keepdim=True)  # (N, 1, H, W)
        l_ssim = (1.0 - self.ssim_map(pred, target)).mean(dim=1, keepdim=True)  # (N, 1, H, W)
        per_pixel = self.lambda1 * mse + self.lambda2 * l_ssim
        if self.sam_weight:  # optional spectral-angle term (not in the paper): keeps spectra in shape
            per_pixel = per_pixel + self.sam_weight * spectral_angle(pred, target)
        return (w * per_pixel).mean()


def spectral_angle(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-pixel spectral angle in radians, (N, 1, H, W): the SAM metric as a training term."""
    p, t = pred.float(), target.float()
    cos = (p * t).sum(1, keepdim=True) / (p.norm(dim=1, keepdim=True) * t.norm(dim=1, keepdim=True) + eps)
    return torch.acos(cos.clamp(-1 + 1e-6, 1 - 1e-6))


def ssim_map_torch(x: torch.Tensor, y: torch.Tensor, window: int = 11, sigma: float = 1.5,
                   max_val: float = 1.0) -> torch.Tensor:
    """Per-pixel SSIM (N, C, H, W) with a Gaussian window and reflect borders, as ``kornia.metrics.ssim``
    computes it; used only where kornia is not installed (tests compare the two)."""
    c = x.shape[1]
    g = torch.exp(-((torch.arange(window, dtype=torch.float32, device=x.device) - window // 2) ** 2) / (2 * sigma**2))
    g = g / g.sum()
    k = (g[:, None] * g[None, :]).expand(c, 1, window, window)

    def blur(t: torch.Tensor) -> torch.Tensor:
        p = window // 2
        return F.conv2d(F.pad(t, (p, p, p, p), mode="reflect"), k, groups=c)

    c1, c2 = (0.01 * max_val) ** 2, (0.03 * max_val) ** 2
    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    return ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))
