"""Everything checked before a study starts or resumes, nothing written on error: the space and options, storage,
cluster, dataset, and a held study's settings, scheduler state and checkpoints."""

from __future__ import annotations

import getpass
import io
import json
import os
import socket
import tempfile
from pathlib import Path
from typing import NamedTuple, Optional

import pyarrow.fs as pafs

from posesplat import checkpoint
from posesplat.config import make_config
from posesplat.data import evaluated_frames, open_dataset
from posesplat.metrics import GEOMETRY_NAMES
from study.base.records import dict_diff, read_study_json
from study.base.space import Space, confirm_config, load_space, with_options
from study.base.storage import StorageError, Store, StudyError, is_uri
from study.runner import _ray_compat
from study.runner.cluster import check_reachable, detect_gpu
from study.runner.options import Options
from study.runner.search import STATE_FORMAT


class CheckedStudy(NamedTuple):
    """What a validated study will run."""

    space: Space
    base: dict  # the training config every trial starts from
    study: Store
    gpu: bool  # trials get GPUs (and the space is not scaled down)
    gpu_mem_mb: Optional[float]  # memory of one GPU, for the memory model (None without GPUs)
    pixels: int  # pixels of one training image after image_downsample, for the memory model
    info: Optional[dict]  # study.json of the study being resumed (None: a new study)
    confirm_base: Optional[dict]  # the tuning's and confirm stage's base config (confirm_config); None without confirm
    test_frames: Optional[int]  # test frames a confirm trial evaluates (the confirm cell's split, capped); None alike

def check_study(args: Options) -> CheckedStudy:
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
    if not is_uri(dataset):
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
    cbase = confirm_config(space, base) if space.confirm is not None else None
    test_frames = check_cells(space, base, cbase, ds)
    check_geometry(space, ds)
    for note in notes:
        print(note, flush=True)
    d = make_config(base, "base_config").image_downsample
    return CheckedStudy(space, base, study, gpu, gpu_mem, (ds.height // d) * (ds.width // d), held, cbase,
                        test_frames)

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

def check_cells(space: Space, base: dict, cbase: Optional[dict], ds) -> Optional[int]:
    """Every trial's frame and view split exists on the dataset, else every trial would fail, each retried. Frames
    per cell and at the confirm cell (`cbase`); at least one observed and one held-out view (the decision is made
    on held-out views). Returns how many test frames a confirm trial evaluates (None without a confirm cell)."""
    cells = [make_config({**base, **cell}, f"grid cell {json.dumps(cell)}") for cell in space.cells()]
    if cbase is not None:
        cells.append(make_config(cbase, "confirm config"))
    tests = []
    for cfg in cells:
        tests.append(ds.frame_split(cfg.max_frames, cfg.frame_jump, tuple(cfg.split))["test"])
        observed, held = ds.view_split(cfg.holdout_views)
        if not held:
            where = "base_config.holdout_views" if cfg.holdout_views is not None else "the dataset's holdout_views"
            raise StudyError(f"{ds.path}: no held-out view ({where} is empty); the study compares modes on "
                             f"held-out views: set holdout_views in the space's base_config")
    return None if cbase is None else len(evaluated_frames(tests[-1], cells[-1].eval_cap("test")))

def check_geometry(space: Space, ds) -> None:
    """A confirm stage that decides on a geometry metric needs true depth and normals: on a dataset without them
    (an imported recording) every estimate would be missing and the verdict inconclusive by construction."""
    wanted = [k for k in (space.confirm.quality if space.confirm is not None else []) if k in GEOMETRY_NAMES]
    if wanted and ds.geometry_note is not None:
        note = ds.geometry_note if ds.geometry_note.startswith(f"{ds.path}:") else f"{ds.path}: {ds.geometry_note}"
        raise StudyError(f"{note}; but the space's confirm.quality decides on "
                         f"{', '.join(wanted)}: remove them from confirm.quality (the report shows geometry wherever "
                         f"the dataset has it)")

def check_options(args: Options) -> None:
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
    if is_uri(storage):
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
