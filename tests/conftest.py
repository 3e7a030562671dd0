"""Shared fixtures: small synthetic datasets made once per test session, each module's own local Ray, and the time
limit of slow tests (the suite's policy: docs/architecture.md#tests)."""

import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)

SLOW_TIMEOUT_S = 3600  # a test marked slow may take this long; the others pyproject.toml's `timeout`
RAY_CPUS = 2  # what the local Ray of ray_local advertises unless a module sets RAY_INIT


def pytest_collection_modifyitems(items):
    """Give each slow test without its own timeout marker the longer limit SLOW_TIMEOUT_S."""
    for item in items:
        if item.get_closest_marker("slow") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(SLOW_TIMEOUT_S))


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory) -> Path:
    """A small synthetic store: 24 frames, 6 views, 64x64 (a few seconds to make)."""
    from posesplat.synth import make_dataset

    return make_dataset(tmp_path_factory.mktemp("data") / "small.zarr", frames=24, views=6, height=64, width=64,
                        seed=3, progress=False)


@pytest.fixture(scope="module")
def ray_local(request):
    """The module's own fresh local Ray (RAY_CPUS CPUs, or the module's `RAY_INIT` arguments to ray.init), shut down
    after the module; refuses to start while another Ray is up in this process."""
    import ray

    assert not ray.is_initialized(), "a Ray left up by an earlier test would be joined instead"
    ray.init(address="local", include_dashboard=False, log_to_driver=False,
             **getattr(request.module, "RAY_INIT", {"num_cpus": RAY_CPUS}))
    yield ray.cluster_resources()
    ray.shutdown()


@pytest.fixture(scope="module", autouse=True)
def no_ray_left_behind():
    """Fail the module that leaves a Ray up in this process (the next module would join it), and shut that Ray down."""
    yield
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()
        pytest.fail("this module left a Ray instance up: start Ray with the ray_local fixture")
