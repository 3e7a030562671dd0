"""Per-frame geometry from masks (numpy, so the worker processes need no torch): a point triangulated from the masks'
medians, the animal's size from their boxes, and the visual hull of grid points by carve.carve's rule."""

from __future__ import annotations

from typing import Optional

import numpy as np


def mask_median(mask: np.ndarray) -> Optional[np.ndarray]:
    """Pixel-centre (u, v) of the weighted medians of a mask's column and row sums, or None if empty."""
    if not mask.any():
        return None
    med = [np.searchsorted(np.cumsum(s), 0.5 * s.sum()) + 0.5 for s in (mask.sum(0), mask.sum(1))]
    return np.array(med)


def triangulate(uvs: list[Optional[np.ndarray]], Ks: np.ndarray, Es: np.ndarray) -> np.ndarray:
    """Least-squares (DLT) 3D point [3] from pixel points in >= 2 views (None: not seen); NaN if too few."""
    rows = []
    for uv, K, E in zip(uvs, Ks, Es):
        if uv is not None:
            P = K @ E[:3]
            rows += [uv[0] * P[2] - P[0], uv[1] * P[2] - P[1]]
    if len(rows) < 4:
        return np.full(3, np.nan)
    A = np.array(rows)
    return np.linalg.lstsq(A[:, :3], -A[:, 3], rcond=None)[0]


def grid_points(n: int, side: float) -> np.ndarray:
    """Cell centres [n^3, 3] of a cube of `side` centred at the origin, x-major (like carve.voxel_centres)."""
    ax = (np.arange(n) + 0.5) * side / n - side / 2
    return np.stack(np.meshgrid(ax, ax, ax, indexing="ij"), -1).reshape(-1, 3)


def hull(masks: np.ndarray, Ks: np.ndarray, Es: np.ndarray, world: np.ndarray) -> np.ndarray:
    """Visual hull: bool [P] for world points [P, 3] (masks [V, H, W]), by the rule of carve.carve. A view whose mask
    touches its image border has a say only about the points it images. The other views have a say about every
    point. A point is in the hull when at least two views have a say and all of those show foreground. A point
    leaves the candidates at the first view that carves it away: later views project only those still inside."""
    H, W = masks.shape[1:]
    idx, say, pts = np.arange(len(world)), np.zeros(len(world), dtype=np.int64), world  # candidates [N], [N], [N, 3]
    for m, K, E in zip(masks, Ks, Es):
        P = K @ E[:3]
        uvw = pts @ P[:, :3].T + P[:, 3]
        z = uvw[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            j, i = np.floor(uvw[:, 0] / z), np.floor(uvw[:, 1] / z)
        ok = (z > 0) & (i >= 0) & (i < H) & (j >= 0) & (j < W)
        fg = np.zeros(len(pts), dtype=bool)
        fg[ok] = m.reshape(-1)[i[ok].astype(np.int64) * W + j[ok].astype(np.int64)]
        touches = m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any()
        has_say = ok if touches else np.ones(len(pts), dtype=bool)
        keep = fg | ~has_say
        idx, say, pts = idx[keep], (say + has_say)[keep], pts[keep]
    inside = np.zeros(len(world), dtype=bool)
    inside[idx[say >= min(2, len(masks))]] = True
    return inside


def mask_extent(masks: np.ndarray, Ks: np.ndarray, Es: np.ndarray, point: np.ndarray) -> float:
    """The animal's size at `point` [3] from its masks' bounding boxes: the largest box side over the views, in
    pixels, times the point's depth over the focal length (0 if no mask has foreground)."""
    size = 0.0
    for m, K, E in zip(masks, Ks, Es):
        if m.any():
            rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
            depth = (E[:3, :3] @ point + E[:3, 3])[2]
            size = max(size, (cols[-1] - cols[0] + 1) / K[0, 0] * depth, (rows[-1] - rows[0] + 1) / K[1, 1] * depth)
    return size
