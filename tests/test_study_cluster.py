"""The study on a Ray cluster (`ray.cluster_utils.Cluster`: a head and worker nodes on this machine), driven
through `--address`: trials spread across the nodes, and killing a worker node mid-trial makes that trial resume on
the other node from its checkpoint, with no lost or repeated epoch (slow); the cluster's resources, not the driver's,
decide whether trials get GPUs (fast)."""

import json
import threading
import time

import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import ray
from ray.cluster_utils import Cluster

from study.runner.preflight import check_study
from study.runner.run import main, parse_args

SPACE = {
    "name": "cluster", "base_config": {"image_downsample": 2, "valid_every": 1, "eval_frames": 2, "steps_per_epoch": 6,
                                       "base_filters": 4, "min_n": 50, "max_n": 3000},
    "modes": ["2d", "3d"], "grid": {"grid_size": [16], "max_frames": [12]},
    "search": {"lr": {"type": "loguniform", "low": 1e-3, "high": 5e-3}},
    "samples_per_cell": 1, "max_epochs": 4, "scheduler": {"type": "none"},
    "resources": {"cpus_per_trial": 1, "gpus_per_trial": 0},
}


@pytest.fixture
def cluster():
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    workers = [c.add_node(num_cpus=1) for _ in range(2)]
    c.wait_for_nodes()
    yield c, workers
    ray.shutdown()
    c.shutdown()


def test_gpu_workers_decide_gpu_even_from_a_cpu_only_head(small_dataset, tmp_path, capsys):
    """A head without GPUs and a worker node declaring one GPU (a resource count: nothing runs on it here): the plan
    is the GPU plan (no CPU scale-down, device cuda); --cpu still forces the CPU plan; --gpu-mem-mb is used as given."""
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "num_gpus": 0, "include_dashboard": False})
    try:
        c.add_node(num_cpus=1, num_gpus=1)
        c.wait_for_nodes()
        space = tmp_path / "space.json"
        space.write_text(json.dumps({**SPACE, "max_epochs": 5, "resources": {"cpus_per_trial": 1},
                                     "cpu": {"max_epochs": 2, "base_config": {"steps_per_epoch": 1}}}))
        argv = ["--space", str(space), "--storage", str(tmp_path / "s"), "--dataset", str(small_dataset),
                "--address", c.address]
        plan = check_study(parse_args(argv))
        assert ray.is_initialized() and ray.get_runtime_context().gcs_address == c.address
        assert plan.gpu and plan.space.max_epochs == 5 and plan.base["device"] == "cuda"
        assert plan.base["steps_per_epoch"] == 6
        # the worker's "GPU" is only a resource count: the probe finds no CUDA there and says what it assumes
        assert plan.gpu_mem_mb == 16000 and "assumes 16000 MB per GPU" in capsys.readouterr().out
        assert check_study(parse_args(argv + ["--gpu-mem-mb", "40000"])).gpu_mem_mb == 40000
        cpu = check_study(parse_args(argv + ["--cpu"]))
        assert not cpu.gpu and cpu.space.max_epochs == 2 and cpu.base["device"] == "cpu" and cpu.gpu_mem_mb is None
        assert not (tmp_path / "s").exists()  # planning writes nothing
    finally:
        ray.shutdown()
        c.shutdown()


def read_rows(study):
    return pads.dataset(study / "metrics", format="parquet").to_table().to_pylist() if (study / "metrics").exists() else []


@pytest.mark.slow
def test_study_spreads_and_survives_a_dead_node(cluster, small_dataset, tmp_path):
    c, workers = cluster
    space = tmp_path / "cluster.json"
    space.write_text(json.dumps(SPACE))
    study = tmp_path / "studies" / "cluster"
    killed = {}

    def kill_a_node_mid_trial():
        """As soon as a trial has reported its first epoch, kill its node (no graceful shutdown)."""
        deadline = time.time() + 300
        while time.time() < deadline:
            rows = read_rows(study)
            if rows:
                victim = rows[0]["node_id"]
                killed.update(node_id=victim, trial_id=rows[0]["trial_id"])
                c.remove_node(next(w for w in workers if w.node_id == victim), allow_graceful=False)
                return
            time.sleep(0.1)

    killer = threading.Thread(target=kill_a_node_mid_trial)
    killer.start()
    rc = main(["--space", str(space), "--storage", str(tmp_path / "studies"), "--dataset", str(small_dataset),
               "--address", c.address, "--search", "random", "--max-failures", "2", "--no-report"])
    killer.join()
    assert rc == 0 and killed, killed

    rows = read_rows(study)
    trials = {t["trial_id"]: t for t in pq.read_table(study / "trials.parquet").to_pylist()}
    assert len(trials) == 2 and {t["status"] for t in trials.values()} == {"completed"}
    for tid in trials:  # every epoch exactly once
        assert sorted(r["epoch"] for r in rows if r["trial_id"] == tid) == [1, 2, 3, 4]
    first = {r["trial_id"]: r["node_id"] for r in rows if r["epoch"] == 1}
    assert len(set(first.values())) == 2  # the two trials started on different worker nodes
    moved = [r["node_id"] for r in sorted((r for r in rows if r["trial_id"] == killed["trial_id"]),
                                            key=lambda r: r["epoch"])]
    k = moved.count(killed["node_id"])
    assert k >= 1 and moved[:k] == [killed["node_id"]] * k, moved  # epochs 1..k from the dead node were kept ...
    assert killed["node_id"] not in moved[k:] and moved[k:], moved  # ... and k+1.. ran elsewhere, from its checkpoint
