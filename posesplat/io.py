"""Writing files and folders on the local filesystem so that a reader, or a run killed halfway, never sees half of
one. A file is written under a temporary name beside it and renamed. A finished folder replaces the previous one by
two renames. Strict JSON (NaN as null) for every JSON file the project writes."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, BinaryIO, Iterator


def temp_name(name: str) -> str:
    """A hidden temporary name for file `name` in the same folder, unique across processes, hosts and threads (several
    nodes may write one shared study folder)."""
    return f".{name}.tmp-{uuid.uuid4().hex[:8]}"


@contextlib.contextmanager
def atomic_file(path: str | Path, fsync: bool = False) -> Iterator[BinaryIO]:
    """An open binary file that becomes `path` when the block ends without an error (and is removed on one); `fsync`
    flushes it to disk before the rename (a checkpoint must survive a power loss)."""
    path = Path(path)
    tmp = path.with_name(temp_name(path.name))
    try:
        with open(tmp, "wb") as f:
            yield f
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: str | Path, data: bytes | str) -> None:
    """Write `path` whole or not at all (text as UTF-8)."""
    with atomic_file(path) as f:
        f.write(data.encode() if isinstance(data, str) else data)


def strict_json(v: Any) -> Any:
    """v with every non-finite float as None, so the JSON is strict (`null`, never `NaN`: polars and others refuse it)."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: strict_json(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [strict_json(x) for x in v]
    return v


def strict_dumps(v: Any, **kw) -> str:
    """JSON text of v that every JSON reader accepts (see strict_json); `kw` goes to json.dumps."""
    return json.dumps(strict_json(v), allow_nan=False, **kw)


def beside(out: Path, kind: str) -> Path:
    """`.<name>.<kind>-<pid>` next to `out`: where this process builds (tmp) or parks (old) a folder; the pid tells a
    later writer a dead writer's leftovers from a live one's."""
    return out.with_name(f".{out.name}.{kind}-{os.getpid()}")


def staging_folder(out: Path) -> Path:
    """An empty name beside `out` to build its next version under (what a killed earlier run of this pid left there
    is removed)."""
    tmp = beside(out, "tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    return tmp


def swap_folder(staging: Path, out: Path) -> None:
    """Put the finished folder `staging` at `out`. A previous `out` goes aside first and is deleted only once the new
    one is in place (put back if that fails). So some whole version is always at `out` or beside it. Callers decide
    beforehand whether `out` may be replaced at all."""
    old = beside(out, "old")
    if out.exists():
        os.replace(out, old)
    try:
        os.replace(staging, out)
    except BaseException:
        if old.exists() and not out.exists():
            os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)
