"""CARF: the Cloud-Attentive Reconstruction Framework (eqs. 1-12; docs/method.md).

Data flow for optical (N, 13, H, W) and SAR (N, 2, H, W), both normalized to [0, 1]:

    reconfigure (eqs. 1-2)   optical -> (N, 13 s^2, h, w), SAR -> (N, 2 s^2, h, w), h = H/s
    LFE per modality (3-5)   -> F_opt^(0), F_sar^(0): (N, C, h, w)
    N fusion stages (6-8)    per modality: RDB, Swin, RDB, ..., RDB (J RDBs, J-1 Swin blocks,
                             alternating plain/shifted windows); concat(Swin outs, last RDB) -> 1x1
                             then SAR -> optical fusion (below); stage outputs F_opt,i^new
    GFF (9-10)               concat(F_opt,1..N) -> 1x1 -> 3x3, + F_opt^(0)
    IRN (11)                 3x3 conv -> pixel-shuffle -> 3x3 conv -> (N, 13, H, W)
    global residual (12)     prediction = IRN output + optical

SAR fusion operator (the paper leaves it open): gated residual concatenation,
``F_opt <- F_opt + g * Conv1x1([F_opt, F_sar])`` with ``g = sigmoid(Conv1x1([F_opt, F_sar]))`` per channel
and pixel. The gate lets the network lean on SAR only where the optical features are unreliable
(under cloud) and keeps the fusion a cheap, export-friendly pair of 1x1 convolutions.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from cloudrt.model.blocks import IRN, LFE, RDB, GlobalResidual, Reconfigure
from cloudrt.model.registry import preset_config
from cloudrt.model.swin import SwinBlock


class FeatureFusion(nn.Module):
    """Attention-driven feature refinement for one modality (eqs. 6-8)."""

    def __init__(self, cfg: dict) -> None:
        super().__init__()
        ch, j = cfg["channels"], cfg["num_rdb"]
        self.rdbs = nn.ModuleList(RDB(ch, cfg["growth"], cfg["rdb_layers"]) for _ in range(j))
        self.swins = nn.ModuleList(
            SwinBlock(ch, cfg["heads"], cfg["window"], shift=(cfg["window"] // 2) * (i % 2),
                      mlp_ratio=cfg["mlp_ratio"])
            for i in range(j - 1)
        )
        self.aggregate = nn.Conv2d(ch * j, ch, 1)  # eq. 8: 1x1 over [Swin_1..Swin_{J-1}, RDB_J]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = []
        for i, rdb in enumerate(self.rdbs):
            x = rdb(x)
            if i < len(self.swins):
                x = self.swins[i](x)
                outs.append(x)
        outs.append(x)
        return self.aggregate(torch.cat(outs, dim=1))  # (N, C, h, w)


class SarFusion(nn.Module):
    """Gated residual fusion of SAR features into the optical stream (documented choice)."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.value = nn.Conv2d(2 * ch, ch, 1)
        self.gate = nn.Conv2d(2 * ch, ch, 1)

    def forward(self, f_opt: torch.Tensor, f_sar: torch.Tensor) -> torch.Tensor:
        both = torch.cat([f_opt, f_sar], dim=1)  # (N, 2C, h, w)
        return f_opt + torch.sigmoid(self.gate(both)) * self.value(both)


class Stage(nn.Module):
    """One of the N fusion stages: per-modality refinement, then SAR -> optical fusion."""

    def __init__(self, cfg: dict) -> None:
        super().__init__()
        self.opt = FeatureFusion(cfg)
        self.sar = FeatureFusion(cfg)
        self.fuse = SarFusion(cfg["channels"])

    def forward(self, f_opt: torch.Tensor, f_sar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f_sar = self.sar(f_sar)
        f_opt = self.fuse(self.opt(f_opt), f_sar)
        return f_opt, f_sar


class CARF(nn.Module):
    """Cloud-Attentive Reconstruction Framework. ``forward(optical, sar) -> optical_clear``."""

    def __init__(self, cfg: dict) -> None:
        super().__init__()
        self.config = dict(cfg)
        s, ch = cfg["scale"], cfg["channels"]
        self.size_divisor = s * cfg["window"]
        self.reconf = Reconfigure(s)
        self.lfe_opt = LFE(cfg["optical_bands"] * s * s, ch)
        self.lfe_sar = LFE(cfg["sar_bands"] * s * s, ch)
        self.stages = nn.ModuleList(Stage(cfg) for _ in range(cfg["num_stages"]))
        self.gff = nn.Sequential(
            nn.Conv2d(ch * cfg["num_stages"], ch, 1), nn.Conv2d(ch, ch, 3, padding=1)
        )
        self.irn = IRN(ch, cfg["optical_bands"], s, cfg["irn_channels"])
        self.global_residual = GlobalResidual()

    def forward(self, optical: torch.Tensor, sar: torch.Tensor) -> torch.Tensor:
        f0_opt = self.lfe_opt(self.reconf(optical))  # (N, C, H/s, W/s)
        f_sar = self.lfe_sar(self.reconf(sar))  # (N, C, H/s, W/s)
        f_opt, stage_outs = f0_opt, []
        for stage in self.stages:
            f_opt, f_sar = stage(f_opt, f_sar)
            stage_outs.append(f_opt)
        f = self.gff(torch.cat(stage_outs, dim=1)) + f0_opt  # eqs. 9-10
        return self.global_residual(self.irn(f), optical)  # eqs. 11-12: (N, 13, H, W)


def from_config(cfg: dict[str, Any]) -> CARF:
    """Build a model from a full config dict (as stored in checkpoints)."""
    cfg = dict(cfg)
    name = cfg.pop("preset", "carf-base")
    base = preset_config(name)
    base.update({k: v for k, v in cfg.items() if k in base})
    return CARF(base)


def build(name: str = "carf-base", **overrides: Any) -> CARF:
    """Build preset ``name`` (see :func:`cloudrt.model.registry.list_models`) with config ``overrides``;
    random init."""
    return CARF(preset_config(name, **overrides))
