"""GeoTIFF input/output for the runtime (rasterio; no torch).

- :func:`open_optical` / :func:`open_sar` open and validate a Sentinel-2 (13 bands) / Sentinel-1 (2 bands)
  raster, turning every failure into one-line :class:`~cloudrt.errors.InputError`.
- :func:`match_grids` refuses S1/S2 on different grids (or not overlapping) and, with ``align=True``,
  reprojects S1 onto the S2 grid lazily (a ``WarpedVRT``, read by windows like the files).
- :func:`atomic_output` gives a temporary name in the output's directory and renames it into place only
  when writing finished: an interrupted or failed run never leaves a partial file under the final name.
- :func:`output_profile` is the profile of the outputs: tiled (256 x 256), compressed GeoTIFF (default
  deflate level 1 with the horizontal predictor; :data:`COMPRESSIONS`) with the input's size, CRS, transform
  and nodata; no georeferencing when the input has none.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from cloudrt.contract import S1_BANDS, S2_BANDS, SUPPORTED_DTYPES
from cloudrt.errors import InputError

# rasterio (and affine) are imported inside the functions that open, read or write files, not here: the array
# path (Runtime.predict, the scene driver, tiling, sinks and sources) must import and run without rasterio
# installed (e.g. a GPU host with torch and NumPy only).

BLOCK = 256  # output GeoTIFF tile size; the runtime writes whole rows of tiles at a time
_SUPPORTED_NAMES = tuple(np.dtype(t).name for t in SUPPORTED_DTYPES)


def _open(path: str | os.PathLike, what: str) -> Any:
    import rasterio
    import rasterio.errors

    p = Path(path)
    if not p.exists():
        raise InputError(f"{what} file {p} does not exist; check the path.")
    if p.is_dir():
        raise InputError(f"{what} path {p} is a directory; pass a GeoTIFF file (or, for S2, a Sentinel-2 L1C "
                         ".SAFE folder).")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            return rasterio.open(p)
    except (rasterio.errors.RasterioIOError, rasterio.errors.RasterioError, OSError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InputError(
            f"{what} file {p} cannot be read as a raster ({reason}); pass a readable GeoTIFF."
        ) from e


def _check_dtype(ds: Any, what: str) -> None:
    dt = ds.dtypes[0]
    if dt not in _SUPPORTED_NAMES or len(set(ds.dtypes)) != 1:
        raise InputError(
            f"{what} file {ds.name} has unsupported data type {','.join(sorted(set(ds.dtypes)))}; expected "
            f"one of {', '.join(_SUPPORTED_NAMES)} (S2 L1C is uint16). Convert it, e.g. gdal_translate -ot UInt16."
        )


def open_optical(path: str | os.PathLike) -> Any:
    """Open a Sentinel-2 L1C raster: 13 bands (B1..B12 with B8A) of a supported dtype, else InputError.

    A Sentinel-2 L1C product (``.SAFE`` folder, its ``.zip`` or ``MTD_MSIL1C.xml``) opens as a
    :class:`~cloudrt.scene.safe.SafeReader`, a local STAC Item (``.json``) with the 13 bands as assets as a
    :class:`~cloudrt.scene.stac.StacItemReader`: both read like a 13-band uint16 raster on the 10 m grid.
    """
    from cloudrt.scene.safe import SafeReader, is_safe_path

    if Path(path).exists() and is_safe_path(path):
        return SafeReader(path)
    if Path(path).suffix.lower() == ".json" and Path(path).is_file():
        from cloudrt.scene.stac import StacItemReader

        return StacItemReader(path)
    ds = _open(path, "optical (S2)")
    try:
        if ds.count != len(S2_BANDS):
            raise InputError(
                f"optical (S2) file {ds.name} has {ds.count} band{'s' if ds.count != 1 else ''}; expected 13 "
                f"Sentinel-2 L1C bands ({','.join(S2_BANDS)}). Pass the full 13-band L1C stack."
            )
        _check_dtype(ds, "optical (S2)")
    except BaseException:
        ds.close()
        raise
    return ds


def open_sar(path: str | os.PathLike) -> Any:
    """Open a Sentinel-1 raster: 2 bands (VV, VH) sigma0 in dB of a supported dtype, else InputError."""
    ds = _open(path, "SAR (S1)")
    try:
        if ds.count != len(S1_BANDS):
            raise InputError(
                f"SAR (S1) file {ds.name} has {ds.count} band{'s' if ds.count != 1 else ''}; expected 2 "
                "Sentinel-1 bands (VV, VH, sigma0 in dB). Pass a 2-band VV/VH stack."
            )
        _check_dtype(ds, "SAR (S1)")
    except BaseException:
        ds.close()
        raise
    return ds


def is_georeferenced(ds: Any) -> bool:
    """True if the dataset has a CRS, a non-identity geotransform, or GCPs."""
    from affine import Affine

    gcps = ds.gcps[0] if ds.gcps else []
    return ds.crs is not None or ds.transform != Affine.identity() or bool(gcps)


def _same_grid(a: Any, b: Any) -> bool:
    if (a.width, a.height) != (b.width, b.height) or a.crs != b.crs:
        return False
    tol = 1e-3 * max(abs(a.transform.a), abs(a.transform.e), 1e-12)  # a thousandth of a pixel
    return a.transform.almost_equals(b.transform, precision=tol)


def grid_difference(optical: Any, sar: Any) -> str:
    """How the S1 grid differs from the S2 grid, in words: CRS, resolution, origin offset, size."""
    parts = []
    if optical.crs != sar.crs:
        parts.append(f"CRS: S2 {optical.crs}, S1 {sar.crs}")
    to, ts = optical.transform, sar.transform
    unit = "m" if optical.crs is None or optical.crs.is_projected else "deg"
    if not np.allclose((to.a, to.e, to.b, to.d), (ts.a, ts.e, ts.b, ts.d), rtol=1e-6, atol=1e-12):
        parts.append(f"resolution: S2 {abs(to.a):g} x {abs(to.e):g} {unit}, S1 {abs(ts.a):g} x {abs(ts.e):g} "
                     f"{unit if optical.crs == sar.crs else 'S1 units'}")
    dx, dy = ts.c - to.c, ts.f - to.f
    if optical.crs == sar.crs and (abs(dx) > 1e-3 * abs(to.a) or abs(dy) > 1e-3 * abs(to.e)):
        parts.append(f"S1 origin offset by {dx:+g} {unit} east, {dy:+g} {unit} north = "
                     f"{dx / to.a:+.2f} columns, {dy / to.e:+.2f} rows of S2 pixels")
    if (optical.width, optical.height) != (sar.width, sar.height):
        parts.append(f"size: S2 {optical.width}x{optical.height}, S1 {sar.width}x{sar.height}")
    return "; ".join(parts) or "transforms differ by less than a thousandth of a pixel in a rotation term"


def match_grids(optical: Any, sar: Any, align: bool = False) -> Any:
    """Return a dataset to read SAR from on the optical grid; InputError if the grids differ or are apart.

    Without ``align``, S1 must have exactly the S2 grid (size, CRS, transform). With ``align``, S1 is
    reprojected onto the S2 grid on the fly (bilinear; areas outside S1 become NaN, i.e. invalid).
    """
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT
    from rasterio.warp import transform_bounds

    geo_o, geo_s = is_georeferenced(optical), is_georeferenced(sar)
    if not geo_o and not geo_s:
        if (optical.width, optical.height) != (sar.width, sar.height):
            raise InputError(
                f"S1 ({sar.width}x{sar.height}) and S2 ({optical.width}x{optical.height}) differ in size and "
                "carry no georeferencing to align them; crop both to the same pixel grid."
            )
        return sar
    if geo_o != geo_s:
        which, other = ("S2", "S1") if geo_o else ("S1", "S2")
        raise InputError(
            f"{which} is georeferenced but {other} is not, so their grids cannot be matched; "
            f"georeference {other} (or strip both)."
        )
    if _same_grid(optical, sar):
        return sar
    if optical.crs is None or sar.crs is None:
        raise InputError("S1 and S2 grids differ and one has no CRS; resample both to the same grid first.")
    try:
        sb = transform_bounds(sar.crs, optical.crs, *sar.bounds, densify_pts=21)
    except Exception as e:  # noqa: BLE001 - any PROJ failure means no usable overlap
        raise InputError(f"S1 bounds cannot be transformed into the S2 CRS ({e}); check both CRSs.") from e
    ob = optical.bounds
    overlap = min(ob.right, sb[2]) - max(ob.left, sb[0]) > 0 and min(ob.top, sb[3]) - max(ob.bottom, sb[1]) > 0
    if not overlap:
        raise InputError(
            f"S1 {sar.name} and S2 {optical.name} do not overlap (S2 bounds {tuple(round(v, 1) for v in ob)}, "
            f"S1 bounds in the S2 CRS {tuple(round(v, 1) for v in sb)}); pass an S1 scene that covers the S2 one."
        )
    if not align:
        raise InputError(
            f"S1 and S2 are on different grids ({grid_difference(optical, sar)}); pass --align to reproject S1 "
            "onto the S2 grid."
        )
    return WarpedVRT(
        sar, crs=optical.crs, transform=optical.transform, width=optical.width, height=optical.height,
        resampling=Resampling.bilinear, dtype="float32", nodata=float("nan"),
        src_nodata=sar.nodata,
    )


def open_writer(path: str | os.PathLike, profile: dict[str, Any]) -> Any:
    """``rasterio.open(path, "w", **profile)`` without the warning for rasters that have no georeferencing."""
    import rasterio
    import rasterio.errors

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        return rasterio.open(path, "w", **profile)


def read_rows(ds: Any, r0: int, r1: int, c0: int = 0, c1: int | None = None) -> np.ndarray:
    """All bands of rows ``[r0, r1)`` and columns ``[c0, c1)`` (default: the full width), read as one
    window, so the buffer is ``O(c1 - c0)``, not ``O(width)``."""
    import rasterio.errors
    from rasterio.windows import Window

    c1 = ds.width if c1 is None else c1
    try:
        return ds.read(window=Window(c0, r0, c1 - c0, r1 - r0))
    except rasterio.errors.RasterioError as e:  # a truncated or corrupt file fails only when its blocks are read
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InputError(
            f"{ds.name} cannot be read at rows {r0}-{r1} ({reason}); the file is truncated or corrupt: "
            "re-create or re-download it."
        ) from e


GDAL_CACHE_MB = 64  # enough for the current read windows and block-aligned writes
"""GDAL block cache (MB) while the runtime streams a scene (GDAL's own default is 5 % of RAM, which makes
the RSS grow with the rows read); a ``GDAL_CACHEMAX`` environment variable set by the user wins."""


def gdal_env(extra_bytes: int = 0) -> Any:
    """``rasterio.Env`` capping GDAL's block cache to :data:`GDAL_CACHE_MB` (plus ``extra_bytes``, what a
    source needs cached, e.g. :attr:`cloudrt.scene.safe.SafeReader.cache_bytes`) unless ``GDAL_CACHEMAX`` is
    set."""
    import rasterio

    if os.environ.get("GDAL_CACHEMAX"):
        return rasterio.Env()
    # rasterio hands the number to GDAL as bytes
    return rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB * 2**20 + max(0, int(extra_bytes)))


def band_descriptions(ds: Any, default: tuple[str, ...]) -> tuple[str, ...]:
    """The input's band descriptions, or ``default`` names when it has none."""
    desc = tuple(ds.descriptions or ())
    if len(desc) == len(default) and any(desc):
        return tuple(d or n for d, n in zip(desc, default, strict=True))
    return default


COMPRESSIONS: dict[str, tuple[int, int] | None] = {"deflate": (1, 9), "zstd": (1, 22), "lzw": None, "none": None}
"""Output codecs and their level ranges (None: the codec takes no level). See benchmarks/RESULTS.md,
"Output codec": deflate level 1 + predictor is the default (every TIFF reader opens it); zstd level 1 writes
about 1.5x faster at the same size but needs GDAL >= 2.3 built with zstd downstream."""
DEFAULT_COMPRESS = "deflate"
DEFAULT_LEVEL = {"deflate": 1, "zstd": 1}  # the fastest levels: higher ones cost 3-5x the time for 2-6 %


def check_compression(compress: str, level: int | None = None) -> tuple[str, int | None]:
    """``(codec, level)`` normalized (lower-case, default level), or InputError naming the allowed values."""
    c = str(compress).lower()
    if c not in COMPRESSIONS:
        raise InputError(f"unknown compression {compress!r}; use one of {', '.join(COMPRESSIONS)}.")
    rng = COMPRESSIONS[c]
    if rng is None:
        if level is not None:
            raise InputError(f"--compress {c} takes no level; drop --compress-level.")
        return c, None
    if level is None:
        return c, DEFAULT_LEVEL[c]
    if not rng[0] <= int(level) <= rng[1]:
        raise InputError(f"{c} level {level} is outside {rng[0]}..{rng[1]}; pass e.g. --compress-level "
                         f"{DEFAULT_LEVEL[c]}.")
    return c, int(level)


def output_profile(src: Any, count: int, dtype: str, nodata: float | None, compress: str = DEFAULT_COMPRESS,
                   level: int | None = None) -> dict[str, Any]:
    """Tiled, compressed GeoTIFF profile on the grid of ``src`` (no georeferencing if ``src`` has none).

    ``compress``: one of :data:`COMPRESSIONS`, with the horizontal predictor (floating-point predictor for
    float data); ``level`` (default :data:`DEFAULT_LEVEL`) for deflate and zstd."""
    compress, level = check_compression(compress, level)
    kind = np.dtype(dtype).kind
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "width": src.width,
        "height": src.height,
        "count": count,
        "dtype": dtype,
        "nodata": nodata,
        "tiled": True,
        "blockxsize": BLOCK,
        "blockysize": BLOCK,
        "num_threads": "ALL_CPUS",  # GDAL compresses blocks in parallel
        "BIGTIFF": "IF_SAFER",
    }
    if compress != "none":
        profile.update(compress=compress, predictor=3 if kind == "f" else 2)
        if level is not None:
            profile["zlevel" if compress == "deflate" else "zstd_level"] = level
    if is_georeferenced(src):
        profile["crs"] = src.crs
        profile["transform"] = src.transform
    return profile


def check_output_path(path: str | os.PathLike, overwrite: bool, inputs: tuple[Any, ...] = (),
                      create_parent: bool = False) -> Path:
    """Refuse an existing output without ``overwrite``, a missing (unless ``create_parent``, which makes it)
    or unwritable directory, or an output that is one of the ``inputs``."""
    p = Path(path)
    for i in inputs:
        if i is not None and Path(i).exists() and p.exists() and p.resolve() == Path(i).resolve():
            raise InputError(f"output {p} is also an input; choose another output path.")
    if p.is_dir():
        raise InputError(f"output {p} is a directory; pass a file name such as {p / 'out.tif'}.")
    if p.exists() and not overwrite:
        raise InputError(f"output {p} already exists; pass --overwrite to replace it.")
    parent = p.parent if str(p.parent) else Path(".")
    if create_parent and not parent.exists():
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise InputError(f"cannot create output directory {parent} ({e.strerror}); choose a writable "
                             "output path.") from e
    if parent.exists() and not parent.is_dir():
        raise InputError(f"output directory {parent} is a file, not a directory; choose another output path.")
    if not parent.is_dir():
        raise InputError(f"output directory {parent} does not exist; create it or choose another output path.")
    if not os.access(parent, os.W_OK):
        raise InputError(f"output directory {parent} is not writable; choose a writable output path.")
    return p


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it to ``path``, on any failure or
    interruption (including KeyboardInterrupt) delete it. ``path`` never holds partial content."""
    p = check_output_path(path, overwrite)
    tmp_path = p.parent / f".{p.name}.{secrets.token_hex(4)}.partial"
    try:  # O_EXCL: never clobber; mode 0o666 minus the umask, like a normally created file
        os.close(os.open(tmp_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    except OSError as e:
        raise InputError(f"cannot write in {p.parent} ({e.strerror}); choose a writable output path.") from e
    try:
        yield tmp_path
        if p.exists() and not overwrite:  # appeared while we were working (another process)
            raise InputError(f"output {p} already exists; pass --overwrite to replace it.")
        os.replace(tmp_path, p)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise


def write_raster(
    path: str | os.PathLike, data: np.ndarray, like: Any, *, nodata: float | None = None,
    descriptions: tuple[str, ...] | None = None, overwrite: bool = False,
) -> Path:
    """Write a small (C, H, W) array atomically as a tiled compressed GeoTIFF on the grid of ``like``."""
    data = np.asarray(data)
    if data.ndim == 2:
        data = data[None]
    profile = output_profile(like, data.shape[0], data.dtype.name, nodata)
    with atomic_output(path, overwrite) as tmp:
        with open_writer(tmp, profile) as dst:
            dst.write(data)
            if descriptions:
                for i, d in enumerate(descriptions, 1):
                    dst.set_band_description(i, d)
    return Path(path)
