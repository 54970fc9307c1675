"""Scene sources: a scene in memory (:class:`ArraySource`) or read from GeoTIFFs by windows
(:class:`RasterSource`, opened and validated by :func:`open_scene`), and column views of either.

A source has ``height``, ``width``, ``nodata``, ``sar_nodata`` and ``optical(r0, r1, c0, c1)``,
``sar(...)``, ``mask(...)`` readers returning raw values (DN, dB, bool or None).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cloudrt.contract import NO_SAR_DB
from cloudrt.errors import InputError
from cloudrt.preprocess.normalize import valid_mask
from cloudrt.scene.io import match_grids, open_optical, open_sar, read_rows


class ArraySource:
    """A scene held in memory: optical (13, H, W) DN, SAR (2, H, W) dB, optional given cloud mask."""

    def __init__(self, optical: np.ndarray, sar: np.ndarray, nodata: float | None = None,
                 sar_nodata: float | None = None, mask: np.ndarray | None = None, name: str = "optical") -> None:
        self._o, self._s, self._m = optical, sar, mask
        self.height, self.width = optical.shape[-2:]
        self.nodata, self.sar_nodata = nodata, sar_nodata
        self.dtype = optical.dtype
        self.optical_name, self.sar_name = name, "SAR"

    def optical(self, r0: int, r1: int, c0: int = 0, c1: int | None = None) -> np.ndarray:
        return self._o[:, r0:r1, c0:c1]

    def sar(self, r0: int, r1: int, c0: int = 0, c1: int | None = None) -> np.ndarray:
        return self._s[:, r0:r1, c0:c1]

    def mask(self, r0: int, r1: int, c0: int = 0, c1: int | None = None) -> np.ndarray | None:
        return None if self._m is None else np.asarray(self._m[r0:r1, c0:c1], dtype=bool)


class RasterSource:
    """A scene read from rasterio datasets by windows (SAR possibly a WarpedVRT onto the optical grid)."""

    def __init__(self, optical_ds: Any, sar_ds: Any | None, sar_file_ds: Any | None = None) -> None:
        self.ods, self.sds = optical_ds, sar_ds
        self._sar_file = sar_file_ds
        self.height, self.width = optical_ds.height, optical_ds.width
        self.nodata = optical_ds.nodata
        self.sar_nodata = sar_ds.nodata if sar_ds is not None else None
        self.dtype = np.dtype(optical_ds.dtypes[0])
        self.optical_name = f"optical (S2) {optical_ds.name}"
        self.sar_name = f"SAR (S1) {(sar_file_ds or sar_ds).name}" if sar_ds is not None else "no SAR"
        self.notes: list[str] = []  # what open_scene decided about units and scales, for the log

    def optical(self, r0: int, r1: int, c0: int = 0, c1: int | None = None) -> np.ndarray:
        return read_rows(self.ods, r0, r1, c0, c1)

    def sar(self, r0: int, r1: int, c0: int = 0, c1: int | None = None) -> np.ndarray:
        if self.sds is None:  # no SAR (contract.NO_SAR_DB)
            cols = (self.width if c1 is None else c1) - c0
            return np.broadcast_to(NO_SAR_DB, (len(NO_SAR_DB), r1 - r0, cols))
        return read_rows(self.sds, r0, r1, c0, c1)

    def mask(self, r0: int, r1: int, c0: int = 0, c1: int | None = None) -> None:
        return None

    def close(self) -> None:
        for ds in (self.sds, self._sar_file, self.ods):
            if ds is not None:
                ds.close()

    def __enter__(self) -> RasterSource:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def open_scene(optical: str | Path, sar: str | Path | None, align: bool = False, sar_units: str = "auto",
               optical_scale: str = "dn") -> RasterSource:
    """Open and validate an S2/S1 pair (bands, dtype, value conventions, grids, any valid pixel); InputError
    otherwise. ``optical`` may be a GeoTIFF, a Sentinel-2 L1C SAFE product or a STAC Item (see
    :func:`~cloudrt.scene.io.open_optical`). ``sar_units`` (``auto``, ``db``, ``linear``) and ``optical_scale``
    (``dn``, ``reflectance``) are checked on a sample (:mod:`cloudrt.scene.units`); linear SAR is read as dB
    and 0..1 reflectance as DN. ``sar=None``: no SAR at all (the model was trained with SAR dropout; it
    reconstructs from optical context alone, weaker under thick cloud). The decisions are in the source's
    ``notes`` for the log."""
    from cloudrt.scene.units import DbView, ReflectanceView, check_optical_scale, resolve_sar_units, sample_values

    ods = open_optical(optical)
    if sar is None:
        src = RasterSource(ods, None)
        try:
            check_has_valid(src)
            note_o = check_optical_scale(sample_values(ods), ods.dtypes[0], optical_scale, ods.nodata)
        except BaseException:
            src.close()
            raise
        src.ods = ReflectanceView(ods) if optical_scale == "reflectance" else ods
        src.notes = [note_o, "no SAR: optical evidence only (the model was trained with SAR dropout)"]
        return src
    sds = None
    try:
        sds = open_sar(sar)
        view = match_grids(ods, sds, align=align)
        src = RasterSource(ods, view, sds if view is not sds else None)
    except BaseException:
        for ds in (sds, ods):
            if ds is not None:
                ds.close()
        raise
    try:
        check_has_valid(src)
        # Value conventions, on a sample; then read through converting views where asked or detected.
        note_o = check_optical_scale(sample_values(ods), ods.dtypes[0], optical_scale, ods.nodata)
        units, note_s = resolve_sar_units(sar_units, sample_values(view), view.nodata)
    except BaseException:
        src.close()
        raise
    src.ods = ReflectanceView(ods) if optical_scale == "reflectance" else ods
    if units == "linear":
        src.sds = DbView(view)
        src.sar_nodata = src.sds.nodata
    src.notes = [note_o, note_s]
    return src


def any_valid(read: Callable[..., np.ndarray], height: int, nodata: float | None, width: int | None = None,
               cols: int = 2048) -> bool:
    """Any valid pixel, read by 256-row blocks (and, given ``width``, by windows of ``cols`` columns)."""
    step = 256
    spans = [(0, None)] if width is None else [(c, min(width, c + cols)) for c in range(0, width, cols)]
    for r0 in range(0, height, step):
        for c0, c1 in spans:
            raw = read(r0, min(height, r0 + step)) if c1 is None else read(r0, min(height, r0 + step), c0, c1)
            if valid_mask(raw, nodata).any():
                return True
    return False


def check_has_valid(src: Any) -> None:
    """InputError if the optical or the SAR scene has no valid pixel (stops at the first valid block)."""
    for read, nodata, name in ((src.optical, src.nodata, src.optical_name),
                               (src.sar, src.sar_nodata, src.sar_name)):
        if not any_valid(read, src.height, nodata, src.width):
            nd = f" or nodata={nodata:g}" if nodata is not None else ""
            raise InputError(
                f"{name} has no valid pixel (every pixel is NaN/inf{nd}); pass a scene with data."
            )


class ColumnView:
    """Columns ``[x0, x1)`` of a source, read as column windows (a panel of :func:`run_scene`)."""

    def __init__(self, src: Any, x0: int, x1: int) -> None:
        self.src, self.x0, self.x1 = src, x0, x1
        self.height, self.width = src.height, x1 - x0
        self.nodata, self.sar_nodata = src.nodata, src.sar_nodata

    def optical(self, r0: int, r1: int) -> np.ndarray:
        return self.src.optical(r0, r1, self.x0, self.x1)

    def sar(self, r0: int, r1: int) -> np.ndarray:
        return self.src.sar(r0, r1, self.x0, self.x1)

    def mask(self, r0: int, r1: int) -> np.ndarray | None:
        return self.src.mask(r0, r1, self.x0, self.x1)

