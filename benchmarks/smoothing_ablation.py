"""Smoothing of invented detail, ablated: every cloudy real patch at hand composited with the shipped model,
with the low-pass of ``cloudrt.preprocess.composite.smooth_invented`` at each sigma (0 = off).

    python benchmarks/smoothing_ablation.py --data path/to/shared/data [--weights W] [--sigmas 0,8,16,32]

``--data`` holds ``sen12mscr-samples/`` (triplets, SAR) and ``s2-pairs/`` (no SAR). Patches whose compositing
weight is nonzero on under 5 % of the pixels are skipped (nothing to reconstruct). Prints mean PSNR, SSIM and
SAM per group (held-out triplets, training triplets, S2 pairs) and per sigma.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from cloudrt.preprocess import composite as comp
from cloudrt.preprocess.normalize import normalize_optical, normalize_sar
from cloudrt.train.discovery import read_raster
from cloudrt.train.evaluate import model_predict_fn
from cloudrt.train.metrics import all_metrics


def main(argv: list[str] | None = None) -> int:
    from cloudrt.model.checkpoint import load_checkpoint
    from cloudrt.paths import DEFAULT_WEIGHTS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--weights", default=str(DEFAULT_WEIGHTS))
    ap.add_argument("--sigmas", default="0,16")
    a = ap.parse_args(argv)
    model, meta = load_checkpoint(a.weights)
    predict = model_predict_fn(model)
    held = set(meta.get("scores", {}).get("held_out", {}).get("patches", []))
    sigmas = [float(x) for x in a.sigmas.split(",")]
    groups: dict[str, list[np.ndarray]] = {"held-out triplets": [], "training triplets": [], "S2 pairs": []}
    for folder in ("sen12mscr-samples", "s2-pairs"):
        for p in sorted((a.data / folder / "s2_cloudy").glob("*.tif")):
            dn = read_raster(p)
            weight = comp.composite_weight(dn)
            if (weight > 0).mean() < 0.05:
                continue
            s1 = a.data / folder / "s1" / p.name
            o = normalize_optical(dn)
            s = normalize_sar(read_raster(s1)) if s1.exists() else np.zeros((2, *o.shape[1:]), np.float32)
            pred = np.asarray(predict(o[None], s[None]))[0]
            target = normalize_optical(read_raster(a.data / folder / "s2" / p.name))
            rows = []
            for sigma in sigmas:
                q = comp.smooth_invented(pred, dn, sigma=sigma) if sigma else pred
                m = all_metrics(comp.composite(q, o, weight), target)
                rows.append([m["psnr"], m["ssim"], m["sam"]])
            key = "S2 pairs" if folder == "s2-pairs" else "held-out triplets" if p.stem in held else "training triplets"
            groups[key].append(np.array(rows))
    print(f"weights {a.weights}; sigma {sigmas} (0 = no smoothing); composited; means")
    for name, rows in groups.items():
        if rows:
            mean = np.stack(rows).mean(0)  # (sigma, metric)
            cols = [" ".join(f"{v:.{d}f}" for v in mean[:, k]) for k, d in ((0, 2), (1, 3), (2, 2))]
            print(f"{name:18s} n={len(rows):2d}  PSNR {cols[0]}  SSIM {cols[1]}  SAM {cols[2]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
