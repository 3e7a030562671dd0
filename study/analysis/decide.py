"""The decision, from the confirm stage alone: equivalence and non-inferiority against a pre-specified margin.

Top to bottom: pair the confirm trials by seed (failed trials out; a pair with a failed member is dropped and
counted). Then estimate each quality metric's relative difference (challenger - reference) / reference over seeds
and test frames, and the primary cost's over seeds (study.analysis.crossed.crossed_diff). Then apply the rule:

1. fewer than MIN_PAIRS pairs, or a quality estimate missing          -> inconclusive
2. some quality interval wholly below -margin (at 1 - 5%/k for k
   quality metrics: worse on any one of them is a union)              -> reference (challenger worse beyond it)
3. some quality interval reaches below -margin: the reference
   significantly better on every quality metric (as in 7) and the
   challenger not cheaper beyond cost_margin                          -> reference (a deficit that may pass the
                                                                          margin never weakens the call a smaller
                                                                          one gets)
   otherwise                                                          -> inconclusive, with the pairs (or tuning
                                                                          seeds and pairs) that would resolve it
4. every quality interval above -margin (non-inferior) and the primary
   cost's interval wholly below -cost_margin                          -> challenger (as good, and cheaper)
5. the challenger dearer beyond cost_margin / (1 - cost_margin) (the
   reference cheaper): 2 to 4 seen from the reference, at the margin
   seen from it, margin / (1 - margin): some interval wholly above it
   (per-metric level)                                                 -> challenger (the reference worse beyond it)
   every interval below it                                            -> reference (as good, and cheaper)
   otherwise                                                          -> inconclusive
6. non-inferior, neither cheaper: challenger significantly better on
   every quality metric                                               -> challenger
7.                            reference significantly better on every
   quality metric                                                     -> reference
8. otherwise                                                          -> either (equivalent within the margin); the
                                                                          reason names a metric where one is
                                                                          significantly better

A quality metric where lower is better (an error: posesplat.metrics' direction) enters the rule as its relative
reduction (reference - challenger) / reference. So + is better on every quality metric and a growing error is a
deficit. `Decision.quality` holds these, `Decision.measures` the plain differences.

Intervals are 95%; "significantly better" in 6 to 8 uses 97.5% intervals, so that the two directions together
claim a difference that is not there at most 2.5% of the time. With sequential looks (study.analysis.looks: the plan names
them) an interim look applies the same rule at its stricter level to the first pairs, and decides when its verdict
is settled; otherwise the last look decides. Simulated error rates: docs/analysis.md.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd

from posesplat.metrics import validation_twin
from study.analysis.load import COST, FRAME_VALUES, HIGHER, QUALITY, SHORT
from study.analysis.looks import LEVEL, MIN_PAIRS, Look, looks_json, looks_of, mirrored, settled, superiority
from study.analysis.pairs import pair_rows, paired_matrices
from study.analysis.crossed import Crossed, crossed_diff, crossed_se, with_tuning
from study.analysis.tuning import has_curve, rms, seeds_per_value, stand_ins, tuning_draws, with_seeds
from study.base.rows import ENDED, FAILED, SCORED
from study.base.space import MODE_KEY, Confirm

SUPERIORITY_LEVEL = superiority(LEVEL)
EITHER, INCONCLUSIVE = "either", "inconclusive"
CALLS = ("2d", "3d", EITHER, INCONCLUSIVE)  # the calls on the default pair, as simulations count them


@dataclass
class Decision:
    """The recommendation and everything it rests on (decision.json is this, as JSON)."""

    recommendation: str  # a mode, EITHER or INCONCLUSIVE
    reason: str
    modes: list[str]  # [challenger, reference]
    quality: dict[str, Crossed]  # the decision's quality metrics: relative difference, 95%
    cost: Optional[Crossed]  # the primary cost: relative difference, 95%
    measures: dict[str, Crossed]  # every reported measure (quality, costs, sizes): relative difference
    means: dict[str, dict[str, float]]  # measure -> mode -> mean over the pairs
    n_pairs: int
    dropped_pairs: int  # planned seeds without a usable pair (a failed or missing member)
    failures: dict[str, dict[str, int]]  # mode -> {"failed": k, "trials": n}
    seeds_to_resolve: Optional[int] = None  # total seeds an inconclusive answer would need (None: unknown)
    design: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        def est(e: Optional[Crossed]) -> Optional[dict]:
            if e is None:
                return None
            d = asdict(e)
            d.pop("tuning", None)  # the tuning's error draws: `design.tuning_error` summarises them
            return {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in d.items()}

        return {"recommendation": self.recommendation, "reason": self.reason, "modes": self.modes,
                "design": self.design, "n_pairs": self.n_pairs, "dropped_pairs": self.dropped_pairs,
                "failures": self.failures, "seeds_to_resolve": self.seeds_to_resolve,
                "quality": {k: est(e) for k, e in self.quality.items()}, "cost": est(self.cost),
                "measures": {k: est(e) for k, e in self.measures.items()},
                "means": {k: {m: (v if math.isfinite(v) else None) for m, v in d.items()} for k, d in self.means.items()}}


ESTIMAND = ("each mode's expected held-out test score at its own optimum of the tuned key (chosen on validation "
            "by the deciding tuning at the confirm cell), at the space's training budget; the relative difference "
            "of the two")
ESTIMAND_FIXED = ("each mode's expected held-out test score at the hyperparameters the explore stage chose (not "
                  "necessarily its optimum), at the space's training budget; the relative difference of the two")


def unbracketed(plan: dict) -> list[str]:
    """The reasons a verdict cannot be given because a mode's tuned value sits at an edge of its range."""
    return [o["reason"] for o in (plan.get("tuning") or {}).values() if o.get("reason")]


def usable(per_trial: pd.DataFrame, trials: pd.DataFrame) -> pd.DataFrame:
    """Confirm trials that finished: failed (or unfinished) trials are excluded from every estimate."""
    if not len(per_trial):
        return per_trial
    if len(trials) and "status" in trials:
        status = dict(zip(trials["trial_id"].astype(str), trials["status"]))
        keep = [status.get(t) in SCORED for t in per_trial["trial_id"]]
        return per_trial[keep]
    return per_trial


def failures(trials: pd.DataFrame, plan: dict) -> dict[str, dict[str, int]]:
    """Per mode: failed trials and trials planned."""
    planned = pd.Series([t[MODE_KEY] for t in plan["trials"]]).value_counts()
    failed = (trials[trials["status"] == FAILED][MODE_KEY].value_counts()
              if len(trials) and "status" in trials and MODE_KEY in trials else pd.Series(dtype=int))
    return {m: {"failed": int(failed.get(m, 0)), "trials": int(planned.get(m, 0))} for m in plan["modes"]}


def measure(a: pd.DataFrame, b: pd.DataFrame, key: str, modes: list[str], level: float = LEVEL
            ) -> tuple[Crossed, dict[str, float]]:
    """Relative difference of `key` for aligned pair rows (over seeds and test frames where per-frame values exist,
    over seeds otherwise), its `level` interval, and each mode's mean over the same pairs."""
    x, y = paired_matrices(a, b, key) if key in FRAME_VALUES else (np.empty((0, 0)),) * 2
    if not x.size:
        x, y = a[key].to_numpy(float)[:, None], b[key].to_numpy(float)[:, None]
    keep = np.isfinite(x).all(1) & np.isfinite(y).all(1) if x.size else np.zeros(0, dtype=bool)
    means = {m: float(v[keep].mean()) if keep.any() else float("nan") for m, v in zip(modes, (x, y))}
    return crossed_diff(x, y, level=level), means


def clears(e: Crossed, margin: float, pairs: int, draws: np.ndarray, level: float = LEVEL) -> bool:
    """Whether e's `level` interval, at `pairs` pairs with its present estimate and variance components and with the
    tuning's error `draws` (none: a t interval), lies wholly on one side of -margin."""
    se, df = crossed_se(e.var_seed, e.var_frame, e.var_resid, pairs, e.n_frames)
    if not math.isfinite(se):
        return False
    at = Crossed(e.mean, e.lo, e.hi, pairs, se, df, e.var_seed, e.var_frame, e.var_resid, e.n_frames, level)
    iv = with_tuning(at.with_level(level), draws)
    return iv.lo > -margin or iv.hi < -margin


def fewest_pairs(e: Crossed, margin: float, draws: np.ndarray, least: int, most: int, level: float = LEVEL
                 ) -> Optional[int]:
    """Fewest pairs in [least, most] at which e's interval clears -margin (bisection), None when `most` do not."""
    if not clears(e, margin, most, draws, level):
        return None
    lo, hi = least - 1, most
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if clears(e, margin, mid, draws, level) else (mid, hi)
    return hi


def pairs_needed(quality: dict[str, Crossed], margin: float, draws: Optional[dict[str, np.ndarray]] = None,
                 least: int = MIN_PAIRS, most: int = 1000, level: float = LEVEL) -> Optional[int]:
    """Fewest pairs (at least `least`) that would settle the rule at the present estimates and variances. The
    decision's own intervals are at `level` (the look that decides: a study with looks decides its last at a stricter
    level than 95%). The tuning's error is `draws` per metric (default each estimate's own). Where an estimate lies
    below -margin, that metric's interval must lie wholly below it, at the rule's level for "worse on some metric"
    (the easiest such metric). Else every interval that reaches -margin must lie wholly above it. None when `most` do
    not (the tuning's error, which pairs do not lower, or the frames' alone reaches the margin)."""
    least = max(least, MIN_PAIRS)

    def fewest(k: str, at: float) -> Optional[int]:
        e = quality[k]
        d = np.asarray(getattr(e, "tuning", ()) if draws is None else draws[k], float)
        return fewest_pairs(e, margin, d, least, most, at) if math.isfinite(e.se) else None

    below = [k for k, e in quality.items() if e.mean < -margin]
    if below:
        found = [n for n in (fewest(k, 1 - (1 - level) / len(quality)) for k in below) if n is not None]
        return min(found) if found else None
    found = [fewest(k, level) for k, e in quality.items() if e.lo <= -margin <= e.hi]
    return None if None in found else max(found, default=least)


def selected(plan: dict) -> str:
    """The validation metric the plan's tuning selected on (the Confirm block's default where a hand-made plan
    leaves it out)."""
    return plan.get("select") or Confirm.model_fields["select"].default


def own_curve(tuned: dict[str, dict], key: str, select: str) -> Optional[str]:
    """The validation metric whose tuning curve gives quality metric `key` its own tuning error. It is its
    validation twin where every mode's tuning recorded it. None means the tuned metric's error stands in: as for a
    study written before the tuning recorded other metrics, or a metric validation does not measure."""
    twin = validation_twin(key)
    return twin if twin != select and has_curve(tuned, twin) else None


def metric_draws(tuned: dict[str, dict], modes: Sequence[str], quality: Sequence[str], select: str,
                 concave: Optional[dict[str, bool]] = None) -> dict[str, np.ndarray]:
    """The tuning's error draws of each quality metric: the loss of that metric when the selection on `select` is
    re-run (tuning.tuning_draws with its own curve), the tuned metric's own where it has none. {key: [draws]}."""
    out = {}
    for k in quality:
        other = own_curve(tuned, k, select)
        out[k] = tuning_draws(tuned, modes, concave=concave, metric=other, maximize=HIGHER[k])
    return out


def tuning_error_json(draws: dict[str, np.ndarray], tuned: dict[str, dict], quality: Sequence[str], select: str
                      ) -> dict:
    """decision.json's summary of the tuning's error: the first quality metric's rms and mean (as before), and per
    metric its rms, mean and whether it comes from its own validation curve."""
    first = draws[quality[0]]
    return {"rms": rms(first), "mean": float(np.mean(first)),
            "per_metric": {k: {"rms": rms(draws[k]), "mean": float(np.mean(draws[k])),
                               "own_curve": own_curve(tuned, k, select) is not None or validation_twin(k) == select}
                           for k in quality}}


NO_PAIRS = " — no feasible number of pairs resolves it"
MOST_TUNING_SEEDS = 48  # the most tuning seeds per value a resolving design is looked for at
CHECKED_TUNING_FACTOR = 2  # tuning seeds per value, as a multiple of the study's, up to which the simulation
# checked the tuning's error model (docs/analysis.md, "Where the tuning's error model holds"): past it, the
# intervals under-cover peaked curves


def tuning_seeds_needed(quality: dict[str, Crossed], margin: float, tuned: dict[str, dict], modes: Sequence[str],
                        pairs: int, select: str, most: int = MOST_TUNING_SEEDS, level: float = LEVEL
                        ) -> Optional[tuple[int, int]]:
    """(tuning seeds per value, pairs) that would settle the rule at the present estimates and variances. This is
    for when the tuning's error is what keeps an interval across the margin. It assumes the same tuning curves with
    more seeds per value (study.analysis.tuning.with_seeds), whose selection error is smaller, and at least `pairs`
    pairs. Of the candidates up to `most` seeds per value, the one with the fewest trials (tuning and confirm). None
    when none does."""
    now, values = seeds_per_value(tuned), sum(len(tuned[m]["curve"]["values"]) for m in modes)
    shape = stand_ins(tuned, modes)  # the curves' shapes as measured, whatever the projected seeds
    found = []
    for t in sorted({math.ceil(now * f) for f in (1.5, 2, 3, 4, 6, 8, 12, 16)}):
        if t > most:
            break
        draws = metric_draws(with_seeds(tuned, t), modes, list(quality), select, concave=shape)
        need = pairs_needed(quality, margin, draws, least=pairs, level=level)
        if need is not None:
            found.append((values * t + 2 * need, t, need))
    return min(found)[1:] if found else None


def resolve_hint(d: Decision, plan: dict) -> Decision:
    """An inconclusive `d` (its tuning bracketed) with what would resolve it in its reason: more pairs
    (`seeds_to_resolve`). Where no number of pairs would, because the tuning's error keeps an interval across the
    margin: more tuning seeds per value and pairs (`design.tuning_seeds_to_resolve`; `checked`: within the
    CHECKED_TUNING_FACTOR times today's seeds the simulation checked, else the reason warns)."""
    if d.recommendation != INCONCLUSIVE or unbracketed(plan):
        return d
    if d.n_pairs < MIN_PAIRS:
        d.reason += f" — run the study again with at least {max(MIN_PAIRS, plan['min_seeds'])} seeds"
        return d
    level = d.design["look"]["level"]  # the look that decides: the hint sizes a design at its level
    d.seeds_to_resolve = pairs_needed(d.quality, plan["margin"], level=level)
    if d.seeds_to_resolve is not None:
        d.reason += (f" — about {d.seeds_to_resolve} seeds (pairs) would resolve it, "
                     f"{max(d.seeds_to_resolve - d.n_pairs, 1)} more than now")
        return d
    if not plan.get("tuning"):
        d.reason += " — the difference sits on the margin: no feasible number of seeds resolves it"
        return d
    need = tuning_seeds_needed(d.quality, plan["margin"], plan["tuning"], d.modes, d.n_pairs, selected(plan),
                               level=level)
    now = seeds_per_value(plan["tuning"])
    checked = need is not None and need[0] <= CHECKED_TUNING_FACTOR * now
    d.design["tuning_seeds_to_resolve"] = None if need is None else {"seeds_per_value": need[0], "pairs": need[1],
                                                                     "checked": checked}
    what = (f"about {need[0]} tuning seeds per value (now {now}) with about {need[1]} pairs would resolve it"
            if need else f"no number of tuning seeds up to {MOST_TUNING_SEEDS} per value does: the estimate sits too "
            "near the margin")
    if need and not checked:
        what += (f", though past {CHECKED_TUNING_FACTOR * now} per value the tuning's error model under-covers peaked "
                 "curves in simulation (docs/analysis.md)")
    d.reason += (f"{NO_PAIRS}: the tuning's error (root mean square {100 * d.design['tuning_error']['rms']:.2g}%), "
                 f"which pairs do not lower, keeps the interval across the margin; {what}")
    return d


def significant(strict: dict[str, Crossed], c: str, r: str) -> str:
    """Which mode is significantly better on which quality metric (intervals at the superiority level), in words;
    '' when neither is on any."""
    parts = []
    for mode, ks in ((c, [k for k, e in strict.items() if e.lo > 0]), (r, [k for k, e in strict.items() if e.hi < 0])):
        if ks:
            parts.append(f"{mode} is significantly better on {', '.join(SHORT.get(k, k) for k in ks)}")
    return "; ".join(parts)


def rule(quality: dict[str, Crossed], cost: Optional[Crossed], margin: float, cost_margin: float,
         modes: list[str], level: float = LEVEL) -> tuple[str, str]:
    """(recommendation, reason) by the rule in this module's docstring, its intervals at `level` (the estimates'
    own: an interim look's is stricter)."""
    c, r = modes
    m = f"{100 * margin:g}%"
    shown = ", ".join(f"{SHORT.get(k, k)} {e.pct()}" for k, e in quality.items())
    n = min((e.n for e in quality.values()), default=0)
    if not quality or n < MIN_PAIRS or not all(e.has_ci for e in quality.values()):
        return INCONCLUSIVE, f"only {n} complete pair(s) of {c} and {r} (at least {MIN_PAIRS} are needed)"
    per_metric = 1 - (1 - level) / len(quality)  # Bonferroni: "worse on some metric" is a union over the metrics
    worse = [k for k, e in quality.items() if e.with_level(per_metric).hi < -margin]
    if worse:
        return r, f"{c} is worse than {r} by more than the {m} margin ({shown})"
    priced = cost is not None and cost.has_ci
    strict = {k: e.with_level(superiority(level)) for k, e in quality.items()}
    reference_better = all(e.hi < 0 for e in strict.values())  # significantly, on every quality metric (3 and 7)
    if any(e.lo <= -margin for e in quality.values()):
        if reference_better and not (priced and cost.hi < -cost_margin):
            return r, (f"{r} is significantly better on every quality metric ({c} vs {r}: {shown}) and {c} is not "
                       f"cheaper on the primary cost by more than {100 * cost_margin:g}% "
                       f"({cost.pct() if cost else 'n/a'}); {c} may be worse by more than the {m} margin")
        return INCONCLUSIVE, f"the interval of {c} vs {r} reaches below the -{m} margin ({shown})"
    if priced and cost.hi < -cost_margin:
        return c, (f"{c} is within the {m} margin of {r} or better ({shown}) and cheaper on the primary cost "
                   f"({cost.pct()}, more than the {100 * cost_margin:g}% that counts)")
    if priced and cost.lo > mirrored(cost_margin):  # the reference is cheaper: rules 2, 3 and 4 seen from it
        dearer = f"{c} costs {cost.pct()} more, beyond the {100 * cost_margin:g}% that counts"
        if any(e.with_level(per_metric).lo > mirrored(margin) for e in quality.values()):
            return c, f"{r} is worse than {c} by more than the {m} margin ({c} vs {r}: {shown}), though cheaper ({dearer})"
        if all(e.hi < mirrored(margin) for e in quality.values()):
            return r, (f"{r} is within the {m} margin of {c} or better ({c} vs {r}: {shown}) and cheaper on the "
                       f"primary cost ({dearer})")
        return INCONCLUSIVE, (f"{r} is cheaper ({dearer}), but the interval of {c} vs {r} reaches above the margin "
                              f"seen from {r} ({shown}): {c} may be better by more than {m}")
    if all(e.lo > 0 for e in strict.values()):
        return c, f"{c} is significantly better than {r} on every quality metric ({shown}), though not cheaper"
    if reference_better:
        return r, (f"{c} is within the {m} margin ({shown}) but not cheaper, and {r} is significantly better on "
                   f"every quality metric")
    costs = (f"neither is cheaper on the primary cost by more than {100 * cost_margin:g}% "
             f"({c} vs {r}: {cost.pct() if cost else 'n/a'})")
    better = significant(strict, c, r)
    better = f"{better}, not on every quality metric" if better else "neither is significantly better on any"
    if all(e.hi < margin for e in quality.values()):
        return EITHER, f"equivalent: {c} is within ±{m} of {r} on every quality metric ({shown}), {costs}, and {better}"
    return EITHER, (f"{c} is no worse than {r} beyond the {m} margin ({shown}) and may be better on some metric by "
                    f"more, {costs}, and {better}")


def ended_seeds(trials: pd.DataFrame, plan: dict) -> set[int]:
    """The planned seeds whose trials of both modes have ended (completed, stopped or failed): a look can be taken
    once all of its seeds have."""
    if not len(trials) or not {"status", "seed", MODE_KEY} <= set(trials):
        return set()
    done = trials[trials["status"].isin(ENDED) & trials[MODE_KEY].isin(plan["modes"])]
    per_seed = done.groupby("seed")[MODE_KEY].nunique()
    return {int(s) for s, n in per_seed.items() if n == len(plan["modes"])}


def decide(per_trial: pd.DataFrame, trials: pd.DataFrame, plan: dict, *, report_all: bool = True) -> Decision:
    """The decision from the confirm stage's per-trial table (each trial at its last evaluated epoch), its trials
    table and the plan written before it ran; `report_all=False` estimates only the measures that decide and skips
    what would resolve an inconclusive verdict (resolve_hint: the simulation has no use for it).

    With looks, the first interim look whose seeds have all ended and whose verdict is settled decides (the stage
    stopped there); else the last look, with whatever pairs there are (a running study's report is provisional)."""
    looks = looks_of(plan)
    ended = ended_seeds(trials, plan)
    for k, look in enumerate(looks[:-1]):
        seeds = plan["seeds"][: look.pairs]
        if not set(seeds) <= ended:
            break
        d = decide_pairs(per_trial, trials, plan, seeds, look.level, report_all)
        if settled(d.quality, d.cost, plan["margin"], plan["cost_margin"], look.level):
            return at_look(d, looks, k, stopped=True)
    d = at_look(decide_pairs(per_trial, trials, plan, plan["seeds"], looks[-1].level, report_all), looks,
                len(looks) - 1, stopped=False)
    return resolve_hint(d, plan) if report_all else d


def at_look(d: Decision, looks: list[Look], k: int, stopped: bool) -> Decision:
    """`d` with the look it was taken at in its design (and its reason, when the stage stopped early)."""
    d.design["looks"] = looks_json(looks)
    d.design["look"] = {"index": k + 1, "of": len(looks), "pairs": looks[k].pairs, "level": looks[k].level,
                        "stopped_early": stopped}
    if stopped:
        d.reason += (f" — settled at look {k + 1} of {len(looks)} ({looks[k].pairs} pairs, "
                     f"{100 * looks[k].level:g}% intervals): the remaining pairs were not run")
    return d


def decide_pairs(per_trial: pd.DataFrame, trials: pd.DataFrame, plan: dict, seeds: list[int], level: float,
                 report_all: bool = True) -> Decision:
    """The rule on the planned `seeds` only, its intervals at `level`."""
    modes = list(plan["modes"])
    rows = usable(per_trial, trials)
    rows = rows[rows[MODE_KEY].isin(modes) & rows["seed"].isin(seeds)] if len(rows) else rows
    keys = [k for k, _, _ in QUALITY + COST if k in rows and np.isfinite(rows[k].to_numpy(float)).any()]
    keys = list(dict.fromkeys([*plan["quality"], plan["cost"], *(keys if report_all else [])]))
    measures, means = {}, {}
    a, b = pair_rows(rows, modes) if len(rows) else (rows, rows)
    for key in keys:
        if key in rows:
            measures[key], means[key] = measure(a, b, key, modes, level)
    draws = metric_draws(plan["tuning"], modes, plan["quality"], selected(plan)) if plan.get("tuning") else {}
    # an error metric decides by its reduction (turned); then the estimand is the difference at the optima, so the
    # tuning's error (a loss of the tuned score, on the higher-is-better scale) is part of every quality interval
    quality = {k: with_tuning(measures[k] if HIGHER[k] else measures[k].turned(), draws.get(k, np.zeros(0)))
               for k in plan["quality"]
               if k in measures}
    measures.update({k: e for k, e in quality.items() if HIGHER[k]})  # the table shows an error metric unturned
    cost = measures.get(plan["cost"])
    n_pairs = min((e.n for e in quality.values()), default=0)
    rec, reason = rule(quality, cost, plan["margin"], plan["cost_margin"], modes, level)
    edges = unbracketed(plan)
    if edges:  # the estimand is each mode at its own optimum: an optimum at an edge of the range is not one
        rec, reason = INCONCLUSIVE, "; ".join(edges) + f" (at the chosen values alone: {reason})"
    design = {k: plan.get(k) for k in ("cell", "modes", "margin", "quality", "cost", "cost_margin", "epochs",
                                        "test_frames", "seeds", "hparams", "mode_config", "min_seeds", "max_seeds",
                                        "tuning")}
    design["estimand"] = ESTIMAND if plan.get("tuning") else ESTIMAND_FIXED
    design["tuning_error"] = tuning_error_json(draws, plan["tuning"], plan["quality"], selected(plan)) if draws else None
    return Decision(rec, reason, modes, quality, cost, measures, means, n_pairs,
                    len(seeds) - n_pairs, failures(trials, plan), None, design)


def call_rates(calls: Sequence[str], right: Sequence[str], wrong: Sequence[str]) -> dict[str, float]:
    """The share of each call (2d, 3d, either, inconclusive) among `calls`, and of the `right` and `wrong` ones."""
    c = pd.Series(list(calls), dtype=object).value_counts(normalize=True)
    return {**{k: float(c.get(k, 0.0)) for k in CALLS}, "right": float(sum(c.get(k, 0.0) for k in right)),
            "wrong": float(sum(c.get(k, 0.0) for k in wrong))}
