"""posesplat.io: an atomic write leaves the whole new file or the old one and no temporary file; a folder swap keeps
the previous folder when it fails; strict JSON writes NaN as null."""

import json
import math

import pytest

from posesplat.io import atomic_file, atomic_write, strict_dumps, swap_folder


def test_atomic_write_replaces_whole_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "a.json"
    atomic_write(path, "old")
    atomic_write(path, b"new")
    assert path.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "a.bin"
    atomic_write(path, "old")
    with pytest.raises(RuntimeError):
        with atomic_file(path, fsync=True) as f:
            f.write(b"half")
            raise RuntimeError("killed halfway")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]


def test_swap_replaces_the_folder(tmp_path):
    out, staging = tmp_path / "out", tmp_path / "staging"
    out.mkdir()
    (out / "x").write_text("previous")
    staging.mkdir()
    (staging / "x").write_text("new")
    swap_folder(staging, out)
    assert (out / "x").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_failed_swap_keeps_the_previous_folder(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "x").write_text("previous")
    with pytest.raises(FileNotFoundError):
        swap_folder(tmp_path / "missing", out)
    assert (out / "x").read_text() == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_strict_json_writes_nan_as_null():
    assert json.loads(strict_dumps({"a": math.nan, "b": [1.0, math.inf], "c": (2,)})) == {"a": None, "b": [1.0, None],
                                                                                          "c": [2]}
