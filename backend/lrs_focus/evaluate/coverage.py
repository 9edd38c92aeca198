"""Did the focus land on the object? The kept tiles of a trace against a ground-truth box.

The kept set is the one whose tokens reach the LLM: the tiles marked kept at the level where the
coarse-to-fine loop stopped (`trace["stopped_at"]`, else the finest level with a kept tile).
Boxes are given in the pixels of the benchmark's original image (`image_size` [W, H]); when the
raster on disk has another size (reduced test images), the box is scaled to it.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from shapely.geometry import box


def output_level(trace: dict[str, Any]) -> Optional[dict[str, Any]]:
    levels = trace.get("levels") or []
    stopped = trace.get("stopped_at")
    for level in levels:
        if stopped is not None and level.get("level") == stopped:
            if any(t.get("kept") for t in level.get("tiles", [])):
                return level
    for level in reversed(levels):
        if any(t.get("kept") for t in level.get("tiles", [])):
            return level
    return None


def kept_tiles(trace: dict[str, Any]) -> list[dict[str, Any]]:
    """[{"level", "row", "col", "window"}] of the kept tiles at the output level."""
    level = output_level(trace)
    if level is None:
        return []
    return [
        {"level": level.get("level"), "row": t["row"], "col": t["col"], "window": list(t["window"])}
        for t in level["tiles"]
        if t.get("kept")
    ]


def raster_size(trace: dict[str, Any]) -> Optional[tuple[float, float]]:
    """(W, H) of the raster, read off the base level: its tile windows cover the whole image."""
    levels = trace.get("levels") or []
    if not levels or not levels[0].get("tiles"):
        return None
    windows = [t["window"] for t in levels[0]["tiles"]]
    return float(max(w[2] for w in windows)), float(max(w[3] for w in windows))


def covers_box(
    trace: dict[str, Any], hbox: Sequence[float], image_size: Optional[Sequence[float]] = None
) -> Optional[bool]:
    """True when the box intersects a kept tile; None when the trace keeps no tiles at all
    (thumbnail-only runs) so the question does not apply."""
    tiles = kept_tiles(trace)
    if not tiles:
        return None
    x0, y0, x1, y1 = (float(v) for v in hbox)
    size = raster_size(trace)
    if image_size and size:
        sx, sy = size[0] / float(image_size[0]), size[1] / float(image_size[1])
        x0, x1, y0, y1 = x0 * sx, x1 * sx, y0 * sy, y1 * sy
    target = box(x0, y0, max(x1, x0 + 1e-6), max(y1, y0 + 1e-6))
    # intersects() alone would count a shared edge; the overlap must have an area
    return any(target.intersection(box(*t["window"])).area > 0 for t in tiles)
