"""`lrs-focus pyramid RASTER`: the Dynamic Image Pyramid of a raster (levels, grids, scales).

Opening the raster also estimates the 8-bit stretch and probes a block, so this command doubles
as a quick "can the backend read this file?" check. `--read` additionally fetches the thumbnail
and every base-level tile and reports the time taken.
"""

from __future__ import annotations

import time

from ._output import add_json_flag, emit


def _int_list(text: str) -> list[int]:
    return [int(v) for v in text.replace(" ", "").split(",") if v]


def register(subparsers) -> None:
    p = subparsers.add_parser("pyramid", help="levels of the DIP: size, tile grid, scale; thumbnail")
    p.add_argument("raster", help="any raster GDAL opens (GeoTIFF, COG, VRT, JP2, PNG, /vsi... paths)")
    p.add_argument("--bands", type=_int_list, default=None, help="1 or 3 band numbers, e.g. 4,3,2")
    p.add_argument("--tile-size", type=int, default=336, help="vision tile size B (default 336)")
    p.add_argument("--base-long-side", type=int, default=None, help="base level long side (default 3*B)")
    p.add_argument("--tokens-per-tile", type=int, default=12, help="pooled tokens per tile side (12)")
    p.add_argument("--percentiles", type=float, nargs=2, default=(2.0, 98.0), metavar=("LOW", "HIGH"),
                   help="stretch percentiles for non-8-bit data (default 2 98)")
    p.add_argument("--read", action="store_true", help="also read the thumbnail and all base-level tiles")
    add_json_flag(p)
    p.set_defaults(func=run)


def build_document(args) -> dict:
    from ..pyramid import ImagePyramid, PyramidConfig
    from ..raster import RasterSource

    t0 = time.perf_counter()
    src = RasterSource.open(args.raster, bands=args.bands, percentiles=tuple(args.percentiles))
    opened = time.perf_counter() - t0
    cfg = PyramidConfig(
        tile_size=args.tile_size,
        base_long_side=args.base_long_side or 3 * args.tile_size,
        tokens_per_tile=args.tokens_per_tile,
    )
    pyr = ImagePyramid(src, cfg)
    geo = pyr.geometry
    doc = geo.to_dict()
    for level, entry in zip(geo.levels, doc["levels"]):
        factor = src.width / level.resized[1]  # original pixels per level pixel
        entry["source_px_per_px"] = round(factor, 4)
        entry["overview"] = src.overview_for(factor)
        entry["tiles"] = level.grid[0] * level.grid[1]
    doc["thumbnail"]["overview"] = src.overview_for(src.width / geo.thumbnail_size[1])
    raster = src.describe()
    doc["raster"] = raster
    doc["crs_wkt"] = raster.pop("crs_wkt")
    doc["timings"] = {"open": round(opened, 4)}
    if args.read:
        t1 = time.perf_counter()
        pyr.thumbnail()
        base = geo.levels[0]
        pyr.tiles(base, [(r, c) for r in range(base.grid[0]) for c in range(base.grid[1])])
        doc["timings"]["thumbnail_and_base"] = round(time.perf_counter() - t1, 4)
    return doc


def format_text(doc: dict) -> str:
    h, w = doc["image"]["size"]
    r = doc["raster"]
    lines = [
        f"{r['path']}: {h} x {w} px (h x w), {r['band_count']} band(s) {r['data_type']}, "
        f"RGB from bands {r['bands']}{' (palette)' if r['palette'] else ''}, "
        f"{len(r['overviews'])} overview(s), {'georeferenced' if r['georeferenced'] else 'no georeferencing'}",
        f"thumbnail: {doc['thumbnail']['size'][0]} x {doc['thumbnail']['size'][1]}",
        f"{'level':>5} {'scale':>9} {'size (h x w)':>15} {'resized':>15} {'grid':>8} {'tokens':>10} {'overview':>8}",
    ]
    for lv in doc["levels"]:
        ov = "-" if lv["overview"] is None else str(lv["overview"])
        lines.append(
            f"{lv['level']:>5} {lv['scale']:>9.5f} {lv['size'][0]:>7} x {lv['size'][1]:<5} "
            f"{lv['resized'][0]:>7} x {lv['resized'][1]:<5} {lv['grid'][0]:>3} x {lv['grid'][1]:<3} "
            f"{lv['token_grid'][0]:>4} x {lv['token_grid'][1]:<4} {ov:>8}"
        )
    if "thumbnail_and_base" in doc["timings"]:
        lines.append(f"read thumbnail + base tiles in {doc['timings']['thumbnail_and_base']:.3f} s")
    return "\n".join(lines)


def run(args) -> int:
    emit(args, build_document(args), format_text)
    return 0
