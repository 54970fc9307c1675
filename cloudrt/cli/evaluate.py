"""``cloudrt eval``: score a model on SEN12MS-CR triplets beside the identity baseline and the peer model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from cloudrt.cli.common import require_extra
from cloudrt.errors import InputError

_SPLITS = ("all", "train", "val", "test")


def _fmt(v: Any, digits: int) -> str:
    return "-" if v is None or v != v else f"{v:.{digits}f}"


def _row(label: str, n: int, m: dict[str, float]) -> list[str]:
    return [label, str(n), _fmt(m["psnr"], 2), _fmt(m["ssim"], 3), _fmt(m["mae"], 4), _fmt(m["sam"], 2)]


def render_tables(res: dict[str, Any]) -> list[Any]:
    """rich Tables: overall scores, then scores by cloud-cover bin."""
    cols = ("", "n", "PSNR dB", "SSIM", "MAE", "SAM deg")
    model_label = f"model ({res.get('preset') or Path(str(res.get('weights') or 'model')).stem})"
    t = Table(title=f"cloudrt eval: {res['data']} (split {res['split']}, {res['n']} patches)")
    for c in cols:
        t.add_column(c, justify="left" if not c else "right")
    t.add_row(*_row(model_label + ", raw", res["n"], res["mean"]))
    t.add_row(*_row("  composited (as cloudrt infer)", res["n"], res["composited"]["mean"]))
    t.add_row(*_row("identity (cloudy input)", res["n"], res["identity"]["mean"]))
    ref = res.get("reference")
    if ref:
        t.add_row(*_row("reference peer", ref["n"], ref["mean"]))
        t.add_row(*_row("  model raw, same patches", ref["n"], ref["model"]["mean"]))
        t.add_row(*_row("  composited, same patches", ref["n"], ref["composited"]["mean"]))

    b = Table(title="by cloud cover (fraction of cloudy pixels)")
    for c in ("cloud cover", *cols):
        b.add_column(c, justify="left" if c in ("", "cloud cover") else "right")
    for label, e in res["by_cloud_cover"].items():
        if not e["n"]:
            b.add_row(label, "", "0", "-", "-", "-", "-")
            continue
        b.add_row(label, *_row("model", e["n"], e["mean"]))
        b.add_row("", *_row("identity", e["n"], e["identity"]["mean"]))
        if "reference" in e:
            b.add_row("", *_row("reference", e["reference"]["n"], e["reference"]["mean"]))
    return [t, b]


def register(app: typer.Typer) -> None:
    @app.command("eval")
    def eval_cmd(
        data: Path = typer.Option(..., "--data", help="SEN12MS-CR root (official tree) or a flat "
                                  "folder of s1/, s2/, s2_cloudy/ and optional cloudmask/, reference/."),
        weights: Path | None = typer.Option(None, "--weights", help="Checkpoint NAME.safetensors "
                                            "(+ NAME.json); default: the shipped demo model."),
        as_json: bool = typer.Option(False, "--json", help="Print the full result as JSON on stdout."),
        split: str = typer.Option("all", "--split", help="Region/scene subset: test, val, train or all."),
        seed: int = typer.Option(0, "--seed", help="Seed of the 80/10/10 region/scene split."),
        device: str = typer.Option("cpu", "--device", help="cpu, cuda or cuda:N."),
        batch: int = typer.Option(1, "--batch", help="Patches per forward pass."),
        mask_method: str = typer.Option("paper", "--mask-method",
                                        help="Cloud cover where no cloudmask/ exists: paper or sen12mscr."),
        sample: list[str] = typer.Option([], "--sample", help="Only these patches, by name (repeatable), "
                                         "e.g. the held-out triplets of a model card."),
    ) -> None:
        """Score a model (PSNR, SSIM, MAE, SAM) beside the cloudy-input baseline and any reference/ peer."""
        require_extra("torch", "cloudrt eval")  # the missing extra first (SSIM and the model need torch)
        require_extra("kornia", "cloudrt eval (SSIM)")
        from cloudrt.train.evaluate import evaluate, json_safe  # lazy: keeps `cloudrt --help` free of torch

        if split not in _SPLITS:
            raise InputError(f"--split {split!r} is not one of {', '.join(_SPLITS)}; pick one of those.")
        if weights is not None and not (weights.exists() or weights.with_suffix(".safetensors").exists()):
            raise InputError(f"weights {weights} not found; pass an existing NAME.safetensors checkpoint.")
        res = evaluate(data, weights=weights, device=device, batch=batch, split=split, seed=seed,
                       mask_method=mask_method, samples=list(sample) or None)
        if as_json:
            typer.echo(json.dumps(json_safe(res), indent=2, allow_nan=False))
            return
        console = Console()
        for t in render_tables(res):
            console.print(t)
