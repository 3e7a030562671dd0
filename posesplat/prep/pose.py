"""The pose step: the up direction and world frame (z up, metres, origin on the floor under the path). Then per
frame the smoothed centre and the heading from the hull's principal axis. The heading's 180-degree ambiguity is
resolved by continuity and the direction of travel."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from posesplat.prep.cache import cached_step, fingerprint
from posesplat.prep.cameras import Cameras
from posesplat.prep.config import PrepConfig
from posesplat.prep.cube import cube_needed
from posesplat.prep.errors import PrepError
from posesplat.prep.inputs import Inputs
from posesplat.prep.track import Track
from posesplat.prep.up import find_up, world_from_calib


@dataclass(frozen=True, eq=False)
class Pose:
    """The pose step's output (pose.npz) and its fingerprint."""

    centre: np.ndarray  # [T, 3] world, smoothed
    heading: np.ndarray  # [T] yaw about +z, unwrapped
    world_from_calib: np.ndarray  # [4, 4] rigid: metric calibration frame -> world
    up: np.ndarray  # [3] up in the calibration frame
    up_method: np.ndarray  # 0-d str: where up came from
    extrinsics: np.ndarray  # [C, 4, 4] world-to-camera, metres
    need: np.ndarray  # [frames with a hull] side of the heading-aligned cube that holds each frame's hull
    fp: str


def gaussian_smooth(x: np.ndarray, sigma: float) -> np.ndarray:
    """Smooth [T, ...] along time with a Gaussian; odd reflection at the ends keeps linear trends unbiased."""
    if sigma <= 0 or len(x) < 2:
        return x
    r = int(np.ceil(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    flat = x.reshape(len(x), -1)
    padded = np.pad(flat, ((r, r), (0, 0)), mode="reflect", reflect_type="odd")
    return np.stack([np.convolve(c, k, "valid") for c in padded.T], 1).reshape(x.shape)


def fill_gaps(x: np.ndarray, what: str) -> np.ndarray:
    """Linearly interpolate frames [T, D] that are NaN (animal not found) from their neighbours."""
    ok = np.isfinite(x).all(1)
    if not ok.any():
        raise PrepError(f"{what}: the animal was not found in any frame (check the mask videos and cameras)")
    t = np.arange(len(x))
    return np.stack([np.interp(t, t[ok], x[ok, d]) for d in range(x.shape[1])], 1)


def headings_from_axes(axes: np.ndarray, centres: np.ndarray, sigma: float) -> np.ndarray:
    """Unwrapped yaw [T] from principal axes [T, 2]: continuity flips, smoothing, sign by the direction of travel."""
    axes = axes.copy()
    for t in range(1, len(axes)):
        if axes[t] @ axes[t - 1] < 0:
            axes[t] = -axes[t]
    axes = gaussian_smooth(axes, sigma)
    axes /= np.maximum(np.linalg.norm(axes, axis=1, keepdims=True), 1e-12)
    vel = np.gradient(centres[:, :2], axis=0) if len(centres) > 1 else np.zeros_like(axes)
    if (vel * axes).sum() < 0:  # animals mostly walk forwards
        axes = -axes
    return np.unwrap(np.arctan2(axes[:, 1], axes[:, 0]))


def pose_from_track(cfg: PrepConfig, config: Path, Es: np.ndarray, tr: Track, lines_up: Optional[np.ndarray]
                    ) -> dict[str, np.ndarray]:
    """pose.npz's arrays from the track and the cameras' extrinsics Es [C, 4, 4] (calibration frame)."""
    centroid = fill_gaps(tr.centroid, str(config))
    if lines_up is not None:
        up, method = lines_up, "vertical lines"
    else:
        up, method = find_up(Es, tr.centroid, cfg.up)
    lows = tr.low[np.isfinite(tr.low)]
    M = world_from_calib(up, centroid, float(np.percentile(lows, 1)))
    centres = gaussian_smooth(centroid @ M[:3, :3].T + M[:3, 3], cfg.smooth_frames)
    ok = np.isfinite(tr.cov).all((1, 2))
    cov_w = np.einsum("ij,tjk,lk->til", M[:3, :3], np.where(ok[:, None, None], tr.cov, np.eye(3)), M[:3, :3])
    axes = np.linalg.eigh(cov_w[:, :2, :2])[1][:, :, 1]  # [T, 2] major axis on the floor
    nearest = np.flatnonzero(ok)[np.abs(np.arange(len(ok))[:, None] - np.flatnonzero(ok)[None]).argmin(1)]
    axes = axes[nearest]  # frames without a hull take the nearest frame's axis
    headings = headings_from_axes(axes, centres, cfg.smooth_frames)
    found = tr.found
    need = cube_needed(tr.reach[found], headings[found])  # the heading-aligned cube each frame's hull needs
    return {"centre": centres, "heading": headings, "world_from_calib": M, "up": up, "up_method": np.array(method),
            "extrinsics": Es @ np.linalg.inv(M), "need": need}


def pose_step(inp: Inputs, cams: Cameras, tr: Track, lines_up: Optional[np.ndarray]) -> Pose:
    """The pose, computed or read back from the work folder."""
    cfg, lines = inp.cfg, inp.lines
    fp = fingerprint(tr.fp, cfg.up, cfg.smooth_frames, *([lines] if lines is not None else []))
    ps = cached_step(inp.work / "pose.npz", fp, lambda: pose_from_track(cfg, inp.config, cams.Es, tr, lines_up),
                     inp.log)
    return Pose(**ps, fp=fp)
