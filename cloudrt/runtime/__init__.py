"""The torch-free, onnx-free deployment runtime: whole-scene cloud removal with ONNX Runtime or TensorRT.

>>> from cloudrt.runtime import Runtime
>>> rt = Runtime()                      # shipped default model, fastest available backend
>>> clear = rt.predict(s2_dn, s1_db)    # (13, H, W) DN, (2, H, W) dB -> (13, H, W) float32 DN
>>> rt.predict_file("S2.tif", "S1.tif", "OUT.tif", mask_out="MASK.tif")

Importing this package never imports torch or onnx; the torch backend imports torch only when created.
"""

from __future__ import annotations

from cloudrt.runtime.backends import BACKENDS, available_backends, load_backend
from cloudrt.runtime.base import Backend
from cloudrt.runtime.core import Runtime, default_overlap
from cloudrt.runtime.trt_meta import check_engine_compat

__all__ = [
    "BACKENDS",
    "Backend",
    "Runtime",
    "available_backends",
    "check_engine_compat",
    "default_overlap",
    "load_backend",
]
