"""Geometry metrics of a render against true depth and normal maps (docs/metrics.md): depth error, normal angular
error and a Chamfer-style surface distance. Lengths are in the dataset's unit (metres); lower is better.

    per_view = view_errors(out.depth, out.normals, depth_gt, normal_gt, masks)   # lists, one value per view
    d = surface_distance(points_pred, points_true)                              # [N, 3], [M, 3] -> float
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.spatial import KDTree
from torch import Tensor

from posesplat.render.project import depth_to_points

MAX_POINTS = 4096  # surface points kept per side for the Chamfer distance (an even subsample)


@torch.no_grad()
def view_errors(depth: Tensor, normals: Tensor, depth_gt: Tensor, normal_gt: Tensor, masks: Tensor
                ) -> dict[str, list[float]]:
    """Per view, over the pixels where the true mask is set: mean |depth - true depth| (m), and the same relative
    to the true depth (the camera distance along z). Also the mean angle between the depth map's normals and the
    true normals, in degrees. Pixels without a rendered normal, on the image border, are left out of the angle. NaN
    without pixels.

    depth, depth_gt [V, H, W]; normals, normal_gt [V, H, W, 3] world; masks [V, H, W] (true mask, 0/1)."""
    m = masks > 0.5
    err = (depth - depth_gt).abs()
    n = m.flatten(1).sum(1).clamp_min(1)
    nan = torch.full_like(n, float("nan"), dtype=depth.dtype)
    has = m.flatten(1).any(1)
    depth_err = torch.where(has, (err * m).flatten(1).sum(1) / n, nan)
    rel = torch.where(m, err / depth_gt.clamp_min(1e-12), torch.zeros_like(err))
    depth_rel = torch.where(has, rel.flatten(1).sum(1) / n, nan)
    cos = (normals * normal_gt).sum(-1).clamp(-1, 1)
    ok = m & (normals.norm(dim=-1) > 0.5) & (normal_gt.norm(dim=-1) > 0.5)
    angle = torch.rad2deg(torch.arccos(cos)) * ok
    k = ok.flatten(1).sum(1)
    normal_err = torch.where(k > 0, angle.flatten(1).sum(1) / k.clamp_min(1), nan)
    return {"depth_err": depth_err.tolist(), "depth_err_rel": depth_rel.tolist(), "normal_err": normal_err.tolist()}


def surface_points(depth: Tensor, keep: Tensor, viewmats: Tensor, Ks: Tensor) -> Tensor:
    """World points [N, 3] of a z-depth map [V, H, W] at the pixels where keep [V, H, W] is set."""
    return depth_to_points(depth, viewmats, Ks)[keep > 0.5]


def _subsample(p: Tensor) -> Tensor:
    return p if len(p) <= MAX_POINTS else p[torch.linspace(0, len(p) - 1, MAX_POINTS, device=p.device).long()]


@torch.no_grad()
def surface_distance(pred: Tensor, true: Tensor) -> float:
    """Chamfer-style distance (m) between point sets [N, 3] and [M, 3]: the mean of (mean distance from each
    predicted point to the nearest true point) and (from each true point to the nearest predicted one), as 2DGS
    measures on DTU. Each side evenly subsampled to MAX_POINTS. NaN when either set is empty."""
    if not len(pred) or not len(true):
        return float("nan")
    a, b = (_subsample(p.double()).cpu().numpy() for p in (pred, true))
    if not (np.isfinite(a).all() and np.isfinite(b).all()):  # a diverged render: NaN, as a distance matrix gives
        return float("nan")
    to_true, _ = KDTree(b).query(a)  # nearest-neighbour distances [N], exact (a k-d tree, not the N x M matrix)
    to_pred, _ = KDTree(a).query(b)  # [M]
    return float(0.5 * (to_true.mean() + to_pred.mean()))
