"""``cloudrt bench-scene`` at a tiny size: every part runs and reports against its own floor; bad options
fail with one line and exit code 2. (The figures themselves live in benchmarks/RESULTS.md.)"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cloudrt.cli import main

pytest.importorskip("onnx")


def test_bench_scene_tiny(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.delenv("CLOUDRT_ORT_THREADS", raising=False)
    monkeypatch.setenv("CLOUDRT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "bs.json"
    rc = main(["bench-scene", "--size", "256", "--model-size", "256", "--rounds", "1", "--threads", "1",
               "-o", str(out)])
    assert rc == 0, capsys.readouterr().err
    res = json.loads(out.read_text())
    p, m, c = res["pipeline"], res["model"], res["scaling"]
    assert p["floor_s"] > 0 and p["ratio_threaded"] == pytest.approx(p["threaded_s"] / p["floor_s"])
    st = p["stages_single"]
    assert st["read_s"] > 0 and st["write_s"] > 0 and st["model_s"] > 0
    # 256 px, tile 256, overlap 32: 2 x 2 tiles; the model alone reruns exactly those batches
    assert m["tiles"] == 4 and m["model_alone_s"] > 0 and m["ratio"] == pytest.approx(m["wall_s"] / m["model_alone_s"])
    assert set(c["seconds"]) <= {"1", "2"} and c["t1_s"] > 0
    assert "/ floor" in capsys.readouterr().out
    assert "CLOUDRT_ORT_THREADS" not in os.environ  # the bench's thread setting does not leak


def test_bench_scene_bad_part(capsys: pytest.CaptureFixture) -> None:
    rc = main(["bench-scene", "--parts", "pipeline,gpu"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc == 2 and len(err) == 1 and "gpu" in err[0] and "pipeline, model, scaling" in err[0]
