"""The driver-side Tune callback that writes every reported epoch to `<study>/metrics/` (parquet parts) and the
trials table, through the study's `Store` (study.base.storage).

One part file per (trial, epoch), named by both and written whole: a resumed study that re-reports an epoch replaces
that part instead of duplicating it. When a trial ends its parts become one file (study.base.metrics_folder), so a
study's analysis reads a file per trial, not per epoch. Ray saves its experiment state every few seconds, so after a
crash it may know less than the parquet does. At the first step of every (re)started run the sink drops what Ray
will redo: rows of trials Ray no longer knows, and epochs after a trial's restored state. So the parquet ends with
exactly one row per (trial, epoch). Schema: docs/metrics.md.
"""

from __future__ import annotations

import json
import math
import socket
import typing
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import pyarrow as pa
import pyarrow.fs as pafs
from ray.tune import Callback

from posesplat.config import Config, make_config
from posesplat.metrics import BY_NAME, FRAMES
from study.base.rows import COMPLETED, ENDED, FAILED, PENDING, RUNNING, SELECT, SELECTED, STOPPED
from study.base import metrics_folder as folder
from study.base.storage import Store, set_aside
from study.runner import _ray_compat
from study.runner.board import runs, write_end
from study.base.space import MODE_KEY

RAY_KEYS = _ray_compat.result_keys()  # Tune's bookkeeping in every result: everything else a trial reports is kept


def full_config(base: dict, keys: dict) -> dict[str, Any]:
    """The complete training config of a trial (its own keys over the stage's base), lists JSON-encoded so every
    column is a scalar."""
    cfg = make_config({**base, **{k: v for k, v in keys.items() if not k.startswith("_")}}).model_dump(mode="json")
    return {k: json.dumps(v) if isinstance(v, (list, tuple, dict)) else v for k, v in cfg.items()}


TEXT = ("study", "trial_id", "status", "error", "checkpoint_path", "hostname", "node_id",
        *(m.name for m in BY_NAME.values() if m.kind == "text"))
COUNTS = ("last_epoch", "stopped_at_epoch", "selected_epoch", *(m.name for m in BY_NAME.values() if m.kind == "int"))


def column_type(name: str) -> pa.DataType:
    """The parquet type of a study column whose values are all null. pyarrow would type it `null`, which duckdb,
    polars and pandas read differently. Text and counts go by name, a training config key by its Config field
    (lists and dicts are stored JSON-encoded), and any other column (a metric) is float64."""
    if name in TEXT:
        return pa.string()
    if name in COUNTS:
        return pa.int64()
    field = Config.model_fields.get(name)
    if field is None:
        return pa.float64()
    kind = field.annotation
    if typing.get_origin(kind) is typing.Union:  # Optional[X]: X
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    kind = typing.get_origin(kind) or kind
    return {bool: pa.bool_(), int: pa.int64(), float: pa.float64()}.get(kind, pa.string())


def null_types(rows: list[dict]) -> dict[str, pa.DataType]:
    """Types for the columns of `rows` that hold only nulls."""
    keys = {k for r in rows for k in r}
    return {k: column_type(k) for k in keys if all(r.get(k) is None for r in rows)}


def better(a: dict, b: dict) -> bool:
    """Is epoch row `a` a better selection than `b` (study.base.rows.SELECT in order, as trial_summary selects; NaN
    worst; the earlier epoch on ties)?"""
    def key(r):
        vals = [r.get(k) for k in SELECT]
        return [v if isinstance(v, (int, float)) and math.isfinite(v) else -math.inf for v in vals]
    return key(a) > key(b) or (key(a) == key(b) and a["epoch"] < b["epoch"])


class ParquetSink(Callback):
    """Writes metrics parts and keeps `<study>/trials.parquet` current."""

    def __init__(self, study: Store | str | Path, name: str, base_config: dict, max_epochs: int, names=None,
                 board: Optional[Store] = None):
        self.store = study if isinstance(study, Store) else Store(study)
        self.study_name, self.base, self.max_epochs = name, base_config, max_epochs
        self.names = names  # study.runner.board.Names: the stage's TensorBoard run names (None: no TensorBoard ending)
        self.board = board or self.store  # whose tensorboard/ holds the runs (the study's, for both stages)
        self.trials: dict[str, dict] = {}
        self.configs: dict[str, dict] = {}  # trial id -> full_config, validated once per trial (config_of)
        self.reconciled = False
        self.folded = folder.compacted(self.store.list(folder.FOLDER))  # trials whose parts are one file
        self.damaged: Optional[str] = None  # where a damaged trials.parquet was set aside (rebuilt from Ray's state)
        if self.store.exists("trials.parquet"):  # a resumed study keeps the rows of trials it will not see again
            try:
                self.trials = {r["trial_id"]: r for r in self.store.read_table("trials.parquet").to_pylist()}
            except (pa.ArrowException, OSError, KeyError) as e:
                self.damaged = set_aside(self.store, "trials.parquet")
                print(f"note: {self.store.path('trials.parquet')} was damaged ({type(e).__name__}); kept as "
                      f"{self.damaged} and rebuilt from Ray's experiment state", flush=True)

    def ended(self) -> set[str]:
        """Trials the study recorded in a final state: completed, stopped by the scheduler, or failed."""
        return {t for t, r in self.trials.items() if r.get("status") in ENDED}

    def evidence(self) -> set[str]:
        """Trials whose records a restart of Ray's experiment would lose: the ended ones, or, when the trials table
        was damaged, every trial with a metrics part."""
        if self.damaged is None:
            return self.ended()
        names = self.store.list(folder.FOLDER)
        return set(folder.parts_by_trial(names)) | folder.compacted(names)

    def config_of(self, tid: str, keys: dict) -> dict[str, Any]:
        """A trial's config columns (full_config), validated on its first result only: a trial's keys never change."""
        if tid not in self.configs:
            self.configs[tid] = full_config(self.base, keys)
        return self.configs[tid]

    def _row(self, trial, **status) -> dict:
        row = self.trials.get(trial.trial_id, {})
        row.update(study=self.study_name, trial_id=trial.trial_id, **self.config_of(trial.trial_id, trial.config))
        row.setdefault("status", PENDING)
        row.setdefault("stopped_at_epoch", None)
        row.setdefault("last_epoch", 0)
        row.setdefault("error", None)
        row.setdefault("checkpoint_path", None)
        row.update(status)
        self.trials[trial.trial_id] = row
        return row

    def column_order(self, keys: set[str]) -> list[str]:
        """trials.parquet's columns: who and what (mode, cell, tuned keys, seed), how it ended, the selected epoch
        and its validation metrics, the last epoch's metrics, the rest of the training config, then the paths."""
        names = self.names
        head = ["study", "trial_id", "status", MODE_KEY, *(names.cell_keys if names else ("grid_size",
                "max_frames")), *(names.label_keys if names else ()), "seed", "last_epoch", "stopped_at_epoch",
                "selected_epoch", *(f"selected_{k}" for k in SELECTED)]
        tail = ["error", "checkpoint_path", "gpu_fraction"]
        head = [k for k in dict.fromkeys(head) if k in keys]
        rest = keys - set(head) - set(tail)
        config = sorted(k for k in rest if k in Config.model_fields)
        return head + sorted(rest - set(config)) + config + [k for k in tail if k in keys]

    def _flush(self) -> None:
        rows = list(self.trials.values())
        keys = self.column_order({k for r in rows for k in r})
        rows = [{k: r.get(k) for k in keys} for r in rows]
        self.store.write_table(rows, "trials.parquet", types=null_types(rows))

    def on_step_begin(self, iteration, trials, **info):
        if not self.reconciled:
            self.reconcile({t.trial_id: int(t.last_result.get("epoch") or 0) for t in trials})
            lost = [t for t in trials if t.trial_id not in self.trials]
            for t in lost:  # rows lost with a damaged trials.parquet, from what Ray restored
                self.add_row(t.trial_id, t.config, t.last_result, RAY_STATUS.get(t.status, PENDING),
                             error_text(t) if t.status == "ERROR" else None, getattr(t, "checkpoint", None))
            if lost:
                self._flush()
            self.reconciled = True

    def fill_from(self, results) -> None:
        """Rows of trials Ray's results hold and the study has none of (a finished stage whose trials.parquet was
        damaged: no step runs, so on_step_begin never sees its trials). A result without a config is a trial that
        never reported (created, not started, when the run was interrupted): nothing to record, Ray runs it on
        resume."""
        missing = [r for r in results if r.metrics.get("trial_id") and r.metrics["trial_id"] not in self.trials
                   and r.config is not None]
        for r in missing:
            self.add_row(r.metrics["trial_id"], r.config, r.metrics, FAILED if r.error else "ended",
                         str(r.error).strip().splitlines()[-1][:2000] if r.error else None, r.checkpoint)
        if missing:
            self._flush()

    def add_row(self, tid: str, config: dict, last: dict, status: str, error: Optional[str], ckpt) -> None:
        """A trials-table row rebuilt from Ray's record of a trial; "ended" becomes completed or stopped."""
        last_epoch = int(last.get("epoch") or 0)
        if status == "ended":
            status = COMPLETED if last_epoch >= self.budget(config) else STOPPED
        metrics = {k: v for k, v in last.items() if k not in RAY_KEYS and k != "epoch" and k not in config
                   and not isinstance(v, (dict, list))}
        self.trials[tid] = {**metrics, "study": self.study_name, "trial_id": tid, **self.config_of(tid, config),
                            "status": status, "last_epoch": last_epoch, "error": error,
                            "stopped_at_epoch": last_epoch if status == STOPPED else None,
                            "checkpoint_path": self.checkpoint_file(ckpt)}

    def reconcile(self, known: dict[str, int]) -> None:
        """Keep exactly what Ray's (restored) state knows: trial id -> last epoch it has a result for."""
        for tid in folder.compacted(self.store.list(folder.FOLDER)):
            if tid not in known:
                self.store.delete(folder.FOLDER, folder.trial_name(tid))
            elif self.last_recorded(tid) > known[tid]:  # Ray redoes epochs of an ended trial: its rows as parts
                folder.expand(self.store, tid, upto=known[tid])
        for tid, parts in folder.parts_by_trial(self.store.list(folder.FOLDER)).items():
            for part in (p for epoch, p in parts.items() if epoch > known.get(tid, 0)):
                self.store.delete(folder.FOLDER, part)
        for tid in set(self.trials) - set(known):
            del self.trials[tid]
        for tid, parts in runs(self.board).items():
            if tid not in known and (self.names is None or len(parts) == 2 or parts[1] == self.names.stage):
                self.board.delete(*parts)
        for tid, row in self.trials.items():
            if (row.get("last_epoch") or 0) > known[tid]:
                row.update(last_epoch=known[tid], status=RUNNING, stopped_at_epoch=None)
                if (row.get("selected_epoch") or 0) > known[tid]:  # chosen among epochs Ray will redo
                    row.update(self.selection(tid))
        if self.trials:
            self._flush()
        else:
            self.store.delete("trials.parquet")
        self.compact_ended()

    def last_recorded(self, tid: str) -> int:
        """The last epoch of a compacted trial: its trials-table row, else its file."""
        last = self.trials.get(tid, {}).get("last_epoch")
        if last is None:
            epochs = self.store.read_table(folder.FOLDER, folder.trial_name(tid)).column("epoch").to_pylist()
            last = max(epochs, default=0)
        return int(last)

    def compact_ended(self) -> None:
        """Compact every ended trial that still has parts: one that ended just before a kill, or a study written
        before compaction existed. Leftover parts of a killed compaction go too."""
        names = self.store.list(folder.FOLDER)
        for tid in set(folder.parts_by_trial(names)) & (self.ended() | folder.compacted(names)):
            self.compact(tid, names)
        self.folded = folder.compacted(self.store.list(folder.FOLDER))

    def compact(self, tid: str, names: Optional[list[str]] = None) -> None:
        """An ended trial's parts as one file (study.base.metrics_folder.compact). Parts that cannot be made one
        table stay as they are, with a note: the analysis reads them so, and a study is not stopped for it."""
        try:
            if folder.compact(self.store, tid, names):
                self.folded.add(tid)
        except (pa.ArrowException, OSError) as e:
            print(f"note: {self.store.path(folder.FOLDER)}: the metrics parts of trial {tid} are kept as they are, "
                  f"not compacted ({type(e).__name__}: {(str(e).splitlines() or ['no detail'])[0]})", flush=True)

    def on_experiment_end(self, trials, **info):
        self.compact_ended()

    def selection(self, tid: str) -> dict:
        """`selected_epoch` and `selected_*` of a trial from its metrics parts (after a rollback)."""
        best = None
        for row in folder.trial_rows(self.store, tid).to_pylist():
            v = row.get(SELECTED[0])
            if isinstance(v, float) and math.isfinite(v) and (best is None or better(row, best)):
                best = row
        return {"selected_epoch": best["epoch"] if best else None,
                **{f"selected_{k}": best.get(k) if best else None for k in SELECTED}}

    def budget(self, config: dict) -> int:
        """A trial's epoch budget: fewer epochs reported at its end means the scheduler stopped it."""
        return int(config.get("epochs") or self.max_epochs)

    def checkpoint_file(self, ckpt) -> Optional[str]:
        """The trial's latest checkpoint file, relative to the stage folder when it lies inside it (so a copied or
        moved study keeps its checkpoints); else a local path, or a URI when the storage is remote."""
        if ckpt is None:
            return None
        path = f"{ckpt.path}/checkpoint.pt"
        if isinstance(ckpt.filesystem, type(self.store.fs)) and path.startswith(self.store.root + "/"):
            return path[len(self.store.root) + 1:]
        if isinstance(ckpt.filesystem, pafs.LocalFileSystem):
            return path
        scheme = {"gcs": "gs"}.get(ckpt.filesystem.type_name, ckpt.filesystem.type_name)
        return f"{scheme}://{path.lstrip('/')}"

    def on_trial_start(self, iteration, trials, trial, **info):
        self._row(trial, status=RUNNING, gpu_fraction=trial_resources(trial).get("GPU", 0.0))
        self._flush()

    def note(self, trial, **fields) -> None:
        """Record fields of a trial's row (e.g. an OOM retry with a larger GPU fraction)."""
        self._row(trial, **fields)
        self._flush()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        metrics = {k: v for k, v in result.items() if k not in RAY_KEYS and not isinstance(v, (dict, list))}
        epoch = int(metrics["epoch"])
        if trial.trial_id in self.folded:  # an ended trial that runs again (a resumed failure): parts again
            folder.expand(self.store, trial.trial_id)
            self.folded.discard(trial.trial_id)
        # per-test-frame lists (`*_frames`) go to the metrics part only, with a fixed type so that every part of
        # the dataset agrees (an empty list of a non-evaluated epoch would otherwise be list<null>)
        lists = {k: v for k, v in result.items() if k not in RAY_KEYS and isinstance(v, list)
                 and all(isinstance(x, (int, float)) for x in v)}
        row = {"study": self.study_name, "trial_id": trial.trial_id, **self.config_of(trial.trial_id, trial.config), **metrics,
               **lists, "hostname": result.get("hostname") or socket.gethostname(),
               "timestamp": datetime.now(timezone.utc)}
        self.store.write_table([row], folder.FOLDER, folder.part_name(trial.trial_id, epoch),
                               types={**null_types([row]), **{k: list_type(k) for k in lists}})
        ckpt = getattr(trial, "checkpoint", None)
        prev = self.trials.get(trial.trial_id, {})
        selected = {}
        first = SELECT[0]  # the epoch was evaluated
        if isinstance(metrics.get(first), float) and math.isfinite(metrics[first]) and (
                prev.get("selected_epoch") is None
                or better(metrics, {"epoch": prev["selected_epoch"], **{k: prev.get(f"selected_{k}") for k in SELECTED}})):
            selected = {"selected_epoch": epoch, **{f"selected_{k}": metrics.get(k) for k in SELECTED}}
        self._row(trial, status=RUNNING, last_epoch=epoch, **{k: v for k, v in metrics.items() if k != "epoch"},
                  checkpoint_path=self.checkpoint_file(ckpt), **selected)
        self._flush()

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = int(self.trials.get(trial.trial_id, {}).get("last_epoch") or 0)
        stopped = last < self.budget(trial.config)
        ckpt = getattr(trial, "checkpoint", None)
        self._row(trial, status=STOPPED if stopped else COMPLETED, stopped_at_epoch=last if stopped else None,
                  checkpoint_path=self.checkpoint_file(ckpt))
        self._flush()
        self.compact(trial.trial_id)
        self._end_run(trial, STOPPED if stopped else COMPLETED, last)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._row(trial, status=FAILED, error=error_text(trial))
        self._flush()
        self.compact(trial.trial_id)
        self._end_run(trial, FAILED, int(self.trials[trial.trial_id].get("last_epoch") or 0))

    def _end_run(self, trial, status: str, epoch: int) -> None:
        """The trial's end in its TensorBoard run (HParams columns trial/stopped_early, trial/failed)."""
        if self.names is not None:
            write_end(self.board, self.names.folder(trial.config, trial.trial_id), status, epoch)


RAY_STATUS = {"TERMINATED": "ended", "ERROR": FAILED, "RUNNING": RUNNING, "PAUSED": RUNNING, "PENDING": PENDING}


def trial_resources(trial) -> dict[str, float]:
    """What Ray reserves for a trial's next (or current) start, e.g. {"CPU": 1.0, "GPU": 0.25}."""
    pgf = getattr(trial, "placement_group_factory", None)
    return {k: float(v) for k, v in pgf.required_resources.items()} if pgf is not None else {}


def list_type(key: str) -> pa.DataType:
    """Parquet type of a list-valued metric: frame indices (`test_frames`) are integers, per-frame values doubles."""
    return pa.list_(pa.int64()) if key == FRAMES else pa.list_(pa.float64())


def error_text(trial) -> Optional[str]:
    """The last meaningful line of a failed trial's traceback."""
    path = getattr(trial, "error_file", None)
    try:
        lines = [l for l in Path(path).read_text().splitlines() if l.strip()] if path else []
    except OSError:
        lines = []
    errs = [l.strip() for l in lines if "Error" in l or "Exception" in l]
    return (errs[-1] if errs else lines[-1] if lines else "unknown error")[:2000]


