"""Sentinel-2 L1C SAFE products as a 13-band, 10 m, windowed reader (GDAL's SENTINEL2 driver via rasterio).

A product can be given as its ``.SAFE`` folder, the ``.zip`` it was downloaded as, or its ``MTD_MSIL1C.xml``.
GDAL's SENTINEL2 driver exposes it as subdatasets, one per resolution group, named like
``SENTINEL2_L1C:<path>/MTD_MSIL1C.xml:10m:EPSG_32634`` (10 m: B2,B3,B4,B8; 20 m: B5,B6,B7,B8A,B11,B12;
60 m: B1,B9,B10), each band tagged with ``BANDNAME`` and, from processing baseline 04.00 on, with
``RADIO_ADD_OFFSET`` (-1000). The driver reports the offset but does not apply it.

:class:`SafeReader` behaves like the subset of a rasterio dataset the runtime streams from (``width``,
``height``, ``crs``, ``transform``, ``count``, ``dtypes``, ``descriptions``, ``nodata``, ``profile``,
``read(window=...)``): it reads any window of the 10 m grid as ``(13, h, w)`` uint16 in the band order
B1..B12 with B8A after B8, and in the SEN12MS-CR convention (top-of-atmosphere reflectance x 10000, no
offset). Only the JPEG 2000 tiles the requested window touches are decoded (and cached for the next
windows, see :attr:`SafeReader.cache_bytes`), so a 10980 x 10980 granule streams within the runtime's
memory bound.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from cloudrt.contract import S2_BANDS
from cloudrt.errors import InputError

BASELINE_OFFSET = -1000
"""ESA's radiometric offset from processing baseline 04.00 on (L1C: reflectance = (DN + offset) / 10000)."""

DEFAULT_RESAMPLING = "bilinear"
NODATA = 0
"""L1C DN 0 is the product's NODATA special value; it stays 0 after the offset is applied."""

_SUBDS = re.compile(r"^SENTINEL2_L1C:(?P<path>.+):(?P<res>10m|20m|60m):EPSG_(?P<epsg>\d+)$")


def is_safe_path(path: str | os.PathLike) -> bool:
    """True if ``path`` names a Sentinel-2 product: a ``*.SAFE`` folder, a ``*.SAFE.zip``/``S2*.zip``, or
    an ``MTD_MSIL1C.xml`` / ``MTD_MSIL2A.xml`` file."""
    p = Path(path)
    name = p.name.upper()
    if p.is_dir():
        return name.endswith(".SAFE") or any(p.glob("MTD_MSI*.xml"))
    return name.startswith("MTD_MSI") and name.endswith(".XML") or (
        name.endswith(".ZIP") and (name.endswith(".SAFE.ZIP") or name.startswith("S2"))
    )


def _metadata_path(path: str | os.PathLike) -> str:
    """The path GDAL's SENTINEL2 driver opens: the folder's MTD_MSI*.xml, or the .zip / .xml itself."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"Sentinel-2 product {p} does not exist; check the path.")
    if p.is_dir():
        found = sorted(p.glob("MTD_MSI*.xml"))
        if not found:
            raise InputError(
                f"{p} is a folder without an MTD_MSIL1C.xml; pass a Sentinel-2 L1C .SAFE folder, its .zip, "
                "or a 13-band GeoTIFF."
            )
        return str(found[0])
    return str(p)


def _group_subdatasets(path: str, meta: Any) -> dict[str, str]:
    """Map '10m'/'20m'/'60m' to subdataset names; InputError for L2A, several UTM zones, or missing groups."""
    names = list(meta.subdatasets or [])
    if any(n.startswith("SENTINEL2_L2A") for n in names) or meta.tags().get("PROCESSING_LEVEL") == "Level-2A":
        raise InputError(
            f"{path} is a Level-2A product; the model expects Level-1C top-of-atmosphere data (13 bands, "
            "including B10). Pass the L1C product of the same acquisition."
        )
    groups: dict[str, list[tuple[str, str]]] = {}
    for n in names:
        m = _SUBDS.match(n)
        if m:
            groups.setdefault(m["res"], []).append((m["epsg"], n))
    zones = {e for v in groups.values() for e, _ in v}
    if len(zones) > 1:
        raise InputError(
            f"{path} spans several UTM zones (EPSG {', '.join(sorted(zones))}); pass a single-tile L1C product "
            "(products since 2016 hold one tile) or a 13-band GeoTIFF of one tile."
        )
    missing = [r for r in ("10m", "20m", "60m") if r not in groups]
    if missing:
        raise InputError(
            f"{path} has no {', '.join(missing)} band group(s) readable by GDAL's SENTINEL2 driver; the "
            "product is incomplete (re-download it) or not a Sentinel-2 L1C product."
        )
    return {r: v[0][1] for r, v in groups.items()}


def _baseline(tags: dict[str, str]) -> float | None:
    try:
        return float(tags.get("PROCESSING_BASELINE", ""))
    except ValueError:
        return None


def band_offset(band_tags: dict[str, str], baseline: float | None) -> int:
    """The DN offset to add to a band: its ``RADIO_ADD_OFFSET`` tag, else -1000 for baseline >= 04.00, else 0."""
    if "RADIO_ADD_OFFSET" in band_tags:
        return int(round(float(band_tags["RADIO_ADD_OFFSET"])))
    return BASELINE_OFFSET if baseline is not None and baseline >= 4.0 else 0


def to_sen12mscr(dn: np.ndarray, offset: np.ndarray | int) -> np.ndarray:
    """L1C DN (any baseline) -> SEN12MS-CR convention: ``DN + RADIO_ADD_OFFSET`` as uint16.

    NODATA (DN 0) stays 0; valid pixels whose offset value would be <= 0 (possible over very dark water)
    are clipped to 1 so they stay valid and are not confused with NODATA; 65535 (saturated) stays 65535.
    """
    x = dn.astype(np.int32)
    off = np.asarray(offset, dtype=np.int32).reshape(-1, *([1] * (dn.ndim - 1))) if np.ndim(offset) else offset
    y = np.clip(x + off, 1, 65535)
    y = np.where(x == NODATA, NODATA, np.where(x == 65535, 65535, y))
    return y.astype(np.uint16)


def _file_band(name: str) -> str:
    """'B4' -> 'B04', 'B8A' -> 'B8A': the band as spelled in the product's file names."""
    return name if name.endswith("A") or len(name) == 3 else f"B0{name[1:]}"


def _check_band_files(path: str, group: Any) -> None:
    """InputError naming the bands of a resolution group whose JPEG 2000 file is missing.

    GDAL's SENTINEL2 driver only warns about a missing band file and then reads it as zeros; the files it
    did find are the group's ``files``.
    """
    names = [Path(f).name.upper() for f in group.files]
    missing = [
        group.tags(i).get("BANDNAME", str(i)) for i in range(1, group.count + 1)
        if not any(n.endswith(f"_{_file_band(group.tags(i).get('BANDNAME', ''))}.JP2") for n in names)
    ]
    if missing:
        raise InputError(
            f"Sentinel-2 product {path} lacks the image file(s) of band(s) {', '.join(missing)}; the product is "
            "incomplete: re-download it."
        )


class BandStack:
    """Thirteen single bands (any files, any resolutions) seen as one 13-band uint16 raster on a base grid.

    Subclasses open the sources and call :meth:`_set_stack`; :meth:`read` applies each band's DN offset
    with :func:`to_sen12mscr`. The object mimics the parts of a rasterio dataset the runtime uses.
    """

    name: str
    _handles: list[Any]

    def _set_stack(self, base: Any, bands: list[tuple[Any, int, int]]) -> None:
        """Adopt ``base``'s grid and the ``(dataset, band index, DN offset)`` of the 13 bands in model order."""
        self._bands = [(src, i) for src, i, _ in bands]
        self.offsets = np.array([o for _, _, o in bands], dtype=np.int32)
        self.width, self.height = base.width, base.height
        self.crs, self.transform = base.crs, base.transform
        self.bounds = base.bounds
        self.res = base.res
        self.count = len(S2_BANDS)
        self.dtypes = ("uint16",) * self.count
        self.nodata = float(NODATA)
        self.nodatavals = (self.nodata,) * self.count
        self.descriptions = S2_BANDS
        self.gcps = ([], None)
        self.shape = (self.height, self.width)

    @property
    def profile(self) -> dict[str, Any]:
        """A rasterio-style profile of the 13-band, uint16 view."""
        return {"driver": "VRT", "width": self.width, "height": self.height, "count": self.count,
                "dtype": "uint16", "crs": self.crs, "transform": self.transform, "nodata": self.nodata}

    def read(self, indexes: int | list[int] | None = None, window: Any = None, **kwargs: Any) -> np.ndarray:
        """Bands (default all 13) of ``window`` (default the whole grid) as uint16, offset applied."""
        if kwargs:
            raise TypeError(f"{type(self).__name__}.read does not support {', '.join(kwargs)}")
        import rasterio
        from rasterio.windows import Window

        win = window if window is not None else Window(0, 0, self.width, self.height)
        single = isinstance(indexes, int)
        idx = [indexes] if single else list(indexes or range(1, self.count + 1))
        out = np.empty((len(idx), int(win.height), int(win.width)), dtype=np.uint16)
        # One read per dataset (resolution group) for all its bands: a WarpedVRT warps every band of a block
        # at once, so band-by-band reads would warp (and fetch the JPEG 2000 tiles of) the block once per band.
        by_src: dict[int, tuple[Any, list[tuple[int, int, int]]]] = {}
        for k, b in enumerate(idx):
            src, i = self._bands[b - 1]
            by_src.setdefault(id(src), (src, []))[1].append((k, b, i))
        for src, members in by_src.values():
            try:
                dn = src.read([i for _, _, i in members], window=win)
            except (rasterio.errors.RasterioIOError, rasterio.errors.RasterioError) as e:
                names = ", ".join(S2_BANDS[b - 1] for _, b, _ in members)
                raise InputError(
                    f"band(s) {names} of {self.name} cannot be decoded "
                    f"({str(e).splitlines()[0]}); the file is truncated or corrupt: re-download it."
                ) from e
            for (k, b, _), band in zip(members, dn, strict=True):
                out[k] = to_sen12mscr(band, int(self.offsets[b - 1]))
        return out[0] if single else out

    def close(self) -> None:
        """Close every dataset this reader opened (warped views first)."""
        for h in reversed(self._handles):
            h.close()
        self._handles = []

    @property
    def closed(self) -> bool:
        return not self._handles

    def __enter__(self) -> BandStack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SafeReader(BandStack):
    """The 13 L1C bands of a SAFE product on its 10 m UTM grid, read by windows.

    20 m and 60 m bands are resampled onto the 10 m grid by a GDAL ``WarpedVRT`` (``resampling``, default
    bilinear): bilinear never overshoots the range of the four neighbouring samples, so it cannot produce
    negative or wrapped uint16 values and adds no ringing next to bright cloud edges as cubic or Lanczos
    do, while being smoother than nearest neighbour. Pass ``resampling="nearest"`` to replicate 20/60 m
    pixels instead (Earth Engine's default, with which SEN12MS-CR patches were exported at 10 m).
    NODATA (DN 0) pixels are excluded from the interpolation. Reads are window-sized: the warper computes
    only the requested window (from the source pixels it touches), so a granule streams with bounded memory
    and any tiling of the grid gives the same pixels as reading it whole.

    Decoding: GDAL's JP2OpenJPEG driver decodes whole JPEG 2000 tiles (ESA tiles the bands 1024 x 1024),
    only those a window touches, and keeps them in GDAL's block cache. :attr:`cache_bytes` is one row of
    tiles of all 13 bands; the runtime grows the cache by that much while it streams a product
    (:func:`cloudrt.scene.io.gdal_env`), so consecutive windows reuse the decoded tiles instead of decoding
    them again. Each resolution group is read in one call for all its bands (see :meth:`BandStack.read`).
    """

    def __init__(self, path: str | os.PathLike, resampling: str = DEFAULT_RESAMPLING) -> None:
        import rasterio
        from rasterio.enums import Resampling
        from rasterio.vrt import WarpedVRT

        self.name = str(path)
        meta_path = _metadata_path(path)
        self._handles: list[Any] = []
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
                meta = rasterio.open(meta_path)
        except (rasterio.errors.RasterioIOError, rasterio.errors.RasterioError, OSError) as e:
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise InputError(
                f"Sentinel-2 product {path} cannot be opened by GDAL's SENTINEL2 driver ({reason}); pass a "
                "complete L1C .SAFE folder, its .zip, or its MTD_MSIL1C.xml."
            ) from e
        try:
            if meta.driver != "SENTINEL2":
                raise InputError(
                    f"{path} is not a Sentinel-2 product (GDAL driver {meta.driver}); pass an L1C .SAFE folder, "
                    "its .zip or MTD_MSIL1C.xml, or a 13-band GeoTIFF."
                )
            self.product_tags = dict(meta.tags())
            groups = _group_subdatasets(self.name, meta)
        finally:
            meta.close()
        self.baseline = _baseline(self.product_tags)
        try:
            resamp = Resampling[resampling]
        except KeyError as e:
            raise InputError(f"unknown resampling {resampling!r}; use bilinear, cubic or nearest.") from e
        self.resampling = resampling

        # (dataset, band index) for each of the 13 bands in model order, plus the offsets.
        by_name: dict[str, tuple[Any, int, int]] = {}
        jp2_files: list[str] = []
        try:
            base = rasterio.open(groups["10m"])
            self._handles.append(base)
            for res in ("10m", "20m", "60m"):
                src = base if res == "10m" else rasterio.open(groups[res])
                _check_band_files(self.name, src)
                jp2_files += [f for f in src.files if f.lower().endswith(".jp2")]
                if src is not base:  # onto the 10 m grid
                    self._handles.append(src)
                    src = WarpedVRT(src, crs=base.crs, transform=base.transform, width=base.width,
                                    height=base.height, resampling=resamp, src_nodata=NODATA, nodata=NODATA)
                    self._handles.append(src)
                for i in range(1, src.count + 1):
                    tags = src.tags(i)
                    by_name[tags.get("BANDNAME", "")] = (src, i, band_offset(tags, self.baseline))
        except (rasterio.errors.RasterioIOError, rasterio.errors.RasterioError) as e:
            self.close()
            raise InputError(
                f"Sentinel-2 product {path} has unreadable band files ({str(e).splitlines()[0]}); re-download it."
            ) from e
        missing = [b for b in S2_BANDS if b not in by_name]
        if missing:
            self.close()
            raise InputError(
                f"Sentinel-2 product {path} lacks band(s) {', '.join(missing)}; the model needs all 13 L1C bands."
            )
        self._set_stack(base, [by_name[b] for b in S2_BANDS])
        self.cache_bytes = self._tile_row_bytes(jp2_files)

    @staticmethod
    def _tile_row_bytes(files: list[str]) -> int:
        """Bytes of one row of JPEG 2000 tiles across all ``files`` (whole tiles, as GDAL caches them).

        JP2OpenJPEG decodes and caches whole tiles (its blocks); the runtime reads the 10 m grid top to
        bottom in windows of a few hundred rows, so with one tile row of every band in GDAL's block cache
        each tile is decoded once per pass instead of once per window that touches it (4x for 1024-row 10 m
        tiles and 256-row windows, 8x at 20 m, 24x at 60 m). For a 10980 x 10980 granule with ESA's
        1024 x 1024 tiles: 4 x 11 + 6 x 6 + 3 x 2 tiles of 2 MiB = 172 MiB.
        """
        import rasterio

        total = 0
        for f in files:
            try:
                with rasterio.open(f) as ds:
                    by, bx = ds.block_shapes[0]
                    total += -(-ds.width // bx) * bx * by * np.dtype(ds.dtypes[0]).itemsize
            except rasterio.errors.RasterioError:  # a broken band file: reading it says so, naming the band
                continue
        return total

    def tags(self, bidx: int = 0) -> dict[str, str]:
        """Product tags plus what this reader did (offset applied, resampling, convention)."""
        if bidx:
            return {"BANDNAME": S2_BANDS[bidx - 1], "RADIO_ADD_OFFSET_APPLIED": str(int(self.offsets[bidx - 1]))}
        return {**{f"S2_{k}": v for k, v in self.product_tags.items()}, **self.convention_tags()}

    def convention_tags(self) -> dict[str, str]:
        """Tags to record on outputs: the value convention and how the SAFE was turned into it."""
        offs = sorted(set(int(o) for o in self.offsets))
        return {
            "CLOUDRT_OPTICAL_CONVENTION": "SEN12MS-CR: TOA reflectance x 10000, uint16, no offset, 0 = nodata",
            "CLOUDRT_SOURCE_PRODUCT": Path(self.name).name,
            "CLOUDRT_RADIO_ADD_OFFSET_APPLIED": ",".join(str(o) for o in offs),
            "CLOUDRT_RESAMPLING_20M_60M": self.resampling,
        }


def open_safe(path: str | os.PathLike, resampling: str = DEFAULT_RESAMPLING) -> SafeReader:
    """Open a Sentinel-2 L1C product (folder, .zip or MTD_MSIL1C.xml) as a :class:`SafeReader`."""
    return SafeReader(path, resampling=resampling)
