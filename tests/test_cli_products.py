"""``cloudrt infer`` with real products (issue 11): SAFE input, SAR units, optical scale, grid messages,
broken files, COG and STAC outputs, and a Ray batch, each through the CLI."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
from runtime_helpers import make_onnx, synthetic_scene, write_tif
from safe_factory import EPSG, ULX, ULY, make_safe

from cloudrt.cli import main
from cloudrt.scene.cog import to_cog, validate_cog
from cloudrt.scene.safe import SafeReader
from cloudrt.scene.stac import validate_item

N = 96  # pixels: small, a multiple of 6 (60 m SAFE bands), larger than the 64-pixel model tile
UTM = (10.0, 0.0, ULX, 0.0, -10.0, ULY)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_onnx(tmp_path_factory.mktemp("m") / "k3.onnx", tile=64, kernel=3)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    d = tmp_path_factory.mktemp("pair")
    opt, sar = synthetic_scene(N, N, seed=5)
    return (write_tif(d / "s2.tif", opt, crs=f"EPSG:{EPSG}", transform=UTM),
            write_tif(d / "s1.tif", sar, crs=f"EPSG:{EPSG}", transform=UTM), opt, sar)


def _infer(model: Path, *args: str | Path) -> list[str]:
    return ["infer", "--model", str(model), *map(str, args)]


def _bad(capsys, argv: list[str], *must: str) -> str:
    rc = main([*argv, "-q"])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for m in must:
        assert m in lines[0], (m, lines[0])
    return lines[0]


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as d:
        return d.read()


def test_safe_input_runs_on_the_product_grid_with_the_offset_applied(model, tmp_path, capsys):
    safe, _ = make_safe(tmp_path / "p", n10=N, offset=-1000)
    with SafeReader(safe) as r:
        expected_input = r.read()
    # The same values as a GeoTIFF on the same grid must give the same output as the SAFE itself.
    ref_in = write_tif(tmp_path / "ref_s2.tif", expected_input, crs=f"EPSG:{EPSG}", transform=UTM, nodata=0)
    _, sar = synthetic_scene(N, N, seed=1)
    s1 = write_tif(tmp_path / "s1.tif", sar, crs=f"EPSG:{EPSG}", transform=UTM)
    assert main(_infer(model, "--optical", safe, "--sar", s1, "-o", tmp_path / "out.tif", "-q")) == 0
    assert main(_infer(model, "--optical", ref_in, "--sar", s1, "-o", tmp_path / "ref.tif", "-q")) == 0
    with rasterio.open(tmp_path / "out.tif") as o:
        assert (o.crs.to_epsg(), o.transform.c, o.transform.f, o.res) == (EPSG, ULX, ULY, (10.0, 10.0))
        assert o.count == 13 and o.dtypes[0] == "uint16"
        tags = o.tags()
    assert tags["CLOUDRT_RADIO_ADD_OFFSET_APPLIED"] == "-1000" and "x 10000" in tags["CLOUDRT_OPTICAL_CONVENTION"]
    assert np.array_equal(_read(tmp_path / "out.tif"), _read(tmp_path / "ref.tif"))
    # the .zip and the MTD_MSIL1C.xml are accepted too
    from safe_factory import zip_safe

    for i, src in enumerate((zip_safe(safe), safe / "MTD_MSIL1C.xml")):
        assert main(_infer(model, "--optical", src, "--sar", s1, "-o", tmp_path / f"o{i}.tif", "-q")) == 0
        assert np.array_equal(_read(tmp_path / f"o{i}.tif"), _read(tmp_path / "out.tif"))


def test_linear_sar_is_detected_and_converted(model, pair, tmp_path, capsys):
    s2, s1, _, sar = pair
    lin = write_tif(tmp_path / "s1_lin.tif", (10 ** (sar / 10)).astype(np.float32), crs=f"EPSG:{EPSG}",
                    transform=UTM)
    assert main(_infer(model, "--optical", s2, "--sar", s1, "-o", tmp_path / "db.tif")) == 0
    capsys.readouterr()
    assert main(_infer(model, "--optical", s2, "--sar", lin, "-o", tmp_path / "lin.tif")) == 0
    assert "SAR units: auto -> linear power" in capsys.readouterr().err
    a, b = _read(tmp_path / "db.tif").astype(int), _read(tmp_path / "lin.tif").astype(int)
    assert np.abs(a - b).max() <= 1  # float32 round trip of 10**(x/10) then 10*log10
    _bad(capsys, _infer(model, "--optical", s2, "--sar", lin, "-o", tmp_path / "x.tif", "--sar-units", "db"),
         "linear power", "--sar-units linear")


def test_reflectance_optical_refused_or_converted_on_request(model, pair, tmp_path, capsys):
    _, s1, opt, _ = pair
    refl = write_tif(tmp_path / "refl.tif", (opt / 10000).astype(np.float32), crs=f"EPSG:{EPSG}", transform=UTM)
    _bad(capsys, _infer(model, "--optical", refl, "--sar", s1, "-o", tmp_path / "x.tif"),
         "reflectance x 10000", "--optical-scale reflectance")
    assert not (tmp_path / "x.tif").exists()
    assert main(_infer(model, "--optical", refl, "--sar", s1, "-o", tmp_path / "r.tif", "-q",
                       "--optical-scale", "reflectance")) == 0
    with rasterio.open(tmp_path / "r.tif") as o:
        assert o.dtypes[0] == "float32" and o.read(2).max() > 100  # written in DN, not 0..1


def test_grid_offset_message_says_by_how_much(model, pair, tmp_path, capsys):
    s2, _, _, sar = pair
    shifted = write_tif(tmp_path / "s1_shift.tif", sar, crs=f"EPSG:{EPSG}",
                        transform=(10.0, 0.0, ULX + 50, 0.0, -10.0, ULY))
    _bad(capsys, _infer(model, "--optical", s2, "--sar", shifted, "-o", tmp_path / "x.tif"),
         "+50 m east", "+5.00 columns", "--align")
    coarse = write_tif(tmp_path / "s1_20m.tif", sar[:, ::2, ::2], crs=f"EPSG:{EPSG}",
                       transform=(20.0, 0.0, ULX, 0.0, -20.0, ULY))
    _bad(capsys, _infer(model, "--optical", s2, "--sar", coarse, "-o", tmp_path / "x.tif"),
         "resolution: S2 10 x 10 m, S1 20 x 20 m")


def _truncated(tmp_path: Path, opt: np.ndarray) -> Path:
    """A COG (IFDs first, so it opens) cut after 60 % of its bytes: reading its tiles fails."""
    big = np.tile(opt, (1, 6, 6))  # 576 x 576: tiles and overviews
    full = write_tif(tmp_path / "full.tif", big, crs=f"EPSG:{EPSG}", transform=UTM)
    cog = to_cog(full, tmp_path / "cut.tif", compress="NONE")
    data = cog.read_bytes()
    cog.write_bytes(data[: int(len(data) * 0.6)])
    return cog


def test_truncated_raster_is_one_line_in_single_mode(model, pair, tmp_path, capsys):
    _, _, opt, sar = pair
    cut = _truncated(tmp_path, opt)
    s1 = write_tif(tmp_path / "s1big.tif", np.tile(sar, (1, 6, 6)), crs=f"EPSG:{EPSG}", transform=UTM)
    _bad(capsys, _infer(model, "--optical", cut, "--sar", s1, "-o", tmp_path / "x.tif"),
         "cut.tif", "truncated or corrupt")
    assert not (tmp_path / "x.tif").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def _batch_dir(tmp_path: Path, opt: np.ndarray, sar: np.ndarray, broken: bool = True) -> Path:
    inp = tmp_path / "in"
    for i in range(3):
        write_tif(inp / "s2" / f"p{i}.tif", np.roll(opt, 7 * i, axis=2), crs=f"EPSG:{EPSG}", transform=UTM)
        write_tif(inp / "s1" / f"p{i}.tif", sar, crs=f"EPSG:{EPSG}", transform=UTM)
    if broken:
        f = inp / "s2" / "p1.tif"
        cut = _truncated(tmp_path, opt)
        f.write_bytes(cut.read_bytes())
        write_tif(inp / "s1" / "p1.tif", np.tile(sar, (1, 6, 6)), crs=f"EPSG:{EPSG}", transform=UTM)
    return inp


def test_batch_reports_the_broken_pair_and_processes_the_rest(model, pair, tmp_path, capsys):
    _, _, opt, sar = pair
    inp = _batch_dir(tmp_path, opt, sar)
    rc = main(_infer(model, "--input-dir", inp, "--output-dir", tmp_path / "out"))
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert "error: p1.tif:" in err and "truncated or corrupt" in err
    assert "wrote 2, skipped 0, failed 1 of 3 pairs" in err and "1 of 3 pairs failed" in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["p0.tif", "p2.tif"]


def _stac_json(path: Path, **props) -> Path:
    path.write_text(json.dumps({"type": "Feature", "stac_version": "1.1.0", "id": path.stem, "properties": props,
                                "geometry": None, "links": [], "assets": {}}))
    return path


def test_batch_pairing_of_products_and_stac_items(tmp_path):
    from cloudrt.cli.infer_pairs import find_pairs

    sub = tmp_path / "sub"
    for d in ("s2/A.SAFE", "s2/D.SAFE", "s1"):
        (sub / d).mkdir(parents=True)
    for f in ("s2/p0.tif", "s2/B.SAFE.zip", "s2/S2A_MSIL1C_X.zip", "s2/other.zip", "s1/p0.tif", "s1/A.tif",
              "s1/B.tif", "s1/S2A_MSIL1C_X.tif", "s1/C.tif", "s1/lonely.tif"):
        (sub / f).write_bytes(b"")
    _stac_json(sub / "s2" / "C.json")
    _stac_json(sub / "s2" / "OUT.json", **{"cloudrt:version": "0.1"})  # a cloudrt output's Item: not an input
    (sub / "s2" / "notes.json").write_text('{"a": 1}')
    pairs, unpaired = find_pairs(sub)
    assert sorted((n, o.name, s.name) for n, o, s in pairs) == [
        ("A.tif", "A.SAFE", "A.tif"), ("B.tif", "B.SAFE.zip", "B.tif"), ("C.tif", "C.json", "C.tif"),
        ("S2A_MSIL1C_X.tif", "S2A_MSIL1C_X.zip", "S2A_MSIL1C_X.tif"), ("p0.tif", "p0.tif", "p0.tif")]
    assert len(unpaired) == 2 and "D.SAFE (no SAR" in unpaired[0] and "lonely.tif (no optical" in unpaired[1]
    # flat folder: products beside NAME_S2.tif files, their SAR in sar/
    flat = tmp_path / "flat"
    (flat / "A.SAFE").mkdir(parents=True)
    (flat / "sar").mkdir()
    for f in ("T31_S2.tif", "T31_S1.tif", "sar/A.tif"):
        (flat / f).write_bytes(b"")
    pairs, unpaired = find_pairs(flat)
    assert [(n, o.name, s.name) for n, o, s in pairs] == [("T31_S2.tif", "T31_S2.tif", "T31_S1.tif"),
                                                          ("A.tif", "A.SAFE", "A.tif")]
    assert unpaired == []


def test_batch_runs_safe_products_like_single_mode(model, tmp_path, capsys, monkeypatch):
    from safe_factory import zip_safe

    import cloudrt.runtime.core as core

    caches, real_env = [], core.gdal_env
    monkeypatch.setattr(core, "gdal_env", lambda extra=0: caches.append(extra) or real_env(extra))

    inp = tmp_path / "in"
    folder, _ = make_safe(inp / "s2", n10=N, baseline="05.09", seed=1)
    old, _ = make_safe(tmp_path / "z", n10=N, baseline="04.00", offset=None, seed=2)
    zipped = zip_safe(old)
    zipped = zipped.rename(inp / "s2" / zipped.name)
    _, sar = synthetic_scene(N, N, seed=3)
    names = [folder.name[:-5], old.name[:-5]]
    for n in names:
        write_tif(inp / "s1" / f"{n}.tif", sar, crs=f"EPSG:{EPSG}", transform=UTM)
    assert main(_infer(model, "--input-dir", inp, "--output-dir", tmp_path / "out", "-q")) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(f"{n}.tif" for n in names)
    assert main(_infer(model, "--optical", zipped, "--sar", inp / "s1" / f"{names[1]}.tif", "-o",
                       tmp_path / "single.tif", "-q")) == 0
    assert np.array_equal(_read(tmp_path / "out" / f"{names[1]}.tif"), _read(tmp_path / "single.tif"))
    with rasterio.open(tmp_path / "out" / f"{names[0]}.tif") as o:
        assert o.tags()["CLOUDRT_SOURCE_PRODUCT"] == folder.name
    assert len(caches) == 3 and min(caches) > 0  # GDAL's cache grown by the product's JPEG 2000 tile row


def test_stac_batch_redoes_an_output_without_its_item(model, pair, tmp_path, capsys):
    _, _, opt, sar = pair
    inp, out = _batch_dir(tmp_path, opt, sar, broken=False), tmp_path / "out"
    assert main(_infer(model, "--input-dir", inp, "--output-dir", out, "--stac", "-q")) == 0
    (out / "p0.json").unlink()  # interrupted after p0.tif was renamed into place, before its Item
    (out / "p1.tif").write_bytes(b"stale")  # a finished pair is trusted as it is: skipped
    ref = _read(out / "p0.tif")
    (out / "p0.tif").write_bytes(b"partial")
    capsys.readouterr()
    assert main(_infer(model, "--input-dir", inp, "--output-dir", out, "--stac")) == 0
    err = capsys.readouterr().err
    assert "1 outputs have no STAC Item" in err and "wrote 1, skipped 2, failed 0 of 3 pairs" in err
    assert np.array_equal(_read(out / "p0.tif"), ref)
    item = pystac.Item.from_file(str(out / "p0.json"))
    assert item.assets["data"].get_absolute_href() == str((out / "p0.tif").resolve())
    assert (out / "p1.tif").read_bytes() == b"stale"
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    # without --stac, the Item is not asked for: nothing to redo
    (out / "p2.json").unlink()
    capsys.readouterr()
    assert main(_infer(model, "--input-dir", inp, "--output-dir", out)) == 0
    assert "wrote 0, skipped 3" in capsys.readouterr().err


def test_cog_and_stac_outputs(model, pair, tmp_path, capsys):
    s2, s1, _, _ = pair
    out, mask = tmp_path / "OUT.tif", tmp_path / "OUT_mask.tif"
    assert main(_infer(model, "--optical", s2, "--sar", s1, "-o", out, "--mask-out", mask, "--cog", "--stac",
                       "-q")) == 0
    assert main(_infer(model, "--optical", s2, "--sar", s1, "-o", tmp_path / "plain.tif", "-q")) == 0
    assert validate_cog(out) == [] and validate_cog(mask) == []
    with rasterio.open(out) as c, rasterio.open(tmp_path / "plain.tif") as p:
        assert np.array_equal(c.read(), p.read())
        assert (c.crs, c.transform, c.descriptions, c.nodata) == (p.crs, p.transform, p.descriptions, p.nodata)
        assert c.tags()["cloudrt_backend"] == p.tags()["cloudrt_backend"]
    assert not [x for x in tmp_path.iterdir() if x.name.startswith(".")]
    item = pystac.Item.from_file(str(tmp_path / "OUT.json"))
    assert "projection" in validate_item(item)
    props = item.properties
    assert props["proj:code"] == f"EPSG:{EPSG}" and props["proj:shape"] == [N, N]
    assert props["cloudrt:model_sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert props["cloudrt:options"]["cog"] is True and "SAR units" in " ".join(props["cloudrt:options"]["decisions"])
    assert item.assets["data"].get_absolute_href() == str(out.resolve())
    assert item.assets["cloud_mask"].get_absolute_href() == str(mask.resolve())
    assert {ln.title: Path(ln.href).name for ln in item.links if ln.rel == "derived_from"} == {
        "optical": "s2.tif", "sar": "s1.tif"}
    json.loads((tmp_path / "OUT.json").read_text())  # plain JSON beside the output


def test_ray_without_ray_names_the_extra(model, pair, tmp_path, capsys, monkeypatch):
    _, _, opt, sar = pair
    inp = _batch_dir(tmp_path, opt, sar, broken=False)
    monkeypatch.setitem(sys.modules, "ray", None)
    _bad(capsys, _infer(model, "--input-dir", inp, "--output-dir", tmp_path / "out", "--ray"),
         "pip install 'cloudrt[ray]'")
    _bad(capsys, _infer(model, "--optical", inp / "s2" / "p0.tif", "--sar", inp / "s1" / "p0.tif", "-o",
                        tmp_path / "x.tif", "--ray"), "--input-dir")


def test_ray_batch_matches_the_serial_batch(model, pair, tmp_path, capsys):
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'cloudrt[ray]')")
    _, _, opt, sar = pair
    inp = _batch_dir(tmp_path, opt, sar)
    safe, _ = make_safe(inp / "s2", n10=N, seed=4)  # a SAFE product pairs with s1/NAME.tif
    write_tif(inp / "s1" / f"{safe.name[:-5]}.tif", sar, crs=f"EPSG:{EPSG}", transform=UTM)
    assert main(_infer(model, "--input-dir", inp, "--output-dir", tmp_path / "serial", "-q")) == 2
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "p2.tif").write_bytes((tmp_path / "serial" / "p2.tif").read_bytes())  # resumed
    capsys.readouterr()
    rc = main(_infer(model, "--input-dir", inp, "--output-dir", tmp_path / "ray", "--ray"))
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "error: p1.tif:" in err and "truncated or corrupt" in err
    assert "wrote 2, skipped 1, failed 1 of 4 pairs" in err
    for name in ("p0.tif", f"{safe.name[:-5]}.tif"):
        assert np.array_equal(_read(tmp_path / "ray" / name), _read(tmp_path / "serial" / name))
    assert not (tmp_path / "ray" / "p1.tif").exists()
