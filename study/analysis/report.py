"""The report: decision.md, decision.json, CSV tables, figures and a self-contained report.html.

The decision comes from the confirm stage (study.analysis.decide); the explore stage's tables follow, marked
exploratory. Everything is built in a staging folder beside the report and swapped in whole, so a report is never half
written."""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
import pyarrow.fs as pafs

from posesplat.io import staging_folder, swap_folder
from posesplat.metrics import GEOMETRY_NAMES
from study.analysis import plots
from study.analysis.confirm import look_folder, mode_config_text
from study.analysis.decide import ESTIMAND_FIXED, INCONCLUSIVE, LEVEL, SUPERIORITY_LEVEL, Decision, decide
from study.analysis.explore import breakdown, cell_dependence, cell_text
from study.analysis.load import (DEFAULT_CELL, LABELS, SHORT, AnalysisError, Tables, cell_keys, compared_modes,
                                 load_studies, locate, stage_summary, trial_columns)
from study.analysis.looks import looks_of
from study.analysis.page import decision_markdown, html_page, sections
from study.base.records import read_confirm_plan
from study.base.storage import Store, StudyError, pid_alive
from study.base.space import MODE_KEY
from study.base.rows import ENDED, FAILED, PENDING, RUNNING, STATUSES


@dataclass
class Stages:
    """What was read: the explore stage, and the confirm stage with its plan when the study has one."""

    explore: Optional[Tables]
    explore_trials: pd.DataFrame  # per trial, at its best validation epoch
    confirm: Optional[Tables]
    confirm_trials: pd.DataFrame  # per trial, at its last evaluated epoch (the scored one)
    plan: Optional[dict]
    cell: list[str]  # the cell keys: the space's grid keys
    modes: tuple[str, str]  # (challenger, reference): the confirm plan's, else the space's
    folder: Optional[Path] = None  # the local study folder holding the confirm stage (renders read checkpoints there)


REPLAN_FROM_ANALYSIS = ("the study's command (python -m study.run ...) with --repair plans the confirm stage again "
                        "(the damaged plan kept aside, not deleted)")


def read_plan(study: Store) -> Optional[dict]:
    """`<study>/confirm/plan.json` (study.base.records.read_confirm_plan), or None when the study has no confirm stage
    (yet); a damaged one is an AnalysisError naming it."""
    try:
        return read_confirm_plan(study.child("confirm"), repair=False, recovery=REPLAN_FROM_ANALYSIS)
    except StudyError as e:
        raise AnalysisError(str(e)) from None


def _folder(path: str | Path) -> Optional[Store]:
    """The input as a folder (a study directory, local or a URI), or None when it is a file or does not exist."""
    store, kind = locate(path)
    return store if kind == pafs.FileType.Directory else None


def read_stages(paths: list[str | Path], threshold: Optional[float] = None) -> Stages:
    """Read the inputs: every input's explore stage (combined), and the confirm stage of the one input that has it."""
    folders = {str(p): _folder(p) for p in paths}
    with_confirm = [s for s in folders.values() if s is not None and s.exists("confirm", "plan.json")]
    if len(with_confirm) > 1:
        raise AnalysisError(f"{', '.join(s.uri for s in with_confirm)}: several studies with a confirm stage; a "
                            f"decision rests on one confirm stage: analyse them one at a time")
    plan = read_plan(with_confirm[0]) if with_confirm else None
    explore, per = None, pd.DataFrame()
    cell = list(plan["cell"]) if plan else list(DEFAULT_CELL)
    modes = tuple(plan["modes"]) if plan else None  # without a plan there is an explore stage, which names them
    has_explore = [p for p, s in folders.items() if not (s is not None and s in with_confirm
                                                         and not s.exists("metrics"))]
    if has_explore:  # a study whose explore records are gone (or were never copied) still has its decision
        explore = load_studies(has_explore)
        cell, modes = cell_keys(explore), modes or compared_modes(explore)
        per = stage_summary(explore, threshold, cell=cell, modes=modes)
    confirm, cper = None, pd.DataFrame()
    if plan is not None:
        cdir = with_confirm[0].child("confirm")
        looks = [cdir.child(*look_folder(k)) for k in range(len(looks_of(plan)))]  # each look's records
        found = [s.uri for s in looks if s.list("metrics", "*.parquet")]
        if found:
            confirm = load_studies(found, grid=plan["cell"])
            cper = stage_summary(confirm, threshold, last=True, cell=list(plan["cell"]), modes=modes)
    folder = Path(with_confirm[0].root) if with_confirm and with_confirm[0].local else None
    return Stages(explore, per, confirm, cper, plan, cell, modes, folder)


def no_decision(reason: str, modes: list[str]) -> Decision:
    return Decision(INCONCLUSIVE, reason, modes, {}, None, {}, {}, 0, 0, {})


def with_margin(stages: Stages, margin: Optional[float]) -> tuple[Stages, list[str]]:
    """The stages with `margin` in place of the confirm plan's, and the note that says the test is no longer the
    planned one; as they are without a margin, a plan, or a change."""
    if margin is None or stages.plan is None or math.isclose(margin, stages.plan["margin"]):
        return stages, []
    return replace(stages, plan={**stages.plan, "margin": margin}), [
        f"--margin {margin:g} replaces the pre-specified margin {stages.plan['margin']:g} after the fact: this is no "
        f"longer the planned test."]


def decision_of(stages: Stages) -> tuple[Decision, list[str]]:
    """The confirm stage's decision (or why there is none) and notes on it."""
    notes: list[str] = []
    plan = stages.plan
    if plan is None:
        return no_decision("the study has no confirm stage, so nothing is decided: the explore stage's tables are "
                           "exploratory (add a `confirm` block to the space, docs/search_spaces.md)",
                           list(stages.modes)), notes
    if stages.confirm is None or stages.confirm_trials.empty:
        return no_decision("the confirm stage has not reported an evaluated trial yet (still running or "
                           "interrupted: run the study command again)", plan["modes"]), notes
    d = decide(stages.confirm_trials, stages.confirm.trials, plan)
    done = stages.confirm.trials["status"].isin(ENDED).sum() \
        if len(stages.confirm.trials) and "status" in stages.confirm.trials else 0
    if done < len(plan["trials"]):
        notes.append(f"The confirm stage has finished {done} of its {len(plan['trials'])} planned trials: the "
                     f"decision uses the pairs finished so far (run the study command again to complete it).")
    return d, notes


def fmt_mean(v: float, key: str) -> str:
    return "n/a" if not math.isfinite(v) else f"{v:.4g}"


def level_of(d: Decision) -> float:
    """The level of the decision's intervals: 95%, or the level of the look it was taken at (study.analysis.looks)."""
    return float((d.design.get("look") or {}).get("level", LEVEL))


def confirm_table(d: Decision, plan: dict) -> pd.DataFrame:
    """One row per measure: each mode's mean over the pairs, the relative difference [its interval at the decision's
    level: 95% without looks], what it decides."""
    c, r = d.modes
    head = f"{c} vs {r} ({100 * level_of(d):.3g}%)"
    rows = []
    for key, e in d.measures.items():
        role = ("decides (quality)" if key in plan["quality"] else "decides (primary cost)" if key == plan["cost"]
                else "reported")
        vals = d.means.get(key, {})
        if role == "reported" and len({round(v, 12) for v in vals.values() if math.isfinite(v)}) <= 1 \
                and not (e.has_ci and e.lo != e.hi):
            continue  # the same value in both modes carries no information
        rows.append({"measure": LABELS.get(key, key), "key": key, c: fmt_mean(vals.get(c, math.nan), key),
                     r: fmt_mean(vals.get(r, math.nan), key), head: e.pct(), "pairs": e.n,
                     "test frames": e.n_frames if e.n_frames > 1 else "-", "role": role})
    for m, f in d.failures.items():
        rows.append({"measure": f"failed trials of {m}", "key": f"failed_{m}", c: "", r: "",
                     head: f"{f['failed']} of {f['trials']}" + (
                         f" ({100 * f['failed'] / f['trials']:.0f}%)" if f["trials"] else ""),
                     "pairs": "", "test frames": "", "role": "excluded from the estimates"})
    return pd.DataFrame(rows)


def design_lines(d: Decision, plan: Optional[dict]) -> list[str]:
    """The design the decision rests on, in words (Markdown lines)."""
    if plan is None:
        return []
    c, r = plan["modes"]
    if plan.get("tuning"):
        how = "the deciding tuning at this cell on validation data (" + "; ".join(
            tuning_text(m, o) for m, o in plan["tuning"].items()) + ")"
    else:
        how = "the explore stage on validation data (" + explore_choice_text(plan) + ")"
    q = " and ".join(SHORT.get(k, k) for k in plan["quality"])
    te = d.design.get("tuning_error")
    if te:
        errors = (f"The quality intervals include the deciding tuning's error (a re-run of the tuning would move the "
                  f"difference by {100 * te['rms']:.2g}% root mean square), so they are about the difference at each "
                  f"mode's optimum. ")
    elif not plan.get("tuning"):
        errors = "The intervals are conditional on the chosen hyperparameters: the tuning's own error is not in them. "
    else:
        errors = ""
    lines = [
        f"Estimand: {d.design.get('estimand') or ESTIMAND_FIXED}.",
        "",
        f"Design (pre-specified in `confirm/plan.json`, written {plan['written'][:19]} UTC before the confirm trials "
        f"started): {c} vs {r} at {cell_text(plan['cell'])}; {d.n_pairs} pairs of {len(plan['seeds'])} planned "
        f"seeds ({d.dropped_pairs} dropped: a failed or missing member), paired by seed (same initialisation seed "
        f"and frame order, identical train/valid/test frames and held-out views); {plan['epochs']} epochs, no early "
        f"stopping, scored at the last epoch on {plan['test_frames']} test frames; hyperparameters fixed from "
        f"{how}" + (f"; fixed per mode by the space: {mode_config_text(plan)}" if mode_config_text(plan) else "")
        + ".",
        "",
        f"Rule: relative difference ({c} - {r}) / {r} of {q} against a {100 * plan['margin']:g}% margin "
        f"(non-inferiority, equivalence); primary cost {SHORT.get(plan['cost'], plan['cost'])}, where "
        f"{c} counts as cheaper when its interval lies below -{100 * plan['cost_margin']:g}%. {int(100 * LEVEL)}% "
        f"t intervals over seeds and test frames (two-way random effects, Satterthwaite df); claims of superiority "
        f"within the margin use {100 * SUPERIORITY_LEVEL:g}% intervals. Full-image PSNR and the costs are reported, "
        f"not decided on. {errors}See docs/analysis.md.",
    ]
    look = d.design.get("look")
    if look and look["of"] > 1:
        at = ", ".join(f"look {i + 1} at {x['pairs']} pairs ({100 * x['level']:.4g}%)"
                       for i, x in enumerate(d.design["looks"]))
        lines += ["", f"Sequential looks, named in the plan (O'Brien-Fleming boundaries: the rule at each look with "
                      f"its intervals at the level given): {at}. " + (
                          f"**The stage stopped at look {look['index']} of {look['of']}**: its verdict was settled, so "
                          f"the remaining pairs were not run; the intervals shown are that look's."
                          if look["stopped_early"] else f"No interim look settled it: the last look ({look['pairs']} "
                                                        f"planned pairs) decides.")]
    plans = [f"{SHORT.get(k, k)}: expected ±{100 * p['expected_halfwidth']:.2g}% at "
             f"{len(plan['seeds'])} seeds, a true deficit beyond the margin by {100 * p['detectable_beyond_margin']:.2g}"
             f" points is called with 80% power (explore variance from {p['pairs']} pairs)"
             for k, p in plan["planning"].items() if p.get("expected_halfwidth") is not None]
    if plans or plan.get("notes"):
        lines += ["", "Plan from the explore stage's variance (an upper bound: explore trials differ in their "
                      "hyperparameters): " + "; ".join(plans + plan.get("notes", [])) + "."]
    return lines


def explore_choice_text(plan: dict) -> str:
    """Each mode's hyperparameters as the explore stage chose them, in words."""
    return "; ".join(f"{m}: " + ", ".join(f"{k} {v:.3g}" for k, v in h.items() if isinstance(v, float)
                                          and k in plan["trials"][0])
                     + f" (explore trial {h['from_trial']}, best of {h.get('candidates', '?')} in the cell)"
                     for m, h in plan["hparams"].items())


def tuning_text(mode: str, o: dict) -> str:
    """One mode's deciding tuning in words."""
    c = o["curve"]
    where = ("bracketed: a value on each side scored worse" if o["edge"] == "bracketed"
             else f"NOT bracketed: best at the {o['edge']} end")
    return (f"{mode}: {o['key']} {o['chosen']:.3g}, the best mean validation score of {len(c['values'])} values from "
            f"{c['values'][0]:.3g} to {c['values'][-1]:.3g} ({o['widenings']} widening(s)), {where}")


def decision_plot_rows(d: Decision) -> list[tuple[str, float, float, float]]:
    keys = list(d.quality) + ([k for k in d.measures if k == d.design.get("cost")])
    return [(SHORT.get(k, k), d.measures[k].mean, d.measures[k].lo, d.measures[k].hi)
            for k in keys if k in d.measures]


def write_report(paths: list[str | Path], out: Path, margin: Optional[float] = None, threshold: Optional[float] = None,
                 renders: bool = True) -> Decision:
    """Analyse the inputs and write the report directory (built aside, then swapped in)."""
    stages, dnotes = with_margin(read_stages(paths, threshold), margin)
    per = stages.explore_trials
    if per.empty and stages.confirm_trials.empty:
        raise AnalysisError(f"{', '.join(map(str, paths))}: no trial has reached a validation epoch yet")
    d, more = decision_of(stages)
    dnotes, plan = dnotes + more, stages.plan
    modes, cell = d.modes, stages.cell
    explore_notes = (status_notes(stages.explore, per, "explore", modes) if len(per) else
                     ["No explore-stage records were read: the report has no exploratory tables."])
    confirm_notes = (status_notes(stages.confirm, stages.confirm_trials, "confirm", modes)
                     if stages.confirm is not None and len(stages.confirm_trials) else [])
    depends = cell_dependence(per, tuple(modes), cell) if len(per) else None
    tables, multiplicity = explore_tables(per, tuple(modes), cell)
    ctable = confirm_table(d, plan) if plan is not None and d.measures else pd.DataFrame()
    out = Path(out)
    staging = prepare_out(out)
    try:
        figures, render_notes = report_figures(stages, d, plan, staging, renders)
        notes = dnotes + geometry_note([stages.confirm_trials, per]) + confirm_notes + explore_notes + render_notes
        head = [f"**Recommendation: {d.recommendation}** — {d.reason}.", "", *design_lines(d, plan)]
        if depends:
            head += ["", depends]
        parts = sections(ctable, tables, multiplicity, notes, figures)
        md = decision_markdown(modes, head, parts)
        (staging / "decision.md").write_text("\n".join(md) + "\n")
        (staging / "decision.json").write_text(json.dumps(d.to_json(), indent=1, allow_nan=False) + "\n")
        write_csv_tables(staging, ctable, tables, stages, cell)
        (staging / "report.html").write_text(html_page(modes, head, parts))
        swap_folder(staging, out)  # prepare_out refused an `out` that is not a report directory
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return d


def explore_tables(per: pd.DataFrame, modes: tuple[str, str], cell: list[str]) -> tuple[dict[str, pd.DataFrame], str]:
    """The explore stage's exploratory tables (per cell, per grid key) and the paragraph that says what they are."""
    if not len(per):
        return {}, ""
    tables = {"Per cell": breakdown(per, cell, modes, cell), **{f"Per {k}": breakdown(per, [k], modes, cell) for k in cell}}
    n_groups = sum(len(t) for t in tables.values())
    return tables, (f"Exploratory: these {n_groups} comparisons use the explore trials, whose hyperparameters were "
                    f"tuned separately per mode and some of which ASHA stopped early; with {n_groups} 95% intervals, "
                    f"about {n_groups / 20:.1f} would miss by chance alone. They suggest where to look; they decide "
                    f"nothing.")


def report_figures(stages: Stages, d: Decision, plan: Optional[dict], staging: Path,
                   renders: bool) -> tuple[list[tuple[Path, str]], list[str]]:
    """The report's figures written into `staging`, (path, caption) each, and notes on the renders."""
    modes, per, figures = d.modes, stages.explore_trials, []
    if d.quality:
        figures.append(plots.intervals(decision_plot_rows(d), plan["margin"],
                                       f"{modes[0]} vs {modes[1]}, confirm stage", staging, level_of(d)))
    if plan is not None and plan.get("tuning"):
        figures.append(plots.tuning(plan["tuning"], plan["select"], staging))
    if stages.confirm is not None and len(stages.confirm_trials):
        figures.append(plots.curves(stages.confirm.metrics, staging, list(plan["cell"]), "curves_confirm.png",
                                    "Confirm stage. "))
    if len(per):
        figures += plots.all_plots(stages.explore.metrics, per, staging, stages.cell)
    if not renders:
        return figures, ["Renders skipped (--no-renders)."]
    if plan is None or not len(stages.confirm_trials):
        return figures, []
    from study.analysis.renders import median_figures, render_figures  # deferred: torch and the renderer

    cells = {m: plan["cell"] for m in modes}
    made, why = render_figures(stages.confirm_trials, stages.confirm.trials, cells, staging, stages.folder)
    if not made:
        return figures, why
    video, more = median_figures(stages.confirm_trials, stages.confirm.trials, cells, staging, stages.folder,
                                 plan["quality"][0])
    return figures + made + video, why + more + [
        "The qualitative and geometry panels and the turntables show each mode's confirm trial with the best "
        "validation score, from its last checkpoint: the epoch that was scored."]


def write_csv_tables(staging: Path, ctable: pd.DataFrame, tables: dict[str, pd.DataFrame], stages: Stages,
                     cell: list[str]) -> None:
    """decision.csv, explore.csv and trials.csv (both stages' per-trial rows) where there is something to write."""
    if len(ctable):
        ctable.to_csv(staging / "decision.csv", index=False)
    if tables:
        pd.concat([t.assign(table=name) for name, t in tables.items()]).to_csv(staging / "explore.csv", index=False)
    trial_tables = [t.assign(stage=s) for s, t in (("explore", stages.explore_trials), ("confirm", stages.confirm_trials))
                    if len(t)]
    if trial_tables:
        tt = pd.concat(trial_tables, ignore_index=True)
        tt[["stage", *(c for c in trial_columns(cell) if c in tt)]].to_csv(staging / "trials.csv", index=False)


def status_notes(tables: Tables, per_trial: pd.DataFrame, stage: str, modes: list[str]) -> list[str]:
    """What the numbers of a stage stand on: trial states, running or interrupted studies, modes without trials,
    devices."""
    notes = []
    m, t = tables.metrics, tables.trials
    names = sorted(set(m["study"]))
    notes.append(f"{stage}: {len(per_trial)} evaluated trials from {len(names)} study(ies) ({', '.join(names)}); "
                 f"{m.groupby(['study', 'trial_id']).ngroups - len(per_trial)} trial(s) reported no validation "
                 f"epoch yet.")
    if len(t) and "status" in t:
        for name, rows in t.groupby("study"):
            counts = rows["status"].value_counts()
            notes.append(f"{stage}, {name}: " + ", ".join(f"{int(counts.get(s, 0))} {s}" for s in
                                                  STATUSES
                                                  if counts.get(s, 0)) + " trial(s).")
            unfinished = int(rows["status"].isin([RUNNING, PENDING]).sum())
            if unfinished:
                notes.append(f"{name}: {unfinished} trial(s) still running or interrupted: the numbers use the "
                             f"epochs they reported so far.")
            failed = rows[rows["status"] == FAILED]
            for mode, f in failed.groupby(failed.get(MODE_KEY, pd.Series("?", index=failed.index))):
                errs = sorted(set(str(e).splitlines()[0][:200] for e in f.get("error", pd.Series(dtype=str)).dropna()))
                notes.append(f"{name}: {len(f)} {mode} trial(s) failed" + (f" ({'; '.join(errs[:3])})" if errs else "")
                             + ".")
    else:
        notes.append("No trials.parquet: trial states unknown (the study may still be running or was interrupted).")
    for name in names:
        space = tables.infos.get(name, {}).get("space")
        if space and stage == "explore":
            planned = len(space.get("modes", [])) * space.get("samples_per_cell", 1) * int(
                np.prod([len(v) for v in space.get("grid", {}).values()] or [1]))
            seen = len(t[t["study"] == name]) if len(t) and "study" in t else m[m["study"] == name]["trial_id"].nunique()
            if seen < planned:
                notes.append(f"{name}: {seen} of {planned} planned trials started: the study is still running or "
                             f"was interrupted.")
    for mode in modes:
        if mode not in set(per_trial[MODE_KEY]):
            notes.append(f"{stage}: mode {mode} has no trial with a validation epoch.")
    for col in ("device", "mem_kind"):
        kinds = sorted(set(per_trial[col]))
        if len(kinds) > 1:
            notes.append(f"Trials ran with different {col} ({', '.join(kinds)}): costs compare across them only "
                         f"roughly.")
    return notes



def geometry_note(per_trials: list[pd.DataFrame]) -> list[str]:
    """One note for the whole report when no trial of any stage measured geometry (posesplat.metrics.GEOMETRY_NAMES):
    its rows are NaN because the dataset has no true depth and normals, not because a mode scored 0."""
    rows = [t[[k for k in GEOMETRY_NAMES if k in t]] for t in per_trials if len(t)]
    if not rows or not any(r.shape[1] for r in rows) or any(np.isfinite(r.to_numpy(float)).any() for r in rows):
        return []
    return ["No ground-truth geometry: the dataset has no true depth and normal maps (an imported recording, or a "
            "synthetic store from before format 2), so the depth, normal and surface metrics are NaN in every row."]


def prepare_out(out: Path) -> Path:
    """A fresh staging directory beside `out`; refuses an `out` that is not a report directory."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "decision.md").exists())):
        raise AnalysisError(f"{out}: exists and is not a report directory (no decision.md); choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(out)
    folder = staging_folder(out)
    folder.mkdir()
    return folder


def clean_stale(out: Path) -> None:
    """Staging folders of report writers that were killed: an unfinished `.tmp-PID` is removed; an `.old-PID` (the
    previous report, killed between swap_folder's two renames) is put back when `out` is missing, else removed
    (posesplat.io.beside names both)."""
    for kind in ("old", "tmp"):
        for d in out.parent.glob(f".{out.name}.{kind}-*"):
            pid = d.name.rsplit("-", 1)[-1]
            if not pid.isdigit() or pid_alive(int(pid)):
                continue
            if kind == "old" and not out.exists():
                os.replace(d, out)
            else:
                shutil.rmtree(d, ignore_errors=True)
