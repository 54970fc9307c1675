"""Quicklooks: input, output, compositing weight and confidence side by side in one PNG (NumPy + rasterio).

Panels, left to right, each at most ``size`` pixels on its long side (read decimated by GDAL):

1. the optical input in true colour (B4, B3, B2);
2. the output in true colour, with the *same* stretch as the input, so brightness differences are real
   (and, with ``reference``, a clear image of the same ground, same stretch, e.g. a SEN12MS-CR target);
3. the compositing weight (black: input kept, white: model output), from ``--mask`` band 2 when given,
   else computed from the input (:func:`cloudrt.preprocess.composite.composite_weight`);
4. the confidence band (white: observed, black: reconstructed with no optical evidence left), from
   ``--confidence`` when given, else ``100 (1 - weight)`` with ``--mask``, else computed from the input.

The stretch is linear between the 2nd and 98th percentile of each band over the input's clear pixels
(weight 0; over the output's, or all valid input pixels, when under 1 % of the input is clear); panels 3
and 4 map 0..1 / 0..100 to black..white. Panels are separated by a white gutter of :data:`GUTTER` pixels.
Panels that cannot be made (no output given) are left out.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling

from cloudrt.contract import S2_BANDS
from cloudrt.errors import InputError
from cloudrt.preprocess.composite import composite_weight
from cloudrt.scene.io import atomic_output, open_optical

RGB = tuple(S2_BANDS.index(b) for b in ("B4", "B3", "B2"))
GUTTER = 4
PERCENTILES = (2.0, 98.0)


# What each extra input must be, for the one-line error when it is not.
_EXPECTED = {"--output": "a 13-band image of the same scene", "--reference": "a 13-band image of the same scene",
             "--mask": "the file written with --mask-out for this input",
             "--confidence": "the file written with --confidence-out for this input"}


def _read_small(path: str | os.PathLike, size: int, flag: str = "--optical",
                like: tuple[int, ...] | None = None) -> tuple[np.ndarray, float | None]:
    """All bands of ``path``, read decimated so the long side is at most ``size``, and its nodata. The
    optical input and ``--output`` / ``--reference`` open as 13-band S2 images (:func:`open_optical`); any
    file that cannot be read, or whose decimated shape is not ``like``, is a one-line InputError naming
    ``flag``."""
    optical = flag in ("--optical", "--output", "--reference")
    try:
        with warnings.catch_warnings():  # a picture, not a map: a file without georeferencing is fine
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            ds = open_optical(path) if optical else rasterio.open(path)
    except rasterio.errors.RasterioIOError as e:
        raise InputError(f"cannot open {flag} {path} ({e}); pass {_EXPECTED[flag]}.") from e
    except InputError as e:  # open_optical's own line; say which option it was about
        raise e if flag == "--optical" else InputError(f"{flag}: {e}") from e
    with ds:
        scale = min(1.0, size / max(ds.width, ds.height))
        shape = (max(1, round(ds.height * scale)), max(1, round(ds.width * scale)))
        data = ds.read(out_shape=(ds.count, *shape), resampling=Resampling.average if scale < 1
                       else Resampling.nearest)
        nodata = ds.nodata
    if like is not None and data.shape[1:] != like:
        raise InputError(f"{flag} {path} has shape {data.shape[1:]} but --optical has {like}; "
                         f"pass {_EXPECTED[flag]}.")
    return data, nodata


def stretch(rgb: np.ndarray, lo_hi: np.ndarray) -> np.ndarray:
    """(3, H, W) DN -> (3, H, W) uint8 with per-band (lo, hi) rows of ``lo_hi`` mapped to 0 and 255."""
    lo, hi = lo_hi[:, 0][:, None, None], lo_hi[:, 1][:, None, None]
    x = (rgb.astype(np.float64) - lo) / np.maximum(hi - lo, 1e-9)
    return np.rint(255 * np.clip(np.nan_to_num(x), 0, 1)).astype(np.uint8)


def stretch_limits(rgb: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(3, 2) per-band percentile limits (:data:`PERCENTILES`) over ``valid`` pixels."""
    if not valid.any():
        return np.array([[0.0, 1.0]] * 3)
    return np.stack([np.percentile(b[valid], PERCENTILES) for b in rgb.astype(np.float64)])


def _grey(a: np.ndarray) -> np.ndarray:
    g = np.rint(255 * np.clip(a, 0, 1)).astype(np.uint8)
    return np.stack([g, g, g])


def make_preview(optical: str | os.PathLike, output: str | os.PathLike | None = None,
                 mask: str | os.PathLike | None = None, size: int = 512,
                 reference: str | os.PathLike | None = None,
                 confidence: str | os.PathLike | None = None) -> np.ndarray:
    """The side-by-side quicklook as a (3, H, W) uint8 array (see the module docstring)."""
    if size < 16:
        raise InputError(f"preview size {size} is too small; pass --size 256 or more.")
    dn, nodata = _read_small(optical, size)
    valid = np.isfinite(dn).all(axis=0)
    if nodata is not None:
        valid &= ~(dn == nodata).all(axis=0)
    weight, conf = composite_weight(dn, return_confidence=True, valid=valid)
    like = dn.shape[1:]
    extra = [_read_small(path, size, flag, like)[0][list(RGB)]
             for flag, path in (("--output", output), ("--reference", reference)) if path is not None]
    rgb_in = dn[list(RGB)]
    clear = valid & (weight == 0)
    if clear.mean() >= 0.01:
        limits = stretch_limits(rgb_in, clear)
    else:
        limits = stretch_limits(extra[0], valid) if extra else stretch_limits(rgb_in, valid)
    panels = [stretch(rgb_in, limits)] + [stretch(a, limits) for a in extra]
    if mask is not None:
        m, _ = _read_small(mask, size, "--mask", like)
        if m.shape[0] >= 2:  # --mask-out of infer: band 2 is the weight in percent
            weight = np.where(m[1] == 255, 0.0, m[1] / 100.0)
        else:  # `cloudrt mask`: classes, 1 = cloud
            weight = (m[0] == 1).astype(np.float64)
        conf = np.rint(100 * (1 - weight)).astype(np.uint8)  # a given weight: cloud taken as opaque
    if confidence is not None:  # the --confidence-out file of that run
        c, _ = _read_small(confidence, size, "--confidence", like)
        conf = np.where(c[0] == 255, 100, c[0])
    panels += [_grey(weight), _grey(conf / 100.0)]
    h, w = panels[0].shape[1:]
    canvas = np.full((3, h, len(panels) * w + (len(panels) - 1) * GUTTER), 255, dtype=np.uint8)
    for i, p in enumerate(panels):
        canvas[:, :, i * (w + GUTTER): i * (w + GUTTER) + w] = p
    return canvas


def write_png(image: np.ndarray, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write a (3, H, W) uint8 image as PNG (GDAL's PNG driver), atomically."""
    with atomic_output(path, overwrite) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)  # a picture, not a map
        with rasterio.open(tmp, "w", driver="PNG", width=image.shape[2], height=image.shape[1], count=3,
                           dtype="uint8") as dst:
            dst.write(image)
        for aux in Path(tmp).parent.glob(Path(tmp).name + ".aux.xml"):
            aux.unlink()
    for aux in Path(path).parent.glob(Path(path).name + ".aux.xml"):
        aux.unlink()  # GDAL's side file for the missing georeferencing: not wanted beside a quicklook
    return Path(path)
