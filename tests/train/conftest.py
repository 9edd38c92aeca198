"""Fixtures of the training suite: a tiny ringed-needle data set written once per session."""

from __future__ import annotations

import pytest

from lrs_focus.train.synthetic import SceneSpec, write_dataset

#: small rasters for speed (the needle check's held-out rasters are 1344 px a side)
TEST_SPEC = SceneSpec(size_range=(500, 640), ring_range=(0.1, 0.3), dot_ratio=(0.1, 0.4))


@pytest.fixture(scope="session")
def needle_json(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("needle"), range(4), TEST_SPEC)
