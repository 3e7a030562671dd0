"""The study's own saved state for its searcher and scheduler: strict JSON (no pickles of Ray or Optuna objects),
restored by replaying the recorded calls into fresh objects, which continue exactly like the originals; a record
that the installed versions would replay otherwise, an old pickle, or another Ray is refused in one line."""

import json
import pickle

import pytest
from ray.tune.experiment import Trial
from ray.tune.schedulers import TrialScheduler

from study.runner import _ray_compat
from study.runner.search import STATE_FORMAT, PerModeSearcher, PlannedSearcher, SchedulerState, StateError, StratifiedASHA
from study.base.space import Space

SPACE = Space(name="state", modes=["2d", "3d"], grid={"grid_size": [16], "max_frames": [6, 12]}, samples_per_cell=3,
              search={"lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2},
                      "ssim_lambda": {"type": "uniform", "low": 0.0, "high": 0.2}})


def drive(s: PerModeSearcher, ids: list[str], score: dict[str, float]) -> list[dict]:
    """Suggest a trial per id; report two epochs (the first without a validation score) and complete each one (a
    trial scored NaN counts as failed)."""
    out = []
    for tid in ids:
        out.append(s.suggest(tid))
        s.on_trial_result(tid, {"valid_heldout_iou": float("nan"), "training_iteration": 1})
        s.on_trial_result(tid, {"valid_heldout_iou": score[tid], "training_iteration": 2})
        s.on_trial_complete(tid, {"valid_heldout_iou": score[tid]})
    return out


@pytest.mark.parametrize("algo", ["optuna", "random"])
def test_searcher_state_is_json_and_resumes_exactly(algo, tmp_path):
    """Half the plan, saved and restored into a new searcher: the rest of the suggestions (TPE's, after its random
    start-up trials, conditioned on the scores) equal those of the searcher that was never interrupted."""
    ids = [f"t{i}" for i in range(SPACE.samples_per_cell * 2 * 2)]
    score = {t: 0.3 + 0.05 * ((7 * i) % 5) for i, t in enumerate(ids)}
    score[ids[3]] = float("nan")
    whole = PerModeSearcher(SPACE, "valid_heldout_iou", "max", algo=algo, seed=3)
    expected = drive(whole, ids, score)

    first = PerModeSearcher(SPACE, "valid_heldout_iou", "max", algo=algo, seed=3)
    drive(first, ids[:7], score)
    first.save(str(tmp_path / "searcher"))
    text = (tmp_path / "searcher").read_text()
    assert json.loads(text)["format"] == STATE_FORMAT and "NaN" not in text
    resumed = PerModeSearcher(SPACE, "valid_heldout_iou", "max", algo=algo, seed=3, max_concurrent=2)
    resumed.restore(str(tmp_path / "searcher"))
    assert resumed.max_concurrent == 2  # a resume's own option, not the saved one
    assert drive(resumed, ids[7:], score) == expected[7:]
    assert resumed.suggest("extra") == PerModeSearcher.FINISHED


def test_searcher_state_that_replays_otherwise_is_refused(tmp_path):
    s = PerModeSearcher(SPACE, "valid_heldout_iou", "max", algo="optuna", seed=3)
    drive(s, ["a", "b"], {"a": 0.5, "b": 0.6})
    state = s.get_state()
    state["calls"][0][3] = {**state["calls"][0][3], "lr": 0.005}  # not what the seeded sampler suggests
    with pytest.raises(StateError, match="replayed Optuna suggests .* for trial a, the study ran"):
        PerModeSearcher(SPACE, "valid_heldout_iou", "max", algo="optuna", seed=3).set_state(state)
    with pytest.raises(StateError, match="another plan, search algorithm or seed"):
        PerModeSearcher(SPACE, "valid_heldout_iou", "max", algo="optuna", seed=4).set_state(s.get_state())


def test_pickled_state_of_an_earlier_version_is_one_line(tmp_path):
    path = tmp_path / "searcher-state.pkl"
    path.write_bytes(pickle.dumps({"next_index": 3, "trial_mode": {}}))
    for searcher in (PerModeSearcher(SPACE, "valid_heldout_iou", "max", algo="random"),
                     PlannedSearcher([{"gaussian_mode": "2d"}], "valid_heldout_iou", "max")):
        with pytest.raises(StateError) as e:
            searcher.restore(str(path))
        assert str(path) in str(e.value) and "earlier version" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(StateError, match="format"):
        SchedulerState(asha()).set_state({"scheduler": pickle.dumps({"by_mode": {}})})


def test_planned_searcher_state_round_trips(tmp_path):
    trials = [{"gaussian_mode": m, "seed": s} for s in range(2) for m in ("2d", "3d")]
    a = PlannedSearcher(trials, "valid_heldout_iou", "max")
    assert [a.suggest(f"t{i}") for i in range(2)] == trials[:2]
    a.save(str(tmp_path / "p"))
    b = PlannedSearcher([], "valid_heldout_iou", "max")
    b.restore(str(tmp_path / "p"))
    assert [b.suggest(f"t{i}") for i in range(2, 5)] == [*trials[2:], PlannedSearcher.FINISHED]


def asha() -> StratifiedASHA:
    return StratifiedASHA(["2d", "3d"], max_t=8, grace_period=1, reduction_factor=2, metric="valid_heldout_iou",
                          mode="max")


def trial(tid: str, mode: str) -> Trial:
    return Trial("t", config={"gaussian_mode": mode}, trial_id=tid, stub=True)


SCORES = {  # trial -> (mode, score per epoch): some beat the rung, some do not; 3d scores differ in scale
    "a": ("2d", [0.5, 0.6, 0.7, 0.8]), "b": ("3d", [5.0, 6.0, 7.0]), "c": ("2d", [0.4, 0.45]),
    "d": ("3d", [6.0, 7.5, 8.0, 9.0]), "e": ("2d", [0.55, 0.65, 0.66]), "f": ("3d", [4.0, 4.1]),
    "g": ("2d", [0.6, float("nan"), 0.9, 0.95]), "h": ("3d", [7.0, 8.0, 8.5, 9.5]),
}


def play(s: StratifiedASHA, ids: list[str]) -> list[str]:
    """Each trial of `ids` added, run until stopped or out of scores, completed; the decisions in order."""
    out = []
    for tid in ids:
        mode, scores = SCORES[tid]
        t = trial(tid, mode)
        s.on_trial_add(None, t)
        for epoch, v in enumerate(scores, 1):
            out.append(s.on_trial_result(None, t, {"epoch": epoch, "valid_heldout_iou": v}))
            if out[-1] == TrialScheduler.STOP:
                break
        if tid == "f":  # ended without a result (e.g. an error)
            s.on_trial_remove(None, t)
        else:
            s.on_trial_complete(None, t, {"epoch": epoch, "valid_heldout_iou": v})
    return out


def test_scheduler_state_resumes_the_same_decisions():
    """Four trials, then the state through SchedulerState (as Ray saves it with its snapshot, here through JSON):
    the resumed scheduler stops and keeps the next four exactly as the uninterrupted one did."""
    ids = list(SCORES)
    whole = asha()
    expected = play(whole, ids)
    assert TrialScheduler.STOP in expected and expected.count(TrialScheduler.CONTINUE) > 4

    first = asha()
    done = play(first, ids[:4])
    saved = json.loads(json.dumps(SchedulerState(first).get_state(), allow_nan=False))
    resumed = asha()
    SchedulerState(resumed).set_state(saved)
    assert play(resumed, ids[4:]) == expected[len(done):]
    assert resumed.debug_string() == whole.debug_string()

    saved["scheduler"]["calls"][2][4] = TrialScheduler.STOP if saved["scheduler"]["calls"][2][4] != \
        TrialScheduler.STOP else TrialScheduler.CONTINUE
    with pytest.raises(StateError, match="replayed ASHA decides otherwise"):
        SchedulerState(asha()).set_state(saved)


def test_another_ray_is_refused_in_one_line(monkeypatch):
    import ray

    _ray_compat.check_ray()  # the installed one
    monkeypatch.setattr(ray, "__version__", "2.61.0")
    with pytest.raises(_ray_compat.UnsupportedRay) as e:
        _ray_compat.check_ray()
    assert "ray 2.61.0 is installed" in str(e.value) and "2.60" in str(e.value) and "\n" not in str(e.value)


def test_study_of_an_earlier_version_is_refused_on_resume(tmp_path, small_dataset):
    """A study whose study.json has no state format (its state is pickled Ray objects) is refused in one line."""
    from study.runner.preflight import check_study
    from study.runner.run import parse_args
    from study.base.storage import StudyError

    space = tmp_path / "space.json"
    space.write_text(json.dumps({"name": "old", "grid": {"grid_size": [16], "max_frames": [12]}}))
    args = parse_args(["--space", str(space), "--storage", str(tmp_path / "s"), "--dataset", str(small_dataset)])
    plan = check_study(args)
    (tmp_path / "s" / "old").mkdir(parents=True)
    held = {"space": plan.space.model_dump(mode="json"), "options": vars(args), "base_config": plan.base}
    (tmp_path / "s" / "old" / "study.json").write_text(json.dumps(held))
    with pytest.raises(StudyError) as e:
        check_study(args)
    assert "started by an earlier posesplat-study" in str(e.value) and "\n" not in str(e.value)
    (tmp_path / "s" / "old" / "study.json").write_text(json.dumps({**held, "state_format": STATE_FORMAT}))
    assert check_study(args).info["state_format"] == STATE_FORMAT
