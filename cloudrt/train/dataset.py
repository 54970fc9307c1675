"""Training/validation patches as a ``torch.utils.data.Dataset`` (imports torch)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
import torch.utils.data

from cloudrt.contract import S1_BANDS
from cloudrt.errors import InputError
from cloudrt.preprocess.normalize import normalize_optical, normalize_sar
from cloudrt.train.discovery import Sample, load_sample
from cloudrt.train.synthetic import add_synthetic_clouds


def dihedral(a: np.ndarray, k: int, flip: bool) -> np.ndarray:
    """Optional horizontal flip, then ``k`` quarter turns, over the last two axes."""
    if flip:
        a = a[..., ::-1]
    return np.rot90(a, k, axes=(-2, -1))


class PatchDataset(torch.utils.data.Dataset):
    """Training/validation patches as dicts of float32 torch tensors.

    Each item: ``optical`` (13,H,W) cloudy input and ``target`` (13,H,W) clear image, both via
    :func:`normalize_optical`; ``sar`` (2,H,W) via :func:`normalize_sar` (zeros when the patch has no S1);
    ``has_sar`` scalar 1.0/0.0. Cloud masks are left to the loss (it derives them from ``optical``).

    - ``augment``: one random flip + 90-degree rotation, the same for every tensor.
    - ``crop`` (multiple of 16): a random ``crop x crop`` window when ``augment``, else the centre one.
    - ``clear_identity``: probability that the input is the clear target itself (target unchanged), so the
      model learns to leave cloud-free pixels alone.
    - ``synthetic_clouds``: True (always) or a probability: the input becomes the clear target with a
      synthetic cloud laid over it (:func:`add_synthetic_clouds`); the target stays the clear image. Patches
      without ``s2_cloudy`` need it set to True.

    Randomness is a function of ``(seed, epoch, index)`` (call :meth:`set_epoch` each epoch), so it is
    reproducible and independent across DataLoader workers. ``cache`` keeps decoded patches in memory.
    """

    def __init__(
        self,
        samples: Iterable[Sample],
        crop: int | None = None,
        augment: bool = False,
        synthetic_clouds: bool | float = False,
        seed: int = 0,
        cache: bool = False,
        clear_identity: float = 0.0,
    ) -> None:
        self.samples = list(samples)
        if not self.samples:
            raise InputError("PatchDataset got no samples; check the data folder and the split.")
        if crop is not None and (crop <= 0 or crop % 16):
            raise InputError(f"crop={crop} must be a positive multiple of 16 (the model's size divisor).")
        self.crop = crop
        self.augment = augment
        self.p_synthetic = float(synthetic_clouds)
        self.p_identity = float(clear_identity)
        if not 0.0 <= self.p_identity <= 1.0:
            raise InputError(f"clear_identity={clear_identity} must be a probability in [0, 1].")
        if not 0.0 <= self.p_synthetic <= 1.0:
            raise InputError(f"synthetic_clouds={synthetic_clouds} must be a bool or a probability in [0, 1].")
        for s in self.samples:
            if s.s2 is None:
                raise InputError(f"patch {s.name!r} has no clear s2 target; training needs s2/ for every patch.")
            if s.s2_cloudy is None and self.p_synthetic < 1.0:
                raise InputError(
                    f"patch {s.name!r} has no s2_cloudy input; pass synthetic_clouds=True or drop the patch."
                )
        self.seed = int(seed)
        self.epoch = 0
        self.cache = cache
        self._cache: dict[int, dict[str, np.ndarray]] = {}

    def set_epoch(self, epoch: int) -> None:
        """Draw different augmentations next epoch (reproducibly)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.samples)

    def _arrays(self, index: int) -> dict[str, np.ndarray]:
        if index in self._cache:
            return self._cache[index]
        s = self.samples[index]
        raw = load_sample(s)
        arrs = {"target": normalize_optical(raw["s2"])}
        if "s2_cloudy" in raw:
            arrs["cloudy"] = normalize_optical(raw["s2_cloudy"])
        if "s1" in raw:
            arrs["sar"] = normalize_sar(raw["s1"])
        if self.cache:
            self._cache[index] = arrs
        return arrs

    def rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, index])

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index < 0:
            index += len(self)
        arrs = self._arrays(index)
        rng = self.rng(index)
        target = arrs["target"]
        h, w = target.shape[-2:]
        has_sar = "sar" in arrs
        sar = arrs["sar"] if has_sar else np.zeros((len(S1_BANDS), h, w), dtype=np.float32)

        synthetic = self.p_synthetic >= 1.0 or (self.p_synthetic > 0 and rng.random() < self.p_synthetic)
        if self.p_identity > 0 and rng.random() < self.p_identity:
            optical = target  # a cloud-free input: the model must leave it unchanged
        elif synthetic:
            optical, _ = add_synthetic_clouds(target, rng)
        else:
            optical = arrs["cloudy"]

        if self.crop is not None:
            c = self.crop
            if c > h or c > w:
                raise InputError(f"crop={c} is larger than patch {self.samples[index].name!r} ({h}x{w}).")
            if self.augment:
                y, x = int(rng.integers(0, h - c + 1)), int(rng.integers(0, w - c + 1))
            else:
                y, x = (h - c) // 2, (w - c) // 2
            optical, sar, target = (a[:, y : y + c, x : x + c] for a in (optical, sar, target))
        if self.augment:
            k, flip = int(rng.integers(0, 4)), bool(rng.integers(0, 2))
            optical, sar, target = (dihedral(a, k, flip) for a in (optical, sar, target))

        def t(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))

        return {
            "optical": t(optical),
            "sar": t(sar),
            "target": t(target),
            "has_sar": torch.tensor(1.0 if has_sar else 0.0, dtype=torch.float32),
        }
