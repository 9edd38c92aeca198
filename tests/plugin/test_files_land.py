"""The files of `lrs-focus ask --out FILE.geojson --out FILE.gpkg --heatmap FILE.tif` land on the
raster when opened in real QGIS as they are: rasters of six kinds, positions compared numerically
in the raster layer's CRS after QGIS's own transforms.

Kinds: 6-band 16-bit in Albers (EPSG:5070) asked with bands 3,2,1; a palette raster; a rotated
geotransform; single-band float in geographic EPSG:4326; a CRS without an EPSG code (custom
PROJ string); no georeferencing at all (GeoJSON refused: it can only be WGS 84; GeoPackage in
pixel coordinates, y negative downward, where QGIS draws the raster).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal, osr

from lrs_focus.heatmap import cell_geotransform, decode
from lrs_focus.samples import write_synthetic_raster

pytestmark = [pytest.mark.qgis]
LRS_FOCUS = str(Path(sys.executable).parent / "lrs-focus")
CUSTOM_TM = "+proj=tmerc +lat_0=0 +lon_0=7.3 +k=0.9996 +x_0=500000 +y_0=0 +ellps=WGS84 +units=m +no_defs"


def _palette(path: Path) -> Path:
    ds = gdal.GetDriverByName("GTiff").Create(str(path), 900, 700, 1, gdal.GDT_Byte)
    ds.SetGeoTransform([400000.0, 2.0, 0.0, 5500000.0, 0.0, -2.0])
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32633)
    ds.SetSpatialRef(srs)
    table = gdal.ColorTable()
    for i, rgb in enumerate([(200, 30, 30), (30, 160, 60), (40, 60, 200), (240, 220, 40)]):
        table.SetColorEntry(i, (*rgb, 255))
    band = ds.GetRasterBand(1)
    band.SetRasterColorTable(table)
    band.SetRasterColorInterpretation(gdal.GCI_PaletteIndex)
    yy, xx = np.indices((700, 900))
    band.WriteArray(((xx // 150 + yy // 120) % 4).astype(np.uint8))
    ds = None
    return path


def _custom_crs(path: Path) -> Path:
    return write_synthetic_raster(path, 900, 700, geotransform=(480000.0, 1.5, 0.0, 5200000.0, 0.0, -1.5),
                                  crs=CUSTOM_TM)


KINDS = {
    "multiband_albers": lambda p: write_synthetic_raster(p, 900, 700, bands=6, dtype="UInt16", rgb=False,
                                                         geotransform=(-1_500_000.0, 30.0, 0.0, 2_100_000.0, 0.0, -30.0),
                                                         epsg=5070),
    "palette": _palette,
    "rotated": lambda p: write_synthetic_raster(p, 800, 600, geotransform=(300000.0, 8.66, -5.0, 5000000.0, -5.0, -8.66)),
    "float_geographic": lambda p: write_synthetic_raster(p, 900, 700, bands=1, dtype="Float32",
                                                         geotransform=(10.0, 0.0005, 0.0, 50.0, 0.0, -0.0005), epsg=4326),
    "custom_crs": _custom_crs,
    "no_georeferencing": lambda p: write_synthetic_raster(p, 900, 700, geotransform=None),
}
EXTRA = {"multiband_albers": ["--bands", "3,2,1"]}


def _geotransform(path):
    return gdal.Open(str(path)).GetGeoTransform(can_return_null=True) or (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)


def _bbox_of_window(gt, window):
    x0, y0, x1, y1 = window
    pts = [gdal.ApplyGeoTransform(list(gt), x, y) for x, y in [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]]
    return [min(p[0] for p in pts), min(p[1] for p in pts), max(p[0] for p in pts), max(p[1] for p in pts)]


def _probes(grid, gt, interior=False):
    """Cell centres (in the raster's CRS) of the hottest cell and a few others, with their values.

    `interior`: not on the grid's border. QGIS warps a rotated raster north-up, and at the sharp
    corners of its footprint a border cell's centre may fall on a warped pixel left empty."""
    values = grid.values
    finite = np.argwhere(np.isfinite(values))
    if interior:
        rows, cols = values.shape
        finite = finite[(finite[:, 0] > 0) & (finite[:, 0] < rows - 1) & (finite[:, 1] > 0) & (finite[:, 1] < cols - 1)]
    picks = [tuple(finite[np.argmax(values[finite[:, 0], finite[:, 1]])])]
    picks += [tuple(finite[i]) for i in np.linspace(0, len(finite) - 1, 4).astype(int)]
    cell_gt = cell_geotransform(gt, grid.window, grid.shape)
    points = [gdal.ApplyGeoTransform(list(cell_gt), c + 0.5, r + 0.5) for r, c in picks]
    return picks, points


@pytest.fixture(scope="module")
def landed(backend, run_qgis_module, tmp_path_factory):
    folder = tmp_path_factory.mktemp("kinds")
    spec, docs = [], {}
    for name, make in KINDS.items():
        raster = Path(make(folder / f"{name}.tif"))
        outs = {"gpkg": folder / f"{name}.gpkg", "heatmap": folder / f"{name}_heat.tif",
                "geojson": None if name == "no_georeferencing" else folder / f"{name}.geojson"}
        args = [LRS_FOCUS, "ask", str(raster), "Where is the brightest square?", "--endpoint", backend.endpoint,
                "--out", str(outs["gpkg"]), "--heatmap", str(outs["heatmap"]), "--json", *EXTRA.get(name, [])]
        if outs["geojson"]:
            args += ["--out", str(outs["geojson"])]
        done = subprocess.run(args, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{name}: {done.stderr[-3000:]}"
        doc = json.loads(done.stdout)
        grid = decode(doc["heatmap"])
        picks, points = _probes(grid, _geotransform(raster), interior=name == "rotated")
        docs[name] = {"doc": doc, "grid": grid, "picks": picks, "raster": raster}
        spec.append({"name": name, "raster": str(raster), "probes": points,
                     **{k: (str(v) if v else None) for k, v in outs.items()}})
    spec_file = folder / "spec.json"
    spec_file.write_text(json.dumps(spec))
    report = run_qgis_module("files_land.py", spec_file, timeout=300)
    return {case["name"]: case for case in report["cases"]}, docs


@pytest.mark.parametrize("kind", list(KINDS))
def test_tiles_land_on_the_raster(kind, landed):
    cases, docs = landed
    case, doc = cases[kind], docs[kind]["doc"]
    gt = _geotransform(docs[kind]["raster"])
    pixel = math.hypot(gt[1], gt[4])
    assert case["raster_valid"]
    want = {f"{p['level']},{p['row']},{p['col']}": (f, p) for f in doc["features"]["features"]
            for p in [f["properties"]]}
    formats = ["gpkg"] if kind == "no_georeferencing" else ["gpkg", "geojson"]
    for fmt in formats:
        layer = case[fmt]
        assert layer["valid"] and set(layer["features"]) == set(want), fmt
        tolerance = 1e-6 * pixel if fmt == "gpkg" else 0.05 * pixel  # GeoJSON: 7 decimals of a degree
        for key, (feature, props) in want.items():
            got = layer["features"][key]
            assert got["window"] == props["window"] and got["focus_rank"] == props["focus_rank"]
            assert got["bbox"] == pytest.approx(_bbox_of_window(gt, props["window"]), abs=tolerance), (fmt, key)
        # the base level covers the raster as QGIS draws it (rotated rasters: QGIS warps them north-up,
        # so its extent is the footprint's bounding box on the warped grid, within a pixel or two)
        base = [f["bbox"] for key, f in layer["features"].items() if key.startswith("0,")]
        union = [min(b[0] for b in base), min(b[1] for b in base), max(b[2] for b in base), max(b[3] for b in base)]
        assert union == pytest.approx(case["raster_extent"], abs=(2.5 * pixel if kind == "rotated" else tolerance))
    if kind == "no_georeferencing":
        assert case["raster_extent"] == [0.0, -700.0, 900.0, 0.0] and not case["raster_crs_valid"]
        assert case["gpkg"]["identity"] and case["gpkg"]["crs_description"] == "Undefined Cartesian SRS"
    else:
        assert case["gpkg"]["crs_valid"] and case["geojson"]["crs"] == "EPSG:4326"


@pytest.mark.parametrize("kind", list(KINDS))
def test_heatmap_lands_on_the_raster(kind, landed):
    cases, docs = landed
    case, grid, picks = cases[kind], docs[kind]["grid"], docs[kind]["picks"]
    gt = _geotransform(docs[kind]["raster"])
    heat = case["heatmap"]
    assert heat["valid"] and heat["crs_valid"] == case["raster_crs_valid"]
    cell_gt = cell_geotransform(gt, grid.window, grid.shape)
    cell = math.hypot(cell_gt[1], cell_gt[4])
    want = _bbox_of_window(cell_gt, (0, 0, grid.shape[1], grid.shape[0]))
    assert heat["extent"] == pytest.approx(want, abs=(1.5 * cell if kind == "rotated" else 1e-6 * cell))
    for (r, c), got in zip(picks, heat["probe_values"]):
        if kind == "rotated":  # read through QGIS's north-up warp: this cell or a neighbour
            near = grid.values[max(r - 1, 0):r + 2, max(c - 1, 0):c + 2]
            assert got is not None and np.isclose(near, got).any()
        else:
            assert got == pytest.approx(float(grid.values[r, c]), rel=1e-6)


def test_the_model_saw_the_bands_asked(landed):
    _, docs = landed
    assert docs["multiband_albers"]["doc"]["options"]["bands"] == [3, 2, 1]
