"""The study on a Ray cluster (`ray.cluster_utils.Cluster`: a head and two worker nodes on this machine), driven
through `--address`: trials spread across the nodes, and killing a worker node mid-trial makes that trial resume on
the other node from its checkpoint, with no lost or repeated epoch."""

import json
import threading
import time
from datetime import datetime, timezone

import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import ray
from ray.cluster_utils import Cluster

from study.run import main

pytestmark = pytest.mark.slow

SPACE = {
    "name": "cluster", "base_config": {"image_downsample": 2, "valid_every": 1, "eval_frames": 2, "steps_per_epoch": 3,
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
        """When both trials have reported epoch 1, kill the node running the first one (no graceful shutdown)."""
        deadline = time.time() + 300
        while time.time() < deadline:
            rows = read_rows(study)
            if len({r["trial_id"] for r in rows}) == 2:
                victim = rows[0]["node_id"]
                node = next(w for w in workers if w.node_id == victim)
                killed.update(node_id=victim, trial_id=rows[0]["trial_id"], at=datetime.now(timezone.utc))
                c.remove_node(node, allow_graceful=False)
                return
            time.sleep(0.2)

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
    assert len({r["node_id"] for r in rows}) == 2  # the trials ran on both worker nodes
    moved = sorted((r for r in rows if r["trial_id"] == killed["trial_id"]), key=lambda r: r["epoch"])
    before = [r for r in moved if r["timestamp"] < killed["at"]]
    after = [r for r in moved if r["timestamp"] > killed["at"]]
    assert before and after, moved
    assert {r["node_id"] for r in before} == {killed["node_id"]}  # these rows were not redone after the kill
    assert killed["node_id"] not in {r["node_id"] for r in after}  # it resumed elsewhere ...
    assert after[0]["epoch"] == before[-1]["epoch"] + 1  # ... from its last checkpoint, not from scratch
