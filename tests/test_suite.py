"""The suite's own machinery (docs/architecture.md#tests): a study run as a library call leaves no Ray behind and
keeps a Ray its caller started; ray_local gives each module the same fresh Ray; every test has a time limit."""

import json

import pytest
import ray

from conftest import RAY_CPUS, SLOW_TIMEOUT_S, pytest_collection_modifyitems
from fake_study import FAKE_SPACE, fake_trial


def fake_study_argv(tmp_path, dataset) -> list[str]:
    """A study of two cheap trials (one per mode) without a report."""
    space = tmp_path / "fake.json"
    space.write_text(json.dumps({**FAKE_SPACE, "samples_per_cell": 1}))
    return ["--space", str(space), "--storage", str(tmp_path / "studies"), "--dataset", str(dataset), "--search",
            "random", "--no-report"]


def run_fake_study(tmp_path, dataset) -> int:
    """study.runner.run.main in-process, as a notebook would call it."""
    from study.runner.run import main

    (tmp_path / "log").mkdir()
    return main(fake_study_argv(tmp_path, dataset), fake_trial(tmp_path / "log", lambda *a: None))


def test_a_study_run_as_a_library_call_leaves_no_ray_behind(tmp_path, small_dataset):
    """Runs before ray_local starts this module's Ray: main starts its own and shuts it down."""
    assert not ray.is_initialized()
    assert run_fake_study(tmp_path, small_dataset) == 0
    assert not ray.is_initialized()


def test_a_study_run_in_the_callers_ray_leaves_it_up(ray_local, tmp_path, small_dataset):
    """main joins the Ray its caller started (ray_local's RAY_CPUS CPUs) and leaves it up, unchanged."""
    assert ray_local["CPU"] == RAY_CPUS
    assert run_fake_study(tmp_path, small_dataset) == 0
    assert ray.is_initialized() and ray.cluster_resources()["CPU"] == RAY_CPUS


def test_every_test_has_a_time_limit_and_slow_ones_a_longer_one(pytestconfig, request):
    """pyproject.toml sets the default limit; conftest's hook gives a slow-marked test SLOW_TIMEOUT_S (here applied
    to this test, marked slow after its own limit was set)."""
    default = float(pytestconfig.getini("timeout"))
    assert 0 < default < SLOW_TIMEOUT_S
    assert request.node.get_closest_marker("timeout") is None  # not slow: the default applies
    request.node.add_marker(pytest.mark.slow)
    pytest_collection_modifyitems([request.node])
    assert request.node.get_closest_marker("timeout").args == (SLOW_TIMEOUT_S,)
