"""Whole-scene processing: row-streamed sources and sinks, the per-scene cloud mask, feathered compositing.

The pipeline (all NumPy; rasterio only for files):

1. :func:`cloudrt.tiling.blend_rows` reads the scene by groups of tile rows, normalizes it (dataset
   convention, :mod:`cloudrt.preprocess`), runs the backend on batches of tiles and yields finished,
   blended rows of the prediction.
2. Rows are collected into output blocks of :data:`cloudrt.io.BLOCK` rows. For each block the optical input
   is re-read with a halo, the cloud mask is computed on it (the halo makes the windowed mask equal to the
   whole-scene mask, including the sen12mscr method's filters), feathered by distance, and the prediction is
   composited: ``out = a * pred + (1 - a) * input`` with ``a = 1`` on clouds falling linearly to 0 at
   ``feather + 1`` pixels outside them, so clear pixels keep the input exactly.
3. Blocks are written in order (whole rows of GeoTIFF tiles, so every tile is compressed once).

Memory is ``O(panel * (tile + block))``: independent of the scene size. Rows stream; a scene wider than
:data:`PANEL` columns is processed as vertical column panels whose results equal the single pass
(:func:`run_scene`); normalization, masks and compositing run by column chunks with a halo.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from cloudrt.errors import InputError
from cloudrt.preprocess import denormalize_optical, normalize_optical, normalize_sar, valid_mask
from cloudrt.tiling import BatchRunner, blend_rows, panel_cores, panel_window

MASK_CLEAR, MASK_CLOUD, MASK_SHADOW, MASK_NODATA = 0, 1, 2, 255
MASK_HALO = 8  # >= the reach of the sen12mscr mask filters (5x5 closing + 7x7 mean) and the 5x5 median
DEFAULT_FEATHER = 8
COL_CHUNK = 512  # columns per chunk for normalization, masks and compositing (bounds the temporaries)
PANEL = 2048  # core columns per vertical panel of a wide scene (whole 256-px output blocks); bounds the memory
Progress = Callable[[int, int], None]


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

    def __init__(self, optical_ds: Any, sar_ds: Any, sar_file_ds: Any | None = None) -> None:
        self.ods, self.sds = optical_ds, sar_ds
        self._sar_file = sar_file_ds
        self.height, self.width = optical_ds.height, optical_ds.width
        self.nodata = optical_ds.nodata
        self.sar_nodata = sar_ds.nodata
        self.dtype = np.dtype(optical_ds.dtypes[0])
        self.optical_name = f"optical (S2) {optical_ds.name}"
        self.sar_name = f"SAR (S1) {(sar_file_ds or sar_ds).name}"

    def optical(self, r0: int, r1: int, c0: int = 0, c1: int | None = None) -> np.ndarray:
        from cloudrt.io import read_rows

        return read_rows(self.ods, r0, r1, c0, c1)

    def sar(self, r0: int, r1: int, c0: int = 0, c1: int | None = None) -> np.ndarray:
        from cloudrt.io import read_rows

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


def open_scene(optical: str | Path, sar: str | Path, align: bool = False) -> RasterSource:
    """Open and validate an S2/S1 pair (bands, dtype, grids, any valid pixel); InputError otherwise."""
    from cloudrt.io import match_grids, open_optical, open_sar

    ods = open_optical(optical)
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
    except BaseException:
        src.close()
        raise
    return src


def _any_valid(read: Callable[..., np.ndarray], height: int, nodata: float | None, width: int | None = None,
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
        if not _any_valid(read, src.height, nodata, src.width):
            nd = f" or nodata={nodata:g}" if nodata is not None else ""
            raise InputError(
                f"{name} has no valid pixel (every pixel is NaN/inf{nd}); pass a scene with data."
            )


def feather_alpha(cloud: np.ndarray, width: int) -> np.ndarray:
    """Compositing weight (H, W) float32: 1 on cloud, ``1 - d / (width + 1)`` at distance ``d`` px outside,
    0 from ``width + 1`` px on (Euclidean distance transform)."""
    if not cloud.any():
        return np.zeros(cloud.shape, dtype=np.float32)
    if width <= 0:
        return cloud.astype(np.float32)
    from scipy import ndimage

    d = ndimage.distance_transform_edt(~cloud)
    return np.clip(1.0 - d / (width + 1.0), 0.0, 1.0).astype(np.float32)


def cast_output(out: np.ndarray, valid: np.ndarray, dtype: np.dtype, nodata: float | None) -> np.ndarray:
    """Float DN -> ``dtype`` (rounded and clipped for integers); invalid pixels get ``nodata`` (NaN for
    float output without nodata); a valid pixel whose every band would equal ``nodata`` is nudged by 1 DN."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        res = out.astype(dtype)
        res[:, ~valid] = np.nan if nodata is None else nodata
        return res
    info = np.iinfo(dtype)
    res = np.nan_to_num(out, nan=0.0, copy=True)
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
        from rasterio.windows import Window

        if self.dst is not None and out is not None:
            self.dst.write(out, window=Window(col, r0, out.shape[2], r1 - r0))
        if self.mask_dst is not None and mask is not None:
            self.mask_dst.write(mask[None], window=Window(col, r0, mask.shape[1], r1 - r0))


class _ColumnView:
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


def _windows(src: Any, a: int, b: int, halo: int, chunk: int, lo: int = 0,
             hi: int | None = None) -> Iterator[tuple[Any, ...]]:
    """Rows [a, b) x columns [lo, hi) (default: all) of ``src`` cut into column chunks, each read with
    ``halo`` pixels around it.

    Yields ``(c0, c1, raw, valid, given, core)``: the chunk's columns, the raw optical DN and validity of
    the haloed window, the given mask there (or None), and ``core`` (row slice, column slice) selecting
    rows [a, b) x columns [c0, c1) inside the window. A per-pixel result computed on the window and cut to
    ``core`` equals the whole-scene result when its reach is <= ``halo``.
    """
    ha, hb = max(0, a - halo), min(src.height, b + halo)
    raw_h = src.optical(ha, hb)
    given_h = src.mask(ha, hb)
    hi = src.width if hi is None else hi
    for c0 in range(lo, hi, chunk):
        c1 = min(hi, c0 + chunk)
        ca, cb = max(0, c0 - halo), min(src.width, c1 + halo)
        raw = raw_h[:, :, ca:cb]
        given = given_h[:, ca:cb] if given_h is not None else None
        core = (slice(a - ha, b - ha), slice(c0 - ca, c1 - ca))
        yield c0, c1, raw, valid_mask(raw, src.nodata), given, core


def _cloud(raw: np.ndarray, valid: np.ndarray, given: np.ndarray | None, method: str) -> np.ndarray:
    if given is None:
        from cloudrt.mask import cloud_mask

        with np.errstate(invalid="ignore"):
            given = cloud_mask(raw, method=method)
    return np.asarray(given, dtype=bool) & valid


class _RowBuffer:
    """Rows of (C, rows, W) arrays appended at the bottom and taken from the top, in one growable buffer."""

    def __init__(self, dtype: np.dtype) -> None:
        self.dtype = np.dtype(dtype)
        self.buf: np.ndarray | None = None
        self.rows = 0

    def append(self, a: np.ndarray) -> None:
        k = a.shape[1]
        if self.buf is None or self.rows + k > self.buf.shape[1]:
            cap = max(self.rows + k, 2 * (self.buf.shape[1] if self.buf is not None else 0))
            new = np.empty((a.shape[0], cap, a.shape[2]), dtype=self.dtype)
            if self.buf is not None and self.rows:
                new[:, : self.rows] = self.buf[:, : self.rows]
            self.buf = new
        self.buf[:, self.rows : self.rows + k] = a
        self.rows += k

    def peek(self, n: int) -> np.ndarray:
        assert self.buf is not None and n <= self.rows
        return self.buf[:, :n]

    def drop(self, n: int) -> None:
        assert self.buf is not None
        rest = self.rows - n
        if rest:
            self.buf[:, :rest] = self.buf[:, n : self.rows].copy()
        self.rows = rest


def run_scene(
    src: Any,
    run: BatchRunner,
    sink: Any,
    *,
    tile: int,
    overlap: int,
    batch: int,
    composite: bool = True,
    mask_method: str = "paper",
    feather: int = DEFAULT_FEATHER,
    want_mask: bool = False,
    block: int | None = None,
    chunk: int = COL_CHUNK,
    panel: int | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Predict the whole scene of ``src`` into ``sink`` by row blocks (see the module docstring).

    A scene wider than ``panel`` columns (default :data:`PANEL`, rounded to whole output blocks) is done as
    a sequence of vertical panels (:func:`cloudrt.tiling.panel_window`): each reads and tiles a window a
    tile (or mask halo) wider than its core on both sides and writes only its core columns, which equal the
    single-pass result, so memory does not depend on the scene's width either. ``progress(done, height)``
    counts rows-equivalents (done pixels / width). Returns a summary: valid and cloudy pixel counts, tiles
    run (panel margins included), panels, seconds, cloud fraction.
    """
    from cloudrt.io import BLOCK

    height, width = src.height, src.width
    block = block or BLOCK
    need_mask = composite or want_mask
    halo = max(feather, 0) + MASK_HALO if need_mask else 0
    cores = panel_cores(width, PANEL if panel is None else int(panel), block)
    stats: dict[str, Any] = {"pixels": height * width, "valid": 0, "cloud": 0, "tiles": 0, "panels": len(cores)}
    t0 = time.perf_counter()
    done_px = 0

    def counted_run(o: np.ndarray, s: np.ndarray) -> np.ndarray:
        stats["tiles"] += o.shape[0]
        return run(o, s)

    for c0, c1 in cores:
        if len(cores) == 1:
            view, x0 = src, 0
        else:
            x0, x1 = panel_window(c0, c1, width, tile, overlap, reach=halo)
            view = _ColumnView(src, x0, x1)

        def panel_progress(rows: int, _total: int, _w: int = c1 - c0, _done: int = done_px) -> None:
            if progress is not None:
                progress((_done + rows * _w) // width, height)

        _run_panel(view, counted_run, sink, c0 - x0, c1 - x0, x0, stats, tile=tile, overlap=overlap, batch=batch,
                   composite=composite, mask_method=mask_method, feather=feather, want_mask=want_mask,
                   block=block, chunk=chunk, halo=halo, progress=panel_progress)
        done_px += height * (c1 - c0)
    stats["seconds"] = time.perf_counter() - t0
    stats["cloud_fraction"] = stats["cloud"] / max(1, stats["valid"])
    return stats


def _run_panel(src: Any, run: BatchRunner, sink: Any, lo: int, hi: int, col: int, stats: dict[str, Any], *,
               tile: int, overlap: int, batch: int, composite: bool, mask_method: str, feather: int,
               want_mask: bool, block: int, chunk: int, halo: int, progress: Progress) -> None:
    """Blend the whole of ``src`` (a scene or a panel window), then mask, composite and write its columns
    ``[lo, hi)`` to ``sink`` columns ``[col + lo, col + hi)`` by output blocks of ``block`` rows."""
    height, width = src.height, src.width
    need_mask = composite or want_mask

    def read(r0: int, r1: int) -> tuple[np.ndarray, np.ndarray]:
        o, s = src.optical(r0, r1), src.sar(r0, r1)
        if o.shape[1:] != s.shape[1:]:
            raise InputError(f"optical rows {o.shape[1:]} and SAR rows {s.shape[1:]} differ; use one grid.")
        return o, s

    def normalize(o: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        with np.errstate(invalid="ignore"):
            return normalize_optical(o, src.nodata), normalize_sar(s, src.sar_nodata), valid_mask(o, src.nodata)

    out_buf = _RowBuffer(sink.dtype)
    mask_buf = _RowBuffer(np.dtype(np.uint8)) if want_mask else None
    written = 0

    def composite_rows(a: int, b: int, pred: np.ndarray) -> None:
        """Rows [a, b): mask, feather, composite, cast -> the output buffers (by column chunks)."""
        out_rows = np.empty((pred.shape[0], b - a, hi - lo), dtype=sink.dtype)
        mask_rows = np.empty((b - a, hi - lo), dtype=np.uint8) if want_mask else None
        for c0, c1, raw_w, valid_w, given_w, core in _windows(src, a, b, halo, chunk, lo, hi):
            raw, valid = raw_w[(slice(None), *core)], valid_w[core]
            out = denormalize_optical(pred[:, :, c0:c1])
            cloud = None
            if need_mask:
                cloud_w = _cloud(raw_w, valid_w, given_w, mask_method)
                cloud = cloud_w[core]
                stats["cloud"] += int(cloud.sum())
                if composite:
                    alpha = feather_alpha(cloud_w, feather)[core]
                    if alpha.any():  # out = inp + a (pred - inp), in place: exactly the input where a == 0
                        inp = raw.astype(np.float32)
                        out -= inp
                        out *= alpha
                        out += inp
                    else:
                        out = raw.astype(np.float32)
            out_rows[:, :, c0 - lo : c1 - lo] = cast_output(out, valid, sink.dtype, sink.nodata)
            if mask_rows is not None and cloud is not None:
                mask_rows[:, c0 - lo : c1 - lo] = np.where(valid, cloud.astype(np.uint8), np.uint8(MASK_NODATA))
            stats["valid"] += int(valid.sum())
        out_buf.append(out_rows)
        if mask_buf is not None:
            mask_buf.append(mask_rows[None])

    cols = None if (lo, hi) == (0, width) else (lo, hi)  # a panel: run only the tiles touching its core
    for r0, r1, pred in blend_rows(read, run, height, width, tile, overlap, batch, normalize=normalize,
                                   chunk=chunk, cols=cols):
        composite_rows(r0, r1, pred)
        del pred
        # write whole output blocks (rows of GeoTIFF tiles) as soon as they are complete
        while written < height and r1 >= min(written + block, height):
            end = min(written + block, height)
            n = end - written
            sink.write(written, end, out_buf.peek(n), mask_buf.peek(n)[0] if mask_buf is not None else None,
                       col=col + lo)
            out_buf.drop(n)
            if mask_buf is not None:
                mask_buf.drop(n)
            written = end
            progress(written, height)


def mask_scene(src: Any, sink: Any, *, method: str = "paper", shadow: bool = False,
               block: int | None = None, chunk: int = COL_CHUNK,
               progress: Progress | None = None) -> dict[str, Any]:
    """Stream the cloud mask (and, with ``shadow``, the dark-pixel shadow mask) of ``src`` into ``sink``.

    Mask values: 0 clear, 1 cloud, 2 cloud shadow (not cloud), 255 nodata. The shadow thresholds are scene
    statistics (:func:`cloudrt.mask.shadow_mask`), gathered in a first streaming pass over valid pixels;
    the 5x5 median clean-up is computed by haloed windows like the cloud mask.
    """
    from scipy import ndimage

    from cloudrt.io import BLOCK
    from cloudrt.mask import SHADOW_MEDIAN

    block = block or BLOCK
    height = src.height
    thresholds = _shadow_thresholds(src, block) if shadow else None
    stats = {"valid": 0, "cloud": 0, "shadow": 0}
    for a in range(0, height, block):
        b = min(height, a + block)
        m = np.empty((b - a, src.width), dtype=np.uint8)
        for c0, c1, raw_w, valid_w, given_w, core in _windows(src, a, b, MASK_HALO, chunk):
            cloud, valid = _cloud(raw_w, valid_w, given_w, method)[core], valid_w[core]
            mc = cloud.astype(np.uint8)
            if thresholds is not None:
                csi, blue = _csi_blue(raw_w)
                with np.errstate(invalid="ignore"):
                    dark = np.isfinite(csi) & np.isfinite(blue) & (csi < thresholds[0]) & (blue < thresholds[1])
                dark &= valid_w
                sh = ndimage.median_filter(dark.astype(np.uint8), size=SHADOW_MEDIAN, mode="constant", cval=0)
                sh = sh.astype(bool)[core] & ~cloud & valid
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


def _csi_blue(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from cloudrt.mask import B2, B8, B11
    from cloudrt.preprocess import S2_SCALE

    csi = (raw[B8].astype(np.float64) / S2_SCALE + raw[B11].astype(np.float64) / S2_SCALE) / 2.0
    return csi, raw[B2].astype(np.float64) / S2_SCALE


def _shadow_thresholds(src: Any, block: int) -> tuple[float, float] | None:
    """Scene-wide (T3, T4) of the SEN12MS-CR shadow rule (see :func:`cloudrt.mask.shadow_mask`)."""
    from cloudrt.mask import SHADOW_BLUE_FRACTION, SHADOW_CSI_FRACTION

    cmin = bmin = np.inf
    csum = bsum = 0.0
    n = 0
    for a in range(0, src.height, block):
        raw = src.optical(a, min(src.height, a + block))
        csi, blue = _csi_blue(raw)
        ok = np.isfinite(csi) & np.isfinite(blue) & valid_mask(raw, src.nodata)
        if ok.any():
            c, b = csi[ok], blue[ok]
            cmin, bmin = min(cmin, c.min()), min(bmin, b.min())
            csum += c.sum()
            bsum += b.sum()
            n += int(ok.sum())
    if n == 0:
        return None
    return (cmin + SHADOW_CSI_FRACTION * (csum / n - cmin), bmin + SHADOW_BLUE_FRACTION * (bsum / n - bmin))
