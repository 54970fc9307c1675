"""SEN12MS-CR data: find and read patches, split them without spatial leakage, and feed training.

Two on-disk layouts are detected automatically by :func:`find_samples`:

- **official** SEN12MS-CR archives (Ebel et al. 2020), e.g.::

      ROIs1158_spring_s1/s1_26/ROIs1158_spring_s1_26_p100.tif
      ROIs1158_spring_s2/s2_26/ROIs1158_spring_s2_26_p100.tif
      ROIs1158_spring_s2_cloudy/s2_cloudy_26/ROIs1158_spring_s2_cloudy_26_p100.tif

  Files are matched by *file name* anywhere below the root (the folder nesting of unpacked archives
  varies), keyed on (region ``ROIs1158_spring``, scene ``26``, patch ``100``).
- **flat** folders ``s1/``, ``s2/``, ``s2_cloudy/`` and optional ``cloudmask/``, ``reference/`` holding
  ``NAME.tif`` files (``shared/data/sen12mscr-samples``; ``shared/data/s2-pairs`` has no ``s1/``). Region,
  scene and patch are parsed from names like ``ROIs1970_fall_139_p839`` or ``ROIs1158_spring_s2_26_p100``;
  any other name (``oriolac_316``) is its own region with an empty scene, i.e. its own split group.

Reading uses rasterio + NumPy only; torch is imported only by :class:`PatchDataset`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cloudrt.errors import InputError
from cloudrt.preprocess import S1_BANDS, S2_BANDS, check_optical, check_sar, normalize_optical, normalize_sar

# ``PatchDataset`` is public too, built on first access by the module __getattr__ (it imports torch).
__all__ = [
    "Sample", "find_samples", "detect_layout", "load_sample", "split_samples", "select_split", "SPLITS",
    "synthetic_cloud_alpha", "add_synthetic_clouds", "fractal_noise", "CLOUD_SPECTRUM",
]

SPLITS = ("train", "val", "test")
FLAT_DIRS = ("s1", "s2", "s2_cloudy", "cloudmask", "reference")

# official file names: ROIs1158_spring_s2_cloudy_26_p100.tif
_OFFICIAL_RE = re.compile(r"^(ROIs\d+_[A-Za-z]+)_(s1|s2|s2_cloudy)_(\d+)_p(\d+)\.tiff?$", re.IGNORECASE)
# flat stems: ROIs1970_fall_139_p839 or ROIs1158_spring_s2_26_p100
_FLAT_RE = re.compile(r"^(ROIs\d+_[A-Za-z]+)_(?:(?:s1|s2|s2_cloudy)_)?(\d+)_p(\d+)$", re.IGNORECASE)


@dataclass(frozen=True)
class Sample:
    """One co-registered patch. Paths that the dataset lacks are ``None``."""

    name: str
    region: str
    scene: str
    patch: str
    s1: Path | None = None
    s2: Path | None = None
    s2_cloudy: Path | None = None
    cloudmask: Path | None = None
    reference: Path | None = None

    @property
    def group(self) -> tuple[str, str]:
        """The split key (region, scene): patches of one scene overlap spatially, so they never split."""
        return (self.region, self.scene)

    @property
    def has_sar(self) -> bool:
        return self.s1 is not None

    @property
    def is_triplet(self) -> bool:
        """S1 + cloudy S2 + clear S2: a full model input with its target."""
        return self.s1 is not None and self.s2 is not None and self.s2_cloudy is not None


# ----------------------------------------------------------------------------------------- discovery
def detect_layout(root: str | Path) -> str:
    """``"flat"`` when ``root`` has an ``s2/`` or ``s2_cloudy/`` folder, else ``"official"``."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"data folder {str(root)!r} does not exist; pass --data with a SEN12MS-CR folder.")
    if (root / "s2").is_dir() or (root / "s2_cloudy").is_dir():
        return "flat"
    return "official"


def find_samples(root: str | Path) -> list[Sample]:
    """All patches under ``root`` (either layout), sorted by name. Raise :class:`InputError` if none.

    A patch is listed when it has a clear (``s2``) or a cloudy (``s2_cloudy``) optical file; check
    :attr:`Sample.is_triplet` / :attr:`Sample.has_sar` for what else it has.
    """
    root = Path(root)
    layout = detect_layout(root)
    samples = _find_flat(root) if layout == "flat" else _find_official(root)
    if not samples and layout == "official":
        flat = sorted(str(d) for d in root.iterdir() if d.is_dir() and detect_layout(d) == "flat")
        if flat:
            raise InputError(
                f"{str(root)!r} holds sample folders {', '.join(flat)}, not patches; "
                "pass one of them as the data folder."
            )
    if not samples:
        raise InputError(
            f"no Sentinel-2 patches found under {str(root)!r}; expected either s2/ and s2_cloudy/ folders of "
            "NAME.tif files, or the official SEN12MS-CR tree (ROIs1158_spring_s2/s2_26/ROIs1158_spring_s2_26_p100.tif)."
        )
    return samples


def _parse_flat_name(stem: str) -> tuple[str, str, str]:
    m = _FLAT_RE.match(stem)
    if m:
        return m.group(1), m.group(2), m.group(3)
    return stem, "", ""


def _find_flat(root: Path) -> list[Sample]:
    paths: dict[str, dict[str, Path]] = {}
    for kind in FLAT_DIRS:
        d = root / kind
        if not d.is_dir():
            continue
        for f in d.iterdir():
            if f.suffix.lower() in (".tif", ".tiff") and f.is_file():
                paths.setdefault(f.stem, {})[kind] = f
    out = []
    for stem in sorted(paths):
        p = paths[stem]
        if "s2" not in p and "s2_cloudy" not in p:
            continue
        region, scene, patch = _parse_flat_name(stem)
        out.append(Sample(name=stem, region=region, scene=scene, patch=patch, **p))
    return out


def _find_official(root: Path) -> list[Sample]:
    paths: dict[tuple[str, str, str], dict[str, Path]] = {}
    for f in root.rglob("ROIs*_p*.tif*"):
        m = _OFFICIAL_RE.match(f.name)
        # files directly in s1/, s2/, s2_cloudy/ ... belong to a flat layout (where s2_cloudy/ may hold
        # *_s2_* names, as in s2-pairs): never mix them into the official index
        if not m or f.parent.name.lower() in FLAT_DIRS or not f.is_file():
            continue
        region, kind, scene, patch = m.group(1), m.group(2).lower(), m.group(3), m.group(4)
        paths.setdefault((region, scene, patch), {})[kind] = f
    out = []
    for (region, scene, patch), p in paths.items():
        if "s2" not in p and "s2_cloudy" not in p:
            continue
        out.append(Sample(name=f"{region}_{scene}_p{patch}", region=region, scene=scene, patch=patch, **p))
    out.sort(key=lambda s: (s.region, int(s.scene), int(s.patch)))
    return out


# ------------------------------------------------------------------------------------------- reading
def _read(path: Path) -> np.ndarray:
    import warnings

    import rasterio

    try:
        with warnings.catch_warnings():  # oriolac_* patches carry no georeferencing; that is fine here
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            with rasterio.open(path) as ds:
                return ds.read()
    except rasterio.errors.RasterioIOError as e:
        raise InputError(f"cannot read {str(path)!r} ({e}); replace the file or remove the patch.") from e


def load_sample(sample: Sample) -> dict[str, np.ndarray]:
    """Read a patch: ``s1`` float32 dB (2,H,W), ``s2`` / ``s2_cloudy`` / ``reference`` DN (13,H,W) in the
    file's dtype (uint16 for SEN12MS-CR), ``cloudmask`` bool (H,W). Missing files are absent keys."""
    out: dict[str, np.ndarray] = {}
    for kind in ("s2", "s2_cloudy", "reference"):
        p = getattr(sample, kind)
        if p is not None:
            a = _read(p)
            check_optical(a)
            out[kind] = a
    if sample.s1 is not None:
        a = _read(sample.s1)
        check_sar(a)
        out["s1"] = a.astype(np.float32, copy=False)
    if sample.cloudmask is not None:
        out["cloudmask"] = _read(sample.cloudmask)[0] > 0
    shapes = {k: v.shape[-2:] for k, v in out.items()}
    if len(set(shapes.values())) > 1:
        raise InputError(
            f"patch {sample.name!r} has rasters of different sizes {shapes}; all modalities must share one grid."
        )
    return out


# -------------------------------------------------------------------------------------------- splits
def split_samples(
    samples: Sequence[Sample], fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0
) -> dict[str, list[Sample]]:
    """Split into ``train``/``val``/``test`` by (region, scene) group, never by patch (METHOD.md, protocol).

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


# ---------------------------------------------------------------------------------- synthetic clouds
# Thick-cloud top-of-atmosphere reflectance relative to B2, measured as the 90th percentile of the fully
# clouded SEN12MS-CR patch oriolac_3968 (low clouds: flat over visible/NIR, lower in B9 water vapour and
# SWIR). B10 (cirrus, 1375 nm) is drawn separately: near zero for low clouds, higher for high/thin ones.
CLOUD_SPECTRUM = np.array(
    [1.00, 1.00, 0.98, 1.02, 1.06, 1.16, 1.22, 1.17, 1.25, 0.63, 0.00, 0.88, 0.66], dtype=np.float32
)
_B10 = S2_BANDS.index("B10")


def _upsample_bilinear(grid: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bilinear interpolation of a (gh, gw) lattice spanning the whole (h, w) image."""
    gh, gw = grid.shape
    y = np.linspace(0, gh - 1, h)
    x = np.linspace(0, gw - 1, w)
    y0 = np.minimum(np.floor(y).astype(int), gh - 2)
    x0 = np.minimum(np.floor(x).astype(int), gw - 2)
    fy = (y - y0)[:, None]
    fx = (x - x0)[None, :]
    a = grid[y0][:, x0]
    b = grid[y0][:, x0 + 1]
    c = grid[y0 + 1][:, x0]
    d = grid[y0 + 1][:, x0 + 1]
    return (a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy


def fractal_noise(
    shape: tuple[int, int], rng: np.random.Generator, base: int = 2, octaves: int = 6, persistence: float = 0.55
) -> np.ndarray:
    """Value noise summed over octaves (lattice ``base * 2**k``, amplitude ``persistence**k``) -> [0, 1]."""
    h, w = shape
    acc = np.zeros((h, w), dtype=np.float64)
    amp = 1.0
    for k in range(octaves):
        g = base * 2**k + 1
        if g > max(h, w):
            break
        acc += amp * _upsample_bilinear(rng.random((g, g)), h, w)
        amp *= persistence
    lo, hi = acc.min(), acc.max()
    return ((acc - lo) / (hi - lo if hi > lo else 1.0)).astype(np.float32)


def synthetic_cloud_alpha(
    shape: tuple[int, int],
    rng: np.random.Generator,
    coverage: float | None = None,
    softness: float = 0.2,
    haze: float | None = None,
    opacity: float | None = None,
) -> np.ndarray:
    """Cloud opacity in [0, 1], (H, W) float32: fractal noise thresholded into a soft alpha.

    ``coverage`` (fraction of pixels with alpha > 0; random in [0.1, 0.8] if None) sets the threshold as a
    noise quantile; ``softness`` the width of the smoothstep edge in noise units (at most half the noise
    range above the threshold, so every cloud has an opaque core); ``opacity`` the peak
    alpha of the thick cloud (random in [0.85, 1] if None); ``haze`` (random in [0, 0.25] with probability
    0.5 if None, else that opacity) adds thin haze everywhere, modulated by a second smooth noise field.
    """
    h, w = shape
    if coverage is None:
        coverage = float(rng.uniform(0.1, 0.8))
    if opacity is None:
        opacity = float(rng.uniform(0.85, 1.0))
    noise = fractal_noise(shape, rng)
    alpha = np.zeros((h, w), dtype=np.float32)
    if coverage > 0:
        thr = float(np.quantile(noise, 1.0 - min(coverage, 1.0)))
        width = max(min(softness, 0.5 * (float(noise.max()) - thr)), 1e-6)  # the core always goes opaque
        t = np.clip((noise - thr) / width, 0.0, 1.0)
        alpha = (t * t * (3.0 - 2.0 * t)).astype(np.float32)  # smoothstep: soft cloud edges
        if coverage >= 1.0:
            alpha = np.maximum(alpha, np.float32(0.5))
        alpha *= np.float32(opacity)
    if haze is None:
        haze = float(rng.uniform(0.0, 0.25)) if rng.random() < 0.5 else 0.0
    if haze > 0:
        hz = haze * (0.5 + 0.5 * fractal_noise(shape, rng, base=1, octaves=3))
        alpha = 1.0 - (1.0 - alpha) * (1.0 - hz.astype(np.float32))
    return np.clip(alpha, 0.0, 1.0).astype(np.float32)


def add_synthetic_clouds(
    clear: np.ndarray,
    rng: np.random.Generator,
    alpha: np.ndarray | None = None,
    brightness: float | None = None,
    cirrus: float | None = None,
    **alpha_kw: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """Lay a synthetic cloud over a clear (13, H, W) image in [0, 1] reflectance units.

    ``cloudy = (1 - alpha) * clear + alpha * cloud`` per band, where ``cloud`` is
    :data:`CLOUD_SPECTRUM` times ``brightness`` (random in [0.45, 0.8] if None), with a mild fractal texture,
    and the B10 cirrus response ``cirrus`` (random in [0.005, 0.08] reflectance if None). Returns
    ``(cloudy float32 clipped to [0, 1], alpha (H, W))``; ``clear`` is not modified.
    """
    clear = np.asarray(clear, dtype=np.float32)
    if clear.ndim != 3 or clear.shape[0] != len(S2_BANDS):
        raise InputError(f"clear image has shape {clear.shape}; expected (13, H, W) in [0, 1] units.")
    shape = clear.shape[-2:]
    if alpha is None:
        alpha = synthetic_cloud_alpha(shape, rng, **alpha_kw)
    if brightness is None:
        brightness = float(rng.uniform(0.45, 0.8))
    if cirrus is None:
        cirrus = float(rng.uniform(0.005, 0.08))
    spectrum = CLOUD_SPECTRUM * np.float32(brightness)
    spectrum[_B10] = cirrus
    texture = 0.9 + 0.2 * fractal_noise(shape, rng, base=4, octaves=4)  # thick cores brighter than edges
    cloud = spectrum[:, None, None] * texture[None]
    a = alpha[None].astype(np.float32)
    cloudy = (1.0 - a) * clear + a * cloud
    return np.clip(cloudy, 0.0, 1.0).astype(np.float32), alpha.astype(np.float32)


# ---------------------------------------------------------------------------------- torch Dataset
def _dihedral(a: np.ndarray, k: int, flip: bool) -> np.ndarray:
    if flip:
        a = a[..., ::-1]
    return np.rot90(a, k, axes=(-2, -1))


class _PatchDatasetImpl:
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
    ``PatchDataset`` is this class mixed into ``torch.utils.data.Dataset``; torch is imported when the
    name is first accessed, never by ``import cloudrt.data``.
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
        import torch

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
            optical, sar, target = (_dihedral(a, k, flip) for a in (optical, sar, target))

        def t(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))

        return {
            "optical": t(optical),
            "sar": t(sar),
            "target": t(target),
            "has_sar": torch.tensor(1.0 if has_sar else 0.0, dtype=torch.float32),
        }


def __getattr__(name: str) -> Any:  # lazy: PatchDataset subclasses torch's Dataset, so build it on access
    if name == "PatchDataset":
        import torch.utils.data

        cls = type(
            "PatchDataset",
            (_PatchDatasetImpl, torch.utils.data.Dataset),
            {"__doc__": _PatchDatasetImpl.__doc__, "__module__": __name__},
        )
        globals()["PatchDataset"] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
