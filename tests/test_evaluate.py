"""cloudrt.train.evaluate and ``cloudrt eval``: per-patch scores, baselines, cloud-cover bins, both layouts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from runtime_helpers import write_tif
from skimage.metrics import peak_signal_noise_ratio

from cloudrt.errors import InputError
from cloudrt.preprocess import normalize_optical, normalize_sar
from cloudrt.train import metrics as M
from cloudrt.train.discovery import find_samples, load_sample
from cloudrt.train.evaluate import cloud_cover_bin, evaluate, json_safe, model_predict_fn
from cloudrt.train.splits import split_samples

SIZE = 48  # not a multiple of the model's size divisor (32): exercises reflect padding


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _patch(rng: np.random.Generator, cloud_rows: int) -> dict[str, np.ndarray]:
    """Clear ground ~ 300..2500 DN; the cloudy twin has bright (5000 DN, B10 = 0, B11 = 5000) cloud rows,
    which the paper mask (eqs. 13-16) calls cloud, and small noise elsewhere (not cloud: B2 < 1800)."""
    s2 = rng.integers(300, 1500, (13, SIZE, SIZE)).astype(np.uint16)
    cloudy = np.clip(s2.astype(np.int32) + rng.integers(-100, 100, s2.shape), 0, 1700).astype(np.uint16)
    cloudy[:, :cloud_rows] = 5000
    cloudy[10, :cloud_rows] = 0
    s1 = rng.uniform(-28, -2, (2, SIZE, SIZE)).astype(np.float32)
    return {"s1": s1, "s2": s2, "s2_cloudy": cloudy}


# name -> (cloud rows in s2_cloudy, cloudmask rows or None, has reference)
LAYOUT = {"p0": (0, 0, True), "p1": (10, 10, True), "p2": (22, 22, False), "p3": (48, 48, False),
          "p4": (36, None, False)}  # p4: no cloudmask/ -> cloud_mask(paper) = 36 / 48 = 0.75
EXPECTED_COVER = {"p0": 0.0, "p1": 10 / 48, "p2": 22 / 48, "p3": 1.0, "p4": 0.75}


@pytest.fixture(scope="module")
def flat_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("flat")
    rng = np.random.default_rng(0)
    for name, (rows, mask_rows, has_ref) in LAYOUT.items():
        arrs = _patch(rng, rows)
        for kind, a in arrs.items():
            write_tif(root / kind / f"{name}.tif", a)
        if mask_rows is not None:
            m = np.zeros((1, SIZE, SIZE), np.uint8)
            m[0, :mask_rows] = 1
            write_tif(root / "cloudmask" / f"{name}.tif", m)
        if has_ref:
            ref = np.clip(arrs["s2"].astype(np.int32) + rng.integers(-200, 200, arrs["s2"].shape), 0, None)
            write_tif(root / "reference" / f"{name}.tif", ref.astype(np.uint16))
    return root


def _identity(o: np.ndarray, s: np.ndarray) -> np.ndarray:
    return o


def test_identity_evaluation_against_independent_metrics(flat_tree: Path) -> None:
    r = evaluate(flat_tree, predict_fn=_identity)
    assert r["n"] == 5 and r["weights"] is None
    assert r["mean"] == r["identity"]["mean"]
    samples = {s.name: s for s in find_samples(flat_tree)}
    ref_psnr = []
    for row in r["per_patch"]:
        raw = load_sample(samples[row["name"]])
        t = normalize_optical(raw["s2"]).astype(np.float64)
        o = normalize_optical(raw["s2_cloudy"]).astype(np.float64)
        assert row["identity"]["psnr"] == pytest.approx(peak_signal_noise_ratio(t, o, data_range=1.0), abs=1e-9)
        assert row["identity"]["mae"] == pytest.approx(np.abs(t - o).mean(), abs=1e-12)
        assert row["cloud_cover"] == pytest.approx(EXPECTED_COVER[row["name"]], abs=1e-12)
        assert row["cloud_cover_source"] == ("cloud_mask(paper)" if row["name"] == "p4" else "cloudmask")
        if "reference" in raw:
            p = normalize_optical(raw["reference"]).astype(np.float64)
            ref_psnr.append(peak_signal_noise_ratio(t, p, data_range=1.0))
            assert row["reference"]["psnr"] == pytest.approx(ref_psnr[-1], abs=1e-9)
        else:
            assert "reference" not in row
    for k in M.METRICS:
        assert r["identity"]["mean"][k] == pytest.approx(np.mean([x["identity"][k] for x in r["per_patch"]]))
    assert r["reference"]["n"] == 2
    assert r["reference"]["mean"]["psnr"] == pytest.approx(np.mean(ref_psnr), abs=1e-9)
    same = [x["model"]["psnr"] for x in r["per_patch"] if x["name"] in ("p0", "p1")]
    assert r["reference"]["model"]["mean"]["psnr"] == pytest.approx(np.mean(same))
    assert {k: v["n"] for k, v in r["by_cloud_cover"].items()} == {
        "[0,0.1)": 1, "[0.1,0.3)": 1, "[0.3,0.6)": 1, "[0.6,1]": 2}
    assert r["by_cloud_cover"]["[0.6,1]"]["mean"]["psnr"] == pytest.approx(
        np.mean([x["model"]["psnr"] for x in r["per_patch"] if x["name"] in ("p3", "p4")]))
    assert "reference" not in r["by_cloud_cover"]["[0.6,1]"]
    assert r["by_cloud_cover"]["[0,0.1)"]["reference"]["n"] == 1
    json.dumps(json_safe(r), allow_nan=False)


def test_predictions_are_scored_and_batching_is_neutral(flat_tree: Path) -> None:
    calls = []

    def half(o: np.ndarray, s: np.ndarray) -> np.ndarray:
        calls.append((o.copy(), s.copy()))
        return 0.5 * o

    r1 = evaluate(flat_tree, predict_fn=half, batch=1)
    r3 = evaluate(flat_tree, predict_fn=half, batch=3)
    assert [o.shape[0] for o, _ in calls] == [1] * 5 + [3, 2]
    o, s = calls[0]
    raw = load_sample(find_samples(flat_tree)[0])
    np.testing.assert_array_equal(o[0], normalize_optical(raw["s2_cloudy"]))
    np.testing.assert_array_equal(s[0], normalize_sar(raw["s1"]))
    assert r1["per_patch"] == r3["per_patch"]
    for row in r1["per_patch"]:
        raw = load_sample({x.name: x for x in find_samples(flat_tree)}[row["name"]])
        want = M.all_metrics(0.5 * normalize_optical(raw["s2_cloudy"]), normalize_optical(raw["s2"]))
        assert row["model"] == pytest.approx(want)
        assert row["model"]["psnr"] != pytest.approx(row["identity"]["psnr"])


def test_split_and_sample_selection(flat_tree: Path) -> None:
    triplets = find_samples(flat_tree)
    for split in ("train", "val", "test"):
        r = evaluate(flat_tree, predict_fn=_identity, split=split, seed=2)
        assert [x["name"] for x in r["per_patch"]] == [s.name for s in split_samples(triplets, seed=2)[split]]
    r = evaluate(flat_tree, predict_fn=_identity, samples=["p1", triplets[3]])
    assert [x["name"] for x in r["per_patch"]] == ["p1", "p3"]
    with pytest.raises(InputError, match="not triplets"):
        evaluate(flat_tree, predict_fn=_identity, samples=["nope"])
    with pytest.raises(InputError, match="split"):
        evaluate(flat_tree, predict_fn=_identity, split="holdout")


def test_official_layout(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    for region, scene, patch in (("ROIs1158_spring", "26", "100"), ("ROIs1868_summer", "101", "840")):
        arrs = _patch(rng, 12)
        for kind, a in arrs.items():
            write_tif(tmp_path / f"{region}_{kind}" / f"{kind}_{scene}" / f"{region}_{kind}_{scene}_p{patch}.tif", a)
    r = evaluate(tmp_path, predict_fn=_identity)
    assert [x["name"] for x in r["per_patch"]] == ["ROIs1158_spring_26_p100", "ROIs1868_summer_101_p840"]
    assert all(x["cloud_cover"] == pytest.approx(12 / 48) for x in r["per_patch"])
    assert "reference" not in r


def test_errors(tmp_path: Path, shared_data: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        evaluate(tmp_path / "missing", predict_fn=_identity)
    with pytest.raises(InputError, match="triplets"):
        evaluate(shared_data / "s2-pairs", predict_fn=_identity)  # optical-only: no S1


def test_cloud_cover_bins() -> None:
    assert [cloud_cover_bin(f) for f in (0.0, 0.0999, 0.1, 0.2999, 0.3, 0.5999, 0.6, 1.0)] == [
        "[0,0.1)", "[0,0.1)", "[0.1,0.3)", "[0.1,0.3)", "[0.3,0.6)", "[0.3,0.6)", "[0.6,1]", "[0.6,1]"]
    assert json_safe({"a": [float("inf"), 1.0, float("nan")]}) == {"a": [None, 1.0, None]}


class _Half:
    """A stand-in model: needs H, W % 32 == 0, returns half the optical input."""

    size_divisor = 32

    def __init__(self) -> None:
        import torch

        self.torch = torch

    def to(self, device):  # noqa: ANN001
        return self

    def eval(self):
        return self

    def __call__(self, optical, sar):  # noqa: ANN001
        assert optical.shape[-2] % 32 == 0 and optical.shape[-1] % 32 == 0 and sar.shape[-2:] == optical.shape[-2:]
        return optical * 0.5


def test_model_predict_fn_pads_and_crops() -> None:
    rng = np.random.default_rng(4)
    o = rng.random((2, 13, 40, 56), dtype=np.float32)
    s = rng.random((2, 2, 40, 56), dtype=np.float32)
    out = model_predict_fn(_Half())(o, s)
    assert out.shape == o.shape
    np.testing.assert_array_equal(out, 0.5 * o)  # reflect pad went to the bottom/right and was cropped off


def test_model_predict_fn_equals_eager_model() -> None:
    import torch

    from cloudrt.model import build

    torch.manual_seed(0)
    model = build("carf-tiny").eval()
    rng = np.random.default_rng(5)
    o = rng.random((1, 13, 64, 64), dtype=np.float32)
    s = rng.random((1, 2, 64, 64), dtype=np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(o), torch.from_numpy(s)).numpy()
    np.testing.assert_allclose(model_predict_fn(model)(o, s), want, rtol=0, atol=1e-6)


def test_cli_eval_with_checkpoint(flat_tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    from cloudrt.cli import main
    from cloudrt.model import build
    from cloudrt.model.checkpoint import save_checkpoint

    torch.manual_seed(0)
    ckpt = save_checkpoint(build("carf-tiny"), tmp_path / "tiny", {})
    assert main(["eval", "--data", str(flat_tree), "--weights", str(ckpt), "--json", "--batch", "2"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["n"] == 5 and res["weights"] == str(ckpt) and res["preset"] == "carf-tiny"
    assert set(res["mean"]) == {"psnr", "ssim", "mae", "sam"}
    assert res["identity"]["mean"]["psnr"] == pytest.approx(
        evaluate(flat_tree, predict_fn=_identity)["identity"]["mean"]["psnr"])
    assert main(["eval", "--data", str(flat_tree), "--weights", str(ckpt), "--split", "test"]) == 0
    out = capsys.readouterr().out
    assert "identity" in out and "PSNR" in out and "[0.6,1]" in out
    names = [sm.name for sm in find_samples(flat_tree)][:2]
    argv = ["eval", "--data", str(flat_tree), "--weights", str(ckpt), "--json"]
    assert main([*argv, "--sample", names[0], "--sample", names[1]]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["n"] == 2 and {r["name"] for r in res["per_patch"]} == set(names)
    assert main([*argv, "--sample", "no_such_patch"]) == 2
    assert "no_such_patch" in capsys.readouterr().err


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cloudrt.cli import main

    assert main(["eval", "--data", str(tmp_path / "missing"), "--json"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "missing" in err[0]
    assert main(["eval", "--data", str(tmp_path), "--split", "everything"]) == 2
    assert "split" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- real samples
@pytest.fixture(scope="module")
def real_identity() -> dict:
    from cloudrt.paths import shared_data_dir

    d = shared_data_dir()
    if d is None:
        pytest.skip("shared SEN12MS-CR samples not found")
    return evaluate(Path(d) / "sen12mscr-samples", predict_fn=_identity, batch=5)


def test_real_samples_identity_and_reference(real_identity: dict) -> None:
    r = real_identity
    assert r["n"] == 10 and r["reference"]["n"] == 8
    # data/README.md: cloud fraction of the distributed oriolac masks
    readme = {"316": 0.00, "2729": 0.01, "6553": 0.17, "4438": 0.36, "4287": 0.50, "5278": 0.61,
              "4065": 0.70, "3968": 1.00}
    got = {x["name"].split("_")[1]: x["cloud_cover"] for x in r["per_patch"] if x["name"].startswith("oriolac")}
    assert got == pytest.approx(readme, abs=0.005)
    assert sum(e["n"] for e in r["by_cloud_cover"].values()) == 10
    # the peer CNN removes clouds: it must beat the cloudy input on the patches it covers
    assert r["reference"]["mean"]["psnr"] > r["reference"]["identity"]["mean"]["psnr"] + 3
    assert r["reference"]["mean"]["ssim"] > r["reference"]["identity"]["mean"]["ssim"]
    assert r["reference"]["mean"]["mae"] < r["reference"]["identity"]["mean"]["mae"]
