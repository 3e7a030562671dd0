"""The whole decision procedure replayed on a bank of real runs (study.analysis.bank): the real model's noise, with no
noise model in between.

Each replay draws seeds from the bank without replacement and runs what a study runs, in its order. First the
deciding tuning's rounds on the first `tune.seeds` seeds (every value and mode on the same seeds, widening by the edge
rule: study.analysis.tuning). Then the confirm plan at the chosen values (study.analysis.confirm.plan_confirm). Then
the confirm pairs on the next seeds (both modes on one seed, as a study pairs them). Last the looks and the decision
(study.analysis.decide.decide). The truth is the bank's own estimand: the relative difference of the mean test score of
each mode at its optimum of mean validation score, over the bank's seeds.

The truth shares seeds with the replay's draws (each replay uses tune.seeds + pairs of the bank's seeds), which pulls
the estimates towards the truth and flatters coverage; `split=True` draws from one half of the bank's seeds and takes
the truth from the other half (fewer pairs then fit: docs/analysis.md says what that shows).

    bank = load_bank("bench/banks/comparison-cpu/runs.jsonl")
    rates = replay_rates(bank, ReplayDesign.from_space(load_space("comparison").scaled(False)), AS_MEASURED, n=200)
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from study.analysis import tuning
from study.analysis.bank import Bank, planted
from study.analysis.confirm import plan_confirm
from study.analysis.decide import EITHER, INCONCLUSIVE, call_rates, decide
from study.base.rows import COMPLETED, FAILED
from study.base.space import MODE_KEY, Confirm, Space

@dataclass(frozen=True)
class ReplayDesign:
    """What the replay runs: a space's confirm block (its tuning, pairs, looks and rule) and epochs."""

    confirm: Confirm
    epochs: int
    name: str = ""

    @classmethod
    def from_space(cls, space: Space) -> "ReplayDesign":
        if space.confirm is None or space.confirm.tune is None:
            raise ValueError(f"space {space.name}: the replay needs a confirm block with a deciding tuning")
        return cls(space.confirm, space.max_epochs, space.name)

    @property
    def pairs(self) -> int:
        return self.confirm.min_seeds

    def with_(self, **confirm) -> "ReplayDesign":
        """The same design with confirm fields changed (e.g. looks=1, min_seeds=..., tune=...)."""
        return replace(self, confirm=self.confirm.model_copy(update=confirm))


@dataclass(frozen=True)
class ReplayTruth:
    """A truth on the bank: the quality estimand per metric (None: as the bank measures it) and the cost's (None: as
    measured). Also the calls that are right and those in the wrong direction for it. A call in neither, such as
    'either' at a border truth, is counted in its own column only."""

    name: str
    quality: Optional[float]
    cost: Optional[float]
    right: tuple[str, ...]
    wrong: tuple[str, ...]

    def bank(self, bank: Bank, design: ReplayDesign) -> Bank:
        c = design.confirm
        return planted(bank, c.modes, c.select, {k: self.quality for k in c.quality},
                       None if self.cost is None else (c.cost, self.cost))


AS_MEASURED = ReplayTruth("the bank as measured", None, None, (EITHER, INCONCLUSIVE), ("2d", "3d"))
TRUTHS = [
    AS_MEASURED,
    ReplayTruth("2D 5% worse", -0.05, 0.0, ("3d",), ("2d", EITHER)),
    ReplayTruth("2D 0.5% worse, 30% faster", -0.005, -0.3, ("2d",), ("3d",)),
    ReplayTruth("equal quality, 3D 30% cheaper", 0.0, 1 / 0.7 - 1, ("3d",), ("2d",)),
    ReplayTruth("equal quality, equal cost", 0.0, 0.0, (EITHER, INCONCLUSIVE), ("2d", "3d")),
    ReplayTruth("2D 2.1% worse, 30% faster (border)", -0.021, -0.3, ("3d", INCONCLUSIVE), ("2d", EITHER)),
    ReplayTruth("2D 1.9% worse, 30% faster (border)", -0.019, -0.3, ("2d", INCONCLUSIVE), ("3d",)),
    ReplayTruth("2D 1.9% better, 3D 30% cheaper (border)", 0.019, 1 / 0.7 - 1, ("3d", INCONCLUSIVE), ("2d",)),
    ReplayTruth("2D 2.1% better, 3D 30% cheaper (border)", 0.021, 1 / 0.7 - 1, ("2d", INCONCLUSIVE), ("3d",)),
]


def replay_tuning(bank: Bank, design: ReplayDesign, seeds: Sequence[int]) -> dict:
    """The deciding tuning's rounds on the bank's runs at `seeds` (the same loop as study.runner.run.run_tuning);
    its outcome (study.analysis.tuning.summary)."""
    spec, modes, select = design.confirm.tune, design.confirm.modes, design.confirm.select
    others = design.confirm.other_validation
    runs: list[tuning.TuningRun] = []
    for r in range(spec.max_widen + 1):
        values = tuning.next_values(spec, modes, runs)
        if not values:
            break
        runs += [tuning.TuningRun(m, v, s, bank.score(m, v, s, select), r, {k: bank.score(m, v, s, k) for k in others})
                 for s in seeds for m, vs in values.items() for v in vs]
    return tuning.summary(spec, modes, runs)


def confirm_tables(bank: Bank, plan: dict, seeds: Sequence[int]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-trial table, trials table) of the confirm stage from the bank: each planned pair's two modes at their
    planned values on one bank seed; a diverged run is a failed trial, as the runner records it."""
    rows, trials = [], []
    keys = [*plan["quality"], plan["cost"], plan["select"]]
    for s in seeds:
        for m in plan["modes"]:
            r = bank.run(m, plan["hparams"][m][plan["tune"]["key"]], s)
            tid = f"{m}-{s}"
            ok = all(np.isfinite(float(r.get(k, np.nan))) for k in keys)
            trials.append({"study": "replay", "trial_id": tid, MODE_KEY: m, "seed": s,
                           "status": COMPLETED if ok else FAILED, "error": None if ok else r.get("error")})
            if ok:
                rows.append({"study": "replay", "trial_id": tid, MODE_KEY: m, "seed": s, "epoch": plan["epochs"],
                             "test_frames": r["test_frames"], "status": COMPLETED,
                             **{k: r[k] for k in keys}, **{f"{k}_frames": r[f"{k}_frames"] for k in plan["quality"]}})
    return pd.DataFrame(rows), pd.DataFrame(trials)


def planning_rows(bank: Bank, design: ReplayDesign, tuned: dict, seeds: Sequence[int]) -> pd.DataFrame:
    """The rows the confirm plan takes its variance from: in a study the explore stage's trials in the cell; here
    the tuning's runs at the chosen values (both modes on the same seeds), in the per-trial schema."""
    c = design.confirm
    plan = {"modes": c.modes, "quality": c.quality, "cost": c.cost, "select": c.select, "epochs": design.epochs,
            "tune": {"key": c.tune.key}, "hparams": {m: {c.tune.key: tuned[m]["chosen"]} for m in c.modes}}
    per, _ = confirm_tables(bank, plan, seeds)
    return per.assign(**{k: v for k, v in c.cell.items()})


def replay_once(bank: Bank, design: ReplayDesign, seeds: Sequence[int]) -> tuple[dict, object]:
    """One study on the bank: tuning on the first tune.seeds of `seeds`, confirm pairs on the next ones. Returns
    (tuning outcome, Decision)."""
    c = design.confirm
    k = c.tune.seeds
    tuned = replay_tuning(bank, design, seeds[:k])
    frames = len(bank.run(c.modes[0], bank.values[0], seeds[0])["test_frames"])
    plan = plan_confirm(c, planning_rows(bank, design, tuned, seeds[:k]), [c.tune.key], design.epochs, frames, 0,
                        tuned)
    pairs = list(seeds[k:k + len(plan["seeds"])])
    plan["seeds"] = pairs  # the bank's seeds stand for the plan's fresh ones
    plan["trials"] = [{**t, "seed": s} for s, t in zip(np.repeat(pairs, len(c.modes)), plan["trials"])]
    per, trials = confirm_tables(bank, plan, pairs)
    return tuned, decide(per, trials, plan, report_all=False)


def tuning_error(bank: Bank, tuned: dict, modes: Sequence[str], key: str, select: str,
                 seeds: Optional[Sequence[int]] = None) -> float:
    """The tuning's realised error of the estimand on the bank: the difference at the chosen values minus the
    difference at the optima (bank means over `seeds`), the quantity the tuning's error draws model."""
    a, b = (bank.mean(m, tuned[m]["chosen"], key, seeds) for m in modes)
    return a / b - 1 - bank.truth(modes, key, select, seeds)


def replay_rates(bank: Bank, design: ReplayDesign, truth: ReplayTruth = AS_MEASURED, n: int = 200, seed: int = 0,
                 split: bool = False) -> dict:
    """n replays of the whole procedure on `truth`'s bank. It reports the share of each call, right and wrong, and
    the coverage of the IoU interval for the estimand at the level decided at and at 95%. Also the share of realised
    tuning errors inside the tuning draws' central 95% (`tuning_coverage`), and the mean trials. `split`: draws from one
    half of the seeds, the truth from the other (the pairs cut to what fits)."""
    b = truth.bank(bank, design)
    c = design.confirm
    key = c.quality[0]
    rng = np.random.default_rng(seed)
    seeds = np.array(b.seeds)
    need = c.tune.seeds + c.min_seeds
    if split:
        half = len(seeds) // 2
        design = design.with_(min_seeds=min(c.min_seeds, half - c.tune.seeds),
                              max_seeds=min(c.max_seeds, half - c.tune.seeds))
        need = c.tune.seeds + design.pairs
    elif need > len(seeds):
        raise ValueError(f"{b.source}: {len(seeds)} complete seeds, the design draws {need} per replay")
    calls, cov, cov95, tcov, trials, errs = [], [], [], [], [], []
    for _ in range(n):
        order = rng.permutation(seeds)
        draw, held = (order[:len(seeds) // 2], order[len(seeds) // 2:]) if split else (order, seeds)
        tuned, d = replay_once(b, design, [int(s) for s in draw[:need]])
        target = b.truth(c.modes, key, c.select, [int(s) for s in held])
        e = d.quality[key]
        calls.append(d.recommendation)
        cov.append(e.lo <= target <= e.hi)
        e95 = e.with_level(0.95)
        cov95.append(e95.lo <= target <= e95.hi)
        err = tuning_error(b, tuned, c.modes, key, c.select,
                           [int(s) for s in held])
        draws = np.asarray(getattr(e, "tuning", ()) or [0.0])
        lo, hi = np.quantile(draws, [0.025, 0.975])
        tcov.append(lo <= err <= hi)
        errs.append(err)
        trials.append(sum(sum(o["curve"]["runs"]) + sum(o["curve"]["diverged"]) for o in tuned.values())
                      + 2 * d.design["look"]["pairs"])
    return {"truth": truth.name, "n": n, "split": split,
            "estimand": b.truth(c.modes, key, c.select), **call_rates(calls, truth.right, truth.wrong),
            "coverage": float(np.mean(cov)), "coverage_95": float(np.mean(cov95)),
            "tuning_coverage": float(np.mean(tcov)), "tuning_rms": float(np.sqrt(np.mean(np.square(errs)))),
            "trials": float(np.mean(trials))}


def replay_table(bank: Bank, design: ReplayDesign, n: int, truths: Sequence[ReplayTruth] = TRUTHS,
                 split: bool = True) -> pd.DataFrame:
    """replay_rates per truth (and, with `split`, the bank as measured split in halves)."""
    rows = [replay_rates(bank, design, t, n, seed=i) for i, t in enumerate(truths)]
    if split:
        rows.append(replay_rates(bank, design, AS_MEASURED, n, seed=len(rows), split=True))
    return pd.DataFrame(rows)
