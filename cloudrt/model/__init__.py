"""The CARF model family (PyTorch). Importing this package imports torch.

>>> model = build("carf-tiny")
>>> out = model(optical, sar)  # (N, 13, H, W), (N, 2, H, W) -> (N, 13, H, W); H, W % size_divisor == 0
"""

from __future__ import annotations

from cloudrt.model.carf import CARF, build, from_config
from cloudrt.model.checkpoint import load_checkpoint, load_default, read_meta, save_checkpoint, weights_sha256
from cloudrt.model.registry import PRESETS, list_models, preset_config
from cloudrt.model.resolve import resolve_model

__all__ = [
    "CARF", "PRESETS", "build", "from_config", "list_models", "load_checkpoint", "load_default", "preset_config",
    "read_meta", "resolve_model", "save_checkpoint", "weights_sha256",
]
