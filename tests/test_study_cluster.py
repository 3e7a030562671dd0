"""The study on a Ray cluster (`ray.cluster_utils.Cluster`: a head and two worker nodes on this machine), driven
through `--address`: trials spread across the nodes, and killing a worker node mid-trial makes that trial resume on
the other node from its checkpoint, with no lost or repeated epoch."""

import json
import threading
import time

import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import ray
from ray.cluster_utils import Cluster

from study.run import main

pytestmark = pytest.mark.slow

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


def read_rows(study):
    return pads.dataset(study / "metrics", format="parquet").to_table().to_pylist() if (study / "metrics").exists() else []


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
