"""Study storage: `Store`, the study directory on a local or shared path or behind a URI that pyarrow's filesystems
understand (s3://, gs://, hdfs://, file://), through which every file the study writes goes, each written whole or
not at all; `StudyLock`, one driver per study; `set_aside`, which keeps a damaged record instead of deleting it."""

from __future__ import annotations

import fcntl
import fnmatch
import io
import json
import os
import socket
import threading
import time
import urllib.parse
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from posesplat.io import strict_dumps, temp_name


class StudyError(RuntimeError):
    """A study cannot start or continue; one line."""


def is_uri(location: str | Path) -> bool:
    """Whether `location` names its filesystem by a scheme (s3://, gs://, hdfs://, file://) rather than being a
    local path: the one test of where a study, a dataset or a checkpoint lies."""
    return "://" in str(location)


def join_uri(base: str, *parts: str) -> str:
    """Append path parts to a local path or a URI, keeping its query (s3://b/p?endpoint_override=... + x)."""
    if not is_uri(base):
        return "/".join([base.rstrip("/"), *parts])
    u = urllib.parse.urlsplit(base)
    return urllib.parse.urlunsplit(u._replace(path="/".join([u.path.rstrip("/"), *parts])))


class StorageError(OSError):
    """Study storage that cannot be opened or written; one line."""


class Store:
    """A study directory: a local path or a URI, and the few file operations the study needs on it."""

    def __init__(self, location: str | Path):
        location = str(location)
        if is_uri(location):
            try:
                self.fs, root = pafs.FileSystem.from_uri(location)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as e:
                raise StorageError(f"{location}: not a storage URI pyarrow can open ({str(e).splitlines()[0]})") from None
            self.root = root.rstrip("/")
            self.uri = location.rstrip("/")
        else:
            self.fs, self.root = pafs.LocalFileSystem(), str(Path(location).resolve())
            self.uri = self.root
        self.local = isinstance(self.fs, pafs.LocalFileSystem)
        self.name = self.root.rsplit("/", 1)[-1]

    def path(self, *parts: str) -> str:
        """Path of a file in the study, in the store's filesystem."""
        return "/".join([self.root, *parts])

    def child(self, *parts: str) -> "Store":
        return Store(join_uri(self.uri, *parts))

    def parent(self) -> "Store":
        """The folder holding this one (a URI keeps its query: s3://b/x/y?endpoint_override=... -> s3://b/x?...)."""
        if not is_uri(self.uri):
            return Store(Path(self.root).parent)
        u = urllib.parse.urlsplit(self.uri)
        return Store(urllib.parse.urlunsplit(u._replace(path=u.path.rstrip("/").rsplit("/", 1)[0])))

    def exists(self, *parts: str) -> bool:
        return self.fs.get_file_info(self.path(*parts)).type != pafs.FileType.NotFound

    def read_text(self, *parts: str) -> str:
        with self.fs.open_input_stream(self.path(*parts)) as f:
            return f.read().decode()

    def write_bytes(self, data: bytes, *parts: str) -> None:
        """Write through a temporary name and a move, so readers never see half a file."""
        final = self.path(*parts)
        parent, name = final.rsplit("/", 1)
        self.fs.create_dir(parent, recursive=True)
        tmp = f"{parent}/{temp_name(name)}"
        with self.fs.open_output_stream(tmp) as f:
            f.write(data)
        self.fs.move(tmp, final)

    def write_json(self, obj: dict, *parts: str) -> None:
        """A study record as strict JSON (a NaN becomes null, so every JSON reader accepts it)."""
        self.write_bytes(strict_dumps(obj, indent=1, default=str).encode(), *parts)

    def write_table(self, rows: list[dict], *parts: str, types: Optional[dict[str, pa.DataType]] = None) -> None:
        """Write rows as one parquet file; `types` fixes the type of some columns (e.g. an empty list's)."""
        table = pa.Table.from_pylist(rows)
        for name, typ in (types or {}).items():
            if name in table.column_names:
                table = table.set_column(table.column_names.index(name), name, table[name].cast(typ))
        self.write_arrow(table, *parts)

    def write_arrow(self, table: pa.Table, *parts: str) -> None:
        """Write an Arrow table as one parquet file (through a temporary name, as write_bytes)."""
        buf = io.BytesIO()
        pq.write_table(table, buf)
        self.write_bytes(buf.getvalue(), *parts)

    def read_table(self, *parts: str) -> pa.Table:
        return pq.read_table(self.path(*parts), filesystem=self.fs)

    def list(self, folder: str, pattern: str = "*", folders_only: bool = False) -> list[str]:
        """Names of the files and folders (only the folders: folders_only) directly in `folder` matching a glob."""
        sel = pafs.FileSelector(self.path(folder), allow_not_found=True)
        return sorted(i.base_name for i in self.fs.get_file_info(sel) if fnmatch.fnmatch(i.base_name, pattern)
                      and (not folders_only or i.type == pafs.FileType.Directory))

    def delete(self, *parts: str) -> None:
        if self.exists(*parts):
            info = self.fs.get_file_info(self.path(*parts))
            (self.fs.delete_dir if info.type == pafs.FileType.Directory else self.fs.delete_file)(self.path(*parts))

    def upload(self, local_dir: Path, *parts: str) -> None:
        """Copy a local folder's files into the study (TensorBoard events written on a worker)."""
        self.fs.create_dir(self.path(*parts), recursive=True)
        pafs.copy_files(str(local_dir), self.path(*parts), source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=self.fs)


def pid_alive(pid: int) -> bool:
    """Whether a process of this host is alive (a lock's or a staging folder's owner)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def set_aside(store: Store, name: str) -> str:
    """Move a damaged file or folder of a study to `<name>.damaged-<UTC time>` beside it (never delete what a run
    wrote); returns the new path."""
    aside = f"{name}.damaged-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S')}"
    store.fs.move(store.path(name), store.path(aside))
    return store.path(aside)


class StudyLock:
    """One driver per study. On a local or shared filesystem: an flock, which the kernel drops when the driver dies,
    so a stale lock never blocks a resume. Behind a URI (no flock): a lock file naming host, pid and a heartbeat
    renewed every HEARTBEAT_S; it is stale when its driver's pid is gone (same host) or its heartbeat is older than
    STALE_S."""

    HEARTBEAT_S, STALE_S = 30.0, 120.0

    def __init__(self, study: Store | Path):
        self.store = study if isinstance(study, Store) else Store(study)

    def __enter__(self) -> "StudyLock":
        if self.store.local:
            path = Path(self.store.path(".lock"))
            path.parent.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(path, os.O_RDWR | os.O_CREAT)
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(self.fd)
                raise StudyError(f"{self.store.uri}: another driver is running this study") from None
            os.ftruncate(self.fd, 0)
            os.write(self.fd, str(os.getpid()).encode())
            return self
        if self.store.exists(".lock"):
            held = json.loads(self.store.read_text(".lock"))
            age = time.time() - held["beat"]
            alive = age < self.STALE_S and (held["host"] != socket.gethostname() or pid_alive(held["pid"]))
            if alive:
                raise StudyError(f"{self.store.uri}: another driver is running this study ({held['host']} pid "
                                 f"{held['pid']}, alive {age:.0f} s ago; stale after {self.STALE_S:.0f} s)")
        self.me = {"host": socket.gethostname(), "pid": os.getpid()}
        self._beat()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat_loop, daemon=True)
        self.thread.start()
        return self

    def _beat(self) -> None:
        self.store.write_bytes(json.dumps({**self.me, "beat": time.time()}).encode(), ".lock")

    def _beat_loop(self) -> None:
        while not self.stop.wait(self.HEARTBEAT_S):
            self._beat()

    def __exit__(self, *exc) -> None:
        if self.store.local:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            return
        self.stop.set()
        self.thread.join()
        self.store.delete(".lock")
