"""Qualitative figures from checkpoints: held-out renders beside ground truth and a turntable GIF per mode (each
mode's best trial); splat files and a side-by-side video over consecutive test frames (each mode's median trial).

Needs `posesplat.trained.load_checkpoint` / `render_frame` and the dataset the trials trained on; anything missing
is reported as a note and the figure skipped, never a crash of the analysis. Only checkpoints inside the study are
read (its trials.parquet may point anywhere), and they load without unpickling (posesplat.checkpoint).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Optional

import imageio.v3 as iio
import numpy as np
import pandas as pd
import torch

from posesplat.checkpoint import CheckpointError
from posesplat.export import ExportError, exportable, file_name, write_splats
from posesplat.progress import Progress
from posesplat.scores import image_metrics
from posesplat.trained import load_checkpoint, opened_dataset, reconstruct, render_frame
from study.analysis.confirm import in_cell
from study.analysis.plots import plt  # pyplot on the Agg backend, loaded at import (plots.py says why)
from study.base.rows import SELECT
from study.base.space import MODE_KEY
from study.base.storage import is_uri

N_FRAMES = 3  # test frames in the qualitative panel (and the report's splat files)
N_VIDEO = 48  # consecutive test frames in the comparison video, at most
VIDEO_FPS = 8  # its playback rate (slow enough to follow one frame's errors)
N_TURN = 24  # views of the turntable
CHUNK = 8  # views rendered per call
TURN_PX = 256  # the turntable is rendered at least this tall (the model is 3D: no upsampling of pixels)


def inside(path: str, root: Optional[Path]) -> bool:
    """The local file `path`, links and `..` resolved, lies in the folder `root` (None: a study behind a URI, whose
    checkpoints stay remote)."""
    return root is not None and not is_uri(path) and Path(path).resolve().is_relative_to(root.resolve())


def warn(note: str) -> str:
    """A note that a study's input was not trusted, also printed as one line on stderr."""
    print(f"warning: {note}", file=sys.stderr)
    return note


def ranked(rows: pd.DataFrame, median_of: Optional[str] = None) -> pd.DataFrame:
    """The order in which trials are tried for a mode's renders: best validation score first (SELECT); with
    `median_of` (a test metric), the trial at the median of that metric first, then its neighbours outwards."""
    if median_of is None:
        return rows.sort_values(list(SELECT), ascending=False)
    rows = rows[np.isfinite(rows[median_of].to_numpy(float))].sort_values([median_of, "trial_id"])
    away = np.abs(np.arange(len(rows)) - (len(rows) - 1) / 2)  # a tie between two middles: the lower one first
    return rows.iloc[np.lexsort((np.arange(len(rows)), away))]


def pick_checkpoints(per_trial: pd.DataFrame, trials: pd.DataFrame, cells: dict, root: Optional[Path],
                     median_of: Optional[str] = None, what: str = "Qualitative renders") -> tuple[dict, list[str]]:
    """Each mode's best trial (best validation score in its cell: mode -> {grid key: value}), or its median trial
    by `median_of`. Only trials whose checkpoint file exists in the study folder `root` count. A mode whose trials
    point outside it is skipped with a warning. The notes name `what` was skipped."""
    if not len(trials) or "checkpoint_path" not in trials:
        return {}, [f"{what} skipped: no trials.parquet with checkpoint paths."]
    paths = {(s, t): p for s, t, p in zip(trials["study"], trials["trial_id"], trials["checkpoint_path"])}
    picked, notes = {}, []
    for mode, cell in cells.items():
        rows = ranked(in_cell(per_trial[per_trial[MODE_KEY] == mode], cell), median_of)
        for _, r in rows.iterrows():
            p = paths.get((r["study"], r["trial_id"]))
            if isinstance(p, str) and not is_uri(p) and not inside(p, root):
                notes.append(warn(f"{what} of {mode} skipped: its checkpoint {p} lies outside the study "
                                  f"{root or '(behind a URI)'}; not followed."))
                break
            if isinstance(p, str) and Path(p).is_file():
                picked[mode] = (r, Path(p))
                break
        else:
            notes.append(f"{what} of {mode} skipped: no checkpoint file of its cell's trials exists.")
    return picked, notes


def failure(e: Exception) -> str:
    """An error as one line of a note: its type and its message's first line."""
    first = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _to_uint8(rgb) -> np.ndarray:
    return (rgb.clamp(0, 1).mul(255).round().byte().cpu().numpy())


def look_at(eyes: np.ndarray, target: np.ndarray) -> np.ndarray:
    """World-to-camera matrices [N,4,4] (OpenCV: x right, y down, z forward) looking from eyes [N,3] at target,
    world z up."""
    fwd = target - eyes
    fwd /= np.linalg.norm(fwd, axis=1, keepdims=True)
    right = np.cross(fwd, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right, axis=1, keepdims=True)
    down = np.cross(fwd, right)
    R = np.stack([right, down, fwd], axis=1)  # rows: camera axes in world coordinates
    out = np.tile(np.eye(4), (len(eyes), 1, 1))
    out[:, :3, :3] = R
    out[:, :3, 3] = -np.einsum("nij,nj->ni", R, eyes)
    return out


def orbit(extrinsics: np.ndarray, centre: np.ndarray, n: int) -> np.ndarray:
    """n cameras circling `centre` at the dataset cameras' mean horizontal distance and height: [n,4,4]."""
    R, t = extrinsics[:, :3, :3], extrinsics[:, :3, 3]
    eyes = -np.einsum("nji,nj->ni", R, t)  # camera centres, -R^T t
    rel = eyes - centre
    radius = float(np.linalg.norm(rel[:, :2], axis=1).mean())
    height = float(rel[:, 2].mean())
    theta = np.linspace(0, 2 * np.pi, n, endpoint=False)
    ring = np.stack([radius * np.cos(theta), radius * np.sin(theta), np.full(n, height)], axis=1) + centre
    return look_at(ring, np.asarray(centre, dtype=float))


def test_frames(models: dict, n: Optional[int] = None) -> dict:
    """Per mode: (dataset, its test frames, the first held-out view). The frames are the ones every mode tests when
    their splits share any (so the modes are shown side by side), else each mode's own; with `n`, up to n of them
    evenly spaced."""
    tests = {}
    for mode, (cfg, model, _) in models.items():
        ds = opened_dataset(cfg.dataset)
        tests[mode] = (ds, ds.frame_split(cfg.max_frames, cfg.frame_jump, tuple(cfg.split))["test"])
    common = sorted(set.intersection(*(set(map(int, t)) for _, t in tests.values())))
    picked = {}
    for mode, (cfg, _, _) in models.items():
        ds, frames = tests[mode]
        pool = common or sorted(map(int, frames))
        if n is not None:
            pool = [pool[i] for i in np.linspace(0, len(pool) - 1, min(n, len(pool))).round().astype(int)]
        _, held = ds.view_split(cfg.holdout_views)
        picked[mode] = (ds, pool, held[0] if held else ds.n_views - 1)
    return picked


def qualitative_panel(models: dict, out: Path) -> tuple[Path, str]:
    """Rows: test frames; per mode: ground truth | held-out render | |error| (shared colour scale)."""
    picked = test_frames(models, N_FRAMES)
    common = len({tuple(p) for _, p, _ in picked.values()}) == 1
    panels = []  # (frame, mode, gt, render) as float [H,W,3]
    for mode, (cfg, model, _) in Progress(models.items(), desc="qualitative renders", leave=False):
        ds, picks, view = picked[mode]
        for f in picks:
            gt = ds.load(f, [view], cfg.image_downsample)
            h, w = gt["images"].shape[1:3]
            r = render_frame(model, cfg, f, gt["viewmats"], gt["Ks"], w, h)
            panels.append((f, mode, view, gt["images"][0].numpy(), r.rgb[0].clamp(0, 1).cpu().numpy()))
    modes = list(models)
    errs = [np.abs(p[4] - p[3]).mean(-1) for p in panels]
    vmax = max(float(np.percentile(np.concatenate([e.ravel() for e in errs]), 99.5)), 1e-3)
    nrows = max(sum(1 for p in panels if p[1] == m) for m in modes)
    fig, axes = plt.subplots(nrows, 3 * len(modes), figsize=(2.2 * 3 * len(modes) + 1, 2.3 * nrows), squeeze=False,
                             layout="constrained")
    for ax in axes.ravel():
        ax.axis("off")
    for mi, mode in enumerate(modes):
        mine = [(p, e) for p, e in zip(panels, errs) if p[1] == mode]
        for row, ((f, _, view, gt, pred), err) in enumerate(mine):
            psnr = -10 * np.log10(max(float(((pred - gt) ** 2).mean()), 1e-10))
            a = axes[row, 3 * mi: 3 * mi + 3]
            a[0].imshow(gt)
            a[0].set_title(f"frame {f}, view {view}: truth", fontsize=8)
            a[1].imshow(pred)
            a[1].set_title(f"{mode} ({psnr:.1f} dB)", fontsize=8)
            im = a[2].imshow(err, cmap="magma", vmin=0, vmax=vmax)
            a[2].set_title(f"{mode} |error|", fontsize=8)
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.6, label="mean |error| over RGB")
    path = out / "qualitative.png"
    fig.savefig(path, dpi=80)
    plt.close(fig)
    what = "; ".join(f"{m}: trial {r['trial_id']} (lr {float(r['lr']):.2g}), weights of its last checkpoint "
                     f"(epoch {int(r['epochs_run'])})" for m, (_, _, r) in models.items())
    same = "the same test frames for every mode" if common else "each mode's own test frames (their splits differ)"
    return path, (f"Held-out view of {same}: ground truth, each mode's best trial's render and its absolute error "
                  f"(shared colour scale). {what}.")


def crop(keep: np.ndarray, margin: int = 4) -> tuple[slice, slice]:
    """The rows and columns [H, W] of the pixels set in keep, with a margin (the whole image when none is set)."""
    ys, xs = np.nonzero(keep)
    if not len(ys):
        return slice(None), slice(None)
    return (slice(max(ys.min() - margin, 0), ys.max() + margin + 1),
            slice(max(xs.min() - margin, 0), xs.max() + margin + 1))


def geometry_figure(models: dict, out: Path) -> Optional[tuple[Path, str]]:
    """Rows: test frames; columns: true depth, each mode's rendered depth, true normals, each mode's normals of the
    rendered depth (the definition the metrics compare), held-out view. None when the dataset has no true geometry
    (an imported recording, a synthetic store before format 2) or the modes test different frames."""
    picked = test_frames(models, N_FRAMES)
    (ds, picks, view), modes = next(iter(picked.values())), list(models)
    if (ds.geometry_note is not None or len({(tuple(p), v) for _, p, v in picked.values()}) > 1
            or len({cfg.image_downsample for cfg, _, _ in models.values()}) > 1):
        return None
    ncols = 2 * (1 + len(modes))
    fig, axes = plt.subplots(len(picks), ncols, figsize=(2.0 * ncols + 1, 2.1 * len(picks)), squeeze=False,
                             layout="constrained")
    for ax in axes.ravel():
        ax.axis("off")
    truth = {f: [x[0].numpy() for x in ds.gt_geometry(f, [view], models[modes[0]][0].image_downsample)] for f in picks}
    z = np.concatenate([d[d > 0] for d, _ in truth.values()])
    lo, hi = (float(z.min()), float(z.max())) if len(z) else (0.0, 1.0)  # one depth scale for the figure
    for row, f in enumerate(Progress(picks, desc="geometry renders", leave=False)):
        depth_gt, normal_gt = truth[f]
        on = depth_gt > 0
        depths, normals = [("truth", depth_gt, on)], [("truth", normal_gt, on)]
        for mode in modes:
            cfg, model, _ = models[mode]
            gt = ds.load(f, [view], cfg.image_downsample)
            h, w = gt["images"].shape[1:3]
            r = render_frame(model, cfg, f, gt["viewmats"], gt["Ks"], w, h)
            shown = (r.alpha[0] > 0.5).cpu().numpy()
            d = r.depth[0].cpu().numpy()
            err = float(np.abs(d - depth_gt)[on].mean()) * 1000 if on.any() else float("nan")
            depths.append((f"{mode} ({err:.1f} mm)", d, shown))
            normals.append((mode, r.normals[0].cpu().numpy(), shown))
        box = crop(np.logical_or.reduce([keep for _, _, keep in depths]))
        for col, (name, d, keep) in enumerate(depths):
            im = axes[row, col].imshow(np.where(keep, d, np.nan)[box], cmap="viridis_r", vmin=lo, vmax=hi)
            axes[row, col].set_title(f"frame {f}: {name} depth" if col == 0 else f"{name} depth", fontsize=8)
        for col, (name, n, keep) in enumerate(normals, start=len(depths)):
            axes[row, col].imshow((np.clip((n + 1) / 2, 0, 1) * keep[..., None])[box])
            axes[row, col].set_title(f"{name} normals", fontsize=8)
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.6, label="z-depth (m)")
    path = out / "geometry.png"
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path, (f"Held-out view {view} of test frames {', '.join(map(str, picks))}: the true depth and each mode's "
                  f"expected depth (alpha-weighted, over pixels with alpha > 0.5, cropped to the body; its mean |error| over the true mask "
                  f"in mm), then the true normals and each mode's normals of its rendered depth, (n + 1) / 2 in world "
                  f"axes. Same checkpoints as the qualitative panel.")


def turntable(mode: str, cfg, model, row: pd.Series, out: Path, *, n_views: int = N_TURN,
              px: int = TURN_PX) -> tuple[Path, str]:
    """A GIF of one test frame rendered from `n_views` cameras circling the animal, at least `px` pixels tall."""
    ds = opened_dataset(cfg.dataset)
    test = ds.frame_split(cfg.max_frames, cfg.frame_jump, tuple(cfg.split))["test"]
    frame = int(test[len(test) // 2])
    _, held = ds.view_split(cfg.holdout_views)
    ref = ds.load(frame, [held[0] if held else 0], cfg.image_downsample)
    h, w = ref["images"].shape[1:3]
    s = max(1, -(-px // h))
    K = ref["Ks"][0].clone()
    K[:2] *= s
    mats = torch.from_numpy(orbit(ds.extrinsics, ds.centre[frame], n_views)).float()
    frames = []
    for i in range(0, n_views, CHUNK):
        v = mats[i: i + CHUNK]
        frames.append(_to_uint8(render_frame(model, cfg, frame, v, K.expand(len(v), 3, 3), w * s, h * s).rgb))
    path = out / f"turntable_{mode}.gif"
    iio.imwrite(path, np.concatenate(frames), extension=".gif", duration=80, loop=0)
    return path, (f"Turntable of {mode}'s best trial ({row['trial_id']}): test frame {frame} reconstructed from its "
                  f"observed views and rendered from {n_views} cameras circling the animal.")


def splat_files(models: dict, out: Path) -> list[str]:
    """`models/<mode>/frame<k>.ply` in `out` (3DGS PLY, posesplat.export) for up to N_FRAMES test frames of each
    mode, and a note saying what they are; a mode with no 3D extent gets a note instead."""
    notes, written = [], {}
    for mode, (ds, frames, _) in test_frames(models, N_FRAMES).items():
        cfg, model, row = models[mode]
        try:
            exportable(mode)
        except ExportError as e:
            notes.append(f"No splat files of {mode}: {e}.")
            continue
        for k in frames:
            write_splats(reconstruct(model, cfg, k), mode, out / "models" / mode / file_name(k, "ply"))
        written[mode] = f"models/{mode}/frame{{{','.join(map(str, frames))}}}.ply (trial {row['trial_id']})"
    if written:
        notes.append(f"Splat files of each mode's median confirm trial, test frames in the world frame, for any 3DGS "
                     f"viewer (docs/export.md): {'; '.join(written.values())}.")
    return notes


def compare_video(models: dict, out: Path, metric: str, n_max: int = N_VIDEO) -> Optional[tuple[Path, str]]:
    """compare.mp4: one held-out view over up to n_max consecutive test frames, ground truth | each mode (the
    reference first), with the frame number and each mode's IoU on the frame; compare.png, its middle frame (the
    still decision.md shows). None when the modes test different frames, views or image sizes."""
    picked = test_frames(models)
    if len({(tuple(f), v) for _, f, v in picked.values()}) > 1 or \
            len({cfg.image_downsample for cfg, _, _ in models.values()}) > 1:
        return None
    ds, frames, view = next(iter(picked.values()))
    frames, modes = frames[:n_max], list(models)[::-1]
    shots, seen = [], 0  # per frame: (title, image) per panel; where any panel shows the body
    for f in Progress(frames, desc="comparison video", unit="frame", leave=False):
        t = ds.load(f, [view], models[modes[0]][0].image_downsample)
        h, w = t["images"].shape[1:3]
        panels, seen = [(f"truth: frame {f}, view {view}", t["images"][0].numpy())], seen + t["masks"][0].numpy()
        for mode in modes:
            cfg, model, _ = models[mode]
            r = render_frame(model, cfg, f, t["viewmats"], t["Ks"], w, h)
            iou = image_metrics(r, t["images"].to(r.rgb.device), t["masks"].to(r.rgb.device))["iou"][0]
            panels.append((f"{mode}: IoU {iou:.3f}", r.rgb[0].clamp(0, 1).cpu().numpy()))
            seen = seen + (r.alpha[0] > 0.5).cpu().numpy()
        shots.append(panels)
    box = crop(seen > 0, margin=max(h, w) // 16)
    fig, axes = plt.subplots(1, 1 + len(modes), figsize=(2.56 * (1 + len(modes)), 3.04), dpi=100)
    for ax in axes:
        ax.axis("off")
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.9, wspace=0.04)
    shown, movie = [], []
    for panels in shots:
        shown = shown or [ax.imshow(img[box], interpolation="nearest") for ax, (_, img) in zip(axes, panels)]
        for im, ax, (title, img) in zip(shown, axes, panels):
            im.set_data(img[box])
            ax.set_title(title, fontsize=9)
        fig.canvas.draw()
        movie.append(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy())
    plt.close(fig)
    path = out / "compare.mp4"
    iio.imwrite(path, np.stack(movie), extension=".mp4", fps=VIDEO_FPS, codec="libx264", pixelformat="yuv420p",
                macro_block_size=16)
    iio.imwrite(path.with_suffix(".png"), movie[len(movie) // 2])
    trials = "; ".join(f"{m}: trial {models[m][2]['trial_id']}" for m in modes)
    return path, (f"Held-out view {view} over {len(frames)} consecutive test frames ({frames[0]} to {frames[-1]}), "
                  f"{VIDEO_FPS} frames a second: ground truth, then each mode's median confirm trial by {metric} "
                  f"({trials}) with its IoU on the frame (over the whole view; shown cropped to the body). Flicker and "
                  f"pose errors over time show here, not in a single frame.")


def load_models(picked: dict, notes: list[str], what: str = "Qualitative renders") -> dict:
    """mode -> (config, model, trial row) of the picked checkpoints; one that cannot be loaded gets a note saying
    `what` was skipped."""
    models = {}
    for mode, (row, path) in picked.items():
        try:
            cfg, model = load_checkpoint(path, device=_device())
            models[mode] = (cfg, model, row)
        except Exception as e:  # a foreign checkpoint, a dataset that moved: say so and go on
            why = str(e).splitlines()[0] if str(e) else type(e).__name__
            note = f"{what} of {mode} skipped: {why if why.startswith(f'{path}:') else f'{path}: {why}'}"
            notes.append(warn(note) if isinstance(e, CheckpointError) else note)
    return models


def median_figures(per_trial: pd.DataFrame, trials: pd.DataFrame, cells: dict, out: Path, root: Optional[Path],
                   metric: str) -> tuple[list, list[str]]:
    """From each mode's median confirm trial by `metric`: the splat files and the comparison video (notes say what
    was skipped: both, where a mode's median checkpoint is missing)."""
    what = "Splat files and the comparison video"
    picked, notes = pick_checkpoints(per_trial, trials, cells, root, median_of=metric, what=what)
    models = load_models(picked, notes, what)
    if len(models) < len(cells):
        return [], notes
    try:
        notes += splat_files(models, out)
    except Exception as e:  # a disk that fills, a gsplat without its exporter: say so, leave no partial files
        shutil.rmtree(out / "models", ignore_errors=True)
        notes.append(f"Splat files skipped: {failure(e)}")
    try:
        video = compare_video(models, out, metric)
    except Exception as e:  # e.g. an imageio-ffmpeg without its ffmpeg binary
        return [], notes + [f"Comparison video skipped: {failure(e)}"]
    return [video] if video else [], notes + ([] if video else ["Comparison video skipped: the modes test "
                                                                "different frames, views or image sizes."])


def render_figures(per_trial: pd.DataFrame, trials: pd.DataFrame, cells: dict, out: Path,
                   root: Optional[Path]) -> tuple[list, list[str]]:
    """The qualitative panel and turntables from the checkpoints in the study folder `root`, with notes on whatever
    had to be skipped and why."""
    picked, notes = pick_checkpoints(per_trial, trials, cells, root)
    if not picked:
        return [], notes
    models = load_models(picked, notes)
    figs = []
    if models:
        try:
            figs.append(qualitative_panel(models, out))
        except Exception as e:
            notes.append(f"Qualitative panel skipped: {failure(e)}")
        try:
            geo = geometry_figure(models, out)
            figs += [geo] if geo else []
        except Exception as e:
            notes.append(f"Geometry panel skipped: {failure(e)}")
    for mode, (cfg, model, row) in models.items():
        try:
            figs.append(turntable(mode, cfg, model, row, out))
        except Exception as e:
            notes.append(f"Turntable of {mode} skipped: {failure(e)}")
    return figs, notes
