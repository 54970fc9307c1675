"""STAC Items for outputs, and local STAC Items whose assets are the 13 Sentinel-2 bands as input (pystac).

:func:`make_item` describes one cloud-removed output (``OUT.tif``) as a STAC Item: footprint in WGS 84,
the projection extension (``proj:code``, ``proj:shape``, ``proj:transform``, ``proj:bbox``), the
processing provenance (``cloudrt:version``, ``cloudrt:model`` and its ``cloudrt:model_sha256``,
``cloudrt:backend``, ``cloudrt:options``), the inputs as ``derived_from`` links, and the output, the cloud
mask and the confidence map as assets with roles. :func:`write_item` saves it atomically as ``OUT.json``.

:func:`validate_item` validates without network: the core Item schema bundled with pystac (through
pystac's JSON-schema validator and its local schema cache) plus the projection fields checked against the
extension's field definitions in code, since the extension schema itself is only published online.
``item.validate()`` does the full online validation where the schema hosts are reachable.

:class:`StacItemReader` reads a local Item whose assets are the 13 bands (asset keys ``B01``/``B1``..,
common names such as ``coastal``/``nir08``, or ``eo:bands``/``bands`` names) as one 13-band reader on the
finest asset grid, like :class:`cloudrt.scene.safe.SafeReader`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import secrets
from pathlib import Path
from typing import Any

from cloudrt.errors import InputError
from cloudrt.scene.safe import DEFAULT_RESAMPLING, NODATA, S2_BANDS, BandStack

COG_MEDIA_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"
GEOTIFF_MEDIA_TYPE = "image/tiff; application=geotiff"

COMMON_NAMES = {
    "coastal": "B1", "blue": "B2", "green": "B3", "red": "B4", "rededge1": "B5", "rededge2": "B6",
    "rededge3": "B7", "nir": "B8", "nir08": "B8A", "nir09": "B9", "cirrus": "B10", "swir16": "B11",
    "swir22": "B12",
}
"""STAC ``eo`` common names of the Sentinel-2 bands (as used by public Sentinel-2 STAC catalogues)."""


def _pystac() -> Any:
    try:
        import pystac
    except ImportError as e:
        raise InputError("STAC support needs pystac; install it with pip install 'cloudrt[stac]'.") from e
    return pystac


def stac_path_for(output: str | os.PathLike) -> Path:
    """The Item written beside an output: ``OUT.json`` for ``OUT.tif``."""
    return Path(output).with_suffix(".json")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _footprint(ds: Any) -> tuple[dict[str, Any] | None, list[float] | None]:
    """GeoJSON polygon and bbox in WGS 84 of a georeferenced dataset, or (None, None)."""
    if ds.crs is None:
        return None, None
    from rasterio.warp import transform_geom

    b = ds.bounds
    corners = [(b.left, b.bottom), (b.right, b.bottom), (b.right, b.top), (b.left, b.top), (b.left, b.bottom)]
    ring = [  # 20 points per side, so the edges follow the curvature of the projection
        [x0 + (x1 - x0) * t / 20, y0 + (y1 - y0) * t / 20]
        for (x0, y0), (x1, y1) in zip(corners[:-1], corners[1:], strict=True) for t in range(20)
    ] + [list(corners[0])]
    geom = json.loads(json.dumps(transform_geom(ds.crs, "EPSG:4326", {"type": "Polygon", "coordinates": [ring]})))
    xs = [p[0] for p in geom["coordinates"][0]]
    ys = [p[1] for p in geom["coordinates"][0]]
    return geom, [min(xs), min(ys), max(xs), max(ys)]


def _asset(pystac: Any, path: Path, item_dir: Path, title: str, roles: list[str], cog: bool) -> Any:
    return pystac.Asset(href=os.path.relpath(path, item_dir), title=title, roles=roles,
                        media_type=COG_MEDIA_TYPE if cog else GEOTIFF_MEDIA_TYPE)


def make_item(output: str | os.PathLike, *, inputs: dict[str, str | os.PathLike], model: str,
              model_sha256: str, backend: str, options: dict[str, Any], version: str,
              mask: str | os.PathLike | None = None, confidence: str | os.PathLike | None = None,
              cog: bool = False, datetime: dt.datetime | None = None) -> Any:
    """A ``pystac.Item`` for ``output`` (see the module docstring); ``datetime`` defaults to now (UTC)."""
    import rasterio

    pystac = _pystac()
    from pystac.extensions.projection import ProjectionExtension

    output = Path(output).resolve()
    with rasterio.open(output) as ds:
        geom, bbox = _footprint(ds)
        shape, transform, crs, bounds = [ds.height, ds.width], list(ds.transform)[:6], ds.crs, ds.bounds
        descriptions = list(ds.descriptions)
    now = dt.datetime.now(dt.timezone.utc)
    props = {
        "created": now.isoformat().replace("+00:00", "Z"),
        "cloudrt:version": version, "cloudrt:model": model, "cloudrt:model_sha256": model_sha256,
        "cloudrt:backend": backend, "cloudrt:options": options,
        "cloudrt:bands": [d or f"band {i + 1}" for i, d in enumerate(descriptions)],
    }
    item = pystac.Item(id=output.stem, geometry=geom, bbox=bbox, datetime=datetime or now, properties=props)
    proj = ProjectionExtension.ext(item, add_if_missing=True)
    epsg = crs.to_epsg() if crs is not None else None
    proj.apply(code=f"EPSG:{epsg}" if epsg else None, wkt2=None if epsg or crs is None else crs.to_wkt(),
               shape=shape, transform=transform if crs is not None else None,
               bbox=[bounds.left, bounds.bottom, bounds.right, bounds.top] if crs is not None else None)
    item_dir = output.parent
    item.add_asset("data", _asset(pystac, output, item_dir, "cloud-removed Sentinel-2 L1C (reflectance x 10000)",
                                  ["data"], cog))
    if mask is not None:
        item.add_asset("cloud_mask", _asset(pystac, Path(mask).resolve(), item_dir, "cloud mask",
                                            ["cloud", "data-mask"], cog))
    if confidence is not None:
        item.add_asset("confidence", _asset(pystac, Path(confidence).resolve(), item_dir,
                                            "per-pixel confidence of the reconstruction", ["quality"], cog))
    for role, path in inputs.items():
        item.add_link(pystac.Link(rel="derived_from", target=str(Path(path).resolve()), title=role))
    return item


def write_item(item: Any, path: str | os.PathLike) -> Path:
    """Write ``item`` as JSON to ``path`` atomically (temporary name in the same folder, then rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        tmp.write_text(json.dumps(item.to_dict(include_self_link=False), indent=2) + "\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


_PROJ_CODE = re.compile(r"^[A-Z]+:[0-9A-Za-z._-]+$")


def _check_projection(props: dict[str, Any]) -> list[str]:
    """Problems with the projection extension's fields (its v2.0 field definitions)."""
    keys = ("proj:code", "proj:wkt2", "proj:projjson", "proj:geometry", "proj:bbox", "proj:centroid",
            "proj:shape", "proj:transform")
    if not any(k in props for k in keys):
        return ["the projection extension is declared but no proj: field is set"]
    bad = []
    code = props.get("proj:code")
    if code is not None and not (isinstance(code, str) and _PROJ_CODE.match(code)):
        bad.append(f"proj:code {code!r} is not like 'EPSG:32634'")
    shape = props.get("proj:shape")
    if shape is not None and not (isinstance(shape, list) and len(shape) == 2
                                  and all(isinstance(v, int) and v > 0 for v in shape)):
        bad.append("proj:shape must be [rows, cols] of positive integers")

    def numbers(k: str, sizes: tuple[int, ...]) -> None:
        v = props.get(k)
        if v is not None and not (isinstance(v, list) and len(v) in sizes
                                  and all(isinstance(x, int | float) for x in v)):
            bad.append(f"{k} must be {' or '.join(map(str, sizes))} numbers")

    numbers("proj:transform", (6, 9))
    numbers("proj:bbox", (4, 6))
    return bad


def validate_item(item: Any) -> str:
    """Validate an Item offline; return how it was validated, raise InputError naming what is wrong."""
    pystac = _pystac()
    from pystac.validation.stac_validator import JsonSchemaSTACValidator

    d = item.to_dict(include_self_link=False)
    try:
        JsonSchemaSTACValidator().validate_core(d, pystac.STACObjectType.ITEM, d["stac_version"])
    except pystac.errors.STACValidationError as e:
        src = getattr(e, "source", None)
        src = src[0] if isinstance(src, list) and src else src
        why = f"{src.message} at /{'/'.join(map(str, src.absolute_path))}" if hasattr(src, "message") else str(e)
        raise InputError(f"STAC Item {item.id} fails the core Item schema: {why.splitlines()[0]}") from e
    done = f"core Item schema v{d['stac_version']} (bundled with pystac)"
    for ext in d.get("stac_extensions", []):
        if "/projection/" in ext:
            problems = _check_projection(d["properties"])
            if problems:
                raise InputError(f"STAC Item {item.id} has invalid projection fields: {'; '.join(problems)}")
            done += " + projection fields"
    return done


class StacItemReader(BandStack):
    """A local STAC Item whose assets are the 13 Sentinel-2 L1C bands, as one 13-band reader.

    Bands come onto the grid of the finest asset (10 m for Sentinel-2) by a ``WarpedVRT`` with
    ``resampling`` (bilinear by default; see :class:`cloudrt.scene.safe.SafeReader` for why). Where an
    asset declares ``raster:bands`` scale/offset with scale 1e-4 (reflectance = DN * 1e-4 + offset), the
    offset is applied in DN so the values follow the SEN12MS-CR convention.
    """

    def __init__(self, path: str | os.PathLike, resampling: str = DEFAULT_RESAMPLING) -> None:
        import rasterio
        from rasterio.enums import Resampling
        from rasterio.vrt import WarpedVRT

        pystac = _pystac()
        self.name = str(path)
        self._handles: list[Any] = []
        self.resampling = resampling
        try:
            item = pystac.Item.from_file(str(Path(path).resolve()))
        except Exception as e:  # noqa: BLE001 - JSON, schema or IO: all mean "not a readable Item"
            raise InputError(f"{path} cannot be read as a STAC Item ({str(e).splitlines()[0]}).") from e
        hrefs = _band_assets(item, self.name)
        opened: dict[str, Any] = {}
        for b, h in hrefs.items():
            try:
                opened[b] = rasterio.open(h)
            except rasterio.errors.RasterioIOError as e:
                self.close()
                raise InputError(
                    f"band {b} asset {h} of STAC Item {path} cannot be opened ({str(e).splitlines()[0]})."
                ) from e
            self._handles.append(opened[b])
        base = min(opened.values(), key=lambda ds: abs(ds.res[0]))
        bands = []
        for b in S2_BANDS:
            src = opened[b]
            if (src.crs, src.transform, src.shape) != (base.crs, base.transform, base.shape):
                src = WarpedVRT(src, crs=base.crs, transform=base.transform, width=base.width, height=base.height,
                                resampling=Resampling[resampling], src_nodata=NODATA, nodata=NODATA)
                self._handles.append(src)
            bands.append((src, 1, _dn_offset(item.assets[_key_of(item, b)])))
        self._set_stack(base, bands)
        self.item_id = item.id

    def tags(self, bidx: int = 0) -> dict[str, str]:
        """What this reader did, to record on outputs."""
        if bidx:
            return {"BANDNAME": S2_BANDS[bidx - 1]}
        return {"CLOUDRT_OPTICAL_CONVENTION": "SEN12MS-CR: TOA reflectance x 10000, uint16, no offset, 0 = nodata",
                "CLOUDRT_SOURCE_STAC_ITEM": self.item_id, "CLOUDRT_RESAMPLING": self.resampling}


def _asset_band_name(key: str, asset: Any) -> str | None:
    """The S2 band an asset holds, from its key, common name or eo:bands/bands name; None if not a band."""
    d = asset.to_dict()
    names = [key] + [b.get(f) for b in d.get("eo:bands", []) + d.get("bands", []) for f in ("name", "common_name",
                                                                                              "eo:common_name")]
    for n in names:
        if not n:
            continue
        n = str(n).strip()
        if n.lower() in COMMON_NAMES:
            return COMMON_NAMES[n.lower()]
        m = re.fullmatch(r"[Bb]0?(\d{1,2})([Aa]?)", n)
        if m:
            name = f"B{int(m[1])}{m[2].upper()}"
            if name in S2_BANDS:
                return name
    return None


def _key_of(item: Any, band: str) -> str:
    return next(k for k, a in item.assets.items() if _asset_band_name(k, a) == band)


def _band_assets(item: Any, name: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for key, asset in item.assets.items():
        b = _asset_band_name(key, asset)
        if b and b not in found:
            found[b] = asset.get_absolute_href() or asset.href
    missing = [b for b in S2_BANDS if b not in found]
    if missing:
        raise InputError(
            f"STAC Item {name} has no asset for band(s) {', '.join(missing)}; it needs the 13 L1C bands as "
            "assets (keys B01..B12 and B8A, or eo common names)."
        )
    return found


def _dn_offset(asset: Any) -> int:
    """DN offset from ``raster:bands`` (reflectance = DN * scale + offset, scale 1e-4), else 0."""
    rb = asset.to_dict().get("raster:bands") or []
    if not rb:
        return 0
    scale, offset = rb[0].get("scale"), rb[0].get("offset")
    if offset is None:
        return 0
    if scale is None or abs(float(scale) - 1e-4) > 1e-9:
        raise InputError(
            f"asset {asset.href} declares raster:bands scale {scale} with offset {offset}; only L1C DN with scale "
            "0.0001 (reflectance x 10000) is supported."
        )
    return int(round(float(offset) / float(scale)))
