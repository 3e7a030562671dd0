"""Designs replayed on a bank: `python -m bench.replay_designs [--bank PATH] [--replays N]`.

For each split of a CPU budget between tuning seeds and confirm pairs that the bank's seeds can hold, it replays the
whole procedure on the bank (study.analysis.replay.replay_rates). It reports `either` on the bank as measured and
planted exactly equal, and 3d on "2D 5% worse". Also the worst wrong direction, and the median half-width of the IoU
interval at the planted-equal truth. It prints the table of docs/analysis.md ("Designs on the same bank")."""

from __future__ import annotations

import argparse
import sys
from typing import Optional

import numpy as np

from study.analysis.bank import BankError, load_bank
from study.analysis.replay import AS_MEASURED, TRUTHS, ReplayDesign, replay_once, replay_rates
from study.base.space import load_space

DESIGNS = [(5, 14), (5, 19), (4, 20), (3, 21)]  # (tuning seeds per value, pairs): the shipped one first


def design(base: ReplayDesign, tune_seeds: int, pairs: int) -> ReplayDesign:
    """The shipped CPU design with `tune_seeds` per value and `pairs` confirm pairs, in one look."""
    return base.with_(min_seeds=pairs, max_seeds=pairs, looks=1,
                      tune=base.confirm.tune.model_copy(update={"seeds": tune_seeds}))


def half_width(bank, d: ReplayDesign, truth, n: int, seed: int = 99) -> float:
    """Median half-width of the 95% interval of the first quality metric over n replays at `truth`."""
    b, rng = truth.bank(bank, d), np.random.default_rng(seed)
    need, key = d.confirm.tune.seeds + d.pairs, d.confirm.quality[0]
    widths = []
    for _ in range(n):
        _, dec = replay_once(b, d, [int(s) for s in rng.permutation(b.seeds)[:need]])
        e = dec.quality[key].with_level(0.95)
        widths.append((e.hi - e.lo) / 2)
    return float(np.median(widths))


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.replay_designs", description=__doc__.splitlines()[0])
    p.add_argument("--bank", default="bench/banks/comparison-cpu", help="a bench.reference runs.jsonl or its folder")
    p.add_argument("--replays", type=int, default=200, help="replays per truth and design")
    a = p.parse_args(argv)
    try:
        bank = load_bank(a.bank)
    except BankError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    base = ReplayDesign.from_space(load_space("comparison").scaled(False))
    named = {t.name: t for t in TRUTHS}
    truths = [AS_MEASURED, named["equal quality, equal cost"], named["2D 5% worse"]]
    print("| tuning seeds x pairs (one look) | trials | as measured -> either | equal, equal cost -> either "
          "| 2D 5% worse -> 3d | worst wrong | IoU half-width |\n|---|---|---|---|---|---|---|")
    for k, pairs in DESIGNS:
        if k + pairs > len(bank.seeds):
            print(f"note: {k} x {pairs} needs {k + pairs} seeds; the bank has {len(bank.seeds)}", file=sys.stderr)
            continue
        d = design(base, k, pairs)
        rows = [replay_rates(bank, d, t, a.replays, seed=i) for i, t in enumerate(truths)]
        width = half_width(bank, d, truths[1], min(60, a.replays))
        print(f"| {k} x {pairs} | {rows[0]['trials']:.0f} | {100 * rows[0]['either']:.1f}% | "
              f"{100 * rows[1]['either']:.1f}% | {100 * rows[2]['3d']:.1f}% | "
              f"{100 * max(r['wrong'] for r in rows):.1f}% | {100 * width:.2f}% |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
