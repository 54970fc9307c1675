"""Normalization in the SEN12MS-CR dataset convention (NumPy only, no torch); constants in :mod:`cloudrt.contract`.

- S2 L1C digital numbers: clip to [0, 10000], divide by 10000.
- S1 sigma0 in dB: clip VV to [-25, 0] and VH to [-32.5, 0], rescale each to [0, 1].
"""

from __future__ import annotations

import numpy as np

from cloudrt.contract import S1_BANDS, S1_CLIP, S2_BANDS, S2_CLIP, S2_SCALE, SUPPORTED_DTYPES
from cloudrt.errors import InputError


def check_optical(dn: np.ndarray) -> None:
    """Raise :class:`InputError` unless ``dn`` is a (13, H, W) array of a supported dtype."""
    if dn.ndim != 3 or dn.shape[0] != len(S2_BANDS):
        raise InputError(
            f"optical input has shape {tuple(dn.shape)}; expected (13, H, W) with the 13 Sentinel-2 L1C "
            f"bands {','.join(S2_BANDS)}. Pass a 13-band L1C stack."
        )
    _check_dtype(dn, "optical")


def check_sar(db: np.ndarray) -> None:
    """Raise :class:`InputError` unless ``db`` is a (2, H, W) array of a supported dtype."""
    if db.ndim != 3 or db.shape[0] != len(S1_BANDS):
        raise InputError(
            f"SAR input has shape {tuple(db.shape)}; expected (2, H, W) with the Sentinel-1 bands VV,VH "
            "in dB. Pass a 2-band VV/VH sigma0 stack."
        )
    _check_dtype(db, "SAR")


def _check_dtype(a: np.ndarray, what: str) -> None:
    if a.dtype.type not in SUPPORTED_DTYPES:
        raise InputError(
            f"{what} input has unsupported dtype {a.dtype}; expected one of "
            f"{', '.join(np.dtype(t).name for t in SUPPORTED_DTYPES)}. Convert the raster first."
        )


def normalize_optical(dn: np.ndarray, nodata: float | None = None) -> np.ndarray:
    """S2 DN -> [0, 1] float32. NaN, inf and ``nodata`` pixels become 0 (no garbage propagates).

    One float32 copy, clipped and divided in place (integer input cannot hold NaN or inf, so it skips that
    check): the same values as ``clip(x, 0, 10000) / 10000`` in float32, with fewer passes over memory."""
    src = np.asarray(dn)
    x = np.array(src, dtype=np.float32)
    bad = ~np.isfinite(x) if src.dtype.kind == "f" else None
    if nodata is not None and np.isfinite(nodata):
        nd = x == np.float32(nodata)
        bad = nd if bad is None else bad | nd
    np.clip(x, *S2_CLIP, out=x)
    x /= np.float32(S2_SCALE)
    if bad is not None and bad.any():
        x[bad] = np.float32(0.0)
    return x


def denormalize_optical(x: np.ndarray, inplace: bool = False) -> np.ndarray:
    """[0, 1] model units -> S2 DN (float32, clipped to [0, 10000]); ``inplace`` reuses a float32 ``x``."""
    if inplace and isinstance(x, np.ndarray) and x.dtype == np.float32 and x.flags.writeable:
        np.multiply(x, np.float32(S2_SCALE), out=x)
        return np.clip(x, *S2_CLIP, out=x)
    return np.clip(np.asarray(x, dtype=np.float32) * np.float32(S2_SCALE), *S2_CLIP).astype(np.float32)


def normalize_sar(db: np.ndarray, nodata: float | None = None) -> np.ndarray:
    """S1 dB (VV, VH) -> [0, 1] float32 per the dataset convention. NaN/inf/nodata become 0."""
    x = np.asarray(db, dtype=np.float32)
    bad = ~np.isfinite(x)
    if nodata is not None and np.isfinite(nodata):
        bad |= x == np.float32(nodata)
    out = np.empty_like(x, dtype=np.float32)
    for i, band in enumerate(S1_BANDS):
        lo, hi = S1_CLIP[band]
        out[i] = (np.clip(x[i], lo, hi) - np.float32(lo)) / np.float32(hi - lo)
    if bad.any():
        out = np.where(bad, np.float32(0.0), out)
    return out


def valid_mask(a: np.ndarray, nodata: float | None = None) -> np.ndarray:
    """(H, W) bool: True where every band is finite and not ``nodata``."""
    a = np.asarray(a)
    ok = np.ones(a.shape[-2:], dtype=bool)
    if a.dtype.kind == "f":
        ok &= np.isfinite(a).all(axis=0)
    if nodata is not None and np.isfinite(nodata):
        ok &= ~(a == nodata).all(axis=0)
    return ok
