"""Real QGIS (offscreen) + a real backend: the answer reads at a glance. Rank labels are counted
from the renderer's labelingResults() at the default zoom and zoomed in, for the dock's layer and
the Processing output: ranks sit in their tile's corner (never over its middle), the top ranks
always show, none is dropped once the tiles are big enough to hold them."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.qgis
TOP_RANKS, ALL_PX = 5, 64


@pytest.fixture(scope="module")
def labels(run_qgis_module, backend, sentinel2_vrt, tmp_path_factory):
    out = tmp_path_factory.mktemp("labels") / "processing.gpkg"
    return run_qgis_module("map_labels.py", backend.endpoint, sentinel2_vrt, out, timeout=400)


def _inside(inner, outer, slack):
    return (inner[0] >= outer[0] - slack and inner[1] >= outer[1] - slack
            and inner[2] <= outer[2] + slack and inner[3] <= outer[3] + slack)


def _check(part):
    tiles = {int(k): v for k, v in part["tiles"].items()}
    ranked = {k: t for k, t in tiles.items() if t["rank"] is not None}
    n = len(ranked)
    assert n > TOP_RANKS, f"the Sentinel-2 answer has only {n} focus tiles"
    for name, zoom in part["zooms"].items():
        slack = 3.0 / zoom["px_per_unit"]  # the label's halo may reach 3 px past the outline
        for label in zoom["labels"]:
            tile = tiles[label["feature"]]
            assert label["text"] == str(tile["rank"]), "a label on a tile without a rank"
            x0, y0, x1, y1 = tile["bbox"]
            # in the tile's upper-left corner: inside the tile, clear of its centre
            assert _inside(label["rect"], tile["bbox"], slack), (name, label, tile)
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            lx0, ly0, lx1, ly1 = label["rect"]
            assert not (lx0 <= cx <= lx1 and ly0 <= cy <= ly1), f"{name}: rank {label['text']} hides its tile's middle"
            assert lx0 <= x0 + (x1 - x0) / 2 and ly1 >= y1 - (y1 - y0) / 2
    default, near = part["zooms"]["default"], part["zooms"]["near"]
    tile_px = min(t["bbox"][2] - t["bbox"][0] for t in ranked.values()) * default["px_per_unit"]
    texts = sorted(int(lab["text"]) for lab in default["labels"])
    if tile_px < ALL_PX:  # the usual default zoom of a 50-tile answer: only the best tiles are numbered
        assert texts == list(range(1, TOP_RANKS + 1)), (tile_px, texts)
    else:
        assert texts == list(range(1, n + 1))
    # zoomed in (tiles 80 px wide): every ranked tile in view carries its rank, none dropped
    ex0, ey0, ex1, ey1 = near["extent"]
    in_view = {k for k, t in ranked.items()
               if t["bbox"][0] >= ex0 and t["bbox"][2] <= ex1 and t["bbox"][1] >= ey0 and t["bbox"][3] <= ey1}
    touching = {k for k, t in ranked.items()
                if t["bbox"][0] < ex1 and t["bbox"][2] > ex0 and t["bbox"][1] < ey1 and t["bbox"][3] > ey0}
    labelled = {lab["feature"] for lab in near["labels"]}
    assert in_view and in_view <= labelled <= touching, (sorted(in_view - labelled), sorted(labelled - touching))
    return n


def test_dock_ranks_read_at_the_default_zoom(labels):
    assert labels["dock"]["labels_enabled"]
    _check(labels["dock"])


def test_processing_output_drops_no_label(labels):
    """Coarser tiles of the same layer used to be label obstacles: a rank went missing."""
    n = _check(labels["processing"])
    levels = {t["level"] for t in labels["processing"]["tiles"].values()}
    assert len(levels) > 1 and n == sum(1 for t in labels["processing"]["tiles"].values() if t["rank"] is not None)
    assert labels["processing"]["heatmap"], "the heatmap output is on by default"
