"""The bands and stretch the layer displays, so the model sees the picture the user sees.

QGIS draws a 6-band Landsat scene as bands 3,2,1 (or 4,3,2...) with a min/max stretch per band;
the backend would otherwise read bands 1,2,3 with its own 2-98 % stretch. The layer's renderer
says what is on screen:

- multiband colour: its red, green and blue bands and each one's contrast-enhancement min/max
  (no enhancement: QGIS shows raw values clipped to 0..255, so the stretch is 0..255);
- single band grey: that band and its min/max; single band pseudocolour: that band and its
  classification min/max (the model sees it in grey: it has no use for the colour ramp);
- paletted: that band, no stretch (the backend applies the raster's own colour table);
- anything else (hillshade, contours...): the first band it uses, no stretch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from qgis.core import QgsContrastEnhancement

Stretch = tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class DisplayedBands:
    bands: Optional[tuple[int, ...]]  # 1-based, 1 or 3; None: let the backend choose
    stretch: Optional[Stretch]
    text: str  # for the dock: "bands 3,2,1 (multiband colour), stretch 120..2300 / ..."


def displayed_bands(layer) -> DisplayedBands:
    renderer = layer.renderer() if layer is not None else None
    if renderer is None:
        return DisplayedBands(None, None, "no renderer: the backend's default bands")
    kind = renderer.type()
    if kind == "multibandcolor":
        bands = (renderer.redBand(), renderer.greenBand(), renderer.blueBand())
        if any(b < 1 for b in bands):
            return DisplayedBands(None, None, "a colour channel has no band: the backend's default bands")
        ranges = [_range(e) for e in (renderer.redContrastEnhancement(), renderer.greenContrastEnhancement(),
                                      renderer.blueContrastEnhancement())]
        stretch = tuple(ranges) if all(r is not None for r in ranges) else None
        return DisplayedBands(bands, stretch, _text(bands, stretch, "multiband colour"))
    if kind == "singlebandgray":
        band = renderer.grayBand()
        r = _range(renderer.contrastEnhancement())
        stretch = (r,) if r is not None else None
        return DisplayedBands((band,), stretch, _text((band,), stretch, "single band grey"))
    if kind == "singlebandpseudocolor":
        band = renderer.band()
        lo, hi = renderer.classificationMin(), renderer.classificationMax()
        stretch = ((float(lo), float(hi)),) if _finite_span(lo, hi) else None
        return DisplayedBands((band,), stretch, _text((band,), stretch, "pseudocolour, seen in grey"))
    if kind == "paletted":
        band = renderer.band()
        return DisplayedBands((band,), None, _text((band,), None, "paletted: the raster's colour table"))
    used = [b for b in renderer.usesBands() if b >= 1]
    if used:
        return DisplayedBands((used[0],), None, _text((used[0],), None, f"{kind} renderer: band only"))
    return DisplayedBands(None, None, f"{kind} renderer: the backend's default bands")


def _range(enhancement) -> Optional[tuple[float, float]]:
    """The (low, high) a contrast enhancement maps to 0..255, as QGIS draws it."""
    if enhancement is None:
        return (0.0, 255.0)
    if enhancement.contrastEnhancementAlgorithm() == QgsContrastEnhancement.ContrastEnhancementAlgorithm.NoEnhancement:
        return (0.0, 255.0)  # raw values, clipped to what a screen channel holds
    lo, hi = enhancement.minimumValue(), enhancement.maximumValue()
    return (float(lo), float(hi)) if _finite_span(lo, hi) else None


def _finite_span(lo, hi) -> bool:
    try:
        return math.isfinite(lo) and math.isfinite(hi) and hi > lo
    except TypeError:
        return False


def _text(bands, stretch, how: str) -> str:
    out = f"band{'s' if len(bands) > 1 else ''} {','.join(map(str, bands))} ({how})"
    if stretch:
        out += ", stretch " + " / ".join(f"{lo:g}..{hi:g}" for lo, hi in stretch)
    return out


def parse_bands(text: str, band_count: int) -> tuple[Optional[tuple[int, ...]], str]:
    """The dock's / Processing's bands override: ((b, ...), "") or (None, reason); "" -> (None, "")."""
    text = text.strip()
    if not text:
        return None, ""
    try:
        bands = tuple(int(part) for part in text.replace(" ", ",").split(",") if part)
    except ValueError:
        return None, f"bands must be 1 or 3 band numbers such as 4,3,2, not {text!r}"
    if len(bands) not in (1, 3):
        return None, f"give 1 band (grey) or 3 bands (red, green, blue), not {len(bands)}"
    missing = [b for b in bands if not 1 <= b <= band_count]
    if missing:
        return None, f"the raster has {band_count} band(s); there is no band {', '.join(map(str, missing))}"
    return bands, ""


def choose(displayed: DisplayedBands, override: Optional[tuple[int, ...]]) -> tuple[Optional[tuple[int, ...]], Optional[Stretch]]:
    """Bands and stretch to send: the override wins; the display stretch only goes with the displayed bands."""
    if override is None:
        return displayed.bands, displayed.stretch
    if override == displayed.bands:
        return override, displayed.stretch
    return override, None  # other bands: the backend's own 2-98 % stretch
