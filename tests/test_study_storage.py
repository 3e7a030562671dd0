"""Study storage behind a URI: a local S3 server (moto) stands in for a lab's object store. Every file the study
writes (metrics, trials, study.json, TensorBoard events from the workers, Ray's state, the report) lands there and
nothing in the driver's working directory; a re-run resumes from there; the lock works without flock."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from made_studies import add_confirm, make_study
from study.runner.run import main
from study.base.storage import Store, StudyError, StudyLock, is_uri, join_uri

CREDS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def s3():
    """(URI of a fresh bucket on a local moto S3 server, its pyarrow filesystem, the endpoint query)."""
    ThreadedMotoServer = pytest.importorskip("moto.server", reason="moto[server] (test extra) is not installed") \
        .ThreadedMotoServer

    saved = {k: os.environ.get(k) for k in CREDS}
    os.environ.update(CREDS)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    query = f"endpoint_override={host}:{port}&scheme=http&region=us-east-1"
    fs, _ = pafs.FileSystem.from_uri(f"s3://lab?{query}&allow_bucket_creation=true")
    fs.create_dir("lab")
    yield f"s3://lab/studies?{query}", fs, query
    server.stop()
    for k, v in saved.items():
        os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


@pytest.fixture
def ray_with_creds(s3, ray_local):
    """conftest's local Ray, started after the S3 credentials are in the environment (s3), so its workers have them."""
    return ray_local


@pytest.mark.slow
def test_smoke_study_writes_only_to_the_uri_and_resumes(s3, ray_with_creds, small_dataset, tmp_path, monkeypatch):
    from study.runner.board import scalars

    uri, fs, _ = s3
    monkeypatch.chdir(tmp_path)
    argv = ["--space", "smoke", "--storage", uri, "--dataset", str(small_dataset), "--seed", "1"]
    assert main(argv) == 0
    assert not any(tmp_path.iterdir())  # nothing through driver-only paths

    root = "lab/studies/smoke"
    files = [i.path.removeprefix(root + "/") for i in fs.get_file_info(pafs.FileSelector(root, recursive=True))]
    for expected in ("study.json", "trials.parquet", "ray/tuner.pkl", "report/decision.md", "report/report.html"):
        assert expected in files, expected
    trials = pq.read_table(f"{root}/trials.parquet", filesystem=fs).to_pylist()
    rows = pads.dataset(f"{root}/metrics", filesystem=fs, format="parquet").to_table().to_pylist()
    assert len(trials) == 4 and len(rows) == sum(t["last_epoch"] for t in trials)
    assert all(t["checkpoint_path"].startswith("ray/") for t in trials)  # relative to the study, in the bucket
    assert all(fs.get_file_info(f"{root}/{t['checkpoint_path']}").type == pafs.FileType.File for t in trials)
    tb = [i.path for i in fs.get_file_info(pafs.FileSelector(f"{root}/tensorboard", recursive=True))
          if i.type == pafs.FileType.Directory and i.path.count("/") == root.count("/") + 5]  # stage/mode/cell/run
    for t in trials:  # the workers' TensorBoard events reached the bucket
        local = tmp_path.parent / f"tb-{t['trial_id']}"
        local.mkdir()
        run = next(p for p in tb if p.endswith("-" + t["trial_id"]))
        pafs.copy_files(run, str(local), source_filesystem=fs)
        assert len(scalars(local, "loss/train_loss")) == t["last_epoch"]

    assert main(argv) == 0  # the same command again: resumes (nothing left to run) from the bucket
    info = json.loads(fs.open_input_stream(f"{root}/study.json").read())
    assert info["runs"] == 2
    assert len(pads.dataset(f"{root}/metrics", filesystem=fs, format="parquet").files) == len(rows)
    assert not fs.get_file_info(f"{root}/.lock").is_file  # released


def test_lock_behind_a_uri(s3):
    uri, fs, _ = s3
    store = Store(join_uri(uri, "locked"))
    assert not store.local
    with StudyLock(store):
        with pytest.raises(StudyError, match=r"another driver is running this study \(.* pid \d+, alive 0 s ago"):
            StudyLock(store).__enter__()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    import socket

    for stale in ({"host": "elsewhere", "pid": 1, "beat": time.time() - 1000},  # a heartbeat long gone
                  {"host": socket.gethostname(), "pid": dead.pid, "beat": time.time()}):  # a dead driver here
        store.write_bytes(json.dumps(stale).encode(), ".lock")
        with StudyLock(store):
            assert json.loads(store.read_text(".lock"))["pid"] == os.getpid()
    store.write_bytes(json.dumps({"host": "elsewhere", "pid": 1, "beat": time.time()}).encode(), ".lock")
    with pytest.raises(StudyError, match="elsewhere pid 1"):
        StudyLock(store).__enter__()


def test_unwritable_uri_is_one_line(s3, capsys, small_dataset):
    _, _, query = s3
    storage = f"s3://no-such-bucket/studies?{query}"
    assert main(["--space", "smoke", "--storage", storage, "--dataset", str(small_dataset)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {storage}: storage is not writable (") and len(err.splitlines()) == 1, err
    assert main(["--space", "smoke", "--storage", "nosuch://x/y", "--dataset", str(small_dataset)]) == 2
    assert "storage is not writable" in capsys.readouterr().err


def test_a_study_behind_a_uri_is_analysed_where_it_lies(s3, tmp_path, capsys):
    """A finished study (explore and confirm stage) copied into the bucket: `python -m study.analyze s3://...` reads
    it through study.base.storage and decides exactly as on the local copy; without --out it is one line (the report is
    written on this machine); a missing study is one line."""
    from study.analysis.analyze import main as analyze

    uri, fs, query = s3
    local = add_confirm(make_study(tmp_path / "local", "remote", effect=0.0), effect=-0.04, cost=-0.3)
    remote = join_uri(uri, "remote")
    fs.create_dir(Store(remote).root, recursive=True)
    pafs.copy_files(str(local), Store(remote).root, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
    assert analyze([str(local), "--no-renders", "--out", str(tmp_path / "a")]) == 0
    assert analyze([remote, "--no-renders", "--out", str(tmp_path / "b")]) == 0
    capsys.readouterr()
    a, b = (json.loads((tmp_path / d / "decision.json").read_text()) for d in "ab")
    assert a["recommendation"] == b["recommendation"] and a["n_pairs"] == b["n_pairs"] > 0
    assert a["quality"] == b["quality"] and a["cost"] == b["cost"]
    assert (tmp_path / "a" / "explore.csv").read_text() == (tmp_path / "b" / "explore.csv").read_text()
    assert analyze([remote, "--no-renders"]) == 2
    err = capsys.readouterr().err.strip()
    assert "behind a URI" in err and "--out" in err and len(err.splitlines()) == 1
    assert analyze([join_uri(uri, "nothing-here"), "--out", str(tmp_path / "c")]) == 2
    assert "no such study directory" in capsys.readouterr().err


def test_a_compacted_study_behind_a_uri_decides_as_its_parts(s3, tmp_path, capsys):
    """Issue 46: the explore stage's trials compacted in the bucket (study.base.metrics_folder through the URI's
    Store), one of them with a part left beside its trial file as a killed compaction leaves it: the analysis reads
    each row once, in bulk, and decides exactly as on the local copy in parts."""
    from study.analysis.analyze import main as analyze
    from study.analysis.load import load_study
    from study.base import metrics_folder

    uri, fs, _ = s3
    local = add_confirm(make_study(tmp_path / "local", "packed", effect=0.0), effect=-0.04, cost=-0.3)
    remote = join_uri(uri, "packed")
    fs.create_dir(Store(remote).root, recursive=True)
    pafs.copy_files(str(local), Store(remote).root, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
    store = Store(remote)
    tids = sorted(metrics_folder.parts_by_trial(store.list("metrics")))
    for tid in tids:
        assert metrics_folder.compact(store, tid)
    left = sorted((local / "metrics").glob(f"part-{tids[0]}-*.parquet"))[0]
    pafs.copy_files(str(left), store.path("metrics", left.name), source_filesystem=pafs.LocalFileSystem(),
                    destination_filesystem=fs)
    assert len(store.list("metrics")) == len(tids) + 1
    assert len(load_study(remote)[0]) == len(load_study(local)[0])
    assert analyze([str(local), "--no-renders", "--out", str(tmp_path / "a")]) == 0
    assert analyze([remote, "--no-renders", "--out", str(tmp_path / "b")]) == 0
    capsys.readouterr()
    a, b = (json.loads((tmp_path / d / "decision.json").read_text()) for d in "ab")
    assert a["recommendation"] == b["recommendation"] and a["quality"] == b["quality"]
    assert (tmp_path / "a" / "explore.csv").read_text() == (tmp_path / "b" / "explore.csv").read_text()


def test_one_test_says_where_a_location_lies(tmp_path):
    """A URI names its filesystem by a scheme; a relative or absolute path, or a Path, is local (study.base.storage
    is_uri, the one test that Store, joining, the loader, the renders and the preflight use)."""
    assert all(is_uri(u) for u in ("s3://b/x?endpoint_override=h:9000", "file:///tmp/x", "gs://b", "hdfs://n/x"))
    assert not any(is_uri(p) for p in ("studies", "/abs/studies", tmp_path, "./a:b"))
    assert Store(tmp_path).local and join_uri("s3://b/x?k=v", "y") == "s3://b/x/y?k=v"
