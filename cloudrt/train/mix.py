"""The demo model's training mix: every kind of real patch at hand, each used for what it can teach.

Records are plain NumPy (``target`` 13-band DN, optional ``cloudy`` DN and ``sar`` dB), read from sample
folders (:func:`records_from_folders`: triplets, S2-only pairs, folders of clear images) or from one compact
``.npz`` (:func:`save_npz` / :func:`load_npz`, for machines without rasterio). :class:`MixDataset` draws,
per item, one of:

- ``real`` (probability ``p_real``): a real cloudy input (a triplet with its SAR, or an S2-only pair with
  the SAR absent) -> its clear target; real cloud appearance, haze and shadows included;
- ``identity`` (``p_identity``): a clear image -> itself, so the model learns to leave clear pixels alone;
- ``synthetic`` (the rest): a clear target under a synthetic cloud with spectral haze and a displaced
  cloud shadow (:func:`cloudrt.train.synthetic.add_synthetic_clouds` with ``shadow=None``) -> the target.

SAR dropout zeroes the SAR of a triplet with probability ``sar_dropout`` so the model works with and without
SAR evidence; S2-only records always have zero SAR (the normalized "no SAR" value). S2-only records far
outnumber triplets (on the samples: 72 against 7), so uniform draws would teach the SAR branch from about 1
example in 10; ``p_sar`` sets the share of draws (real and synthetic alike) taken from records with SAR.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.utils.data

from cloudrt.errors import InputError
from cloudrt.preprocess.mask import cloud_mask
from cloudrt.preprocess.normalize import normalize_optical, normalize_sar
from cloudrt.train.dataset import dihedral
from cloudrt.train.synthetic import add_synthetic_clouds

CLEAR_MAX = 0.02  # paper-mask cloud fraction at or below which an image counts as clear


@dataclass
class Record:
    """One patch of the mix: DN arrays as read, before normalization."""

    name: str
    target: np.ndarray  # (13, H, W) DN, the clear image
    cloudy: np.ndarray | None = None  # (13, H, W) DN, a real cloudy acquisition of the same ground
    sar: np.ndarray | None = None  # (2, H, W) dB
    clear_input: bool = False  # the "cloudy" member is itself clear (a clear pair): not a real-cloud example


def cloud_fraction(dn: np.ndarray) -> float:
    """Fraction of pixels the paper's mask (eqs. 13-16) flags."""
    return float(cloud_mask(dn, method="paper").mean())


def records_from_folders(folders: list[str | Path], holdout: set[str] | frozenset = frozenset(),
                         clear_max: float = CLEAR_MAX) -> list[Record]:
    """Read every patch under ``folders`` except the names in ``holdout``.

    A folder is a SEN12MS-CR tree or flat ``s1/ s2/ s2_cloudy/`` folder, or a folder of loose clear
    ``*.tif`` images (time series); loose images with more than ``clear_max`` cloud are skipped.
    """
    # rasterio is imported here, not at the top: the npz path must run on machines without it (GPU hosts)
    from cloudrt.train.discovery import find_samples, load_sample, read_raster

    out: list[Record] = []
    for folder in folders:
        folder = Path(folder)
        loose = sorted(folder.glob("*.tif"))
        if loose and not (folder / "s2").is_dir():
            for f in loose:
                if f.stem not in holdout:
                    dn = read_raster(f)
                    if cloud_fraction(dn) <= clear_max:
                        out.append(Record(f.stem, dn))
            continue
        for s in find_samples(folder):
            if s.name in holdout:
                continue
            raw = load_sample(s)
            if "s2" not in raw:
                continue
            cloudy = raw.get("s2_cloudy")
            clear_in = cloudy is not None and cloud_fraction(cloudy) <= clear_max
            out.append(Record(s.name, raw["s2"], cloudy, raw.get("s1"), clear_in))
    if not out:
        raise InputError(f"no training patches under {[str(f) for f in folders]}; check the data folders.")
    return out


def save_npz(records: list[Record], path: str | Path) -> None:
    """Pack records into one compressed ``.npz``: uint16 optical DN, float16 SAR dB."""
    arrays: dict[str, np.ndarray] = {"names": np.array([r.name for r in records])}
    for i, r in enumerate(records):
        arrays[f"t{i}"] = r.target.astype(np.uint16)
        if r.cloudy is not None:
            arrays[f"c{i}"] = r.cloudy.astype(np.uint16)
        if r.sar is not None:
            arrays[f"s{i}"] = r.sar.astype(np.float16)
        arrays[f"k{i}"] = np.array(r.clear_input)
    np.savez_compressed(path, **arrays)


def load_npz(path: str | Path) -> list[Record]:
    """Inverse of :func:`save_npz` (NumPy only)."""
    with np.load(path, allow_pickle=False) as z:
        return [Record(str(name), z[f"t{i}"], z[f"c{i}"] if f"c{i}" in z else None,
                       z[f"s{i}"].astype(np.float32) if f"s{i}" in z else None, bool(z[f"k{i}"]))
                for i, name in enumerate(z["names"])]


class MixDataset(torch.utils.data.Dataset):
    """Items ``{"optical", "sar", "target"}`` (float32 tensors, model units), ``epoch_size`` per epoch.

    Item ``i`` of epoch ``e`` is a deterministic function of ``(seed, e, i)`` (call :meth:`set_epoch`).
    Kinds: ``real`` with ``p_real``, ``identity`` with ``p_identity``, ``synthetic`` with the rest; without
    real cloudy records the ``p_real`` share is spread over the other two in their ratio.
    """

    def __init__(self, records: list[Record], crop: int = 128, seed: int = 0, p_real: float = 0.5,
                 p_identity: float = 0.15, sar_dropout: float = 0.2, epoch_size: int | None = None,
                 p_sar: float | None = None) -> None:
        if not records:
            raise InputError("MixDataset got no records; check the data folders.")
        if crop <= 0 or crop % 16:
            raise InputError(f"crop={crop} must be a positive multiple of 16 (the model's size divisor).")
        for name, p in (("p_real", p_real), ("p_identity", p_identity), ("sar_dropout", sar_dropout),
                        ("p_sar", 0.0 if p_sar is None else p_sar)):
            if not 0.0 <= p <= 1.0:
                raise InputError(f"{name}={p} must be a probability in [0, 1].")
        if p_real + p_identity > 1.0:
            raise InputError(f"p_real + p_identity = {p_real + p_identity:g} > 1 leaves no room for synthetic "
                             "clouds; lower one of them (the rest of the draws are synthetic).")
        self.crop, self.seed, self.epoch = crop, seed, 0
        self.p_real, self.p_identity, self.sar_dropout = p_real, p_identity, sar_dropout
        self.real = [i for i, r in enumerate(records) if r.cloudy is not None and not r.clear_input]
        self.p_sar = p_sar
        sar = {i for i, r in enumerate(records) if r.sar is not None}
        # each pool of draws (real clouds, every record) split once into (with SAR, without)
        self._split = {name: ([i for i in pool if i in sar], [i for i in pool if i not in sar])
                       for name, pool in (("real", self.real), ("all", range(len(records))))}
        self.names = [r.name for r in records]
        self.arrays = []
        for r in records:
            d = {"target": normalize_optical(r.target)}
            if r.cloudy is not None:
                d["cloudy"] = normalize_optical(r.cloudy)
            if r.sar is not None:
                d["sar"] = normalize_sar(r.sar)
            self.arrays.append(d)
        self.epoch_size = epoch_size or 4 * len(records)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.epoch_size

    def draw(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
        """One (optical, sar, target, kind) example, full size, in model units."""
        u = rng.random()
        if not self.real:  # no real clouds: identity and synthetic keep their ratio
            u = self.p_real + u * (1.0 - self.p_real)
        if u < self.p_real and self.real:
            d = self.arrays[self._pick("real", rng)]
            optical, kind = d["cloudy"], "real"
        else:
            d = self.arrays[self._pick("all", rng)]
            optical, kind = (d["target"], "identity") if u < self.p_real + self.p_identity else (None, "synthetic")
        target = d["target"]
        sar = d.get("sar")
        if sar is None or rng.random() < self.sar_dropout:
            sar = np.zeros((2, *target.shape[-2:]), dtype=np.float32)
        return optical, sar, target, kind

    def _pick(self, pool: str, rng: np.random.Generator) -> int:
        """A record index from ``pool`` ("real" or "all"): uniform, or with share ``p_sar`` from the records
        with SAR."""
        sar, other = self._split[pool]
        if self.p_sar is not None and sar and other:
            choice = sar if rng.random() < self.p_sar else other
        else:
            choice = self.real if pool == "real" else range(len(self.arrays))
        return choice[int(rng.integers(len(choice)))]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        optical, sar, target, kind = self.draw(rng)
        h, w = target.shape[-2:]
        c = min(self.crop, h, w)
        y, x = int(rng.integers(0, h - c + 1)), int(rng.integers(0, w - c + 1))
        target, sar = target[:, y:y + c, x:x + c], sar[:, y:y + c, x:x + c]
        if kind == "synthetic":
            optical, _ = add_synthetic_clouds(target, rng, shadow=None)
        else:
            optical = optical[:, y:y + c, x:x + c]
        k, flip = int(rng.integers(0, 4)), bool(rng.integers(0, 2))
        return {n: torch.from_numpy(np.ascontiguousarray(dihedral(a, k, flip), dtype=np.float32))
                for n, a in (("optical", optical), ("sar", sar), ("target", target))}
