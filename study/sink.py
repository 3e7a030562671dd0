"""Driver-side Tune callback: every reported epoch to `<study>/metrics/` (parquet parts) and the trials table.

One part file per (trial, epoch), named by both, written to a temporary name and renamed: a resumed study that
re-reports an epoch replaces that part instead of duplicating it. Ray saves its experiment state every few seconds,
so after a crash it may know less than the parquet does; at the first step of every (re)started run the sink drops
what Ray will redo (parts of trials Ray no longer knows, epochs after a trial's restored state), so the parquet ends
with exactly one row per (trial, epoch). Schema: docs/metrics.md.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import pyarrow as pa
import pyarrow.parquet as pq
from ray.tune import Callback

from posesplat.config import make_config

RAY_KEYS = {
    "training_iteration", "trial_id", "date", "timestamp", "time_this_iter_s", "time_total_s", "pid", "hostname",
    "node_ip", "config", "time_since_restore", "iterations_since_restore", "checkpoint_dir_name", "done",
    "should_checkpoint", "experiment_tag",
}


def write_table_atomic(rows: list[dict], path: Path) -> None:
    """Write rows as one parquet file via a temporary name and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(pa.Table.from_pylist(rows), tmp)
    os.replace(tmp, path)


def full_config(base: dict, tuned: dict) -> dict[str, Any]:
    """The complete training config of a trial, lists JSON-encoded so every column is a scalar."""
    cfg = make_config({**base, **{k: v for k, v in tuned.items() if not k.startswith("_")}}).model_dump(mode="json")
    return {k: json.dumps(v) if isinstance(v, (list, tuple, dict)) else v for k, v in cfg.items()}


class ParquetSink(Callback):
    """Writes metrics parts and keeps `<study>/trials.parquet` current."""

    def __init__(self, study_dir: Path, study: str, base_config: dict, max_epochs: int):
        self.dir, self.study, self.base, self.max_epochs = Path(study_dir), study, base_config, max_epochs
        self.trials: dict[str, dict] = {}
        self.reconciled = False
        old = self.dir / "trials.parquet"
        if old.exists():  # a resumed study keeps the rows of trials it will not see again
            self.trials = {r["trial_id"]: r for r in pq.read_table(old).to_pylist()}

    def _row(self, trial, **status) -> dict:
        row = self.trials.get(trial.trial_id, {})
        row.update(study=self.study, trial_id=trial.trial_id, **full_config(self.base, trial.config))
        row.setdefault("status", "pending")
        row.setdefault("stopped_at_epoch", None)
        row.setdefault("last_epoch", 0)
        row.setdefault("error", None)
        row.setdefault("checkpoint_path", None)
        row.update(status)
        self.trials[trial.trial_id] = row
        return row

    def _flush(self) -> None:
        rows = list(self.trials.values())
        keys = sorted({k for r in rows for k in r})
        write_table_atomic([{k: r.get(k) for k in keys} for r in rows], self.dir / "trials.parquet")

    def on_step_begin(self, iteration, trials, **info):
        if not self.reconciled:
            self.reconcile({t.trial_id: int(t.last_result.get("epoch") or 0) for t in trials})
            self.reconciled = True

    def reconcile(self, known: dict[str, int]) -> None:
        """Keep exactly what Ray's (restored) state knows: trial id -> last epoch it has a result for."""
        for part in sorted((self.dir / "metrics").glob("part-*.parquet")):
            tid, epoch = part.stem.removeprefix("part-").rsplit("-", 1)
            if int(epoch) > known.get(tid, 0):
                part.unlink()
        for tid in set(self.trials) - set(known):
            del self.trials[tid]
            shutil.rmtree(self.dir / "tensorboard" / tid, ignore_errors=True)
        for tid, row in self.trials.items():
            if (row.get("last_epoch") or 0) > known[tid]:
                row.update(last_epoch=known[tid], status="running", stopped_at_epoch=None)
        if self.trials:
            self._flush()
        else:
            (self.dir / "trials.parquet").unlink(missing_ok=True)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._row(trial, status="running")
        self._flush()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        metrics = {k: v for k, v in result.items() if k not in RAY_KEYS and not isinstance(v, (dict, list))}
        epoch = int(metrics["epoch"])
        row = {"study": self.study, "trial_id": trial.trial_id, **full_config(self.base, trial.config), **metrics,
               "hostname": result.get("hostname") or socket.gethostname(),
               "timestamp": datetime.now(timezone.utc)}
        write_table_atomic([row], self.dir / "metrics" / f"part-{trial.trial_id}-{epoch:04d}.parquet")
        ckpt = getattr(trial, "checkpoint", None)
        self._row(trial, status="running", last_epoch=epoch, **{k: v for k, v in metrics.items() if k != "epoch"},
                  checkpoint_path=(str(Path(ckpt.path) / "checkpoint.pt") if ckpt is not None else None))
        self._flush()

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = int(self.trials.get(trial.trial_id, {}).get("last_epoch") or 0)
        epochs = int(trial.config.get("epochs") or self.max_epochs)
        stopped = last < epochs
        ckpt = getattr(trial, "checkpoint", None)
        self._row(trial, status="stopped" if stopped else "completed", stopped_at_epoch=last if stopped else None,
                  checkpoint_path=(str(Path(ckpt.path) / "checkpoint.pt") if ckpt is not None else None))
        self._flush()

    def on_trial_error(self, iteration, trials, trial, **info):
        self._row(trial, status="failed", error=error_text(trial))
        self._flush()


def error_text(trial) -> Optional[str]:
    """The last meaningful line of a failed trial's traceback."""
    path = getattr(trial, "error_file", None)
    try:
        lines = [l for l in Path(path).read_text().splitlines() if l.strip()] if path else []
    except OSError:
        lines = []
    errs = [l.strip() for l in lines if "Error" in l or "Exception" in l]
    return (errs[-1] if errs else lines[-1] if lines else "unknown error")[:2000]
