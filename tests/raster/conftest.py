"""Small rasters written once per session for the raster suite."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal

from lrs_focus.samples import write_synthetic_raster

gdal.UseExceptions()


@pytest.fixture(scope="session")
def rasters(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("rasters")
    out = {
        "rgb8": write_synthetic_raster(d / "rgb8.tif", 1344, 1344, compress=None),
        "rgb8_ovr": write_synthetic_raster(d / "rgb8_ovr.tif", 3000, 2000, overviews=True),
        "u16": write_synthetic_raster(d / "u16.tif", 1200, 900, dtype="UInt16"),
        "grey": write_synthetic_raster(d / "grey.tif", 700, 500, bands=1),
        "four": write_synthetic_raster(d / "four.tif", 400, 300, bands=4, dtype="UInt16", rgb=False),
        "rotated": write_synthetic_raster(
            d / "rotated.tif", 800, 600, geotransform=(300000.0, 8.66, -5.0, 5000000.0, -5.0, -8.66)
        ),
        "nogeo": write_synthetic_raster(d / "nogeo.tif", 640, 480, geotransform=None),
    }
    # palette raster: 4 colours in stripes
    pal = d / "palette.tif"
    ds = gdal.GetDriverByName("GTiff").Create(str(pal), 300, 200, 1, gdal.GDT_Byte)
    table = gdal.ColorTable()
    for i, rgb in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]):
        table.SetColorEntry(i, (*rgb, 255))
    band = ds.GetRasterBand(1)
    band.SetRasterColorTable(table)
    band.SetRasterColorInterpretation(gdal.GCI_PaletteIndex)
    band.WriteArray((np.arange(300)[None, :] // 75).repeat(200, 0).astype(np.uint8))
    ds = None
    out["palette"] = pal
    # 16-bit with a nodata block (top-left quarter) whose value would wreck the stretch
    nd = d / "nodata.tif"
    ds = gdal.GetDriverByName("GTiff").Create(str(nd), 400, 400, 3, gdal.GDT_UInt16)
    for b in range(1, 4):
        arr = np.full((400, 400), 1000 + 100 * b, dtype=np.uint16)
        arr[:, 200:] += (np.arange(200, dtype=np.uint16) * 5)[None, :]
        arr[:200, :200] = 65535
        ds.GetRasterBand(b).WriteArray(arr)
        ds.GetRasterBand(b).SetNoDataValue(65535)
    ds = None
    out["nodata"] = nd
    return out
