"""Training loop for CARF with the cloud-aware loss (eqs. 17-18).

Single process: ``cloudrt train --data DIR -o runs/x``.
Multi-GPU / multi-node: ``torchrun --nproc_per_node=8 -m cloudrt.train --data DIR -o runs/x`` (or the same
arguments after ``cloudrt train`` under torchrun); DistributedDataParallel over NCCL (gloo on CPU).

Checkpoints (``OUT/last.*`` every ``save_every`` steps and at the end, ``OUT/final.*`` at the end)
are safetensors + JSON; the optimizer state is ``OUT/last.state.pt`` read back with
``torch.load(weights_only=True)``. ``resume=True`` continues from ``OUT/last`` at the saved step, with the
same data order (each epoch's order is seeded by ``seed + epoch``).
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn

from cloudrt.errors import InputError
from cloudrt.model.carf import build
from cloudrt.model.checkpoint import load_checkpoint, save_checkpoint
from cloudrt.model.mask_torch import cloud_mask_torch
from cloudrt.model.torch_backend import torch_device
from cloudrt.train.dataset import PatchDataset
from cloudrt.train.discovery import find_samples
from cloudrt.train.loss import CloudAwareLoss
from cloudrt.train.mix import MixDataset, load_npz, records_from_folders
from cloudrt.train.splits import split_samples


@dataclass
class TrainConfig:
    data: list[str]
    out: str
    preset: str = "carf-small"
    epochs: int = 10
    batch: int = 4
    lr: float = 1e-5  # the paper's Adam learning rate
    seed: int = 0
    device: str = "auto"
    resume: bool = False
    crop: int | None = 128
    split: str = "train"  # subset of the region/scene split used for training ("all" = every sample)
    holdout: list[str] = field(default_factory=list)  # sample names never trained on
    extra_optical: list[str] = field(default_factory=list)  # S2-only folders (synthetic + real clouds)
    synthetic_clouds: float = 0.5  # probability a clear target gets a synthetic cloud overlay
    clear_identity: float = 0.0  # probability the input is the clear target itself (learn "no cloud, no change")
    init: str | None = None  # start from these weights (fine-tuning); optimizer starts fresh
    cloud_weighting: bool = True  # False: the paper's ablation
    save_every: int = 200
    max_steps: int | None = None
    max_minutes: float | None = None
    workers: int = 0
    amp: bool = True  # mixed precision on GPU
    overrides: dict[str, Any] = field(default_factory=dict)
    log_every: int = 10
    schedule: str = "constant"  # "constant" (paper) or "cosine" (decay to 1% over the run)
    mix: bool = False  # the demo mix (cloudrt.train.mix): real, identity and synthetic (haze + shadow) examples
    npz: str | None = None  # mix records from one .npz (cloudrt.train.mix.save_npz) instead of the folders
    sam_weight: float = 0.0  # weight of the spectral-angle term added to eq. 18 (0 = the paper's loss)
    p_real: float = 0.5  # mix: probability of a real cloudy input
    p_identity: float = 0.15  # mix: probability of a clear input that must come back unchanged
    sar_dropout: float = 0.2  # mix: probability that a triplet's SAR is zeroed
    p_sar: float | None = None  # mix: share of draws from records with SAR (None = uniform over records)
    ema: float = 0.0  # decay of an exponential moving average of the weights (0 = off); final.* holds it


def _dist_info() -> tuple[int, int, int]:
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


def _pick_device(name: str, local_rank: int) -> torch.device:
    """:func:`torch_device`, with plain ``cuda``/``auto`` on a GPU meaning this process's local rank."""
    dev = torch_device(name)
    if dev.type == "cuda" and str(name).strip().lower() in ("auto", "cuda", "gpu"):
        return torch.device("cuda", local_rank)
    return dev


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def build_datasets(cfg: TrainConfig) -> tuple[Any, list[str]]:
    """Training dataset from the triplet folders (split by region/scene) plus S2-only folders, or the
    demo mix (:class:`cloudrt.train.mix.MixDataset`) when ``cfg.mix``."""
    if cfg.mix:
        hold = set(cfg.holdout)
        recs = load_npz(cfg.npz) if cfg.npz else records_from_folders(cfg.data + cfg.extra_optical, hold)
        recs = [r for r in recs if r.name not in hold]  # an .npz may have been packed with them
        ds = MixDataset(recs, crop=cfg.crop or 128, seed=cfg.seed, p_real=cfg.p_real,
                        p_identity=cfg.p_identity, sar_dropout=cfg.sar_dropout, p_sar=cfg.p_sar)
        return ds, ds.names
    samples = []
    for d in cfg.data:
        samples += find_samples(d)
    triplets = [s for s in samples if s.s1 is not None]
    if not triplets:
        raise InputError(f"no SEN12MS-CR triplets (s1 + s2 + s2_cloudy) found under {cfg.data}; "
                         "point --data at a SEN12MS-CR root or a flat s1/s2/s2_cloudy folder.")
    hold = set(cfg.holdout)
    triplets = [s for s in triplets if s.name not in hold]
    if cfg.split != "all":
        triplets = split_samples(triplets, seed=cfg.seed)[cfg.split]
    optical_only = [s for d in cfg.extra_optical for s in find_samples(d) if s.name not in hold]
    train = triplets + optical_only
    ds = PatchDataset(train, crop=cfg.crop, augment=True, synthetic_clouds=cfg.synthetic_clouds,
                      seed=cfg.seed, cache=True, clear_identity=cfg.clear_identity)
    return ds, [s.name for s in train]


def _cloud_mask_from_input(optical: torch.Tensor) -> torch.Tensor:
    """M' (eqs. 13-16) of the normalized cloudy input, on the tensor's device."""
    return cloud_mask_torch(optical, method="paper", scale=10000)


# train() is ~100 lines on purpose: the loop reads top to bottom as the paper's recipe (setup, resume,
# DDP wrap, AMP, the epoch/step loop with checkpointing); the pieces with their own logic are helpers below.
def train(cfg: TrainConfig) -> Path:
    """Run training; returns the path of the final checkpoint (.safetensors)."""
    rank, world, local_rank = _dist_info()
    distributed = world > 1
    device = _pick_device(cfg.device, local_rank)
    if distributed:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            torch.cuda.set_device(device)
    seed_everything(cfg.seed + rank)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)

    ds, names = build_datasets(cfg)
    model = build(cfg.preset, **cfg.overrides).to(device)
    if cfg.init:
        init_model, _ = load_checkpoint(cfg.init, device=str(device))
        if init_model.config != model.config:
            raise InputError(f"--init {cfg.init} is preset {init_model.config.get('preset')!r} with another config; "
                             "pass the same --preset/--override as the checkpoint.")
        model.load_state_dict(init_model.state_dict())
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    step = 0
    if cfg.resume and (out / "last.safetensors").exists():
        loaded, meta = load_checkpoint(out / "last", device=str(device))
        model.load_state_dict(loaded.state_dict())
        state = torch.load(out / "last.state.pt", map_location=device, weights_only=True)
        opt.load_state_dict(state["optimizer"])
        step = int(state["step"])
    ema = _make_ema(model, cfg.ema)
    if ema is not None and cfg.resume and (out / "last-ema.safetensors").exists():
        ema.module.load_state_dict(load_checkpoint(out / "last-ema", device=str(device))[0].state_dict())
        ema.n_averaged.fill_(max(step, 1))  # else the next update would copy the weights over the average
    if cfg.resume and not (out / "last.safetensors").exists():
        raise InputError(f"--resume given but {out}/last.safetensors does not exist; drop --resume to start fresh.")

    net: nn.Module = model
    if distributed:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    loss_fn = CloudAwareLoss(cloud_weighting=cfg.cloud_weighting, sam_weight=cfg.sam_weight)
    use_amp = cfg.amp and device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

    steps_per_epoch = math.ceil(len(ds) / (cfg.batch * world))
    total = cfg.epochs * steps_per_epoch
    if cfg.max_steps:
        total = min(total, cfg.max_steps)
    meta_base = {"train": {**asdict(cfg), "samples": names, "world_size": world,
                           "device": str(device), "torch": torch.__version__}}
    t0 = time.time()
    history: list[dict[str, float]] = []
    progress = _progress(rank == 0)
    task = progress.add_task("train", total=total, completed=step) if progress else None
    if progress:
        progress.start()
    try:
        epoch = step // steps_per_epoch  # the data order of every epoch is seeded, so resume can derive it
        while step < total:
            order = _epoch_order(len(ds), cfg.seed, epoch, rank, world)
            skip = step - epoch * steps_per_epoch  # resume mid-epoch: skip batches already seen
            if hasattr(ds, "set_epoch"):
                ds.set_epoch(epoch)
            net.train()
            for b in range(max(skip, 0), steps_per_epoch):
                idx = order[b * cfg.batch:(b + 1) * cfg.batch]
                if not idx or step >= total:
                    break
                batch = _collate([ds[i] for i in idx], device)
                with torch.no_grad():
                    mask = _cloud_mask_from_input(batch["optical"])
                with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                    pred = net(batch["optical"], batch["sar"])
                loss = loss_fn(pred.float(), batch["target"], mask)
                if cfg.schedule == "cosine":
                    for gr in opt.param_groups:
                        gr["lr"] = cfg.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * step / max(total, 1))))
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                if ema is not None:
                    ema.update_parameters(model)
                step += 1
                if step % cfg.log_every == 0 or step == total:
                    history.append({"step": step, "loss": float(loss.detach()),
                                    "minutes": (time.time() - t0) / 60})
                if progress:
                    progress.update(task, advance=1, description=f"epoch {epoch} loss {float(loss.detach()):.4f}")
                if rank == 0 and step % cfg.save_every == 0:
                    _save(model, opt, out / "last", step, meta_base, history, t0, ema)
                if cfg.max_minutes and (time.time() - t0) / 60 > cfg.max_minutes:
                    total = step
                    break
            epoch += 1
    finally:
        if progress:
            progress.stop()
    final = out / "final"
    if rank == 0:
        if step % cfg.save_every:  # the periodic save missed the last steps: keep the run resumable
            _save(model, opt, out / "last", step, meta_base, history, t0, ema)
        meta = {**meta_base, "steps": step, "wall_minutes": (time.time() - t0) / 60, "history": history,
                "weights": "ema" if ema is not None else "last step"}
        save_checkpoint(ema.module if ema is not None else model, final, meta)
        (out / "history.json").write_text(json.dumps(history))
    if distributed:
        dist.barrier()
        dist.destroy_process_group()
    return final.with_suffix(".safetensors")


def _make_ema(model: nn.Module, decay: float):
    """``torch.optim.swa_utils.AveragedModel`` holding the exponential moving average of the weights (and
    the buffers), or None when ``decay`` is 0."""
    if not decay:
        return None
    if not 0.0 < decay < 1.0:
        raise InputError(f"--ema {decay} is not a decay in (0, 1); pass e.g. 0.998, or 0 to turn it off.")
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def _save(model, opt, stem: Path, step: int, meta_base: dict, history: list, t0: float, ema=None) -> None:
    meta = {**meta_base, "steps": step, "wall_minutes": (time.time() - t0) / 60, "history": history[-50:]}
    save_checkpoint(model, stem, meta)
    if ema is not None:  # the average, so a resumed run continues it
        save_checkpoint(ema.module, stem.with_name(stem.name + "-ema"), {**meta, "weights": "ema"})
    tmp = stem.with_name(stem.name + ".state.pt.tmp")
    torch.save({"optimizer": opt.state_dict(), "step": step}, tmp)
    os.replace(tmp, stem.with_name(stem.name + ".state.pt"))


def _epoch_order(n: int, seed: int, epoch: int, rank: int, world: int) -> list[int]:
    g = np.random.default_rng([seed, epoch])
    order = g.permutation(n).tolist()
    if world > 1:  # same permutation everywhere, strided per rank (DistributedSampler-like)
        order = order + order[: (-len(order)) % world]
        order = order[rank::world]
    return order


def _collate(items: list[dict], device: torch.device) -> dict[str, torch.Tensor]:
    keys = ("optical", "sar", "target")
    return {k: torch.stack([it[k] for it in items]).to(device, non_blocking=True) for k in keys}


def _progress(enabled: bool):
    if not enabled:
        return None
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeRemainingColumn())
