"""``cloudrt train``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer

from cloudrt.cli.common import require_extra
from cloudrt.errors import InputError


def register(app: typer.Typer) -> None:
    @app.command("train")
    def train_cmd(
        data: list[Path] = typer.Option([], "--data", help="SEN12MS-CR root or flat s1/s2/s2_cloudy folder "
                                        "(repeatable; required unless --npz)."),
        out: Path = typer.Option(..., "-o", "--out", help="Run folder: checkpoints, history."),
        preset: str = typer.Option("carf-small", help="Model preset (carf-tiny, carf-small, carf-base)."),
        epochs: int = typer.Option(10, help="Passes over the training subset."),
        batch: int = typer.Option(4, help="Batch size per process."),
        lr: float = typer.Option(1e-5, help="Adam learning rate (paper: 1e-5)."),
        seed: int = typer.Option(0, help="Seed for splits, data order, augmentation and init."),
        device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N."),
        resume: bool = typer.Option(False, "--resume", help="Continue from OUT/last.*"),
        crop: int = typer.Option(128, help="Random crop size (multiple of the model's size divisor; 0 = none)."),
        split: str = typer.Option("train", help="Subset of the region/scene split to train on, or 'all'."),
        holdout: list[str] = typer.Option([], help="Sample names never trained on (repeatable)."),
        extra_optical: list[Path] = typer.Option([], "--extra-optical",
                                                 help="S2-only pair folders (s2/, s2_cloudy/), no SAR."),
        synthetic_clouds: float = typer.Option(0.5, help="Probability of a synthetic cloud over a clear target."),
        clear_identity: float = typer.Option(0.0, help="Probability the input is the clear target (no change)."),
        init: Path = typer.Option(None, "--init", help="Start from these weights (fine-tune)."),
        no_cloud_weighting: bool = typer.Option(False, "--no-cloud-weighting",
                                                help="Paper's ablation: W_cloud = 1 (eq. 17 off)."),
        save_every: int = typer.Option(200, help="Checkpoint every N steps."),
        max_steps: int = typer.Option(0, help="Stop after N steps (0 = epochs decide)."),
        max_minutes: float = typer.Option(0.0, help="Stop after this wall time (0 = no limit)."),
        amp: bool = typer.Option(True, help="Mixed precision on GPU."),
        schedule: str = typer.Option("constant", help="Learning-rate schedule: constant (paper) or cosine."),
        override: list[str] = typer.Option([], help="Model config override KEY=VALUE (repeatable)."),
        mix: bool = typer.Option(False, "--mix", help="Demo mix: real clouds, identity and synthetic clouds with "
                                 "haze and shadow, SAR dropout (docs/method.md)."),
        npz: Path = typer.Option(None, "--npz", help="Mix records from one .npz (scripts/make_npz.py) instead "
                                 "of --data folders; implies --mix."),
        sam_weight: float = typer.Option(0.0, help="Weight of the spectral-angle term added to eq. 18."),
        p_real: float = typer.Option(0.5, help="Mix: probability of a real cloudy input."),
        p_identity: float = typer.Option(0.15, help="Mix: probability of a clear input kept unchanged."),
        sar_dropout: float = typer.Option(0.2, help="Mix: probability that a triplet's SAR is zeroed."),
        p_sar: float = typer.Option(-1.0, help="Mix: share of draws from records with SAR (triplets); "
                                    "-1 = uniform over records."),
        ema: float = typer.Option(0.0, help="Decay of a moving average of the weights saved as final.* "
                                  "(e.g. 0.998; 0 = off)."),
    ) -> None:
        """Train CARF with the cloud-aware loss (eqs. 17-18); Adam; checkpoints are safetensors + JSON."""
        require_extra("torch", "cloudrt train")  # the missing extra first, before any other check
        require_extra("kornia", "cloudrt train (the SSIM term of the loss)")
        from cloudrt.train.loop import TrainConfig, train  # lazy: imports torch

        if not data and npz is None:
            raise InputError("no training data: pass --data DIR (repeatable) or --npz FILE.")
        if npz is not None and not npz.is_file():
            raise InputError(f"--npz {npz} does not exist; build it with scripts/make_npz.py.")
        for d in [*data, *extra_optical]:
            if not d.is_dir():
                raise InputError(f"data folder {d} does not exist; pass a SEN12MS-CR folder with --data.")
        overrides = {}
        for kv in override:
            if "=" not in kv:
                raise InputError(f"--override {kv!r} is not KEY=VALUE, e.g. --override channels=64.")
            k, v = kv.split("=", 1)
            overrides[k] = json.loads(v)
        cfg = TrainConfig(
            data=[str(d) for d in data], out=str(out), preset=preset, epochs=epochs, batch=batch, lr=lr,
            seed=seed, device=device, resume=resume, crop=crop or None, split=split, holdout=list(holdout),
            extra_optical=[str(d) for d in extra_optical], synthetic_clouds=synthetic_clouds,
            clear_identity=clear_identity,
            init=str(init) if init else None,
            cloud_weighting=not no_cloud_weighting, save_every=save_every, max_steps=max_steps or None,
            max_minutes=max_minutes or None, amp=amp, schedule=schedule, overrides=overrides,
            mix=mix or npz is not None, npz=str(npz) if npz else None, sam_weight=sam_weight, p_real=p_real,
            p_identity=p_identity, sar_dropout=sar_dropout, ema=ema,
            p_sar=None if p_sar < 0 else p_sar,
        )
        final = train(cfg)
        if os.environ.get("RANK", "0") == "0":
            typer.echo(f"saved {final}")
