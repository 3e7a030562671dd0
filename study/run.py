"""Run the 2D-vs-3D Gaussian splatting study with Ray Tune: `python -m study.run --space comparison`.

Every trial trains one (gaussian_mode, grid_size, max_frames, lr, ssim_lambda, seed) combination with posesplat's
training loop and reports each epoch. Metrics go to `<study>/metrics/` (parquet), trial states to
`<study>/trials.parquet`, curves and renders to `<study>/tensorboard/`; the decision report to `<study>/report/`.
Re-running the same command on the same study directory resumes it.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import io
import json
import os
import signal
import socket
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional

import numpy as np
import pyarrow.fs as pafs

from posesplat import checkpoint
from posesplat.config import ConfigError, make_config
from posesplat.data import DatasetError, open_dataset
from posesplat.metrics import GEOMETRY_NAMES
from posesplat.metrics import BY_NAME
from study import _ray_compat
from study._ray_compat import UnsupportedRay
from study.board import Names
from study.search import STATE_FORMAT, StateError
from study.storage import StorageError, Store, StudyError, StudyLock, join_uri
from study.space import MODE_KEY, Space, SpaceError, confirm_config, load_space, with_options


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show a default only where there is one (the help text says what an unset option means)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False or action.default == []:
            return action.help or ""
        return super()._get_help_string(action)


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m study.run", description=__doc__.splitlines()[0],
                                formatter_class=_HelpFormatter)
    p.add_argument("--space", default="comparison", help="search space: a name in search_spaces/ or a JSON file path")
    p.add_argument("--name", help="study name (default: the space's name)")
    p.add_argument("--storage", default="studies", help="directory or URI (s3://, gs://, hdfs://, file://) that "
                                                        "holds studies; on a cluster every node must reach it")
    p.add_argument("--dataset", help="dataset to train on (default: the space's base config or "
                                     "data/synthetic_mouse.zarr)")
    p.add_argument("--num-samples", type=int, help="trials per (mode, grid cell); default from the space")
    p.add_argument("--max-epochs", type=int, help="epoch budget per trial; default from the space")
    p.add_argument("--gpus-per-trial", type=float, help="GPU fraction per trial; default from the memory model")
    p.add_argument("--cpus-per-trial", type=float, help="CPUs per trial; default from the space")
    p.add_argument("--max-concurrent", type=int, help="most trials running at once (default: as resources allow)")
    p.add_argument("--search", choices=["optuna", "random"], default="optuna",
                   help="per-mode Optuna TPE, or seeded random search as a baseline")
    p.add_argument("--seed", type=int, default=0, help="seed of the samplers and of the trials")
    p.add_argument("--modes", nargs="*", default=[], help="extra modes to add to the space's, e.g. 2d_screen")
    p.add_argument("--cpu", action="store_true", help="use the space's CPU scale-down even if a GPU is present")
    p.add_argument("--max-failures", type=int, default=1, help="retries of a trial from its last checkpoint")
    p.add_argument("--address", help="address of an existing Ray cluster (default: start a local one); its "
                                     "resources decide whether trials get GPUs")
    p.add_argument("--gpu-mem-mb", type=float, help="memory of one GPU for the memory model (default: measured; "
                                                    "on a cluster by a small task on a GPU node, else 16000)")
    p.add_argument("--resume", action="store_true", help="continue an existing study (refused if there is none); "
                                                         "re-running the same command also resumes")
    p.add_argument("--no-report", action="store_true", help="skip the analysis report at the end")
    p.add_argument("--repair", action="store_true", help="recover a study whose study.json or Ray state is damaged, "
                                                         "as the error message says (damaged files are kept aside)")
    return p.parse_args(argv)


class Plan(NamedTuple):
    """What a validated study will run."""

    space: Space
    base: dict  # the training config every trial starts from
    study: Store
    gpu: bool  # trials get GPUs (and the space is not scaled down)
    gpu_mem_mb: Optional[float]  # memory of one GPU, for the memory model (None without GPUs)
    pixels: int  # pixels of one training image after image_downsample, for the memory model
    info: Optional[dict]  # study.json of the study being resumed (None: a new study)


def study_plan(args: argparse.Namespace) -> Plan:
    """Validate everything before the study starts: space, options, storage, cluster, dataset, study directory
    (nothing written on error). With --address this connects to the cluster, whose resources decide GPU or CPU."""
    _ray_compat.check_ray()
    space = load_space(args.space, args.modes)
    check_options(args)
    check_writable(args.storage)
    if args.address:
        check_reachable(args.address)
    gpu, gpu_mem, gpu_notes = detect_gpu(args)
    space, notes = with_options(space.scaled(gpu), args.num_samples, args.max_epochs)
    notes = gpu_notes + notes
    base = dict(space.base_config)
    dataset = args.dataset or base.get("dataset") or "data/synthetic_mouse.zarr"
    if "://" not in dataset:
        dataset = str(Path(dataset).resolve())
    study = Store(args.storage).child(args.name or space.name)
    if args.resume and not study.exists("study.json"):
        raise StudyError(f"{study.uri}: no study to resume (run without --resume to start one)")
    base.update(dataset=dataset, epochs=space.max_epochs, device="cuda" if gpu else "cpu")
    held = read_study_json(study, args.repair)
    if held is not None:
        diffs = dict_diff(held["space"], space.model_dump(mode="json"))
        if diffs:
            shown = "; ".join(diffs[:6]) + (f"; and {len(diffs) - 6} more" if len(diffs) > 6 else "")
            raise StudyError(f"{study.uri}: holds a study of space '{held['space']['name']}' with other settings "
                             f"({shown}); use --name for a new study")
        changed = sorted(k for k in {**held["base_config"], **base} if held["base_config"].get(k) != base.get(k))
        changed += [f"--{k}" for k in ("search", "seed") if held["options"].get(k) != getattr(args, k)]
        if changed:
            raise StudyError(f"{study.uri}: this study was started with other {', '.join(changed)}; "
                             f"resume it with the same settings, or use --name for a new study")
        if held.get("state_format") != STATE_FORMAT and "finished" not in held:
            raise StudyError(f"{study.uri}: this study was started by an earlier posesplat-study, which saved its "
                             f"scheduler and searcher state as pickles of Ray objects (this one saves format "
                             f"{STATE_FORMAT}); finish it with that version, or use --name for a new study")
        if held.get("checkpoint_format") != checkpoint.FORMAT and "finished" not in held:
            check_checkpoints(study)
        if any(held.get(k, v) != v for k, v in owner().items()):
            print(f"note: {study.uri} was started by {held.get('user')}@{held.get('host')}; resuming runs Ray's pickled "
                  f"experiment state in it, so resume only studies you made", flush=True)
    ds = open_dataset(dataset)  # DatasetError names the store and the array
    check_cells(space, base, ds)
    check_geometry(space, ds)
    for note in notes:
        print(note, flush=True)
    d = make_config(base, "base_config").image_downsample
    return Plan(space, base, study, gpu, gpu_mem, (ds.height // d) * (ds.width // d), held)


def owner() -> dict[str, str]:
    """Who runs the driver where: study.json records it when a study starts."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return {"user": user, "host": socket.gethostname()}


def ray_folders(study: Store) -> list[str]:
    """The folders of the study's Ray experiments: the explore stage, each tuning round, the confirm stage's looks."""
    return ["ray", *(f"tune/{r}/ray" for r in study.list("tune", "round*", folders_only=True)), "confirm/ray",
            *(f"confirm/{k}/ray" for k in study.list("confirm", "look*", folders_only=True))]


def check_checkpoints(study: Store) -> None:
    """Refuse to resume a study whose trials' checkpoints posesplat.checkpoint.read refuses (format 1, written before
    checkpoints loaded without unpickling), naming the conversion; read once for a study that does not record the
    current checkpoint format."""
    stages = ray_folders(study)
    files = [i.path for stage in stages for i in study.fs.get_file_info(
        pafs.FileSelector(study.path(stage), recursive=True, allow_not_found=True)) if i.base_name == "checkpoint.pt"]
    old = []
    for path in files:
        with study.fs.open_input_file(path) as f:
            if checkpoint.needs_upgrade(io.BytesIO(f.read())):
                old.append(path)
    if old:
        where = " ".join(f"{study.uri}/{stage}/*/checkpoint_*/checkpoint.pt" for stage in stages
                         if any(p.startswith(study.path(stage) + "/") for p in old))
        raise StudyError(f"{study.uri}: {len(old)} of its trials' checkpoints are of format 1, which loading would "
                         f"unpickle; if this is your study, convert them with `python -m posesplat.checkpoint upgrade "
                         f"{where} --trust`{'' if study.local else ' (on a copy: the command takes local files)'}, "
                         f"then resume")


def check_cells(space: Space, base: dict, ds) -> None:
    """Every trial's frame and view split exists on the dataset (else every trial would fail, each retried): frames
    per cell, at least one observed and one held-out view (the decision is made on held-out views)."""
    cells = [make_config({**base, **cell}, f"grid cell {json.dumps(cell)}") for cell in space.cells()]
    if space.confirm is not None:
        cells.append(make_config(confirm_config(space, base), "confirm config"))
    for cfg in cells:
        ds.frame_split(cfg.max_frames, cfg.frame_jump, tuple(cfg.split))
        observed, held = ds.view_split(cfg.holdout_views)
        if not held:
            where = "base_config.holdout_views" if cfg.holdout_views is not None else "the dataset's holdout_views"
            raise StudyError(f"{ds.path}: no held-out view ({where} is empty); the study compares modes on "
                             f"held-out views: set holdout_views in the space's base_config")


def check_geometry(space: Space, ds) -> None:
    """A confirm stage that decides on a geometry metric needs true depth and normals: on a dataset without them
    (an imported recording) every estimate would be missing and the verdict inconclusive by construction."""
    wanted = [k for k in (space.confirm.quality if space.confirm is not None else []) if k in GEOMETRY_NAMES]
    if wanted and ds.geometry_note is not None:
        note = ds.geometry_note if ds.geometry_note.startswith(f"{ds.path}:") else f"{ds.path}: {ds.geometry_note}"
        raise StudyError(f"{note}; but the space's confirm.quality decides on "
                         f"{', '.join(wanted)}: remove them from confirm.quality (the report shows geometry wherever "
                         f"the dataset has it)")


def read_study_json(study: Store, repair: bool) -> Optional[dict]:
    """The study's study.json (None when there is none, or when --repair set a damaged one aside: the study goes on
    with this command's settings)."""
    return read_record(study, "study.json", lambda d: all(isinstance(d.get(k), dict) for k in ("space", "options",
                                                                                                "base_config")),
                       "no space, options and base_config", repair,
                       "if this command has the study's settings, run it again with --repair (the damaged file is "
                       "kept aside)", "rebuilt from this command's settings")


def read_record(store: Store, name: str, valid: Callable[[dict], bool], invalid: str, repair: bool, recovery: str,
                repaired: str) -> Optional[dict]:
    """A JSON record of the study (None when absent). A damaged one (not JSON, or not `valid`) is refused with one
    line naming it and `recovery`; with --repair it is set aside (never deleted) and None returned."""
    from study.storage import set_aside

    if not store.exists(name):
        return None
    try:
        record = json.loads(store.read_text(name))
        if not isinstance(record, dict) or not valid(record):
            raise ValueError(f"not a {name}: {invalid}")
        return record
    except (ValueError, UnicodeDecodeError) as e:
        what = f"{type(e).__name__}: {str(e).splitlines()[0]}" if str(e) else type(e).__name__
        if not repair:
            raise StudyError(f"{store.path(name)}: damaged ({what}); {recovery}") from None
        print(f"note: {store.path(name)} was damaged ({what}); kept as {set_aside(store, name)}; {repaired}",
              flush=True)
        return None


DEFAULT_GPU_MEM_MB = 16e3


def detect_gpu(args: argparse.Namespace) -> tuple[bool, Optional[float], list[str]]:
    """(trials get GPUs, memory of one GPU in MB, notes). Locally from torch; with --address from the cluster's
    resources, since the driver may run on a CPU-only head node. `--cpu` forces CPU; `--gpu-mem-mb` sets the memory
    (else it is measured: locally, or by a small task on a cluster GPU; DEFAULT_GPU_MEM_MB when that fails)."""
    from study import resources

    if args.cpu:
        return False, None, []
    if not args.address:
        mem = resources.detect_gpu_mem_mb()
        return mem is not None, (args.gpu_mem_mb or mem) if mem is not None else None, []
    import ray

    connect_ray(args.address)
    if ray.cluster_resources().get("GPU", 0) <= 0:
        return False, None, []
    mem = args.gpu_mem_mb or cluster_gpu_mem_mb()
    if mem:
        return True, mem, []
    return True, DEFAULT_GPU_MEM_MB, [f"note: could not measure the memory of the cluster's GPUs: the memory model "
                                      f"assumes {DEFAULT_GPU_MEM_MB:.0f} MB per GPU (set it with --gpu-mem-mb)"]


def cluster_gpu_mem_mb(timeout_s: float = 60.0) -> Optional[float]:
    """Memory (MB) of a GPU of the connected cluster, from a tiny task on a GPU node; None if there is no CUDA
    there or no GPU frees up within timeout_s."""
    import ray

    from study.resources import detect_gpu_mem_mb

    ref = ray.remote(num_cpus=0, num_gpus=0.01, max_retries=0)(detect_gpu_mem_mb).remote()
    ready, _ = ray.wait([ref], timeout=timeout_s)
    if not ready:
        ray.cancel(ref, force=True)
        return None
    try:
        return ray.get(ref)
    except Exception:  # e.g. torch missing on that node: the trials would say so themselves
        return None


def connect_ray(address: Optional[str]) -> None:
    """Join the cluster at `address`, or start the study's own local Ray (unless Ray is already up in-process)."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # "local": a fresh instance even when another Ray runs on this machine (ray.init() would join it)
    # SIGTERM blocked in this thread while Ray starts: the processes it starts inherit the mask, so SIGTERM to the
    # driver's process group reaches the driver alone (as Ray does for SIGINT)
    driver_sigterm = signal.getsignal(signal.SIGTERM)
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        ray.init(address=address or "local", include_dashboard=False, log_to_driver=False,
                 **({} if address else {"num_cpus": os.cpu_count()}))
        signal.signal(signal.SIGTERM, driver_sigterm)  # the driver's (signals_as_interrupt), not Ray's sys.exit
    except SystemExit as e:  # ray.init's own SIGTERM handler ran (another thread took the signal): sys.exit(15)
        if e.code != signal.SIGTERM:
            raise
        INTERRUPTED.set()
        TERMINATED.set()
        raise KeyboardInterrupt from None
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    RAY_GCS[:] = [ray.get_runtime_context().gcs_address]


def dict_diff(held: dict, new: dict, prefix: str = "") -> list[str]:
    """What differs between two nested dicts, one `key.path old -> new` per leaf (`-` where a key is absent)."""
    out = []
    for k in list(held) + [k for k in new if k not in held]:
        a, b = held.get(k, "-"), new.get(k, "-")
        if isinstance(a, dict) and isinstance(b, dict):
            out += dict_diff(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k} {json.dumps(a) if a != '-' else a} -> {json.dumps(b) if b != '-' else b}")
    return out


def check_options(args: argparse.Namespace) -> None:
    """Refuse numeric options Ray would reject later with a traceback (or silently misread)."""
    bad = [(f"--{k.replace('_', '-')}", v, need) for k, v, need, ok in (
        ("max_concurrent", args.max_concurrent, "at least 1", lambda v: v >= 1),
        ("seed", args.seed, "in [0, 1000) (each --seed gets its own disjoint tuning and confirm seeds)",
         lambda v: 0 <= v < 1000),
        ("max_failures", args.max_failures, "at least 0 (or -1: retry without limit)", lambda v: v >= -1),
        ("cpus_per_trial", args.cpus_per_trial, "above 0", lambda v: v > 0),
        ("gpu_mem_mb", args.gpu_mem_mb, "above 0", lambda v: v > 0),
        ("gpus_per_trial", args.gpus_per_trial, "a fraction in [0, 1] or a whole number of GPUs",
         lambda v: 0 <= v <= 1 or float(v).is_integer() and v > 0),
    ) if v is not None and not ok(v)]
    if bad:
        opt, value, need = bad[0]
        raise StudyError(f"{opt} {value}: must be {need}")


def check_writable(storage: str) -> None:
    """Refuse storage the driver cannot write to, before anything is created there."""
    if "://" in storage:
        try:
            store = Store(storage)
            probe = f".probe-{os.getpid()}"
            store.write_bytes(b"", probe)
            store.delete(probe)
        except (StorageError, OSError) as e:
            raise StudyError(f"{storage}: storage is not writable ({str(e).splitlines()[0]})") from None
        return
    probe = Path(storage).resolve()
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise StudyError(f"{storage}: storage is not writable ({probe} is a file, not a directory)")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".probe-", dir=probe)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise StudyError(f"{storage}: storage is not writable ({e.strerror})") from None


def check_reachable(address: str) -> None:
    """Refuse a cluster address nobody answers at (ray.init would wait minutes); 'auto' is left to Ray."""
    host, _, port = address.split("://")[-1].rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as e:
        raise StudyError(f"--address {address}: no Ray cluster answers there ({e.strerror or e})") from None


class Outcome(NamedTuple):
    """How a study run ended: its directory and the exit status (0: finished with a report; 1: finished, but every
    trial failed or the report could not be written)."""

    study: Store
    rc: int


def run_study(args: argparse.Namespace, trial_fn: Optional[Callable] = None) -> Outcome:
    """Set up and run (or resume) both stages, then write the report, all under the study's lock.
    `trial_fn(config, base_config, study_uri)` is what each trial runs (default: study.trainable.run_trial; tests
    give a cheap one).

    Explore: per-mode Optuna and stratified ASHA over every cell (`<study>/ray`, `<study>/metrics`). Confirm, when the
    space has a `confirm` block: the plan written to `<study>/confirm/plan.json`, then its trials with no early
    stopping (`<study>/confirm/ray`, `<study>/confirm/metrics`). A stage that SIGTERM or Ctrl-C interrupted raises
    KeyboardInterrupt (the study is left resumable); one that Ray ended unfinished otherwise, StudyError."""
    from study.trainable import clean_scratch

    INTERRUPTED.clear()
    TERMINATED.clear()
    space, base, study, gpu, gpu_mem, pixels, held = study_plan(args)
    with StudyLock(study):
        t0 = time.time()
        info = held or {
            "space": space.model_dump(mode="json"), "options": vars(args), "base_config": base,
            "started": datetime.now(timezone.utc).isoformat(), "gpu": gpu, "state_format": STATE_FORMAT, **owner(),
        }
        if "finished" not in info:  # a new study, or one whose checkpoints study_plan checked
            info["checkpoint_format"] = checkpoint.FORMAT
        info["runs"] = info.get("runs", 0) + 1
        study.write_json(info, "study.json")
        connect_ray(args.address)
        clean_scratch()
        trainable = trainable_factory(args, space, gpu, gpu_mem, pixels, trial_fn)
        failed = None
        with signals_as_interrupt():
            try:
                ended = run_explore(args, space, base, study, trainable)
                info.setdefault("explore_finished", datetime.now(timezone.utc).isoformat())
                study.write_json(info, "study.json")
                failed = all_failed("explore", ended)
                if space.confirm is not None and failed is None:
                    tuned = run_tuning(args, space, base, study, trainable, info)
                    failed = all_failed("confirm", run_confirm(args, space, base, study, trainable, tuned))
            finally:
                info["wall_time_s"] = info.get("wall_time_s", 0) + time.time() - t0
                study.write_json(info, "study.json")
            info["finished"] = datetime.now(timezone.utc).isoformat()
            study.write_json(info, "study.json")
            if failed is not None:
                print(f"error: {failed}", file=sys.stderr)
                return Outcome(study, 1)
            return Outcome(study, finish(study, not args.no_report))


def all_failed(stage: str, statuses: dict[str, dict]) -> Optional[str]:
    """The one-line reason when every trial of a stage failed (nothing to decide on), else None."""
    if statuses and all(r.get("status") == "failed" for r in statuses.values()):
        errors = sorted({r.get("error") or "unknown error" for r in statuses.values()})
        return (f"every {stage} trial failed ({len(statuses)} trials; {errors[0]}"
                + (f"; and {len(errors) - 1} other errors" if len(errors) > 1 else "") + "); no report written")
    return None


TERMINATED = threading.Event()  # set by SIGTERM: the interrupted run exits 143 instead of 130
INTERRUPTED = threading.Event()  # set by Ctrl-C or SIGTERM: a stage's Tuner returned early because of it
SAID = threading.Event()  # the driver printed its last line ("interrupted: ..." or "terminated: ...")
RAY_GCS: list[str] = []  # the address of the GCS of the Ray the driver runs on (connect_ray)
RESUME = "run the same command again to resume the study"


def exit_when_ray_is_gone(rc: int, grace_s: float = 10.0) -> None:
    """Should Ray's GCS die with a SIGTERM (Ray's processes block it only when connect_ray started them), Tune still
    saves its snapshot, but its clean-up and ray.shutdown would wait a minute for the GCS and abort the driver. A
    watcher thread ends the driver with `rc` (and the usual line) once the GCS stops answering and `grace_s` has
    passed."""

    def answers(address: str) -> bool:
        host, _, port = address.rpartition(":")
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
            return True
        except OSError:
            return False

    def watch():
        deadline = time.time() + grace_s
        while not RAY_GCS or answers(RAY_GCS[0]) or time.time() < deadline:
            time.sleep(0.5)
        if not SAID.is_set():
            print(f"terminated: {RESUME}", file=sys.stderr, flush=True)
        os._exit(rc)

    threading.Thread(target=watch, daemon=True, name="exit-when-ray-is-gone").start()


@contextlib.contextmanager
def signals_as_interrupt():
    """Ctrl-C (SIGINT) and SIGTERM (what a cluster scheduler sends) recorded, then handled alike: while a Tuner
    runs, by Tune's own interrupt handler (SIGUSR1's: it saves the experiment's state and returns); otherwise, or on
    a second signal, KeyboardInterrupt. Tune's SIGINT handler is off, so that the driver knows a stage that returned
    unfinished was interrupted (fit_stage). connect_ray puts SIGTERM's back after ray.init."""

    def handler(signum, frame):
        again = INTERRUPTED.is_set()
        INTERRUPTED.set()
        if signum == signal.SIGTERM:
            TERMINATED.set()
            if not again:
                exit_when_ray_is_gone(143)
        tune_handler = signal.getsignal(signal.SIGUSR1)  # Tune's, installed for the duration of a fit
        if callable(tune_handler) and not again:
            tune_handler(signal.SIGUSR1, frame)
        else:
            raise KeyboardInterrupt

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    tune_sigint = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        if tune_sigint is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = tune_sigint



def trainable_factory(args: argparse.Namespace, space: Space, gpu: bool, gpu_mem: Optional[float], pixels: int,
                      trial_fn: Optional[Callable]) -> Callable[[dict, Store, Names, Store], Any]:
    """(base config, stage store, run names, the study's store: its tensorboard/ holds both stages' runs) -> the
    Tune trainable of a stage, with its per-trial resources."""
    from ray import tune

    from study import resources
    from study.search import MODE_KEY
    from study.trainable import run_trial

    cpus = args.cpus_per_trial or space.resources.cpus_per_trial
    if not args.address:
        cpus = min(cpus, os.cpu_count() or 1)

    def trial_resources(config: dict) -> dict:
        if not gpu:
            return {"cpu": cpus, "gpu": 0}
        if args.gpus_per_trial is not None:
            return {"cpu": cpus, "gpu": args.gpus_per_trial}
        if space.resources.gpus_per_trial != "auto":
            return {"cpu": cpus, "gpu": float(space.resources.gpus_per_trial)}
        return {"cpu": cpus, "gpu": resources.gpu_fraction(config[MODE_KEY], config["grid_size"], gpu_mem, pixels,
                                                           max_per_gpu=space.resources.max_trials_per_gpu)}

    def make(base: dict, store: Store, names: Names, board: Store):
        # a test's trial function takes the first three only
        extra = {} if trial_fn else {"names": names, "board_uri": board.uri}
        return tune.with_resources(
            tune.with_parameters(trial_fn or run_trial, base_config=base, study_uri=store.uri, **extra),
            trial_resources)

    return make


def fit_stage(args: argparse.Namespace, store: Store, trainable, sink, searcher, scheduler,
              label: str) -> dict[str, dict]:
    """Run (or resume) one stage's Tuner in `<store>/ray`; returns the stage's trial rows. The study's own records
    decide: a stage whose trials all ended (completed, stopped by the scheduler, or failed) is not run again; one
    that a signal interrupted raises KeyboardInterrupt; one that Ray ended unfinished without a signal is refused
    like damaged state. Ray's state must agree with the records: missing, damaged or foreign state is refused
    (`--repair` sets the stage aside and runs it again) before Ray could start over and the sink drop the records."""
    from ray import tune

    if len(sink.ended()) >= searcher.total:
        return sink.trials
    _ray_compat.defer_checkpoint_deletion()
    run_dir = join_uri(store.uri, "ray")
    tuner = None
    if _ray_compat.can_resume(run_dir):  # not tune.Tuner.can_restore: see _ray_compat
        print(f"resuming the {label} stage in {store.uri}", flush=True)
        tuner = check_ray_state(args, store, label, sink, lambda: _ray_compat.restore_tuner(
            run_dir, trainable, constants(sink.base),
            lambda scheduler: study_callbacks(sink, scheduler, args.max_failures),
            args.max_failures, args.max_concurrent))
    elif sink.evidence():
        check_ray_state(args, store, label, sink, None)
    restored = tuner is not None  # else our searcher and scheduler run; a restored Tuner has its own
    if tuner is None:
        print(f"{label} stage: {searcher.total} trials", flush=True)
        tuner = tune.Tuner(
            trainable,
            param_space=constants(sink.base),
            tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=searcher.total,
                                        metric=searcher.metric, mode=searcher.mode, reuse_actors=True,
                                        trial_dirname_creator=sink.names.dirname if sink.names else None),
            run_config=tune.RunConfig(
                name="ray", storage_path=store.uri,
                callbacks=study_callbacks(sink, scheduler, args.max_failures),
                failure_config=tune.FailureConfig(max_failures=args.max_failures),
                # the best-validation checkpoint and the latest (which Ray always keeps: resume starts from it)
                checkpoint_config=tune.CheckpointConfig(num_to_keep=2, checkpoint_score_attribute=searcher.metric,
                                                        checkpoint_score_order=searcher.mode),
                verbose=1,
            ),
        )
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGUSR1)}
    try:
        results = tuner.fit()  # on Ctrl-C, SIGUSR1 or SIGTERM Tune saves its state and returns early
    finally:  # Tune leaves its interrupt handlers installed: a later Ctrl-C would be swallowed
        for sig, h in handlers.items():
            signal.signal(sig, h)
    sink.fill_from(results)
    if INTERRUPTED.is_set():
        raise KeyboardInterrupt
    if len(sink.ended()) < searcher.total:  # Ray's experiment ended by its own count, short of the study's plan
        problem = f"ended the stage with {len(sink.ended())} of its {searcher.total} trials ended, uninterrupted"
        if not (args.repair and restored):
            raise StudyError(f"{run_dir}: Ray's experiment {problem}; to run the {label} stage again from scratch, "
                             f"run the same command with --repair (its records are kept aside, nothing is deleted)")
        set_stage_aside(store, label, sink, problem)
        return fit_stage(args, store, trainable, sink, searcher, scheduler, label)
    return sink.trials


def constants(base: dict) -> dict:
    """The Tuner's param_space: the stage's whole training config (defaults included), which Tune merges under each
    suggestion, so every trial's config (`result.config`) is the complete configuration that trained."""
    return make_config(base, "base_config").model_dump(mode="json")


def check_ray_state(args: argparse.Namespace, store: Store, label: str, sink, restore: Optional[Callable]):
    """The restored Tuner, when Ray's experiment state agrees with the study's records; otherwise a refusal naming
    the damage, or with --repair the stage's Ray state and records set aside (never deleted) and None (the stage
    runs again). Ray restarts an experiment whose state file is truncated; that must not happen over records."""
    evidence, problem, tuner = sink.evidence(), None, None
    if restore is None:
        problem = "is missing"
    else:
        try:
            tuner = restore()
            if evidence:
                known = {r.metrics.get("trial_id") for r in tuner.get_results()}
                if not evidence & known:
                    problem = f"knows none of the {len(evidence)} trials the study recorded"
        except (StudyError, UnsupportedRay, StateError):
            raise
        except Exception as e:  # a truncated experiment_state-*.json, tuner.pkl or searcher state
            problem = f"cannot be read ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    if problem is None:
        return tuner
    where = join_uri(store.uri, "ray")
    if not args.repair:
        raise StudyError(f"{where}: Ray's experiment state {problem}, while {store.uri} records "
                         f"{len(evidence)} ended trials; to run the {label} stage again from scratch, run the same "
                         f"command with --repair (its records are kept aside, nothing is deleted)")
    set_stage_aside(store, label, sink, f"state {problem}")
    return None


def set_stage_aside(store: Store, label: str, sink, problem: str) -> None:
    """--repair: the stage's Ray state, records and TensorBoard runs set aside (never deleted); the stage runs
    again."""
    from study.storage import set_aside

    moved = [set_aside(store, name) for name in ("ray", "metrics", "tensorboard", "trials.parquet", "confirm")
             if store.exists(name) and not (label == "confirm" and name == "confirm")]
    if label == "confirm" and sink.board.exists("tensorboard", "confirm"):  # its runs, in the study's tensorboard/
        moved.append(set_aside(sink.board, "tensorboard/confirm"))
    print(f"note: {label} stage: Ray's experiment {problem}; set aside {', '.join(moved)}; running the stage "
          f"again", flush=True)
    sink.trials.clear()
    sink.damaged = None


def run_explore(args: argparse.Namespace, space: Space, base: dict, study: Store, trainable) -> dict[str, dict]:
    from study.search import PerModeSearcher, StratifiedASHA
    from study.sink import ParquetSink

    searcher = PerModeSearcher(space, space.metric, space.metric_mode, args.search, args.seed,
                               max_concurrent=args.max_concurrent)
    scheduler = (StratifiedASHA(space.modes, space.max_epochs, space.scheduler.grace_period,
                                space.scheduler.reduction_factor, space.metric, space.metric_mode)
                 if space.scheduler.type == "asha" else None)
    names = Names("explore", tuple(space.grid), tuple(space.search), study_metrics(space), space.fixed_keys())
    sink = ParquetSink(study, study.name, base, space.max_epochs, names, study)
    return fit_stage(args, study, trainable(base, study, names, study), sink, searcher, scheduler, "explore")


def study_metrics(space: Space) -> tuple[str, ...]:
    """The metrics the study decides on, first in TensorBoard's HParams table."""
    confirm = (*space.confirm.quality, space.confirm.cost) if space.confirm else ()
    return tuple(dict.fromkeys((space.metric, *confirm)))


def run_tuning(args: argparse.Namespace, space: Space, base: dict, study: Store, trainable,
               info: dict) -> Optional[dict]:
    """The deciding tuning at the confirm cell (study/tuning.py), in rounds `<study>/tune/round<r>/`: round 0 is
    each mode's first log grid, each later round widens the modes whose choice sits at an end. A round's plan is
    written before its trials and read back on resume; the next round follows from the records alone. Returns the
    per-mode outcome (also recorded in study.json), or None when the space has no `confirm.tune`."""
    from study import tuning
    from study.confirm import TUNE_SEEDS, stage_seeds
    from study.search import PlannedSearcher
    from study.sink import ParquetSink

    spec = space.confirm.tune
    if spec is None:
        return None
    cbase, modes = confirm_config(space, base), list(space.confirm.modes)
    seeds = stage_seeds(TUNE_SEEDS, args.seed, spec.seeds)
    maximize = BY_NAME[space.confirm.select].higher_is_better is not False
    runs: list[tuning.Run] = []
    for r in range(spec.max_widen + 1):
        store = study.child("tune", f"round{r}")
        plan = read_record(store, "plan.json", lambda d: isinstance(d.get("trials"), list), "no trials",
                           args.repair, "run the same command with --repair to plan the round again (kept aside)",
                           "planning the round again")
        if plan is None:
            values = tuning.next_values(spec, modes, runs, maximize)
            if not values:
                break
            plan = {"round": r, "key": spec.key, "values": values, "seeds": seeds,
                    "trials": [{**space.confirm.cell, MODE_KEY: m, "seed": s, spec.key: v, **space.mode_keys(m)}
                               for s in seeds for m, vs in values.items() for v in vs]}
            store.write_json(plan, "plan.json")
            print(f"tuning round {r}: " + "; ".join(f"{m} {spec.key} {', '.join(f'{v:.3g}' for v in vs)}"
                                                   for m, vs in values.items())
                  + f" x {len(seeds)} seeds at {json.dumps(space.confirm.cell)}", flush=True)
        names = Names("tune", tuple(space.confirm.cell), (spec.key, "seed"), study_metrics(space), space.fixed_keys())
        sink = ParquetSink(store, study.name, cbase, space.max_epochs, names, study)
        searcher = PlannedSearcher(plan["trials"], space.metric, space.metric_mode, args.max_concurrent)
        fit_stage(args, store, trainable(cbase, store, names, study), sink, searcher, None, f"tuning round {r}")
        runs += round_runs(store, plan, space)
    outcome = tuning.summary(spec, modes, runs, maximize)
    info["tuning"] = {m: {k: o[k] for k in ("key", "chosen", "edge", "widenings", "range")} for m, o in outcome.items()}
    study.write_json(info, "study.json")
    print("tuned: " + "; ".join(f"{m} {o['key']} {o['chosen']:.3g}" + ("" if o["reason"] is None else " (at an edge)")
                                for m, o in outcome.items()), flush=True)
    return outcome


def round_runs(store: Store, plan: dict, space: Space) -> list:
    """Each planned trial of a finished tuning round with its validation score at the last epoch: NaN where the
    trial failed, diverged or never scored (a diverged value counts as the worst: study.tuning.curve)."""
    from study.load import AnalysisError, load_studies, stage_summary
    from study.tuning import Run

    cell, key, select = space.confirm.cell, plan["key"], space.confirm.select
    try:
        per = stage_summary(load_studies([store.uri], grid=cell), last=True, cell=list(cell))
    except AnalysisError:  # no trial scored at all
        per = None
    runs = []
    for t in plan["trials"]:
        score = float("nan")
        if per is not None and len(per):
            hit = per[(per[MODE_KEY] == t[MODE_KEY]) & (per["seed"] == t["seed"])
                      & np.isclose(per[key].to_numpy(float), t[key])]
            if "status" in hit:
                hit = hit[hit["status"] != "failed"]
            if len(hit):
                score = float(hit[select].iloc[-1])
        runs.append(Run(t[MODE_KEY], float(t[key]), int(t["seed"]), score, plan["round"]))
    return runs


def run_confirm(args: argparse.Namespace, space: Space, base: dict, study: Store, trainable,
                tuned: Optional[dict] = None) -> dict[str, dict]:
    """Plan the confirm stage once (written before its first trial), then run or resume it look by look, stopping
    at the first look whose verdict is settled (study.looks). Returns the trial rows of the looks that ran."""
    from study.confirm import look_folder, look_trials
    from study.looks import looks_of
    from study.search import PlannedSearcher
    from study.sink import ParquetSink

    store = study.child("confirm")
    cbase = confirm_config(space, base)
    plan = read_plan(args, store)
    if plan is None:
        plan = make_confirm_plan(args, space, cbase, study, tuned)
        check_replan(store, plan)
        store.write_json(plan, "plan.json")
        print(confirm_plan_text(plan), flush=True)
    names = Names("confirm", tuple(space.confirm.cell), ("seed",), study_metrics(space), space.fixed_keys())
    looks, ended = looks_of(plan), {}
    for k, look in enumerate(looks):  # each look its own stage (study.confirm.look_folder); a settled one ends it
        lstore = store.child(*look_folder(k))
        label = "confirm" if k == 0 else f"confirm look {k + 1}"
        sink = ParquetSink(lstore, study.name, cbase, plan["epochs"], names, study)
        searcher = PlannedSearcher(look_trials(plan, k), space.metric, space.metric_mode, args.max_concurrent)
        if len(looks) > 1 and len(sink.ended()) < searcher.total:
            first = looks[k - 1].pairs + 1 if k else 1
            print(f"confirm look {k + 1} of {len(looks)}: pairs {first}-{look.pairs} of {len(plan['seeds'])}, the rule "
                  f"at {100 * look.level:.4g}% intervals", flush=True)
        ended.update(fit_stage(args, lstore, trainable(cbase, lstore, names, study), sink, searcher, None, label))
        if k < len(looks) - 1 and stopped_early(study):
            print(f"confirm stage settled at look {k + 1} of {len(looks)} ({look.pairs} of {len(plan['seeds'])} "
                  f"pairs): the remaining pairs are not run", flush=True)
            break
    return ended


def stopped_early(study: Store) -> bool:
    """Whether the confirm stage's records settle the decision at an interim look (study.decide, the analysis's own
    rule: a pure function of the ended trials' records, so a resumed study stops at the same look)."""
    from study.load import AnalysisError
    from study.report import decision_of, read_stages

    try:
        d, _ = decision_of(read_stages([study.uri]), None)
    except AnalysisError:  # nothing scored yet
        return False
    return bool((d.design.get("look") or {}).get("stopped_early"))


def read_plan(args: argparse.Namespace, store: Store) -> Optional[dict]:
    """The confirm plan written before the stage's first trial (None: not planned yet, or set aside by --repair:
    planned again, since the plan is a function of the explore records and --seed)."""
    return read_record(store, "plan.json", lambda d: isinstance(d.get("trials"), list) and "epochs" in d,
                       "no trials and epochs", args.repair,
                       "run the same command with --repair to plan the confirm stage again from the explore records "
                       "(kept aside, not deleted)", "planning again")


def check_replan(store: Store, plan: dict) -> None:
    """A plan made again (--repair) must contain every confirm trial already recorded, else the stage's records
    would mix two designs."""
    from study.confirm import look_folder
    from study.looks import looks_of
    from study.search import MODE_KEY

    rows = []
    for look in (store.child(*look_folder(k)) for k in range(len(looks_of(plan)))):
        try:
            rows += look.read_table("trials.parquet").to_pylist() if look.exists("trials.parquet") else []
        except Exception:  # a damaged trials table (the sink sets it aside next): every metrics part names its config
            rows += [r for part in look.list("metrics", "part-*.parquet")
                     for r in look.read_table("metrics", part).to_pylist()]
    planned = {(t[MODE_KEY], t["seed"], round(t["lr"], 12)) for t in plan["trials"]}
    ran = {(r[MODE_KEY], r["seed"], round(r["lr"], 12)) for r in rows}
    if ran - planned:
        raise StudyError(f"{store.path('plan.json')}: planned again, it does not contain {len(ran - planned)} of the "
                         f"confirm trials already run (explore records or --seed changed); the old plan is kept aside")


def make_confirm_plan(args: argparse.Namespace, space: Space, cbase: dict, study: Store,
                      tuned: Optional[dict] = None) -> dict:
    """The confirm plan from the finished explore stage's records (study.confirm.plan_confirm)."""
    from posesplat.train import eval_frames
    from study.confirm import PlanError, plan_confirm
    from study.load import AnalysisError, load_studies, stage_summary

    try:
        explore = load_studies([study.uri])  # where it lies: a local folder or a URI
    except AnalysisError as e:
        raise StudyError(f"confirm stage: cannot read the explore stage ({e})") from None
    per = stage_summary(explore, cell=list(space.grid), modes=tuple(space.confirm.modes))
    cfg = make_config({**cbase, **space.confirm.cell}, "confirm config")
    ds = open_dataset(cfg.dataset)
    n_test = len(eval_frames(cfg, ds.frame_split(cfg.max_frames, cfg.frame_jump, tuple(cfg.split))["test"]))
    try:
        return plan_confirm(space.confirm, per, list(space.search), space.max_epochs, n_test, args.seed, tuned,
                            {m: space.mode_keys(m) for m in space.confirm.modes})
    except PlanError as e:
        raise StudyError(str(e)) from None


def confirm_plan_text(plan: dict) -> str:
    """The confirm plan in a few lines, for the terminal."""
    from study.confirm import mode_config_text
    from study.explore import cell_text

    hp = "; ".join(f"{m} lr {h['lr']:.3g}" + (f", ssim_lambda {h['ssim_lambda']:.3g}" if "ssim_lambda" in h else "")
                   for m, h in plan["hparams"].items())
    widths = ", ".join(f"{k} ±{100 * p['expected_halfwidth']:.2g}%" for k, p in plan["planning"].items()
                       if p.get("expected_halfwidth") is not None)
    fixed = mode_config_text(plan)
    lines = [f"confirm stage planned: {' vs '.join(plan['modes'])} at {cell_text(plan['cell'])}, "
             f"{len(plan['seeds'])} seeds x {plan['epochs']} epochs, {plan['test_frames']} test frames ({hp}"
             + (f"; fixed per mode: {fixed}" if fixed else "") + ")"]
    if widths:
        lines.append(f"  expected 95% half-widths: {widths} (target ±{100 * plan['target_halfwidth']:g}%)")
    if len(plan.get("looks") or []) > 1:
        lines.append("  sequential looks: " + ", ".join(f"{x['pairs']} pairs ({100 * x['level']:.4g}%)"
                                                     for x in plan["looks"]) + "; a settled look ends the stage")
    lines += [f"  note: {n}" for n in plan["notes"]]
    return "\n".join(lines)


def study_callbacks(sink, scheduler, max_failures: int) -> list:
    """The study's Tune callbacks, in a fixed order (Ray restores callback states by position)."""
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    from study.search import SchedulerState, TrialRetries

    # Ray's own result files (progress.csv, result.json: ExperimentAnalysis reads them), but not its TensorBoard
    # logger: the study writes its own runs (study.board); TUNE_DISABLE_AUTO_CALLBACK_LOGGERS keeps Ray from adding
    # the TBX logger, so these two are listed here, after the study's (stateless: positions do not matter)
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    return ([sink] + ([SchedulerState(scheduler)] if scheduler else []) + [TrialRetries(max_failures, sink)]
            + [CSVLoggerCallback(), JsonLoggerCallback()])


def summary(study_dir: str | Path, name: str) -> str:
    """Trial counts per stage and the confirm stage's decision with its intervals: the numbers of the report."""
    from study.load import AnalysisError
    from study.report import decision_of, read_stages

    try:
        stages = read_stages([study_dir])
        d, _ = decision_of(stages, None)
    except AnalysisError as e:  # e.g. every trial failed before its first epoch
        return f"study {name}: {e}"
    info = next(iter(stages.explore.infos.values()), {}) if stages.explore else {}
    lines = [f"study {name} ({info.get('wall_time_s', float('nan')):.0f} s wall time)"]
    for label, st in (("explore", stages.explore), ("confirm", stages.confirm)):
        if st is not None and len(st.trials) and "status" in st.trials:
            counts = st.trials["status"].value_counts().to_dict()
            lines.append(f"{label} trials: " + ", ".join(f"{counts.get(s, 0)} {s}" for s in
                                                          ("completed", "stopped", "failed", "running")))
    lines.append(f"decision: {d.recommendation} — {d.reason}")
    for key, e in d.quality.items():
        lines.append(f"  {key}: {' vs '.join(d.modes)} {e.pct()} over {e.n} pairs x {e.n_frames} test frames")
    if d.cost is not None:
        lines.append(f"  {d.design.get('cost')}: {' vs '.join(d.modes)} {d.cost.pct()} (primary cost)")
    return "\n".join(lines)


def finish(study: Store, report: bool) -> int:
    """Print the summary and write the decision report into the study (built locally, then uploaded, when the
    study is behind a URI). Returns the exit status: 0 with a report (or none asked for), 1 when the report could
    not be written."""
    from study import analyze

    print(summary(study.uri, study.uri))
    if study.local:
        return 1 if report and analyze.main([study.root]) else 0
    if not report:
        return 0
    with tempfile.TemporaryDirectory(prefix="study-") as tmp:
        if analyze.main([study.uri, "--no-renders", "--out", str(Path(tmp) / "report")]):
            return 1
        study.upload(Path(tmp) / "report", "report")  # checkpoints stay remote: no qualitative renders here
        print(f"report uploaded to {join_uri(study.uri, 'report')}")
        return 0


def main(argv: Optional[list[str]] = None, trial_fn: Optional[Callable] = None) -> int:
    """Exit status: 0 finished with a report; 1 finished, but every trial failed or the report could not be written;
    2 refused before starting; 130 interrupted (Ctrl-C), 143 terminated (SIGTERM): run the same command to resume."""
    args = parse_args(argv)
    TERMINATED.clear()
    try:
        with signals_as_interrupt():  # also while the study is planned and Ray starts (run_study's own: the stages)
            return run_study(args, trial_fn).rc
    except (SpaceError, ConfigError, DatasetError, StudyError, StorageError, UnsupportedRay, StateError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(("terminated" if TERMINATED.is_set() else "interrupted") + f": {RESUME}", file=sys.stderr, flush=True)
        SAID.set()
        return 143 if TERMINATED.is_set() else 130


if __name__ == "__main__":
    sys.exit(main())
