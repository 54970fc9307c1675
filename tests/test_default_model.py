"""The shipped default model: loads safely, and its recorded held-out scores are real and reproducible."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

from cloudrt.paths import DEFAULT_CONFIG, DEFAULT_WEIGHTS  # noqa: E402


def test_load_default_is_eval_mode_and_matches_its_config():
    from cloudrt.model import load_default
    from cloudrt.model.checkpoint import weights_sha256

    m = load_default()
    meta = json.loads(DEFAULT_CONFIG.read_text())
    assert not m.training
    assert m.config == meta["config"]
    assert weights_sha256(DEFAULT_WEIGHTS) == meta["weights_sha256"]


def test_held_out_scores_reproduce_and_beat_identity(samples_dir):
    """Re-evaluate the held-out triplets named in weights/carf-demo.json: the recorded figures must match
    (0.01 dB / 1e-3), none of them may have been trained on, and the model must beat the cloudy input."""
    from cloudrt.train.evaluate import evaluate

    meta = json.loads(DEFAULT_CONFIG.read_text())
    held = meta["scores"]["held_out"]["patches"]
    assert len(held) >= 3 and not set(held) & set(meta["train"]["samples"])
    r = evaluate(samples_dir, weights=DEFAULT_WEIGHTS, samples=held)
    rec = meta["scores"]["held_out"]
    assert r["mean"]["psnr"] == pytest.approx(rec["model"]["psnr"], abs=0.01)
    assert r["mean"]["ssim"] == pytest.approx(rec["model"]["ssim"], abs=1e-3)
    # what cloudrt infer writes: a change to the compositing must re-measure the card (release_demo --rescore)
    assert r["composited"]["mean"]["psnr"] == pytest.approx(rec["composited"]["psnr"], abs=0.01)
    assert r["composited"]["mean"]["sam"] == pytest.approx(rec["composited"]["sam"], abs=0.01)
    assert r["identity"]["mean"]["psnr"] == pytest.approx(rec["identity"]["psnr"], abs=0.01)
    assert r["mean"]["psnr"] > r["identity"]["mean"]["psnr"] + 3.0
    assert r["mean"]["mae"] < r["identity"]["mean"]["mae"]
