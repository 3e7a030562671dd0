"""Fair search and early stopping: every cell crossed with every mode, one sampler and one ASHA per mode.

`PerModeSearcher` emits trials round-robin over (cell, sample, mode), so each mode gets the same number of trials
and every (grid_size, max_frames) cell is paired across modes; the continuous dimensions come from a separate Optuna
TPE sampler per mode (or a seeded random sampler), so one mode's results never steer the other's tuning.
`StratifiedASHA` keeps one ASHA scheduler per mode: a trial only competes with trials of its own mode.
Ray's experiment state does not include the scheduler; `SchedulerState` carries it in the same snapshot (as a
callback state), so a resumed study makes the same early-stopping decisions as an uninterrupted one.
"""

from __future__ import annotations

import math
import pickle
from typing import Any, Optional

import numpy as np
from ray.tune import Callback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher

from study.space import MODE_KEY, Space



def _optuna_space(space: Space) -> dict:
    import optuna

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
            {**cell, MODE_KEY: m, "seed": seed + s}
            for cell in space.cells() for s in range(space.samples_per_cell) for m in space.modes
        ]
        self.next_index = 0
        self.trial_mode: dict[str, str] = {}
        self.inner: dict[str, Any] = {}
        for i, m in enumerate(space.modes):
            if algo == "optuna":
                from optuna.samplers import TPESampler
                from ray.tune.search.optuna import OptunaSearch

                self.inner[m] = OptunaSearch(
                    space=_optuna_space(space), metric=metric, mode=mode,
                    sampler=TPESampler(seed=seed * 1000 + i, n_startup_trials=max(2, space.samples_per_cell)),
                )
            else:
                self.inner[m] = np.random.default_rng(seed * 1000 + i)

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

    def on_trial_complete(self, trial_id: str, result: Optional[dict] = None, error: bool = False) -> None:
        self.live.discard(trial_id)
        m = self.trial_mode.get(trial_id)
        if self.algo == "optuna" and m:
            if result is not None and not np.isfinite(result.get(self.metric, np.nan)):
                result = None
                error = True
            self.inner[m].on_trial_complete(trial_id, result, error)

    def get_state(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "max_concurrent"}

    def set_state(self, state: dict) -> None:
        self.__dict__.update({"live": set(), **{k: v for k, v in state.items() if k != "max_concurrent"}})

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.get_state(), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.set_state(pickle.load(f))


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
        with open(checkpoint_path, "wb") as f:
            pickle.dump({"trials": self.trials, "next_index": self.next_index}, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update({"live": set(), **pickle.load(f)})


class StratifiedASHA(FIFOScheduler):
    """One ASHAScheduler per Gaussian mode; each trial is judged only against its own mode's trials."""

    def __init__(self, modes: list[str], max_t: int, grace_period: int, reduction_factor: float,
                 metric: str, mode: str):
        super().__init__()
        self._metric, self._mode = metric, mode
        self.by_mode = {
            m: ASHAScheduler(time_attr="epoch", metric=metric, mode=mode, max_t=max_t, grace_period=grace_period,
                             reduction_factor=reduction_factor, brackets=1)
            for m in modes
        }

    def _of(self, trial) -> ASHAScheduler:
        return self.by_mode[trial.config[MODE_KEY]]

    def set_search_properties(self, metric, mode, **spec) -> bool:
        return True  # fixed at construction

    def on_trial_add(self, tune_controller, trial) -> None:
        self._of(trial).on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if not np.isfinite(result.get(self._metric, np.nan)):
            return TrialScheduler.CONTINUE
        return self._of(trial).on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        if trial.trial_id in self._of(trial)._trial_info:
            if result and np.isfinite(result.get(self._metric, np.nan)):
                self._of(trial).on_trial_complete(tune_controller, trial, result)
            else:
                self._of(trial).on_trial_remove(tune_controller, trial)

    def on_trial_remove(self, tune_controller, trial) -> None:
        if trial.trial_id in self._of(trial)._trial_info:
            self._of(trial).on_trial_remove(tune_controller, trial)

    def on_trial_error(self, tune_controller, trial) -> None:
        self.on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        return "Stratified ASHA: " + "; ".join(f"{m}: {s._num_stopped} stopped" for m, s in self.by_mode.items())

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))


class TrialRetries(Callback):
    """Applies `--max-failures` to every trial at every step (Ray keeps each trial's limit from when it was created,
    in the experiment snapshot, so without this a resumed study would ignore a changed value), and answers a trial
    that ran out of GPU memory (posesplat.train.OutOfMemoryError) by retrying it with twice its GPU fraction, at most
    one GPU: such a retry is not counted against `--max-failures` (it needs one to happen at all: with
    `--max-failures 0` an OOM fails the trial). The fractions given are recorded in `trials.parquet`."""

    def __init__(self, max_failures: int, sink=None):
        self.max_failures, self.sink = max_failures, sink
        self.resized: dict[str, int] = {}  # trial id -> OOM retries with a larger fraction (saved with Ray's state)

    def on_step_begin(self, iteration, trials, **info) -> None:
        for t in trials:
            t.max_failures = -1 if self.max_failures < 0 else self.max_failures + self.resized.get(t.trial_id, 0)

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:
        from study.resources import oom_resized
        from study.sink import error_text, trial_resources

        error = error_text(trial) or ""
        need = trial_resources(trial)
        new = oom_resized(need.get("GPU", 0.0)) if "OutOfMemoryError" in error and need.get("GPU") else None
        if new is None:
            return
        trial.update_resources({**need, "GPU": new})  # the trial is pending again: applied at its restart
        self.resized[trial.trial_id] = self.resized.get(trial.trial_id, 0) + 1
        print(f"trial {trial.trial_id} ran out of GPU memory with {need['GPU']:g} of a GPU: retried with {new:g}",
              flush=True)
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
        return {"scheduler": pickle.dumps(self.scheduler.__dict__)}

    def set_state(self, state: dict) -> None:
        self.scheduler.__dict__.update(pickle.loads(state["scheduler"]))
