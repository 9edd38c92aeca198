"""Helpers for the evaluation tests: a stand-in engine, real-record samples with small images."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest


class FakeEngine:
    """A deterministic `AskEngine`: a 2x2 base grid over the raster, keeps the top-left tile and
    answers "yes". It opens the raster with GDAL so unreadable files fail as with the real one."""

    def __init__(self):
        self.asked: list[str] = []

    def describe(self):
        return {"model": "fake", "device": "cpu", "dtype": "float32", "random_weights": True}

    def ask(self, raster, question, options=None, progress=None, should_stop=None, job_id=""):
        from lrs_focus.raster import RasterSource

        self.asked.append(job_id)
        src = RasterSource.open(raster)
        w, h = src.width, src.height
        tiles = []
        for r in range(2):
            for c in range(2):
                window = [c * w // 2, r * h // 2, (c + 1) * w // 2, (r + 1) * h // 2]
                tiles.append({"row": r, "col": c, "window": window, "encoded": True,
                              "score": float(r == 0 and c == 0), "kept": r == 0 and c == 0})
        mode = options.mode if options else "paper"
        kept = mode != "thumbnail"
        if not kept:
            for t in tiles:
                t["kept"] = False
        return {
            "answer": "yes",
            "trace": {"levels": [{"level": 0, "grid": [2, 2], "tiles": tiles}], "stopped_at": 0, "mode": mode},
            "counts": {"tiles_encoded": 4, "vit_tokens": 4 * 576 + 576,
                       "llm_vision_tokens": 576 + (144 if kept else 0), "prefill_tflops": 0.1},
            "timings": {"total": 0.0},
        }


@pytest.fixture
def fake_engine():
    return FakeEngine()


def sample_records(path: Path, per_subset: int = 1, seed: int = 0, with_count: bool = True) -> list[dict]:
    """A few real LRS-VQA records: `per_subset` boxed ones per subset (+ one count question)."""
    records = [json.loads(line) for line in open(path, encoding="utf-8")]
    rng = random.Random(seed)
    chosen = []
    for subset in ("FAIR", "GLH-Bridge", "STAR"):
        boxed = [r for r in records if r["question_id"].startswith(subset + "_") and "hbox" in r]
        chosen += rng.sample(boxed, per_subset)
    if with_count:
        chosen.append(rng.choice([r for r in records if r["category"] == "count"]))
    return chosen


def synthesise_images(records: list[dict], root: Path, long_side: int = 700) -> None:
    """Write each record's image under `root` at reduced size, same aspect ratio, same format
    (GeoTIFF for .tif, PNG for .png) so the runner sees the benchmark's layout."""
    from osgeo import gdal

    from lrs_focus.samples import write_synthetic_raster

    for i, rec in enumerate(records):
        target = root / rec["image"]
        if target.exists():
            continue
        w, h = rec["image_size"]
        scale = long_side / max(w, h)
        width, height = max(1, round(w * scale)), max(1, round(h * scale))
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.suffix.lower() == ".png":
            tif = target.with_suffix(".tmp.tif")
            write_synthetic_raster(tif, width, height, geotransform=None, seed=i)
            gdal.Translate(str(target), str(tif), format="PNG")
            tif.unlink()
        else:
            write_synthetic_raster(target, width, height, seed=i)


def write_jsonl(path: Path, records, extra_lines=()) -> Path:
    with open(path, "w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec) + "\n")
        for line in extra_lines:
            fh.write(line + "\n")
    return path


@pytest.fixture(scope="session")
def evalkit():
    """The helpers above, for test modules (importlib mode: tests cannot import conftest)."""
    from types import SimpleNamespace

    return SimpleNamespace(FakeEngine=FakeEngine, sample_records=sample_records,
                           synthesise_images=synthesise_images, write_jsonl=write_jsonl)
