"""cloudrt.train data modules: layouts, reading, region/scene splits, PatchDataset augmentation, synthetic clouds."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from runtime_helpers import write_tif

from cloudrt.errors import InputError
from cloudrt.preprocess import normalize_optical, normalize_sar
from cloudrt.train import dataset, discovery, splits, synthetic


def _triplet_arrays(rng: np.random.Generator, size: int) -> dict[str, np.ndarray]:
    s2 = rng.integers(0, 4000, (13, size, size)).astype(np.uint16)
    return {
        "s1": rng.uniform(-30, 2, (2, size, size)).astype(np.float32),
        "s2": s2,
        "s2_cloudy": (s2 + rng.integers(0, 3000, s2.shape)).astype(np.uint16),
    }


# official SEN12MS-CR naming: ROIs1158_spring_s1/s1_26/ROIs1158_spring_s1_26_p100.tif, twins in _s2 and _s2_cloudy
OFFICIAL = [("ROIs1158_spring", "26", "100"), ("ROIs1158_spring", "26", "101"), ("ROIs1158_spring", "39", "7"),
            ("ROIs1868_summer", "101", "840"), ("ROIs2017_winter", "5", "12")]


@pytest.fixture
def official_tree(tmp_path: Path) -> Path:
    rng = np.random.default_rng(1)
    root = tmp_path / "SEN12MSCR"
    for region, scene, patch in OFFICIAL:
        arrs = _triplet_arrays(rng, 32)
        for kind in ("s1", "s2", "s2_cloudy"):
            write_tif(root / f"{region}_{kind}" / f"{kind}_{scene}" / f"{region}_{kind}_{scene}_p{patch}.tif",
                       arrs[kind])
    # an S1 file without optical twins and an unrelated file: neither is a sample
    write_tif(root / "ROIs1970_fall_s1" / "s1_3" / "ROIs1970_fall_s1_3_p1.tif", arrs["s1"])
    write_tif(root / "ROIs1158_spring_s2" / "s2_26" / "notes.tif", arrs["s2"])
    # a clear-only patch (no s1, no cloudy): listed, not a triplet
    write_tif(root / "ROIs1970_fall_s2" / "s2_3" / "ROIs1970_fall_s2_3_p2.tif", arrs["s2"])
    return root


def test_official_layout_found_and_matched(official_tree: Path) -> None:
    assert discovery.detect_layout(official_tree) == "official"
    samples = discovery.find_samples(official_tree)
    names = [s.name for s in samples]
    assert len(samples) == len(OFFICIAL) + 1
    assert "ROIs1158_spring_26_p100" in names and "ROIs1970_fall_3_p2" in names
    by = {s.name: s for s in samples}
    s = by["ROIs1868_summer_101_p840"]
    assert (s.region, s.scene, s.patch) == ("ROIs1868_summer", "101", "840")
    assert s.s1.name == "ROIs1868_summer_s1_101_p840.tif"
    assert s.s2.name == "ROIs1868_summer_s2_101_p840.tif"
    assert s.s2_cloudy.name == "ROIs1868_summer_s2_cloudy_101_p840.tif"
    assert s.s2_cloudy.parent.name == "s2_cloudy_101" and s.s2_cloudy.parent.parent.name == "ROIs1868_summer_s2_cloudy"
    assert s.is_triplet and s.group == ("ROIs1868_summer", "101")
    lone = by["ROIs1970_fall_3_p2"]
    assert lone.s1 is None and lone.s2_cloudy is None and not lone.is_triplet
    assert sum(x.is_triplet for x in samples) == len(OFFICIAL)


def test_official_load_sample_roundtrip(official_tree: Path) -> None:
    s = discovery.find_samples(official_tree)[0]
    raw = discovery.load_sample(s)
    with rasterio.open(s.s2_cloudy) as ds:
        np.testing.assert_array_equal(raw["s2_cloudy"], ds.read())
    assert raw["s1"].dtype == np.float32 and raw["s1"].shape == (2, 32, 32)
    assert raw["s2"].dtype == np.uint16 and raw["s2"].shape == (13, 32, 32)
    assert "cloudmask" not in raw and "reference" not in raw


def test_real_flat_layouts(shared_data: Path) -> None:
    trip = discovery.find_samples(shared_data / "sen12mscr-samples")
    assert discovery.detect_layout(shared_data / "sen12mscr-samples") == "flat"
    assert len(trip) == 10 and all(s.is_triplet for s in trip)
    by = {s.name: s for s in trip}
    assert (by["ROIs1970_fall_139_p839"].region, by["ROIs1970_fall_139_p839"].scene) == ("ROIs1970_fall", "139")
    o = by["oriolac_316"]
    assert o.group == ("oriolac_316", "") and o.cloudmask is not None and o.reference is not None
    assert sum(s.reference is not None for s in trip) == 8
    # s2-pairs grows over time (20, then 50 pairs): count what is there, never a stale number
    folder = shared_data / "s2-pairs"
    pairs = discovery.find_samples(folder)
    clear = {f.stem for f in (folder / "s2").glob("*.tif")}
    assert len(pairs) > 0 and {s.name for s in pairs} == clear  # one pair per clear image
    assert {f.stem for f in (folder / "s2_cloudy").glob("*.tif")} == clear  # each with its cloudy twin
    assert all(s.s2 is not None and s.s2_cloudy is not None and not s.has_sar for s in pairs)
    assert all(s.name.startswith(s.region + "_s2_") for s in pairs)  # region parsed from the name
    assert {s.region for s in pairs} <= {"ROIs1158_spring", "ROIs1868_summer", "ROIs1970_fall", "ROIs2017_winter"}
    s = {x.name: x for x in pairs}["ROIs1868_summer_s2_135_p211"]
    assert (s.scene, s.patch) == ("135", "211")


def test_real_load_sample(shared_data: Path) -> None:
    s = {x.name: x for x in discovery.find_samples(shared_data / "sen12mscr-samples")}["oriolac_4438"]
    raw = discovery.load_sample(s)
    assert raw["s1"].shape == (2, 256, 256) and raw["s1"].dtype == np.float32
    assert raw["s2"].shape == raw["s2_cloudy"].shape == raw["reference"].shape == (13, 256, 256)
    assert raw["s2"].dtype == np.uint16
    assert raw["cloudmask"].dtype == bool
    assert abs(raw["cloudmask"].mean() - 0.36) < 0.005  # data/README.md: oriolac_4438 cloud fraction 0.36


def test_bad_folders(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        discovery.find_samples(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no Sentinel-2 patches"):
        discovery.find_samples(tmp_path / "empty")


def test_parent_of_flat_folders_is_not_read_as_official(tmp_path: Path) -> None:
    # s2-pairs style names (*_s2_*) inside s2_cloudy/ must not be taken for official clear-S2 files
    a = np.full((13, 16, 16), 100, np.uint16)
    for kind in ("s2", "s2_cloudy"):
        write_tif(tmp_path / "pairs" / kind / "ROIs1158_spring_s2_26_p100.tif", a)
    with pytest.raises(InputError, match="pass one of them"):
        discovery.find_samples(tmp_path)
    (s,) = discovery.find_samples(tmp_path / "pairs")
    assert s.s2.parent.name == "s2" and s.s2_cloudy.parent.name == "s2_cloudy"


def test_load_sample_grid_mismatch(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    write_tif(tmp_path / "s2" / "a.tif", rng.integers(0, 9, (13, 16, 16)).astype(np.uint16))
    write_tif(tmp_path / "s2_cloudy" / "a.tif", rng.integers(0, 9, (13, 16, 24)).astype(np.uint16))
    with pytest.raises(InputError, match="different sizes"):
        discovery.load_sample(discovery.find_samples(tmp_path)[0])
    write_tif(tmp_path / "s2" / "b.tif", rng.integers(0, 9, (4, 16, 16)).astype(np.uint16))
    with pytest.raises(InputError, match="13"):
        discovery.load_sample({s.name: s for s in discovery.find_samples(tmp_path)}["b"])


# ------------------------------------------------------------------------------------------------ splits
def _fake_samples(n_groups: int, per_group: int = 3) -> list[discovery.Sample]:
    return [discovery.Sample(name=f"R{g}_{p}", region=f"ROIs{g // 2}_spring", scene=str(g % 2), patch=str(p))
            for g in range(n_groups) for p in range(per_group)]


@pytest.mark.parametrize("n_groups", [10, 37, 169])
def test_split_groups_disjoint_and_complete(n_groups: int) -> None:
    samples = _fake_samples(n_groups)
    sp = splits.split_samples(samples, seed=3)
    groups = {k: {s.group for s in v} for k, v in sp.items()}
    assert not groups["train"] & groups["val"] and not groups["train"] & groups["test"]
    assert not groups["val"] & groups["test"]
    assert sorted(s.name for v in sp.values() for s in v) == sorted(s.name for s in samples)
    # largest remainder of 0.8/0.1/0.1 over groups
    n_val, n_test = len(groups["val"]), len(groups["test"])
    assert abs(n_val - 0.1 * n_groups) <= 1 and abs(n_test - 0.1 * n_groups) <= 1
    assert len(groups["train"]) + n_val + n_test == n_groups
    if n_groups == 10:
        assert (len(groups["train"]), n_val, n_test) == (8, 1, 1)


def test_split_deterministic_and_seeded() -> None:
    samples = _fake_samples(40)
    a = splits.split_samples(samples, seed=0)
    b = splits.split_samples(list(reversed(samples)), seed=0)  # input order does not matter
    assert {k: sorted(s.name for s in v) for k, v in a.items()} == {k: sorted(s.name for s in v) for k, v in b.items()}
    c = splits.split_samples(samples, seed=1)
    assert {s.group for s in a["test"]} != {s.group for s in c["test"]}


@pytest.mark.parametrize(("n", "expected"), [(0, (0, 0, 0)), (1, (1, 0, 0)), (2, (1, 0, 1)), (3, (1, 1, 1)),
                                             (5, (3, 1, 1)), (9, (7, 1, 1))])
def test_split_tiny_inputs(n: int, expected: tuple[int, int, int]) -> None:
    sp = splits.split_samples(_fake_samples(n, per_group=2), seed=0)
    assert tuple(len({s.group for s in sp[k]}) for k in splits.SPLITS) == expected


def test_split_bad_fractions() -> None:
    with pytest.raises(InputError):
        splits.split_samples(_fake_samples(3), fractions=(0.5, 0.5))
    with pytest.raises(InputError):
        splits.split_samples(_fake_samples(3), fractions=(1.0, -0.1, 0.1))


def test_split_real_samples(shared_data: Path) -> None:
    s = discovery.find_samples(shared_data / "sen12mscr-samples")
    sp = splits.split_samples(s, seed=0)
    assert [len(sp[k]) for k in splits.SPLITS] == [8, 1, 1]  # 10 groups: each oriolac patch is its own group
    pairs = discovery.find_samples(shared_data / "s2-pairs")
    for seed in range(4):
        sp = splits.split_samples(pairs, seed=seed)
        scenes = [{s.group for s in sp[k]} for k in splits.SPLITS]
        assert not (scenes[0] & scenes[1] or scenes[0] & scenes[2] or scenes[1] & scenes[2])


# ------------------------------------------------------------------------------------------ PatchDataset
@pytest.fixture
def flat_tree(tmp_path: Path) -> Path:
    rng = np.random.default_rng(7)
    for i in range(3):
        arrs = _triplet_arrays(rng, 32)
        for kind, a in arrs.items():
            write_tif(tmp_path / kind / f"p{i}.tif", a)
    return tmp_path


def test_dataset_plain_items_match_normalization(flat_tree: Path) -> None:
    from cloudrt.train.dataset import PatchDataset

    samples = discovery.find_samples(flat_tree)
    ds = PatchDataset(samples)
    item = ds[1]
    raw = discovery.load_sample(samples[1])
    assert set(item) == {"optical", "sar", "target", "has_sar"}
    np.testing.assert_array_equal(item["optical"].numpy(), normalize_optical(raw["s2_cloudy"]))
    np.testing.assert_array_equal(item["target"].numpy(), normalize_optical(raw["s2"]))
    np.testing.assert_array_equal(item["sar"].numpy(), normalize_sar(raw["s1"]))
    assert all(str(v.dtype) == "torch.float32" for v in item.values()) and float(item["has_sar"]) == 1.0


def test_dataset_without_sar(shared_data: Path) -> None:
    from cloudrt.train.dataset import PatchDataset

    ds = PatchDataset(discovery.find_samples(shared_data / "s2-pairs")[:2], crop=64)
    item = ds[0]
    assert tuple(item["sar"].shape) == (2, 64, 64) and float(item["sar"].abs().sum()) == 0.0
    assert float(item["has_sar"]) == 0.0


def _match_window(orig: np.ndarray, out: np.ndarray) -> tuple[int, bool, int, int]:
    """Find (k, flip, y, x) such that out == dihedral(orig[:, y:y+c, x:x+c], k, flip)."""
    c = out.shape[-1]
    for k in range(4):
        for flip in (False, True):
            for y in range(orig.shape[-2] - c + 1):
                for x in range(orig.shape[-1] - c + 1):
                    if np.array_equal(dataset.dihedral(orig[..., y:y + c, x:x + c], k, flip), out):
                        return k, flip, y, x
    raise AssertionError("output is no flip/rotation/crop of the input")


@pytest.mark.parametrize("crop", [None, 16])
def test_augment_same_transform_for_all_tensors(flat_tree: Path, crop: int | None) -> None:
    from cloudrt.train.dataset import PatchDataset

    samples = discovery.find_samples(flat_tree)
    ds = PatchDataset(samples, crop=crop, augment=True, seed=11)
    raw = discovery.load_sample(samples[0])
    opt, tgt, sar = normalize_optical(raw["s2_cloudy"]), normalize_optical(raw["s2"]), normalize_sar(raw["s1"])
    seen = set()
    for epoch in range(12):
        ds.set_epoch(epoch)
        item = ds[0]
        o, t, s = (item[k].numpy() for k in ("optical", "target", "sar"))
        c = crop or 32
        assert o.shape == (13, c, c) and t.shape == (13, c, c) and s.shape == (2, c, c)
        k, flip, y, x = _match_window(tgt, t)
        np.testing.assert_array_equal(o, dataset.dihedral(opt[:, y:y + c, x:x + c], k, flip))
        np.testing.assert_array_equal(s, dataset.dihedral(sar[:, y:y + c, x:x + c], k, flip))
        seen.add((k, flip, y, x))
    assert len(seen) >= 6  # augmentation really varies across epochs
    ds.set_epoch(3)
    a = ds[0]["target"].numpy()
    ds.set_epoch(3)
    np.testing.assert_array_equal(a, ds[0]["target"].numpy())  # reproducible per (seed, epoch, index)


def test_crop_center_without_augment_and_bad_crops(flat_tree: Path) -> None:
    from cloudrt.train.dataset import PatchDataset

    samples = discovery.find_samples(flat_tree)
    item = PatchDataset(samples, crop=16)[2]
    full = normalize_optical(discovery.load_sample(samples[2])["s2"])
    np.testing.assert_array_equal(item["target"].numpy(), full[:, 8:24, 8:24])
    with pytest.raises(InputError, match="multiple of 16"):
        PatchDataset(samples, crop=24)
    with pytest.raises(InputError, match="larger than"):
        PatchDataset(samples, crop=64)[0]


def test_dataset_synthetic_clouds_brighten_input_and_keep_target(shared_data: Path) -> None:
    from cloudrt.train.dataset import PatchDataset

    samples = [s for s in discovery.find_samples(shared_data / "sen12mscr-samples") if s.name == "oriolac_316"]
    ds = PatchDataset(samples, synthetic_clouds=True, seed=5)
    clear = normalize_optical(discovery.load_sample(samples[0])["s2"])
    for epoch in range(3):
        ds.set_epoch(epoch)
        item = ds[0]
        t, o = item["target"].numpy(), item["optical"].numpy()
        np.testing.assert_array_equal(t, clear)  # target untouched
        vis = slice(1, 4)  # B2, B3, B4: the cloud (>= 0.45 * 0.98 * 0.9) outshines ground darker than 0.39
        dark = t[vis] < 0.39
        assert (o[vis][dark] >= t[vis][dark] - 1e-6).all()
        assert (o[vis] > t[vis] + 0.05).mean() > 0.05


def test_missing_cloudy_needs_synthetic(tmp_path: Path) -> None:
    from cloudrt.train.dataset import PatchDataset

    write_tif(tmp_path / "s2" / "a.tif", np.full((13, 32, 32), 500, np.uint16))
    samples = discovery.find_samples(tmp_path)
    with pytest.raises(InputError, match="synthetic_clouds"):
        PatchDataset(samples)
    item = PatchDataset(samples, synthetic_clouds=True)[0]
    o, t = item["optical"].numpy(), item["target"].numpy()
    assert (t == np.float32(0.05)).all()
    assert (o[1] >= t[1]).all() and o[1].max() > 0.3  # a cloud (>= 0.85 opacity, >= 0.39 bright) is there


# -------------------------------------------------------------------------------------- synthetic clouds
def test_alpha_coverage_range_and_softness() -> None:
    rng = np.random.default_rng(0)
    for cov in (0.1, 0.4, 0.7):
        a = synthetic.synthetic_cloud_alpha((128, 128), rng, coverage=cov, haze=0.0, opacity=1.0)
        assert a.dtype == np.float32 and a.min() >= 0.0 and a.max() <= 1.0
        assert abs((a > 0).mean() - cov) < 0.01  # threshold at the noise quantile
        assert a.max() == pytest.approx(1.0)
        soft = ((a > 0) & (a < 1)).mean()
        assert 0.0 < soft < cov  # soft edges exist but are not the whole cloud
    hz = synthetic.synthetic_cloud_alpha((64, 64), rng, coverage=0.0, haze=0.2)
    assert 0.09 < hz.min() and hz.max() <= 0.2 + 1e-6  # thin haze everywhere, never thicker than asked


def test_add_synthetic_clouds_matches_blend_formula(shared_data: Path) -> None:
    s = {x.name: x for x in discovery.find_samples(shared_data / "sen12mscr-samples")}["oriolac_2729"]
    clear = normalize_optical(discovery.load_sample(s)["s2"])
    before = clear.copy()
    rng = np.random.default_rng(3)
    alpha = synthetic.synthetic_cloud_alpha(clear.shape[-2:], rng, coverage=0.5, haze=0.0)
    cloudy, a = synthetic.add_synthetic_clouds(clear, np.random.default_rng(4), alpha=alpha, brightness=0.6,
                                               cirrus=0.05)
    np.testing.assert_array_equal(clear, before)  # input untouched
    assert a is not None and np.array_equal(a, alpha)
    clear64, a64 = clear.astype(np.float64), alpha.astype(np.float64)[None]
    cloud_lo = synthetic.CLOUD_SPECTRUM.astype(np.float64)[:, None, None] * 0.6 * 0.9
    cloud_hi = synthetic.CLOUD_SPECTRUM.astype(np.float64)[:, None, None] * 0.6 * 1.1
    cloud_lo[10], cloud_hi[10] = 0.05 * 0.9, 0.05 * 1.1
    lo = np.clip((1 - a64) * clear64 + a64 * cloud_lo, 0, 1) - 1e-6
    hi = np.clip((1 - a64) * clear64 + a64 * cloud_hi, 0, 1) + 1e-6
    assert ((cloudy >= lo) & (cloudy <= hi)).all()
    free = alpha == 0
    np.testing.assert_array_equal(cloudy[:, free], clear[:, free])  # no cloud, no change
    thick = alpha > 0.5
    for b in range(13):
        if b == 10:  # B10 cirrus: ground is ~0, cloud 0.05
            assert cloudy[b][thick].mean() > clear[b][thick].mean() + 0.02
        else:
            assert cloudy[b][thick].mean() > clear[b][thick].mean()


def test_import_data_is_torch_free() -> None:
    code = ("import sys, cloudrt.train.discovery as d, cloudrt.train.splits, cloudrt.train.synthetic; "
            "d.find_samples; "
            "assert 'torch' not in sys.modules, 'torch imported'; import cloudrt.train.dataset; "
            "assert 'torch' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
