"""A stage's `metrics/` folder: a parquet part per (trial, epoch) while a trial runs, one file per trial once it
has ended (compacted), read in bulk with pyarrow.dataset.

Compaction writes `trial-<id>.parquet` whole (a temporary name, then a rename) and then removes the trial's parts.
A kill at any moment leaves the parts, or the trial file with some or all of its parts beside it. `current` reads a
trial file and never the parts beside it, so no row is lost or counted twice; the next compaction or resume removes
the leftovers. A folder written before compaction existed (parts only) reads as it always did.
"""

from __future__ import annotations

import re
from typing import Optional

import pyarrow as pa
import pyarrow.dataset as pads

from study.base.storage import Store

FOLDER = "metrics"
PART_RE, TRIAL_RE = re.compile(r"part-(.+)-(\d+)\.parquet"), re.compile(r"trial-(.+)\.parquet")


def part_name(tid: str, epoch: int) -> str:
    """The file of one (trial, epoch) row while the trial runs."""
    return f"part-{tid}-{epoch:04d}.parquet"


def trial_name(tid: str) -> str:
    """The compacted file of an ended trial: all its epoch rows."""
    return f"trial-{tid}.parquet"


def part_of(name: str) -> tuple[str, int]:
    """(trial id, epoch) of a part file name `part-<trial id>-<epoch>.parquet`."""
    tid, epoch = PART_RE.fullmatch(name).groups()
    return tid, int(epoch)


def trial_of(name: str) -> str:
    """The trial id of a compacted file name `trial-<trial id>.parquet`."""
    return TRIAL_RE.fullmatch(name).group(1)


def readable(names: list[str]) -> list[str]:
    """The parquet files of a folder listing, without hidden ones (temporary names of files being written)."""
    return [n for n in names if n.endswith(".parquet") and not n.startswith((".", "_"))]


def parts_by_trial(names: list[str]) -> dict[str, dict[int, str]]:
    """Trial id -> {epoch: part name} of a folder listing."""
    out: dict[str, dict[int, str]] = {}
    for n in names:
        if PART_RE.fullmatch(n):
            tid, epoch = part_of(n)
            out.setdefault(tid, {})[epoch] = n
    return out


def compacted(names: list[str]) -> set[str]:
    """The trials of a folder listing that have a compacted file."""
    return {trial_of(n) for n in names if TRIAL_RE.fullmatch(n)}


def current(names: list[str]) -> list[str]:
    """The files that hold a stage's rows, each row once: every trial file, the parts of trials without one, and
    any other parquet file (a folder written by hand). Parts beside a trial file are leftovers of a killed
    compaction: its file already holds their rows."""
    done = compacted(names)
    return [n for n in readable(names) if not (PART_RE.fullmatch(n) and part_of(n)[0] in done)]


def read(store: Store, names: list[str], folder: str = FOLDER) -> pa.Table:
    """The rows of `names` in `store/folder` as one table, read by pyarrow.dataset in parallel threads. The schema
    is the union of the files' schemas (a column one file lacks is null there; int and float promote to float)."""
    paths = [store.path(folder, n) if folder else store.path(n) for n in names]
    factory = pads.FileSystemDatasetFactory(store.fs, paths, pads.ParquetFileFormat(), pads.FileSystemFactoryOptions())
    schema = factory.inspect(promote_options="permissive")
    return factory.finish(schema).to_table(use_threads=True)


def trial_rows(store: Store, tid: str) -> pa.Table:
    """One trial's rows: its compacted file, else its parts (empty when it has neither)."""
    names = store.list(FOLDER)
    if tid in compacted(names):
        return store.read_table(FOLDER, trial_name(tid))
    mine = sorted(parts_by_trial(names).get(tid, {}).values())
    return read(store, mine) if mine else pa.table({})


def compact(store: Store, tid: str, names: Optional[list[str]] = None) -> bool:
    """Make an ended trial's parts one file (written whole), then remove the parts. A trial file left by a killed
    compaction is kept and its leftover parts removed. Returns whether anything changed."""
    names = store.list(FOLDER) if names is None else names
    parts = sorted(parts_by_trial(names).get(tid, {}).values())
    if not parts:
        return False
    if tid not in compacted(names):
        rows = read(store, parts).sort_by("epoch")
        store.write_arrow(rows, FOLDER, trial_name(tid))
    for p in parts:
        store.delete(FOLDER, p)
    return True


def expand(store: Store, tid: str, upto: Optional[int] = None) -> None:
    """Undo a compaction for a trial that runs again: its rows up to epoch `upto` (all: None) back as parts, then
    the trial file removed. A kill in between leaves the trial file and parts it holds, which reads as the file."""
    rows = store.read_table(FOLDER, trial_name(tid))
    for i in range(rows.num_rows):
        row = rows.slice(i, 1)
        epoch = int(row["epoch"][0].as_py())
        if upto is None or epoch <= upto:
            store.write_arrow(row, FOLDER, part_name(tid, epoch))
    store.delete(FOLDER, trial_name(tid))
