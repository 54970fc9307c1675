"""Where the shipped artifacts live (weights, exported models, bundled sample)."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent

DEFAULT_NAME = "carf-demo"
WEIGHTS_DIR = Path(os.environ.get("CLOUDRT_WEIGHTS_DIR", REPO_ROOT / "weights"))
EXPORT_DIR = Path(os.environ.get("CLOUDRT_EXPORT_DIR", REPO_ROOT / "export"))
DEFAULT_WEIGHTS = WEIGHTS_DIR / f"{DEFAULT_NAME}.safetensors"
DEFAULT_CONFIG = WEIGHTS_DIR / f"{DEFAULT_NAME}.json"
DEFAULT_ONNX = EXPORT_DIR / f"{DEFAULT_NAME}.onnx"
DEFAULT_ONNX_FP16 = EXPORT_DIR / f"{DEFAULT_NAME}-fp16.onnx"
SAMPLE_DIR = REPO_ROOT / "examples" / "sample"


def cache_dir() -> Path:
    """Per-user cache (engines, timing caches): $CLOUDRT_CACHE or $XDG_CACHE_HOME/cloudrt."""
    env = os.environ.get("CLOUDRT_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cloudrt"


def shared_data_dir() -> Path | None:
    """../shared/data next to the repository (real SEN12MS-CR samples), if present."""
    env = os.environ.get("CLOUDRT_SHARED_DATA")
    cands = [Path(env)] if env else []
    cands += [REPO_ROOT.parent / "shared" / "data"]
    for c in cands:
        if c.is_dir():
            return c
    return None
