"""Preprocessing in NumPy (no torch, no rasterio): normalization (:mod:`.normalize`) and the cloud and
shadow masks (:mod:`.mask`, eqs. 13-16, docs/method.md)."""

from __future__ import annotations

from cloudrt.preprocess.mask import METHODS, cloud_mask, cloud_score, shadow_mask
from cloudrt.preprocess.normalize import (
    check_optical,
    check_sar,
    denormalize_optical,
    normalize_optical,
    normalize_sar,
    valid_mask,
)

__all__ = [
    "METHODS", "check_optical", "check_sar", "cloud_mask", "cloud_score", "denormalize_optical",
    "normalize_optical", "normalize_sar", "shadow_mask", "valid_mask",
]
