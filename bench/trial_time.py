"""A trial's time split: `python -m bench.trial_time [--old DIR ...] [--rounds 2] [--trials 2] [--write]`.

Where one confirm-cell trial of the CPU design (the comparison space scaled down, the confirm stage's config, one
thread) spends its wall time: data, the training step's forward, backward and optimiser, evaluation's forward,
rendering, image metrics and geometry, checkpoints. Each part is the time inside the functions that do it, less the
time of any timed function they call (so the parts add up to the trial). With `--old DIR` (a worktree of an earlier
commit; repeat it for several) the same trials run on that code too, the codes alternating in one run: table 7 of
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional, Union

from bench.reference import write_doc

ROOT = Path(__file__).resolve().parents[1]
PARTS = ["setup", "data", "train forward", "backward", "optimiser and checks", "eval forward", "eval render",
         "image metrics", "geometry", "3D body metrics", "checkpoint", "other"]
MODEL_WORK = ("train forward", "backward", "eval forward", "eval render")  # the model's and renderer's own compute
EVAL = "evaluation (panels, tally)"  # evaluate_frame's own time: its share goes to "other"
AHEAD = "data read ahead (a second thread, beside the steps)"  # not part of the trial's sum
LR, SEED = 0.016, 2000  # the trial: bench.reference's seed range, the middle of the CPU tuning grid


class Clock:
    """Exclusive time per label of wrapped functions: a call's time less the time of the wrapped calls inside it.
    Calls from another thread (training's read-ahead) add up under AHEAD, beside the main thread's parts, not in
    them. With `sync` (CUDA) the device is synchronised at every boundary, so kernels count where they were
    launched."""

    def __init__(self, sync: Callable[[], None] = lambda: None):
        self.parts: dict[str, float] = defaultdict(float)
        self.stack: list[list] = []  # [label, time of wrapped calls inside]
        self.sync = sync

    def wrap(self, fn: Callable, label: Union[str, Callable[[Optional[str]], str]]) -> Callable:
        """`fn` timed under `label`, or under label(the enclosing call's label)."""
        clock = self

        @functools.wraps(fn)
        def timed(*args, **kwargs):
            if threading.current_thread() is not threading.main_thread():  # the read-ahead: beside the step
                t0 = time.perf_counter()
                try:
                    return fn(*args, **kwargs)
                finally:
                    clock.parts[AHEAD] += time.perf_counter() - t0
            name = label(clock.stack[-1][0] if clock.stack else None) if callable(label) else label
            clock.stack.append([name, 0.0])
            clock.sync()
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                clock.sync()
                dt = time.perf_counter() - t0
                _, inside = clock.stack.pop()
                clock.parts[name] += dt - inside
                if clock.stack:
                    clock.stack[-1][1] += dt

        return timed


def in_eval(eval_label: str, train_label: str) -> Callable[[Optional[str]], str]:
    """A label that depends on whether the call is part of evaluation or of a training step."""
    return lambda parent: eval_label if parent in (EVAL, eval_label) else train_label


def instrument(clock: Clock) -> None:
    """Wrap the functions a trial spends its time in (those of the code on sys.path; a name an older tree lacks is
    skipped)."""
    import torch  # deferred: the worker's modules come from the tree under test (PYTHONPATH)

    from posesplat import data, model, scores, train  # deferred: the tree under test's modules

    patches = [
        (train, "prepare", "setup"), (train, "build_model", "setup"), (train, "make_optimizer", "setup"),
        (train, "load_frame", "data"), (scores, "load_frame", "data"),
        (data.MultiViewDataset, "gt_geometry", "data"), (data.MultiViewDataset, "gt", "data"),
        (data.MultiViewDataset, "gt_kinds", "data"),
        (train, "train_step", "optimiser and checks"), (model.PoseSplatter, "forward", "train forward"),
        (train, "loss_terms", "train forward"), (torch.Tensor, "backward", "backward"),
        (train, "evaluate_frame", EVAL),
        (model.PoseSplatter, "local_gaussians", in_eval("eval forward", "train forward")),
        (train, "to_world", in_eval("eval forward", "train forward")),
        (train, "render", in_eval("eval render", "train forward")),
        (scores, "render", "eval render"),  # the observed views the surface distance needs: the renderer's work
        (scores, "image_metrics", "image metrics"), (scores, "geometry_errors", "geometry"),
        (scores.Tally, "score_body", "3D body metrics"), (train, "save_checkpoint", "checkpoint"),
    ]
    for owner, name, label in patches:
        if hasattr(owner, name):
            setattr(owner, name, clock.wrap(getattr(owner, name), label))


def trial_config(mode: str, dataset: str, gpu: bool = False) -> dict:
    """The confirm-cell trial of the CPU design, or of the GPU design on CUDA (bench.reference's construction)."""
    from study.base.space import confirm_trial_config, load_space  # deferred: the tree under test's

    space = load_space("comparison").scaled(gpu)
    base = {**space.base_config, "dataset": dataset, "epochs": space.max_epochs, "device": "cuda" if gpu else "cpu"}
    return confirm_trial_config(space, base, mode, SEED, {"lr": LR})


def worker(mode: str, trials: int, dataset: str, gpu: bool = False) -> dict:
    """In this process: one warm-up trial (timed whole: the first trial of a fresh process), then `trials` timed
    trials with their split; returns {"first_s", "import_s", "trials": [{part: s, "total": s}]}."""
    t0 = time.perf_counter()
    import torch  # deferred: timed as the worker's import cost, from the tree under test

    from posesplat.config import make_config  # deferred: as torch
    from posesplat.train import train  # deferred: as torch

    torch.set_num_threads(1)
    cfg = make_config(trial_config(mode, dataset, gpu), "bench trial")
    imported = time.perf_counter() - t0
    folder = tempfile.TemporaryDirectory(prefix="trial-time-")
    ckpt = Path(folder.name) / "checkpoint.pt"  # written every epoch, as a study's trial writes it
    t0 = time.perf_counter()
    train(cfg, ckpt_path=ckpt, progress=False)
    first = time.perf_counter() - t0
    clock = Clock(torch.cuda.synchronize if gpu else lambda: None)
    instrument(clock)
    out = []
    for _ in range(trials):
        clock.parts.clear()
        t0 = time.perf_counter()
        train(cfg, ckpt_path=ckpt, progress=False)
        total = time.perf_counter() - t0
        parts = {p: clock.parts.get(p, 0.0) for p in PARTS if p != "other"}
        parts["other"] = total - sum(parts.values())
        out.append({**parts, "total": total, AHEAD: clock.parts.get(AHEAD, 0.0)})
    return {"import_s": imported, "first_s": first, "trials": out}


def run_worker(tree: Path, mode: str, trials: int, dataset: str, gpu: bool) -> dict:
    """worker() in a fresh process whose posesplat and study come from `tree`."""
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", mode, "--trials", str(trials),
                        "--dataset", dataset, *(["--gpu"] if gpu else [])], capture_output=True, text=True, env=env,
                       cwd=tree)
    if r.returncode:
        raise RuntimeError(f"trial worker on {tree} failed: {r.stderr.strip().splitlines()[-1:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def commit_of(tree: Path) -> str:
    """The short commit a worktree is at: the name of its code in the table."""
    r = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 else tree.name


def measure(trees: dict[str, Path], modes: list[str], rounds: int, trials: int, dataset: str, gpu: bool) -> dict:
    """{(code, mode): [worker results]}: each round runs every (mode, code) once, the codes alternating."""
    got = defaultdict(list)
    for r in range(rounds):
        for mode in modes:
            for code, tree in trees.items():
                print(f"round {r + 1}/{rounds}: {mode} on {code} code", file=sys.stderr, flush=True)
                got[(code, mode)].append(run_worker(tree, mode, trials, dataset, gpu))
    return got


def medians(results: list[dict]) -> dict[str, float]:
    """Per part and total: the median over every timed trial of the workers."""
    trials = [t for w in results for t in w["trials"]]
    return {k: statistics.median(t.get(k, 0.0) for t in trials) for k in [*PARTS, "total", AHEAD]} | {
        "first_s": statistics.median(w["first_s"] + w["import_s"] for w in results), "n": len(trials)}


def table(got: dict, modes: list[str], codes: list[str]) -> str:
    """The markdown table: per part, each code's median seconds per mode and the new code's share."""
    m = {(c, mode): medians(got[(c, mode)]) for c in codes for mode in modes}
    new = codes[-1]
    head = [f"{mode} {c} s" for mode in modes for c in codes] + [f"{mode} {new} share" for mode in modes]
    rows = ["| part | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    for p in [*PARTS, "total"]:
        cells = [f"{m[(c, mode)][p]:.2f}" for mode in modes for c in codes]
        cells += [f"{m[(new, mode)][p] / m[(new, mode)]['total']:.0%}" for mode in modes]
        rows.append(f"| {'**total (a trial)**' if p == 'total' else p} | " + " | ".join(cells) + " |")
    ahead = [f"{m[(c, mode)][AHEAD]:.2f}" for mode in modes for c in codes] + ["" for _ in modes]
    rows.append(f"| {AHEAD} | " + " | ".join(ahead) + " |")
    first = [f"{m[(c, mode)]['first_s']:.2f}" for mode in modes for c in codes] + ["" for _ in modes]
    rows.append("| a fresh process: imports + first trial | " + " | ".join(first) + " |")
    lines = ["\n".join(rows), ""]
    for mode in modes:
        work = sum(m[(new, mode)][p] for p in MODEL_WORK) / m[(new, mode)]["total"]
        ratio = "".join(f"; {c} / {new}: {m[(c, mode)]['total'] / m[(new, mode)]['total']:.2f}x a trial, "
                        f"{m[(c, mode)]['first_s'] / m[(new, mode)]['first_s']:.2f}x a fresh process"
                        for c in codes[:-1])
        lines.append(f"- {mode}: the model's and renderer's forward and backward are {work:.0%} of a trial{ratio} "
                     f"(medians of {m[(new, mode)]['n']} trials).")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.trial_time", description=__doc__.splitlines()[0])
    p.add_argument("--old", type=Path, action="append", default=[],
                   help="a worktree of code to compare with (git worktree add DIR COMMIT); may be repeated")
    p.add_argument("--modes", default="3d,2d")
    p.add_argument("--rounds", type=int, default=2, help="processes per (code, mode), alternating")
    p.add_argument("--trials", type=int, default=2, help="timed trials per process, after one warm-up trial")
    p.add_argument("--dataset", default=str(ROOT / "data" / "synthetic_mouse.zarr"))
    p.add_argument("--gpu", action="store_true", help="the GPU design's trial on CUDA (default: the CPU design's)")
    p.add_argument("--write", action="store_true", help="put the table into docs/benchmarks.md (table 7)")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # one process's trials of this mode (run_worker)
    a = p.parse_args(argv)
    if a.worker:
        print(json.dumps(worker(a.worker, a.trials, a.dataset, a.gpu)))
        return 0
    if not Path(a.dataset).exists():
        print(f"error: {a.dataset}: no such dataset (make data)", file=sys.stderr)
        return 2
    for tree in a.old:
        if not (tree / "posesplat").is_dir():
            print(f"error: --old {tree}: not a checkout of this project (no posesplat/)", file=sys.stderr)
            return 2
    trees = {commit_of(tree): tree.resolve() for tree in a.old} | {"new": ROOT}
    if len(trees) < len(a.old) + 1:
        print("error: --old: two worktrees of one commit", file=sys.stderr)
        return 2
    modes = a.modes.split(",")
    got = measure(trees, modes, a.rounds, a.trials, str(Path(a.dataset).resolve()), a.gpu)
    text = table(got, modes, list(trees))
    print(text)
    if a.write:
        old = "".join(f" --old {tree}" for tree in a.old) + (" --gpu" if a.gpu else "")
        write_doc(text, f"Measured {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC} with " +
                  TABLE_NOTE.format(old=old, rounds=a.rounds, trials=a.trials), title=TITLE)
    return 0


TITLE = "## 7. A trial's time split"
TABLE_NOTE = (
    "`python -m bench.trial_time{old} --rounds {rounds} --trials {trials}`. One confirm-cell trial of the CPU design "
    "(comparison space scaled down: grid 32, 100 frames, 8 epochs of 10 steps, 8 valid and 33 test frames evaluated "
    "once, lr 0.016; with --gpu the GPU design's, on CUDA), one thread, in a process that already ran one trial (a "
    "study's Ray workers run many). Each "
    "part is the time inside the functions that do it less the timed functions they call: data (frames, masks and "
    "true geometry from the store), the step's forward (carving, U-Nets, head, render, loss), backward, the "
    "optimiser with the finiteness checks, evaluation's forward and renders (the renders into the observed views that "
    "the surface distance needs included), image metrics, geometry errors and the 3D body metrics, checkpoints; other "
    "is the rest. Frames read "
    "ahead in the background thread while a step computes are a row of their own, outside the sum. Medians over "
    "processes that alternate between the codes. Ray adds about 0.5 s per trial on top (table 3: 0.21 s per trial "
    "and 40 ms per epoch).")


if __name__ == "__main__":
    sys.exit(main())
