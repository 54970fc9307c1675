"""Split SEN12MS-CR samples into train/val/test by (region, scene), never by patch (no spatial leakage)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cloudrt.errors import InputError
from cloudrt.train.discovery import Sample

SPLITS = ("train", "val", "test")


def split_samples(
    samples: Sequence[Sample], fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0
) -> dict[str, list[Sample]]:
    """Split into ``train``/``val``/``test`` by (region, scene) group, never by patch (docs/method.md, evaluation).

    Groups are shuffled with ``seed`` and counted by largest remainder, so 10 groups give 8/1/1.
    With few groups, every subset whose fraction is > 0 still gets one group while groups remain, in the
    order train, test, val: 1 group -> train only; 2 -> train+test; 3 or more -> at least 1 each. Fractions
    are subsets of groups, not of patches, so patch counts follow group sizes. Deterministic per seed.
    """
    fr = np.asarray(fractions, dtype=np.float64)
    if fr.shape != (3,) or (fr < 0).any() or fr.sum() <= 0:
        raise InputError(f"split fractions {tuple(fractions)} must be three non-negative numbers (train, val, test).")
    fr = fr / fr.sum()
    groups = sorted({s.group for s in samples})
    rng = np.random.default_rng(seed)
    order = [groups[i] for i in rng.permutation(len(groups))]
    n = len(order)
    raw = fr * n
    counts = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    for i in (0, 2, 1):  # guarantee train, then test, then val one group each if possible
        if fr[i] > 0 and counts[i] == 0:
            donors = [j for j in range(3) if counts[j] > 1 or (counts[j] == 1 and fr[j] == 0)]
            if donors:
                j = max(donors, key=lambda k: counts[k])
                counts[j] -= 1
                counts[i] += 1
    bounds = np.cumsum(counts)
    which = {}
    for k, g in enumerate(order):
        which[g] = SPLITS[int(np.searchsorted(bounds, k, side="right"))]
    out: dict[str, list[Sample]] = {name: [] for name in SPLITS}
    for s in samples:
        out[which[s.group]].append(s)
    return out


def select_split(samples: Sequence[Sample], split: str = "all", seed: int = 0) -> list[Sample]:
    """``samples`` of one subset of :func:`split_samples` (``"all"`` returns them all)."""
    if split == "all":
        return list(samples)
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}; use one of train, val, test, all.")
    return split_samples(samples, seed=seed)[split]
