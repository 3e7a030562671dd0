"""What evaluation measures on a frame: image metrics per view, depth and normal errors and the surface distance,
the overlap with the true body, the image panels, and the `Tally` that turns them into an epoch's metrics.

`posesplat.train.evaluate` renders the valid and test frames and scores them here.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torchmetrics.functional.image import structural_similarity_index_measure as ssim_fn

from posesplat import geometry
from posesplat import metrics as metrics_schema
from posesplat.data import inside_body
from posesplat.model import PoseSplatter
from posesplat.pose import yaw_rotmat
from posesplat.render import Gaussians, RenderOut, render
from posesplat.run_setup import Setup, load_frame

EVAL_KEYS = [f"{split}_{k}" for split in metrics_schema.SPLITS for k in metrics_schema.IMAGE]  # image metrics
FRAME_KEYS = metrics_schema.names(per_frame=True)  # also reported per test frame, as `<key>_frames`


@torch.no_grad()
def image_metrics(out: RenderOut, images: torch.Tensor, masks: torch.Tensor) -> dict[str, list[float]]:
    """Per-view IoU (alpha > 0.5 vs mask), PSNR over the full image, foreground PSNR and SSIM (torchmetrics).

    Foreground PSNR (`psnr_fg`) is the PSNR over the pixels where the true mask or the rendered mask (alpha > 0.5)
    is set: the background colour, which any renderer gets right, does not count, and missing or extra body does.
    A view where neither mask has a pixel gives NaN."""
    pred = out.alpha > 0.5
    gt = masks > 0.5
    inter = (pred & gt).flatten(1).sum(1).float()
    fg = (pred | gt).flatten(1)  # [V, H*W]
    union = fg.sum(1).float()
    iou = torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))
    sq = ((out.rgb.clamp(0, 1) - images) ** 2).mean(-1).flatten(1)  # [V, H*W]
    psnr = -10 * torch.log10(sq.mean(1).clamp_min(1e-10))
    mse_fg = (sq * fg).sum(1) / union.clamp_min(1)
    psnr_fg = torch.where(union > 0, -10 * torch.log10(mse_fg.clamp_min(1e-10)), torch.full_like(union, float("nan")))
    ssim = ssim_fn(
        out.rgb.clamp(0, 1).permute(0, 3, 1, 2), images.permute(0, 3, 1, 2), data_range=1.0, reduction="none"
    )
    return {"iou": iou.tolist(), "psnr": psnr.tolist(), "psnr_fg": psnr_fg.tolist(), "ssim": ssim.flatten().tolist()}


def gt_iou3d(model: PoseSplatter, local_index: torch.Tensor, gt: np.ndarray, kinds, centre, heading) -> float:
    """Volumetric IoU between the cells that became Gaussians and the cells inside the true body."""
    centres = model.centres.reshape(-1, 3)
    world = (centres @ yaw_rotmat(heading).T + centre).cpu().numpy()
    truth = torch.from_numpy(np.asarray(inside_body(gt, world, kinds), dtype=bool))
    pred = torch.zeros_like(truth)
    pred[local_index.cpu()] = True
    union = (pred | truth).sum().item()
    return float((pred & truth).sum().item() / union) if union else float("nan")


def gt_mass_inside(g: Gaussians, gt: np.ndarray, kinds: np.ndarray) -> float:
    """Opacity-weighted fraction of the Gaussians (their learned world means) that lie inside the true body."""
    inside = torch.from_numpy(np.asarray(inside_body(gt, g.means.detach().cpu().double().numpy(), kinds), dtype=bool))
    w = g.opacities.detach().cpu().double()
    return float((w * inside).sum() / w.sum().clamp_min(1e-12))


def panel(gt: torch.Tensor, pred: torch.Tensor) -> np.ndarray:
    """GT | render | |error| side by side, uint8 [H, 3W, 3]."""
    err = (pred - gt).abs().mean(-1, keepdim=True).expand_as(gt).clamp(0, 1)
    row = torch.cat([gt, pred.clamp(0, 1), err], dim=1)
    return (row * 255).round().byte().cpu().numpy()


def geometry_panel(out: RenderOut, depth_gt: torch.Tensor, normal_gt: torch.Tensor, masks: torch.Tensor
                   ) -> np.ndarray:
    """True depth | rendered depth | true normals | rendered normals of the first view, uint8 [H, 4W, 3]: depth
    grey from near (white) to far over the true depth's range, normals (n + 1) / 2 in world axes."""
    m = masks[0] > 0.5
    z = depth_gt[0][m]
    lo, hi = (float(z.min()), float(z.max())) if len(z) else (0.0, 1.0)
    grey = lambda d, keep: ((1 - (d - lo) / max(hi - lo, 1e-9)).clamp(0, 1) * keep)[..., None].expand(*d.shape, 3)
    shown = out.alpha[0] > 0.5
    row = torch.cat([grey(depth_gt[0], m), grey(out.depth[0], shown), (normal_gt[0] + 1) / 2 * m[..., None],
                     (out.normals[0] + 1) / 2 * shown[..., None]], dim=1)
    return (row * 255).round().byte().cpu().numpy()


def nanmean(values: Sequence[float]) -> float:
    """Mean of the finite values (a view without any foreground has no foreground PSNR); NaN when there are none."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    return float(v.mean()) if len(v) else float("nan")


def geometry_errors(setup: Setup, mode: str, frame: int, heldout: Sequence[int], out: RenderOut, g: Gaussians,
                    downsample: int) -> tuple[dict[str, list[float]], float]:
    """Depth and normal errors per held-out view (posesplat.geometry.view_errors) and the frame's surface distance
    over every view (the observed ones rendered here); NaN without true geometry (MultiViewDataset.geometry_note)."""
    truth = setup.ds.gt_geometry(int(frame), list(heldout), downsample)
    if truth is None:
        return {k: [float("nan")] * len(heldout) for k in metrics_schema.GEOMETRY}, float("nan")
    t = load_frame(setup, frame, heldout, downsample)
    depth_gt, normal_gt = (x.to(setup.device) for x in truth)
    errs = geometry.view_errors(out.depth, out.normals, depth_gt, normal_gt, t["masks"])
    pred = [geometry.surface_points(out.depth, out.alpha > 0.5, t["viewmats"], t["Ks"])]
    true = [geometry.surface_points(depth_gt, t["masks"], t["viewmats"], t["Ks"])]
    if setup.observed:
        o = load_frame(setup, frame, setup.observed, downsample)
        seen = render(g, mode, o["viewmats"], o["Ks"], setup.width, setup.height, setup.backend,
                      setup.background)
        d_obs = setup.ds.gt_geometry(int(frame), setup.observed, downsample)[0].to(setup.device)
        pred.append(geometry.surface_points(seen.depth, seen.alpha > 0.5, o["viewmats"], o["Ks"]))
        true.append(geometry.surface_points(d_obs, o["masks"], o["viewmats"], o["Ks"]))
    return errs, geometry.surface_distance(torch.cat(pred), torch.cat(true))


class Tally:
    """An evaluation pass's scores as they accumulate (`score`, `score_body`) and the epoch's metrics they give."""

    def __init__(self, setup: Setup, mode: str, downsample: int):
        self.setup, self.mode, self.downsample = setup, mode, downsample
        self.views: dict[str, list[float]] = {k: [] for k in EVAL_KEYS}  # `<target>_<image metric>`: one per view
        self.per_frame: dict[str, list[float]] = {k: [] for k in FRAME_KEYS}  # one per test frame
        self.geometry: dict[str, list[float]] = {k: [] for k in metrics_schema.GEOMETRY}  # per held-out test view
        self.surface: list[float] = []  # per test frame
        self.test_frames: list[int] = []  # the frames of `per_frame`, in its order
        self.gaussians: list[int] = []  # per evaluated frame
        self.iou3d: list[float] = []  # per test frame with a true body
        self.mass: list[float] = []  # per test frame with a true body
        self.render_s, self.renders = 0.0, 0  # time spent rendering, views rendered in it
        self.images: dict[str, np.ndarray] = {}  # panel name -> uint8 [H, kW, 3]

    def rendered(self, seconds: float, views: int) -> None:
        """Count a render of `views` views that took `seconds`."""
        self.render_s += seconds
        self.renders += views

    def score(self, target: str, frame: int, views: Sequence[int], t: dict[str, torch.Tensor], out: RenderOut,
              g: Gaussians) -> None:
        """Score a frame's render `out` into `target`'s views (loaded as `t`; `g` its world Gaussians): image
        metrics and, for test frames, geometry; the first frame that has them gives the panels."""
        for k, vals in image_metrics(out, t["images"], t["masks"]).items():
            self.views[f"{target}_{k}"] += vals
            if target == "test_heldout":
                self.per_frame[f"{target}_{k}"].append(nanmean(vals))
        if target == "test_heldout":
            self._score_geometry(frame, views, t, out, g)
        if target == "valid_heldout" and "heldout" not in self.images:
            self.images["heldout"] = panel(t["images"][0], out.rgb[0])

    def _score_geometry(self, frame: int, views: Sequence[int], t: dict[str, torch.Tensor], out: RenderOut,
                        g: Gaussians) -> None:
        """A test frame's depth and normal errors per held-out view, their means and its surface distance."""
        self.test_frames.append(int(frame))
        errs, dist = geometry_errors(self.setup, self.mode, frame, views, out, g, self.downsample)
        for k, vals in errs.items():
            self.geometry[k] += vals
            self.per_frame[f"test_heldout_{k}"].append(nanmean(vals))
        self.per_frame["test_surface_dist"].append(dist)
        self.surface.append(dist)
        if np.isfinite(dist) and "geometry" not in self.images:
            d_gt, n_gt = self.setup.ds.gt_geometry(int(frame), views, self.downsample)
            self.images["geometry"] = geometry_panel(out, d_gt.to(self.setup.device), n_gt.to(self.setup.device),
                                                     t["masks"])

    def score_body(self, model: PoseSplatter, local_index: torch.Tensor, frame: int, g: Gaussians,
                   b: dict[str, torch.Tensor]) -> None:
        """A test frame's overlap with its true body: the cells that became Gaussians (`local_index`, of the
        frame loaded as `b`) and the Gaussians' opacity inside it."""
        gt, kinds = self.setup.ds.gt(int(frame)), self.setup.ds.gt_kinds()
        self.iou3d.append(gt_iou3d(model, local_index, gt, kinds, b["centre"], b["heading"]))
        self.mass.append(gt_mass_inside(g, gt, kinds))

    def metrics(self) -> dict[str, Any]:
        """Means over views and frames (NaN without any), render time per view, the per-frame lists and frames."""
        metrics = {k: nanmean(v) for k, v in self.views.items()}
        metrics["gt_iou3d"] = float(np.mean(self.iou3d)) if self.iou3d else float("nan")
        metrics["gt_mass_inside"] = float(np.mean(self.mass)) if self.mass else float("nan")
        metrics.update({f"test_heldout_{k}": nanmean(v) for k, v in self.geometry.items()})
        metrics["test_surface_dist"] = nanmean(self.surface)
        metrics["render_ms"] = 1000 * self.render_s / max(self.renders, 1)
        metrics["gaussians_per_frame"] = float(np.mean(self.gaussians)) if self.gaussians else float("nan")
        metrics.update({metrics_schema.frame_column(k): v for k, v in self.per_frame.items()})
        metrics[metrics_schema.FRAMES] = self.test_frames
        return metrics
