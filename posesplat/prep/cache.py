"""Resumable steps: each step's output is written atomically with the fingerprint of its inputs into the work folder
beside the dataset, so a re-run skips what is finished and an interrupted run resumes."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np

from posesplat.io import atomic_file

PREP_VERSION = "2"  # 2: Pose Splatter units, reach, frames by index


def fingerprint(*parts: Any) -> str:
    """A short stable hash of JSON-able parts (file identities are (path, size, mtime))."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def file_id(path: Path) -> list:
    st = path.stat()
    return [str(path.resolve()), st.st_size, st.st_mtime_ns]


def cached_step(path: Path, fp: str, fn: Callable[[], dict[str, np.ndarray]], log: Callable) -> dict[str, np.ndarray]:
    """Load `path` (npz) when it holds fingerprint fp, else compute and write it atomically."""
    if path.exists():
        with np.load(path) as z:
            if str(z["fingerprint"]) == fp:
                log(f"{path.stem}: up to date")
                return {k: z[k] for k in z.files if k != "fingerprint"}
    out = fn()
    with atomic_file(path) as f:
        np.savez(f, fingerprint=np.array(fp), **out)
    log(f"{path.stem}: done")
    return out


def clear_stale(work: Path, prefix: str, keep: str) -> None:
    """Remove a step's folders from earlier inputs."""
    for p in work.glob(f"{prefix}-*"):
        if p.name != keep:
            shutil.rmtree(p, ignore_errors=True)
