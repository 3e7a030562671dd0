"""Train one configuration: `python -m posesplat.train configs/X.json [--epochs N] [--resume]`.

`train(cfg, ...)` is the loop the study calls: it reports an `EpochReport` (metrics, checkpoint file, image panels)
after every epoch. Checkpoints hold the config, learnable state, optimiser, scheduler, epoch, RNG states, grid crop
and the metrics history: nothing derived (file I/O: posesplat.checkpoint, which never unpickles).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from posesplat.checkpoint import read as read_checkpoint
from posesplat.checkpoint import restore, save_checkpoint
from posesplat.config import Config, ConfigError, load_config
from posesplat.data import DatasetError
from posesplat import metrics as metrics_schema
from posesplat.io import atomic_write, strict_dumps
from posesplat.losses import geometry_terms, loss_terms, training_loss
from posesplat.memory import OutOfMemoryError, PeakMemory, oom_error
from posesplat.modes import MODES
from posesplat.model import PoseSplatter, to_world
from posesplat.progress import Progress
from posesplat.render import render
from posesplat.scores import (EVAL_KEYS, FRAME_KEYS, geometry_errors, geometry_panel, gt_iou3d, gt_mass_inside,
                              image_metrics, nanmean, panel)
from posesplat.setup import Setup, build_model, load_frame, prepare


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite."""


@dataclass
class EpochReport:
    """What the loop hands to its caller after each epoch."""

    metrics: dict[str, Any]
    checkpoint: Optional[Path]
    images: dict[str, np.ndarray] = field(default_factory=dict)  # name -> uint8 [H, W, 3]


def make_optimizer(cfg: Config, model: torch.nn.Module, total_steps: int):
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    if cfg.lr_schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(total_steps, 1), eta_min=0.05 * cfg.lr)
    else:
        sched = torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0)
    return opt, sched


# ----------------------------------------------------------------------------------------------- evaluation


def eval_frames(cfg: Config, frames: np.ndarray, split: str = "test") -> np.ndarray:
    """Evenly spaced subset of at most cfg.eval_frames frames (cfg.eval_valid_frames for the valid split, if set)."""
    cap = cfg.eval_valid_frames if split == "valid" and cfg.eval_valid_frames is not None else cfg.eval_frames
    if cap is None or len(frames) <= cap:
        return frames
    return frames[np.linspace(0, len(frames) - 1, cap).round().astype(int)]


@torch.no_grad()
def evaluate(cfg: Config, setup: Setup, model: PoseSplatter, progress: bool = False,
             ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Valid frames (observed and held-out views) and test frames (held-out views); 3D metric on test frames.

    Besides the means, `test_heldout_{iou,psnr,psnr_fg,ssim}_frames` hold one value per evaluated test frame (the mean over
    its held-out views) and `test_frames` the frame indices, in the same order (lists; empty without held-out views).
    """
    model.eval()
    acc: dict[str, list[float]] = {k: [] for k in EVAL_KEYS}
    per_frame: dict[str, list[float]] = {k: [] for k in FRAME_KEYS}
    test_frames: list[int] = []
    render_s, n_renders, n_gauss, ious3d, mass, images = 0.0, 0, [], [], [], {}
    geo: dict[str, list[float]] = {k: [] for k in metrics_schema.GEOMETRY}  # per held-out test view
    surface: list[float] = []  # per test frame
    for split in ("valid", "test"):
        for f in Progress(eval_frames(cfg, setup.frames[split], split), desc=f"evaluating {split} frames",
                          unit="frame", leave=False, disable=not progress):
            b = load_frame(setup, f, setup.observed, cfg.image_downsample)
            local, _ = model.local_gaussians(b["images"], b["masks"], b["viewmats"], b["Ks"], b["centre"], b["heading"])
            g = to_world(local, b["centre"], b["heading"])
            n_gauss.append(local.means.shape[0])
            targets = [("valid_heldout" if split == "valid" else "test_heldout", setup.heldout)]
            if split == "valid":
                targets.insert(0, ("valid", setup.observed))
            for name, views in targets:
                if not views:
                    continue
                t = load_frame(setup, f, views, cfg.image_downsample)
                t0 = time.perf_counter()
                out = render(g, model.mode, t["viewmats"], t["Ks"], setup.width, setup.height, setup.backend, setup.background)
                if setup.device.type == "cuda":
                    torch.cuda.synchronize()
                render_s += time.perf_counter() - t0
                n_renders += len(views)
                for k, vals in image_metrics(out, t["images"], t["masks"]).items():
                    acc[f"{name}_{k}"] += vals
                    if name == "test_heldout":
                        per_frame[f"{name}_{k}"].append(nanmean(vals))
                if name == "test_heldout":
                    test_frames.append(int(f))
                    errs, dist = geometry_errors(setup, model.mode, f, views, out, g, cfg.image_downsample)
                    for k, vals in errs.items():
                        geo[k] += vals
                        per_frame[f"test_heldout_{k}"].append(nanmean(vals))
                    per_frame["test_surface_dist"].append(dist)
                    surface.append(dist)
                    if np.isfinite(dist) and "geometry" not in images:
                        d_gt, n_gt = setup.ds.gt_geometry(int(f), views, cfg.image_downsample)
                        images["geometry"] = geometry_panel(out, d_gt.to(setup.device), n_gt.to(setup.device),
                                                            t["masks"])
                if name == "valid_heldout" and "heldout" not in images:
                    images["heldout"] = panel(t["images"][0], out.rgb[0])
            if split == "test" and setup.ds.has_gt:
                gt, kinds = setup.ds.gt(int(f)), setup.ds.gt_kinds()
                ious3d.append(gt_iou3d(model, local.index, gt, kinds, b["centre"], b["heading"]))
                mass.append(gt_mass_inside(g, gt, kinds))
    model.train()
    metrics = {k: nanmean(v) for k, v in acc.items()}
    metrics["gt_iou3d"] = float(np.mean(ious3d)) if ious3d else float("nan")
    metrics["gt_mass_inside"] = float(np.mean(mass)) if mass else float("nan")
    metrics.update({f"test_heldout_{k}": nanmean(v) for k, v in geo.items()})
    metrics["test_surface_dist"] = nanmean(surface)
    metrics["render_ms"] = 1000 * render_s / max(n_renders, 1)
    metrics["gaussians_per_frame"] = float(np.mean(n_gauss)) if n_gauss else float("nan")
    metrics.update({metrics_schema.frame_column(k): v for k, v in per_frame.items()})
    metrics[metrics_schema.FRAMES] = test_frames
    return metrics, images


# ----------------------------------------------------------------------------------------------- failures


def nonfinite_diagnosis(cfg: Config, terms: dict, loss: torch.Tensor, g) -> tuple[str, str]:
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
    n_train = len(setup.frames["train"])
    steps = cfg.steps_per_epoch or n_train
    opt, sched = make_optimizer(cfg, model, cfg.epochs * steps)
    history, start = restore(state, model, opt, sched, setup.device) if state else ([], 1)
    n_model_params = sum(p.numel() for p in model.parameters())
    for epoch in range(start, epochs + 1):
        gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        order = torch.randperm(n_train, generator=gen)
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}  # steps each term was computed in (2DGS's terms are off during their warm-up)
        bar = Progress(range(steps), desc=f"{cfg.gaussian_mode} epoch {epoch}/{epochs}", disable=not progress, leave=False)
        with PeakMemory(setup.device) as mem:
            t0 = time.perf_counter()
            for step in bar:
                frame = setup.frames["train"][int(order[step % n_train])]
                pick = torch.randperm(len(setup.observed), generator=gen)[: cfg.views_per_step]
                try:
                    b = load_frame(setup, frame, setup.observed, cfg.image_downsample)
                    g = model(b["images"], b["masks"], b["viewmats"], b["Ks"], b["centre"], b["heading"])
                    dist_on, normal_on = geometry_terms(cfg, (epoch - 1) * steps + step + 1, cfg.epochs * steps)
                    out = render(
                        g, cfg.gaussian_mode, b["viewmats"][pick], b["Ks"][pick], setup.width, setup.height,
                        setup.backend, setup.background, distortion=dist_on,
                    )
                    terms = loss_terms(out, b["images"][pick], b["masks"][pick], cfg.ssim_lambda, dist_on, normal_on)
                    loss = training_loss(cfg, terms)
                    finite = bool(torch.isfinite(loss)) and all(
                        bool(torch.isfinite(t).all()) for t in (g.means, g.opacities, g.colors, g.scales)
                    )  # the renderer drops NaN-opacity pairs, so a diverged model can still give a finite loss
                    if not finite:
                        cause, hint = nonfinite_diagnosis(cfg, terms, loss, g)
                        raise NonFiniteLossError(
                            f"{cause} at epoch {epoch}, step {step + 1} (frame {int(frame)}, mode "
                            f"{cfg.gaussian_mode}, lr {cfg.lr:g}): {hint}"
                        )
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or float("inf"))
                    if not bool(torch.isfinite(norm)):
                        raise NonFiniteLossError(
                            f"non-finite gradient (norm {norm.item()}) of the finite loss {loss.item():.4g} at epoch "
                            f"{epoch}, step {step + 1} (frame {int(frame)}, mode {cfg.gaussian_mode}, lr {cfg.lr:g}): "
                            f"lower img_lambda ({cfg.img_lambda:g}) or ssim_lambda ({cfg.ssim_lambda:g}) if large, "
                            f"else lower lr"
                        )
                    opt.step()
                    sched.step()
                except torch.OutOfMemoryError as e:
                    raise oom_error(cfg, setup.device, e, f"training (epoch {epoch}, step {step + 1})") from e
                for k, v in {"loss": loss, **terms}.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach())
                    counts[k] = counts.get(k, 0) + 1
                bar.set_postfix(loss=f"{loss.item():.4f}")
            if setup.device.type == "cuda":
                torch.cuda.synchronize()
            epoch_time = time.perf_counter() - t0
        metrics: dict[str, Any] = {
            "epoch": epoch,
            "current_lr": opt.param_groups[0]["lr"],
            "train_loss": sums["loss"] / steps,
            "train_iou_loss": sums["iou_loss"] / steps,
            "train_l1": sums["l1"] / steps,
            **{f"train_{k}": sums[k] / counts[k] if k in sums else float("nan")
               for k in ("ssim_loss", "dist_loss", "normal_loss")},
            "epoch_time_s": epoch_time,
            **{col: mem.peak_mb if kind == mem.kind else float("nan")
               for kind, col in metrics_schema.PEAK_MEM.items()},
            "mem_kind": mem.kind,
            "params_per_gaussian": MODES[cfg.gaussian_mode].params_per_gaussian,
            "model_params": n_model_params,
            "device": str(setup.device),
            "backend": setup.backend,
        }
        images: dict[str, np.ndarray] = {}
        if epoch % cfg.valid_every == 0 or epoch == cfg.epochs:
            t1 = time.perf_counter()
            try:
                evals, images = evaluate(cfg, setup, model, progress)
            except torch.OutOfMemoryError as e:
                raise oom_error(cfg, setup.device, e, f"evaluation (epoch {epoch})") from e
            metrics.update(evals, eval_time_s=time.perf_counter() - t1)
        else:
            metrics.update(metrics_schema.unevaluated(), eval_time_s=0.0)
        history.append(metrics)
        if ckpt_path:
            metrics["checkpoint_bytes"] = save_checkpoint(
                ckpt_path, cfg, setup.volume_idx, model, opt, sched, epoch, history, setup.device
            )
        else:
            metrics["checkpoint_bytes"] = -1
        if progress:
            tqdm.write(
                f"epoch {epoch}: loss {metrics['train_loss']:.4f}  held-out IoU {metrics['valid_heldout_iou']:.3f} "
                f"PSNR {metrics['valid_heldout_psnr']:.2f}  ({epoch_time:.1f} s)"
            )
        if on_epoch:
            on_epoch(EpochReport(metrics, Path(ckpt_path) if ckpt_path else None, images))
    return history


# ----------------------------------------------------------------------------------------------- CLI


def _parse_set(items: list[str]) -> dict[str, Any]:
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
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


if __name__ == "__main__":
    sys.exit(main())
