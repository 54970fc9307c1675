"""Named CARF presets (timm-style registry)."""

from __future__ import annotations

from typing import Any

from cloudrt.errors import ModelError

_BASE: dict[str, Any] = {
    "optical_bands": 13,
    "sar_bands": 2,
    "mlp_ratio": 2.0,
}

# Choices the paper leaves open, per preset: reconfiguration scale s, feature channels C, RDB growth and
# depth, J RDBs per fusion module (J-1 Swin blocks), N stages, heads, window, IRN width.
PRESETS: dict[str, dict[str, Any]] = {
    # Small and fast: tests and CPUs. Feature map is H/4; size divisor 32. Widths are multiples of 16.
    "carf-tiny": dict(scale=4, channels=32, growth=16, rdb_layers=2, num_rdb=3, num_stages=2,
                      heads=2, window=8, irn_channels=16),
    # The shipped demo model, deployable at the edge. Every concatenation is a multiple of 16 channels
    # (48 + k * 32 in the RDBs, 144 and 96 in fusion): ONNX Runtime's NCHWc layout then needs no reorders.
    "carf-small": dict(scale=4, channels=48, growth=32, rdb_layers=3, num_rdb=3, num_stages=3,
                       heads=3, window=8, irn_channels=16),
    # The paper's design at a practical size: s=2, 64 channels, J=3, N=4. Size divisor 16.
    "carf-base": dict(scale=2, channels=64, growth=32, rdb_layers=4, num_rdb=3, num_stages=4,
                      heads=4, window=8, irn_channels=32),
}


def list_models() -> list[str]:
    """Names of the registered presets."""
    return sorted(PRESETS)


def preset_config(name: str, **overrides: Any) -> dict[str, Any]:
    """Full config dict for preset ``name`` with ``overrides`` applied."""
    if name not in PRESETS:
        raise ModelError(f"unknown model preset {name!r}; choose one of {', '.join(list_models())}.")
    cfg = {**_BASE, **PRESETS[name]}
    unknown = set(overrides) - set(cfg)
    if unknown:
        raise ValueError(f"unknown config keys {sorted(unknown)}; valid keys: {sorted(cfg)}")
    cfg.update(overrides)
    cfg["preset"] = name
    if cfg["channels"] % cfg["heads"]:
        raise ValueError("channels must be divisible by heads")
    return cfg
