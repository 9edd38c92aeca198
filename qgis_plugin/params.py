"""Parameter objects passed from the UI to background work.

Tasks get plain, immutable copies of everything they need (QGIS objects must not be touched
from a worker thread), so every job is described by these dataclasses and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

MODES = ("paper", "released", "thumbnail", "all-tiles")
#: The largest N_max the backend accepts (lrs_focus.engine.MAX_N_MAX; larger asks get bad_options).
MAX_N_MAX = 1024
DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"


@dataclass(frozen=True)
class AskOptions:
    """The method options sent with a question (the backend's `AskOptions`, plugin side)."""

    mode: str = "paper"
    alpha: float = 0.25
    n_max: Optional[int] = None  # None or 0: the model's own default (40 Vicuna, 80 Qwen2)
    bands: Optional[tuple[int, ...]] = None  # 1-based, 1 or 3: what the layer displays (or the override)
    stretch: Optional[tuple[tuple[float, float], ...]] = None  # [low, high] per band -> 0..255, as displayed
    window: Optional[tuple[int, int, int, int]] = None  # pixel window x0, y0, x1, y1 (end exclusive)

    def to_request(self) -> dict[str, Any]:
        """Only the options the user set, so the backend's defaults apply to the rest."""
        out: dict[str, Any] = {"mode": self.mode, "alpha": float(self.alpha)}
        if self.n_max:
            out["n_max"] = int(self.n_max)
        if self.bands:
            out["bands"] = [int(b) for b in self.bands]
        if self.stretch:
            out["stretch"] = [[float(lo), float(hi)] for lo, hi in self.stretch]
        if self.window:
            out["window"] = [int(v) for v in self.window]
        return out


@dataclass(frozen=True)
class Timeouts:
    """How long to wait for the backend, in seconds.

    `health` bounds the first contact (ping), so a dead backend is reported within seconds;
    `start` replaces it when the plugin has just launched a local backend that loads a model.
    `silence` bounds the time without any message while a job runs; past it the client asks
    for a status and declares the backend dead if that goes unanswered for `health` seconds.
    """

    health: float = 5.0
    start: float = 120.0
    silence: float = 5.0
    cancel: float = 5.0
    poll: float = 0.2


@dataclass(frozen=True)
class BackendSettings:
    endpoint: str = DEFAULT_ENDPOINT
    start_command: str = ""  # split into an argument list with shlex; never run by a shell
    timeouts: Timeouts = field(default_factory=Timeouts)


@dataclass(frozen=True)
class AskRequest:
    """One question about one raster file, as the task sends it."""

    raster_path: str
    question: str
    options: AskOptions = field(default_factory=AskOptions)
    layer_name: str = ""


@dataclass(frozen=True)
class StoreTarget:
    """Where the task files a result: the project's GeoPackage and the raster's ground.

    `geotransform` is GDAL's for the raster ((0, 1, 0, 0, 0, -1) without georeferencing, which is
    where QGIS draws such rasters); `crs_wkt` the raster layer's CRS ("" without one).
    """

    gpkg_path: str
    geotransform: tuple[float, ...]
    crs_wkt: str
    fallback_path: str = ""  # where to file it when gpkg_path cannot be written (read-only folder)
    area_window: Optional[tuple[int, int, int, int]] = None  # the asked pixel window (None: whole raster)
