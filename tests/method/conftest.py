"""Fixtures of the method tests: tiny random models (float32) and an in-memory raster source."""

from __future__ import annotations

import numpy as np
import pytest
import torch


class ArraySource:
    """Stands in for raster.RasterSource over a numpy RGB image (nearest-neighbour resampling)."""

    def __init__(self, image: np.ndarray):
        self.image = image
        self.height, self.width = image.shape[:2]
        self.geotransform = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
        self.crs_wkt = ""

    def read_rgb(self, window, out_size, pad_rgb=(0, 0, 0)):
        x0, y0, x1, y1 = window
        h, w = out_size
        ys = np.clip((y0 + (np.arange(h) + 0.5) * (y1 - y0) / h).astype(int), 0, self.height - 1)
        xs = np.clip((x0 + (np.arange(w) + 0.5) * (x1 - x0) / w).astype(int), 0, self.width - 1)
        return np.ascontiguousarray(self.image[ys][:, xs])


@pytest.fixture
def array_source():
    def make(height: int, width: int, seed: int = 0) -> ArraySource:
        rng = np.random.default_rng(seed)
        return ArraySource(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8))

    return make


@pytest.fixture(scope="session")
def tiny_models():
    """{"qwen2": (model, tokenizer), "llama": (model, tokenizer)}, float32, eval mode."""
    from lrs_focus.model.tiny import build_tiny

    torch.set_num_threads(2)
    return {family: build_tiny(family, seed=1) for family in ("qwen2", "llama")}


@pytest.fixture(scope="session")
def tiny_engine():
    from lrs_focus.engine import Engine

    return Engine("tiny", device="cpu")
