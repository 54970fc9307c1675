"""Train the demo model on a lent GPU from packed .npz files, then score it on the held-out triplets.

    python scripts/gpu_train.py [--minutes 8] [--init weights/carf-demo.safetensors]   # on the GPU host
    python scripts/gpu_train.py --tiny --mix-npz A.npz --heldout-npz B.npz --out DIR    # seconds, CPU

Needs only torch, safetensors, numpy and scipy (no rasterio, no kornia): records come from
``runs/mix.npz`` and ``runs/heldout.npz`` (``scripts/make_npz.py``; see ``scripts/gpu_train.sh``).
A short probe run (20 steps) measures the step time first, so the cosine schedule of the real run ends when
``--minutes`` does (``max_minutes`` still stops it if the probe was optimistic).

Writes under ``--out`` (default ``$OUT``): ``run/final.safetensors`` + ``run/final.json`` (the weights),
``run/history.json``, ``gpu_train.json`` (per held-out patch: PSNR / MAE / SAM, and SSIM where kornia is
there, of the raw output, the soft composite and the identity baseline) and ``gpu_train.md`` (that table).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the GPU host runs the working tree without installing cloudrt

PROBE_STEPS = 20


def _args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mix-npz", default="runs/mix.npz", help="training records (scripts/make_npz.py)")
    ap.add_argument("--heldout-npz", default="runs/heldout.npz", help="held-out triplets for the evaluation")
    ap.add_argument("--out", default=os.environ.get("OUT") or "runs/gpu_train")
    ap.add_argument("--minutes", type=float, default=8.0, help="training wall time (probe included)")
    ap.add_argument("--init", default=None, help="start from these weights (same preset), e.g. the shipped demo")
    ap.add_argument("--preset", default="carf-small")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--crop", type=int, default=256)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ema", type=float, default=0.998, help="weight-average decay; final.* holds the average")
    ap.add_argument("--tiny", action="store_true", help="CPU check: carf-tiny, 2 steps, crop 64, batch 2, no init")
    a = ap.parse_args(argv)
    if a.tiny:
        a.preset, a.device, a.batch, a.crop, a.init = "carf-tiny", "cpu", 2, 64, None
    return a


def _config(a: argparse.Namespace, out: Path, max_steps: int | None, minutes: float | None):
    from cloudrt.train.loop import TrainConfig

    return TrainConfig(data=[], out=str(out), npz=a.mix_npz, mix=True, device=a.device, preset=a.preset,
                       init=a.init, batch=a.batch, crop=a.crop, lr=a.lr, schedule="cosine", sam_weight=0.5,
                       amp=True, seed=a.seed, epochs=10**6, max_steps=max_steps, max_minutes=minutes,
                       save_every=10**9, log_every=5, ema=a.ema)


def _steps_for(a: argparse.Namespace, root: Path) -> tuple[int, dict[str, float]]:
    """Probe run: seconds per step from steps 5..PROBE_STEPS (after warm-up); steps that fit the budget."""
    from cloudrt.train.loop import train

    t0 = time.time()
    probe = root / "probe"
    train(_config(a, probe, PROBE_STEPS, None))
    hist = json.loads((probe / "history.json").read_text())
    shutil.rmtree(probe, ignore_errors=True)
    s_per_step = (hist[-1]["minutes"] - hist[0]["minutes"]) * 60 / max(hist[-1]["step"] - hist[0]["step"], 1)
    left = a.minutes * 60 - (time.time() - t0) - 30  # 30 s: model build, final save
    return max(int(left / s_per_step), PROBE_STEPS), {"s_per_step": s_per_step, "probe_s": time.time() - t0}


def _ssim_fn():
    """cloudrt.train.metrics.ssim if kornia is importable here, else None (SSIM is then skipped)."""
    from cloudrt.train import metrics

    try:
        import kornia.metrics  # noqa: F401  (metrics.ssim imports it when called)
    except ImportError:
        return None
    return metrics.ssim


def _scores(pred_dn: np.ndarray, target_dn: np.ndarray, ssim) -> dict[str, float | None]:
    """PSNR (data range 1), MAE and SAM (degrees) on DN / 10000 clipped to [0, 1]; SSIM when available."""
    from cloudrt.preprocess.normalize import normalize_optical
    from cloudrt.train import metrics

    p, t = normalize_optical(pred_dn), normalize_optical(target_dn)
    return {"psnr": metrics.psnr(p, t), "mae": metrics.mae(p, t), "sam": metrics.sam(p, t),
            "ssim": ssim(p, t) if ssim else None}


def evaluate(model: Any, records: list, device: Any) -> list[dict[str, Any]]:
    """Per held-out record: raw model output, soft composite and identity (cloudy input), each scored."""
    from cloudrt.model.torch_backend import forward_numpy
    from cloudrt.preprocess.composite import composite, composite_weight
    from cloudrt.preprocess.normalize import denormalize_optical, normalize_optical, normalize_sar

    ssim = _ssim_fn()
    rows = []
    for r in records:
        sar = normalize_sar(r.sar) if r.sar is not None else np.zeros((2, *r.target.shape[-2:]), np.float32)
        out = forward_numpy(model, normalize_optical(r.cloudy)[None], sar[None], device=device,
                            pad_to=getattr(model, "size_divisor", 1))
        raw = denormalize_optical(out[0])
        weight = composite_weight(r.cloudy)
        comp = composite(raw, r.cloudy, weight)
        rows.append({"name": r.name, "weight_mean": float(weight.mean()),
                     "raw": _scores(raw, r.target, ssim), "composited": _scores(comp, r.target, ssim),
                     "identity": _scores(r.cloudy, r.target, ssim)})
    return rows


def _markdown(res: dict[str, Any]) -> str:
    lines = [f"# gpu_train: {res['preset']} on {res['device_name']}, {res['steps']} steps, "
             f"{res['train_minutes']:.1f} min", "",
             "| patch | output | PSNR dB | SSIM | MAE | SAM deg |", "|---|---|---:|---:|---:|---:|"]
    for model_name, rows in res["eval"].items():
        for row in rows:
            for kind in ("identity", "raw", "composited"):
                if kind == "identity" and model_name != "trained":
                    continue
                s = row[kind]
                ss = "-" if s["ssim"] is None else f"{s['ssim']:.4f}"
                label = kind if model_name == "trained" or kind == "identity" else f"{model_name} {kind}"
                lines.append(f"| {row['name']} | {label} | {s['psnr']:.2f} | {ss} | {s['mae']:.4f} | {s['sam']:.2f} |")
    if not res["ssim"]:
        lines += ["", "SSIM skipped: kornia is not installed on this machine (cloudrt.train.metrics.ssim needs it)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    a = _args(argv)
    for p in (a.mix_npz, a.heldout_npz, a.init):
        if p and not Path(p).is_file():
            print(f"error: {p} not found; build it with scripts/make_npz.py (see scripts/gpu_train.sh) "
                  "and carry it to the device.", file=sys.stderr)
            return 2
    import torch

    from cloudrt.errors import CloudrtError
    from cloudrt.model.checkpoint import load_checkpoint
    from cloudrt.train.loop import _pick_device, train
    from cloudrt.train.mix import load_npz

    root = Path(a.out)
    root.mkdir(parents=True, exist_ok=True)
    try:
        device = _pick_device(a.device, 0)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        t0 = time.time()
        if a.tiny:
            steps, probe = 2, {}
        else:
            steps, probe = _steps_for(a, root)
        final = train(_config(a, root / "run", steps, None if a.tiny else a.minutes - probe["probe_s"] / 60))
        train_min = (time.time() - t0) / 60
        for f in (root / "run").glob("last.*"):  # resume state is not needed here; $OUT returns <= 8 files
            f.unlink()
        heldout = load_npz(a.heldout_npz)
        model, meta = load_checkpoint(final, device=str(device))
        ev = {"trained": evaluate(model, heldout, device)}
        if a.init:
            ev["init"] = evaluate(load_checkpoint(a.init, device=str(device))[0], heldout, device)
    except CloudrtError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    res = {"preset": a.preset, "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
           else "cpu", "steps": int(meta.get("steps", steps)), "train_minutes": train_min, "probe": probe,
           "init": a.init, "mix_npz": a.mix_npz, "heldout": [r.name for r in heldout],
           "ssim": _ssim_fn() is not None, "weights": str(final), "torch": torch.__version__, "eval": ev}
    (root / "gpu_train.json").write_text(json.dumps(res, indent=1))
    (root / "gpu_train.md").write_text(_markdown(res))
    print(_markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
