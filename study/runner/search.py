"""Fair search and early stopping: every cell crossed with every mode, one sampler and one ASHA per mode.

`PerModeSearcher` emits trials round-robin over (cell, sample, mode). So each mode gets the same number of trials
and every (grid_size, max_frames) cell is paired across modes. The continuous dimensions come from a separate Optuna
TPE sampler per mode (or a seeded random sampler). So one mode's results never steer the other's tuning.
`StratifiedASHA` keeps one ASHA scheduler per mode: a trial only competes with trials of its own mode.
Ray's experiment state does not include the scheduler; `SchedulerState` carries it in the same snapshot (as a
callback state), so a resumed study makes the same early-stopping decisions as an uninterrupted one.

Saved state is the study's own JSON (`STATE_FORMAT`, recorded in study.json), never a pickle of Ray or Optuna
objects: the calls made to each per-mode sampler and ASHA scheduler, in order. Restoring replays them on fresh
objects through their public methods, which rebuilds the exact state (seeded samplers included) and proves it:
a replayed suggestion or early-stopping decision that differs from the recorded one is refused (`StateError`).
"""

from __future__ import annotations

import json
import math
from typing import Any, Optional

import numpy as np
import optuna
from optuna.samplers import TPESampler
from ray.tune import Callback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from posesplat.io import strict_dumps
from study.base.space import MODE_KEY, Space, trial_keys
from study.runner import _ray_compat
from study.runner.console import say
from study.runner.resources import oom_resized
from study.runner.sink import error_text, trial_resources

STATE_FORMAT = 1  # of the saved searcher and scheduler state; study.json records the format a study was started with


class StateError(RuntimeError):
    """Saved searcher or scheduler state that this version cannot restore exactly; one line."""


def _unfloat(v: Optional[float]) -> float:
    """A metric value read back from strict JSON, where a NaN was written as null."""
    return float("nan") if v is None else float(v)


def _write_state(state: dict, path: str) -> None:
    with open(path, "w") as f:
        f.write(strict_dumps(state))


def _read_state(path: str, kind: str) -> dict:
    """The saved state of a `kind` searcher; refuses anything else (a pickle from before STATE_FORMAT 1)."""
    try:
        with open(path) as f:
            state = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise StateError(f"{path}: not a saved {kind} state of format {STATE_FORMAT} (a study started by an earlier "
                         f"version of posesplat-study; finish it with that version, or use --name for a new study)"
                         ) from None
    _check_format(state, kind, path)
    return state


def _check_format(state: Any, kind: str, where: str) -> None:
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT or state.get("kind") != kind:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise StateError(f"{where}: saved {kind} state has format {found!r}, this version restores format "
                         f"{STATE_FORMAT} (finish the study with the version that started it, or use --name)")



def _optuna_space(space: Space) -> dict:
    return {
        k: optuna.distributions.FloatDistribution(d.low, d.high, log=d.type == "loguniform")
        for k, d in space.search.items()
    }


class PerModeSearcher(Searcher):
    """Round-robin over (cell, sample, mode); lr and ssim_lambda from a per-mode sampler."""

    def __init__(self, space: Space, metric: str, mode: str, algo: str = "optuna", seed: int = 0,
                 max_concurrent: Optional[int] = None):
        super().__init__(metric=metric, mode=mode)
        self.space, self.algo, self.seed = space, algo, seed
        self.max_concurrent = max_concurrent  # most live trials; not part of the saved state (a resume may change it)
        self.live: set[str] = set()
        self.plan = [
            trial_keys(cell, m, seed + s, {}, space.mode_keys(m))
            for cell in space.cells() for s in range(space.samples_per_cell) for m in space.modes
        ]
        self.next_index = 0
        self.trial_mode: dict[str, str] = {}
        self.calls: list[list] = []  # what the per-mode Optuna searchers were asked and told, in order (the state)
        self.inner = self._fresh_inner()

    def _fresh_inner(self) -> dict[str, Any]:
        """Per mode: an OptunaSearch with its own seeded TPE sampler, or a seeded generator (algo "random")."""
        inner: dict[str, Any] = {}
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # its "new study created" INFO lines: not the user's news
        for i, m in enumerate(self.space.modes):
            if self.algo == "optuna":
                inner[m] = OptunaSearch(
                    space=_optuna_space(self.space), metric=self.metric, mode=self.mode,
                    sampler=TPESampler(seed=self.seed * 1000 + i, n_startup_trials=max(2, self.space.samples_per_cell)),
                )
            else:
                inner[m] = np.random.default_rng(self.seed * 1000 + i)
        return inner

    @property
    def total(self) -> int:
        return len(self.plan)

    def suggest(self, trial_id: str) -> Optional[dict]:
        if self.next_index >= len(self.plan):
            return Searcher.FINISHED
        if self.max_concurrent and len(self.live) >= self.max_concurrent:
            return None  # Tune asks again later
        self.live.add(trial_id)
        fixed = dict(self.plan[self.next_index])
        self.next_index += 1
        m = fixed[MODE_KEY]
        self.trial_mode[trial_id] = m
        if self.algo == "optuna":
            tuned = self.inner[m].suggest(trial_id) or {}
            self.calls.append(["suggest", trial_id, m, tuned])
        else:
            rng = self.inner[m]
            tuned = {
                k: float(math.exp(rng.uniform(math.log(d.low), math.log(d.high))) if d.type == "loguniform"
                         else rng.uniform(d.low, d.high))
                for k, d in self.space.search.items()
            }
        return {**fixed, **tuned}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        m = self.trial_mode.get(trial_id)
        if self.algo == "optuna" and m:
            self.inner[m].on_trial_result(trial_id, result)
            self.calls.append(["result", trial_id, float(result[self.metric]), int(result["training_iteration"])])

    def on_trial_complete(self, trial_id: str, result: Optional[dict] = None, error: bool = False) -> None:
        self.live.discard(trial_id)
        m = self.trial_mode.get(trial_id)
        if self.algo == "optuna" and m:
            if result is not None and not np.isfinite(result.get(self.metric, np.nan)):
                result = None
                error = True
            self.inner[m].on_trial_complete(trial_id, result, error)
            self.calls.append(["complete", trial_id, None if result is None else float(result[self.metric]), error])

    def get_state(self) -> dict:
        """The searcher's state as JSON data: the plan position, each trial's mode and the sampler calls (optuna),
        or each mode's generator state (random). `max_concurrent` is not part of it: a resume may change it."""
        state = {"format": STATE_FORMAT, "kind": "PerModeSearcher", "algo": self.algo, "seed": self.seed,
                 "plan": self.plan, "next_index": self.next_index, "trial_mode": self.trial_mode}
        if self.algo == "optuna":
            return {**state, "calls": self.calls}
        return {**state, "rng": {m: g.bit_generator.state for m, g in self.inner.items()}}

    def set_state(self, state: dict) -> None:
        """Restore `get_state()`'s data: fresh samplers replay the recorded calls (see the module docstring)."""
        _check_format(state, "PerModeSearcher", "searcher state")
        mine = json.loads(json.dumps({"algo": self.algo, "seed": self.seed, "plan": self.plan}))
        if {k: state.get(k) for k in mine} != mine:
            raise StateError("searcher state: saved for another plan, search algorithm or seed than this study's")
        self.next_index, self.trial_mode, self.live = state["next_index"], dict(state["trial_mode"]), set()
        self.inner, self.calls = self._fresh_inner(), []
        if self.algo == "random":
            for m, g in self.inner.items():
                g.bit_generator.state = state["rng"][m]
            return
        for call in state["calls"]:  # ["suggest", id, mode, tuned] | ["result", id, value, step] | ["complete", id, value, error]
            kind, tid = call[0], call[1]
            inner = self.inner[self.trial_mode[tid]]
            if kind == "suggest":
                tuned = inner.suggest(tid) or {}
                if tuned != call[3]:
                    raise StateError(f"searcher state: replayed Optuna suggests {tuned} for trial {tid}, the study "
                                     f"ran {call[3]} (another optuna version?); resume with the one that started it")
            elif kind == "result":
                inner.on_trial_result(tid, {self.metric: _unfloat(call[2]), "training_iteration": call[3]})
            else:
                inner.on_trial_complete(tid, None if call[2] is None else {self.metric: call[2]}, call[3])
            self.calls.append(call)

    def save(self, checkpoint_path: str) -> None:
        _write_state(self.get_state(), checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        self.set_state(_read_state(checkpoint_path, "PerModeSearcher"))


class PlannedSearcher(Searcher):
    """Emits a fixed list of trial configurations in order (the confirm stage's plan): no tuning, no early stopping.
    The state saved with Ray's experiment is how many were emitted."""

    def __init__(self, trials: list[dict], metric: str, mode: str, max_concurrent: Optional[int] = None):
        super().__init__(metric=metric, mode=mode)
        self.trials, self.next_index = [dict(t) for t in trials], 0
        self.max_concurrent = max_concurrent
        self.live: set[str] = set()

    @property
    def total(self) -> int:
        return len(self.trials)

    def suggest(self, trial_id: str) -> Optional[dict]:
        if self.next_index >= len(self.trials):
            return Searcher.FINISHED
        if self.max_concurrent and len(self.live) >= self.max_concurrent:
            return None
        self.live.add(trial_id)
        self.next_index += 1
        return dict(self.trials[self.next_index - 1])

    def on_trial_complete(self, trial_id: str, result: Optional[dict] = None, error: bool = False) -> None:
        self.live.discard(trial_id)

    def save(self, checkpoint_path: str) -> None:
        _write_state({"format": STATE_FORMAT, "kind": "PlannedSearcher", "trials": self.trials,
                      "next_index": self.next_index}, checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        state = _read_state(checkpoint_path, "PlannedSearcher")
        self.trials, self.next_index, self.live = state["trials"], state["next_index"], set()


class StratifiedASHA(FIFOScheduler):
    """One ASHAScheduler per Gaussian mode; each trial is judged only against its own mode's trials."""

    def __init__(self, modes: list[str], max_t: int, grace_period: int, reduction_factor: float,
                 metric: str, mode: str):
        super().__init__()
        self._metric, self._mode = metric, mode
        self.settings = {"modes": list(modes), "max_t": max_t, "grace_period": grace_period,
                         "reduction_factor": reduction_factor, "metric": metric, "mode": mode}
        self._reset()

    def _reset(self) -> None:
        s = self.settings
        self.by_mode = {
            m: ASHAScheduler(time_attr="epoch", metric=s["metric"], mode=s["mode"], max_t=s["max_t"],
                             grace_period=s["grace_period"], reduction_factor=s["reduction_factor"], brackets=1)
            for m in s["modes"]
        }
        self.known: dict[str, str] = {}  # trial id -> mode, for the trials a mode's ASHA is tracking
        self.stopped = {m: 0 for m in s["modes"]}
        self.calls: list[list] = []  # what the per-mode schedulers were told, in order (the saved state)

    def set_search_properties(self, metric, mode, **spec) -> bool:
        return True  # fixed at construction

    def on_trial_add(self, tune_controller, trial) -> None:
        self._add(trial, trial.config[MODE_KEY])

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if not np.isfinite(result.get(self._metric, np.nan)):
            return TrialScheduler.CONTINUE
        return self._result(trial, self.known.get(trial.trial_id, trial.config[MODE_KEY]), self._scored(result))

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        if trial.trial_id in self.known:
            finite = bool(result) and np.isfinite(result.get(self._metric, np.nan))
            self._end(trial, self._scored(result) if finite else None)

    def on_trial_remove(self, tune_controller, trial) -> None:
        if trial.trial_id in self.known:
            self._end(trial, None)

    def on_trial_error(self, tune_controller, trial) -> None:
        self.on_trial_remove(tune_controller, trial)

    def _scored(self, result: dict) -> dict:
        """What ASHA reads of a result (its epoch and the metric), as JSON numbers: recorded and replayed as is."""
        return {k: int(result[k]) if k == "epoch" else float(result[k]) for k in ("epoch", self._metric)
                if k in result}

    # the calls into the per-mode schedulers, each recorded; set_state replays them
    def _add(self, trial, m: str) -> None:
        self.by_mode[m].on_trial_add(None, trial)
        self.known[trial.trial_id] = m
        self.calls.append(["add", trial.trial_id, m])

    def _result(self, trial, m: str, result: dict) -> str:
        decision = self.by_mode[m].on_trial_result(None, trial, result)
        self.stopped[m] += decision == TrialScheduler.STOP
        self.calls.append(["result", trial.trial_id, m, result, decision])
        return decision

    def _end(self, trial, result: Optional[dict]) -> None:
        """A tracked trial completed with a finite score (`result`) or ended without one (removed)."""
        m = self.known.pop(trial.trial_id)
        if result is None:
            self.by_mode[m].on_trial_remove(None, trial)
        else:
            self.by_mode[m].on_trial_complete(None, trial, result)
        self.calls.append(["end", trial.trial_id, m, result])

    def debug_string(self) -> str:
        return "Stratified ASHA: " + "; ".join(f"{m}: {n} stopped" for m, n in self.stopped.items())

    def get_state(self) -> dict:
        return {"format": STATE_FORMAT, "kind": "StratifiedASHA", "settings": self.settings, "calls": self.calls}

    def set_state(self, state: dict) -> None:
        """Fresh per-mode schedulers replay the recorded calls; a decision that comes out otherwise is refused."""
        _check_format(state, "StratifiedASHA", "scheduler state")
        if state["settings"] != json.loads(json.dumps(self.settings)):
            raise StateError(f"scheduler state: saved for other ASHA settings ({state['settings']}) than this "
                             f"study's ({self.settings})")
        self._reset()
        for kind, tid, m, *rest in state["calls"]:
            trial = _ray_compat.replay_trial(tid)
            if kind == "add":
                self._add(trial, m)
            elif kind == "result":
                if self._result(trial, m, rest[0]) != rest[1]:
                    raise StateError(f"scheduler state: replayed ASHA decides otherwise for trial {tid} at "
                                     f"{rest[0]} than the study did ({rest[1]}; another Ray version?)")
            else:
                self._end(trial, rest[0])

    def save(self, checkpoint_path: str) -> None:
        _write_state(self.get_state(), checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        self.set_state(_read_state(checkpoint_path, "StratifiedASHA"))


class TrialRetries(Callback):
    """Applies `--max-failures` to every trial at every step. Ray keeps each trial's limit from when it was created,
    in the experiment snapshot. Without this a resumed study would ignore a changed value. It also answers a trial
    that ran out of GPU memory (posesplat.memory.OutOfMemoryError) by retrying it with twice its GPU fraction, at most
    one GPU. Such a retry is not counted against `--max-failures`. But it needs one to happen at all: with
    `--max-failures 0` an OOM fails the trial. The fractions given are recorded in `trials.parquet`."""

    def __init__(self, max_failures: int, sink=None):
        self.max_failures, self.sink = max_failures, sink
        self.resized: dict[str, int] = {}  # trial id -> OOM retries with a larger fraction (saved with Ray's state)

    def on_step_begin(self, iteration, trials, **info) -> None:
        for t in trials:
            _ray_compat.set_max_failures(t, -1 if self.max_failures < 0 else self.max_failures
                                         + self.resized.get(t.trial_id, 0))

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:
        error = error_text(trial) or ""
        need = trial_resources(trial)
        new = oom_resized(need.get("GPU", 0.0)) if "OutOfMemoryError" in error and need.get("GPU") else None
        if new is None:
            return
        trial.update_resources({**need, "GPU": new})  # the trial is pending again: applied at its restart
        self.resized[trial.trial_id] = self.resized.get(trial.trial_id, 0) + 1
        say(f"trial {trial.trial_id} ran out of GPU memory with {need['GPU']:g} of a GPU: retried with {new:g}")
        if self.sink is not None:
            self.sink.note(trial, gpu_fraction=new, oom_retries=self.resized[trial.trial_id], oom_error=error)

    def get_state(self) -> dict:
        return {"resized": dict(self.resized)}

    def set_state(self, state: dict) -> None:
        self.resized = dict(state.get("resized", {}))


class SchedulerState(Callback):
    """Saves a scheduler's state with Ray's experiment snapshot and puts it back on restore (Ray saves only the
    searcher); without it a resumed ASHA forgets every rung result and stops (or keeps) other trials."""

    def __init__(self, scheduler: TrialScheduler):
        self.scheduler = scheduler

    def get_state(self) -> dict:
        return {"scheduler": self.scheduler.get_state()}

    def set_state(self, state: dict) -> None:
        if not isinstance(state.get("scheduler"), dict):  # a pickle, from before STATE_FORMAT 1
            _check_format(state.get("scheduler"), "StratifiedASHA", "scheduler state")
        self.scheduler.set_state(state["scheduler"])
