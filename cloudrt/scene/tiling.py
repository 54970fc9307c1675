"""Whole-scene tiling for a fixed-tile model: overlap, reflect padding, seam-free blending, streaming.

NumPy only. A scene of any size (a few pixels up to a 10980 x 10980 granule) is cut into tiles of the
model's tile size ``T`` with stride ``S = T - overlap``. The scene is reflect-padded by ``margin = overlap``
on every side, so that each scene pixel, even on the scene border, lies in the full-weight core of at
least one tile, never only on a tile's outer edge.

Every tile's prediction is weighted by a separable window that is 1 in the core and falls over
``overlap`` pixels to nearly 0 at the tile edge along a raised-sine ramp (:func:`ramp`). With stride
``T - overlap`` the ramps of neighbouring tiles sum to exactly 1 (a partition of unity), so blending is a
smooth weighted average without visible seams, and tile-edge pixels (where the model's receptive field is
cut off) hardly count; the accumulated weight is still divided out, so skipped tiles (all nodata) and
the scene borders normalize correctly.

:func:`blend_rows` streams: it reads the scene by groups of tile rows, batches the tiles for the backend,
and yields finished rows of the prediction in order. Its memory is ``O(width * tile)``, independent of
the number of rows. For memory independent of the width too, a wide scene is cut into vertical column
panels (:func:`panel_cores`, :func:`panel_window`): each panel is tiled on its own, on a window wide enough
and placed on the scene's tile grid so that its core columns get exactly the single-pass result.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

RowReader = Callable[[int, int], tuple[np.ndarray, np.ndarray]]
"""``read(r0, r1) -> (optical (C, r1-r0, W), sar (2, r1-r0, W))`` for scene rows ``r0 <= r < r1`` (always
inside the scene), in any dtype: raw values, turned into model units by a :data:`Normalizer`."""

Normalizer = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]
"""``normalize(optical, sar) -> (optical float32, sar float32, valid (rows, cols) bool)`` for a column chunk."""

BatchRunner = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""``run(optical (B, 13, T, T), sar (B, 2, T, T)) -> (B, 13, T, T)``, float32."""


@dataclass(frozen=True)
class AxisTiling:
    """Tiling of one axis of length ``length``: tile ``tile``, overlap ``overlap``.

    Coordinates are *padded* coordinates: padded index ``p`` is scene index ``p - margin``.
    """

    length: int
    tile: int
    overlap: int

    def __post_init__(self) -> None:
        if self.length < 1:
            raise ValueError(f"axis length must be >= 1, got {self.length}")
        if self.tile < 1 or not 0 <= self.overlap < self.tile:
            raise ValueError(f"need tile >= 1 and 0 <= overlap < tile (tile {self.tile}, overlap {self.overlap})")

    @property
    def stride(self) -> int:
        return self.tile - self.overlap

    @property
    def margin(self) -> int:
        """Reflect padding before the first scene pixel."""
        return self.overlap

    @property
    def count(self) -> int:
        """Number of tiles along the axis."""
        need = self.length + 2 * self.margin
        if need <= self.tile:
            return 1
        return math.ceil((need - self.tile) / self.stride) + 1

    @property
    def padded(self) -> int:
        """Padded extent covered by the tiles (>= length + 2 * margin)."""
        return (self.count - 1) * self.stride + self.tile

    def origins(self) -> np.ndarray:
        """Tile starts in padded coordinates."""
        return np.arange(self.count) * self.stride


def panel_cores(width: int, panel: int, align: int = 1) -> list[tuple[int, int]]:
    """Core column ranges ``[c0, c1)`` covering ``[0, width)``: ``panel`` columns each (rounded down to a
    multiple of ``align``, at least ``align``), the last one shorter; one range when the scene fits."""
    step = max(align, panel // align * align)
    return [(c, min(width, c + step)) for c in range(0, width, step)]


def panel_window(c0: int, c1: int, length: int, tile: int, overlap: int, reach: int = 0) -> tuple[int, int]:
    """The columns ``[x0, x1)`` to read and tile so that core columns ``[c0, c1)`` get exactly the blend of
    the single pass over an axis of ``length``.

    Single-pass tiles start at scene column ``k * stride - margin`` (:class:`AxisTiling`). ``x0`` is a
    multiple of the stride (0 at the scene's left edge), so the tiles of the window, which start at
    ``x0 - margin``, are single-pass tiles. Only tiles that reach past the window (reflect-padded there)
    differ: on the left, the window's first tile (the only one when ``2 overlap <= tile``), so
    ``x0 <= c0 - (tile - margin)``; on the right ``x1`` is the end of the last tile starting before ``c1``.
    So every tile touching the core lies wholly inside the window (same data, weights, skip decision and
    summation order). At the scene's edges the window also keeps the columns the edge tiles' reflect padding
    mirrors. ``reach``: the halo of other windowed per-pixel work (masks, the compositing weight), which then
    also sees the same data for every core pixel.
    """
    s, m = tile - overlap, overlap
    left = max(tile - m if 2 * m <= tile else tile, reach)
    x0 = 0 if c0 - left <= 0 else (c0 - left) // s * s
    last = (c1 - 1 + m) // s * s - m  # start of the last single-pass tile starting before c1
    x1 = min(length, max(last + tile, c1 + reach))
    # at a scene edge, the edge tiles' reflect padding mirrors scene columns: keep those in the window
    if x0 == 0:
        x1 = max(x1, min(length, m + 1))
    if x1 == length:
        end = AxisTiling(length, tile, overlap).padded - m  # scene column after the last tile
        x0 = min(x0, max(0, (2 * length - 1 - end) // s * s))
    return x0, x1


def reflect_index(idx: np.ndarray, n: int) -> np.ndarray:
    """Map (possibly out-of-range) indices onto ``[0, n)`` by mirror reflection without repeating the edge
    (NumPy's ``np.pad(mode="reflect")``), repeated as often as needed; ``n == 1`` maps everything to 0."""
    idx = np.asarray(idx, dtype=np.int64)
    if n == 1:
        return np.zeros_like(idx)
    period = 2 * (n - 1)
    m = np.mod(idx, period)
    return np.where(m < n, m, period - m)


def ramp(tile: int, overlap: int) -> np.ndarray:
    """1-D blending window (float32, length ``tile``): a raised-sine ramp ``sin^2(pi/2 * (k + 0.5) / overlap)``
    over the first ``overlap`` pixels (mirrored over the last ``overlap``), 1 in between.

    ``f(k) + f(overlap - 1 - k) = 1``, so shifted copies at stride ``tile - overlap`` sum to exactly 1, the
    blend is smooth (no kink at the ramp ends), and a tile's outermost pixel, where a model is least
    accurate (its receptive field is cut by the tile edge), gets only ``sin^2(pi / (4 overlap))``
    (6e-4 for overlap 32) of the weight.
    """
    w = np.ones(tile, dtype=np.float64)
    if overlap > 0:
        k = np.arange(overlap, dtype=np.float64)
        up = np.sin(0.5 * np.pi * (k + 0.5) / overlap) ** 2
        w[:overlap] = np.minimum(w[:overlap], up)
        w[tile - overlap :] = np.minimum(w[tile - overlap :], up[::-1])
    return w.astype(np.float32)


def tile_weight(tile: int, overlap: int) -> np.ndarray:
    """2-D separable blending window (T, T) float32: ``ramp(y) * ramp(x)``."""
    r = ramp(tile, overlap)
    return np.outer(r, r).astype(np.float32)


class Scratch:
    """One reusable buffer: :meth:`take` returns a C-contiguous array of the asked shape and dtype that views
    the same memory every time (grown only when a larger one is asked for). The scene driver's large
    per-row-group arrays live in these, so a long scene does not allocate, page in and free tens of MB per
    row group. An array taken earlier is overwritten by the next :meth:`take`."""

    def __init__(self) -> None:
        self._buf: np.ndarray | None = None

    def take(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        dtype = np.dtype(dtype)
        n = math.prod(shape) * dtype.itemsize
        if self._buf is None or self._buf.nbytes < n:
            self._buf = None  # free the old one first
            self._buf = np.empty(n, dtype=np.uint8)
        return self._buf[:n].view(dtype).reshape(shape)


class BlendBuffers:
    """The reusable buffers of :func:`blend_rows`: the padded window (optical, SAR, validity), the accumulator
    and its carried rows, and ``ring`` prediction blocks. One set serves every panel of a scene."""

    def __init__(self, ring: int) -> None:
        self.ring = max(1, int(ring))
        self.window = [Scratch() for _ in range(3)]
        self.acc, self.carry = Scratch(), Scratch()
        self.preds = [Scratch() for _ in range(self.ring)]


def _take(scratch: Scratch | None, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    return np.empty(shape, dtype=dtype) if scratch is None else scratch.take(shape, dtype)


def _as_float(o: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return o.astype(np.float32), s.astype(np.float32), np.ones(o.shape[1:], dtype=bool)


# blend_rows is ~80 lines: one generator whose row buffers and tile grid are shared by every step.
def blend_rows(
    read: RowReader,
    run: BatchRunner,
    height: int,
    width: int,
    tile: int,
    overlap: int,
    batch: int = 4,
    bands_out: int = 13,
    normalize: Normalizer = _as_float,
    chunk: int = 2048,
    cols: tuple[int, int] | None = None,
    prefetch: bool = False,
    buffers: BlendBuffers | None = None,
) -> Iterator[tuple[int, int, np.ndarray]]:
    """Stream the blended prediction of a ``height x width`` scene.

    Yields ``(r0, r1, pred)`` with ``pred`` (bands_out, r1 - r0, width) float32 in model units, for
    consecutive row ranges covering ``[0, height)`` exactly once, in order. Pixels that no tile covered with
    weight (every tile around them was all-invalid and skipped) are 0. Tiles with no valid pixel are not
    run. ``batch`` caps the tiles per backend call; several tile rows are grouped when a row has fewer
    tiles than ``batch`` (small scenes). ``normalize`` turns raw rows into model units by column chunks of
    ``chunk`` pixels, written straight into the padded window (no full-width temporaries). ``cols=(lo, hi)``
    runs only the tiles touching scene columns ``[lo, hi)``: those columns are exact, the others are not
    (a panel's discarded margin). ``prefetch``: read the next group of tile rows in a worker thread while
    the backend runs this one (GDAL releases the GIL; ``read`` must then be safe to call from that thread);
    the results are identical. ``buffers``: reuse these window, accumulator and prediction buffers across
    groups (and calls) instead of allocating them per group (flat memory, no heap churn); each yielded
    ``pred`` is then valid only until ``buffers.ring`` more have been yielded (default: fresh arrays).
    """
    ty, tx = AxisTiling(height, tile, overlap), AxisTiling(width, tile, overlap)
    s, m = ty.stride, ty.margin
    weight = tile_weight(tile, overlap)
    col_map = reflect_index(np.arange(tx.padded) - tx.margin, width)
    pad_cols = np.r_[np.arange(tx.margin), np.arange(tx.margin + width, tx.padded)]
    col_origins = tx.origins()
    if cols is not None:  # tiles cover scene columns [o - margin, o - margin + tile)
        col_origins = col_origins[(col_origins - tx.margin < cols[1]) & (col_origins - tx.margin + tile > cols[0])]
    rows_per_group = max(1, batch // max(1, len(col_origins)))
    groups = [(j, min(rows_per_group, ty.count - j)) for j in range(0, ty.count, rows_per_group)]

    def read_group(j: int, k: int) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray]:
        """The raw rows of tile rows [j, j + k) (padded rows [j s, (j + k - 1) s + tile)) and their row map."""
        row_map = reflect_index(np.arange(j * s, (j + k - 1) * s + tile) - m, height)
        lo, hi = int(row_map.min()), int(row_map.max()) + 1
        return read(lo, hi), row_map - lo

    # the read-ahead thread only reads (GDAL decompresses without the GIL); the normalized float32 window,
    # twice the size of the raw rows, is made here, so at most one window exists at a time
    raws = _Prefetch(read_group, groups) if prefetch else (read_group(j, k) for j, k in groups)
    scratch = buffers.window if buffers is not None else None
    windows = (_window(raw, rows, col_map, pad_cols, tx.margin, normalize, chunk, scratch)
               for raw, rows in raws)
    try:
        yield from _blend_groups(windows, groups, run, height, width, tile, weight, tx, bands_out, batch,
                                 col_origins, buffers)
    finally:
        if isinstance(raws, _Prefetch):
            raws.close()


def _blend_groups(windows: Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]], groups: list[tuple[int, int]],
                  run: BatchRunner, height: int, width: int, tile: int, weight: np.ndarray, tx: AxisTiling,
                  bands_out: int, batch: int, col_origins: np.ndarray,
                  buffers: BlendBuffers | None = None) -> Iterator[tuple[int, int, np.ndarray]]:
    """The run-and-accumulate half of :func:`blend_rows`, one group of tile rows per window."""
    s, m = tx.stride, tx.margin
    ty_count = groups[-1][0] + groups[-1][1]
    carry: np.ndarray | None = None  # accumulated (bands_out + 1, overlap, padded width) from the last group
    acc_s, carry_s = (buffers.acc, buffers.carry) if buffers is not None else (None, None)
    n_pred = 0
    next_row = 0  # first scene row not yet yielded
    for (j, k), (opt, sar, valid) in zip(groups, windows, strict=True):
        p0 = j * s  # padded rows of this group's window: [p0, p1)
        p1 = (j + k - 1) * s + tile

        acc = _take(acc_s, (bands_out + 1, p1 - p0, tx.padded), np.float32)
        if carry is not None:
            acc[:, : carry.shape[1]] = carry
        acc[:, carry.shape[1] if carry is not None else 0 :] = 0.0

        jobs = [(gy * s, int(x0)) for gy in range(k) for x0 in col_origins]
        jobs = [(y0, x0) for y0, x0 in jobs if valid[y0 : y0 + tile, x0 : x0 + tile].any()]
        for b0 in range(0, len(jobs), max(1, batch)):
            part = jobs[b0 : b0 + max(1, batch)]
            ob = np.stack([opt[:, y0 : y0 + tile, x0 : x0 + tile] for y0, x0 in part])
            sb = np.stack([sar[:, y0 : y0 + tile, x0 : x0 + tile] for y0, x0 in part])
            out = np.asarray(run(ob, sb), dtype=np.float32)
            if not out.flags.writeable:
                out = out.copy()
            if out.shape != (len(part), bands_out, tile, tile):
                raise RuntimeError(
                    f"backend returned shape {out.shape}, expected {(len(part), bands_out, tile, tile)}"
                )
            for (y0, x0), o in zip(part, out, strict=True):
                o *= weight  # in place: the same product as ``o * weight``, without a temporary per tile
                acc[:bands_out, y0 : y0 + tile, x0 : x0 + tile] += o
                acc[bands_out, y0 : y0 + tile, x0 : x0 + tile] += weight

        opt = sar = valid = None  # free the window before yielding
        last = j + k == ty_count
        done_p = p1 if last else (j + k) * s  # padded rows < done_p are final
        carry = None
        if not last:
            carry = _take(carry_s, (acc.shape[0], p1 - done_p, acc.shape[2]), np.float32)
            carry[...] = acc[:, done_p - p0 :]
        r_end = min(height, done_p - m)
        if r_end > next_row:
            a = acc[:, next_row + m - p0 : r_end + m - p0, tx.margin : tx.margin + width]
            wsum = a[bands_out]
            ring = buffers.preds[n_pred % buffers.ring] if buffers is not None else None
            pred = _take(ring, a[:bands_out].shape, np.float32)
            n_pred += 1
            # a / wsum where a tile covered the pixel (wsum > 0: every tile weight is > 0), else 0: there a == 0
            # (nothing was added), so dividing by 1 gives the same 0 without filling the block first
            np.divide(a[:bands_out], np.where(wsum > 0, wsum, np.float32(1.0)), out=pred)
            a = wsum = acc = None
            yield next_row, r_end, pred
            pred = None  # do not hold the consumer's rows while computing the next group
            next_row = r_end
    if next_row != height:  # pragma: no cover - arithmetic guard
        raise RuntimeError(f"tiling covered rows [0, {next_row}) of {height}")


class _Prefetch:
    """Iterate ``prepare(*args)`` over ``items``, each computed in one worker thread while the consumer works
    on the previous one (one item ahead, so at most two windows are alive); errors surface in order."""

    def __init__(self, prepare: Callable[..., Any], items: list[tuple[Any, ...]]) -> None:
        from concurrent.futures import ThreadPoolExecutor

        from cloudrt.scene.pipeline import inherited_env

        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cloudrt-read")
        self._prepare, self._items, self._env = prepare, items, inherited_env()

    def _call(self, *args: Any) -> Any:
        with self._env():
            return self._prepare(*args)

    def __iter__(self) -> Iterator[Any]:
        nxt = self._pool.submit(self._call, *self._items[0]) if self._items else None
        for i in range(len(self._items)):
            cur = nxt
            nxt = self._pool.submit(self._call, *self._items[i + 1]) if i + 1 < len(self._items) else None
            yield cur.result()
            cur = None

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def _window(raw: tuple[np.ndarray, np.ndarray], rows: np.ndarray, col_map: np.ndarray, pad_cols: np.ndarray,
            margin: int, normalize: Normalizer, chunk: int,
            scratch: list[Scratch] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The padded, normalized window: rows picked by ``rows`` (reflection at the scene's top/bottom),
    columns reflect-padded by ``col_map``; normalization by column chunks into preallocated arrays (the
    ``scratch`` buffers of optical, SAR and validity when given)."""
    so, ss, sv = scratch or (None, None, None)
    ro, rs = raw
    if len(rows) and np.array_equal(rows, np.arange(rows[0], rows[0] + len(rows))):
        ro, rs = ro[:, rows[0] : rows[0] + len(rows)], rs[:, rows[0] : rows[0] + len(rows)]
    else:
        ro, rs = np.take(ro, rows, axis=1), np.take(rs, rows, axis=1)
    n, width, padded = len(rows), ro.shape[2], len(col_map)
    opt = sar = None
    valid = _take(sv, (n, padded), bool)
    for c0 in range(0, width, chunk):
        c1 = min(width, c0 + chunk)
        o, s, v = normalize(ro[:, :, c0:c1], rs[:, :, c0:c1])
        if opt is None or sar is None:
            opt = _take(so, (o.shape[0], n, padded), np.float32)
            sar = _take(ss, (s.shape[0], n, padded), np.float32)
        opt[:, :, margin + c0 : margin + c1], sar[:, :, margin + c0 : margin + c1] = o, s
        valid[:, margin + c0 : margin + c1] = v
    assert opt is not None and sar is not None
    if len(pad_cols):
        src = margin + col_map[pad_cols]
        opt[:, :, pad_cols], sar[:, :, pad_cols], valid[:, pad_cols] = opt[:, :, src], sar[:, :, src], valid[:, src]
    return opt, sar, valid


def blend_array(
    optical: np.ndarray,
    sar: np.ndarray,
    run: BatchRunner,
    tile: int,
    overlap: int,
    batch: int = 4,
    valid: np.ndarray | None = None,
) -> np.ndarray:
    """In-memory convenience around :func:`blend_rows`: normalized (13, H, W), (2, H, W) -> (13, H, W)."""
    h, w = optical.shape[-2:]
    if valid is None:
        valid = np.ones((h, w), dtype=bool)
    out = np.empty((optical.shape[0], h, w), dtype=np.float32)

    full_valid = valid

    def read(r0: int, r1: int) -> tuple[np.ndarray, np.ndarray]:
        # carry the validity as an extra optical band so it follows the same row/column selection
        return np.concatenate([optical[:, r0:r1], full_valid[None, r0:r1].astype(optical.dtype)]), sar[:, r0:r1]

    def normalize(o: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return o[:-1].astype(np.float32), s.astype(np.float32), o[-1] > 0.5

    for r0, r1, pred in blend_rows(read, run, h, w, tile, overlap, batch, bands_out=optical.shape[0],
                                   normalize=normalize):
        out[:, r0:r1] = pred
    return out
