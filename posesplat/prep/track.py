"""The track step: per output frame, a centre triangulated from the masks, then the visual hull around it in a
floor-aligned tracking cube: its centroid, its trunk's covariance (for the heading), its lowest point and its reach."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from posesplat.prep.blocks import run_blocks
from posesplat.prep.cache import cached_step, clear_stale, fingerprint
from posesplat.prep.cameras import Cameras, Rig
from posesplat.prep.config import PrepConfig
from posesplat.prep.errors import PrepError
from posesplat.prep.hull import grid_points, hull, mask_extent, mask_median, triangulate
from posesplat.prep.inputs import Inputs
from posesplat.prep.up import camera_up, world_from_calib
from posesplat.prep.videos import Footage, close_readers, read_masks

TRACK_SCALE = 1.25  # the tracking cube is this much larger than ell so that a rough centre still holds the animal
TRUNK = 0.135  # default trunk radius / ell: the heading is the principal axis of the hull within that distance of
# its centroid, because the tail and a turned head, which swing, would tilt the axis of the whole hull
REACH_DIRS = 32  # horizontal directions of the hull's support function (the reach of the animal from its centre)
TRACK_KEYS = ("rough", "centroid", "cov", "low", "reach", "clipped")  # a block's results, track.npz's arrays


@dataclass(frozen=True, eq=False)
class TrackJob:
    """What every tracking block reads."""

    footage: Footage
    rig: Rig  # extrinsics in the calibration frame
    grid_size: int
    ell: Optional[float]  # the config's cube side (m); None: from each frame's tracking cube
    track_side: Optional[float]  # tracking cube side (m); None: from each frame's masks
    trunk_radius: Optional[float]  # m; None: TRUNK * ell


@dataclass(frozen=True, eq=False)
class Track:
    """The track step's output (track.npz, per output frame) and its fingerprint."""

    rough: np.ndarray  # [T, 3] centre triangulated from the masks' medians
    centroid: np.ndarray  # [T, 3] the hull's centroid; NaN where no hull was found
    cov: np.ndarray  # [T, 3, 3] covariance of the hull's trunk
    low: np.ndarray  # [T] the hull's lowest point along the cameras' up
    reach: np.ndarray  # [T, REACH_DIRS + 2] the hull's support from its centroid: horizontal directions, up, down
    clipped: np.ndarray  # [T] 1 where the hull touches the tracking cube's faces (its reach is then a lower bound)
    fp: str

    @property
    def found(self) -> np.ndarray:
        """[T] bool: the frames with a hull."""
        return np.isfinite(self.centroid).all(1)


def config_sides(cfg: PrepConfig, ps_unit_m: float) -> tuple[Optional[float], Optional[float]]:
    """The config's cube side and tracking cube side in metres (None: derived from the animal)."""
    ell_given = cfg.ell_m or (cfg.ell * ps_unit_m if cfg.ell else None)
    track_side = cfg.ell_tracking * ps_unit_m if cfg.ell_tracking else (TRACK_SCALE * ell_given if ell_given else None)
    return ell_given, track_side


def track_block(job: TrackJob, j0: int, j1: int) -> dict[str, np.ndarray]:
    """Per output frame: rough centre, hull centroid [3], trunk covariance [3, 3], lowest point along the cameras'
    up. Also the hull's reach from its centroid [REACH_DIRS + 2] (horizontal directions of the floor basis, then up
    and down). And whether the hull touches the tracking cube's faces (the reach is then a lower bound)."""
    Ks, Es, obs = job.rig.Ks, job.rig.Es, list(job.rig.observed)
    up = camera_up(Es)
    basis = world_from_calib(up, np.zeros((1, 3)), 0.0)[:3, :3]  # rows: two horizontal axes and up
    n = int(np.ceil(job.grid_size * TRACK_SCALE))
    unit = grid_points(n, 1.0) @ basis  # a unit cube aligned with the floor, scaled per frame
    theta = np.arange(REACH_DIRS) * 2 * np.pi / REACH_DIRS
    dirs = np.concatenate([np.cos(theta)[:, None] * basis[0] + np.sin(theta)[:, None] * basis[1], [up, -up]])
    out = {k: [] for k in TRACK_KEYS}
    for masks in read_masks(job.footage, obs, j0, j1)[1]:  # [V, h, w] per frame
        rough = triangulate([mask_median(m) for m in masks], Ks[obs], Es[obs])
        seen = [v for v, m in enumerate(masks) if m.any()]  # a view that lost the animal does not carve it away
        if np.isnan(rough).any() or len(seen) < 2:
            pts, side = np.zeros((0, 3)), np.nan
        else:
            side = job.track_side or TRACK_SCALE * 1.2 * mask_extent(masks, Ks[obs], Es[obs], rough)
            pts = unit * side + rough
            pts = pts[hull(masks[seen], Ks[obs][seen], Es[obs][seen], pts)]
        out["rough"].append(rough)
        if len(pts) < 4:
            for k, shape in (("centroid", 3), ("cov", (3, 3)), ("low", ()), ("reach", REACH_DIRS + 2)):
                out[k].append(np.full(shape, np.nan))
            out["clipped"].append(0.0)
            continue
        centroid = pts.mean(0)
        ell = job.ell or side / TRACK_SCALE
        trunk = pts[np.linalg.norm(pts - centroid, axis=1) < (job.trunk_radius or TRUNK * ell)]
        local = (pts - rough) @ basis.T  # floor-aligned cube coordinates
        out["centroid"].append(centroid)
        out["cov"].append(np.cov(trunk.T, bias=True) if len(trunk) >= 4 else np.full((3, 3), np.nan))
        out["low"].append((pts @ up).min() - 0.5 * side / n)
        out["reach"].append(((pts - centroid) @ dirs.T).max(0) + 0.5 * side / n)
        out["clipped"].append(float(np.abs(local).max() > side / 2 - side / n))
    return {k: np.asarray(v) for k, v in out.items()}


def track_frames(inp: Inputs, job: TrackJob, fp: str) -> dict[str, np.ndarray]:
    """Every output frame tracked in parallel blocks (resuming those of an interrupted run), joined into arrays."""
    clear_stale(inp.work, "track", f"track-{fp}")
    try:
        res = run_blocks(track_block, job, inp.n_out, inp.work / f"track-{fp}", inp.workers, "track", inp.progress)
    finally:
        close_readers()  # those of this process (blocks run here with one worker)
    return {k: np.concatenate([np.asarray(r[k], dtype=np.float64).reshape(-1, *np.shape(r[k])[1:])
                               for r in res]) for k in TRACK_KEYS}


def track_step(inp: Inputs, cams: Cameras, ell_given: Optional[float], track_side: Optional[float]) -> Track:
    """The track, computed or read back from the work folder; refused when the tracking cube clips the animal."""
    cfg, obs = inp.cfg, inp.observed
    job = TrackJob(inp.footage, Rig(cams.Ks, cams.Es, tuple(obs)), cfg.grid_size, ell_given, track_side,
                   cfg.trunk_radius)
    fp = fingerprint(cams.fp, [inp.source[f"mask video {c}"] for c in obs], obs, ell_given, track_side,
                     cfg.grid_size, cfg.frame_jump, cfg.mask_threshold, inp.n_out, list(inp.footage.mask_fps),
                     cfg.trunk_radius)
    tr = Track(**cached_step(inp.work / "track.npz", fp, lambda: track_frames(inp, job, fp), inp.log), fp=fp)
    found = tr.found
    clipped = float(tr.clipped[found].mean()) if found.any() else 0.0
    if clipped > 0.05:
        key = "ell_tracking" if cfg.ell_tracking else ("ell_m" if cfg.ell_m else "ell") if ell_given else None
        fix = f"set '{key}' larger" if key else "set 'ell_tracking'"
        raise PrepError(f"{inp.config}: the tracking cube ({track_side or 0:.3g} m) clips the carved animal in "
                        f"{clipped:.0%} of frames: {fix} (in Pose Splatter's unit, {cams.ps_unit_m:.4g} m)")
    return tr
