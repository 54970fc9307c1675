"""Pairing of S2 and S1 inputs in a ``cloudrt infer --input-dir`` folder (serial and Ray batches alike).

Rules, in the words of ``--help`` and docs/products.md:

- **GeoTIFF pairs**: subfolders ``s2_cloudy/`` (or ``s2/``, ``optical/``) and ``s1/`` (or ``sar/``) holding
  files of the same name, or one flat folder with names that differ only in an ``S2``/``S2_cloudy`` vs
  ``S1`` token (``T31_S2.tif`` + ``T31_S1.tif``). The output has the optical file's name.
- **Products**: a Sentinel-2 product (``NAME.SAFE`` folder, ``NAME.SAFE.zip`` or ``S2*_MSIL1C_*.zip`` as
  downloaded) or a local STAC Item ``NAME.json``, in the optical subfolder (else in the input folder itself),
  pairs with the SAR GeoTIFF ``NAME.tif`` in the SAR subfolder (``s1/NAME.tif``); the output is ``NAME.tif``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from cloudrt.errors import InputError

OPTICAL_DIRS = ("s2_cloudy", "S2_cloudy", "s2", "S2", "optical")
SAR_DIRS = ("s1", "S1", "sar", "SAR")
RASTER_SUFFIXES = (".tif", ".tiff", ".TIF", ".TIFF")
PRODUCT_RULE = ("Sentinel-2 products (NAME.SAFE, NAME.SAFE.zip, S2*_MSIL1C_*.zip) and STAC Items (NAME.json) "
                "pair with s1/NAME.tif.")
_TOKEN = re.compile(r"(?i)(?:(?<=^)|(?<=[_\-.]))(s2_?cloudy|s2|s1)(?=$|[_\-.])")
_L1C_ZIP = re.compile(r"(?i)s2.*_msil1c_.*\.zip")
_STAC_MAX_BYTES = 16 << 20  # an Item is kilobytes; a bigger .json is something else


def _is_stac_input(p: Path) -> bool:
    """A STAC Item that may hold the 13 bands: not a cloudrt output's own Item (``OUT.json`` beside ``OUT.tif``)."""
    try:
        if p.stat().st_size > _STAC_MAX_BYTES:
            return False
        d = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return (isinstance(d, dict) and d.get("type") == "Feature" and "stac_version" in d
            and "cloudrt:version" not in (d.get("properties") or {}))


def product_name(p: Path) -> str | None:
    """``NAME`` of a Sentinel-2 product or STAC Item in a batch folder (see the module docstring), else None."""
    n, low = p.name, p.name.lower()
    if n.startswith("."):
        return None
    if p.is_dir():
        return n[:-5] if low.endswith(".safe") else None
    if low.endswith(".safe.zip"):
        return n[:-9]
    if _L1C_ZIP.fullmatch(n):
        return n[:-4]
    if low.endswith(".json") and _is_stac_input(p):
        return n[:-5]
    return None


def _rasters(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.is_file() and p.suffix in RASTER_SUFFIXES and not p.name.startswith("."))


def _pair_products(root: Path, sdir: Path | None, sars: dict[str, Path], pairs: list[tuple[str, Path, Path]],
                   unpaired: list[str]) -> None:
    """Pair the products in ``root`` with ``sdir/NAME.tif`` (taken from ``sars``, file name -> path)."""
    for p in sorted(root.iterdir()):
        name = product_name(p)
        if name is None:
            continue
        sar = next((sars.pop(name + suf) for suf in RASTER_SUFFIXES if name + suf in sars), None)
        if sar is None:
            where = sdir / f"{name}.tif" if sdir is not None else f"s1/{name}.tif"
            unpaired.append(f"{p} (no SAR {where})")
        else:
            pairs.append((f"{name}.tif", p, sar))


def find_pairs(input_dir: Path) -> tuple[list[tuple[str, Path, Path]], list[str]]:
    """Pair S2 and S1 inputs in ``input_dir`` -> ([(output name, optical, sar)], [unpaired, with why]).

    See the module docstring for the rules. Two pairs that would write the same output (``X.tif`` and
    ``X.SAFE`` side by side) keep the first and report the second as unpaired.
    """
    if not input_dir.is_dir():
        raise InputError(f"input folder {input_dir} does not exist; pass an existing --input-dir.")
    odir = next((input_dir / n for n in OPTICAL_DIRS if (input_dir / n).is_dir()), None)
    sdir = next((input_dir / n for n in SAR_DIRS if (input_dir / n).is_dir()), None)
    sars = {p.name: p for p in _rasters(sdir)} if sdir is not None else {}
    pairs: list[tuple[str, Path, Path]] = []
    unpaired: list[str] = []
    if odir is not None and sdir is not None:
        for o in _rasters(odir):
            if o.name in sars:
                pairs.append((o.name, o, sars.pop(o.name)))
            else:
                unpaired.append(f"{o} (no {sdir / o.name})")
        _pair_products(odir, sdir, sars, pairs, unpaired)
        unpaired += [f"{s} (no optical {odir / n}, product or STAC Item)" for n, s in sars.items()]
    else:
        opticals: dict[str, Path] = {}
        flat_sars: dict[str, Path] = {}
        for p in _rasters(input_dir):
            m = _TOKEN.search(p.stem)
            if not m:
                continue
            key = (p.stem[: m.start()] + p.stem[m.end():]).lower()
            (flat_sars if m.group(1).lower() == "s1" else opticals)[key] = p
        for key, o in sorted(opticals.items()):
            if key in flat_sars:
                pairs.append((o.name, o, flat_sars.pop(key)))
            else:
                unpaired.append(f"{o} (no matching S1 file)")
        unpaired += [f"{s} (no matching S2 file)" for s in flat_sars.values()]
        _pair_products(input_dir, sdir, sars, pairs, unpaired)
        unpaired += [f"{s} (no optical product or STAC Item {input_dir / Path(n).stem}.*)" for n, s in sars.items()]
    unique: dict[str, tuple[str, Path, Path]] = {}
    for pair in pairs:
        if pair[0] in unique:
            unpaired.append(f"{pair[1]} (its output {pair[0]} is also that of {unique[pair[0]][1]}; rename one)")
        else:
            unique[pair[0]] = pair
    return list(unique.values()), unpaired
