"""Build a tiny but real Sentinel-2 L1C SAFE product that GDAL's SENTINEL2 driver opens.

It holds what the driver reads: ``MTD_MSIL1C.xml`` (processing baseline, band list and resolutions,
granule file list, optional ``RADIO_ADD_OFFSET`` list), the granule's ``MTD_TL.xml`` (tile geocoding at
10/20/60 m) and one JPEG 2000 file per band at its native resolution (lossless, so values read back exactly).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

NATIVE: tuple[tuple[str, int], ...] = (
    ("B01", 60), ("B02", 10), ("B03", 10), ("B04", 10), ("B05", 20), ("B06", 20), ("B07", 20),
    ("B08", 10), ("B8A", 20), ("B09", 60), ("B10", 60), ("B11", 20), ("B12", 20),
)
"""File band names (as in the product) with their native resolution, in the model's band order."""

EPSG = 32634
ULX, ULY = 300000.0, 6100020.0


def _product_xml(baseline: str, granule: str, offset: int | None) -> str:
    files = "\n".join(f"<IMAGE_FILE>{granule}/IMG_DATA/T34UCF_20230823T095559_{b}</IMAGE_FILE>" for b, _ in NATIVE)
    offsets = "" if offset is None else "<Radiometric_Offset_List>" + "".join(
        f'<RADIO_ADD_OFFSET band_id="{i}">{offset}</RADIO_ADD_OFFSET>' for i in range(13)
    ) + "</Radiometric_Offset_List>"
    spectral = "".join(
        f'<Spectral_Information bandId="{i}" physicalBand="{b.replace("B0", "B")}"><RESOLUTION>{r}</RESOLUTION>'
        "</Spectral_Information>" for i, (b, r) in enumerate(NATIVE)
    )
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<n1:Level-1C_User_Product xmlns:n1="https://psd-14.sentinel2.eo.esa.int/PSD/User_Product_Level-1C.xsd">
<n1:General_Info><Product_Info>
<PRODUCT_START_TIME>2023-08-23T09:55:59.024Z</PRODUCT_START_TIME>
<PROCESSING_LEVEL>Level-1C</PROCESSING_LEVEL><PRODUCT_TYPE>S2MSI1C</PRODUCT_TYPE>
<PROCESSING_BASELINE>{baseline}</PROCESSING_BASELINE>
<Datatake datatakeIdentifier="GS2B_20230823T095559"><SPACECRAFT_NAME>Sentinel-2B</SPACECRAFT_NAME></Datatake>
<Query_Options completeSingleTile="true"><PRODUCT_FORMAT>SAFE_COMPACT</PRODUCT_FORMAT></Query_Options>
<Product_Organisation><Granule_List><Granule granuleIdentifier="T34UCF" imageFormat="JPEG2000">
{files}
</Granule></Granule_List></Product_Organisation>
</Product_Info>
<Product_Image_Characteristics>
<QUANTIFICATION_VALUE unit="none">10000</QUANTIFICATION_VALUE>
{offsets}
<Spectral_Information_List>{spectral}</Spectral_Information_List>
</Product_Image_Characteristics>
</n1:General_Info></n1:Level-1C_User_Product>
"""


def _tile_xml(n10: int) -> str:
    sizes = "".join(
        f'<Size resolution="{r}"><NROWS>{n10 * 10 // r}</NROWS><NCOLS>{n10 * 10 // r}</NCOLS></Size>'
        for r in (10, 20, 60)
    )
    geo = "".join(
        f'<Geoposition resolution="{r}"><ULX>{ULX:.0f}</ULX><ULY>{ULY:.0f}</ULY><XDIM>{r}</XDIM><YDIM>-{r}</YDIM>'
        "</Geoposition>" for r in (10, 20, 60)
    )
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<n1:Level-1C_Tile_ID xmlns:n1="https://psd-14.sentinel2.eo.esa.int/PSD/S2_PDI_Level-1C_Tile_Metadata.xsd">
<n1:Geometric_Info><Tile_Geocoding>
<HORIZONTAL_CS_NAME>WGS84 / UTM zone 34N</HORIZONTAL_CS_NAME><HORIZONTAL_CS_CODE>EPSG:{EPSG}</HORIZONTAL_CS_CODE>
{sizes}{geo}
</Tile_Geocoding></n1:Geometric_Info></n1:Level-1C_Tile_ID>
"""


def make_safe(root: Path, n10: int = 60, baseline: str = "05.09", offset: int | None = -1000,
              seed: int = 0, nodata_corner: bool = True, jp2_block: int | None = None
              ) -> tuple[Path, dict[str, np.ndarray]]:
    """Write a SAFE of ``n10 x n10`` 10 m pixels (``n10`` a multiple of 6) under ``root``.

    Returns the ``.SAFE`` folder and the raw DN arrays per file band name (native resolution). With
    ``nodata_corner``, the top-left 60 m cell is DN 0 (NODATA) in every band. ``jp2_block`` tiles the JPEG
    2000 files internally (real products use 1024 x 1024 tiles), so a window decodes only its tiles.
    """
    import rasterio
    from rasterio.transform import from_origin

    assert n10 % 6 == 0
    safe = Path(root) / f"S2B_MSIL1C_20230823T095559_N{baseline.replace('.', '')}_R122_T34UCF_20230823T120234.SAFE"
    granule = "GRANULE/L1C_T34UCF_A033753_20230823T095553"
    (safe / granule / "IMG_DATA").mkdir(parents=True, exist_ok=True)
    (safe / "MTD_MSIL1C.xml").write_text(_product_xml(baseline, granule, offset))
    (safe / granule / "MTD_TL.xml").write_text(_tile_xml(n10))
    rng = np.random.default_rng(seed)
    data: dict[str, np.ndarray] = {}
    for b, r in NATIVE:
        n = n10 * 10 // r
        a = rng.integers(1100, 6000, (n, n)).astype(np.uint16)
        a[0, 1] = 1005 if n > 1 else a[0, 1]  # dark pixel: with the offset it nearly reaches 0
        if nodata_corner:
            k = 60 // r
            a[:k, :k] = 0
        data[b] = a
        path = safe / granule / "IMG_DATA" / f"T34UCF_20230823T095559_{b}.jp2"
        with rasterio.open(path, "w", driver="JP2OpenJPEG", width=n, height=n, count=1, dtype="uint16",
                           crs=f"EPSG:{EPSG}", transform=from_origin(ULX, ULY, r, r), QUALITY=100,
                           REVERSIBLE="YES", **({"BLOCKXSIZE": jp2_block, "BLOCKYSIZE": jp2_block}
                                                if jp2_block else {})) as dst:
            dst.write(a, 1)
    return safe, data


def zip_safe(safe: Path) -> Path:
    """Zip a SAFE folder as products are downloaded: ``NAME.SAFE.zip`` holding ``NAME.SAFE/...``."""
    return Path(shutil.make_archive(str(safe), "zip", root_dir=safe.parent, base_dir=safe.name))
