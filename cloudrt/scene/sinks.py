"""Scene sinks: where the streamed output blocks go (memory or open rasterio datasets), and the cast of
float DN to the output dtype with nodata handling."""

from __future__ import annotations

from typing import Any

import numpy as np


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
    """Collects the output in memory: float32 DN (invalid -> nodata, or NaN) and, with ``want_mask``, the
    uint8 planes ``mask`` (0 clear, 1 cloud, 255 nodata), ``weight`` (compositing weight, percent) and
    ``confidence`` (0-100, :func:`cloudrt.preprocess.composite.confidence`)."""

    def __init__(self, bands: int, height: int, width: int, nodata: float | None, want_mask: bool) -> None:
        self.out = np.empty((bands, height, width), dtype=np.float32)
        self.planes = np.empty((3, height, width), dtype=np.uint8) if want_mask else None
        self.dtype, self.nodata = np.dtype(np.float32), nodata

    @property
    def mask(self) -> np.ndarray | None:
        return None if self.planes is None else self.planes[0]

    @property
    def weight(self) -> np.ndarray | None:
        return None if self.planes is None else self.planes[1]

    @property
    def confidence(self) -> np.ndarray | None:
        return None if self.planes is None else self.planes[2]

    def write(self, r0: int, r1: int, out: np.ndarray | None, mask: np.ndarray | None, col: int = 0) -> None:
        """Rows ``[r0, r1)`` from column ``col`` on (as wide as the given arrays); ``mask`` is (3, rows, cols)."""
        if out is not None:
            self.out[:, r0:r1, col : col + out.shape[2]] = out
        if self.planes is not None and mask is not None:
            if mask.ndim == 2:  # a mask alone (cloudrt.scene.masking)
                self.planes[0, r0:r1, col : col + mask.shape[1]] = mask
            else:
                self.planes[:, r0:r1, col : col + mask.shape[2]] = mask


class RasterSink:
    """Writes output blocks (already cast to ``dtype``) into open rasterio datasets: the image, the mask file
    (band 1 the cloud mask, band 2 the compositing weight in percent) and the confidence file."""

    def __init__(self, dst: Any | None, mask_dst: Any | None, dtype: np.dtype, nodata: float | None,
                 conf_dst: Any | None = None) -> None:
        self.dst, self.mask_dst, self.dtype, self.nodata = dst, mask_dst, np.dtype(dtype), nodata
        self.conf_dst = conf_dst

    def write(self, r0: int, r1: int, out: np.ndarray | None, mask: np.ndarray | None, col: int = 0) -> None:
        """Rows ``[r0, r1)`` from column ``col`` on, as one window (block-aligned when ``col`` is)."""
        from rasterio.windows import Window  # here, not at the top: the array path runs without rasterio

        if self.dst is not None and out is not None:
            self.dst.write(out, window=Window(col, r0, out.shape[2], r1 - r0))
        if mask is None:
            return
        if mask.ndim == 2:  # a mask alone (cloudrt.scene.masking)
            mask = mask[None]
        win = Window(col, r0, mask.shape[2], r1 - r0)
        if self.mask_dst is not None:
            self.mask_dst.write(mask[: self.mask_dst.count], window=win)
        if self.conf_dst is not None:
            self.conf_dst.write(mask[2:3], window=win)

