"""Shared fixtures: small synthetic datasets made once per test session."""

from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory) -> Path:
    """A small synthetic store: 24 frames, 6 views, 64x64 (a few seconds to make)."""
    from posesplat.synth import make_dataset

    return make_dataset(tmp_path_factory.mktemp("data") / "small.zarr", frames=24, views=6, height=64, width=64,
                        seed=3, progress=False)
