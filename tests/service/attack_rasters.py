"""Hostile rasters of issue 20, written into an allowed root (with a secret outside it).

Each builder writes small files only: the attacks are in what the files make GDAL do.
"""

from __future__ import annotations

import os
from pathlib import Path
from xml.sax.saxutils import escape

from osgeo import gdal

from .conftest import small_geotiff

gdal.UseExceptions()
SIZE = 64


def vrt_text(sources: str, size: int = SIZE, band_attrs: str = "", inner: str = "") -> str:
    return (f'<VRTDataset rasterXSize="{size}" rasterYSize="{size}"><VRTRasterBand dataType="Byte" band="1"'
            f'{band_attrs}>{sources}{inner}</VRTRasterBand></VRTDataset>')


def simple_source(name: str, relative: str = "0", attrs: str = "") -> str:
    return (f'<SimpleSource><SourceFilename relativeToVRT="{relative}"{attrs}>{escape(name)}</SourceFilename>'
            f'<SourceBand>1</SourceBand></SimpleSource>')


def passwd_vrt_text() -> str:
    """/etc/passwd read as 64-px rows of pixels."""
    return ('<VRTDataset rasterXSize="64" rasterYSize="8"><VRTRasterBand dataType="Byte" band="1" '
            'subClass="VRTRawRasterBand"><SourceFilename relativeToVRT="0">/etc/passwd</SourceFilename>'
            '<ImageOffset>0</ImageOffset><PixelOffset>1</PixelOffset><LineOffset>64</LineOffset>'
            '</VRTRasterBand></VRTDataset>')


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def source_escapes(root: Path, outside: Path) -> dict[str, str]:
    """VRTs whose sources leave the root: name -> path. Unconfined GDAL reads every one of them."""
    secret = str(outside / "secret.tif")
    return {
        # GDAL reads relativeToVRT with atoi: "true" is 0, the absolute path is opened as written
        "relative_true": write(root / "rel.vrt", vrt_text(simple_source(secret, relative="true"))),
        "prefixed_attribute": write(root / "prefix.vrt", vrt_text(
            '<SimpleSource xmlns:x="urn:x"><SourceFilename x:relativeToVRT="1" relativeToVRT="0">'
            f'{escape(secret)}</SourceFilename><SourceBand>1</SourceBand></SimpleSource>')),
        "driver_prefix": write(root / "gtiffdir.vrt", vrt_text(simple_source(f"GTIFF_DIR:1:{secret}"))),
        "inline_vrt_passwd": write(root / "inline.vrt", vrt_text(simple_source(passwd_vrt_text()), size=8)),
        "passwd_raw_band": write(root / "passwd.vrt", passwd_vrt_text()),
        "carriage_return": write(root / "cr.vrt", vrt_text(simple_source(secret)).replace("<SimpleSource>",
                                                                                          "<SimpleSource>\r")),
    }


def overview_escape(root: Path, outside: Path) -> str:
    """A GeoTIFF whose .aux.xml names an overview file outside the root (entity-escaped name)."""
    small_geotiff(outside / "big_overview.tif", size=32)
    raster = small_geotiff(root / "aux.tif", size=SIZE)
    (root / "aux.tif.aux.xml").write_text(
        '<PAMDataset><Metadata domain="OVERVIEWS"><MDI key="OVERVIEW_&#70;ILE">'
        f'{escape(str(outside / "big_overview.tif"))}</MDI></Metadata></PAMDataset>')
    return str(raster)


def fifo_sidecars(root: Path) -> dict[str, str]:
    """GeoTIFFs with a FIFO where GDAL's metadata readers look (<stem>_metadata.txt, METADATA.DIM)."""
    out = {}
    small_geotiff(root / "meta.tif")
    os.mkfifo(root / "meta_metadata.txt")
    out["stem_metadata_fifo"] = str(root / "meta.tif")
    (root / "dim").mkdir()
    small_geotiff(root / "dim" / "scene.tif")
    os.mkfifo(root / "dim" / "METADATA.DIM")
    out["metadata_dim_fifo"] = str(root / "dim" / "scene.tif")
    return out


def device_links(root: Path) -> dict[str, str]:
    (root / "zero.tif").symlink_to("/dev/zero")
    small_geotiff(root / "zmeta.tif")
    (root / "zmeta_metadata.txt").symlink_to("/dev/zero")
    (root / "urandom").mkdir()
    small_geotiff(root / "urandom" / "u.tif")
    (root / "urandom" / "METADATA.DIM").symlink_to("/dev/urandom")
    return {"raster_is_dev_zero": str(root / "zero.tif"), "sidecar_is_dev_zero": str(root / "zmeta.tif"),
            "sidecar_is_dev_urandom": str(root / "urandom" / "u.tif")}


def vrt_dag(root: Path, levels: int = 8, fan: int = 20) -> str:
    """levels VRTs, each with `fan` sources of the one below: fan**levels source reads."""
    (root / "dag").mkdir()
    below = small_geotiff(root / "dag" / "leaf.tif", size=16)
    for k in range(levels):
        text = '<VRTDataset rasterXSize="16" rasterYSize="16"><VRTRasterBand dataType="Byte" band="1">'
        text += "".join(simple_source(str(below)) for _ in range(fan)) + "</VRTRasterBand></VRTDataset>"
        below = root / "dag" / f"level{k}.vrt"
        below.write_text(text)
    return str(below)


def one_huge_tile(root: Path) -> str:
    """A 272-byte GeoTIFF with one 65536 x 65536 tile (4 GiB when decoded)."""
    path = root / "bigtile.tif"
    ds = gdal.GetDriverByName("GTiff").Create(str(path), 65536, 65536, 1, gdal.GDT_Byte,
                                              ["TILED=YES", "BLOCKXSIZE=65536", "BLOCKYSIZE=65536", "SPARSE_OK=TRUE"])
    ds = None
    return str(path)


def huge_vrt(root: Path) -> str:
    """A ~150-byte VRT declaring 4194304 x 4194304 pixels."""
    return write(root / "huge.vrt", '<VRTDataset rasterXSize="4194304" rasterYSize="4194304">'
                                    '<VRTRasterBand dataType="Byte" band="1"/></VRTDataset>')


def loopback_url_vrt(root: Path, port: int) -> str:
    return write(root / "url.vrt", vrt_text(simple_source(f"/vsicurl/http://127.0.0.1:{port}/x.tif")))
