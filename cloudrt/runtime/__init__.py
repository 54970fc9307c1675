"""The torch-free deployment runtime: whole-scene cloud removal with ONNX Runtime or TensorRT.

>>> from cloudrt.runtime import Runtime
>>> rt = Runtime()                      # shipped default model, fastest available backend
>>> clear = rt.predict(s2_dn, s1_db)    # (13, H, W) DN, (2, H, W) dB -> (13, H, W) float32 DN
>>> rt.predict_file("S2.tif", "S1.tif", "OUT.tif", mask_out="MASK.tif")

Importing this package never imports torch; the torch backend imports it only when created.
"""

from __future__ import annotations

from cloudrt.mask import cloud_mask, shadow_mask
from cloudrt.runtime.backends import BACKENDS, available_backends, load_backend
from cloudrt.runtime.base import CONTRACT, Backend
from cloudrt.runtime.core import Runtime, default_overlap, mask_file
from cloudrt.runtime.scene import feather_alpha, open_scene
from cloudrt.runtime.tensorrt_backend import check_engine_compat

__all__ = [
    "BACKENDS",
    "CONTRACT",
    "Backend",
    "Runtime",
    "available_backends",
    "check_engine_compat",
    "cloud_mask",
    "default_overlap",
    "feather_alpha",
    "load_backend",
    "mask_file",
    "open_scene",
    "shadow_mask",
]
