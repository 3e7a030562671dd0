"""Search-space files (`search_spaces/NAME.json`): a validated, documented schema (docs/search_spaces.md)."""

from __future__ import annotations

import difflib
import itertools
import json
from pathlib import Path
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from posesplat.config import ConfigError, make_config
from posesplat.messages import one_line, read_json
from posesplat.metrics import METRICS, names, validation_twin
from posesplat.modes import DEFAULT_PAIR, MODES, ModeName

SPACES_DIR = Path(__file__).resolve().parents[2] / "search_spaces"


MODE_KEY = "gaussian_mode"  # the training-config key a space's modes set

class SpaceError(ValueError):
    """A search-space file is missing or invalid; one line naming the file and key."""


class Dist(BaseModel):
    """A continuous search dimension."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["loguniform", "uniform"]
    low: float
    high: float

    @model_validator(mode="after")
    def _check(self) -> "Dist":
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.type == "loguniform" and self.low <= 0:
            raise ValueError("loguniform needs low > 0")
        return self


class Scheduler(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["asha", "none"] = "asha"
    grace_period: int = Field(2, ge=1)
    reduction_factor: float = Field(2.0, gt=1)


class Resources(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cpus_per_trial: float = Field(1.0, gt=0)
    gpus_per_trial: Union[float, Literal["auto"]] = "auto"  # "auto": from the memory model (study/runner/resources.py)
    max_trials_per_gpu: int = Field(8, ge=1)  # "auto" fractions are at least 1/this: compute is not oversubscribed


# what a confirm block may decide on (posesplat.metrics): quality measured per test frame (the analysis bootstraps
# over frames), and costs a trial summarises over its epochs (median time, peak memory)
QUALITY_KEYS = tuple(names("quality", per_frame=True))
COST_KEYS = tuple(m.name for m in METRICS if m.group == "cost" and m.over_epochs in ("median", "max"))


class Tune(BaseModel):
    """The deciding tuning (study/analysis/tuning.py, docs/analysis.md), before the confirm stage. Each mode trains at
    the confirm cell with the confirm stage's training config over a log grid of `key`. It trains `seeds` paired seeds
    per value, with no early stopping. Its choice is the best mean validation score. A choice at an end of the grid
    widens that end by `widen_points` values, at most `max_widen` times; a hard limit of the key is not an end."""

    model_config = ConfigDict(extra="forbid")
    key: str = "lr"
    low: float = Field(gt=0)
    high: float = Field(gt=0)
    points: int = Field(5, ge=3, description="values of the first round's log grid, both ends included")
    seeds: int = Field(2, ge=1, description="paired seeds per value, the same for every mode")
    widen_points: int = Field(2, ge=1)
    max_widen: int = Field(2, ge=0, description="rounds of widening at most (then the decision is inconclusive)")
    hard_low: Optional[float] = Field(None, description="a limit of the key below which no value exists")
    hard_high: Optional[float] = None

    @model_validator(mode="after")
    def _check(self) -> "Tune":
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        return self


class Confirm(BaseModel):
    """The comparison the decision rests on, named before any trial runs (docs/search_spaces.md, docs/analysis.md).

    Both modes train at `cell` with hyperparameters fixed from the explore stage, fresh seeds, the full epoch budget
    and no early stopping; the relative difference (modes[0] - modes[1]) / modes[1] of each quality metric is tested
    against `margin`; `cost` decides whether modes[0] is cheaper (by more than `cost_margin`)."""

    model_config = ConfigDict(extra="forbid")
    cell: dict[str, Optional[int]] = Field(description="the primary cell: one value of every grid key")
    modes: list[ModeName] = Field(list(DEFAULT_PAIR), min_length=2, max_length=2,
                                  description="[challenger, reference]")
    margin: float = Field(0.02, gt=0, lt=1, description="equivalence margin, relative")
    quality: list[Literal[QUALITY_KEYS]] = Field(["test_heldout_iou", "test_heldout_psnr_fg"], min_length=1)  # type: ignore[valid-type]
    cost: Literal[COST_KEYS] = "epoch_time_s"  # type: ignore[valid-type]
    cost_margin: float = Field(0.05, ge=0, lt=1, description="smallest relative saving that counts as cheaper")
    min_seeds: int = Field(12, ge=3, description="fewest pairs (the shipped GPU designs: 24, docs/analysis.md)")
    max_seeds: int = Field(24, ge=3)
    select: str = Field("valid_heldout_iou", description="validation metric that fixes each mode's hyperparameters")
    base_config: dict[str, Any] = Field({}, description="training-config keys for the confirm trials only")
    tune: Optional[Tune] = Field(None, description="the deciding tuning at the cell (None: hyperparameters from "
                                                   "the explore stage's best trial in the cell)")
    looks: int = Field(1, ge=1, le=5, description="sequential looks over the planned pairs (study.analysis.looks); "
                                                 "1: the fixed design")
    boundaries: Literal["obrien-fleming", "pocock"] = Field(
        "obrien-fleming", description="the looks' interval levels: O'Brien-Fleming's (strict early looks, the last "
                                      "near 95%) or Pocock's (one level at every look: stops earlier, wider last look)")

    @property
    def other_validation(self) -> list[str]:
        """The validation twins of the quality metrics other than `select`: the deciding tuning records each, so
        that each quality metric gets its own tuning error (study.analysis.decide.metric_draws)."""
        twins = (validation_twin(k) for k in self.quality)
        return [t for t in dict.fromkeys(twins) if t is not None and t != self.select]

    @model_validator(mode="after")
    def _check(self) -> "Confirm":
        if self.min_seeds > self.max_seeds:
            raise ValueError(f"min_seeds ({self.min_seeds}) exceeds max_seeds ({self.max_seeds})")
        if self.modes[0] == self.modes[1]:
            raise ValueError("modes must name two different modes")
        if not self.select.startswith("valid"):
            raise ValueError(f"select '{self.select}': hyperparameters are chosen on validation metrics (valid_*) only")
        return self


class Scale(BaseModel):
    """What changes when no GPU is present (the CPU scale-down)."""

    model_config = ConfigDict(extra="forbid")
    base_config: dict[str, Any] = {}
    confirm: dict[str, Any] = {}  # overrides of the confirm block
    grid: dict[str, list[Optional[int]]] = {}
    search: dict[str, Dist] = {}
    max_epochs: Optional[int] = Field(None, ge=1)
    samples_per_cell: Optional[int] = Field(None, ge=1)
    cpus_per_trial: Optional[float] = Field(None, gt=0)


class Space(BaseModel):
    """One study definition."""

    model_config = ConfigDict(extra="forbid")
    name: str
    description: str = ""
    base_config: dict[str, Any] = {}
    modes: list[ModeName] = list(DEFAULT_PAIR)
    grid: dict[str, list[Optional[int]]] = {"grid_size": [48], "max_frames": [30]}  # max_frames null: all frames
    search: dict[str, Dist] = {}
    samples_per_cell: int = Field(1, ge=1, description="trials per (mode, grid cell)")
    max_epochs: int = Field(10, ge=1)
    metric: str = "valid_heldout_iou"
    metric_mode: Literal["max", "min"] = "max"
    scheduler: Scheduler = Scheduler()
    resources: Resources = Resources()
    cpu: Scale = Scale()
    confirm: Optional[Confirm] = None  # None: explore only, and the analysis makes no decision
    # training-config keys fixed for one mode's trials in every stage (e.g. 2DGS's terms for 2d, which the config
    # refuses for 3d): part of each trial's own config, like its mode
    mode_config: dict[ModeName, dict[str, Any]] = {}

    @model_validator(mode="after")
    def _check(self) -> "Space":
        for key in ("grid_size", "max_frames"):
            if key not in self.grid:
                raise ValueError(f"grid must list '{key}'")
        if not self.modes:
            raise ValueError("modes is empty")
        varied = {MODE_KEY, "seed", *self.grid, *self.search, *self.cpu.grid, *self.cpu.search}
        if self.confirm is not None and self.confirm.tune is not None:
            varied.add(self.confirm.tune.key)
        for m, keys in self.mode_config.items():
            if m not in self.modes:
                raise ValueError(f"mode_config: mode '{m}' is not among the space's modes ({', '.join(self.modes)})")
            clash = sorted(set(keys) & varied)
            if clash:
                raise ValueError(f"mode_config.{m}: {', '.join(clash)} varies between trials (mode, seed, grid, "
                                 f"search or tuning), so it cannot be fixed for a mode")
        if self.confirm is not None:
            c = self.confirm
            if sorted(c.cell) != sorted(self.grid):
                raise ValueError(f"confirm.cell must give one value of each grid key ({', '.join(sorted(self.grid))})")
            for k, v in c.cell.items():
                if v not in self.grid[k]:
                    raise ValueError(f"confirm.cell: {k} {v} is not in the grid ({self.grid[k]})")
            missing = [m for m in c.modes if m not in self.modes]
            if missing:
                raise ValueError(f"confirm.modes: {', '.join(missing)} not among the space's modes")
            if c.tune is not None:  # the deciding comparison tunes one key; the others it fixes, by design
                loose = [k for k in self.search if k != c.tune.key and k not in c.base_config]
                if loose:
                    raise ValueError(f"confirm.tune tunes '{c.tune.key}': fix {', '.join(loose)} in "
                                     f"confirm.base_config (the deciding comparison holds the other keys fixed)")
        if self.scheduler.type == "asha":  # Ray's ASHAScheduler asserts grace_period <= max_t
            for where, epochs in (("max_epochs", self.max_epochs), ("cpu.max_epochs", self.cpu.max_epochs)):
                if epochs is not None and self.scheduler.grace_period > epochs:
                    raise ValueError(f"scheduler.grace_period ({self.scheduler.grace_period}) exceeds {where} "
                                     f"({epochs})")
        return self

    def scaled(self, gpu: bool) -> "Space":
        """This space as it runs on a machine with (gpu=True) or without a GPU."""
        if gpu:
            return self
        upd: dict[str, Any] = {"base_config": {**self.base_config, **self.cpu.base_config},
                               "grid": {**self.grid, **self.cpu.grid}, "search": {**self.search, **self.cpu.search}}
        if self.cpu.max_epochs:
            upd["max_epochs"] = self.cpu.max_epochs
        if self.cpu.samples_per_cell:
            upd["samples_per_cell"] = self.cpu.samples_per_cell
        if self.cpu.cpus_per_trial:
            upd["resources"] = {**self.resources.model_dump(), "cpus_per_trial": self.cpu.cpus_per_trial}
        if self.confirm is not None:
            upd["confirm"] = {**self.confirm.model_dump(), **self.cpu.confirm}
        return Space.model_validate({**self.model_dump(), **upd})  # validated again, unlike model_copy

    def mode_keys(self, mode: str) -> dict[str, Any]:
        """The training-config keys the space fixes for `mode`'s trials (mode_config; {} for most modes)."""
        return dict(self.mode_config.get(mode, {}))

    def fixed_keys(self) -> tuple[str, ...]:
        """Every key some mode's trials fix (the HParams columns that tell modes' settings apart)."""
        return tuple(sorted({k for keys in self.mode_config.values() for k in keys}))

    def cells(self) -> list[dict[str, int]]:
        """Every (grid_size, max_frames, ...) combination of the grid."""
        keys = sorted(self.grid)
        return [dict(zip(keys, vals)) for vals in itertools.product(*(self.grid[k] for k in keys))]


def confirm_config(space: Space, base: dict) -> dict:
    """The training config every confirm-cell trial starts from (the tuning rounds', the confirm stage's and the
    reference command's): the study's base, the confirm block's keys, the cell, the full epoch budget."""
    return {**base, **space.confirm.base_config, **space.confirm.cell, "epochs": space.max_epochs}


def trial_keys(cell: dict, mode: str, seed: int, tuned: dict, fixed: dict) -> dict:
    """A trial's own keys over its stage's base config, in the order every stage writes them: its cell, mode, seed,
    tuned values, then the keys the space fixes for the mode (`Space.mode_keys`: they win). The cell is here even
    where the base holds it too (confirm_config): these keys name the trial in run names, plans and trials.parquet."""
    return {**cell, MODE_KEY: mode, "seed": seed, **tuned, **fixed}


def confirm_trial_config(space: Space, base: dict, mode: str, seed: int, tuned: dict) -> dict:
    """The whole training config of a trial at the confirm cell, as the tuning rounds and the confirm stage run it
    (their base, confirm_config, merged under the trial's keys by Tune): for commands that train without Tune."""
    return {**confirm_config(space, base), **trial_keys(space.confirm.cell, mode, seed, tuned, space.mode_keys(mode))}


def with_options(space: Space, samples_per_cell: Optional[int] = None,
                 max_epochs: Optional[int] = None) -> tuple[Space, list[str]]:
    """The space with `--num-samples` / `--max-epochs` applied and validated again; (space, notes for the user).

    A budget below ASHA's grace period caps the grace period at the budget (so `--max-epochs 3` works with any
    space) and says so in a note; values below 1 are refused (SpaceError naming the option)."""
    upd: dict[str, Any] = {}
    notes: list[str] = []
    for opt, key, value in (("--num-samples", "samples_per_cell", samples_per_cell),
                            ("--max-epochs", "max_epochs", max_epochs)):
        if value is None:
            continue
        if value < 1:
            raise SpaceError(f"{opt} {value}: must be at least 1")
        upd[key] = value
    sched = space.scheduler
    if max_epochs is not None and sched.type == "asha" and sched.grace_period > max_epochs:
        notes.append(f"note: --max-epochs {max_epochs} is below the space's ASHA grace period "
                     f"({sched.grace_period}): grace period capped at {max_epochs}")
        upd["scheduler"] = {**sched.model_dump(), "grace_period": max_epochs}
    try:
        return Space.model_validate({**space.model_dump(), **upd}), notes
    except ValidationError as e:
        raise SpaceError(one_line(e, f"{space.name} with options", KNOWN_KEYS)) from None


KNOWN_KEYS = [*Space.model_fields, *Dist.model_fields, *Scheduler.model_fields, *Resources.model_fields,
              *Confirm.model_fields]  # what an unknown key in a space file is compared with ("did you mean")


def find_space(name_or_path: str) -> Path:
    """`NAME` -> search_spaces/NAME.json; a path is taken as is."""
    p = Path(name_or_path)
    if p.suffix == ".json" or p.exists():
        if not p.exists():
            raise SpaceError(f"{p}: no such search-space file")
        return p
    cand = SPACES_DIR / f"{name_or_path}.json"
    if not cand.exists():
        known = sorted(x.stem for x in SPACES_DIR.glob("*.json"))
        raise SpaceError(f"unknown search space '{name_or_path}' (known: {', '.join(known)}; or give a path)")
    return cand


def each_mode(space: Space, values: dict[str, Any], source: str, modes: Optional[list[str]] = None) -> None:
    """Validate `values` as the trials of each mode (default: the space's) get them: with the mode and the keys the
    space fixes for it. A key a mode cannot have, such as 2DGS's normal term for 3d, is refused in one line."""
    for m in modes or space.modes:
        make_config({**values, MODE_KEY: m, **space.mode_keys(m)}, source)  # a trial's keys bar the cell and seed


def load_space(name_or_path: str, extra_modes: list[str] | None = None) -> Space:
    """Read and validate a space; its base config must itself be a valid training config."""
    path = find_space(name_or_path)
    raw = read_json(path, SpaceError, "search-space file")
    try:
        space = Space.model_validate(raw)
    except ValidationError as e:
        raise SpaceError(one_line(e, str(path), KNOWN_KEYS)) from None
    for extra in extra_modes or []:
        if extra not in MODES:
            raise SpaceError(f"--modes: unknown mode '{extra}' (choose from {', '.join(MODES)})")
        if extra not in space.modes:
            space.modes.append(extra)
    for section in (space.base_config, {**space.base_config, **space.cpu.base_config}):
        try:
            make_config(section, f"{path}: base_config")
        except ConfigError as e:
            raise SpaceError(str(e)) from None
    for key in list(space.grid) + list(space.search):
        if key not in make_config({}).model_fields:
            close = difflib.get_close_matches(key, list(make_config({}).model_fields), n=1)
            raise SpaceError(f"{path}: '{key}' is not a training config key" + (f" (did you mean '{close[0]}'?)" if close else ""))
    for gpu in (True, False):  # every cell of the grid, as it runs with and without a GPU, is a valid config
        try:
            scaled = space.scaled(gpu)
        except ValidationError as e:
            raise SpaceError(one_line(e, f"{path} ({'GPU' if gpu else 'cpu'} scale)")) from None
        for cell in scaled.cells():
            try:
                make_config({**scaled.base_config, **cell}, f"{path}: grid cell {json.dumps(cell)}")
                each_mode(scaled, {**scaled.base_config, **cell}, f"{path}: grid cell {json.dumps(cell)}")
            except ConfigError as e:
                raise SpaceError(str(e)) from None
        cell = scaled.cells()[0]
        for key, d in scaled.search.items():  # both ends of every range must be valid config values, in every mode
            for end in ("low", "high"):
                try:
                    each_mode(scaled, {**scaled.base_config, **cell, key: getattr(d, end)},
                              f"{path}: search.{key}.{end} {getattr(d, end):g}{'' if gpu else ' (cpu scale)'}")
                except ConfigError as e:
                    raise SpaceError(str(e)) from None
        if scaled.confirm is not None:
            try:
                each_mode(scaled, {**scaled.base_config, **scaled.confirm.base_config, **scaled.confirm.cell},
                          f"{path}: confirm.base_config", scaled.confirm.modes)
            except ConfigError as e:
                raise SpaceError(str(e)) from None
            t = scaled.confirm.tune
            for end in ("low", "high") if t is not None else ():
                try:
                    each_mode(scaled, {**confirm_config(scaled, scaled.base_config), t.key: getattr(t, end)},
                              f"{path}: confirm.tune.{end} {getattr(t, end):g} ({t.key})", scaled.confirm.modes)
                except ConfigError as e:
                    raise SpaceError(str(e)) from None
    return space
