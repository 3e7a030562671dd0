"""The study's driver: explore, the deciding tuning, confirm, then the report, with Ray Tune (the command line:
study.runner.options).

Every trial trains one (gaussian_mode, grid_size, max_frames, lr, ssim_lambda, seed) combination with posesplat's
training loop and reports each epoch. Metrics go to `<study>/metrics/` (parquet), trial states to
`<study>/trials.parquet`, curves and renders to `<study>/tensorboard/`; the decision report to `<study>/report/`.
Re-running the same command on the same study directory resumes it.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional

import numpy as np
from ray import tune
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

from posesplat import checkpoint
from posesplat.config import ConfigError, make_config
from posesplat.data import DatasetError
from posesplat.metrics import BY_NAME
from study.analysis import analyze, tuning
from study.analysis.confirm import (TUNE_SEEDS, PlanError, check_replan, look_folder, look_trials, plan_from_records,
                                    plan_text, stage_seeds)
from study.analysis.load import AnalysisError, load_studies, stage_summary
from study.analysis.looks import looks_of
from study.analysis.outcome import stopped_early, summary
from study.base.records import read_confirm_plan, read_round_plan
from study.base.rows import FAILED
from study.base.space import MODE_KEY, Space, SpaceError, trial_keys
from study.base.storage import StorageError, Store, StudyError, StudyLock, join_uri, set_aside
from study.runner import _ray_compat, resources
from study.runner._ray_compat import UnsupportedRay
from study.runner.board import Names, stage_names
from study.runner.cluster import connect_ray, own_ray
from study.runner.console import LOG_NAME, StageProgress, ray_output, ray_output_to, study_log
from study.runner.interrupts import INTERRUPTED, RESUME, SAID, TERMINATED, signals_as_interrupt
from study.runner.options import Options, parse_args
from study.runner.preflight import check_study, owner
from study.runner.search import (STATE_FORMAT, PerModeSearcher, PlannedSearcher, SchedulerState, StateError,
                                 StratifiedASHA, TrialRetries)
from study.runner.sink import ParquetSink
from study.runner.trainable import clean_scratch, run_trial


class Outcome(NamedTuple):
    """How a study run ended: its directory and the exit status (0: finished with a report; 1: finished, but every
    trial failed or the report could not be written)."""
    study: Store
    rc: int


def run_study(args: Options, trial_fn: Optional[Callable] = None) -> Outcome:
    """Set up and run (or resume) both stages, then write the report, all under the study's lock.
    `trial_fn(config, base_config, study_uri)` is what each trial runs (default: study.runner.trainable.run_trial; tests
    give a cheap one).

    Explore: per-mode Optuna and stratified ASHA over every cell (`<study>/ray`, `<study>/metrics`). Confirm, when the
    space has a `confirm` block: the plan written to `<study>/confirm/plan.json`, then its trials with no early
    stopping (`<study>/confirm/ray`, `<study>/confirm/metrics`). A stage that SIGTERM or Ctrl-C interrupted raises
    KeyboardInterrupt (the study is left resumable); one that Ray ended unfinished otherwise, StudyError."""
    INTERRUPTED.clear()
    TERMINATED.clear()
    space, base, study, gpu, gpu_mem, pixels, held, cbase, test_frames = check_study(args)
    with StudyLock(study):
        t0 = time.time()
        info = held or {
            "space": space.model_dump(mode="json"), "options": vars(args), "base_config": base,
            "started": datetime.now(timezone.utc).isoformat(), "gpu": gpu, "state_format": STATE_FORMAT, **owner(),
        }
        if "finished" not in info:  # a new study, or one whose checkpoints check_study checked
            info["checkpoint_format"] = checkpoint.FORMAT
        info["runs"] = info.get("runs", 0) + 1
        study.write_json(info, "study.json")
        log = None if args.verbose else ray_log_path(study)
        if log is not None:
            print(f"Ray's console output (trial boxes, status tables): {log} (--verbose shows it here)", flush=True)
        with ray_output_to(log):
            connect_ray(args.address)
        clean_scratch()
        trainable = trainable_factory(args, space, gpu, gpu_mem, pixels, trial_fn)
        failed = None
        with signals_as_interrupt(), study_log(log):
            try:
                ended = run_explore(args, space, base, study, trainable)
                info.setdefault("explore_finished", datetime.now(timezone.utc).isoformat())
                study.write_json(info, "study.json")
                failed = all_failed("explore", ended)
                if space.confirm is not None and failed is None:
                    tuned = run_tuning(args, space, cbase, study, trainable, info)
                    failed = all_failed("confirm", run_confirm(args, space, cbase, test_frames, study, trainable,
                                                                 tuned))
            finally:
                info["wall_time_s"] = info.get("wall_time_s", 0) + time.time() - t0
                study.write_json(info, "study.json")
            info["finished"] = datetime.now(timezone.utc).isoformat()
            study.write_json(info, "study.json")
            if failed is not None:
                print(f"error: {failed}", file=sys.stderr)
                return Outcome(study, 1)
            return Outcome(study, finish(study, not args.no_report))


def ray_log_path(study: Store) -> Path:
    """Where Ray's console output goes: `<study>/ray.log`, or beside the command for a study behind a URI."""
    return Path(study.path(LOG_NAME)) if study.local else Path.cwd() / f"{study.name}.{LOG_NAME}"


def all_failed(stage: str, statuses: dict[str, dict]) -> Optional[str]:
    """The one-line reason when every trial of a stage failed (nothing to decide on), else None."""
    if statuses and all(r.get("status") == FAILED for r in statuses.values()):
        errors = sorted({r.get("error") or "unknown error" for r in statuses.values()})
        return (f"every {stage} trial failed ({len(statuses)} trials; {errors[0]}"
                + (f"; and {len(errors) - 1} other errors" if len(errors) > 1 else "") + "); no report written")
    return None


def trainable_factory(args: Options, space: Space, gpu: bool, gpu_mem: Optional[float], pixels: int,
                      trial_fn: Optional[Callable]) -> Callable[[dict, Store, Names, Store], Any]:
    """(base config, stage store, run names, the study's store: its tensorboard/ holds both stages' runs) -> the
    Tune trainable of a stage, with its per-trial resources."""


    cpus = args.cpus_per_trial or space.resources.cpus_per_trial
    if not args.address:
        cpus = min(cpus, os.cpu_count() or 1)

    def trial_resources(config: dict) -> dict:
        if not gpu:
            return {"cpu": cpus, "gpu": 0}
        if args.gpus_per_trial is not None:
            return {"cpu": cpus, "gpu": args.gpus_per_trial}
        if space.resources.gpus_per_trial != "auto":
            return {"cpu": cpus, "gpu": float(space.resources.gpus_per_trial)}
        return {"cpu": cpus, "gpu": resources.gpu_fraction(config[MODE_KEY], config["grid_size"], gpu_mem, pixels,
                                                           max_per_gpu=space.resources.max_trials_per_gpu)}

    def make(base: dict, store: Store, names: Names, board: Store):
        # a test's trial function takes the first three only
        extra = {} if trial_fn else {"names": names, "board_uri": board.uri}
        return tune.with_resources(
            tune.with_parameters(trial_fn or run_trial, base_config=base, study_uri=store.uri, **extra),
            trial_resources)

    return make


def fit_stage(args: Options, store: Store, trainable, sink, searcher, scheduler,
              label: str) -> dict[str, dict]:
    """Run (or resume) one stage's Tuner in `<store>/ray`; returns the stage's trial rows. The study's own records
    decide. A stage whose trials all ended (completed, stopped by the scheduler, or failed) is not run again. One
    that a signal interrupted raises KeyboardInterrupt. One that Ray ended unfinished without a signal is refused
    like damaged state. Ray's state must agree with the records: missing, damaged or foreign state is refused
    (`--repair` sets the stage aside and runs it again) before Ray could start over and the sink drop the records."""
    if len(sink.ended()) >= searcher.total:
        sink.compact_ended()  # an ended stage of a study written before compaction, or killed while compacting
        return sink.trials
    _ray_compat.defer_checkpoint_deletion()
    run_dir = join_uri(store.uri, "ray")
    progress = StageProgress(label, searcher.total, len(sink.ended()))
    tuner = None
    if _ray_compat.can_resume(run_dir):  # not tune.Tuner.can_restore: see _ray_compat
        print(f"resuming the {label} stage in {store.uri}", flush=True)
        tuner = restore_or_set_aside(args, store, label, sink, lambda: _ray_compat.restore_tuner(
            run_dir, trainable, constants(sink.base),
            lambda scheduler: study_callbacks(sink, scheduler, args.max_failures, progress),
            args.max_failures, args.max_concurrent))
    elif sink.evidence():
        restore_or_set_aside(args, store, label, sink, None)
    restored = tuner is not None  # else our searcher and scheduler run; a restored Tuner has its own
    if tuner is None:
        print(f"{label} stage: {searcher.total} trials", flush=True)
        tuner = tune.Tuner(
            trainable,
            param_space=constants(sink.base),
            tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=searcher.total,
                                        metric=searcher.metric, mode=searcher.mode, reuse_actors=True,
                                        trial_dirname_creator=sink.names.dirname if sink.names else None),
            run_config=tune.RunConfig(
                name="ray", storage_path=store.uri,
                callbacks=study_callbacks(sink, scheduler, args.max_failures, progress),
                failure_config=tune.FailureConfig(max_failures=args.max_failures),
                # the best-validation checkpoint and the latest (which Ray always keeps: resume starts from it)
                checkpoint_config=tune.CheckpointConfig(num_to_keep=2, checkpoint_score_attribute=searcher.metric,
                                                        checkpoint_score_order=searcher.mode),
                verbose=1,
            ),
        )
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGUSR1)}
    try:
        with ray_output():  # Ray's trial boxes and status tables into the study's ray.log (--verbose: on screen)
            results = tuner.fit()  # on Ctrl-C, SIGUSR1 or SIGTERM Tune saves its state and returns early
    finally:  # Tune leaves its interrupt handlers installed: a later Ctrl-C would be swallowed
        for sig, h in handlers.items():
            signal.signal(sig, h)
    sink.fill_from(results)
    if INTERRUPTED.is_set():
        raise KeyboardInterrupt
    if len(sink.ended()) < searcher.total:  # Ray's experiment ended by its own count, short of the study's plan
        problem = f"ended the stage with {len(sink.ended())} of its {searcher.total} trials ended, uninterrupted"
        if not (args.repair and restored):
            raise StudyError(f"{run_dir}: Ray's experiment {problem}; to run the {label} stage again from scratch, "
                             f"run the same command with --repair (its records are kept aside, nothing is deleted)")
        set_stage_aside(store, label, sink, problem)
        return fit_stage(args, store, trainable, sink, searcher, scheduler, label)
    return sink.trials


def constants(base: dict) -> dict:
    """The Tuner's param_space: the stage's whole training config (defaults included), which Tune merges under each
    suggestion, so every trial's config (`result.config`) is the complete configuration that trained."""
    return make_config(base, "base_config").model_dump(mode="json")


def restore_or_set_aside(args: Options, store: Store, label: str, sink, restore: Optional[Callable]):
    """The restored Tuner, when Ray's experiment state agrees with the study's records; otherwise a refusal naming
    the damage, or with --repair the stage's Ray state and records set aside (never deleted) and None (the stage
    runs again). Ray restarts an experiment whose state file is truncated; that must not happen over records."""
    evidence, problem, tuner = sink.evidence(), None, None
    if restore is None:
        problem = "is missing"
    else:
        try:
            tuner = restore()
            if evidence:
                known = {r.metrics.get("trial_id") for r in tuner.get_results()}
                if not evidence & known:
                    problem = f"knows none of the {len(evidence)} trials the study recorded"
        except (StudyError, UnsupportedRay, StateError):
            raise
        except Exception as e:  # a truncated experiment_state-*.json, tuner.pkl or searcher state
            problem = f"cannot be read ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    if problem is None:
        return tuner
    where = join_uri(store.uri, "ray")
    if not args.repair:
        raise StudyError(f"{where}: Ray's experiment state {problem}, while {store.uri} records "
                         f"{len(evidence)} ended trials; to run the {label} stage again from scratch, run the same "
                         f"command with --repair (its records are kept aside, nothing is deleted)")
    set_stage_aside(store, label, sink, f"state {problem}")
    return None


def set_stage_aside(store: Store, label: str, sink, problem: str) -> None:
    """--repair: the stage's Ray state, records and TensorBoard runs set aside (never deleted); the stage runs
    again."""
    moved = [set_aside(store, name) for name in ("ray", "metrics", "tensorboard", "trials.parquet", "confirm")
             if store.exists(name) and not (label == "confirm" and name == "confirm")]
    if label == "confirm" and sink.board.exists("tensorboard", "confirm"):  # its runs, in the study's tensorboard/
        moved.append(set_aside(sink.board, "tensorboard/confirm"))
    print(f"note: {label} stage: Ray's experiment {problem}; set aside {', '.join(moved)}; running the stage "
          f"again", flush=True)
    sink.trials.clear()
    sink.damaged = None


def run_explore(args: Options, space: Space, base: dict, study: Store, trainable) -> dict[str, dict]:

    searcher = PerModeSearcher(space, space.metric, space.metric_mode, args.search, args.seed,
                               max_concurrent=args.max_concurrent)
    scheduler = (StratifiedASHA(space.modes, space.max_epochs, space.scheduler.grace_period,
                                space.scheduler.reduction_factor, space.metric, space.metric_mode)
                 if space.scheduler.type == "asha" else None)
    names = stage_names(space, "explore", space.grid, tuple(space.search))
    sink = ParquetSink(study, study.name, base, space.max_epochs, names, study)
    return fit_stage(args, study, trainable(base, study, names, study), sink, searcher, scheduler, "explore")


def run_tuning(args: Options, space: Space, cbase: dict, study: Store, trainable,
               info: dict) -> Optional[dict]:
    """The deciding tuning at the confirm cell (study/analysis/tuning.py), in rounds `<study>/tune/round<r>/`: round 0
    is each mode's first log grid, each later round widens the modes whose choice sits at an end. A round's plan is
    written before its trials and read back on resume; the next round follows from the records alone. Returns the
    per-mode outcome (also recorded in study.json), or None when the space has no `confirm.tune`. `cbase`: the
    confirm cell's base config (preflight's confirm_base)."""
    spec = space.confirm.tune
    if spec is None:
        return None
    modes = list(space.confirm.modes)
    seeds = stage_seeds(TUNE_SEEDS, args.seed, spec.seeds)
    maximize = BY_NAME[space.confirm.select].higher_is_better is not False
    runs: list[tuning.TuningRun] = []
    for r in range(spec.max_widen + 1):
        store = study.child("tune", f"round{r}")
        plan = read_round_plan(store, args.repair)
        if plan is None:
            values = tuning.next_values(spec, modes, runs, maximize)
            if not values:
                break
            plan = {"round": r, "key": spec.key, "values": values, "seeds": seeds,
                    "trials": [trial_keys(space.confirm.cell, m, s, {spec.key: v}, space.mode_keys(m))
                               for s in seeds for m, vs in values.items() for v in vs]}
            store.write_json(plan, "plan.json")
            print(f"tuning round {r}: " + "; ".join(f"{m} {spec.key} {', '.join(f'{v:.3g}' for v in vs)}"
                                                   for m, vs in values.items())
                  + f" x {len(seeds)} seeds at {json.dumps(space.confirm.cell)}", flush=True)
        names = stage_names(space, "tune", space.confirm.cell, (spec.key, "seed"))
        sink = ParquetSink(store, study.name, cbase, space.max_epochs, names, study)
        searcher = PlannedSearcher(plan["trials"], space.metric, space.metric_mode, args.max_concurrent)
        fit_stage(args, store, trainable(cbase, store, names, study), sink, searcher, None, f"tuning round {r}")
        runs += round_runs(store, plan, space)
    outcome = tuning.summary(spec, modes, runs, maximize, {k: BY_NAME[k].higher_is_better is not False
                                                            for k in space.confirm.other_validation})
    info["tuning"] = {m: {k: o[k] for k in ("key", "chosen", "edge", "widenings", "range")} for m, o in outcome.items()}
    study.write_json(info, "study.json")
    print("tuned: " + "; ".join(f"{m} {o['key']} {o['chosen']:.3g}" + ("" if o["reason"] is None else " (at an edge)")
                                for m, o in outcome.items()), flush=True)
    return outcome


def round_runs(store: Store, plan: dict, space: Space) -> list:
    """Each planned trial of a finished tuning round with its validation score at the last epoch (and its other
    validation metrics, Confirm.other_validation): NaN where the trial failed, diverged or never scored (a diverged value
    counts as the worst: study.analysis.tuning.curve)."""
    cell, key, select = space.confirm.cell, plan["key"], space.confirm.select
    others = space.confirm.other_validation
    try:
        per = stage_summary(load_studies([store.uri], grid=cell), last=True, cell=list(cell))
    except AnalysisError:  # no trial scored at all
        per = None
    runs = []
    for t in plan["trials"]:
        score, extra = float("nan"), {k: float("nan") for k in others}
        if per is not None and len(per):
            hit = per[(per[MODE_KEY] == t[MODE_KEY]) & (per["seed"] == t["seed"])
                      & np.isclose(per[key].to_numpy(float), t[key])]
            if "status" in hit:
                hit = hit[hit["status"] != FAILED]
            if len(hit):
                score = float(hit[select].iloc[-1])
                extra = {k: float(hit[k].iloc[-1]) if k in hit else float("nan") for k in others}
        runs.append(tuning.TuningRun(t[MODE_KEY], float(t[key]), int(t["seed"]), score, plan["round"], extra))
    return runs


def run_confirm(args: Options, space: Space, cbase: dict, test_frames: int, study: Store, trainable,
                tuned: Optional[dict] = None) -> dict[str, dict]:
    """Plan the confirm stage once (written before its first trial), then run or resume it look by look, stopping
    at the first look whose verdict is settled (study.analysis.looks). Returns the trial rows of the looks that ran.
    `cbase` and `test_frames`: the confirm cell's base config and its trials' test frames (preflight's)."""
    store = study.child("confirm")
    plan = read_confirm_plan(store, args.repair)
    if plan is None:
        try:
            plan = plan_from_records(space, study, args.seed, test_frames, tuned)
        except PlanError as e:
            raise StudyError(str(e)) from None
        check_replan(store, plan)
        store.write_json(plan, "plan.json")
        print(plan_text(plan), flush=True)
    names = stage_names(space, "confirm", space.confirm.cell, ("seed",))
    looks, ended = looks_of(plan), {}
    for k, look in enumerate(looks):  # each look its own stage (study.analysis.confirm.look_folder); a settled one ends it
        lstore = store.child(*look_folder(k))
        label = "confirm" if k == 0 else f"confirm look {k + 1}"
        sink = ParquetSink(lstore, study.name, cbase, plan["epochs"], names, study)
        searcher = PlannedSearcher(look_trials(plan, k), space.metric, space.metric_mode, args.max_concurrent)
        if len(looks) > 1 and len(sink.ended()) < searcher.total:
            first = looks[k - 1].pairs + 1 if k else 1
            print(f"confirm look {k + 1} of {len(looks)}: pairs {first}-{look.pairs} of {len(plan['seeds'])}, the rule "
                  f"at {100 * look.level:.4g}% intervals", flush=True)
        ended.update(fit_stage(args, lstore, trainable(cbase, lstore, names, study), sink, searcher, None, label))
        if k < len(looks) - 1 and stopped_early(study):
            print(f"confirm stage settled at look {k + 1} of {len(looks)} ({look.pairs} of {len(plan['seeds'])} "
                  f"pairs): the remaining pairs are not run", flush=True)
            break
    return ended


def study_callbacks(sink, scheduler, max_failures: int, progress: StageProgress) -> list:
    """The study's Tune callbacks, in a fixed order (Ray restores callback states by position; the stateless
    progress comes last, so a stage started before it existed resumes)."""


    # Ray's own result files (progress.csv, result.json: ExperimentAnalysis reads them), but not its TensorBoard
    # logger: the study writes its own runs (study.runner.board); TUNE_DISABLE_AUTO_CALLBACK_LOGGERS keeps Ray from adding
    # the TBX logger, so these two are listed here, after the study's (stateless: positions do not matter)
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    return ([sink] + ([SchedulerState(scheduler)] if scheduler else []) + [TrialRetries(max_failures, sink)]
            + [CSVLoggerCallback(), JsonLoggerCallback(), progress])


def finish(study: Store, report: bool) -> int:
    """summary_and_report's exit status. A signal that breaks the report mid-way is the interrupt it is, whatever
    error it caused (e.g. an extension's import it landed in): the same command resumes and writes the report. So is
    one whose KeyboardInterrupt Python swallowed ("Exception ignored in ...": it landed in a __del__)."""
    try:
        rc = summary_and_report(study, report)
    except Exception:
        if INTERRUPTED.is_set():
            raise KeyboardInterrupt from None
        raise
    if INTERRUPTED.is_set():  # the handler's KeyboardInterrupt landed in a finaliser, which swallows it
        raise KeyboardInterrupt
    return rc


def summary_and_report(study: Store, report: bool) -> int:
    """Print the summary and write the decision report into the study (built locally, then uploaded, when the
    study is behind a URI). Returns the exit status: 0 with a report (or none asked for), 1 when the report could
    not be written."""
    print(summary(study.uri, study.uri))
    print(f"TensorBoard: tensorboard --logdir {study.uri}", flush=True)
    if study.local:
        return 1 if report and analyze.report([study.root]) else 0
    if not report:
        return 0
    with tempfile.TemporaryDirectory(prefix="study-") as tmp:
        if analyze.report([study.uri], Path(tmp) / "report", renders=False):
            return 1
        study.upload(Path(tmp) / "report", "report")  # checkpoints stay remote: no qualitative renders here
        print(f"report uploaded to {join_uri(study.uri, 'report')}")
        return 0


def main(argv: Optional[list[str]] = None, trial_fn: Optional[Callable] = None) -> int:
    """Exit status: 0 finished with a report; 1 finished, but every trial failed or the report could not be written;
    2 refused before starting; 130 interrupted (Ctrl-C), 143 terminated (SIGTERM): run the same command to resume.
    A Ray it started is shut down before it returns; one the caller had started is left up."""
    args = parse_args(argv)
    TERMINATED.clear()
    try:
        # also while the study is planned and Ray starts (run_study's own: the stages); the Ray it starts ends with it
        with own_ray(), signals_as_interrupt():
            return run_study(args, trial_fn).rc
    except (SpaceError, ConfigError, DatasetError, StudyError, StorageError, UnsupportedRay, StateError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(("terminated" if TERMINATED.is_set() else "interrupted") + f": {RESUME}", file=sys.stderr, flush=True)
        SAID.set()
        return 143 if TERMINATED.is_set() else 130


if __name__ == "__main__":
    sys.exit(main())
