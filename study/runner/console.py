"""What the study command shows while a stage runs: a progress bar per stage on a terminal (trials ended / planned,
running, failed, the time left at the pace so far), one plain line per trial end when piped; Ray's own console
output (its trial boxes, status tables and INFO lines) goes to `<study>/ray.log`, unless --verbose asks for it on
screen. Ray's warnings and errors still reach the screen (stderr)."""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from pathlib import Path
from typing import Iterator, Optional, TextIO

from ray import tune
from tqdm import tqdm

LOG_NAME = "ray.log"
_SCREEN: list[TextIO] = []  # the stdout the command started with, while Ray's output goes to the log
_LOG: list[Optional[Path]] = []  # the running study's Ray log (None: on screen, --verbose)


def screen() -> TextIO:
    """Where the study's own lines go: the command's stdout, even while Ray's console output is redirected."""
    return _SCREEN[-1] if _SCREEN else sys.stdout


def say(line: str) -> None:
    """One of the study's own lines, on screen (never into Ray's log)."""
    print(line, file=screen(), flush=True)


@contextlib.contextmanager
def ray_output_to(log: Optional[Path]) -> Iterator[None]:
    """Within the block, Ray's prints (stdout) and its loggers' INFO lines go to the file `log` (appended), while
    its warnings and errors still reach stderr; `log` None (--verbose) leaves everything on screen."""
    if log is None:
        yield
        return
    ray_logger = logging.getLogger("ray")
    streams = [h for h in ray_logger.handlers if isinstance(h, logging.StreamHandler)
               and not isinstance(h, logging.FileHandler)]
    levels = [h.level for h in streams]
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", buffering=1) as f:
        to_file = logging.StreamHandler(f)
        to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        ray_logger.addHandler(to_file)
        for h in streams:
            h.setLevel(max(h.level, logging.WARNING))
        _SCREEN.append(sys.stdout)
        try:
            with contextlib.redirect_stdout(f):
                yield
        finally:
            _SCREEN.pop()
            ray_logger.removeHandler(to_file)
            for h, level in zip(streams, levels):
                h.setLevel(level)


@contextlib.contextmanager
def study_log(log: Optional[Path]) -> Iterator[None]:
    """Within the block, ray_output() sends Ray's console output to `log` (None: leaves it on screen)."""
    _LOG.append(log)
    try:
        yield
    finally:
        _LOG.pop()


def ray_output() -> contextlib.AbstractContextManager:
    """ray_output_to the running study's log (study_log), for a block where Ray prints: its start, a Tuner's fit."""
    return ray_output_to(_LOG[-1] if _LOG else None)


class StageProgress(tune.Callback):
    """A stage's trials as they end. Stateless (Ray restores callback states by position): a resumed stage starts
    its count from the trials the study's records already show ended (`ended`)."""

    def __init__(self, label: str, total: int, ended: int = 0):
        self.label, self.total, self.ended = label, total, ended
        self.running, self.failed, self.started = 0, 0, time.time()
        self.bar: Optional[tqdm] = None

    def __getstate__(self) -> dict:  # Tune pickles its callbacks with the experiment: no open bar in it
        return {**self.__dict__, "bar": None}

    def _show(self, trial=None, how: str = "") -> None:
        left = max(self.total - self.ended, 0)
        if sys.stderr.isatty():
            if self.bar is None:
                self.bar = tqdm(total=self.total, initial=self.ended, desc=self.label, unit="trial", file=sys.stderr)
            self.bar.n = self.ended
            self.bar.set_postfix_str(f"running {self.running}, failed {self.failed}", refresh=True)
        elif trial is not None:
            say(f"{self.label}: trial {trial.trial_id} {how} ({self.ended} of {self.total} ended, "
                f"{self.failed} failed, {left} to go)")

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self.running += 1
        self._show()

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self.running, self.ended = max(self.running - 1, 0), self.ended + 1
        self._show(trial, "ended")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self.running, self.ended, self.failed = max(self.running - 1, 0), self.ended + 1, self.failed + 1
        self._show(trial, "failed")

    def on_experiment_end(self, trials, **info) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif not sys.stderr.isatty():
            say(f"{self.label} stage: {self.ended} of {self.total} trials ended ({self.failed} failed) in "
                f"{time.time() - self.started:.0f} s")
