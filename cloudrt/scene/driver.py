"""Whole-scene processing: row-streamed sources and sinks, the per-scene cloud mask, soft compositing.

The pipeline (all NumPy; rasterio only for files):

1. :func:`cloudrt.scene.tiling.blend_rows` reads the scene by groups of tile rows, normalizes it (dataset
   convention, :mod:`cloudrt.preprocess.normalize`), runs the backend on batches of tiles and yields finished,
   blended rows of the prediction.
2. Rows are collected into output blocks of :data:`cloudrt.scene.io.BLOCK` rows. For each block the optical input
   is taken again with a halo (from the raw rows the blend read, kept by :class:`RowCache` for file sources:
   each row is read once), the cloud mask and the soft compositing weight ``w`` are computed on it (the halo
   makes the windowed results equal to the whole-scene ones), and the prediction is composited:
   ``out = w * pred + (1 - w) * input`` (:mod:`cloudrt.preprocess.composite`: continuous cloud, haze, cirrus
   and shadow evidence), so pixels that show the ground clearly (``w == 0``) keep the input exactly. Before
   that, each tile's prediction has its invented detail smoothed where the tile's input shows no ground
   (:func:`cloudrt.preprocess.composite.smooth_invented`, on the inference thread, skipped for clear tiles).
3. Blocks are written in order (whole rows of GeoTIFF tiles, so every tile is compressed once).

Memory is ``O(panel * (tile + block))``: independent of the scene size. The large per-row-group arrays (the
blend's window, accumulator and prediction blocks, the output row buffers) are allocated once per scene and
reused by every row group and panel (:class:`cloudrt.scene.tiling.BlendBuffers`), so the heap does not churn.
Rows stream; a scene wider than :data:`PANEL` columns is processed as vertical column panels whose results
equal the single pass (:func:`run_scene`); normalization, masks and compositing run by column chunks with a
halo.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from cloudrt.contract import S2_SCALE
from cloudrt.errors import InputError
from cloudrt.preprocess import composite as soft
from cloudrt.preprocess.mask import cloud_mask
from cloudrt.preprocess.normalize import denormalize_optical, normalize_optical, normalize_sar, valid_mask
from cloudrt.scene.io import BLOCK
from cloudrt.scene.pipeline import LockedSource, WriteBehind
from cloudrt.scene.sinks import cast_output
from cloudrt.scene.sources import ArraySource, ColumnView
from cloudrt.scene.tiling import BatchRunner, BlendBuffers, Scratch, blend_rows, panel_cores, panel_window

MASK_CLEAR, MASK_CLOUD, MASK_SHADOW, MASK_NODATA = 0, 1, 2, 255
MASK_HALO = 8  # >= the reach of the sen12mscr mask filters (5x5 closing + 7x7 mean) and the 5x5 median
WEIGHT_HALO = max(MASK_HALO, soft.HALO)  # the compositing weight's reach (shadow search, dilation, blur)
COL_CHUNK = 512  # columns per chunk for normalization, masks and compositing (bounds the temporaries)
PANEL = 2048  # core columns per vertical panel of a wide scene (whole 256-px output blocks); bounds the memory
Progress = Callable[[int, int], None]


def window_weight(raw: np.ndarray, valid: np.ndarray, given: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Compositing weight (float32) and confidence (uint8 0-100) of a haloed window.

    Without a given mask: :func:`cloudrt.preprocess.composite.composite_weight`. With one (the user's own
    cloud mask), the weight is that mask softened by the same Gaussian, and the cloud is taken as opaque
    (confidence ``100 (1 - w)``). Invalid pixels get weight 0 and confidence 100 (nothing is invented there).
    """
    if given is None:
        with np.errstate(invalid="ignore"):
            w, conf = soft.composite_weight(raw, return_confidence=True, valid=valid)
    else:
        w, conf = soft.mask_weight(given)
    w[~valid] = 0.0
    conf[~valid] = 100
    return w, conf


def haloed_windows(src: Any, a: int, b: int, halo: int, chunk: int, lo: int = 0,
             hi: int | None = None) -> Iterator[tuple[Any, ...]]:
    """Rows [a, b) x columns [lo, hi) (default: all) of ``src`` cut into column chunks, each read with
    ``halo`` pixels around it.

    Yields ``(c0, c1, raw, valid, given, core)``: the chunk's columns, the raw optical DN and validity of
    the haloed window, the given mask there (or None), and ``core`` (row slice, column slice) selecting
    rows [a, b) x columns [c0, c1) inside the window. A per-pixel result computed on the window and cut to
    ``core`` equals the whole-scene result when its reach is <= ``halo``.
    """
    ha, hb = max(0, a - halo), min(src.height, b + halo)
    by_chunk = isinstance(src, RowCache)  # cut each chunk from the kept rows: no full-width copy of the rows
    raw_h = None if by_chunk else src.optical(ha, hb)
    given_h = src.mask(ha, hb)
    hi = src.width if hi is None else hi
    for c0 in range(lo, hi, chunk):
        c1 = min(hi, c0 + chunk)
        ca, cb = max(0, c0 - halo), min(src.width, c1 + halo)
        raw = src.optical(ha, hb, ca, cb) if raw_h is None else raw_h[:, :, ca:cb]
        given = given_h[:, ca:cb] if given_h is not None else None
        core = (slice(a - ha, b - ha), slice(c0 - ca, c1 - ca))
        yield c0, c1, raw, valid_mask(raw, src.nodata), given, core


def window_cloud(raw: np.ndarray, valid: np.ndarray, given: np.ndarray | None, method: str) -> np.ndarray:
    if given is None:
        with np.errstate(invalid="ignore"):
            given = cloud_mask(raw, method=method)
    return np.asarray(given, dtype=bool) & valid


class RowCache:
    """The raw optical rows of ``src`` read last, kept while still needed, so that the compositing's haloed
    read of rows the blend has just read (and the blend's read of the rows its tiles overlap) reads only
    the rows not cached; the raw values, hence the results, are the same. Thread-safe (the blend and the
    write-behind thread both read). Reads are cached as the chunks they were read in; a chunk is dropped
    once every reader has moved past it (:meth:`release`), so at most about three row groups are held."""

    def __init__(self, src: Any) -> None:
        self._src, self._lock = src, threading.Lock()
        self._chunks: list[tuple[int, int, np.ndarray]] = []  # (r0, r1, rows), sorted and disjoint
        self._floor = {"blend": 0, "composite": 0}

    def __getattr__(self, name: str) -> Any:  # height, width, nodata, sar, mask, ...
        return getattr(self._src, name)

    def release(self, who: str, row: int) -> None:
        """Reader ``who`` needs no row below ``row`` any more."""
        with self._lock:
            self._floor[who] = max(self._floor[who], row)
            low = min(self._floor.values())
            self._chunks = [c for c in self._chunks if c[1] > low]

    def optical(self, r0: int, r1: int, c0: int = 0, c1: int | None = None) -> np.ndarray:
        """Rows ``[r0, r1)``, columns ``[c0, c1)`` (all rows of the columns are read and kept)."""
        cols = slice(c0, c1)
        with self._lock:
            parts, r, new = [], r0, []
            for a, b, rows in self._chunks:
                if b <= r or a >= r1:
                    continue
                if a > r:  # a gap before this chunk
                    new.append((r, a, self._src.optical(r, a)))
                    parts.append(new[-1][2][:, :, cols])
                parts.append(rows[:, max(r, a) - a : min(b, r1) - a, cols])
                r = min(b, r1)
            if r < r1:
                new.append((r, r1, self._src.optical(r, r1)))
                parts.append(new[-1][2][:, :, cols])
            if new:
                self._chunks = sorted(self._chunks + new, key=lambda c: c[0])
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)


class _RowBuffer:
    """Rows of (C, rows, W) arrays appended at the bottom and taken from the top, in one growable buffer
    (kept from one panel to the next: an empty buffer takes the next panel's width in the same memory)."""

    def __init__(self, dtype: np.dtype) -> None:
        self.dtype = np.dtype(dtype)
        self.buf: np.ndarray | None = None
        self.rows = 0
        self._mem, self._spare = Scratch(), Scratch()

    def reserve(self, bands: int, k: int, width: int) -> np.ndarray:
        """The next ``k`` rows of the buffer, to be filled in place and then :meth:`commit` -ted (no
        temporary block and no copy into the buffer)."""
        if self.buf is not None and (self.buf.shape[0], self.buf.shape[2]) != (bands, width):
            assert self.rows == 0, "a panel ended with rows left"
            self.buf = None
        if self.buf is None or self.rows + k > self.buf.shape[1]:
            cap = max(self.rows + k, 2 * (self.buf.shape[1] if self.buf is not None else 0))
            if not self.rows:  # nothing to keep
                self.buf = self._mem.take((bands, cap, width), self.dtype)
            else:  # grow into the spare memory, keeping the rows
                assert self.buf is not None
                new = self._spare.take((bands, cap, width), self.dtype)
                new[:, : self.rows] = self.buf[:, : self.rows]
                self.buf, self._mem, self._spare = new, self._spare, self._mem
        return self.buf[:, self.rows : self.rows + k]

    def commit(self, k: int) -> None:
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
    want_mask: bool = False,
    block: int | None = None,
    chunk: int = COL_CHUNK,
    panel: int | None = None,
    progress: Progress | None = None,
    threaded: bool = True,
    read_ahead: bool = False,
) -> dict[str, Any]:
    """Predict the whole scene of ``src`` into ``sink`` by row blocks (see the module docstring).

    A scene wider than ``panel`` columns (default :data:`PANEL`, rounded to whole output blocks) is done as
    a sequence of vertical panels (:func:`cloudrt.scene.tiling.panel_window`): each reads and tiles a window a
    tile (or mask halo) wider than its core on both sides and writes only its core columns, which equal the
    single-pass result, so memory does not depend on the scene's width either. ``progress(done, height)``
    counts rows-equivalents (done pixels / width). Returns a summary: valid and cloudy pixel counts, tiles
    run (panel margins included), panels, seconds, cloud fraction. ``threaded``: composite, cast and write
    (compress) in a write-behind thread beside the model; ``read_ahead`` also reads the next rows in a
    third thread (:mod:`cloudrt.scene.pipeline`; off by default: measured +15 % peak RSS for wide scenes,
    glibc's per-thread arenas, for no gain on 2 cores). The output is bit-identical either way.
    """
    cache = not isinstance(src, ArraySource)  # in memory, reads are views already: nothing to save
    if threaded:
        src = LockedSource(src)  # read by the inference (or read-ahead) and the write-behind thread
    height, width = src.height, src.width
    block = block or BLOCK
    need_mask = composite or want_mask
    halo = WEIGHT_HALO if need_mask else 0
    cores = panel_cores(width, PANEL if panel is None else int(panel), block)
    stats: dict[str, Any] = {"pixels": height * width, "valid": 0, "cloud": 0, "weight": 0.0, "tiles": 0,
                             "panels": len(cores)}
    t0 = time.perf_counter()
    done_px = 0

    # one set of large buffers for every panel and row group (reused, not reallocated: flat memory). The
    # blend's prediction blocks form a ring: a block must live until consumed, one more while the
    # write-behind thread holds one (WriteBehind's depth 1)
    bufs = (BlendBuffers(2 if threaded else 1), _RowBuffer(sink.dtype),
            _RowBuffer(np.dtype(np.uint8)) if want_mask else None)

    pool = ThreadPoolExecutor(min(batch, os.cpu_count() or 1)) if composite and batch > 1 else None

    def smooth(p: np.ndarray, o: np.ndarray, s: np.ndarray) -> np.ndarray:
        # nodata is 0 in every band after normalization, ground never is; a tile with no SAR signal at all
        # (none given, or every value at the clip floor) gets the wider no-SAR smoothing
        return soft.smooth_invented(p, o * np.float32(S2_SCALE), valid=(o != 0).any(axis=0),
                                    sigma=soft.SMOOTH_SIGMA if s.any() else soft.SMOOTH_SIGMA_NO_SAR)

    def counted_run(o: np.ndarray, s: np.ndarray) -> np.ndarray:
        stats["tiles"] += o.shape[0]
        pred = run(o, s)
        if composite:  # what is composited is the prediction with its invented detail smoothed
            # tiles in parallel (NumPy and SciPy release the GIL in the heavy parts)
            pred = np.stack(list(pool.map(smooth, pred, o, s)) if pool is not None and len(pred) > 1
                            else [smooth(p, t, r) for p, t, r in zip(pred, o, s, strict=True)])
        return pred

    with pool if pool is not None else contextlib.nullcontext():
        for c0, c1 in cores:
            if len(cores) == 1:
                view, x0 = src, 0
            else:
                x0, x1 = panel_window(c0, c1, width, tile, overlap, reach=halo)
                view = ColumnView(src, x0, x1)

            def panel_progress(rows: int, _total: int, _w: int = c1 - c0, _done: int = done_px) -> None:
                if progress is not None:
                    progress((_done + rows * _w) // width, height)

            _run_panel(view, counted_run, sink, c0 - x0, c1 - x0, x0, stats, tile=tile, overlap=overlap,
                       batch=batch, composite=composite, mask_method=mask_method, want_mask=want_mask,
                       block=block, chunk=chunk, halo=halo, progress=panel_progress, threaded=threaded,
                       read_ahead=threaded and read_ahead, cache=cache, bufs=bufs)
            done_px += height * (c1 - c0)
    stats["seconds"] = time.perf_counter() - t0
    stats["cloud_fraction"] = stats["cloud"] / max(1, stats["valid"])
    stats["replaced_fraction"] = stats["weight"] / max(1, stats["valid"])  # mean compositing weight
    return stats


# _run_panel is ~95 lines: the read/normalize/composite closures share the panel's buffers, row cache and counters;
# split apart they would need a class holding the same state.
def _run_panel(src: Any, run: BatchRunner, sink: Any, lo: int, hi: int, col: int, stats: dict[str, Any], *,
               tile: int, overlap: int, batch: int, composite: bool, mask_method: str,
               want_mask: bool, block: int, chunk: int, halo: int, progress: Progress, threaded: bool,
               read_ahead: bool, cache: bool, bufs: tuple[Any, ...]) -> None:
    """Blend the whole of ``src`` (a scene or a panel window), then mask, composite and write its columns
    ``[lo, hi)`` to ``sink`` columns ``[col + lo, col + hi)`` by output blocks of ``block`` rows. ``cache``:
    keep the raw optical rows for the compositing's haloed read (:class:`RowCache`). ``bufs``: the blend's
    buffers and the output and mask row buffers, shared by the panels."""
    height, width = src.height, src.width
    need_mask = composite or want_mask
    rows_cache = RowCache(src) if cache and need_mask else None
    if rows_cache is not None:
        src = rows_cache

    def read(r0: int, r1: int) -> tuple[np.ndarray, np.ndarray]:
        o, s = src.optical(r0, r1), src.sar(r0, r1)
        if rows_cache is not None:
            rows_cache.release("blend", r0)  # the blend reads on downwards
        if o.shape[1:] != s.shape[1:]:
            raise InputError(f"optical rows {o.shape[1:]} and SAR rows {s.shape[1:]} differ; use one grid.")
        return o, s

    def normalize(o: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        with np.errstate(invalid="ignore"):
            return normalize_optical(o, src.nodata), normalize_sar(s, src.sar_nodata), valid_mask(o, src.nodata)

    blend_bufs, out_buf, mask_buf = bufs  # mask_buf planes: mask, weight %, confidence
    written = [0]

    def composite_rows(a: int, b: int, pred: np.ndarray) -> None:
        """Rows [a, b): mask, weight, composite, cast -> the output buffers (by column chunks)."""
        out_rows = out_buf.reserve(pred.shape[0], b - a, hi - lo)  # filled in place, by column chunks
        mask_rows = mask_buf.reserve(3, b - a, hi - lo) if mask_buf is not None else None
        for c0, c1, raw_w, valid_w, given_w, core in haloed_windows(src, a, b, halo, chunk, lo, hi):
            raw, valid = raw_w[(slice(None), *core)], valid_w[core]
            out = denormalize_optical(pred[:, :, c0:c1], inplace=True)  # pred is not used after this
            cloud = weight = conf = None
            if need_mask:
                cloud = window_cloud(raw_w, valid_w, given_w, mask_method)[core]
                stats["cloud"] += int(cloud.sum())
                weight_w, conf_w = window_weight(raw_w, valid_w, given_w)
                weight, conf = weight_w[core], conf_w[core]
                stats["weight"] += float(weight.sum())
                if composite:
                    if weight.any():  # out = inp + w (pred - inp), in place; exactly the input where w == 0
                        inp = raw.astype(np.float32)
                        out -= inp
                        out *= weight
                        out += inp
                        np.copyto(out, inp, where=(weight == 0)[None])
                    else:
                        out = raw.astype(np.float32)
            out_rows[:, :, c0 - lo : c1 - lo] = cast_output(out, valid, sink.dtype, sink.nodata, inplace=True)
            if mask_rows is not None and cloud is not None:
                sl = slice(c0 - lo, c1 - lo)
                mask_rows[0, :, sl] = np.where(valid, cloud.astype(np.uint8), np.uint8(MASK_NODATA))
                mask_rows[1, :, sl] = np.where(valid, np.rint(100 * weight).astype(np.uint8), np.uint8(MASK_NODATA))
                mask_rows[2, :, sl] = np.where(valid, conf if composite else 100, np.uint8(MASK_NODATA))
            stats["valid"] += int(valid.sum())
        out_buf.commit(b - a)
        if mask_buf is not None:
            mask_buf.commit(b - a)
        if rows_cache is not None:
            rows_cache.release("composite", b - halo)  # the next rows' halo starts here

    def consume(r0: int, r1: int, pred: np.ndarray) -> None:
        """Composite rows [r0, r1), then write whole output blocks (rows of GeoTIFF tiles) once complete."""
        composite_rows(r0, r1, pred)
        del pred
        while written[0] < height and r1 >= min(written[0] + block, height):
            end = min(written[0] + block, height)
            n = end - written[0]
            sink.write(written[0], end, out_buf.peek(n), mask_buf.peek(n) if mask_buf is not None else None,
                       col=col + lo)
            out_buf.drop(n)
            if mask_buf is not None:
                mask_buf.drop(n)
            written[0] = end
            progress(end, height)

    cols = None if (lo, hi) == (0, width) else (lo, hi)  # a panel: run only the tiles touching its core
    rows = blend_rows(read, run, height, width, tile, overlap, batch, normalize=normalize, chunk=chunk, cols=cols,
                      prefetch=read_ahead, buffers=blend_bufs)
    with contextlib.closing(rows):  # stops the read-ahead thread on any error
        if not threaded:
            for r0, r1, pred in rows:
                consume(r0, r1, pred)
                del pred
            return
        with WriteBehind(consume) as behind:  # compositing, casting and compression off the inference thread
            for r0, r1, pred in rows:
                behind.put(r0, r1, pred)
                del pred

