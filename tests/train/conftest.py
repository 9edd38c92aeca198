"""Fixtures of the training suite: a tiny needle data set written once per session."""

from __future__ import annotations

import pytest

from lrs_focus.train.synthetic import SceneSpec, write_dataset

#: small rasters for speed (the needle check itself uses several thousand pixels a side)
TEST_SPEC = SceneSpec(size_range=(500, 640), object_size_range=(20, 30))


@pytest.fixture(scope="session")
def needle_json(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("needle"), range(4), TEST_SPEC, kinds=("colour",))
