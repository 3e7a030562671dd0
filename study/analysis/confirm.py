"""Planning the confirm stage: the comparison the decision rests on, fixed before its first trial.

For each mode the hyperparameters come from the explore stage, chosen on validation data only (the mode's explore
trial with the best `select` metric in the primary cell). The number of seeds comes from the explore stage's
variance: the smallest number whose expected 95% interval half-width on every quality metric is at most half the
margin, within [min_seeds, max_seeds]. The plan (cell, hyperparameters, seeds, epochs, what it can detect) is
written to `<study>/confirm/plan.json` before any confirm trial starts and read back, never re-planned, on resume.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any, Optional

import numpy as np
import pandas as pd

from study.analysis.explore import cell_text
from study.analysis.load import AnalysisError, load_studies, stage_summary
from study.analysis.looks import common_share, looks_json, looks_of, plan_looks
from study.analysis.pairs import pair_rows, paired_matrices
from study.analysis.crossed import crossed_diff, detectable, halfwidth, seeds_for
from study.analysis.tuning import rms, tuning_draws
from study.base import metrics_folder
from study.base.space import MODE_KEY, Confirm, Space, trial_keys
from study.base.storage import Store, StudyError
from study.base.rows import FAILED

PLAN_FORMAT = 1
CONFIRM_SEEDS, TUNE_SEEDS, SEED_STRIDE = 1_000_000, 2_000_000, 1000


def stage_seeds(stage: int, seed: int, n: int) -> list[int]:
    """The trial seeds of the confirm stage (stage CONFIRM_SEEDS) or the deciding tuning (TUNE_SEEDS) of a study run
    with `--seed seed`: stage + SEED_STRIDE x seed + i. Never an explore seed (seed + i, i < samples), never another
    stage's, and disjoint between `--seed` values, so studies run with different --seed are independent replicates."""
    if not 0 <= seed < stage // SEED_STRIDE or n > SEED_STRIDE:
        raise ValueError(f"--seed {seed}: must be in [0, {stage // SEED_STRIDE}) for disjoint stage seeds")
    return [stage + SEED_STRIDE * seed + i for i in range(n)]


class PlanError(ValueError):
    """The explore stage gives nothing to plan the confirm stage from; one line."""


def in_cell(per_trial: pd.DataFrame, cell: dict[str, Optional[int]]) -> pd.DataFrame:
    """The rows of `per_trial` at `cell` (max_frames None is stored as 0: all frames)."""
    keep = np.ones(len(per_trial), dtype=bool)
    for k, v in cell.items():
        keep &= per_trial[k].to_numpy() == (0 if v is None else v)
    return per_trial[keep]


def chosen_hparams(per_trial: pd.DataFrame, mode: str, cell: dict, select: str, keys: list[str]) -> dict[str, Any]:
    """The tuned keys of `mode`'s explore trial with the best validation `select` (at its best validation epoch) in
    `cell`; failed trials never count. Ties go to the trial that ran more epochs. `candidates` says how many trials
    the choice was made from: a thin explore stage tunes a mode poorly, and the report says so."""
    rows = in_cell(per_trial[per_trial[MODE_KEY] == mode], cell)
    if "status" in rows:
        rows = rows[rows["status"] != FAILED]
    rows = rows[np.isfinite(rows[select].to_numpy(float))]
    if rows.empty:
        raise PlanError(f"explore stage: no {mode} trial with a finite {select} in the confirm cell {cell}: "
                        f"nothing to choose its hyperparameters from")
    best = rows.sort_values([select, "epochs_run"], ascending=False).iloc[0]
    return {**{k: float(best[k]) for k in keys}, "from_trial": str(best["trial_id"]), select: float(best[select]),
            "candidates": int(len(rows))}


def tuned_hparams(tuned: dict[str, dict], select: str) -> dict[str, dict[str, Any]]:
    """Each mode's hyperparameters from the deciding tuning's outcome (study.analysis.tuning.summary)."""
    out = {}
    for m, o in tuned.items():
        c = o["curve"]
        i = c["values"].index(o["chosen"])
        out[m] = {o["key"]: o["chosen"], "from_trial": "tuning", select: c["mean"][i], "candidates": len(c["values"])}
    return out


def plan_confirm(confirm: Confirm, per_trial: pd.DataFrame, search_keys: list[str], epochs: int, test_frames: int,
                 seed: int, tuned: Optional[dict[str, dict]] = None,
                 mode_config: Optional[dict[str, dict[str, Any]]] = None) -> dict[str, Any]:
    """The confirm plan (JSON-ready) from the explore stage's per-trial table and, when the space has a deciding
    tuning, its outcome `tuned`. The table is read at each trial's best validation epoch, as
    study.analysis.load.trial_summary gives it. With `tuned`, each mode's value of the tuned key comes from it and the
    other keys are fixed by the confirm block.
    `mode_config`: the keys the space fixes per mode (Space.mode_keys), in each trial and recorded in the plan."""
    mode_config = {m: dict((mode_config or {}).get(m, {})) for m in confirm.modes}
    if tuned is not None:
        hparams, search_keys = tuned_hparams(tuned, confirm.select), [confirm.tune.key]
    else:
        hparams = {m: chosen_hparams(per_trial, m, confirm.cell, confirm.select, search_keys) for m in confirm.modes}
    target = confirm.margin / 2
    cell_rows = in_cell(per_trial, confirm.cell)
    if "status" in cell_rows:
        cell_rows = cell_rows[cell_rows["status"] != FAILED]
    planning, needed, notes = {}, [], []
    for key in confirm.quality:
        a, b = paired_matrices(*pair_rows(cell_rows, confirm.modes), key)
        seeds = a.shape[0]
        est = crossed_diff(a, b) if seeds and a.shape[1] else None
        if est is None or not math.isfinite(est.se):
            planning[key] = {"pairs": seeds, "seeds_needed": None}
            notes.append(f"{key}: fewer than 2 explore pairs with per-frame values in the cell, so no variance to "
                         f"plan from: max_seeds ({confirm.max_seeds}) planned")
            needed.append(confirm.max_seeds)
            continue
        comps = (est.var_seed, est.var_frame, est.var_resid)
        n = seeds_for(*comps, test_frames, target)
        if n is None:
            notes.append(f"{key}: even 1000 seeds would not bring the interval to ±{100 * target:g}%: the "
                         f"frame-to-frame variance needs more test frames (eval_frames)")
        needed.append(confirm.max_seeds if n is None else n)
        planning[key] = {"pairs": seeds, "explore_frames": int(a.shape[1]), "var_seed": comps[0],
                         "var_frame": comps[1], "var_resid": comps[2], "seeds_needed": n}
    n_seeds = int(min(max(max(needed), confirm.min_seeds), confirm.max_seeds))
    if max(needed) > confirm.max_seeds:
        notes.append(f"the explore variance asks for {max(needed)} seeds; capped at max_seeds {confirm.max_seeds}")
    for key, p in planning.items():
        if p.get("var_seed") is not None:
            comps = (p["var_seed"], p["var_frame"], p["var_resid"])
            p["expected_halfwidth"] = halfwidth(*comps, n_seeds, test_frames)
            p["detectable_beyond_margin"] = detectable(*comps, n_seeds, test_frames)
    seeds = stage_seeds(CONFIRM_SEEDS, seed, n_seeds)
    common = looks_common(planning.get(confirm.quality[0], {}), tuned, confirm, n_seeds, test_frames)
    looks = plan_looks(n_seeds, confirm.looks, confirm.boundaries, common=common)
    trials = [trial_keys(confirm.cell, m, s, {k: hparams[m][k] for k in search_keys}, mode_config[m])
              for s in seeds for m in confirm.modes]
    return {"format": PLAN_FORMAT, "written": datetime.now(timezone.utc).isoformat(), **confirm.model_dump(mode="json"),
            "epochs": epochs, "test_frames": test_frames, "hparams": hparams, "mode_config": mode_config,
            "seeds": seeds, "planning": planning, "target_halfwidth": target, "notes": notes, "trials": trials,
            "tuning": tuned, "looks": looks_json(looks), "looks_common": common}


def looks_common(planned: dict, tuned: Optional[dict[str, dict]], confirm: Confirm, pairs: int, frames: int) -> float:
    """The share of the last look's error variance that every look shares (study.analysis.looks.common_share), for
    the looks' levels. It counts the tuning's error (its draws' mean square; none without a deciding tuning) and the
    test frames'. The share comes from the first quality metric's planning variance; without one it is 0 (the
    tabled, conservative levels)."""
    if planned.get("var_seed") is None:
        return 0.0
    vt = rms(tuning_draws(tuned, confirm.modes)) ** 2 if tuned else 0.0
    return common_share(vt, planned["var_seed"], planned["var_frame"], planned["var_resid"], pairs, frames)


def mode_config_text(plan: dict) -> str:
    """The keys the plan fixes per mode, in words ('' when none): '2d dist_lambda 0.32, normal_lambda 0.8'."""
    return "; ".join(f"{m} " + ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in keys.items())
                     for m, keys in (plan.get("mode_config") or {}).items() if keys)


def look_folder(k: int) -> tuple[str, ...]:
    """Where look k (0-based) keeps its records inside confirm/. The first keeps them in confirm/ itself (the fixed
    design's layout, so a one-look study reads as before). Look k + 1 keeps them in confirm/look<k + 1>/. Each look
    has its own Ray experiment, metrics and trials table."""
    return () if k == 0 else (f"look{k + 1}",)


def look_trials(plan: dict, k: int) -> list[dict]:
    """The planned trials look k (0-based) adds: those of the seeds after the previous look's, up to its own."""
    looks = looks_of(plan)
    seeds = set(plan["seeds"][looks[k - 1].pairs if k else 0: looks[k].pairs])
    return [t for t in plan["trials"] if t["seed"] in seeds]


def plan_from_records(space: Space, study: Store, seed: int, test_frames: int, tuned: Optional[dict] = None) -> dict:
    """The confirm plan from the finished explore stage's records (plan_confirm), the deciding tuning's outcome and
    the confirm cell's number of evaluated test frames (the runner counts them on the dataset); PlanError when there
    is nothing to plan from."""
    try:
        explore = load_studies([study.uri])  # where it lies: a local folder or a URI
    except AnalysisError as e:
        raise PlanError(f"confirm stage: cannot read the explore stage ({e})") from None
    per = stage_summary(explore, cell=list(space.grid), modes=tuple(space.confirm.modes))
    return plan_confirm(space.confirm, per, list(space.search), space.max_epochs, test_frames, seed, tuned,
                        {m: space.mode_keys(m) for m in space.confirm.modes})


def plan_text(plan: dict) -> str:
    """The confirm plan in a few lines, for the terminal."""
    hp = "; ".join(f"{m} lr {h['lr']:.3g}" + (f", ssim_lambda {h['ssim_lambda']:.3g}" if "ssim_lambda" in h else "")
                   for m, h in plan["hparams"].items())
    widths = ", ".join(f"{k} ±{100 * p['expected_halfwidth']:.2g}%" for k, p in plan["planning"].items()
                       if p.get("expected_halfwidth") is not None)
    fixed = mode_config_text(plan)
    lines = [f"confirm stage planned: {' vs '.join(plan['modes'])} at {cell_text(plan['cell'])}, "
             f"{len(plan['seeds'])} seeds x {plan['epochs']} epochs, {plan['test_frames']} test frames ({hp}"
             + (f"; fixed per mode: {fixed}" if fixed else "") + ")"]
    if widths:
        lines.append(f"  expected 95% half-widths: {widths} (target ±{100 * plan['target_halfwidth']:g}%)")
    if len(plan.get("looks") or []) > 1:
        lines.append("  sequential looks: " + ", ".join(f"{x['pairs']} pairs ({100 * x['level']:.4g}%)"
                                                     for x in plan["looks"]) + "; a settled look ends the stage")
    lines += [f"  note: {n}" for n in plan["notes"]]
    return "\n".join(lines)


def check_replan(store: Store, plan: dict) -> None:
    """A plan made again (--repair) must contain every confirm trial already recorded, else the stage's records
    would mix two designs."""
    rows = []
    for look in (store.child(*look_folder(k)) for k in range(len(looks_of(plan)))):
        try:
            rows += look.read_table("trials.parquet").to_pylist() if look.exists("trials.parquet") else []
        except Exception:  # a damaged trials table (the sink sets it aside next): every metrics part names its config
            names = metrics_folder.current(look.list(metrics_folder.FOLDER))
            rows += metrics_folder.read(look, names).to_pylist() if names else []
    planned = {(t[MODE_KEY], t["seed"], round(t["lr"], 12)) for t in plan["trials"]}
    ran = {(r[MODE_KEY], r["seed"], round(r["lr"], 12)) for r in rows}
    if ran - planned:
        raise StudyError(f"{store.path('plan.json')}: planned again, it does not contain {len(ran - planned)} of the "
                         f"confirm trials already run (explore records or --seed changed); the old plan is kept aside")
