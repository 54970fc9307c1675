"""SEN12MS-CR data: find and read patches, split them without spatial leakage, and feed training.

Two on-disk layouts are detected automatically by :func:`find_samples`:

- **official** SEN12MS-CR archives (Ebel et al. 2020), e.g.::

      ROIs1158_spring_s1/s1_26/ROIs1158_spring_s1_26_p100.tif
      ROIs1158_spring_s2/s2_26/ROIs1158_spring_s2_26_p100.tif
      ROIs1158_spring_s2_cloudy/s2_cloudy_26/ROIs1158_spring_s2_cloudy_26_p100.tif

  Files are matched by *file name* anywhere below the root (the folder nesting of unpacked archives
  varies), keyed on (region ``ROIs1158_spring``, scene ``26``, patch ``100``).
- **flat** folders ``s1/``, ``s2/``, ``s2_cloudy/`` and optional ``cloudmask/``, ``reference/`` holding
  ``NAME.tif`` files (e.g. a ``sen12mscr-samples`` folder; an S2-only ``s2-pairs`` folder has no ``s1/``). Region,
  scene and patch are parsed from names like ``ROIs1970_fall_139_p839`` or ``ROIs1158_spring_s2_26_p100``;
  any other name (``oriolac_316``) is its own region with an empty scene, i.e. its own split group.

Reading uses rasterio + NumPy only. Splits are :mod:`cloudrt.train.splits`, synthetic clouds
:mod:`cloudrt.train.synthetic`, the torch Dataset :mod:`cloudrt.train.dataset`.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cloudrt.errors import InputError
from cloudrt.preprocess.normalize import check_optical, check_sar

__all__ = ["Sample", "find_samples", "detect_layout", "load_sample", "FLAT_DIRS"]

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


def read_raster(path: Path) -> np.ndarray:
    """All bands of a raster file as an array; one-line InputError if it cannot be read."""
    # rasterio is imported here, not at module top: cloudrt.train.loop imports this module, and training from a
    # packed .npz (scripts/gpu_train.py) must run on lent GPU hosts that have no rasterio
    import rasterio
    import rasterio.errors

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
            a = read_raster(p)
            check_optical(a)
            out[kind] = a
    if sample.s1 is not None:
        a = read_raster(sample.s1)
        check_sar(a)
        out["s1"] = a.astype(np.float32, copy=False)
    if sample.cloudmask is not None:
        out["cloudmask"] = read_raster(sample.cloudmask)[0] > 0
    shapes = {k: v.shape[-2:] for k, v in out.items()}
    if len(set(shapes.values())) > 1:
        raise InputError(
            f"patch {sample.name!r} has rasters of different sizes {shapes}; all modalities must share one grid."
        )
    return out
