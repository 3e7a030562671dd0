"""The only module that reaches past Ray's public API, and the check that the installed Ray is the one it was
tested with (pinned in pyproject.toml). Everything else in `study` uses Ray's documented surface.

What is private here, and why there is no public way:
- A restored Tuner keeps the run options of the study's first run (callbacks, failure config, concurrency) in its
  pickle. `Tuner.restore` takes no new ones: `restore_tuner` replaces them on the Tuner's local driver.
- A trial's retry limit is fixed when Ray creates it. `set_max_failures` applies a resumed run's `--max-failures`.
- `Tuner.can_restore` looks only for `tuner.pkl`, written before Ray's first experiment snapshot. A run killed in
  between restores as a new experiment of one trial (Ray's restore passes no `num_samples`). So `can_resume` also
  asks for that snapshot.
- Ray deletes a trial's checkpoint beyond `CheckpointConfig.num_to_keep` the moment the trial registers a newer one.
  At that moment its stored experiment snapshot (taken every 10 s or so) still lists it. A driver killed in between
  resumes from that snapshot. It then restores the trial from the deleted checkpoint (the trial fails) or deletes it
  again (a traceback, and the rest of Ray's checkpoint bookkeeping skipped). No setting orders the two
  (num_to_keep=None keeps every epoch's checkpoint): `defer_checkpoint_deletion` deletes only once a snapshot
  without it is stored.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Optional

import pyarrow.fs as pafs
import ray
from ray import tune
from ray.tune import result

TESTED_RAY = "2.60"  # major.minor; the private fields below are this version's
RELEASED: dict[str, Any] = {}  # checkpoint path -> its filesystem: dropped by Ray's bookkeeping, not yet deleted


class UnsupportedRay(RuntimeError):
    """The installed Ray is not one this study layer was tested with, or runs in a way it cannot drive; one line."""


def check_ray() -> None:
    """Refuse, before a study starts, a Ray other than TESTED_RAY.x."""
    if ray.__version__.split(".")[:2] != TESTED_RAY.split("."):
        raise UnsupportedRay(f"ray {ray.__version__} is installed; this study layer is tested with Ray {TESTED_RAY}.x "
                             f"(pinned in pyproject.toml): pip install 'ray[tune]=={TESTED_RAY}.*'")


def restore_tuner(run_dir: str, trainable: Any, param_space: dict, callbacks_for: Callable[[Any], list],
                  max_failures: int, max_concurrent: Optional[int]):
    """`Tuner.restore` of a stage (`param_space`: the constants it was started with), with this run's callbacks
    (`callbacks_for(restored scheduler)`), failure limit and concurrency (the searcher's `max_concurrent`; no Ray
    ConcurrencyLimiter, whose restored state would win). Finished trials stay finished and errored ones failed
    (`resume_errored=False`: a trial that raised, e.g. NonFiniteLossError, would raise again, and one whose worker
    died was already retried `--max-failures` times); interrupted ones continue from their last checkpoint."""
    tuner = tune.Tuner.restore(run_dir, trainable, resume_errored=False, restart_errored=False,
                               param_space=param_space)
    local = getattr(tuner, "_local_tuner", None)
    if local is None:  # Ray Client: the Tuner lives on the cluster, out of reach
        raise UnsupportedRay("a study cannot be resumed through Ray Client (ray://): run the study command on a node "
                             "of the cluster (--address auto)")
    local._run_config.callbacks = callbacks_for(local._tune_config.scheduler)
    local._run_config.failure_config = tune.FailureConfig(max_failures=max_failures)
    local._tune_config.max_concurrent_trials = None
    if local._tune_config.search_alg is not None:
        local._tune_config.search_alg.max_concurrent = max_concurrent
    return tuner


def can_resume(run_dir: str) -> bool:
    """Is there a Tune experiment in `run_dir` (a path or URI) that Ray can continue: its Tuner and at least one
    experiment snapshot? Without a snapshot Ray recorded no trial, and the stage starts afresh."""
    from ray.tune.execution.experiment_state import _find_newest_experiment_checkpoint  # private: see module end

    return tune.Tuner.can_restore(run_dir) and _find_newest_experiment_checkpoint(run_dir) is not None


def result_keys() -> frozenset[str]:
    """The keys Tune adds to every result a trial reports (its bookkeeping, not the trial's metrics), from the
    constants of `ray.tune.result`, so a Ray that adds one is followed without a list kept here."""
    return frozenset({*result.AUTO_RESULT_KEYS, result.DONE, result.TRIAL_ID, result.EXPERIMENT_TAG,
                      result.SHOULD_CHECKPOINT})


def set_max_failures(trial: Any, max_failures: int) -> None:
    """Apply a retry limit to an existing trial (-1: without limit)."""
    trial.max_failures = max_failures


def replay_trial(trial_id: str) -> Any:
    """A stand-in trial with this id, for replaying recorded calls into a scheduler (study.runner.search)."""
    from ray.tune.experiment import Trial  # private: see module end

    return Trial("replay", trial_id=trial_id, stub=True)


def defer_checkpoint_deletion() -> None:
    """Delete the checkpoints Ray's bookkeeping drops (num_to_keep) only once an experiment snapshot saved after
    the drop is stored, so that no stored snapshot ever lists a deleted checkpoint (module docstring). Installed
    once per process; a kill in between leaves the checkpoint behind, unlisted, rather than missing."""
    from ray.train._internal import checkpoint_manager  # private: see module end
    from ray.tune.execution.experiment_state import _ExperimentCheckpointManager  # private: see module end

    sync_up = _ExperimentCheckpointManager.sync_up_experiment_state
    if getattr(sync_up, "deletes_released", False):
        return

    def release(fs, fs_path: str) -> None:  # in place of the deletion in _CheckpointManager.register_checkpoint
        RELEASED[fs_path] = fs

    def sync_up_then_delete(self, save_fn, force: bool = False, wait: bool = False) -> None:
        root = self._storage.experiment_fs_path.rstrip("/") + "/"
        due = [path for path in RELEASED if path.startswith(root)]  # dropped before the snapshot saved now
        if not due:
            return sync_up(self, save_fn, force=force, wait=wait)
        launched = self._last_sync_time
        sync_up(self, save_fn, force=force, wait=False)
        sent = self._last_sync_time != launched  # this snapshot's upload started (else throttled, or one in flight)
        if not (sent or wait):
            return
        try:
            self._storage.syncer.wait()  # Ray's own wait=True, or this snapshot's upload before the deletions
        except Exception:  # not stored: the checkpoints wait for the next snapshot
            logging.getLogger(__name__).error("Saving experiment state to storage at '%s' failed with exception: ",
                                              self._storage.experiment_fs_path, exc_info=True)
            return
        if sent:
            for path in due:
                delete_if_present(RELEASED.pop(path), path)

    sync_up_then_delete.deletes_released = True
    checkpoint_manager._delete_fs_path = release
    _ExperimentCheckpointManager.sync_up_experiment_state = sync_up_then_delete


def delete_if_present(fs, fs_path: str) -> None:
    """Ray's deletion of a checkpoint folder, skipped when it is gone (a snapshot of a study run by an earlier
    version can list a checkpoint Ray already deleted)."""
    from ray.train._internal.storage import _delete_fs_path  # private: see module end

    if fs.get_file_info(fs_path).type != pafs.FileType.NotFound:
        _delete_fs_path(fs=fs, fs_path=fs_path)


# Ray's private modules are imported inside the functions that use them, after check_ray accepted the installed
# version at start-up: a Ray that moved one then gets check_ray's one line, not an ImportError at import time.
