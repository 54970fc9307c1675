"""Convolutional blocks of CARF: reconfiguration (eqs. 1-2), LFE (eqs. 3-5), RDB (eq. 6), IRN (eq. 11)."""

from __future__ import annotations

import torch
from torch import nn


class Reconfigure(nn.Module):
    """Spatial-channel reconfiguration (eqs. 1-2): (N, C, H, W) -> (N, C*s^2, H/s, W/s), pixel-unshuffle."""

    def __init__(self, scale: int) -> None:
        super().__init__()
        self.scale = scale
        self.op = nn.PixelUnshuffle(scale) if scale > 1 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class LFE(nn.Module):
    """Low-level feature encoder (eqs. 3-5): two 3x3 convolutions, each followed by ReLU."""

    def __init__(self, in_ch: int, ch: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, ch, 3, padding=1)
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (N, in_ch, h, w) -> (N, ch, h, w)
        return self.act(self.conv2(self.act(self.conv1(x))))


class RDB(nn.Module):
    """Residual dense block: ``layers`` densely connected 3x3 conv+ReLU, local 1x1 fusion, residual add."""

    def __init__(self, ch: int, growth: int, layers: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv2d(ch + i * growth, growth, 3, padding=1) for i in range(layers)
        )
        self.act = nn.ReLU(inplace=True)
        self.fuse = nn.Conv2d(ch + layers * growth, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]  # each (N, ch + i*growth, h, w) after concatenation
        for conv in self.convs:
            feats.append(self.act(conv(torch.cat(feats, dim=1))))
        return x + self.fuse(torch.cat(feats, dim=1))  # (N, ch, h, w)


class IRN(nn.Module):
    """Image reconstruction network (eq. 11): 3x3 conv, pixel-shuffle back to full size, 3x3 conv to bands.

    The last convolution starts at zero, so an untrained model is the identity through the global
    residual (eq. 12): training only has to learn the correction.
    """

    def __init__(self, ch: int, out_ch: int, scale: int, irn_ch: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(ch, irn_ch * scale * scale, 3, padding=1)
        self.shuffle = nn.PixelShuffle(scale) if scale > 1 else nn.Identity()
        self.conv2 = nn.Conv2d(irn_ch, out_ch, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (N, ch, h, w) -> (N, irn_ch*s^2, h, w) -> (N, irn_ch, H, W) -> (N, out_ch, H, W)
        return self.conv2(self.shuffle(self.conv1(x)))


class GlobalResidual(nn.Module):
    """Global residual (eq. 12): prediction = IRN output + cloudy optical input.

    A module of its own so the exported ONNX node is named ``/global_residual/Add`` and the FP16
    conversion can keep it in FP32.
    """

    def forward(self, correction: torch.Tensor, optical: torch.Tensor) -> torch.Tensor:
        return correction + optical
