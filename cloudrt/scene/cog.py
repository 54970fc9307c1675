"""Cloud-Optimized GeoTIFF output and validation (GDAL's COG driver through rasterio).

The runtime streams its output into an ordinary tiled GeoTIFF under a temporary name; :func:`to_cog` then
copies it with GDAL's ``COG`` driver (internal tiles, overviews, the IFDs at the start of the file and the
overview data before the full-resolution data, i.e. the layout GDAL marks as ``LAYOUT=COG``) to another
temporary name and renames that into place, so the final name only ever holds a complete COG. The copy
keeps the CRS, transform, nodata, band descriptions and dataset and band tags.

:func:`validate_cog` checks a file the way GDAL's ``validate_cloud_optimized_geotiff`` check does (same
criteria, written from the COG specification): tiled, overviews when larger than one tile, main IFD
first, overview IFDs after it, and the tile data of the smallest overview first and the full resolution
last, with the full-resolution tiles in increasing order.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

from cloudrt.errors import InputError

COG_BLOCKSIZE = 512
"""Internal tile size of COG outputs (GDAL's COG default; a multiple of the model tile is not needed)."""


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp.tif")


def to_cog(src: str | os.PathLike, dst: str | os.PathLike, resampling: str = "average",
           compress: str = "DEFLATE", blocksize: int = COG_BLOCKSIZE, remove_src: bool = False) -> Path:
    """Copy the GeoTIFF ``src`` as a COG to ``dst`` atomically (temporary name, then ``os.replace``).

    ``resampling`` builds the overviews: ``average`` for reflectance, ``nearest`` or ``mode`` for masks
    (class values must not be averaged). Integer data is compressed with DEFLATE and the horizontal
    predictor. With ``remove_src``, ``src`` is deleted once the COG is in place.
    """
    import rasterio
    import rasterio.shutil

    dst = Path(dst)
    tmp = _tmp_name(dst)
    with rasterio.open(src) as ds:
        integer = ds.dtypes[0].startswith(("uint", "int"))
    opts: dict[str, Any] = {
        "COMPRESS": compress, "BLOCKSIZE": blocksize, "OVERVIEW_RESAMPLING": resampling.upper(),
        "RESAMPLING": resampling.upper(), "BIGTIFF": "IF_SAFER", "NUM_THREADS": "ALL_CPUS",
    }
    if compress.upper() in ("DEFLATE", "LZW", "ZSTD"):
        opts["PREDICTOR"] = "2" if integer else "YES"  # YES: the driver picks 3 (floating point) for floats
    try:
        rasterio.shutil.copy(str(src), str(tmp), driver="COG", **opts)
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if remove_src:
        Path(src).unlink(missing_ok=True)
    return dst


def _offset(ds: Any, key: str) -> int | None:
    v = ds.get_tag_item(key, "TIFF", bidx=1)
    return int(v) if v not in (None, "") else None


def validate_cog(path: str | os.PathLike) -> list[str]:
    """Problems that keep ``path`` from being a valid COG; an empty list means valid."""
    import rasterio

    try:
        ds = rasterio.open(path)
    except rasterio.errors.RasterioIOError as e:
        return [f"cannot be opened ({str(e).splitlines()[0]})"]
    problems: list[str] = []
    with ds:
        if ds.driver != "GTiff":
            return [f"is a {ds.driver} file, not a GeoTIFF"]
        if ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") != "COG":
            problems.append("GDAL does not report LAYOUT=COG (not written with the COG layout)")
        bh, bw = ds.block_shapes[0]
        if bw == ds.width and (ds.width > COG_BLOCKSIZE or bh < ds.height):  # strips, not tiles
            problems.append(f"not internally tiled (blocks of {bw}x{bh})")
        levels = ds.overviews(1)
        if max(ds.width, ds.height) > max(bw, bh) and not levels:
            problems.append("no overviews although the image is larger than one tile")
        main_ifd, main_data = _offset(ds, "IFD_OFFSET"), _offset(ds, "BLOCK_OFFSET_0_0")
        nby, nbx = -(-ds.height // bh), -(-ds.width // bw)
        last = _offset(ds, f"BLOCK_OFFSET_{nbx - 1}_{nby - 1}")
        if main_data is not None and last is not None and last < main_data:
            problems.append("full-resolution tiles are not in increasing order")
    ovr: list[tuple[int | None, int | None]] = []
    for lvl in range(len(levels)):
        with rasterio.open(path, overview_level=lvl) as o:
            ovr.append((_offset(o, "IFD_OFFSET"), _offset(o, "BLOCK_OFFSET_0_0")))
    ifds = [main_ifd] + [i for i, _ in ovr]
    if None not in ifds and ifds != sorted(ifds):
        problems.append("IFDs are not in order (the main IFD must come first, then the overviews')")
    data = [d for _, d in reversed(ovr)] + [main_data]  # smallest overview first, full resolution last
    if None not in data and data != sorted(data):
        problems.append("tile data is not ordered from the smallest overview to the full resolution")
    if None not in ifds and None not in data and max(ifds) > min(data):
        problems.append("an IFD lies after the start of the tile data")
    return problems


def check_cog(path: str | os.PathLike) -> None:
    """Raise :class:`InputError` with one line listing what keeps ``path`` from being a valid COG."""
    problems = validate_cog(path)
    if problems:
        raise InputError(f"{path} is not a valid Cloud-Optimized GeoTIFF: {'; '.join(problems)}.")
