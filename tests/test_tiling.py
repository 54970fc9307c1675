"""Tiling: reflect indexing, blending windows, streaming rows, seam-free blending (NumPy references)."""

from __future__ import annotations

import numpy as np
import pytest
from runtime_helpers import reference_conv

from cloudrt.scene.tiling import (
    AxisTiling,
    BlendBuffers,
    blend_array,
    blend_rows,
    panel_cores,
    panel_window,
    ramp,
    reflect_index,
    tile_weight,
)


@pytest.mark.parametrize("n", [1, 2, 3, 7, 40])
@pytest.mark.parametrize("pad", [0, 1, 5, 90])
def test_reflect_index_matches_numpy_pad(n: int, pad: int) -> None:
    ref = np.pad(np.arange(n), (pad, pad), mode="reflect")
    got = reflect_index(np.arange(-pad, n + pad), n)
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize(("tile", "overlap"), [(32, 8), (64, 32), (256, 32), (48, 5), (16, 0)])
def test_ramps_are_a_partition_of_unity(tile: int, overlap: int) -> None:
    r = ramp(tile, overlap).astype(np.float64)
    stride = tile - overlap
    total = np.zeros(tile + 5 * stride)
    for i in range(6):
        total[i * stride : i * stride + tile] += r
    inner = total[overlap : 5 * stride + overlap]  # covered by two ramps or one core everywhere
    np.testing.assert_allclose(inner, 1.0, atol=1e-6)
    assert r.min() > 0
    if overlap:
        assert r[0] == pytest.approx(np.sin(np.pi / (4 * overlap)) ** 2, rel=1e-5)
        assert np.all(np.diff(r[:overlap]) > 0)
    w = tile_weight(tile, overlap)
    np.testing.assert_allclose(w, np.outer(r, r), rtol=1e-6)


@pytest.mark.parametrize("length", [1, 5, 31, 32, 100, 257])
def test_axis_tiling_covers_scene_with_margin(length: int) -> None:
    t = AxisTiling(length, 32, 8)
    origins = t.origins()
    assert origins[0] == 0 and origins[-1] + t.tile == t.padded
    assert t.padded >= length + 2 * t.margin
    # every scene pixel gets full total weight (never only a tile's low-weight outer edge)
    total = np.zeros(t.padded)
    for o in origins:
        total[o : o + t.tile] += ramp(t.tile, t.overlap)
    assert total[t.margin : t.margin + length].min() > 1 - 1e-6


def _pointwise(o: np.ndarray, s: np.ndarray) -> np.ndarray:
    return (0.7 * o + 0.2 * s[:, :1] - 0.1 * s[:, 1:]).astype(np.float32)


@pytest.mark.parametrize(("h", "w"), [(1, 1), (2, 3), (3, 70), (37, 5), (100, 37), (129, 257)])
@pytest.mark.parametrize(("tile", "overlap", "batch"), [(32, 8, 3), (16, 0, 1), (64, 32, 8)])
def test_pointwise_model_is_reproduced_exactly(h: int, w: int, tile: int, overlap: int, batch: int) -> None:
    rng = np.random.default_rng(h * 1000 + w)
    opt = rng.random((13, h, w), dtype=np.float32)
    sar = rng.random((2, h, w), dtype=np.float32)
    calls: list[int] = []

    def run(o: np.ndarray, s: np.ndarray) -> np.ndarray:
        assert o.shape[1:] == (13, tile, tile) and s.shape[1:] == (2, tile, tile)
        assert 1 <= o.shape[0] <= batch
        calls.append(o.shape[0])
        return _pointwise(o, s)

    out = blend_array(opt, sar, run, tile, overlap, batch)
    ref = 0.7 * opt.astype(np.float64) + 0.2 * sar[:1] - 0.1 * sar[1:]
    np.testing.assert_allclose(out, ref, atol=2e-6)
    n_tiles = AxisTiling(h, tile, overlap).count * AxisTiling(w, tile, overlap).count
    assert sum(calls) == n_tiles


def test_blend_rows_streams_in_order_with_bounded_reads() -> None:
    h, w, tile, overlap = 300, 90, 32, 8
    rng = np.random.default_rng(1)
    opt = rng.random((13, h, w), dtype=np.float32)
    sar = rng.random((2, h, w), dtype=np.float32)
    reads: list[tuple[int, int]] = []

    def read(r0: int, r1: int):
        reads.append((r0, r1))
        return opt[:, r0:r1], sar[:, r0:r1]

    chunks = []

    def normalize(o, s):
        chunks.append(o.shape[2])
        return o.astype(np.float32), s.astype(np.float32), np.ones(o.shape[1:], bool)

    out = np.concatenate([p for _, _, p in blend_rows(read, _pointwise, h, w, tile, overlap, batch=2,
                                                      normalize=normalize, chunk=25)], axis=1)
    np.testing.assert_allclose(out, _pointwise(opt[None], sar[None])[0], atol=2e-6)
    assert max(chunks) == 25  # normalized by column chunks
    ranges = [(r0, r1) for r0, r1, _ in blend_rows(read, _pointwise, h, w, tile, overlap, batch=2)]
    assert ranges[0][0] == 0 and ranges[-1][1] == h
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))
    assert max(r1 - r0 for r0, r1 in reads) <= tile  # batch 2 < tiles per row: one tile row per read
    assert len(ranges) == AxisTiling(h, tile, overlap).count


def test_invalid_tiles_are_skipped() -> None:
    h, w, tile, overlap = 64, 200, 32, 8
    rng = np.random.default_rng(2)
    opt = rng.random((13, h, w), dtype=np.float32)
    sar = rng.random((2, h, w), dtype=np.float32)
    valid = np.zeros((h, w), bool)
    valid[:, :40] = True
    n = []

    def run(o, s):
        n.append(len(o))
        return _pointwise(o, s)

    out = blend_array(opt, sar, run, tile, overlap, 4, valid=valid)
    total = AxisTiling(h, tile, overlap).count * AxisTiling(w, tile, overlap).count
    assert 0 < sum(n) < total / 2
    ref = 0.7 * opt + 0.2 * sar[:1] - 0.1 * sar[1:]
    np.testing.assert_allclose(out[:, :, :40], ref[:, :, :40], atol=2e-6)
    assert np.isfinite(out).all()


def _conv_run(kernel: int, gain: float):
    def run(o: np.ndarray, s: np.ndarray) -> np.ndarray:  # per tile, zero padding at the tile edge
        return np.stack([reference_conv(a, b, kernel, gain, pad_mode="constant") for a, b in zip(o, s, strict=True)]
                        ).astype(np.float32)
    return run


def test_blending_suppresses_tile_edge_artefacts() -> None:
    """A 3x3 conv with zero padding is wrong on each tile's outer ring. Against the whole-scene reference,
    the ring error is what reaches the output; hard tiles (no overlap) show it at full strength, blended
    tiles scale it by the edge weight sin^2(pi / (4 overlap)) (< 1 % for overlap 8, 0.24 % for 16)."""
    h, w = 90, 110
    rng = np.random.default_rng(3)
    opt = rng.random((13, h, w), dtype=np.float32)
    sar = rng.random((2, h, w), dtype=np.float32)
    ref = reference_conv(opt, sar, 3, 0.5)
    err = {}
    for overlap in (0, 8, 16):
        out = blend_array(opt, sar, _conv_run(3, 0.5), 32, overlap, 8)
        err[overlap] = np.abs(out - ref).max()
    assert err[0] > 0.1  # seams: the ring error at full weight
    assert err[8] < err[0] * 0.02
    assert err[16] < err[0] * 0.005


def test_shift_gives_same_interior() -> None:
    """The same scene cropped by 37 px gives the same interior with a position-equivariant model: only the
    tile grid moves, and blending hides where the tile edges fall (bound: edge weight x ring error)."""
    h, w, shift = 160, 150, 37
    rng = np.random.default_rng(4)
    opt = rng.random((13, h, w), dtype=np.float32)
    sar = rng.random((2, h, w), dtype=np.float32)
    run = _conv_run(3, 0.5)
    d = {}
    for overlap in (0, 16):
        a = blend_array(opt, sar, run, 32, overlap, 8)
        b = blend_array(opt[:, shift:, shift:], sar[:, shift:, shift:], run, 32, overlap, 8)
        d[overlap] = np.abs(a[:, shift + 1 : -1, shift + 1 : -1] - b[:, 1:-1, 1:-1]).max()
    assert d[0] > 0.1  # without overlap the seams move with the grid (measured 0.84)
    # measured 0.0025 = 0.3 % of the seam error: edge weight sin^2(pi/64) = 0.24 %, corners slightly more
    assert d[16] < 0.005 * d[0]


def _tile_context_run(o: np.ndarray, s: np.ndarray) -> np.ndarray:
    """A model whose output depends on the whole tile: 3x3 conv with zero padding at the tile edge plus the
    tile's mean, so a tile fed other data (reflect padding at a panel edge) or placed elsewhere differs."""
    out = _conv_run(3, 0.5)(o, s)
    return out + 0.1 * o.mean(axis=(1, 2, 3), keepdims=True)


@pytest.mark.parametrize(("w", "tile", "overlap", "panel"), [(157, 32, 8, 40), (100, 32, 16, 24), (131, 48, 5, 50),
                                                             (64, 16, 0, 16), (203, 32, 20, 30), (90, 16, 8, 8),
                                                             (77, 24, 3, 16)])
def test_panels_reproduce_the_single_pass_exactly(w: int, tile: int, overlap: int, panel: int) -> None:
    """Each panel window (tiled on its own) gives bit-identical core columns to the whole-scene pass, also
    with skipped all-invalid tiles: its tiles are the single pass's tiles (same data, weights, summation
    order), so no tolerance is needed."""
    h = 45
    rng = np.random.default_rng(w)
    opt = rng.random((13, h, w), dtype=np.float32)
    sar = rng.random((2, h, w), dtype=np.float32)
    valid = np.ones((h, w), dtype=bool)
    valid[:, 40:75] = False  # whole tiles skipped in the middle
    valid[30:, w - 7 :] = False
    single = blend_array(opt, sar, _tile_context_run, tile, overlap, 3, valid=valid)
    cores = panel_cores(w, panel, 8)
    assert len(cores) >= 3 and cores[0][0] == 0 and cores[-1][1] == w
    assert all(a[1] == b[0] for a, b in zip(cores, cores[1:], strict=False))
    stride = tile - overlap
    for c0, c1 in cores:
        x0, x1 = panel_window(c0, c1, w, tile, overlap, reach=6)
        assert x0 % stride == 0 and (x0 == 0 or x0 <= c0 - 6) and (x1 == w or x1 >= c1 + 6)
        part = blend_array(opt[:, :, x0:x1], sar[:, :, x0:x1], _tile_context_run, tile, overlap, 3,
                           valid=valid[:, x0:x1])
        np.testing.assert_array_equal(part[:, :, c0 - x0 : c1 - x0], single[:, :, c0:c1])
        # only the tiles touching the core: the same core columns
        ro, rs = np.concatenate([opt[:, :, x0:x1], valid[None, :, x0:x1]]), sar[:, :, x0:x1]
        got = np.concatenate([p for _, _, p in blend_rows(
            lambda a, b, ro=ro, rs=rs: (ro[:, a:b], rs[:, a:b]), _tile_context_run, h, x1 - x0, tile, overlap, 3,
            normalize=lambda o, s_: (o[:-1], s_, o[-1] > 0.5), cols=(c0 - x0, c1 - x0))], axis=1)
        np.testing.assert_array_equal(got[:, :, c0 - x0 : c1 - x0], single[:, :, c0:c1])


def test_misplaced_panel_window_would_differ() -> None:
    """The check above can fail: a window off the tile grid (x0 not a multiple of the stride) changes the
    core columns."""
    h, w, tile, overlap = 40, 150, 32, 8
    rng = np.random.default_rng(1)
    opt = rng.random((13, h, w), dtype=np.float32)
    sar = rng.random((2, h, w), dtype=np.float32)
    single = blend_array(opt, sar, _tile_context_run, tile, overlap, 3)
    c0, c1 = 64, 96
    x0, x1 = panel_window(c0, c1, w, tile, overlap)
    bad = x0 + 5
    part = blend_array(opt[:, :, bad:x1], sar[:, :, bad:x1], _tile_context_run, tile, overlap, 3)
    assert np.abs(part[:, :, c0 - bad : c1 - bad] - single[:, :, c0:c1]).max() > 1e-3


def test_ring_buffers_are_reused_and_give_the_same_rows() -> None:
    """``buffers``: the window, accumulator and prediction buffers are reused across row groups (no per-group
    allocation), and the rows are the same as with fresh arrays."""
    rng = np.random.default_rng(3)
    h, w, tile, overlap = 150, 70, 32, 8
    opt = rng.random((13, h, w), dtype=np.float32)
    sar = rng.random((2, h, w), dtype=np.float32)

    def read(r0: int, r1: int) -> tuple[np.ndarray, np.ndarray]:
        return opt[:, r0:r1], sar[:, r0:r1]

    fresh = [(r0, r1, p) for r0, r1, p in blend_rows(read, _pointwise, h, w, tile, overlap, batch=2)]
    got, bufs = [], []
    for r0, r1, p in blend_rows(read, _pointwise, h, w, tile, overlap, batch=2, buffers=BlendBuffers(2)):
        got.append((r0, r1, p.copy()))
        bufs.append(p)
    assert len(got) == len(fresh) > 3
    for (a0, a1, a), (b0, b1, b) in zip(fresh, got, strict=True):
        assert (a0, a1) == (b0, b1) and a.tobytes() == b.tobytes()
    assert np.shares_memory(bufs[1], bufs[3]) and not np.shares_memory(bufs[1], bufs[2])  # a ring of two
