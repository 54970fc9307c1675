"""Evaluate a cloud-removal model on SEN12MS-CR triplets (PSNR, SSIM, MAE, SAM; :mod:`cloudrt.train.metrics`).

For every patch with S1 + cloudy S2 + clear S2 the model's prediction, the identity baseline (the cloudy
input itself) and, where ``reference/NAME.tif`` exists, a peer model's prediction are scored against the
clear target. Results: the mean over patches, per patch, and by cloud-cover bin, where cloud cover is the
fraction of ``cloudmask/NAME.tif`` pixels > 0 when present, else of :func:`cloudrt.preprocess.mask.cloud_mask`
(eqs. 13-16, docs/method.md) on the cloudy input.

torch is needed only to run a torch model; with ``predict_fn`` the evaluation is NumPy (+ kornia for SSIM).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cloudrt._deps import require
from cloudrt.errors import InputError, ModelError
from cloudrt.preprocess.composite import composite, composite_weight, smooth_invented
from cloudrt.preprocess.mask import cloud_mask
from cloudrt.preprocess.normalize import normalize_optical, normalize_sar
from cloudrt.train.discovery import Sample, find_samples, load_sample
from cloudrt.train.metrics import all_metrics, mean_metrics
from cloudrt.train.splits import select_split

__all__ = ["evaluate", "CLOUD_COVER_BINS", "PredictFn", "model_predict_fn", "cloud_cover_bin"]

# (N, 13, H, W), (N, 2, H, W) float32 in [0, 1] -> (N, 13, H, W) in [0, 1]
PredictFn = Callable[[np.ndarray, np.ndarray], np.ndarray]

CLOUD_COVER_BINS: tuple[tuple[float, float], ...] = ((0.0, 0.1), (0.1, 0.3), (0.3, 0.6), (0.6, 1.0))


def _bin_label(lo: float, hi: float) -> str:
    return f"[{lo:g},{hi:g}]" if hi >= 1.0 else f"[{lo:g},{hi:g})"


def cloud_cover_bin(fraction: float) -> str:
    """Label of the bin holding ``fraction``: [0,0.1), [0.1,0.3), [0.3,0.6), [0.6,1] (last one closed)."""
    for lo, hi in CLOUD_COVER_BINS:
        if lo <= fraction < hi or (hi >= 1.0 and lo <= fraction <= hi):
            return _bin_label(lo, hi)
    raise ValueError(f"cloud fraction {fraction} outside [0, 1]")


def model_predict_fn(model: Any, device: str = "cpu") -> PredictFn:
    """Wrap a torch model (forward(optical, sar)) as a NumPy :data:`PredictFn`.

    H and W are reflect-padded up to a multiple of ``model.size_divisor`` and the output cropped back
    (:func:`cloudrt.model.torch_backend.forward_numpy`).
    """
    require("torch", "evaluating a model")
    from cloudrt.model.torch_backend import forward_numpy, torch_device  # lazy: imports torch

    div = int(getattr(model, "size_divisor", 1) or 1)
    dev = torch_device(device)
    model = model.to(dev).eval()
    return lambda optical, sar: forward_numpy(model, optical, sar, dev, pad_to=div)


def _load_model_fn(weights: str | Path | None, device: str) -> tuple[PredictFn, dict[str, Any]]:
    require("torch", "evaluating a model")
    from cloudrt.model.resolve import resolve_model  # lazy: imports torch

    model, info = resolve_model(weights, device=device)
    return model_predict_fn(model, device=device), {"weights": info["source"], "preset": info["preset"]}


def _cloud_fraction(raw: dict[str, np.ndarray], mask_method: str) -> tuple[float, str]:
    if "cloudmask" in raw:
        return float(raw["cloudmask"].mean()), "cloudmask"
    return float(cloud_mask(raw["s2_cloudy"], method=mask_method).mean()), f"cloud_mask({mask_method})"


def _resolve_samples(
    data_dir: str | Path, samples: Sequence[Sample | str] | None, split: str, seed: int
) -> list[Sample]:
    found = find_samples(data_dir)
    triplets = [s for s in found if s.is_triplet]
    if not triplets:
        raise InputError(
            f"no S1 + S2 + S2-cloudy triplets under {str(data_dir)!r} ({len(found)} optical-only patches); "
            "evaluation needs s1/, s2/ and s2_cloudy/ (or the official ROIs*_s1 / _s2 / _s2_cloudy tree)."
        )
    if samples is not None:
        names = {s.name if isinstance(s, Sample) else str(s) for s in samples}
        unknown = names - {s.name for s in triplets}
        if unknown:
            raise InputError(f"samples {sorted(unknown)} are not triplets under {str(data_dir)!r}; check the names.")
        triplets = [s for s in triplets if s.name in names]
    chosen = select_split(triplets, split, seed=seed)
    if not chosen:
        raise InputError(f"the {split!r} split of {str(data_dir)!r} is empty; use --split all or more data.")
    return chosen


# evaluate is ~80 lines: the per-patch loop and the summary read best as one function, top to bottom.
def evaluate(
    data_dir: str | Path,
    weights: str | Path | None = None,
    device: str = "cpu",
    samples: Sequence[Sample | str] | None = None,
    batch: int = 1,
    *,
    split: str = "all",
    seed: int = 0,
    predict_fn: PredictFn | None = None,
    mask_method: str = "paper",
    ssim_padding: str = "valid",
) -> dict[str, Any]:
    """Score a model on the triplets under ``data_dir`` (either layout); returns a JSON-able dict.

    ``weights``: a checkpoint (``NAME.safetensors`` + ``NAME.json``), default the shipped demo model.
    ``predict_fn(optical, sar) -> prediction`` (batched NumPy, [0, 1] units) replaces the model.
    ``samples`` restricts to these triplets (Sample objects or names); ``split`` picks the region/scene
    subset of :func:`cloudrt.train.splits.split_samples` with ``seed``. Keys: data, weights, split, n, mean,
    composited{mean} (the model output composited with the soft weight, as ``cloudrt infer`` writes it),
    identity{mean}, reference{n, mean, model, composited, identity} (only where reference/ exists; model and identity
    re-averaged on those same patches), per_patch, by_cloud_cover{bin: n, mean, identity, reference?}.
    """
    chosen = _resolve_samples(data_dir, samples, split, seed)
    if batch < 1:
        raise InputError(f"batch={batch} must be >= 1.")
    info: dict[str, Any] = {"weights": None if predict_fn is not None else str(weights) if weights else None}
    if predict_fn is None:
        predict_fn, loaded = _load_model_fn(weights, device)
        info.update(loaded)

    rows: list[dict[str, Any]] = []
    for i in range(0, len(chosen), batch):
        chunk = chosen[i : i + batch]
        raws = [load_sample(s) for s in chunk]
        sizes = {r["s2_cloudy"].shape[-2:] for r in raws}
        opt = [normalize_optical(r["s2_cloudy"]) for r in raws]
        sar = [normalize_sar(r["s1"]) for r in raws]
        if len(sizes) == 1:
            preds = list(np.asarray(predict_fn(np.stack(opt), np.stack(sar))))
        else:  # mixed patch sizes: one at a time
            preds = [np.asarray(predict_fn(o[None], s[None]))[0] for o, s in zip(opt, sar, strict=True)]
        for s, raw, o, p in zip(chunk, raws, opt, preds, strict=True):
            if p.shape != o.shape:
                raise ModelError(f"the model returned {p.shape} for input {o.shape}; expected the same shape.")
            target = normalize_optical(raw["s2"])
            frac, src = _cloud_fraction(raw, mask_method)
            ident = all_metrics(o, target, ssim_padding)
            weight = composite_weight(raw["s2_cloudy"])
            # what `cloudrt infer` writes (invented detail smoothed, soft compositing; docs/method.md)
            comp = composite(smooth_invented(p, raw["s2_cloudy"]), o, weight)
            row: dict[str, Any] = {
                "name": s.name, "region": s.region, "scene": s.scene, "patch": s.patch,
                "cloud_cover": frac, "cloud_cover_source": src, "cloud_cover_bin": cloud_cover_bin(frac),
                "model": dict(ident) if np.array_equal(p, o) else all_metrics(p, target, ssim_padding),
                "composited": all_metrics(comp, target, ssim_padding), "replaced": float(weight.mean()),
                "identity": ident,
            }
            if "reference" in raw:
                row["reference"] = all_metrics(normalize_optical(raw["reference"]), target, ssim_padding)
            rows.append(row)

    result: dict[str, Any] = {
        "data": str(data_dir), **info, "split": split, "seed": seed, "n": len(rows),
        "metrics": {"scale": "DN clipped to [0, 10000] / 10000", "psnr": "dB, data range 1",
                    "ssim": f"gaussian 11x11 sigma 1.5, padding {ssim_padding}, mean of 13 bands",
                    "mae": "[0, 1] scale", "sam": "degrees"},
        "mean": mean_metrics([r["model"] for r in rows]),
        "composited": {"mean": mean_metrics([r["composited"] for r in rows])},
        "identity": {"mean": mean_metrics([r["identity"] for r in rows])},
    }
    ref_rows = [r for r in rows if "reference" in r]
    if ref_rows:
        result["reference"] = _ref_summary(ref_rows)
    by_bin: dict[str, Any] = {}
    for lo, hi in CLOUD_COVER_BINS:
        label = _bin_label(lo, hi)
        sel = [r for r in rows if r["cloud_cover_bin"] == label]
        entry: dict[str, Any] = {"n": len(sel)}
        if sel:
            entry["mean"] = mean_metrics([r["model"] for r in sel])
            entry["identity"] = {"mean": mean_metrics([r["identity"] for r in sel])}
            sel_ref = [r for r in sel if "reference" in r]
            if sel_ref:
                entry["reference"] = _ref_summary(sel_ref)
        by_bin[label] = entry
    result["per_patch"] = rows
    result["by_cloud_cover"] = by_bin
    return result


def _ref_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "n": len(rows),
        "mean": mean_metrics([r["reference"] for r in rows]),
        "model": {"mean": mean_metrics([r["model"] for r in rows])},
        "composited": {"mean": mean_metrics([r["composited"] for r in rows])},
        "identity": {"mean": mean_metrics([r["identity"] for r in rows])},
    }


def json_safe(obj: Any) -> Any:
    """Replace non-finite floats (a perfect patch's PSNR is inf) by None so the output is strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj

