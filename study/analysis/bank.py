"""A bank of real runs: the brute-force reference's `runs.jsonl` (bench.reference), one run per (mode, lr, seed) at the
confirm cell with the confirm stage's training config, every deciding metric on validation and test (test per
frame). The replay (study.analysis.replay) draws a study's trials from it; `planted` shifts one mode's runs to plant a
known truth while keeping the real noise.

Pure (numpy, pandas): no Ray, no torch."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from posesplat.metrics import frame_column, validation_twin
from study.analysis.tuning import best_index, curve
from study.base.space import MODE_KEY


class BankError(ValueError):
    """A bank that cannot be replayed: missing, empty, or without a run the procedure asks for."""


def read_runs(path: Path) -> list[dict]:
    """The finished runs of a runs.jsonl (a line cut off by a kill is ignored)."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def value_of(x: float) -> float:
    """A tuned value as a plan and a bank both write it: 4 significant digits (study.analysis.tuning.log_grid)."""
    return float(f"{float(x):.4g}")


@dataclass(frozen=True)
class Bank:
    """Runs by (mode, value, seed); `seeds`: those with a run at every (mode, value) of the bank."""

    runs: dict[tuple[str, float, int], dict]
    modes: tuple[str, ...]
    values: tuple[float, ...]
    seeds: tuple[int, ...]
    source: str = ""

    def run(self, mode: str, value: float, seed: int) -> dict:
        try:
            return self.runs[(mode, value_of(value), int(seed))]
        except KeyError:
            raise BankError(f"{self.source}: no run of {mode} at lr {value:g}, seed {seed} (the procedure asked for "
                            f"it: add the value with python -m bench.reference --lrs ...)") from None

    def score(self, mode: str, value: float, seed: int, key: str) -> float:
        return float(self.run(mode, value, seed).get(key, float("nan")))

    def mean(self, mode: str, value: float, key: str, seeds: Optional[Sequence[int]] = None) -> float:
        """Mean of `key` over `seeds` (default all): diverged runs (NaN) excluded."""
        x = np.array([self.score(mode, value, s, key) for s in (seeds or self.seeds)], float)
        return float(np.nanmean(x)) if np.isfinite(x).any() else float("nan")

    def optimum(self, mode: str, select: str, seeds: Optional[Sequence[int]] = None) -> float:
        """The value with the best mean `select` over `seeds` (a diverged run counts as the worst, as in tuning)."""
        seeds = list(seeds or self.seeds)
        xs = [v for v in self.values for _ in seeds]
        c = curve(xs, [self.score(mode, v, s, select) for v in self.values for s in seeds])
        return c.values[best_index(c)]

    def truth(self, modes: Sequence[str], key: str, select: str, seeds: Optional[Sequence[int]] = None) -> float:
        """The estimand on this bank: the relative difference modes[0] vs modes[1] of mean `key` over `seeds`, each
        mode at its own optimum of mean `select` over the same seeds."""
        a, b = (self.mean(m, self.optimum(m, select, seeds), key, seeds) for m in modes)
        return a / b - 1

    def scaled(self, mode: str, factors: dict[str, float]) -> "Bank":
        """The bank with `mode`'s metric `k` (and its per-frame values) multiplied by factors[k]."""
        runs = {}
        for k, r in self.runs.items():
            if k[0] == mode:
                r = dict(r)
                for key, f in factors.items():
                    if key in r:
                        r[key] = r[key] * f
                    if frame_column(key) in r:
                        r[frame_column(key)] = [x * f for x in r[frame_column(key)]]
            runs[k] = r
        return Bank(runs, self.modes, self.values, self.seeds, self.source)


def load_bank(path: Path | str) -> Bank:
    """A bank from a runs.jsonl, or a folder holding one; refused in one line when missing or empty."""
    path = Path(path)
    file = path / "runs.jsonl" if path.is_dir() else path
    rows = read_runs(file)
    if not rows:
        raise BankError(f"{file}: no runs (a bank is a runs.jsonl written by python -m bench.reference)")
    missing = [k for k in (MODE_KEY, "lr", "seed") if k not in rows[0]]
    if missing:
        raise BankError(f"{file}: line 1 lacks {', '.join(missing)}: not a bench.reference runs.jsonl")
    runs = {(r[MODE_KEY], value_of(r["lr"]), int(r["seed"])): r for r in rows}
    modes = tuple(sorted({k[0] for k in runs}))
    values = tuple(sorted({k[1] for k in runs}))
    seeds = tuple(sorted(s for s in {k[2] for k in runs}
                         if all((m, v, s) in runs for m in modes for v in values)))
    if not seeds:
        raise BankError(f"{file}: no seed has a run at every (mode, lr) of the bank")
    return Bank(runs, modes, values, seeds, str(file))


def planted(bank: Bank, modes: Sequence[str], select: str, quality: dict[str, Optional[float]],
            cost: Optional[tuple[str, float]] = None) -> Bank:
    """The bank with modes[0]'s runs scaled so that each quality metric's estimand (test, at the optima) is
    quality[k] (None: as measured). Its validation twin is scaled alike (the optima stay where they are). With
    cost = (key, d), the cost's relative difference at the optima is d. The noise stays the bank's own, scaled."""
    a, b = modes
    factors = {}
    for key, target in quality.items():
        if target is None:
            continue
        f = (1 + target) / (1 + bank.truth(modes, key, select))
        factors[key] = f
        if validation_twin(key):
            factors[validation_twin(key)] = f
    if cost is not None:
        key, d = cost
        opt = {m: bank.optimum(m, select) for m in modes}
        now = bank.mean(a, opt[a], key) / bank.mean(b, opt[b], key) - 1
        factors[key] = (1 + d) / (1 + now)
    return bank.scaled(a, factors)
