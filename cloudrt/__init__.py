"""cloudrt: Sentinel-2 cloud removal with Sentinel-1 SAR fusion, and its fast deployment runtime.

``import cloudrt`` never imports torch: the training side (``cloudrt.model``, ``cloudrt.train``,
``cloudrt.export``) imports it on use.
"""

from __future__ import annotations

from cloudrt._version import __version__
from cloudrt.errors import CloudrtError, InputError, ModelError

__all__ = ["__version__", "CloudrtError", "InputError", "ModelError", "cloud_mask", "shadow_mask"]


def __getattr__(name: str):  # lazy: keep `import cloudrt` light (the masks import SciPy)
    if name in ("cloud_mask", "shadow_mask"):
        from cloudrt.preprocess import mask

        return getattr(mask, name)
    raise AttributeError(f"module 'cloudrt' has no attribute {name!r}")
