"""Mask files: the cloud (and cloud-shadow) mask of a whole Sentinel-2 scene, streamed by windows.

The per-pixel rules are :mod:`cloudrt.preprocess.mask`'s; this module only streams them: the cloud mask by
haloed windows (equal to the whole-scene mask), the shadow rule with its thresholds gathered over the whole
scene in a first pass (:func:`cloudrt.preprocess.mask.shadow_thresholds`).
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import numpy as np

from cloudrt.errors import InputError
from cloudrt.preprocess.mask import METHODS, clean_shadow, csi_blue, dark_pixels, shadow_thresholds
from cloudrt.preprocess.normalize import valid_mask
from cloudrt.scene.driver import COL_CHUNK, MASK_HALO, MASK_NODATA, MASK_SHADOW, Progress, haloed_windows, window_cloud
from cloudrt.scene.io import (
    BLOCK,
    atomic_output,
    check_output_path,
    gdal_env,
    open_optical,
    open_writer,
    output_profile,
    read_rows,
)
from cloudrt.scene.sinks import RasterSink
from cloudrt.scene.sources import any_valid


def mask_scene(src: Any, sink: Any, *, method: str = "paper", shadow: bool = False,
               block: int | None = None, chunk: int = COL_CHUNK,
               progress: Progress | None = None) -> dict[str, Any]:
    """Stream the cloud mask (and, with ``shadow``, the dark-pixel shadow mask) of ``src`` into ``sink``.

    Mask values: 0 clear, 1 cloud, 2 cloud shadow (not cloud), 255 nodata. The shadow thresholds are scene
    statistics (:func:`cloudrt.preprocess.mask.shadow_mask`), gathered in a first streaming pass over valid
    pixels; the 5x5 median clean-up is computed by haloed windows like the cloud mask.
    """
    block = block or BLOCK
    height = src.height
    thresholds = _scene_shadow_thresholds(src, block) if shadow else None
    stats = {"valid": 0, "cloud": 0, "shadow": 0}
    for a in range(0, height, block):
        b = min(height, a + block)
        m = np.empty((b - a, src.width), dtype=np.uint8)
        for c0, c1, raw_w, valid_w, given_w, core in haloed_windows(src, a, b, MASK_HALO, chunk):
            cloud, valid = window_cloud(raw_w, valid_w, given_w, method)[core], valid_w[core]
            mc = cloud.astype(np.uint8)
            if thresholds is not None:
                dark = dark_pixels(*csi_blue(raw_w), thresholds) & valid_w
                sh = clean_shadow(dark)[core] & ~cloud & valid
                mc[sh] = MASK_SHADOW
                stats["shadow"] += int(sh.sum())
            mc[~valid] = MASK_NODATA
            m[:, c0:c1] = mc
            stats["valid"] += int(valid.sum())
            stats["cloud"] += int(cloud.sum())
        sink.write(a, b, None, m)
        if progress is not None:
            progress(b, height)
    return stats


def _scene_shadow_thresholds(src: Any, block: int) -> tuple[float, float] | None:
    """Scene-wide (T3, T4) of the SEN12MS-CR shadow rule, from min and mean gathered by row blocks."""
    cmin = bmin = np.inf
    csum = bsum = 0.0
    n = 0
    for a in range(0, src.height, block):
        raw = src.optical(a, min(src.height, a + block))
        csi, blue = csi_blue(raw)
        ok = np.isfinite(csi) & np.isfinite(blue) & valid_mask(raw, src.nodata)
        if ok.any():
            c, b = csi[ok], blue[ok]
            cmin, bmin = min(cmin, c.min()), min(bmin, b.min())
            csum += c.sum()
            bsum += b.sum()
            n += int(ok.sum())
    if n == 0:
        return None
    return shadow_thresholds(cmin, csum / n, bmin, bsum / n)


class _OpticalOnly:
    """An S2 dataset as a source without SAR (for the mask alone)."""

    def __init__(self, ods: Any) -> None:
        self.ods = ods
        self.height, self.width, self.nodata = ods.height, ods.width, ods.nodata

    def optical(self, r0: int, r1: int, c0: int = 0, c1: int | None = None) -> np.ndarray:
        return read_rows(self.ods, r0, r1, c0, c1)

    def mask(self, r0: int, r1: int, c0: int = 0, c1: int | None = None) -> None:
        return None


def mask_file(optical: str | os.PathLike, output: str | os.PathLike, *, method: str = "paper",
              shadow: bool = False, overwrite: bool = False, progress: Progress | None = None) -> dict[str, Any]:
    """Write the cloud mask of an S2 GeoTIFF (uint8: 0 clear, 1 cloud, 2 shadow, 255 nodata), streamed."""
    if method not in METHODS:
        raise InputError(f"unknown cloud-mask method {method!r}; use one of {', '.join(METHODS)}.")
    check_output_path(output, overwrite, inputs=(optical,), create_parent=True)
    with contextlib.ExitStack() as stack:
        stack.enter_context(gdal_env())  # entered first, left last: bounds the cache for reads and writes
        ods = open_optical(optical)
        stack.callback(ods.close)
        src = _OpticalOnly(ods)
        if not any_valid(src.optical, src.height, src.nodata, src.width):
            raise InputError(f"optical (S2) {ods.name} has no valid pixel (every pixel is NaN/inf or nodata); "
                             "pass a scene with data.")
        tmp = stack.enter_context(atomic_output(output, overwrite))
        dst = stack.enter_context(open_writer(tmp, output_profile(ods, 1, "uint8", 255)))
        legend = "0 clear, 1 cloud, 2 shadow, 255 nodata" if shadow else "0 clear, 1 cloud, 255 nodata"
        dst.set_band_description(1, f"cloud mask ({method}): {legend}")
        stats = mask_scene(src, RasterSink(None, dst, np.dtype(np.uint8), 255), method=method, shadow=shadow,
                           progress=progress)
    return stats
