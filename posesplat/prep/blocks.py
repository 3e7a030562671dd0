"""Per-frame work in parallel: output frames in blocks, each block's result written to its own file (its
done-marker), so that an interrupted step redoes only the blocks it had not finished."""

from __future__ import annotations

import json
import multiprocessing
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Callable, TypeVar

import numpy as np
from threadpoolctl import threadpool_limits

from posesplat.io import atomic_write
from posesplat.progress import Progress

BLOCK = 16  # output frames per parallel job (one done-marker per block)
Job = TypeVar("Job")  # what every block of a step reads (a frozen dataclass: picklable, sent to each worker once)


def blocks(n: int) -> list[tuple[int, int]]:
    """Output-frame ranges [(j0, j1)] of BLOCK frames."""
    return [(j, min(j + BLOCK, n)) for j in range(0, n, BLOCK)]


_JOB: Any = None  # a worker process's job, set once by its initializer


def _set_job(job: Any) -> None:
    """A worker's initializer: its job, and one BLAS thread (see run_blocks)."""
    global _JOB
    _JOB = job
    threadpool_limits(limits=1)  # for the worker's life


def _run_with_job(fn: Callable[[Any, int, int], dict], j0: int, j1: int) -> dict:
    return fn(_JOB, j0, j1)


def run_blocks(fn: Callable[[Job, int, int], dict], job: Job, n: int, folder: Path, workers: int, desc: str,
               progress: bool) -> list:
    """Run fn(job, j0, j1) over the blocks not yet finished in `folder` (one result file per block), in parallel.
    Each block runs with one BLAS thread: the hull's small matrix products gain nothing from more, and OpenBLAS's
    threads spin beside the workers, the decoders and zarr's writers (an import took 1.6-2x as long with them, measured
    once). The limit covers the libraries loaded when a block starts (numpy's OpenBLAS); the blocks load no other."""
    folder.mkdir(parents=True, exist_ok=True)
    todo = [b for b in blocks(n) if not (folder / f"{b[0]:08d}.json").exists()]
    bar = Progress(total=n, initial=n - sum(j1 - j0 for j0, j1 in todo), desc=desc, unit="frame", disable=not progress)

    def save(b, res):
        atomic_write(folder / f"{b[0]:08d}.json",
                     json.dumps({k: np.asarray(v).tolist() if k != "boxes" else v for k, v in res.items()}))
        bar.update(b[1] - b[0])

    try:
        if workers <= 1 or len(todo) <= 1:
            with threadpool_limits(limits=1):
                for b in todo:
                    save(b, fn(job, *b))
        else:  # the job (cameras, poses) goes to each worker once; each task names only its block
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_set_job, initargs=(job,)) as pool:
                futures = {pool.submit(_run_with_job, fn, *b): b for b in todo}
                for fut in as_completed(futures):
                    save(futures[fut], fut.result())
    finally:
        bar.close()
    return [json.loads((folder / f"{j0:08d}.json").read_text()) for j0, _ in blocks(n)]
