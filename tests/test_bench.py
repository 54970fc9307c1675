"""``cloudrt bench``: row keys, arithmetic, accuracy column, FLOP count, path planning, CLI, torch-free use.

One small run (carf-tiny, 64 x 64 tiles, batches 1 and 2, one round) is shared by the module; its
numbers are checked against independent recomputation, never against stored values.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from cloudrt import bench
from cloudrt.errors import InputError

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

TILE = 64
SEED = 3
PATHS = "onnxruntime-cpu:fp32"


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("cloudrt-cache"))


@pytest.fixture(scope="module")
def result(cache: str) -> dict:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLOUDRT_CACHE", cache)
        return bench.run_bench("carf-tiny", device="cpu", tile=TILE, batches="1,2", backends=PATHS, rounds=1,
                               warmup=0, threads=1, seed=SEED)


def _row(result: dict, backend: str, batch: int) -> dict:
    (row,) = [r for r in result["rows"] if r["backend"] == backend and r["batch"] == batch]
    return row


def test_rows_keys_and_json_shape(result: dict) -> None:
    doc = json.loads(bench.to_json(result))
    assert set(doc) == {"system", "rows"}
    got = {(r["backend"], r["precision"], r["batch"]) for r in doc["rows"]}
    assert got == {(b, "fp32", n) for b in ("torch-eager", "onnxruntime-cpu") for n in (1, 2)}
    for r in doc["rows"]:
        assert set(bench.ROW_KEYS) <= set(r)
        assert any(k in r["backend"] for k in ("torch", "onnxruntime", "tensorrt"))
        assert r["device"] == "cpu" and r["tile"] == TILE
        assert r["ms_per_batch"] > 0
    s = doc["system"]
    assert s["threads"] == 1 and s["batches"] == [1, 2] and s["tile"] == TILE
    assert s["baseline"].startswith("torch-eager fp32")


def test_throughput_and_speedup_arithmetic(result: dict) -> None:
    for r in result["rows"]:
        tps = r["batch"] / (r["ms_per_batch"] / 1e3)
        assert r["tiles_per_s"] == pytest.approx(tps, rel=1e-3)
        assert r["mpix_per_s"] == pytest.approx(tps * TILE * TILE / 1e6, rel=1e-3, abs=1e-4)
        base = _row(result, "torch-eager", r["batch"])
        assert r["speedup"] == pytest.approx(base["ms_per_batch"] / r["ms_per_batch"], rel=2e-3)
    for b in (1, 2):
        base = _row(result, "torch-eager", b)
        assert base["speedup"] == 1.0 and base["max_err"] == 0.0


def test_max_err_is_against_the_eager_model(result: dict) -> None:
    """Recompute eager output and an independent ONNX Runtime session's output on the same inputs."""
    model = bench.load_model("carf-tiny", seed=SEED).module
    sess = ort.InferenceSession(result["system"]["onnx_files"]["fp32"], providers=["CPUExecutionProvider"])
    for b in (1, 2):
        o, s = bench.make_inputs(b, TILE, SEED)
        with torch.inference_mode():
            ref = model(torch.from_numpy(o), torch.from_numpy(s)).double().numpy()
        got = sess.run(["optical_clear"], {"optical": o, "sar": s})[0]
        err = float(np.abs(got - ref).max())
        assert np.abs(ref - o).max() > 1e-3  # the perturbed model is not the identity: the check can fail
        row = _row(result, "onnxruntime-cpu", b)
        assert row["max_err"] == pytest.approx(err, abs=2e-6)
        assert row["max_err"] <= 1e-4  # ONNX Runtime FP32 vs eager (issue 6 target)


def test_flops_match_an_analytic_count(result: dict) -> None:
    """Conv + linear multiply-adds by forward hooks, plus the two attention matmuls per window (4 n^2 C)."""
    from cloudrt.model.swin import WindowAttention

    model = bench.load_model("carf-tiny", seed=SEED).module
    total = 0

    def hook(mod, inp, out):  # noqa: ANN001
        nonlocal total
        if isinstance(mod, torch.nn.Conv2d):
            total += 2 * out.numel() * mod.in_channels // mod.groups * mod.kernel_size[0] * mod.kernel_size[1]
        elif isinstance(mod, torch.nn.Linear):
            total += 2 * out.numel() * mod.in_features
        elif isinstance(mod, WindowAttention):
            bw, n, c = inp[0].shape
            total += 4 * bw * n * n * c

    hs = [m.register_forward_hook(hook) for m in model.modules()
          if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear, WindowAttention))]
    with torch.inference_mode():
        model(torch.zeros(1, 13, TILE, TILE), torch.zeros(1, 2, TILE, TILE))
    for h in hs:
        h.remove()
    assert result["system"]["flops_per_tile"] == total
    for r in result["rows"]:
        assert r["gflops"] == pytest.approx(total * r["tiles_per_s"] / 1e9, rel=2e-3, abs=0.01)


def test_unavailable_paths_are_skipped_with_a_reason(result: dict) -> None:
    skipped = {(s["backend"], s["precision"]): s["reason"] for s in result["system"]["skipped"]}
    # --backends picked one ONNX path: the baseline is added, nothing else runs or is listed
    assert set(skipped) == set()
    run, sk = bench.plan_paths(bench.ALL_PATHS, "cpu", True, False, explicit=False)
    reasons = {(s["backend"], s["precision"]): s["reason"] for s in sk}
    assert ("torch-eager", "fp32") in run and ("onnxruntime-cpu", "fp32") in run
    for b, p in bench.ALL_PATHS:
        assert ((b, p) in run) != ((b, p) in reasons)
        if b in ("onnxruntime-cuda", "onnxruntime-tensorrt", "tensorrt") or (p == "fp16" and b.startswith("torch")):
            assert (b, p) in reasons and len(reasons[(b, p)]) > 10
    assert "torch.compile" in reasons[("torch-compile", "fp32")]
    # asked for explicitly, torch.compile runs on CPU too
    run, _ = bench.plan_paths(bench.match_paths("torch-compile"), "cpu", True, False, explicit=True)
    assert ("torch-compile", "fp32") in run


def test_path_selection_and_batch_parsing() -> None:
    ort_paths = bench.match_paths("onnxruntime")
    assert ort_paths and all(b.startswith("onnxruntime") for b, _ in ort_paths) and len(ort_paths) == 6
    assert bench.match_paths("tensorrt") == [("tensorrt", "fp32"), ("tensorrt", "fp16")]
    assert bench.match_paths("onnxruntime-cuda:fp16") == [("onnxruntime-cuda", "fp16")]
    assert bench.match_paths(["cpu:fp32", "torch-compile"]) == [
        ("torch-compile", "fp32"), ("torch-compile", "fp16"), ("onnxruntime-cpu", "fp32")]
    assert all(p == "fp16" for _, p in bench.match_paths("fp16"))
    with pytest.raises(InputError, match="matches no path"):
        bench.match_paths("tensorflow")
    assert bench.parse_batches("8, 1,4,1") == [1, 4, 8]
    assert bench.parse_batches(None) == [1, 4, 8]
    for bad in ("0", "1,x", "", "-2", "1.5"):
        with pytest.raises(InputError, match="--batch"):
            bench.parse_batches(bad)


def test_bad_tile_and_device_are_one_line_errors(cache: str, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from cloudrt.cli import main

    monkeypatch.setenv("CLOUDRT_CACHE", cache)
    assert main(["bench", "--model", "carf-tiny", "--tile", "50", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--tile 32" in err[0]
    assert main(["bench", "--model", "carf-tiny", "--device", "tpu"]) == 2
    assert "--device" in capsys.readouterr().err
    assert main(["bench", "--model", "no-such.onnx", "--device", "cpu"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_cli_json_and_table(cache: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                            tmp_path) -> None:  # noqa: ANN001
    from cloudrt.cli import main

    monkeypatch.setenv("CLOUDRT_CACHE", cache)
    args = ["bench", "--model", "carf-tiny", "--tile", str(TILE), "--batch", "1", "--rounds", "1", "--warmup",
            "0", "--backends", PATHS, "--device", "cpu", "--seed", str(SEED), "--threads", "1"]
    out = tmp_path / "bench.json"
    assert main([*args, "--json", "--out", str(out)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert json.loads(out.read_text())["rows"][0].keys() == doc["rows"][0].keys()
    assert [(r["backend"], r["batch"]) for r in doc["rows"]] == [("torch-eager", 1), ("onnxruntime-cpu", 1)]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "| backend | precision | device | batch | tile | ms_per_batch |" in text
    assert "onnxruntime-cpu" in text and "torch-eager" in text


def test_bench_without_torch_runs_onnx_rows(result: dict, tmp_path) -> None:  # noqa: ANN001
    """With torch unimportable, the CLI loads, eager rows are skipped with the reason, ONNX rows run."""
    onnx_file = result["system"]["onnx_files"]["fp32"]
    code = textwrap.dedent(f"""
        import json, sys
        sys.modules["torch"] = None  # import torch -> ImportError
        import cloudrt.cli
        from cloudrt.bench import run_bench
        r = run_bench({onnx_file!r}, device="cpu", tile={TILE}, batches="1", backends="onnxruntime-cpu:fp32",
                      rounds=1, warmup=0)
        assert sys.modules["torch"] is None
        print(json.dumps(r))
    """)
    env = {**os.environ, "CLOUDRT_CACHE": str(tmp_path)}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout.strip().splitlines()[-1])
    assert [(r["backend"], r["speedup"], r["max_err"]) for r in doc["rows"]] == [("onnxruntime-cpu", None, None)]
    reasons = {s["backend"]: s["reason"] for s in doc["system"]["skipped"]}
    assert "torch is not installed" in reasons["torch-eager"]


def test_a_failing_path_is_skipped_not_fatal(monkeypatch: pytest.MonkeyPatch) -> None:
    """An export that fails skips its rows with the reason; the baseline still runs."""
    def broken(*a, **k):  # noqa: ANN002, ANN003, ANN202
        raise RuntimeError("exporter exploded\nsecond line")

    monkeypatch.setattr(bench.timing, "export_paths", broken)
    res = bench.run_bench("carf-tiny", device="cpu", tile=TILE, batches="1", backends=PATHS, rounds=1, warmup=0,
                          threads=1, seed=SEED)
    assert [(r["backend"], r["batch"]) for r in res["rows"]] == [("torch-eager", 1)]
    (sk,) = res["system"]["skipped"]
    assert sk["backend"] == "onnxruntime-cpu"
    assert sk["reason"] == "ONNX fp32 export failed: RuntimeError: exporter exploded"
