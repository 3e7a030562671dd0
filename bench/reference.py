"""Brute force at one cell: `python -m bench.reference --space comparison [--lrs ...] [--seeds N] [--write]`.

Trains each mode of the space's confirm block at its confirm cell, with exactly the confirm stage's training config
(study.base.space.confirm_config), over a log grid of learning rates and several seeds, outside the study's search and
without Ray. Prints each mode's validation and test curve against lr. Also each mode's optimum, chosen on the mean
validation score as the study chooses. And the difference of the two modes at their optima with its interval (paired by
seed, over seeds and test frames: study.analysis.crossed.crossed_diff). It is how a user checks a study's verdict against
brute force. Runs are appended to `<out>/runs.jsonl` as they finish: running the command again resumes."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from datetime import datetime, timezone
from multiprocessing import get_context
from pathlib import Path
from typing import Optional

import numpy as np
from scipy.stats import skew

from posesplat.config import make_config
from posesplat.io import atomic_write
from posesplat.metrics import FRAMES, frame_column
from posesplat.progress import Progress
from study.base.space import MODE_KEY, confirm_trial_config, load_space
from study.analysis.bank import read_runs
from study.analysis.crossed import crossed_diff
from study.analysis.tuning import BRACKETED, best_index, curve, edge, log_grid

ROOT = Path(__file__).resolve().parents[1]
SEED_OFFSET = 50_000  # reference seeds never equal a study's trial seeds
KEEP = ("valid_heldout_iou", "valid_heldout_psnr", "valid_heldout_psnr_fg", "test_heldout_iou", "test_heldout_psnr",
        "test_heldout_psnr_fg", "epoch_time_s")  # every deciding metric on validation and test, and the cost


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.reference", description=__doc__.splitlines()[0])
    p.add_argument("--space", default="comparison", help="search space (its confirm block names cell and modes)")
    p.add_argument("--gpu", action="store_true", help="the space at GPU scale (default: its CPU scale-down)")
    p.add_argument("--dataset", default="data/synthetic_mouse.zarr")
    p.add_argument("--lrs", type=float, nargs="*", help="learning rates (default: --low..--high, --points)")
    p.add_argument("--low", type=float, default=5e-4)
    p.add_argument("--high", type=float, default=6.4e-2)
    p.add_argument("--points", type=int, default=8)
    p.add_argument("--seeds", type=int, default=4, help="seeds per (mode, lr); the same seeds for every mode")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="runs at once (one thread each)")
    p.add_argument("--out", help="folder of the runs (default studies/reference-<space>)")
    p.add_argument("--write", action="store_true", help="put the table into docs/benchmarks.md")
    return p.parse_args(argv)


def run_one(cfg: dict) -> dict:
    """Train one configuration in this process (one thread); the last epoch's decision metrics. A run whose loss
    diverges is a result, as in the study's tuning (its scores NaN, its error kept), not a crash of the bank."""
    import torch  # deferred: torch and the model load in the spawned workers, not in the driver

    from posesplat.train import NonFiniteLossError, train  # deferred: as torch, in the workers only

    torch.set_num_threads(1)
    t0 = time.time()
    head = {MODE_KEY: cfg[MODE_KEY], "lr": cfg["lr"], "seed": cfg["seed"]}
    try:
        last = train(make_config(cfg, "reference run"), progress=False)[-1]
    except NonFiniteLossError as e:
        return {**head, FRAMES: [], "wall_s": time.time() - t0, "error": f"NonFiniteLossError: {e}".splitlines()[0],
                **{k: float("nan") for k in KEEP}}
    keep = {k: float(last[k]) for k in KEEP}
    keep.update({frame_column(k): list(last[frame_column(k)]) for k in KEEP if k.startswith("test_")})
    return {**head, FRAMES: list(last[FRAMES]), "wall_s": time.time() - t0, **keep}


def analyse(runs: list[dict], modes: list[str], select: str = "valid_heldout_iou",
            quality: str = "test_heldout_iou") -> dict:
    """Each mode's curves, its optimum on mean `select`, and the relative difference modes[0] vs modes[1] of
    `quality` at the optima (paired by seed, over seeds x test frames) and at each common lr."""
    out: dict = {"modes": modes, "curves": {}, "optimum": {}}
    for m in modes:
        rows = [r for r in runs if r[MODE_KEY] == m]
        v = curve([r["lr"] for r in rows], [r[select] for r in rows])
        t = curve([r["lr"] for r in rows], [r[quality] for r in rows])
        i = best_index(v)
        out["curves"][m] = {"valid": v.to_json(), "test": t.to_json()}
        out["optimum"][m] = {"lr": v.values[i], "valid": v.mean[i], "test": t.mean[i], "edge": edge(v)}

    def frames(m: str, lr: float) -> dict[int, list[float]]:
        return {r["seed"]: r[frame_column(quality)] for r in runs if r[MODE_KEY] == m and math.isclose(r["lr"], lr)}

    def diff(lr_a: float, lr_b: float):
        fa, fb = frames(modes[0], lr_a), frames(modes[1], lr_b)
        seeds = sorted(set(fa) & set(fb))
        if not seeds:
            return None
        e = crossed_diff(np.array([fa[s] for s in seeds]), np.array([fb[s] for s in seeds]))
        return {"mean": e.mean, "lo": e.lo, "hi": e.hi, "se": e.se, "pairs": e.n, "frames": e.n_frames}

    a, b = (out["optimum"][m]["lr"] for m in modes)
    out["at_optima"] = diff(a, b)
    common = sorted(set(out["curves"][modes[0]]["valid"]["values"]) & set(out["curves"][modes[1]]["valid"]["values"]))
    out["at_same_lr"] = {str(lr): diff(lr, lr) for lr in common}
    return out


def table(res: dict) -> str:
    """The curves and the verdict-relevant numbers as Markdown."""
    m0, m1 = res["modes"]
    lrs = res["curves"][m0]["valid"]["values"]
    lines = [f"| lr | {m0} valid IoU | {m0} test IoU | {m1} valid IoU | {m1} test IoU | {m0} vs {m1} test IoU, same lr |",
             "|---|---|---|---|---|---|"]
    for j, lr in enumerate(lrs):
        cells = []
        for m in (m0, m1):
            c = res["curves"][m]
            k = c["valid"]["values"].index(lr) if lr in c["valid"]["values"] else None
            for part in ("valid", "test"):
                if k is None:
                    cells.append("")
                    continue
                mean, se = c[part]["mean"][k], c[part]["se"][k]
                star = " **opt**" if part == "valid" and math.isclose(res["optimum"][m]["lr"], lr) else ""
                cells.append(f"{mean:.4f} ± {se:.4f}{star}" if se is not None else f"{mean:.4f}{star}")
        d = res["at_same_lr"].get(str(lr))
        cells.append(f"{100 * d['mean']:+.2f}% [{100 * d['lo']:+.2f}, {100 * d['hi']:+.2f}]" if d else "")
        lines.append(f"| {lr:.3g} | " + " | ".join(cells) + " |")
    d = res["at_optima"]
    opt = "; ".join(f"{m} lr {res['optimum'][m]['lr']:.3g} ({'inside the grid' if res['optimum'][m]['edge'] == BRACKETED else 'at the grid edge: widen it'})"
                    for m in (m0, m1))
    lines += ["", f"Optima (best mean validation IoU): {opt}. At the optima, {m0} vs {m1} held-out test IoU: "
                  f"**{100 * d['mean']:+.2f}%** [95% interval {100 * d['lo']:+.2f}, {100 * d['hi']:+.2f}; "
                  f"standard error {100 * d['se']:.2f}%] over {d['pairs']} seed pairs x {d['frames']} test frames "
                  f"(± values in the table: standard errors over seeds)."]
    return "\n".join(lines)


BANK_METRICS = ("valid_heldout_iou", "test_heldout_iou", "valid_heldout_psnr_fg", "test_heldout_psnr_fg", "epoch_time_s")


def bank_markdown(runs: list[dict], modes: list[str]) -> str:
    """The bank's noise per (mode, lr): finite runs, diverged runs, and each metric's mean / sd / skew over seeds;
    below it, how much of a seed's luck two runs on the same seed share (correlation of their test IoU)."""
    head = " | ".join(f"{k} mean / sd / skew" for k in BANK_METRICS)
    lines = [f"| mode | lr | runs | diverged | {head} |", "|---|---|---|---|" + "---|" * len(BANK_METRICS)]
    for m in modes:
        for lr in sorted({r["lr"] for r in runs if r[MODE_KEY] == m}):
            rows = [r for r in runs if r[MODE_KEY] == m and math.isclose(r["lr"], lr)]
            cells = []
            for k in BANK_METRICS:
                x = np.array([r[k] for r in rows], float)
                x = x[np.isfinite(x)]
                cells.append(f"{x.mean():.4g} / {x.std(ddof=1):.2g} / {skew(x):+.1f}" if len(x) > 2 else "")
            lines.append(f"| {m} | {lr:g} | {sum(np.isfinite(r['test_heldout_iou']) for r in rows)} | "
                         f"{sum(not np.isfinite(r['test_heldout_iou']) for r in rows)} | " + " | ".join(cells) + " |")
    return "\n".join(lines + ["", shared_luck(runs, modes)])


def shared_luck(runs: list[dict], modes: list[str], key: str = "test_heldout_iou") -> str:
    """Median correlation over seeds of `key` between two runs that share a seed: of one mode at neighbouring lrs,
    and of the two modes at one lr (finite runs of lrs where every seed is finite)."""
    table = {(r[MODE_KEY], r["lr"], r["seed"]): r[key] for r in runs}
    seeds = sorted({r["seed"] for r in runs})
    lrs = sorted({r["lr"] for r in runs})

    def column(m: str, lr: float) -> Optional[np.ndarray]:
        x = np.array([table.get((m, lr, s), np.nan) for s in seeds], float)
        return x if np.isfinite(x).all() and x.std() > 0 else None

    def corr(pairs) -> str:
        c = [np.corrcoef(a, b)[0, 1] for a, b in pairs if a is not None and b is not None]
        return f"{np.median(c):+.2f} (over {len(c)} pairs of lrs)" if c else "n/a"

    within = corr((column(m, a), column(m, b)) for m in modes for a, b in zip(lrs, lrs[1:]))
    across = corr((column(modes[0], lr), column(modes[1], lr)) for lr in lrs)
    return (f"A seed's luck on {key}, median correlation over seeds: one mode at neighbouring lrs {within}; the two "
            f"modes at one lr {across}.")


def plot(res: dict, path: Path) -> None:
    import matplotlib  # deferred: only for the figure, after the runs

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # deferred: after choosing the Agg backend

    fig, ax = plt.subplots(figsize=(6, 4))
    for m in res["modes"]:
        for part, style in (("valid", "-o"), ("test", "--s")):
            c = res["curves"][m][part]
            ax.errorbar(c["values"], c["mean"], yerr=[0 if s is None else s for s in c["se"]], fmt=style,
                        label=f"{m} {part}", capsize=2)
        ax.axvline(res["optimum"][m]["lr"], color="grey", lw=0.5)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("held-out IoU (mean over seeds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def write_doc(text: str, header: str, doc: Path = ROOT / "docs" / "benchmarks.md",
              title: str = "## 5. Brute-force reference at the confirm cell") -> None:
    """Replace (or append) a section of docs/benchmarks.md (default: the reference's)."""
    body = doc.read_text() if doc.exists() else ""
    head, _, rest = body.partition(title)
    tail = rest[rest.find("\n## "):] if "\n## " in rest else ""
    atomic_write(doc, head.rstrip() + f"\n\n{title}\n\n{header}\n\n{text}\n" + tail)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    space = load_space(args.space).scaled(args.gpu)
    if space.confirm is None:
        print(f"error: space {space.name} has no confirm block (no cell to check)", file=sys.stderr)
        return 2
    if not Path(args.dataset).exists():
        print(f"error: {args.dataset}: no such dataset (make data)", file=sys.stderr)
        return 2
    base = {**space.base_config, "dataset": str(Path(args.dataset).resolve()), "epochs": space.max_epochs,
            "device": "cuda" if args.gpu else "cpu"}
    lrs = args.lrs or log_grid(args.low, args.high, args.points)
    seeds = [SEED_OFFSET + i for i in range(args.seeds)]
    modes = list(space.confirm.modes)
    out = Path(args.out or ROOT / "studies" / f"reference-{space.name}")
    out.mkdir(parents=True, exist_ok=True)
    log = out / "runs.jsonl"
    done = {(r[MODE_KEY], float(r["lr"]), r["seed"]) for r in read_runs(log)}
    todo = [confirm_trial_config(space, base, m, s, {"lr": lr}) for s in seeds for lr in lrs for m in modes
            if (m, float(lr), s) not in done]
    if todo:
        make_config(todo[0], "reference config")  # refuse a bad config before any process starts
    print(f"reference: {space.name} at {json.dumps(space.confirm.cell)}, {len(modes)} modes x {len(lrs)} lrs x "
          f"{len(seeds)} seeds = {len(modes) * len(lrs) * len(seeds)} runs ({len(todo)} to go), {args.jobs} at once; "
          f"runs in {log}", flush=True)
    t0 = time.time()
    if todo:
        with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool, log.open("a") as f:
            futures = [pool.submit(run_one, cfg) for cfg in todo]
            for fut in Progress(as_completed(futures), total=len(futures), desc="reference runs", unit="run"):
                f.write(json.dumps(fut.result()) + "\n")
                f.flush()
                os.fsync(f.fileno())
    runs = [r for r in read_runs(log) if any(math.isclose(r["lr"], lr) for lr in lrs) and r["seed"] in seeds]
    res = analyse(runs, modes)
    res.update(cell=space.confirm.cell, seeds=seeds, lrs=lrs, wall_s=time.time() - t0,
               measured=datetime.now(timezone.utc).strftime("%Y-%m-%d"))
    atomic_write(out / "reference.json", json.dumps(res, indent=1, default=float))
    plot(res, out / "reference.png")
    text = table(res)
    print(text)
    print(f"written: {out / 'reference.json'}, {out / 'reference.png'}")
    if args.write:
        cell = ", ".join(f"{k} {v}" for k, v in space.confirm.cell.items())
        given = (f" --lrs {' '.join(f'{v:g}' for v in args.lrs)}" if args.lrs else "") + \
            (f" --out {args.out}" if args.out else "") + (" --gpu" if args.gpu else "")
        header = (f"Measured {res['measured']} with `python -m bench.reference --space {space.name} --seeds "
                  f"{args.seeds}{given}` ({len(runs)} runs, {args.jobs} at once). Each mode "
                  f"trains at the confirm cell ({cell}) with the confirm stage's training config, at every lr of the "
                  f"grid with the same {len(seeds)} seeds; scores at the last epoch, as the confirm stage scores.")
        write_doc(text, header)
        write_doc(bank_markdown(runs, modes), header.replace("Each mode trains", "The runs are a bank for "
                  "`python -m study.simulate --bank` (docs/analysis.md): each mode trains"),
                  title="## 6. The bank of real runs: the model's noise at the confirm cell")
    return 0


if __name__ == "__main__":
    sys.exit(main())
