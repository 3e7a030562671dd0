"""Planted-truth simulation of the confirm stage: how often the decision is right, wrong, or inconclusive.

`python -m study.simulate [--studies N]` generates confirm-stage outputs in the schema the analysis reads. These are the
per-trial table of study.analysis.load.trial_summary, the trials table and the plan (`write_study` writes them as a
real study folder). They have known differences between the modes and noise at least that measured in a real confirm
stage. It runs study.analysis.decide on each. It prints the rates of every call and the coverage of the 95% intervals
(and with --write, puts them into docs/analysis.md). tests/test_decide.py asserts the rates."""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from posesplat.io import atomic_write
from posesplat.modes import MODES as REGISTRY
from study.analysis import tuning
from study.analysis.bank import BankError, load_bank
from study.analysis.decide import EITHER, INCONCLUSIVE, call_rates, decide
from study.analysis.looks import common_share, looks_json, plan_looks
from study.analysis.replay import ReplayDesign, replay_table
from study.base.space import MODE_KEY, load_space
from study.base.rows import COMPLETED, FAILED

QUALITY = ("test_heldout_iou", "test_heldout_psnr_fg")
LEVELS = {"test_heldout_iou": 0.82, "test_heldout_psnr_fg": 16.5, "test_heldout_psnr": 29.0}


@dataclass(frozen=True)
class Noise:
    """Relative standard deviations of the per-(seed, frame) difference between the modes (seed, frame, rest), of
    the levels both modes share (a seed's luck, a frame's difficulty), and of the per-pair cost ratio.

    Defaults are at least those measured in the CPU comparison space's confirm stage (docs/analysis.md). The relative
    difference of IoU has sd 0.96% (seed), 1.00% (frame), 1.13% (rest). That of foreground PSNR has 0.67%, 0.27%,
    0.53%. The cost ratio of a pair has 1.8% on a quiet machine."""

    seed: float = 0.0105
    frame: float = 0.0105
    resid: float = 0.015
    shared_seed: float = 0.01
    shared_frame: float = 0.05
    cost: float = 0.20


@dataclass(frozen=True)
class Truth:
    """A planted truth: the challenger's quality and cost relative to the reference's, and the calls that are right
    and that are in the wrong direction for it."""

    name: str
    quality: float  # relative difference of every quality metric, e.g. -0.05: 5% worse
    cost: float  # relative difference of the primary cost, e.g. -0.3: 30% cheaper
    right: tuple[str, ...]
    wrong: tuple[str, ...]


MODES = ("2d", "3d")  # the simulated pair is the default comparison: the truths below name its modes
TRUTHS = [
    Truth("2D 5% worse", -0.05, 0.0, ("3d",), ("2d", EITHER)),
    Truth("2D 0.5% worse, 30% faster", -0.005, -0.3, ("2d",), ("3d",)),
    Truth("identical quality, 2D 30% faster", 0.0, -0.3, ("2d",), ("3d",)),
    Truth("2D 3% worse, 30% faster", -0.03, -0.3, ("3d",), ("2d", EITHER)),
    Truth("2D 2.1% worse, 30% faster (border)", -0.021, -0.3, ("3d", INCONCLUSIVE), ("2d", EITHER)),
    Truth("2D 1.9% worse, 30% faster (border)", -0.019, -0.3, ("2d", INCONCLUSIVE), ("3d",)),
    Truth("2D 1.9% worse, equal cost (border)", -0.019, 0.0, ("3d", INCONCLUSIVE, EITHER), ("2d",)),
    Truth("identical, equal cost (null)", 0.0, 0.0, (EITHER, INCONCLUSIVE), ("2d", "3d")),
    Truth("2D 1% better, equal cost", 0.01, 0.0, ("2d", EITHER, INCONCLUSIVE), ("3d",)),
]


def make_plan(seeds: int, frames: int, margin: float = 0.02, cost_margin: float = 0.05) -> dict:
    """A confirm plan as study.analysis.confirm.plan_confirm writes it (the fields study.analysis.decide reads)."""
    seed_list = [10_000 + i for i in range(seeds)]
    return {"format": 1, "written": "2026-01-01T00:00:00+00:00", "cell": {"grid_size": 32, "max_frames": None},
            "modes": list(MODES), "margin": margin, "quality": list(QUALITY), "cost": "epoch_time_s",
            "cost_margin": cost_margin, "min_seeds": seeds, "max_seeds": seeds, "select": "valid_heldout_iou",
            "epochs": 8, "test_frames": frames, "seeds": seed_list, "planning": {}, "notes": [],
            "hparams": {m: {"lr": 1e-3, "from_trial": "x"} for m in MODES},
            "trials": [{"grid_size": 32, "max_frames": None, MODE_KEY: m, "seed": s, "lr": 1e-3}
                       for s in seed_list for m in MODES]}


def generate(truth: Truth, seeds: int, frames: int, noise: Noise, rng: np.random.Generator,
             fail: Optional[dict[str, int]] = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-trial table, trials table) of one simulated confirm stage; `fail`: mode -> how many of its trials
    failed (the first seeds)."""
    seed_ids = [10_000 + i for i in range(seeds)]
    frame_ids = list(range(200, 200 + frames))
    rows, trials = [], []
    shape = (seeds, frames)
    per_key = {}
    for key in (*QUALITY, "test_heldout_psnr"):
        shared = (1 + rng.normal(0, noise.shared_seed, (seeds, 1)) + rng.normal(0, noise.shared_frame, (1, frames))
                  + rng.normal(0, noise.resid, shape))
        ref = LEVELS[key] * shared
        diff = (rng.normal(0, noise.seed, (seeds, 1)) + rng.normal(0, noise.frame, (1, frames))
                + rng.normal(0, noise.resid, shape))
        q = truth.quality if key in QUALITY else 0.0
        per_key[key] = {"3d": ref, "2d": LEVELS[key] * (1 + q) * (shared + diff)}
    t_ref = 2.0 * np.exp(rng.normal(0, 0.1, seeds))  # machine load, shared by a pair that runs side by side
    t = {"3d": t_ref, "2d": t_ref * (1 + truth.cost) * np.exp(rng.normal(0, noise.cost, seeds))}
    for i, s in enumerate(seed_ids):
        for m in MODES:
            tid = f"{m}-{s}"
            failed = i < (fail or {}).get(m, 0)
            trials.append({"study": "sim", "trial_id": tid, MODE_KEY: m, "seed": s,
                           "status": FAILED if failed else COMPLETED,
                           "error": "NonFiniteLossError: simulated" if failed else None})
            if failed:
                continue
            row = {"study": "sim", "trial_id": tid, MODE_KEY: m, "grid_size": 32, "max_frames": 0, "seed": s,
                   "lr": 1e-3, "epoch": 8, "selected_epoch": 8, "epochs_run": 8, "valid_heldout_iou": 0.8,
                   "valid_heldout_psnr": 28.0,
                   "epoch_time_s": float(t[m][i]), "cpu_peak_rss_growth_mb": 100.0, "render_ms": 3.0,
                   "params_per_gaussian": float(REGISTRY[m].params_per_gaussian), "test_frames": frame_ids,
                   "status": COMPLETED}
            for key, v in per_key.items():
                row[key] = float(v[m][i].mean())
                row[f"{key}_frames"] = v[m][i].tolist()
            rows.append(row)
    return pd.DataFrame(rows), pd.DataFrame(trials)


def rates(truth: Truth, seeds: int, frames: int, noise: Noise = Noise(), n: int = 400, seed: int = 0) -> dict:
    """Share of each call over n simulated studies, and the coverage of the quality metrics' 95% intervals."""
    rng = np.random.default_rng(seed)
    plan = make_plan(seeds, frames)
    calls, covered = [], []
    for _ in range(n):
        per, trials = generate(truth, seeds, frames, noise, rng)
        d = decide(per, trials, plan, report_all=False)
        calls.append(d.recommendation)
        covered += [e.lo <= truth.quality <= e.hi for e in d.quality.values()]
    return {"truth": truth.name, "seeds": seeds, "frames": frames, "n": n,
            **call_rates(calls, truth.right, truth.wrong), "coverage": float(np.mean(covered))}


@dataclass(frozen=True)
class Landscape:
    """A planted truth for the whole procedure (tuning included). Each mode's expected score against lr is
    level * (1 - curvature * (log10 lr - log10 opt)^2). With `tent` slopes it is
    level * (1 - slope * |log10 lr - log10 opt|) (slope per decade below and above the optimum). Each mode's optimum
    is `at` a multiple of the centre of the design's first tuning grid. Each mode's primary cost is planted relative
    to the reference's. The estimand is the
    relative difference at each mode's own optimum: level[2d] / level[3d] - 1."""

    name: str
    at: tuple[float, float]  # (2d, 3d) optimum / the first grid's geometric centre
    level: tuple[float, float]  # (2d, 3d) score at the optimum
    curvature: tuple[float, float] = (0.12, 0.12)  # measured at the CPU confirm cell: about 4% lost 0.6 decades away
    cost: float = 0.0
    right: tuple[str, ...] = ()
    wrong: tuple[str, ...] = ()
    tent: Optional[tuple[tuple[float, float], tuple[float, float]]] = None  # (2d, 3d) slopes (below, above)
    hetero: float = 0.0  # a tuning run's own noise sd grows by exp(hetero) per decade above the grid's centre
    tails: Optional[float] = None  # a tuning run's own noise: Student's t with these degrees of freedom (same sd)

    def noise(self, rng: np.random.Generator, sd: float, lr: float, centre: float) -> float:
        """A tuning run's own relative noise at lr: Gaussian, or t-distributed (`tails`), its sd scaled by
        `hetero` above the centre."""
        sd = sd * math.exp(self.hetero * max(0.0, math.log10(lr / centre)))
        if self.tails is None:
            return float(rng.normal(0, sd))
        return float(rng.standard_t(self.tails) * sd * math.sqrt((self.tails - 2) / self.tails))

    def score(self, mode: str, lr: float, centre: float) -> float:
        i = MODES.index(mode)
        d = math.log10(lr) - math.log10(self.at[i] * centre)
        if self.tent:
            return self.level[i] * (1 - self.tent[i][0 if d < 0 else 1] * abs(d))
        return self.level[i] * (1 - self.curvature[i] * d ** 2)

    @property
    def estimand(self) -> float:
        return self.level[0] / self.level[1] - 1


L = LEVELS["test_heldout_iou"]
MEASURED_TENT = ((0.08, 0.06), (0.04, 0.06))  # (2d, 3d) relative score lost per decade (below, above) the optimum,
# from the validation curves of table 5 of docs/benchmarks.md (2d: 2.4% and 1.6% lost one grid step, 0.3 decades,
# below and above; 3d: 1.2% and 1.9%)
LANDSCAPES = [
    Landscape("2D 5% worse at both optima", (1, 1), (0.95 * L, L), right=("3d",), wrong=("2d", EITHER)),
    Landscape("equal at the optima, 2D 4% worse at 3D's optimum", (2.5, 1), (L, L), (0.25, 0.12),
              right=(EITHER, INCONCLUSIVE), wrong=("2d", "3d")),
    Landscape("2D 0.5% worse and 30% faster at the optima", (1, 1), (0.995 * L, L), cost=-0.3,
              right=("2d",), wrong=("3d",)),
    Landscape("2D 3% worse and 30% faster at the optima", (1, 1), (0.97 * L, L), cost=-0.3,
              right=("3d",), wrong=("2d", EITHER)),
    Landscape("identical (null)", (1, 1), (L, L), right=(EITHER, INCONCLUSIVE), wrong=("2d", "3d")),
    Landscape("identical, 2D's optimum near the range's top end", (3.2, 1), (L, L),
              right=(EITHER, INCONCLUSIVE), wrong=("2d", "3d")),
    Landscape("identical, both optima beyond the first range", (12, 12), (L, L),
              right=(EITHER, INCONCLUSIVE), wrong=("2d", "3d")),
    Landscape("2D 5% worse, peaked curves as measured", (1.2, 0.8), (0.95 * L, L), right=("3d",), wrong=("2d", EITHER),
              tent=MEASURED_TENT),
    Landscape("2D 0.5% worse and 30% faster, peaked curves as measured", (1.2, 0.8), (0.995 * L, L), cost=-0.3,
              right=("2d",), wrong=("3d",), tent=MEASURED_TENT),
    Landscape("identical, peaked curves as measured, optima between values", (1.41, 0.71), (L, L),
              right=(EITHER, INCONCLUSIVE), wrong=("2d", "3d"), tent=MEASURED_TENT),
    Landscape("equal at the optima, 3D 30% cheaper (a slower challenger)", (1, 1), (L, L), cost=1 / 0.7 - 1,
              right=("3d", INCONCLUSIVE), wrong=("2d",)),
    Landscape("2D 2.1% worse and 30% faster (border)", (1, 1), (0.979 * L, L), cost=-0.3,
              right=("3d", INCONCLUSIVE), wrong=("2d", EITHER)),
    Landscape("2D 1.9% worse and 30% faster (border)", (1, 1), (0.981 * L, L), cost=-0.3,
              right=("2d", INCONCLUSIVE), wrong=("3d",)),
    Landscape("identical, tuning noise 3x larger at the range's top (heteroscedastic)", (1.41, 0.71), (L, L),
              right=(EITHER, INCONCLUSIVE), wrong=("2d", "3d"), hetero=math.log(3) / math.log10(4)),
    Landscape("2D 5% worse, heavy-tailed tuning noise (t, 3 df)", (1, 1), (0.95 * L, L), right=("3d",),
              wrong=("2d", EITHER), tails=3.0),
    Landscape("identical, heavy-tailed and heteroscedastic tuning noise, peaked curves", (1.41, 0.71), (L, L),
              right=(EITHER, INCONCLUSIVE), wrong=("2d", "3d"), tent=MEASURED_TENT, tails=3.0,
              hetero=math.log(3) / math.log10(4)),
]
TUNE_NOISE = (0.005, 0.015)  # relative sd of a tuning run's validation score: shared by a seed's pair, its own
# (table 5 of docs/benchmarks.md: 0.6% to 2.7% per seed at the CPU confirm cell's values near the optimum)


def simulate_tuning(spec, land: Landscape, rng: np.random.Generator,
                    noise: tuple[float, float] = TUNE_NOISE) -> dict:
    """The deciding tuning's rounds (study.analysis.tuning, the same loop as study.runner.run.run_tuning) on planted
    scores; its outcome (study.analysis.tuning.summary)."""
    runs: list = []
    centre = math.sqrt(spec.low * spec.high)
    seed_luck = rng.normal(0, noise[0], spec.seeds)
    for r in range(spec.max_widen + 1):
        values = tuning.next_values(spec, MODES, runs)
        if not values:
            break
        runs += [tuning.TuningRun(m, v, s, land.score(m, v, centre) * (1 + seed_luck[s] + land.noise(rng, noise[1], v,
                                                                                               centre)), r)
                 for m, vs in values.items() for v in vs for s in range(spec.seeds)]
    return tuning.summary(spec, MODES, runs)


def procedure_rates(land: Landscape, spec, seeds: int, frames: int, noise: Noise = Noise(), n: int = 200,
                    seed: int = 0, conditional: bool = False, looks: int = 1, boundaries: str = "obrien-fleming"
                    ) -> dict:
    """The whole procedure on a planted landscape, n times: the deciding tuning (real selection and widening), the
    confirm stage at the chosen values (simulated as in `rates`), the real decision (with the tuning's error in its
    intervals). Rates of each call, and the coverage of the IoU interval for the estimand (the difference at the
    optima) at the level decided at and at 95% (`coverage_95`: the look's 95% interval). Also the mean trials of the
    tuning and of the whole tuning + confirm procedure. `conditional`: decide as if the
    chosen values were given (no tuning error in the intervals, no edge rule), as before the estimand. `looks`:
    sequential looks at `boundaries` (study.analysis.looks.plan_looks); a study that stops at an interim look uses only
    its pairs."""
    rng = np.random.default_rng(seed)
    base = {**make_plan(seeds, frames), "looks": looks_json(plan_looks(seeds, looks, boundaries))}
    centre = math.sqrt(spec.low * spec.high)
    calls, covered, covered95, trials, pairs = [], [], [], [], []
    for _ in range(n):
        tuned = simulate_tuning(spec, land, rng)
        at = land.score("2d", tuned["2d"]["chosen"], centre) / land.score("3d", tuned["3d"]["chosen"], centre) - 1
        per, tt = generate(Truth(land.name, at, land.cost, land.right, land.wrong), seeds, frames, noise, rng)
        if conditional:
            plan = base
        else:  # the looks' levels for the common error, as study.analysis.confirm.looks_common plans them
            common = common_share(tuning.rms(tuning.tuning_draws(tuned, MODES)) ** 2, noise.seed ** 2,
                                  noise.frame ** 2, noise.resid ** 2, seeds, frames)
            plan = {**base, "tuning": tuned, "looks": looks_json(plan_looks(seeds, looks, boundaries, common=common))}
        d = decide(per, tt, plan, report_all=False)
        calls.append(d.recommendation)
        e = d.quality["test_heldout_iou"]
        covered.append(e.lo <= land.estimand <= e.hi)
        e95 = e.with_level(0.95)
        covered95.append(e95.lo <= land.estimand <= e95.hi)
        trials.append(sum(sum(o["curve"]["runs"]) + sum(o["curve"]["diverged"]) for o in tuned.values()))
        pairs.append(d.design["look"]["pairs"])
    return {"truth": land.name, "seeds": seeds, "frames": frames, "n": n, **call_rates(calls, land.right, land.wrong),
            "coverage": float(np.mean(covered)), "coverage_95": float(np.mean(covered95)),
            "tuning_trials": float(np.mean(trials)),
            "confirm_trials": 2 * float(np.mean(pairs)), "trials": float(np.mean(trials)) + 2 * float(np.mean(pairs)),
            "looks": looks, "boundaries": boundaries}


def write_study(root: Path, per: pd.DataFrame, trials: pd.DataFrame, plan: dict, name: str = "sim",
                checkpoints: Optional[dict[str, Path]] = None) -> Path:
    """A study folder with a confirm stage, as study.runner.run writes it: confirm/metrics parts (one per trial at its
    scored epoch), confirm/trials.parquet (with `checkpoints[mode]` as every trial's checkpoint), confirm/plan.json,
    and study.json unless the folder has one (an explore stage written before)."""
    d = root / name
    (d / "confirm" / "metrics").mkdir(parents=True)
    trials = trials.assign(checkpoint_path=[str((checkpoints or {}).get(m)) if (checkpoints or {}).get(m) else None
                                            for m in trials[MODE_KEY]])
    for _, r in per.iterrows():
        row = {k: v for k, v in r.items() if k not in ("selected_epoch", "epochs_run", "status")}
        row.update(study=name, checkpoint_bytes=1_000_000, mem_kind="cpu_rss_delta", device="cpu",
                   timestamp=pd.Timestamp("2026-01-01", tz="UTC"))
        types = {k: pa.list_(pa.int64() if k == "test_frames" else pa.float64()) for k in row if
                 k.endswith("_frames") and isinstance(row[k], list)}
        table = pa.Table.from_pylist([row])
        for k, typ in types.items():
            table = table.set_column(table.column_names.index(k), k, table[k].cast(typ))
        pq.write_table(table, d / "confirm" / "metrics" / f"part-{r['trial_id']}-{int(r['epoch']):04d}.parquet")
    pq.write_table(pa.Table.from_pandas(trials.assign(study=name), preserve_index=False),
                   d / "confirm" / "trials.parquet")
    (d / "confirm" / "plan.json").write_text(json.dumps(plan))
    if not (d / "study.json").exists():
        (d / "study.json").write_text(json.dumps({"space": {"name": name, "modes": list(MODES)}}))
    return d


DESIGNS = [("CPU comparison (shipped: 14 seeds x 33 test frames)", 14, 33),
           ("10 seeds x 33 test frames", 10, 33),
           ("12 seeds x 100 test frames", 12, 100),
           ("GPU comparison (shipped: 24 seeds x 100 test frames)", 24, 100),
           ("few test frames (14 seeds x 8 frames)", 14, 8)]


def table(n: int, designs=DESIGNS, truths=TRUTHS) -> pd.DataFrame:
    out = []
    for label, s, f in designs:
        for i, t in enumerate(truths):
            r = rates(t, s, f, n=n, seed=i)
            out.append({"design": label, **r})
    return pd.DataFrame(out)


def markdown(df: pd.DataFrame) -> str:
    pct = lambda v: f"{100 * v:.1f}%"  # noqa: E731
    shown = df.assign(**{k: df[k].map(pct) for k in ("2d", "3d", EITHER, INCONCLUSIVE, "right", "wrong", "coverage")})
    return shown[["design", "truth", "2d", "3d", EITHER, INCONCLUSIVE, "right", "wrong", "coverage"]].to_markdown(
        index=False)


MARK_BEGIN, MARK_END = "<!-- simulate:begin -->", "<!-- simulate:end -->"
PROC_BEGIN, PROC_END = "<!-- simulate-procedure:begin -->", "<!-- simulate-procedure:end -->"


class Design(NamedTuple):
    """A confirm design as the procedure simulation runs it."""

    name: str  # "CPU comparison"
    tune: object  # study.base.space.Tune
    seeds: int  # confirm pairs
    frames: int  # test frames
    looks: int
    boundaries: str

    def label(self, looks: Optional[int] = None) -> str:
        """The table's name for the design, or for its variant with `looks` looks (1: the fixed design)."""
        k = self.looks if looks is None else looks
        return (f"{self.name} (tuning {self.tune.points} x {self.tune.seeds} seeds, {self.seeds} pairs x "
                f"{self.frames} frames, " + ("fixed design)" if k == 1 else f"{k} looks, {self.boundaries})"))


def procedure_designs() -> list[Design]:
    """The shipped comparison space's confirm designs at both scales."""
    space = load_space("comparison")
    cpu, gpu = space.scaled(False).confirm, space.confirm
    return [Design(f"{name} comparison", c.tune, c.min_seeds, f, c.looks, c.boundaries)
            for name, c, f in (("CPU", cpu, 33), ("GPU", gpu, 100))]


def procedure_table(n: int, designs=None, landscapes=LANDSCAPES, fixed: bool = True) -> pd.DataFrame:
    """Rates of the whole procedure per (design, landscape); `fixed` adds each design's one-look variant, so the
    table shows what the looks save."""
    out = []
    for d in designs or procedure_designs():
        for k in [d.looks] + ([1] if fixed and d.looks > 1 else []):
            for i, land in enumerate(landscapes):
                out.append({"design": d.label(k), **procedure_rates(land, d.tune, d.seeds, d.frames, n=n, seed=i,
                                                                    looks=k, boundaries=d.boundaries)})
    return pd.DataFrame(out)


def procedure_markdown(df: pd.DataFrame) -> str:
    pct = lambda v: f"{100 * v:.1f}%"  # noqa: E731
    rates_ = ("2d", "3d", EITHER, INCONCLUSIVE, "right", "wrong", "coverage", "coverage_95")
    shown = df.assign(**{k: df[k].map(pct) for k in rates_},
                      **{k: df[k].map(lambda v: f"{v:.1f}") for k in ("confirm_trials", "trials")})
    return shown[["design", "truth", *rates_, "confirm_trials", "trials"]].to_markdown(index=False)


def replace_between(text: str, begin: str, end: str, body: str) -> str:
    i, j = text.index(begin), text.index(end)
    return text[: i + len(begin)] + f"\n{body}\n" + text[j:]


REPLAY_BEGIN, REPLAY_END = "<!-- replay:begin -->", "<!-- replay:end -->"


def replay_markdown(df: pd.DataFrame) -> str:
    """The replay's table: calls, right and wrong, coverage of the IoU interval and of the tuning's draws."""
    pct = lambda v: f"{100 * v:.1f}%"  # noqa: E731
    rates_ = ("2d", "3d", EITHER, INCONCLUSIVE, "right", "wrong", "coverage", "coverage_95", "tuning_coverage")
    shown = df.assign(**{k: df[k].map(pct) for k in rates_},
                      truth=[t + (" (split bank)" if s else "") for t, s in zip(df["truth"], df["split"])],
                      estimand=df["estimand"].map(lambda v: f"{100 * v:+.2f}%"),
                      tuning_rms=df["tuning_rms"].map(pct), trials=df["trials"].map(lambda v: f"{v:.1f}"))
    return shown[["truth", "estimand", *rates_, "tuning_rms", "trials"]].to_markdown(index=False)


def replay_main(a: argparse.Namespace) -> int:
    """`--bank`: the whole procedure replayed on a bank of real runs (study.analysis.replay)."""
    try:
        bank = load_bank(a.bank)
    except BankError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    design = ReplayDesign.from_space(load_space(a.space).scaled(a.gpu))
    print(f"replay: {design.name} ({'GPU' if a.gpu else 'CPU'} design: tuning {design.confirm.tune.points} values x "
          f"{design.confirm.tune.seeds} seeds, {design.pairs} pairs, {design.confirm.looks} look(s)) on {bank.source}: "
          f"{len(bank.seeds)} seeds x {len(bank.values)} values x {len(bank.modes)} modes, {a.replays} replays per "
          f"truth", flush=True)
    md = replay_markdown(replay_table(bank, design, a.replays))
    print(md)
    if a.write:
        doc = Path(__file__).resolve().parents[2] / "docs" / "analysis.md"
        atomic_write(doc, replace_between(doc.read_text(), REPLAY_BEGIN, REPLAY_END, md))
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m study.simulate", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--studies", type=int, default=1000, help="simulated studies per (design, truth)")
    p.add_argument("--write", action="store_true", help="replace the table in docs/analysis.md")
    p.add_argument("--procedure-studies", type=int, default=300,
                   help="simulated whole procedures (tuning included) per (design, landscape)")
    p.add_argument("--bank", help="replay the whole procedure on this bank of real runs (a bench.reference "
                                  "runs.jsonl or its folder) instead of simulating")
    p.add_argument("--replays", type=int, default=500, help="with --bank: replays per truth")
    p.add_argument("--space", default="comparison", help="with --bank: the space whose design is replayed")
    p.add_argument("--gpu", action="store_true", help="with --bank: the space's GPU design (default: its CPU one)")
    a = p.parse_args(argv)
    if a.bank:
        return replay_main(a)
    md = markdown(table(a.studies))
    print(md)
    proc = procedure_markdown(procedure_table(a.procedure_studies))
    print(proc)
    if a.write:
        doc = Path(__file__).resolve().parents[2] / "docs" / "analysis.md"
        text = replace_between(doc.read_text(), MARK_BEGIN, MARK_END, md)
        atomic_write(doc, replace_between(text, PROC_BEGIN, PROC_END, proc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
