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
from kornia.metrics import ssim
from torch import nn


class CloudAwareLoss(nn.Module):
    """Eqs. 17-18. ``forward(pred, target, cloud_mask) -> scalar``; mask is (N, H, W) bool/float."""

    def __init__(self, alpha: float = 0.8, lambda1: float = 0.5, lambda2: float = 0.5,
                 cloud_weighting: bool = True, ssim_window: int = 11) -> None:
        super().__init__()
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
        """(N, C, H, W) per-pixel SSIM from kornia (computed in float32)."""
        return ssim(pred.float(), target.float(), self.ssim_window, max_val=1.0)

    def forward(self, pred: torch.Tensor, target: torch.Tensor, cloud_mask: torch.Tensor) -> torch.Tensor:
        w = self.weights(cloud_mask)  # (N, 1, H, W)
        mse = (pred.float() - target.float()).pow(2).mean(dim=1, keepdim=True)  # (N, 1, H, W)
        l_ssim = (1.0 - self.ssim_map(pred, target)).mean(dim=1, keepdim=True)  # (N, 1, H, W)
        return (w * (self.lambda1 * mse + self.lambda2 * l_ssim)).mean()
