"""The prepared GPU training script (scripts/gpu_train.py) runs where the lent GPU host has no rasterio and no
kornia: here it trains 2 tiny CPU steps from synthetic .npz files with both imports blocked, and must write
the weights and a per-patch evaluation (raw, composited, identity)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from runtime_helpers import run_script_without

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_train.py"

pytest.importorskip("torch")
pytest.importorskip("safetensors")

from cloudrt.train.mix import Record, save_npz  # noqa: E402


def _records(rng: np.random.Generator, names: list[str]) -> list[Record]:
    out = []
    for name in names:
        target = rng.integers(300, 3000, (13, 64, 64)).astype(np.uint16)
        cloudy = target.copy()
        cloudy[:, 16:40, 16:40] = 7000  # a bright cloud block the mask and the composite see
        sar = rng.uniform(-25, -5, (2, 64, 64)).astype(np.float32)
        out.append(Record(name, target, cloudy, sar))
    return out


def _run_blocked(*args: str) -> subprocess.CompletedProcess:
    """Run the script where ``import rasterio``, ``affine`` and ``kornia`` raise (as on a lent GPU host)."""
    return run_script_without(SCRIPT, list(args), cwd=REPO, env={"OMP_NUM_THREADS": "2"})


def test_tiny_cpu_train_and_eval_without_rasterio_and_kornia(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    mix, held = tmp_path / "mix.npz", tmp_path / "heldout.npz"
    save_npz(_records(rng, ["a", "b"]), mix)
    save_npz(_records(rng, ["h1", "h2"]), held)
    out = tmp_path / "out"
    r = _run_blocked("--tiny", "--mix-npz", str(mix), "--heldout-npz", str(held), "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    assert (out / "run" / "final.safetensors").stat().st_size > 0
    meta = json.loads((out / "run" / "final.json").read_text())
    assert meta["steps"] == 2 and meta["config"]["preset"] == "carf-tiny"
    assert not list((out / "run").glob("last.*"))  # $OUT returns at most 8 files
    d = json.loads((out / "gpu_train.json").read_text())
    assert d["steps"] == 2 and d["ssim"] is False  # kornia blocked: SSIM skipped, and said so
    rows = {row["name"]: row for row in d["eval"]["trained"]}
    assert set(rows) == {"h1", "h2"}
    for row in rows.values():
        for kind in ("raw", "composited", "identity"):
            assert np.isfinite(row[kind]["psnr"]) and row[kind]["ssim"] is None
            assert 0 <= row[kind]["mae"] <= 1 and 0 <= row[kind]["sam"] <= 90
        assert 0 < row["weight_mean"] < 1  # the cloud block is replaced, the rest kept
    md = (out / "gpu_train.md").read_text()
    assert "| h1 | composited |" in md and "SSIM skipped" in md


def test_missing_npz_is_one_line_exit_2(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--mix-npz", str(tmp_path / "nope.npz"),
                        "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert r.returncode == 2 and "nope.npz not found" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists()
