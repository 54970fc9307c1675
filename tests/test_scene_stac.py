"""STAC Items beside outputs (projection, provenance, links, assets; offline validation) and as input."""

from __future__ import annotations

import datetime as dt
import hashlib
import json

import numpy as np
import pystac
import pytest
import rasterio
from rasterio.transform import from_origin
from rasterio.warp import transform as warp_transform
from safe_factory import NATIVE, make_safe

from cloudrt.errors import InputError
from cloudrt.scene.safe import S2_BANDS, SafeReader
from cloudrt.scene.stac import (
    COMMON_NAMES,
    StacItemReader,
    make_item,
    sha256_file,
    stac_path_for,
    validate_item,
    write_item,
)


def _tif(path, count=13, crs="EPSG:32634"):
    with rasterio.open(path, "w", driver="GTiff", width=40, height=30, count=count, dtype="uint16",
                       crs=crs, transform=from_origin(300000, 6100020, 10, 10)) as d:
        d.write(np.ones((count, 30, 40), np.uint16))
        d.descriptions = S2_BANDS[:count]
    return path


@pytest.fixture
def item_files(tmp_path):
    out = _tif(tmp_path / "OUT.tif")
    mask = _tif(tmp_path / "OUT_mask.tif", count=1)
    model = tmp_path / "m.onnx"
    model.write_bytes(b"model bytes")
    return out, mask, model


def _item(out, mask, model):
    return make_item(
        out, inputs={"optical": out.parent / "s2.tif", "sar": out.parent / "s1.tif"}, model=str(model),
        model_sha256=sha256_file(model), backend="onnxruntime-cpu", options={"tile": 256, "overlap": 32},
        version="0.1.0", mask=mask, cog=True, datetime=dt.datetime(2023, 8, 23, 9, 55, 59, tzinfo=dt.timezone.utc),
    )


def test_item_has_projection_provenance_links_and_assets(item_files):
    out, mask, model = item_files
    item = _item(out, mask, model)
    p = item.properties
    assert p["proj:code"] == "EPSG:32634" and p["proj:shape"] == [30, 40]
    assert p["proj:transform"] == [10.0, 0.0, 300000.0, 0.0, -10.0, 6100020.0]
    assert p["proj:bbox"] == [300000.0, 6099720.0, 300400.0, 6100020.0]
    assert p["cloudrt:model_sha256"] == hashlib.sha256(b"model bytes").hexdigest()
    assert p["cloudrt:backend"] == "onnxruntime-cpu" and p["cloudrt:options"]["tile"] == 256
    assert p["cloudrt:version"] == "0.1.0"
    derived = [ln for ln in item.links if ln.rel == "derived_from"]
    assert {ln.title for ln in derived} == {"optical", "sar"}
    assert item.assets["data"].roles == ["data"] and item.assets["data"].href == "OUT.tif"
    assert "cloud-optimized" in item.assets["data"].media_type
    assert "cloud" in item.assets["cloud_mask"].roles and "confidence" not in item.assets
    # Footprint in WGS 84: the bbox holds the four corners (PROJ), and hugs them (densified edges only).
    xs, ys = warp_transform("EPSG:32634", "EPSG:4326", [300000, 300400, 300400, 300000],
                            [6100020, 6100020, 6099720, 6099720])
    lon0, lat0, lon1, lat1 = item.bbox
    assert lon0 <= min(xs) and max(xs) <= lon1 and lat0 <= min(ys) and max(ys) <= lat1
    assert np.allclose([lon0, lat0, lon1, lat1], [min(xs), min(ys), max(xs), max(ys)], atol=1e-4)
    assert item.geometry["type"] == "Polygon"
    assert "projection" in validate_item(item)


def test_written_item_round_trips_and_validates(item_files):
    out, mask, model = item_files
    path = write_item(_item(out, mask, model), stac_path_for(out))
    assert path.name == "OUT.json" and sorted(x.name for x in path.parent.iterdir() if x.name.startswith(".")) == []
    back = pystac.Item.from_file(str(path))
    assert back.id == "OUT" and back.datetime.year == 2023
    assert back.assets["data"].get_absolute_href() == str(out.resolve())
    assert "core Item schema" in validate_item(back)


def test_item_write_is_atomic(item_files, monkeypatch):
    """A failed write leaves the previous Item whole and no temporary file (a resumed batch trusts OUT.json)."""
    import cloudrt.scene.stac as stac_mod

    out, mask, model = item_files
    path = write_item(_item(out, mask, model), stac_path_for(out))
    before = path.read_text()

    def fail(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(stac_mod.os, "replace", fail)
    item = _item(out, mask, model)
    item.properties["cloudrt:backend"] = "changed"
    with pytest.raises(OSError):
        write_item(item, path)
    assert path.read_text() == before
    assert [x.name for x in path.parent.iterdir() if x.name.startswith(".")] == []


def test_validation_catches_bad_items(item_files):
    out, mask, model = item_files
    item = _item(out, mask, model)
    item.properties["proj:shape"] = [30]
    with pytest.raises(InputError, match="proj:shape"):
        validate_item(item)
    item = _item(out, mask, model)
    item.bbox = ["west"]
    with pytest.raises(InputError, match="core Item schema"):
        validate_item(item)


def _band_item(tmp_path, data, keys="file"):
    """Write each native-resolution band as a GeoTIFF asset of a local STAC Item (DN with offset -1000)."""
    item = pystac.Item(id="s2", geometry=None, bbox=None, datetime=dt.datetime(2023, 8, 23), properties={})
    for (name, res) in NATIVE:
        a = data[name]
        p = tmp_path / f"{name}.tif"
        with rasterio.open(p, "w", driver="GTiff", width=a.shape[1], height=a.shape[0], count=1, dtype="uint16",
                           crs="EPSG:32634", transform=from_origin(300000, 6100020, res, res)) as d:
            d.write(a, 1)
        asset = pystac.Asset(href=p.name, media_type="image/tiff")
        asset.extra_fields["raster:bands"] = [{"scale": 0.0001, "offset": -0.1}]
        key = name if keys == "file" else {v: k for k, v in COMMON_NAMES.items()}[name.replace("B0", "B")]
        item.add_asset(key, asset)
    path = tmp_path / "item.json"
    path.write_text(json.dumps(item.to_dict(include_self_link=False)))
    return path


@pytest.mark.parametrize("keys", ["file", "common"])
def test_stac_item_of_13_bands_reads_like_the_safe(tmp_path, keys):
    safe, data = make_safe(tmp_path / "safe", n10=36, offset=-1000)
    item = _band_item(tmp_path, data, keys)
    with SafeReader(safe) as s, StacItemReader(item) as r:
        assert (r.count, r.width, r.height, r.crs, r.transform) == (13, s.width, s.height, s.crs, s.transform)
        assert list(r.offsets) == [-1000] * 13
        assert np.array_equal(r.read(), s.read())


def test_stac_item_missing_band_is_one_line(tmp_path):
    safe, data = make_safe(tmp_path / "safe", n10=12)
    path = _band_item(tmp_path, data)
    d = json.loads(path.read_text())
    del d["assets"]["B10"]
    path.write_text(json.dumps(d))
    with pytest.raises(InputError, match="B10"):
        StacItemReader(path)
