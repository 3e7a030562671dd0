"""Train one configuration: `python -m posesplat.train configs/X.json [--epochs N] [--resume]`.

`train(cfg, ...)` is the loop the study calls: it reports an `EpochReport` (metrics, checkpoint file, image panels)
after every epoch. Checkpoints hold the config, learnable state, optimiser, scheduler, epoch, RNG states, grid crop
and the metrics history: nothing derived (posesplat.checkpoint writes and restores them, and never unpickles).
The run's setup is posesplat.run_setup, the objective posesplat.losses, what evaluation measures posesplat.scores,
peak memory and running out of it posesplat.memory.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from posesplat import metrics as metrics_schema
from posesplat.checkpoint import read as read_checkpoint
from posesplat.checkpoint import restore, save_checkpoint
from posesplat.config import Config, ConfigError, load_config
from posesplat.data import DatasetError, evaluated_frames
from posesplat.io import atomic_write, strict_dumps
from posesplat.losses import geometry_terms, loss_terms, training_loss
from posesplat.memory import OutOfMemoryError, PeakMemory, oom_error
from posesplat.model import PoseSplatter, to_world
from posesplat.modes import MODES
from posesplat.progress import Progress
from posesplat.render import Gaussians, render
from posesplat.run_setup import Setup, build_model, load_frame, prepare
from posesplat.scores import EVAL_KEYS, Tally


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite."""


@dataclass
class EpochReport:
    """What the loop hands to its caller after each epoch."""

    metrics: dict[str, Any]
    checkpoint: Optional[Path]
    images: dict[str, np.ndarray] = field(default_factory=dict)  # name -> uint8 [H, W, 3]


@dataclass
class Run:
    """What every step of a run works with."""

    cfg: Config
    setup: Setup
    model: PoseSplatter
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    steps: int  # per epoch


@dataclass
class EpochRun:
    """What an epoch's training steps leave for its metrics."""

    memory: PeakMemory
    sums: dict[str, float] = field(default_factory=dict)  # the loss and each term, summed over the steps
    counts: dict[str, int] = field(default_factory=dict)  # steps each was computed in (2DGS's terms warm up)
    seconds: float = 0.0


def make_optimizer(cfg: Config, model: torch.nn.Module, total_steps: int
                   ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """Adam at cfg.lr, and its schedule over `total_steps` (cosine down to 5% of lr, or constant)."""
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    if cfg.lr_schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(total_steps, 1), eta_min=0.05 * cfg.lr)
    else:
        sched = torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0)
    return opt, sched


# ----------------------------------------------------------------------------------------------- evaluation


def eval_targets(setup: Setup, split: str) -> list[tuple[str, list[int]]]:
    """The views a frame of `split` is rendered into, each with its metrics' prefix: valid frames into the observed
    and the held-out views, test frames into the held-out ones (none where there are no such views)."""
    if split == "valid":
        targets = [("valid", setup.observed), ("valid_heldout", setup.heldout)]
    else:
        targets = [("test_heldout", setup.heldout)]
    return [(name, views) for name, views in targets if views]


@torch.no_grad()
def evaluate(cfg: Config, setup: Setup, model: PoseSplatter, progress: bool = False,
             ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Valid frames (observed and held-out views) and test frames (held-out views); 3D metric on test frames.

    Besides the means, `test_heldout_{iou,psnr,psnr_fg,ssim}_frames` hold one value per evaluated test frame (the mean over
    its held-out views) and `test_frames` the frame indices, in the same order (lists; empty without held-out views).
    """
    model.eval()
    tally = Tally(setup, model.mode, cfg.image_downsample)
    for split in ("valid", "test"):
        for f in Progress(evaluated_frames(setup.frames[split], cfg.eval_cap(split)), desc=f"evaluating {split} frames",
                          unit="frame", leave=False, disable=not progress):
            evaluate_frame(cfg, setup, model, split, f, tally)
    model.train()
    return tally.metrics(), tally.images


def evaluate_frame(cfg: Config, setup: Setup, model: PoseSplatter, split: str, frame: int, tally: Tally) -> None:
    """Reconstruct `frame` from its observed views, render it into the split's targets (timed) and score it."""
    b = load_frame(setup, frame, setup.observed, cfg.image_downsample)
    local, _ = model.local_gaussians(b["images"], b["masks"], b["viewmats"], b["Ks"], b["centre"], b["heading"])
    g = to_world(local, b["centre"], b["heading"])
    tally.gaussians.append(local.means.shape[0])
    for target, views in eval_targets(setup, split):
        t = load_frame(setup, frame, views, cfg.image_downsample)
        t0 = time.perf_counter()
        out = render(g, model.mode, t["viewmats"], t["Ks"], setup.width, setup.height, setup.backend, setup.background)
        if setup.device.type == "cuda":
            torch.cuda.synchronize()
        tally.rendered(time.perf_counter() - t0, len(views))
        tally.score(target, frame, views, t, out, g)
    if split == "test" and setup.ds.has_gt:
        tally.score_body(model, local.index, frame, g, b)


def evaluate_epoch(run: Run, epoch: int, progress: bool) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Evaluation's metrics and panels every `valid_every` epochs and at the last, with the time it took; NaN
    metrics (metrics.unevaluated) and no panels at the other epochs."""
    cfg = run.cfg
    if epoch % cfg.valid_every != 0 and epoch != cfg.epochs:
        return {**metrics_schema.unevaluated(), "eval_time_s": 0.0}, {}
    t0 = time.perf_counter()
    try:
        evals, images = evaluate(cfg, run.setup, run.model, progress)
    except torch.OutOfMemoryError as e:
        raise oom_error(cfg, run.setup.device, e, f"evaluation (epoch {epoch})") from e
    return {**evals, "eval_time_s": time.perf_counter() - t0}, images


# ----------------------------------------------------------------------------------------------- the step


def nonfinite_diagnosis(cfg: Config, terms: dict, loss: torch.Tensor, g: Gaussians) -> tuple[str, str]:
    """(what was not finite: the Gaussians, a loss term, or only the weighted sum of finite terms; the advice that
    fits it: weights that overflow, else the step size and clipping as it is set)."""
    bad_terms = [k for k, t in terms.items() if not bool(torch.isfinite(t).all())]
    bad_fields = [k for k in ("means", "opacities", "colors", "scales") if not bool(torch.isfinite(getattr(g, k)).all())]
    if not bad_terms and not bad_fields:
        weights = ["img_lambda", "ssim_lambda"] + [w for w in ("dist_lambda", "normal_lambda") if getattr(cfg, w) > 0]
        return (f"non-finite loss {loss.item()} from finite terms ("
                + ", ".join(f"{w} {getattr(cfg, w):g}" for w in weights) + ")",
                f"lower {', '.join(weights[:-1])} or {weights[-1]} (the weighted sum overflows)")
    cause = (f"non-finite Gaussian {', '.join(bad_fields)}" if bad_fields
             else f"non-finite loss term {', '.join(bad_terms)} (loss {loss.item()})")
    clip = f"lower grad_clip (now {cfg.grad_clip:g})" if cfg.grad_clip else "enable grad_clip"
    return cause, f"lower lr or {clip}"


def check_finite(cfg: Config, terms: dict[str, torch.Tensor], loss: torch.Tensor, g: Gaussians, where: str) -> None:
    """Refuse a non-finite loss or non-finite Gaussians (the renderer drops NaN-opacity pairs, so a diverged model
    can still give a finite loss), naming the cause, `where`, and what to change."""
    finite = bool(torch.isfinite(loss)) and all(
        bool(torch.isfinite(t).all()) for t in (g.means, g.opacities, g.colors, g.scales)
    )
    if not finite:
        cause, hint = nonfinite_diagnosis(cfg, terms, loss, g)
        raise NonFiniteLossError(f"{cause} at {where}: {hint}")


def check_gradient(cfg: Config, norm: torch.Tensor, loss: torch.Tensor, where: str) -> None:
    """Refuse a non-finite gradient norm of a finite loss, naming `where` and the weights to lower."""
    if not bool(torch.isfinite(norm)):
        raise NonFiniteLossError(
            f"non-finite gradient (norm {norm.item()}) of the finite loss {loss.item():.4g} at {where}: "
            f"lower img_lambda ({cfg.img_lambda:g}) or ssim_lambda ({cfg.ssim_lambda:g}) if large, else lower lr"
        )


def train_step(run: Run, b: dict[str, torch.Tensor], pick: torch.Tensor, step: int, where: str
               ) -> dict[str, torch.Tensor]:
    """One optimiser step on a frame's observed views `b` (load_frame), rendered into those of `pick`; returns the
    loss and its terms. `step` counts the run's steps from 1 (2DGS's terms warm up by it); `where` names the step in
    errors."""
    cfg, setup = run.cfg, run.setup
    g = run.model(b["images"], b["masks"], b["viewmats"], b["Ks"], b["centre"], b["heading"])
    dist_on, normal_on = geometry_terms(cfg, step, cfg.epochs * run.steps)
    out = render(
        g, cfg.gaussian_mode, b["viewmats"][pick], b["Ks"][pick], setup.width, setup.height,
        setup.backend, setup.background, distortion=dist_on,
    )
    terms = loss_terms(out, b["images"][pick], b["masks"][pick], cfg.ssim_lambda, dist_on, normal_on)
    loss = training_loss(cfg, terms)
    check_finite(cfg, terms, loss, g, where)
    run.opt.zero_grad(set_to_none=True)
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg.grad_clip or float("inf"))
    check_gradient(cfg, norm, loss, where)
    run.opt.step()
    run.sched.step()
    return {"loss": loss, **terms}


# ----------------------------------------------------------------------------------------------- the epoch


def train_epoch(run: Run, epoch: int, epochs: int, progress: bool) -> EpochRun:
    """The epoch's steps over the training frames in an order seeded by the epoch, each on views drawn from the
    same generator, with their peak memory and time; the losses summed for epoch_metrics."""
    cfg, frames = run.cfg, run.setup.frames["train"]
    gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
    order = torch.randperm(len(frames), generator=gen)
    bar = Progress(range(run.steps), desc=f"{cfg.gaussian_mode} epoch {epoch}/{epochs}", disable=not progress,
                   leave=False)
    done = EpochRun(PeakMemory(run.setup.device))
    step_frame = lambda step: frames[int(order[step % len(frames)])]
    load = lambda step: load_frame(run.setup, step_frame(step), run.setup.observed, cfg.image_downsample)
    with done.memory, ThreadPoolExecutor(1, thread_name_prefix="read-ahead") as ahead:
        t0 = time.perf_counter()
        coming = ahead.submit(load, 0)  # the next step's frame is read while this one trains
        for step in bar:
            frame, b = step_frame(step), coming.result()
            if step + 1 < run.steps:
                coming = ahead.submit(load, step + 1)
            pick = torch.randperm(len(run.setup.observed), generator=gen)[: cfg.views_per_step]
            where = f"epoch {epoch}, step {step + 1} (frame {int(frame)}, mode {cfg.gaussian_mode}, lr {cfg.lr:g})"
            try:
                parts = train_step(run, b, pick, (epoch - 1) * run.steps + step + 1, where)
            except torch.OutOfMemoryError as e:
                raise oom_error(cfg, run.setup.device, e, f"training (epoch {epoch}, step {step + 1})") from e
            for k, v in parts.items():
                done.sums[k] = done.sums.get(k, 0.0) + float(v.detach())
                done.counts[k] = done.counts.get(k, 0) + 1
            bar.set_postfix(loss=f"{parts['loss'].item():.4f}")
        if run.setup.device.type == "cuda":
            torch.cuda.synchronize()
        done.seconds = time.perf_counter() - t0
    return done


def epoch_metrics(run: Run, epoch: int, done: EpochRun) -> dict[str, Any]:
    """The epoch's training metrics: lr, the loss and its terms averaged over the steps that computed them, time,
    peak memory, the model's size and where it ran."""
    sums, counts, mem = done.sums, done.counts, done.memory
    return {
        "epoch": epoch,
        "current_lr": run.opt.param_groups[0]["lr"],
        "train_loss": sums["loss"] / run.steps,
        "train_iou_loss": sums["iou_loss"] / run.steps,
        "train_l1": sums["l1"] / run.steps,
        **{f"train_{k}": sums[k] / counts[k] if k in sums else float("nan")
           for k in ("ssim_loss", "dist_loss", "normal_loss")},
        "epoch_time_s": done.seconds,
        **{col: mem.peak_mb if kind == mem.kind else float("nan")
           for kind, col in metrics_schema.PEAK_MEM.items()},
        "mem_kind": mem.kind,
        "params_per_gaussian": MODES[run.cfg.gaussian_mode].params_per_gaussian,
        "model_params": sum(p.numel() for p in run.model.parameters()),
        "device": str(run.setup.device),
        "backend": run.setup.backend,
    }


# ----------------------------------------------------------------------------------------------- the loop


def train(
    cfg: Config,
    *,
    ckpt_path: Optional[Path] = None,
    resume_from: Optional[Path] = None,
    on_epoch: Optional[Callable[[EpochReport], None]] = None,
    progress: bool = True,
    epochs: Optional[int] = None,
) -> list[dict]:
    """Train `cfg`, reporting after every epoch; returns every epoch's metrics (resumed ones included).

    `epochs` stops early after that epoch (the learning-rate schedule still spans `cfg.epochs`).
    """
    epochs = min(epochs or cfg.epochs, cfg.epochs)
    state = read_checkpoint(Path(resume_from)) if resume_from else None
    setup = prepare(cfg, state["volume_idx"] if state else None)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, setup)
    steps = cfg.steps_per_epoch or len(setup.frames["train"])
    opt, sched = make_optimizer(cfg, model, cfg.epochs * steps)
    history, start = restore(state, model, opt, sched, setup.device) if state else ([], 1)
    run = Run(cfg, setup, model, opt, sched, steps)
    for epoch in range(start, epochs + 1):
        done = train_epoch(run, epoch, epochs, progress)
        metrics = epoch_metrics(run, epoch, done)
        evals, images = evaluate_epoch(run, epoch, progress)
        metrics.update(evals)
        history.append(metrics)  # saved in the checkpoint before its size is added
        metrics["checkpoint_bytes"] = (
            save_checkpoint(ckpt_path, cfg, setup.volume_idx, model, opt, sched, epoch, history, setup.device)
            if ckpt_path else -1
        )
        if progress:
            tqdm.write(
                f"epoch {epoch}: loss {metrics['train_loss']:.4f}  held-out IoU {metrics['valid_heldout_iou']:.3f} "
                f"PSNR {metrics['valid_heldout_psnr']:.2f}  ({done.seconds:.1f} s)"
            )
        if on_epoch:
            on_epoch(EpochReport(metrics, Path(ckpt_path) if ckpt_path else None, images))
    return history


# ----------------------------------------------------------------------------------------------- CLI


def _parse_set(items: list[str]) -> dict[str, Any]:
    """--set KEY=VALUE overrides as a dict, each value parsed as JSON (else kept as text)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m posesplat.train", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("config", help="JSON training config (see configs/ and docs/training.md)")
    p.add_argument("--epochs", type=int, help="override the config's epochs")
    p.add_argument("--out", help="run directory (default runs/<config name>)")
    p.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint.pt")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key with a JSON value; repeat for several (--set lr=1e-3 --set epochs=2)")
    args = p.parse_args(argv)
    try:
        overrides = _parse_set(args.set)
        if args.epochs:
            overrides["epochs"] = args.epochs
        cfg = load_config(args.config, overrides)
        out = Path(args.out or Path("runs") / Path(args.config).stem)
        ckpt = out / "checkpoint.pt"
        if args.resume and not ckpt.exists():
            raise ConfigError(f"{ckpt}: --resume given but there is no checkpoint to resume from")
        if not args.resume and ckpt.exists():
            raise ConfigError(f"{out}: holds an earlier run; pass --resume to continue it or --out for a new one")
        log = out / "metrics.jsonl"

        def write_log(report: EpochReport) -> None:
            rows = read_jsonl(log) if log.exists() else []
            rows = [r for r in rows if r["epoch"] < report.metrics["epoch"]] + [report.metrics]
            atomic_write(log, "".join(strict_dumps(r) + "\n" for r in rows))

        history = train(cfg, ckpt_path=ckpt, resume_from=ckpt if args.resume else None, on_epoch=write_log)
    except (ConfigError, DatasetError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (NonFiniteLossError, OutOfMemoryError) as e:  # the run failed: epochs before it are in the checkpoint
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"interrupted: the last finished epoch is in {ckpt}; continue with --resume", file=sys.stderr)
        return 130
    last = history[-1] if history else {}
    print(strict_dumps({k: last[k] for k in ("epoch", "train_loss", *EVAL_KEYS, "gt_iou3d") if k in last}, indent=1))
    print(f"checkpoint: {ckpt}  metrics: {log}")
    return 0


def read_jsonl(path: Path) -> list[dict]:
    """The rows of a JSON-lines file (the CLI's metrics.jsonl)."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


if __name__ == "__main__":
    sys.exit(main())
