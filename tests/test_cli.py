"""Command lines as a user meets them: every option of every entry point has help, `--set` is repeatable and
cannot swallow the positional config, and piped progress is one plain line per stage (no carriage returns)."""

import argparse
import importlib
import json
import subprocess
import sys

import pytest

from shared import TINY_MODEL

ENTRY_POINTS = ["posesplat.synth", "posesplat.train", "posesplat.prep", "bench.__main__", "study.run",
                "study.analyze", "study.simulate", "study.resources"]


class Captured(Exception):
    pass


@pytest.mark.parametrize("module", ENTRY_POINTS)
def test_every_option_has_help(module, monkeypatch):
    def capture(self, *a, **k):
        raise Captured(self)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    with pytest.raises(Captured) as e:
        importlib.import_module(module).main([])
    parser = e.value.args[0]
    missing = [a.option_strings[0] for a in parser._actions if a.option_strings and not a.help]
    assert not missing, f"{module}: options without help: {missing}"


def test_set_is_repeatable_and_keeps_the_positional(small_dataset, tmp_path, capsys):
    from posesplat.train import main

    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({"dataset": str(small_dataset), **TINY_MODEL, "max_frames": 12, "eval_frames": 1,
                                  "steps_per_epoch": 1}))
    out = tmp_path / "run"
    assert main(["--set", "epochs=1", "--set", "lr=0.002", str(config), "--out", str(out)]) == 0
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1]
    from posesplat.checkpoint import read as read_checkpoint

    assert read_checkpoint(out / "checkpoint.pt")["config"]["lr"] == 0.002
    assert "NaN" not in (out / "metrics.jsonl").read_text()  # strict JSON: null, not NaN (e.g. no valid PSNR yet)


def test_piped_progress_is_one_line_per_stage(tmp_path):
    """Piped (a log file), a synth of 6 frames writes its stage lines, not 142 carriage-return updates."""
    r = subprocess.run([sys.executable, "-m", "posesplat.synth", "--out", str(tmp_path / "s.zarr"), "--frames", "6",
                        "--height", "32", "--width", "32"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "\r" not in r.stderr
    lines = [line for line in r.stderr.splitlines() if line.startswith("synthetic mouse")]
    assert lines[0] == "synthetic mouse: started (6 frame)" and lines[1].startswith("synthetic mouse: done in "), lines
