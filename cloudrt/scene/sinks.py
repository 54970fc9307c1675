"""Scene sinks: where the streamed output blocks go (memory or open rasterio datasets), and the cast of
float DN to the output dtype with nodata handling."""

from __future__ import annotations

from typing import Any

import numpy as np
from rasterio.windows import Window


def cast_output(out: np.ndarray, valid: np.ndarray, dtype: np.dtype, nodata: float | None,
                inplace: bool = False) -> np.ndarray:
    """Float DN -> ``dtype`` (rounded and clipped for integers); invalid pixels get ``nodata`` (NaN for
    float output without nodata); a valid pixel whose every band would equal ``nodata`` is nudged by 1 DN.
    ``inplace``: ``out`` (float) may be overwritten (saves a copy of the block)."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        res = out.astype(dtype)
        res[:, ~valid] = np.nan if nodata is None else nodata
        return res
    info = np.iinfo(dtype)
    res = out if inplace and out.dtype.kind == "f" else np.array(out, dtype=np.result_type(out, np.float32))
    np.copyto(res, 0.0, where=np.isnan(res))  # NaN -> 0; +-inf go to the dtype's bounds in the clip below
    np.rint(res, out=res)
    np.clip(res, info.min, info.max, out=res)
    res = res.astype(dtype)
    if nodata is not None and info.min <= nodata <= info.max:
        clash = valid & (res == nodata).all(axis=0)
        if clash.any():
            res[0][clash] = nodata + 1 if nodata < info.max else nodata - 1
        res[:, ~valid] = nodata
    return res


class ArraySink:
    """Collects the output in memory: float32 DN (invalid -> nodata, or NaN) and the uint8 mask."""

    def __init__(self, bands: int, height: int, width: int, nodata: float | None, want_mask: bool) -> None:
        self.out = np.empty((bands, height, width), dtype=np.float32)
        self.mask = np.empty((height, width), dtype=np.uint8) if want_mask else None
        self.dtype, self.nodata = np.dtype(np.float32), nodata

    def write(self, r0: int, r1: int, out: np.ndarray | None, mask: np.ndarray | None, col: int = 0) -> None:
        """Rows ``[r0, r1)`` from column ``col`` on (as wide as the given arrays)."""
        if out is not None:
            self.out[:, r0:r1, col : col + out.shape[2]] = out
        if self.mask is not None and mask is not None:
            self.mask[r0:r1, col : col + mask.shape[1]] = mask


class RasterSink:
    """Writes output blocks (already cast to ``dtype``) into open rasterio datasets (image and/or mask)."""

    def __init__(self, dst: Any | None, mask_dst: Any | None, dtype: np.dtype, nodata: float | None) -> None:
        self.dst, self.mask_dst, self.dtype, self.nodata = dst, mask_dst, np.dtype(dtype), nodata

    def write(self, r0: int, r1: int, out: np.ndarray | None, mask: np.ndarray | None, col: int = 0) -> None:
        """Rows ``[r0, r1)`` from column ``col`` on, as one window (block-aligned when ``col`` is)."""
        if self.dst is not None and out is not None:
            self.dst.write(out, window=Window(col, r0, out.shape[2], r1 - r0))
        if self.mask_dst is not None and mask is not None:
            self.mask_dst.write(mask[None], window=Window(col, r0, mask.shape[1], r1 - r0))

