"""The demo model's training mix (cloudrt.train.mix) and scripts/make_npz.py: which kinds of example a user's
training run sees and how often, determinism per (seed, epoch, index), aligned crops, SAR dropout, the npz
round trip for GPU hosts without rasterio, and reading the real clear time series."""

from __future__ import annotations

import importlib.util
import io
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from runtime_helpers import VEGETATION_DN, realistic_scene, write_tif

torch = pytest.importorskip("torch")

from cloudrt.errors import InputError  # noqa: E402
from cloudrt.preprocess.mask import cloud_mask  # noqa: E402
from cloudrt.train.mix import MixDataset, Record, load_npz, records_from_folders, save_npz  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
N = 64  # record side (px)
CLOUDY_OFFSET = 3000  # cloudy = target + this (DN) in the tiny records


# ---------------------------------------------------------------------------------------------- references
def _norm_optical(dn: np.ndarray) -> np.ndarray:
    """Dataset convention (data README): clip to [0, 10000], divide by 10000."""
    return (np.clip(dn.astype(np.float64), 0, 10000) / 10000).astype(np.float32)


def _norm_sar(db: np.ndarray) -> np.ndarray:
    """Dataset convention: VV clipped to [-25, 0] dB, VH to [-32.5, 0], each rescaled to [0, 1]."""
    db = db.astype(np.float64)
    return np.stack([(np.clip(db[0], -25, 0) + 25) / 25, (np.clip(db[1], -32.5, 0) + 32.5) / 32.5]).astype(np.float32)


def _coded_target(seed: int) -> np.ndarray:
    """13 x N x N uint16 DN; band 1 encodes the pixel position (1 + y*N + x), so crops can be located."""
    rng = np.random.default_rng(seed)
    t = rng.integers(500, 3000, (13, N, N)).astype(np.uint16)
    yy, xx = np.mgrid[0:N, 0:N]
    t[0] = 1 + yy * N + xx
    return t


def _coded_sar() -> np.ndarray:
    """VV encodes the row (normalized VV = y / N), VH the column (normalized VH = x / N)."""
    yy, xx = np.mgrid[0:N, 0:N].astype(np.float64)
    return np.stack([-25 + 25 * yy / N, -32.5 + 32.5 * xx / N]).astype(np.float32)


def _records() -> list[Record]:
    """A SAR triplet, an S2-only cloudy pair, a clear pair and a lone clear image (the four record kinds)."""
    t = [_coded_target(s) for s in range(4)]
    return [
        Record("triplet", t[0], t[0] + CLOUDY_OFFSET, _coded_sar()),
        Record("pair", t[1], t[1] + CLOUDY_OFFSET),
        Record("clear_pair", t[2], t[2].copy(), clear_input=True),
        Record("clear", t[3]),
    ]


def _which(ds: MixDataset, target: np.ndarray) -> str:
    """Name of the record whose (normalized) target array ``draw`` returned."""
    hits = [n for n, d in zip(ds.names, ds.arrays, strict=True) if d["target"] is target]
    assert len(hits) == 1
    return hits[0]


def _positions(item: dict) -> tuple[np.ndarray, np.ndarray]:
    """(y, x) in the source record of every pixel of an item, decoded from the target's band 1."""
    v = np.rint(item["target"][0].numpy().astype(np.float64) * 10000).astype(int) - 1
    return v // N, v % N


# ---------------------------------------------------------------------------------------------- MixDataset
def test_kinds_occur_at_their_probabilities() -> None:
    recs = _records()
    ds = MixDataset(recs, crop=32, p_real=0.4, p_identity=0.25, sar_dropout=0.0)
    rng = np.random.default_rng(0)
    n = 3000
    kinds: dict[str, int] = {"real": 0, "identity": 0, "synthetic": 0}
    sources: dict[str, set] = {k: set() for k in kinds}
    for _ in range(n):
        optical, sar, target, kind = ds.draw(rng)
        kinds[kind] += 1
        src = _which(ds, target)
        sources[kind].add(src)
        rec = next(r for r in recs if r.name == src)
        np.testing.assert_array_equal(target, _norm_optical(rec.target))
        if kind == "real":  # a real cloudy acquisition of the same ground
            np.testing.assert_array_equal(optical, _norm_optical(rec.cloudy))
        elif kind == "identity":
            np.testing.assert_array_equal(optical, target)
    # binomial sd <= 0.009 at n = 3000; 0.04 is > 4 sd
    assert abs(kinds["real"] / n - 0.4) < 0.04, kinds
    assert abs(kinds["identity"] / n - 0.25) < 0.04, kinds
    assert abs(kinds["synthetic"] / n - 0.35) < 0.04, kinds
    # real clouds only from records with a cloudy member that is really cloudy (never a clear pair)
    assert sources["real"] == {"triplet", "pair"}
    assert sources["identity"] == sources["synthetic"] == {r.name for r in recs}


def test_p_sar_sets_the_share_of_draws_from_records_with_sar() -> None:
    recs = _records()  # one triplet (with SAR) among four records, one of two real-cloud records
    n = 3000
    for p_sar in (None, 0.6):
        ds = MixDataset(recs, crop=32, p_real=0.5, p_identity=0.2, sar_dropout=0.0, p_sar=p_sar)
        rng = np.random.default_rng(4)
        got: dict[str, list[int]] = {"real": [0, 0], "other": [0, 0]}  # [from the triplet, draws]
        for _ in range(n):
            _, _, target, kind = ds.draw(rng)
            g = got["real" if kind == "real" else "other"]
            g[0] += _which(ds, target) == "triplet"
            g[1] += 1
        want = {"real": 1 / 2, "other": 1 / 4} if p_sar is None else {"real": 0.6, "other": 0.6}
        for k, (hit, total) in got.items():  # binomial sd <= 0.013 at >= 1400 draws; 0.06 is > 4 sd
            assert abs(hit / total - want[k]) < 0.06, (p_sar, k, hit, total)
    with pytest.raises(InputError, match="p_sar"):
        MixDataset(recs, p_sar=1.2)


def test_no_real_kind_without_cloudy_records() -> None:
    recs = [r for r in _records() if r.cloudy is None or r.clear_input]
    ds = MixDataset(recs, crop=32, p_real=0.5, p_identity=0.2)
    rng = np.random.default_rng(1)
    kinds = [ds.draw(rng)[3] for _ in range(3000)]
    assert "real" not in kinds
    # the real share is spread so identity : synthetic keeps 0.2 : 0.3 (sd 0.009 at n = 3000)
    assert abs(kinds.count("identity") / len(kinds) - 0.4) < 0.04


def test_sar_dropout_rate_and_s2_only_records_have_zero_sar() -> None:
    recs = _records()[:2]  # the triplet and the S2-only pair
    ds = MixDataset(recs, crop=32, p_real=0.0, p_identity=1.0, sar_dropout=0.3)
    want = _norm_sar(recs[0].sar)
    rng = np.random.default_rng(2)
    dropped = kept = 0
    for _ in range(2000):
        _, sar, target, _ = ds.draw(rng)
        assert sar.shape == (2, N, N) and sar.dtype == np.float32
        if _which(ds, target) == "pair":
            assert not sar.any()  # S2-only: always the "no SAR" value
        elif not sar.any():
            dropped += 1
        else:
            np.testing.assert_allclose(sar, want, atol=1e-6)
            kept += 1
    assert kept + dropped > 800
    assert abs(dropped / (kept + dropped) - 0.3) < 0.06  # sd ~0.015
    for p, expect_zero in ((0.0, False), (1.0, True)):
        ds = MixDataset(recs[:1], crop=32, p_real=0.0, p_identity=1.0, sar_dropout=p)
        rng = np.random.default_rng(3)
        assert all((not ds.draw(rng)[1].any()) == expect_zero for _ in range(50))


def test_items_deterministic_per_seed_epoch_index() -> None:
    recs = _records()
    a = MixDataset(recs, crop=32, seed=7, p_real=0.4, p_identity=0.2)
    b = MixDataset(recs, crop=32, seed=7, p_real=0.4, p_identity=0.2)
    idx = list(range(8))
    first = [a[i] for i in idx]
    again = [b[i] for i in reversed(idx)][::-1]  # another instance, another access order
    for x, y in zip(first, again, strict=True):
        assert all(torch.equal(x[k], y[k]) for k in ("optical", "sar", "target"))
    a.set_epoch(1)
    other_epoch = [a[i] for i in idx]
    assert sum(not torch.equal(x["optical"], y["optical"]) for x, y in zip(first, other_epoch, strict=True)) >= 6
    a.set_epoch(0)
    assert all(torch.equal(x["optical"], a[i]["optical"]) for i, x in zip(idx, first, strict=True))
    c = MixDataset(recs, crop=32, seed=8, p_real=0.4, p_identity=0.2)
    assert sum(not torch.equal(x["optical"], c[i]["optical"]) for i, x in zip(idx, first, strict=True)) >= 6
    assert sum(not torch.equal(first[0]["target"], x["target"]) for x in first[1:]) >= 6  # indices differ


def test_real_items_are_one_aligned_crop_with_one_rotation() -> None:
    """optical, SAR and target come from the same window, rotated/flipped together."""
    ds = MixDataset(_records()[:1], crop=32, seed=1, p_real=1.0, p_identity=0.0, sar_dropout=0.0)
    orientations = set()
    for i in range(16):
        item = ds[i]
        assert {k: tuple(v.shape) for k, v in item.items()} == {
            "optical": (13, 32, 32), "sar": (2, 32, 32), "target": (13, 32, 32)}
        assert all(v.dtype == torch.float32 for v in item.values())
        y, x = _positions(item)
        assert len(set(zip(y.ravel(), x.ravel(), strict=True))) == 32 * 32  # every pixel of a window, once
        assert np.ptp(y) == 31 and np.ptp(x) == 31 and y.min() >= 0 and x.max() < N
        assert ((np.abs(np.diff(y, axis=1)) + np.abs(np.diff(x, axis=1))) == 1).all()  # neighbours stay neighbours
        np.testing.assert_allclose(item["optical"].numpy() - item["target"].numpy(), CLOUDY_OFFSET / 10000, atol=1e-6)
        np.testing.assert_allclose(item["sar"][0].numpy() * N, y, atol=1e-3)
        np.testing.assert_allclose(item["sar"][1].numpy() * N, x, atol=1e-3)
        orientations.add((int(y[0, 1] - y[0, 0]), int(x[0, 1] - x[0, 0]), int(y[1, 0] - y[0, 0])))
    assert len(orientations) >= 3  # rotations and flips are drawn


def test_identity_and_synthetic_items() -> None:
    recs = _records()
    ident = MixDataset(recs, crop=32, p_real=0.0, p_identity=1.0)
    for i in range(6):
        item = ident[i]
        assert torch.equal(item["optical"], item["target"])
    synth = MixDataset(recs, crop=32, p_real=0.0, p_identity=0.0, seed=2)
    for i in range(6):
        item = synth[i]
        o, t = item["optical"].numpy(), item["target"].numpy()
        y, x = _positions(item)
        assert np.ptp(y) == 31 and np.ptp(x) == 31  # the target is still a clean crop
        assert 0.0 <= o.min() and o.max() <= 1.0
        assert np.abs(o - t).max() > 0.05  # a cloud was laid over it


def test_lengths_and_crop_larger_than_record() -> None:
    recs = _records()
    assert len(MixDataset(recs)) == 4 * len(recs)
    assert len(MixDataset(recs, epoch_size=10)) == 10
    item = MixDataset(recs, crop=128, p_real=0.0, p_identity=1.0)[0]
    assert item["optical"].shape == (13, N, N) and item["sar"].shape == (2, N, N)


@pytest.mark.parametrize("kw, word", [
    ({"crop": 0}, "crop"), ({"crop": -16}, "crop"), ({"crop": 40}, "crop"),
    ({"p_real": 1.5}, "p_real"), ({"p_identity": -0.1}, "p_identity"), ({"sar_dropout": 1.01}, "sar_dropout"),
    ({"p_real": 0.7, "p_identity": 0.4}, "p_real \\+ p_identity"),
])
def test_bad_settings_raise_input_error(kw: dict, word: str) -> None:
    with pytest.raises(InputError, match=word):
        MixDataset(_records(), **kw)


def test_no_records_raise_input_error() -> None:
    with pytest.raises(InputError):
        MixDataset([])


# ------------------------------------------------------------------------------------------------ npz
def test_npz_roundtrip(tmp_path: Path) -> None:
    recs = _records()
    rng = np.random.default_rng(4)
    recs[0].sar = rng.uniform(-30, 3, (2, N, N)).astype(np.float32)  # values float16 must round
    p = tmp_path / "mix.npz"
    save_npz(recs, p)
    back = load_npz(p)
    assert [r.name for r in back] == [r.name for r in recs]
    for r, b in zip(recs, back, strict=True):
        assert b.target.dtype == np.uint16
        np.testing.assert_array_equal(b.target, r.target)
        assert (b.cloudy is None) == (r.cloudy is None) and (b.sar is None) == (r.sar is None)
        if r.cloudy is not None:
            assert b.cloudy.dtype == np.uint16
            np.testing.assert_array_equal(b.cloudy, r.cloudy)
        if r.sar is not None:
            assert b.sar.dtype == np.float32
            np.testing.assert_allclose(b.sar, r.sar, rtol=2.0**-11, atol=0)  # float16: half an ulp
            assert not np.array_equal(b.sar, r.sar)  # stored as float16, as documented
        assert b.clear_input == r.clear_input


def test_load_npz_needs_no_rasterio(tmp_path: Path) -> None:
    """GPU hosts have no rasterio: loading the npz and drawing an item must work without it."""
    p = tmp_path / "mix.npz"
    save_npz(_records(), p)
    code = ("import sys; sys.modules['rasterio'] = None; "
            "from cloudrt.train.mix import MixDataset, load_npz; "
            f"ds = MixDataset(load_npz({str(p)!r}), crop=32); item = ds[0]; "
            "assert item['optical'].shape == (13, 32, 32); print('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr


def _clear_dn(seed: int, size: int = 32) -> np.ndarray:
    rng = np.random.default_rng(seed)
    tex = 1 + 0.1 * rng.standard_normal((size, size))
    return np.clip(VEGETATION_DN[:, None, None] * tex[None], 1, 10000).astype(np.uint16)


def _npz_bytes(arrays: dict[str, np.ndarray]) -> float:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.tell() / 2**20


@pytest.fixture
def mixed_folders(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A flat triplet folder (A, and a held-out H), an S2-only pair folder (B), a loose clear folder (C)."""
    trip, pairs, loose = tmp_path / "trip", tmp_path / "pairs", tmp_path / "loose"
    cloudy, sar = realistic_scene(32, 32, seed=1)
    for name in ("A", "H"):
        write_tif(trip / "s1" / f"{name}.tif", sar)
        write_tif(trip / "s2" / f"{name}.tif", _clear_dn(2))
        write_tif(trip / "s2_cloudy" / f"{name}.tif", cloudy)
    write_tif(pairs / "s2" / "B.tif", _clear_dn(3))
    write_tif(pairs / "s2_cloudy" / "B.tif", cloudy)
    write_tif(loose / "C.tif", _clear_dn(4))
    return trip, pairs, loose


def _make_npz_main():
    spec = importlib.util.spec_from_file_location("make_npz", ROOT / "scripts" / "make_npz.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


def test_make_npz_packs_in_order_of_value_and_respects_the_size_cap(mixed_folders, tmp_path, capsys) -> None:
    trip, pairs, loose = mixed_folders
    main = _make_npz_main()
    data = [a for f in (loose, pairs, trip) for a in ("--data", str(f))]  # clear folder first on purpose
    out = tmp_path / "all.npz"
    assert main([*data, "--holdout", "H", "-o", str(out)]) == 0
    recs = load_npz(out)
    assert [r.name for r in recs] == ["A", "B", "C"]  # SAR triplets, then real cloudy pairs, then clear
    a, b, c = recs
    assert a.sar is not None and a.cloudy is not None and not a.clear_input
    assert b.sar is None and b.cloudy is not None and not b.clear_input
    assert c.sar is None and c.cloudy is None
    with rasterio.open(trip / "s2" / "A.tif") as ds:
        np.testing.assert_array_equal(a.target, ds.read())
    # a cap that only the triplet fits under: the triplet is kept, the rest reported as left out
    size_a = _npz_bytes({"t": a.target, "c": a.cloudy, "s": a.sar.astype(np.float16)})
    small = tmp_path / "small.npz"
    capsys.readouterr()
    assert main([*data, "--holdout", "H", "-o", str(small), "--max-mb", f"{size_a * 1.05:.6f}"]) == 0
    printed = capsys.readouterr().out
    assert [r.name for r in load_npz(small)] == ["A"]
    assert "left out 2" in printed and "B" in printed and "C" in printed


# ------------------------------------------------------------------------------------- reading folders
def test_records_from_folders_kinds(mixed_folders) -> None:
    trip, pairs, loose = mixed_folders
    recs = {r.name: r for r in records_from_folders([trip, pairs, loose], holdout={"H"})}
    assert set(recs) == {"A", "B", "C"}
    assert recs["A"].sar.shape == (2, 32, 32) and recs["A"].sar.dtype == np.float32
    assert recs["B"].sar is None and recs["B"].cloudy.dtype == np.uint16 and not recs["B"].clear_input
    assert recs["C"].cloudy is None and recs["C"].target.dtype == np.uint16


def test_records_from_folders_errors(tmp_path: Path) -> None:
    cloudy, _ = realistic_scene(32, 32)
    cloudy[:] = 7000  # bright everywhere: the paper mask flags all of it
    write_tif(tmp_path / "loose" / "x.tif", cloudy)
    with pytest.raises(InputError, match="no training patches"):
        records_from_folders([tmp_path / "loose"])
    with pytest.raises(InputError):
        records_from_folders([tmp_path / "nothing-here"])


def _paper_fraction(path: Path) -> float:
    with rasterio.open(path) as ds:
        return float(cloud_mask(ds.read(), method="paper").mean())


# data/README.md: these time-series patches "still hold some cloud"
TS_CLOUDY = ("ROIs2017_146_ImgNo_4_2018-02-25_patch_18", "ROIs2017_146_ImgNo_6_2018-03-22_patch_198",
             "ROIs2017_146_ImgNo_1_2018-01-21_patch_283", "ROIs2017_146_ImgNo_15_2018-07-05_patch_81")


def test_real_clear_time_series_skips_cloudy_images(shared_data: Path) -> None:
    folder = shared_data / "s2-timeseries-clear"
    files = sorted(folder.glob("*.tif"))
    assert files
    recs = {r.name: r for r in records_from_folders([folder])}
    expect = {f.stem for f in files if _paper_fraction(f) <= 0.02}
    assert set(recs) == expect
    assert not set(TS_CLOUDY) & set(recs)
    assert len(recs) >= len(files) // 2  # "mostly cloud-free"
    for r in recs.values():
        assert r.cloudy is None and r.sar is None and not r.clear_input
        assert r.target.dtype == np.uint16 and r.target.shape == (13, 256, 256)


def test_real_loose_copy_with_holdout(shared_data: Path, tmp_path: Path) -> None:
    src = shared_data / "s2-timeseries-clear"
    names = ["ROIs2017_146_ImgNo_26_2018-11-12_patch_124", "ROIs2017_146_ImgNo_21_2018-09-18_patch_195",
             TS_CLOUDY[0]]
    for n in names:
        shutil.copy(src / f"{n}.tif", tmp_path / f"{n}.tif")
    recs = records_from_folders([tmp_path], holdout={names[1]})
    assert [r.name for r in recs] == [names[0]]
    with rasterio.open(tmp_path / f"{names[0]}.tif") as ds:
        np.testing.assert_array_equal(recs[0].target, ds.read())


def test_real_pairs_flag_clear_inputs(shared_data: Path) -> None:
    folder = shared_data / "s2-pairs"
    recs = records_from_folders([folder])
    assert len(recs) == len(list((folder / "s2").glob("*.tif")))
    for r in recs:
        assert r.sar is None and r.cloudy is not None
        assert r.clear_input == (float(cloud_mask(r.cloudy, method="paper").mean()) <= 0.02), r.name
    n_clear = sum(r.clear_input for r in recs)
    assert 0 < n_clear < len(recs) - 10  # README: about 15 of 50 pairs are clear on both dates
