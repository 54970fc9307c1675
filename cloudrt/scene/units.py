"""Value conventions of the inputs: SAR units (dB or linear power) and the optical DN scale.

The model was trained on SEN12MS-CR: Sentinel-1 sigma0 in dB, Sentinel-2 L1C as top-of-atmosphere
reflectance x 10000 (uint16 DN, or the same numbers as float). Inputs in another convention are not
errors GDAL can see, so they used to run silently into a constant SAR (linear power clips to 0 dB) or an
untouched optical scene ("cloud 0.0 %"). This module decides from a sample of the values:

- :func:`resolve_sar_units` for ``--sar-units auto|db|linear`` (auto says what it decided, for the log);
  :func:`linear_to_db` converts linear power to dB.
- :func:`check_optical_scale` refuses optical data that looks like reflectance in 0..1, 8-bit previews or
  values far above the DN range, in one line naming the expected convention; ``scale="reflectance"``
  (``--optical-scale reflectance``) accepts 0..1 reflectance and :func:`scale_optical` multiplies it by 10000.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cloudrt.errors import InputError

SAR_UNITS = ("auto", "db", "linear")
OPTICAL_SCALES = ("dn", "reflectance")
REFLECTANCE_SCALE = 10000.0
EXPECTED_OPTICAL = "L1C top-of-atmosphere reflectance x 10000 (SEN12MS-CR DN, uint16 or float, 0..~12000)"

_REFLECTANCE_MAX = 1.5   # 99th percentile at or below this: reflectance 0..1 (clouds reach ~1.2), not DN
_DN_MEDIAN_MAX = 15000   # a scene median above this is not reflectance x 10000, even under full cloud
_NEG_FRACTION_DB = 0.01  # sigma0 in dB is mostly negative; linear power is never negative
_LINEAR_MEDIAN_MAX = 1.0  # linear sigma0 of land and sea is ~0.001..0.5; median above 1 is not sigma0


def sample_values(ds: Any, size: int = 64, per_axis: int = 3) -> np.ndarray:
    """A ``(bands, n)`` float32 sample of ``ds``: ``per_axis`` x ``per_axis`` windows of ``size`` pixels
    spread over the grid (about 37 000 pixels by default), so deciding units costs a few
    small reads and a few MB, not a scene.

    Works with any object having ``width``, ``height``, ``count`` and ``read(window=...)`` (rasterio
    datasets, WarpedVRTs, :class:`cloudrt.scene.safe.SafeReader`).
    """
    from rasterio.windows import Window

    h, w = min(size, ds.height), min(size, ds.width)
    rows = np.unique(np.linspace(0, ds.height - h, per_axis).astype(int))
    cols = np.unique(np.linspace(0, ds.width - w, per_axis).astype(int))
    parts = [np.asarray(ds.read(window=Window(int(c), int(r), w, h)), dtype=np.float32).reshape(ds.count, -1)
             for r in rows for c in cols]
    return np.concatenate(parts, axis=1)


def _valid(values: np.ndarray, nodata: float | None) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64).ravel()
    keep = np.isfinite(v)
    if nodata is not None and np.isfinite(nodata):
        keep &= v != nodata
    return v[keep]


def detect_sar_units(values: np.ndarray, nodata: float | None = None) -> tuple[str, str]:
    """``("db" | "linear", reason)`` from sampled SAR values; InputError if neither fits.

    dB: more than 1 % of the valid values are negative. Linear power: none negative and median <= 1
    (exact zeros are ignored: they are the no-data border of most S1 products). Anything else (e.g.
    uncalibrated GRD digital numbers in the hundreds) is refused.
    """
    v = _valid(values, nodata)
    if v.size == 0:
        raise InputError("SAR (S1) values could not be sampled (the sampled windows are all nodata/NaN); pass "
                         "--sar-units db or linear.")
    neg = float((v < 0).mean())
    if neg > _NEG_FRACTION_DB:
        return "db", f"{neg:.0%} of sampled values negative, median {np.median(v):.1f}"
    pos = v[v > 0]
    if pos.size == 0:
        raise InputError("SAR (S1) sample is all zeros; the S1 file holds no backscatter. Check it.")
    med = float(np.median(pos))
    if neg == 0 and med <= _LINEAR_MEDIAN_MAX:
        return "linear", f"no negative values, median {med:.3g}"
    raise InputError(
        f"SAR (S1) values (median {med:.3g}, {neg:.1%} negative) are neither sigma0 in dB nor linear power; "
        "pass calibrated, terrain-corrected sigma0 (e.g. SNAP or sarsen output) and say --sar-units db|linear."
    )


def resolve_sar_units(mode: str, values: np.ndarray, nodata: float | None = None) -> tuple[str, str]:
    """``(units, log line)`` for ``--sar-units``: ``db`` / ``linear`` as given, ``auto`` detected.

    An explicit choice that contradicts the data badly (``db`` on data that has no negative value and a
    median below 1, i.e. linear power that would clip to a constant 0 dB) is refused rather than run.
    """
    if mode not in SAR_UNITS:
        raise InputError(f"unknown --sar-units {mode!r}; use one of {', '.join(SAR_UNITS)}.")
    if mode == "auto":
        units, why = detect_sar_units(values, nodata)
        return units, f"SAR units: auto -> {_label(units)} ({why})"
    v = _valid(values, nodata)
    if mode == "db" and v.size and (v >= 0).all() and np.median(v[v > 0] if (v > 0).any() else v) <= 1:
        raise InputError(
            "--sar-units db but the SAR values are all >= 0 with a median below 1: that is linear power, which "
            "would clip to a constant 0 dB. Pass --sar-units linear (or auto)."
        )
    if mode == "linear" and v.size and float((v < 0).mean()) > _NEG_FRACTION_DB:
        raise InputError(
            "--sar-units linear but many SAR values are negative: that is dB. Pass --sar-units db (or auto)."
        )
    return mode, f"SAR units: {_label(mode)} (as given)"


def _label(units: str) -> str:
    return "dB" if units == "db" else "linear power (converted to dB: 10*log10)"


def linear_to_db(x: np.ndarray, nodata: float | None = None) -> np.ndarray:
    """Linear power -> dB as float32: ``10 * log10(x)``; values <= 0, NaN and ``nodata`` become NaN (invalid).

    A power of exactly 0 is the no-data border of S1 products, not a backscatter, so it must not turn into
    a very low but valid dB value.
    """
    a = np.asarray(x, dtype=np.float64)
    bad = ~np.isfinite(a) | (a <= 0)
    if nodata is not None and np.isfinite(nodata):
        bad |= a == nodata
    out = np.full(a.shape, np.nan, dtype=np.float64)
    np.log10(a, out=out, where=~bad)
    out[~bad] *= 10.0
    return out.astype(np.float32)


def check_optical_scale(values: np.ndarray, dtype: str, scale: str = "dn", nodata: float | None = None) -> str:
    """Refuse optical data not in the expected DN convention; return a log line saying what was accepted.

    ``values`` is a sample (any shape). ``scale="dn"`` (default) expects reflectance x 10000;
    ``scale="reflectance"`` expects 0..1 reflectance (then multiply with :func:`scale_optical`).
    """
    if scale not in OPTICAL_SCALES:
        raise InputError(f"unknown --optical-scale {scale!r}; use one of {', '.join(OPTICAL_SCALES)}.")
    v = _valid(values, nodata)
    v = v[v != 0]  # 0 is the L1C no-data value
    if v.size == 0:  # data only outside the sampled windows: nothing to judge the scale by
        return "optical scale: not checked (the sampled windows hold no valid pixel)"
    p50, p99 = float(np.median(v)), float(np.percentile(v, 99))
    if scale == "reflectance":
        if p99 > _REFLECTANCE_MAX:
            raise InputError(
                f"--optical-scale reflectance but the optical values reach {p99:.4g} (99th percentile), so they "
                f"are not 0..1 reflectance; drop the option if they are {EXPECTED_OPTICAL}."
            )
        return f"optical scale: reflectance 0..1 (99th percentile {p99:.3g}) x {REFLECTANCE_SCALE:.0f} -> DN"
    if np.dtype(dtype) == np.uint8:
        raise InputError(
            f"optical (S2) data is 8-bit (a preview such as TCI?); the model expects {EXPECTED_OPTICAL}."
        )
    if p99 <= _REFLECTANCE_MAX:
        raise InputError(
            f"optical (S2) values look like reflectance 0..1 (99th percentile {p99:.3g}); the model expects "
            f"{EXPECTED_OPTICAL}. Pass --optical-scale reflectance to multiply by 10000."
        )
    if p50 > _DN_MEDIAN_MAX:
        raise InputError(
            f"optical (S2) values are too large for DN (median {p50:.0f}); the model expects {EXPECTED_OPTICAL}. "
            "Rescale the data (e.g. remove a x65535 or other scaling)."
        )
    return f"optical scale: DN reflectance x 10000 (median {p50:.0f})"


def scale_optical(x: np.ndarray, scale: str) -> np.ndarray:
    """Apply ``--optical-scale``: ``reflectance`` -> ``x * 10000`` (float32; NaN stays NaN), ``dn`` -> ``x``."""
    if scale == "reflectance":
        return (np.asarray(x, dtype=np.float32) * np.float32(REFLECTANCE_SCALE)).astype(np.float32)
    return x


class _View:
    """A read-only view of a dataset whose ``read`` transforms the values; other attributes pass through."""

    def __init__(self, ds: Any) -> None:
        self._ds = ds

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ds, name)

    @property
    def dtypes(self) -> tuple[str, ...]:
        return ("float32",) * self._ds.count

    def close(self) -> None:
        self._ds.close()


class DbView(_View):
    """Linear-power SAR read as dB (:func:`linear_to_db`); zeros and nodata become NaN (invalid)."""

    nodata = float("nan")

    def read(self, indexes: Any = None, window: Any = None) -> np.ndarray:
        return linear_to_db(self._ds.read(indexes, window=window), self._ds.nodata)


class ReflectanceView(_View):
    """0..1 reflectance read as DN (x 10000, float32); nodata pixels keep their value."""

    def read(self, indexes: Any = None, window: Any = None) -> np.ndarray:
        raw = self._ds.read(indexes, window=window)
        out = scale_optical(raw, "reflectance")
        nd = self._ds.nodata
        if nd is not None and np.isfinite(nd):
            out[raw == nd] = nd
        return out
