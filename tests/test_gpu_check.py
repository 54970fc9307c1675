"""The prepared GPU script (benchmarks/gpu_check.py) runs where the lent GPU machine has no rasterio and no
kornia: here it runs on the CPU at tiny sizes with both imports blocked, and its rows must be sane."""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path

import pytest
from runtime_helpers import run_script_without

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"

pytest.importorskip("torch")
pytest.importorskip("safetensors")


def _load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run_blocked(out: Path, *args: str) -> subprocess.CompletedProcess:
    """Run the script where ``import rasterio``, ``affine`` and ``kornia`` raise (as on a lent GPU host)."""
    return run_script_without(SCRIPT, ["--out", str(out), *args], cwd=REPO)


def test_tiny_cpu_run_without_rasterio_and_kornia(tmp_path: Path) -> None:
    r = _run_blocked(tmp_path, "--tiny", "--device", "cpu", "--threads", "2", "--compile-backend", "eager")
    assert r.returncode == 0, r.stderr[-3000:]
    d = json.loads((tmp_path / "gpu_check.json").read_text())
    assert "| eager | fp16 | 2 |" in (tmp_path / "gpu_check.md").read_text()
    assert d["system"]["rasterio"] is False and d["system"]["kornia"] is False
    assert d["system"]["gflop_per_tile"] > 0
    rows = {(x["kind"], x["precision"], x["batch"]): x for x in d["rows"]}
    want = {("eager", m, b) for m in ("fp32", "fp16", "bf16") for b in (1, 2)} | {("compile", "fp16", 1)}
    assert set(rows) == want, d["skipped"]
    for key, row in rows.items():
        assert row["tiles_per_s"] > 0 and row["tile"] == 64
        # eager FP32 on the CPU is the reference itself; reduced precision stays close (model units, [0, 1])
        assert row["max_err"] <= (1e-5 if key[1] == "fp32" else 0.05), (key, row["max_err"])
    g = d["granule"]
    # 512 px, tile 64, overlap 32 -> stride 32, 17 tiles per axis (reflect margin 32 on each side)
    assert (g["size"], g["tile"], g["overlap"], g["tiles"]) == (512, 64, 32, 17 * 17)
    assert g["path"] == "cloudrt.runtime.Runtime.predict"
    assert g["finite"] and 0 < g["model_s"] <= g["seconds"]
    assert 0 < g["unchanged_share"] < 1  # some pixels kept from the input, others replaced
    assert g["host_threads"] == "write-behind" and d["granule_single"] is None  # not rerun at --tiny
    t = d["train"]
    assert t["steps"] == 2 and t["finite"] and "torch-only" in t["loss"] and t["losses"][0] > 0
    assert d["skipped"] == []


def test_budget_skips_with_a_reason(tmp_path: Path) -> None:
    r = _run_blocked(tmp_path, "--tiny", "--device", "cpu", "--threads", "1", "--budget-s", "0")
    assert r.returncode == 0, r.stderr[-3000:]
    d = json.loads((tmp_path / "gpu_check.json").read_text())
    assert d["rows"] == [] and d["granule"] is None and d["train"] is None
    whats = " ".join(x["what"] for x in d["skipped"])
    for part in ("eager fp32 batch 1", "eager bf16 batch 2", "granule 512x512", "train steps", "compile fp16"):
        assert part in whats
    assert all("budget" in x["reason"] for x in d["skipped"])


def test_ssim_fallback_matches_kornia(one_torch_thread: None) -> None:
    kornia = pytest.importorskip("kornia")
    import torch

    gc = _load_script()
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(2, 13, 40, 48, generator=g), torch.rand(2, 13, 40, 48, generator=g)
    y = 0.7 * x + 0.3 * y  # correlated, so the map spans a useful range
    ours = gc.ssim_map(torch, x, y)
    ref = kornia.metrics.ssim(x, y, 11, max_val=1.0)
    assert ours.shape == ref.shape
    assert torch.allclose(ours, ref, atol=1e-5), float((ours - ref).abs().max())


def test_roofline_peaks_by_gpu_name() -> None:
    gc = _load_script()
    assert gc.gpu_key("NVIDIA H100 80GB HBM3", 132) == "H100 SXM"
    assert gc.gpu_key("NVIDIA H100 PCIe", 114) == "H100 PCIe"
    assert gc.gpu_key("NVIDIA H200", 132) == "H200"
    assert gc.gpu_key("NVIDIA A100-SXM4-80GB", 108) == "A100"
    assert gc.gpu_key("NVIDIA L4", 58) == "L4"
    assert gc.gpu_key("Tesla T4", 40) is None
    assert gc.peak_tflops("H100 SXM", "fp16") == gc.peak_tflops("H100 SXM", "bf16") == 989.4
    assert gc.peak_tflops("H100 SXM", "fp32") == pytest.approx(494.7)  # TF32
    assert gc.peak_tflops(None, "fp16") is None


def test_fallback_loss_equals_cloudrt_loss(one_torch_thread: None) -> None:
    pytest.importorskip("kornia")
    import torch

    from cloudrt.train.loss import CloudAwareLoss

    gc = _load_script()
    g = torch.Generator().manual_seed(1)
    pred, target = torch.rand(2, 13, 32, 32, generator=g), torch.rand(2, 13, 32, 32, generator=g)
    cloud = torch.rand(2, 32, 32, generator=g) > 0.5
    ours = gc.cloud_aware_loss(torch, pred, target, cloud)
    assert float(ours) == pytest.approx(float(CloudAwareLoss()(pred, target, cloud)), rel=1e-5)
