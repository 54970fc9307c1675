"""The shipped export/ artifacts can never drift from weights/: re-export and compare outputs.

Skips when weights/carf-demo.safetensors is absent. When the weights are there, the FP32 and FP16 ONNX
files and RECIPE.md must be there too (rebuild them with export/build.sh).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from cloudrt.paths import DEFAULT_ONNX, DEFAULT_ONNX_FP16, DEFAULT_WEIGHTS

pytestmark = pytest.mark.skipif(
    not DEFAULT_WEIGHTS.is_file(), reason=f"{DEFAULT_WEIGHTS} (the shipped default checkpoint) is not present"
)
torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

FP32_TOL = 1e-4
FP16_REL_L2 = 1e-2
REBUILD = "rebuild them with export/build.sh"


def _props(path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def _rel_l2(a, ref) -> float:
    return float(np.linalg.norm(a.astype(np.float64) - ref) / np.linalg.norm(ref.astype(np.float64)))


@pytest.fixture(scope="module")
def shipped():
    for p in (DEFAULT_ONNX, DEFAULT_ONNX_FP16, DEFAULT_ONNX.parent / "RECIPE.md"):
        assert p.is_file(), f"{p} is missing although {DEFAULT_WEIGHTS} exists; {REBUILD}"
    from cloudrt.model.checkpoint import load_checkpoint

    model, meta = load_checkpoint(DEFAULT_WEIGHTS)
    tile = int(_props(DEFAULT_ONNX)["tile"])
    sess = {k: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
            for k, p in (("fp32", DEFAULT_ONNX), ("fp16", DEFAULT_ONNX_FP16))}
    return model, meta, tile, sess


def _eager(model, o, s):
    with torch.no_grad():
        return model(torch.from_numpy(o), torch.from_numpy(s)).numpy()


def test_shipped_metadata_names_the_current_weights(shipped):
    from cloudrt.export.trt_ops import trt_problems
    from cloudrt.model.checkpoint import weights_sha256

    model, meta, tile, _ = shipped
    sha = weights_sha256(DEFAULT_WEIGHTS)
    for path, precision in ((DEFAULT_ONNX, "fp32"), (DEFAULT_ONNX_FP16, "fp16")):
        props = _props(path)
        assert props["weights_sha256"] == sha, f"{path.name} was exported from other weights; {REBUILD}"
        assert props["precision"] == precision and int(props["tile"]) == tile
        assert json.loads(props["config"]) == model.config
        assert trt_problems(path) == []


def test_recipe_lists_the_current_hashes(shipped):
    from cloudrt.fileutil import file_sha256

    text = (DEFAULT_ONNX.parent / "RECIPE.md").read_text()
    for f in (DEFAULT_WEIGHTS, DEFAULT_ONNX, DEFAULT_ONNX_FP16):
        assert file_sha256(f) in text, f"RECIPE.md does not list the sha256 of {f.name}; {REBUILD}"
    assert "cloudrt export" in text and "--half" in text


def test_reexport_from_weights_matches_shipped(shipped, tmp_path):
    from cloudrt.export import export_onnx

    model, _, tile, sess = shipped
    fresh = export_onnx(DEFAULT_WEIGHTS, tmp_path / "fresh.onnx", tile=tile, verbose=False, verify=False)
    s_fresh = ort.InferenceSession(str(fresh), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(7)  # batch 1 here; batch 3 on the real samples below
    o = rng.random((1, 13, tile, tile), dtype=np.float32)
    s = rng.random((1, 2, tile, tile), dtype=np.float32)
    ref = _eager(model, o, s)
    feeds = {"optical": o, "sar": s}
    ship32 = sess["fp32"].run(None, feeds)[0]
    assert np.abs(ship32 - ref).max() <= FP32_TOL
    assert np.abs(s_fresh.run(None, feeds)[0] - ship32).max() <= FP32_TOL
    assert _rel_l2(sess["fp16"].run(None, feeds)[0], ref) <= FP16_REL_L2


def test_shipped_on_real_samples(shipped, samples_dir):
    from skimage.metrics import peak_signal_noise_ratio

    from cloudrt.preprocess import normalize_optical, normalize_sar
    from cloudrt.train.discovery import find_samples, load_sample

    model, _, tile, sess = shipped
    # three triplets (batch 3): the heavily clouded fall patch, the hazy winter one, a half-cloudy one
    names = ("ROIs1970_fall_139_p839", "ROIs2017_winter_112_p797", "oriolac_4287")
    trip = [s for s in find_samples(samples_dir) if s.is_triplet and s.name in names]
    assert len(trip) == 3
    data = [load_sample(s) for s in trip]
    o = np.stack([normalize_optical(d["s2_cloudy"]) for d in data])[..., :tile, :tile]
    s = np.stack([normalize_sar(d["s1"]) for d in data])[..., :tile, :tile]
    target = np.stack([normalize_optical(d["s2"]) for d in data])[..., :tile, :tile]
    ref = _eager(model, o, s)
    out32 = sess["fp32"].run(None, {"optical": o, "sar": s})[0]
    out16 = sess["fp16"].run(None, {"optical": o, "sar": s})[0]
    assert np.abs(out32 - ref).max() <= FP32_TOL
    assert _rel_l2(out16, ref) <= FP16_REL_L2

    def mean_psnr(pred):
        return float(np.mean([peak_signal_noise_ratio(t.astype(np.float64), np.clip(p, 0, 1).astype(np.float64),
                                                      data_range=1.0) for p, t in zip(pred, target, strict=True)]))

    assert abs(mean_psnr(out16) - mean_psnr(out32)) <= 0.1
