"""The CARF model family (PyTorch). Importing this module imports torch.

>>> model = build("carf-tiny")
>>> out = model(optical, sar)  # (N, 13, H, W), (N, 2, H, W) -> (N, 13, H, W); H, W % size_divisor == 0
"""

from __future__ import annotations

from typing import Any

from cloudrt.model.carf import CARF
from cloudrt.model.registry import PRESETS, list_models, preset_config

__all__ = ["CARF", "PRESETS", "build", "list_models", "load_default", "from_config"]


def from_config(cfg: dict[str, Any]) -> CARF:
    """Build a model from a full config dict (as stored in checkpoints)."""
    cfg = dict(cfg)
    name = cfg.pop("preset", "carf-base")
    base = preset_config(name)
    base.update({k: v for k, v in cfg.items() if k in base})
    return CARF(base)


def build(name: str = "carf-base", **overrides: Any) -> CARF:
    """Build preset ``name`` (see :func:`list_models`) with config ``overrides``; random init."""
    return CARF(preset_config(name, **overrides))


def load_default(device: str = "cpu") -> CARF:
    """The shipped default model (``weights/carf-demo.safetensors``) in eval mode."""
    from cloudrt.checkpoint import load_checkpoint
    from cloudrt.paths import DEFAULT_WEIGHTS

    model, _ = load_checkpoint(DEFAULT_WEIGHTS, device=device)
    return model.eval()
