"""Tile features that outlive a question: a byte-bounded cache and the encoder that fills it.

A tile's features depend on the raster's pixels, the bands and stretch, the window, the pixel
path, the model and its dtype, never on the question (only RFM scores and the answer do). So a
follow-up question about the same raster re-encodes nothing it has seen: the thumbnail, the base
level and every finer tile already visited come from here, and the raster is not read for them.

Bounds: `device_bytes` of features stay on the model's device (GPU memory first); the least
recently used spill to host memory, up to `host_bytes`, and are dropped after that. On a CPU
engine both budgets add up to one host tier. A key carries the raster's identity (size and
modification time of every file GDAL reads for it), so a rewritten raster misses and its stale
entries are purged as soon as the new version is seen.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Optional

import numpy as np
import torch

DEFAULT_CACHE_MB = 1024


@dataclass(frozen=True)
class ViewKey:
    """Everything that decides a tile's pixels and features, except the tile itself."""

    identity: tuple  # RasterSource.identity(): path and (name, size, mtime) of its files
    bands: tuple
    stretch: Optional[tuple]
    window: Optional[tuple]
    pixels: str  # "exact" | "gdal"
    model: str
    dtype: str

    @property
    def path(self) -> str:
        return str(self.identity[0])


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


class FeatureCache:
    """LRU over feature tensors keyed by (ViewKey, level, row, col), bounded in bytes per tier."""

    def __init__(self, device_bytes: int = DEFAULT_CACHE_MB << 20, host_bytes: int | None = None,
                 device: str = "cpu", spill: bool | None = None):
        self.device = torch.device(device)
        on_host = self.device.type == "cpu" if spill is None else not spill
        host = device_bytes if host_bytes is None else host_bytes
        self.budgets = {"device": 0 if on_host else int(device_bytes), "host": int(host) + (int(device_bytes) if on_host else 0)}
        self.tiers: dict[str, OrderedDict[Hashable, torch.Tensor]] = {"device": OrderedDict(), "host": OrderedDict()}
        self.used = {"device": 0, "host": 0}
        self.meta: OrderedDict[Hashable, Any] = OrderedDict()  # small per-raster facts (stretch statistics)
        self.hits = self.misses = 0
        self._lock = threading.Lock()
        self._versions: dict[str, tuple] = {}  # path -> identity last seen
        self._host_only: set = set()

    # -- entries --------------------------------------------------------------------------------
    def get(self, key: Hashable) -> torch.Tensor | None:
        with self._lock:
            for tier in ("device", "host"):
                entries = self.tiers[tier]
                if key in entries:
                    value = entries.pop(key)
                    self.used[tier] -= _nbytes(value)
                    self.hits += 1
                    self._insert(key, value)  # promote to the device tier (most recent)
                    for t in ("device", "host"):
                        if key in self.tiers[t]:
                            return self.tiers[t][key]
                    return value  # larger than a tier's budget: served once, not kept
            self.misses += 1
            return None

    def put(self, key: Hashable, value: torch.Tensor, host: bool = False) -> None:
        """Cache `value`; `host=True` keeps it in host memory (pixels, not features)."""
        with self._lock:
            for tier in ("device", "host"):
                old = self.tiers[tier].pop(key, None)
                if old is not None:
                    self.used[tier] -= _nbytes(old)
            if host:
                self._host_only.add(key)
            self._insert(key, value.detach())

    def _insert(self, key: Hashable, value: torch.Tensor) -> None:
        tier = "device" if self.budgets["device"] and key not in self._host_only else "host"
        if tier == "device":
            value = value.to(self.device)
        elif value.device.type != "cpu":
            value = value.cpu()
        if _nbytes(value) > self.budgets[tier]:
            return  # larger than the whole budget: not cached
        self.tiers[tier][key] = value
        self.used[tier] += _nbytes(value)
        self._evict()

    def _evict(self) -> None:
        dev, host = self.tiers["device"], self.tiers["host"]
        while self.used["device"] > self.budgets["device"] and dev:
            key, value = dev.popitem(last=False)
            self.used["device"] -= _nbytes(value)
            if _nbytes(value) <= self.budgets["host"]:
                host[key] = value.cpu()
                self.used["host"] += _nbytes(value)
        while self.used["host"] > self.budgets["host"] and host:
            key, value = host.popitem(last=False)
            self.used["host"] -= _nbytes(value)
            self._host_only.discard(key)

    # -- raster versions ------------------------------------------------------------------------
    def observe(self, view: ViewKey) -> None:
        """Forget every entry of an older version of this raster (its files changed)."""
        with self._lock:
            seen = self._versions.get(view.path)
            self._versions[view.path] = view.identity
            if seen is None or seen == view.identity:
                return
            stale_view = lambda v: isinstance(v, ViewKey) and v.path == view.path and v.identity != view.identity  # noqa: E731
            for tier in ("device", "host"):
                for k in [k for k in self.tiers[tier] if stale_view(k[0])]:
                    self.used[tier] -= _nbytes(self.tiers[tier].pop(k))
                    self._host_only.discard(k)
            for k in [k for k in self.meta if (k[0] == view.path and k[1] != view.identity) or stale_view(k[0])]:
                del self.meta[k]

    def get_meta(self, key: Hashable) -> Any:
        with self._lock:
            if key in self.meta:
                self.meta.move_to_end(key)
                return self.meta[key]
            return None

    def put_meta(self, key: Hashable, value: Any, limit: int = 256) -> None:
        with self._lock:
            self.meta[key] = value
            while len(self.meta) > limit:
                self.meta.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            for tier in self.tiers.values():
                tier.clear()
            self.used = {"device": 0, "host": 0}
            self.meta.clear()
            self._versions.clear()
            self._host_only.clear()

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "entries": len(self.tiers["device"]) + len(self.tiers["host"]),
                "device_mb": self.used["device"] / 2**20,
                "host_mb": self.used["host"] / 2**20,
                "budget_mb": {k: v / 2**20 for k, v in self.budgets.items()},
                "hits": self.hits,
                "misses": self.misses,
            }


class CachedGrids:
    """The exact pixel path's per-level sample grids of one raster view, kept in the cache's host
    tier (bytes counted), so that a follow-up's coarse tiles read nothing. Dict-like for
    `ExactPyramid(grids=...)`."""

    def __init__(self, cache: FeatureCache, view: ViewKey):
        self.cache, self.view = cache, view

    @property
    def capacity_bytes(self) -> int:
        """What the host tier can hold: the base pass gathers no more grids than this (a grid the
        cache would refuse is gathered for nothing)."""
        return int(self.cache.budgets["host"])

    def get(self, level: int) -> Any:
        from .exact_pixels import SampleGrid

        pixels = self.cache.get((self.view, "grid", level))
        axes = self.cache.get_meta((self.view, "grid", level))
        if pixels is None or axes is None:
            return None
        return SampleGrid(axes[0], axes[1], pixels.numpy())

    def __contains__(self, level: int) -> bool:
        return self.get(level) is not None

    def __setitem__(self, level: int, grid: Any) -> None:
        self.cache.put_meta((self.view, "grid", level), (grid.rows, grid.cols))
        self.cache.put((self.view, "grid", level), torch.from_numpy(grid.pixels), host=True)


class TileEncoder:
    """The `encode` callable of `focus.run_focus`: cached features, missing tiles read ahead.

    Pixels of the next batch are read in a background thread while the model encodes the current
    one (GDAL reads and numpy release the GIL); only that one thread touches the raster meanwhile.
    """

    def __init__(self, model: Any, pyramid: Any, view: ViewKey | None, cache: FeatureCache | None,
                 check: Callable[[str, Optional[int], float, str], None]):
        from .stage_clock import clock_of

        self.model, self.pyramid, self.view, self.cache, self.check = model, pyramid, view, cache, check
        self.clock = clock_of(model)  # synchronised on CUDA: the tower's kernels are billed here
        self.seconds = 0.0
        self.encoded = 0  # tiles run through the vision tower (cache misses)
        self.cached = 0  # tiles served from the cache

    def _key(self, level: Any, row: int, col: int) -> tuple:
        return (self.view, level, int(row), int(col))

    def thumbnail(self) -> torch.Tensor:
        """The thumbnail's tokens (P*P, d), cached like a tile."""
        key = self._key("thumbnail", 0, 0)
        hit = self.cache.get(key) if (self.cache is not None and self.view is not None) else None
        if hit is not None:
            return hit.to(self.model.device)
        image = self.pyramid.thumbnail()
        if getattr(self.model, "keeps_thumbnail_aspect", False):  # Qwen-VL: the image part only, no padding
            th, tw = self.pyramid.geometry.thumbnail_size
            image = image[:th, :tw]
        feats = self.model.encode_thumbnail(image)
        if self.cache is not None and self.view is not None:
            self.cache.put(key, feats)
        return feats

    def __call__(self, level: int, tiles: list[tuple[int, int]]) -> torch.Tensor:
        t0 = self.clock.now()
        found: dict[tuple[int, int], torch.Tensor] = {}
        if self.cache is not None and self.view is not None:
            for tile in tiles:
                hit = self.cache.get(self._key(level, *tile))
                if hit is not None:
                    found[tile] = hit.to(self.model.device)
        self.cached += len(found)
        missing = [t for t in tiles if t not in found]
        batch = max(1, int(self.model.config.encode_batch))
        chunks = [missing[i:i + batch] for i in range(0, len(missing), batch)]
        if chunks:
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tile-reader") as reader:
                pending: Future = reader.submit(self._read, level, chunks[0])
                for i, chunk in enumerate(chunks):
                    images = self._wait(pending)
                    if i + 1 < len(chunks):
                        pending = reader.submit(self._read, level, chunks[i + 1])
                    if i:
                        self.check("encode", level, i * batch / len(missing),
                                   f"encoded {i * batch}/{len(missing)} tiles of level {level}")
                    feats = self.model.encode_tiles(images)
                    for tile, f in zip(chunk, feats):
                        found[tile] = f
                        if self.cache is not None and self.view is not None:
                            self.cache.put(self._key(level, *tile), f.clone())  # not a view of the batch
        self.encoded += len(missing)
        out = torch.stack([found[t] for t in tiles])
        self.seconds += self.clock.now() - t0
        return out

    def _wait(self, pending: Future) -> np.ndarray:
        """The read-ahead's pixels; a slow read (a remote or many-source raster) keeps the work meter's
        heartbeat going, and a cancel does not wait for it."""
        from concurrent.futures import TimeoutError as Pending

        from .work_meter import meter_of

        meter = meter_of(self.check)
        while True:
            try:
                return pending.result(timeout=0.25 if meter is not None else None)
            except Pending:
                meter.beat()

    def _read(self, level: int, chunk: list[tuple[int, int]]) -> np.ndarray:
        return self.pyramid.stack(level, chunk)
