"""The per-frame reference of posesplat.prep's block steps: the code of commit eb44945 (before issue 47), one frame at a
time, its videos decoded by the ffmpeg executable through imageio-ffmpeg (a subprocess per read, the timestamps from
ffmpeg's showinfo filter). tests/test_prep_reference.py checks that an import equals it, value for value.

Only the arithmetic is here; the steps' jobs (cameras, poses) are those the import wrote into its work folder."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Iterator, Optional

import imageio_ffmpeg
import numpy as np

PASSTHROUGH = ["-fps_mode", "passthrough"]


def frame_times(path: Path) -> np.ndarray:
    """Presentation time [N] of every frame, as ffmpeg's showinfo prints it (one full decode)."""
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostats", "-i", str(path), "-map", "0:v:0",
           "-vf", "showinfo", *PASSTHROUGH, "-f", "null", "-"]
    r = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return np.asarray([float(t) for t in re.findall(r"pts_time:\s*([-+0-9.eE]+)", r.stderr)])


def video_info(path: Path) -> tuple[int, int, int, float, Optional[float]]:
    """(frames, width, height, container fps, the rate to seek with or None), as the old code found them."""
    gen = imageio_ffmpeg.read_frames(str(path), output_params=PASSTHROUGH)
    meta = next(gen)
    gen.close()
    times = frame_times(path)
    seek = None
    if len(times) > 1 and times[-1] > times[0]:
        rate = (len(times) - 1) / (times[-1] - times[0])
        if np.abs(times - times[0] - np.arange(len(times)) / rate).max() <= 0.1 / rate:
            seek = float(rate)
    return len(times), int(meta["size"][0]), int(meta["size"][1]), float(meta.get("fps") or 0), seek


def read_video(path: Path, start: int, count: int, step: int, fps: Optional[float]) -> Iterator[np.ndarray]:
    """Frames start, start+step, ... as [H, W, 3] uint8: a new ffmpeg process, seeking by time with a rate."""
    seek = ["-ss", f"{(start - 0.5) / fps:.6f}"] if start > 0 and fps else None
    skip = 0 if seek or start == 0 else start
    gen = imageio_ffmpeg.read_frames(str(path), input_params=seek, output_params=PASSTHROUGH)
    meta = next(gen)
    w, h = meta["size"]
    got = 0
    try:
        for n, buf in enumerate(gen):
            if n >= skip and (n - skip) % step == 0:
                yield np.frombuffer(buf, dtype=np.uint8).reshape(h, w, 3)
                got += 1
                if got == count:
                    return
    finally:
        gen.close()


def binarise(frame: np.ndarray, ds: int, threshold: int) -> np.ndarray:
    m = frame.mean(-1) >= threshold
    if ds == 1:
        return m
    h, w = m.shape[0] // ds * ds, m.shape[1] // ds * ds
    return m[:h, :w].reshape(h // ds, ds, w // ds, ds).mean((1, 3)) >= 0.5


def read_masks(footage, views: list[int], j0: int, j1: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    jump = footage.frame_jump
    its = [read_video(Path(footage.mask_videos[c]), j0 * jump, j1 - j0, jump, footage.mask_fps[c]) for c in views]
    for frames in zip(*its):
        full = np.stack([f.mean(-1) >= footage.threshold for f in frames])
        small = np.stack([binarise(f, footage.ds, footage.threshold) for f in frames])
        yield full, small


def hull(masks: np.ndarray, Ks: np.ndarray, Es: np.ndarray, world: np.ndarray) -> np.ndarray:
    inside = np.ones(len(world), dtype=bool)
    say = np.zeros(len(world), dtype=np.int64)
    for m, K, E in zip(masks, Ks, Es):
        P = K @ E[:3]
        uvw = world @ P[:, :3].T + P[:, 3]
        z = uvw[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            j, i = np.floor(uvw[:, 0] / z), np.floor(uvw[:, 1] / z)
        ok = (z > 0) & (i >= 0) & (i < m.shape[0]) & (j >= 0) & (j < m.shape[1])
        fg = np.zeros(len(world), dtype=bool)
        fg[ok] = m[i[ok].astype(np.int64), j[ok].astype(np.int64)]
        touches = m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any()
        has_say = ok if touches else np.ones(len(world), dtype=bool)
        inside &= fg | ~has_say
        say += has_say
    return inside & (say >= min(2, len(masks)))


def track(job, j0: int, j1: int) -> dict[str, np.ndarray]:
    """The old track_block: per output frame, one at a time."""
    from posesplat.prep.hull import grid_points, mask_extent, mask_median, triangulate  # private: unchanged helpers
    from posesplat.prep.track import REACH_DIRS, TRACK_KEYS, TRACK_SCALE, TRUNK  # private: as above
    from posesplat.prep.up import camera_up, world_from_calib  # private: as above

    Ks, Es, obs = job.rig.Ks, job.rig.Es, list(job.rig.observed)
    up = camera_up(Es)
    basis = world_from_calib(up, np.zeros((1, 3)), 0.0)[:3, :3]
    n = int(np.ceil(job.grid_size * TRACK_SCALE))
    unit = grid_points(n, 1.0) @ basis
    theta = np.arange(REACH_DIRS) * 2 * np.pi / REACH_DIRS
    dirs = np.concatenate([np.cos(theta)[:, None] * basis[0] + np.sin(theta)[:, None] * basis[1], [up, -up]])
    out = {k: [] for k in TRACK_KEYS}
    for _, masks in read_masks(job.footage, obs, j0, j1):
        rough = triangulate([mask_median(m) for m in masks], Ks[obs], Es[obs])
        seen = [v for v, m in enumerate(masks) if m.any()]
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
        local = (pts - rough) @ basis.T
        out["centroid"].append(centroid)
        out["cov"].append(np.cov(trunk.T, bias=True) if len(trunk) >= 4 else np.full((3, 3), np.nan))
        out["low"].append((pts @ up).min() - 0.5 * side / n)
        out["reach"].append(((pts - centroid) @ dirs.T).max(0) + 0.5 * side / n)
        out["clipped"].append(float(np.abs(local).max() > side / 2 - side / n))
    return {k: np.asarray(v) for k, v in out.items()}


def composite(frame: np.ndarray, mask_full: np.ndarray, mask: np.ndarray, ds: int, bg: np.ndarray) -> np.ndarray:
    img = np.where(mask_full[..., None], frame.astype(np.float32), bg * 255)
    if ds > 1:
        h, w = img.shape[0] // ds * ds, img.shape[1] // ds * ds
        img = img[:h, :w].reshape(h // ds, ds, w // ds, ds, 3).mean((1, 3))
    img = np.where(mask[..., None], img, bg * 255)
    return np.round(img).clip(0, 255).astype(np.uint8)


def frames(job, j0: int, j1: int) -> tuple[np.ndarray, np.ndarray, list]:
    """The old frames_block, one frame at a time: (images [F, V, h, w, 3], masks [F, V, h, w], boxes)."""
    from posesplat.prep.hull import grid_points  # private: an unchanged helper

    Ks, Es, obs, views = job.rig.Ks, job.rig.Es, list(job.rig.observed), list(range(len(job.footage.videos)))
    bg, G, ft = np.asarray(job.background), job.grid_size, job.footage
    local = grid_points(G, job.ell)
    videos = [read_video(Path(ft.videos[c]), j0 * ft.frame_jump, j1 - j0, ft.frame_jump, ft.video_fps[c])
              for c in views]
    images, masks, boxes = [], [], []
    for j, (rgb, (full, small)) in enumerate(zip(zip(*videos), read_masks(ft, views, j0, j1)), start=j0):
        images.append(np.stack([composite(f, fm, m, ft.ds, bg) for f, fm, m in zip(rgb, full, small)]))
        masks.append(small.astype(np.uint8))
        c, s = np.cos(job.headings[j]), np.sin(job.headings[j])
        world = local @ np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]).T + job.centres[j]
        seen = [v for v in obs if small[v].any()]
        occ = hull(small[seen], Ks[seen], Es[seen], world) if len(seen) >= 2 else np.zeros(len(world), bool)
        occ = occ.reshape(G, G, G)
        idx = [np.flatnonzero(occ.any(axis=tuple(a for a in range(3) if a != ax))) for ax in range(3)]
        boxes.append([[int(i.min()), int(i.max()) + 1] if len(i) else None for i in idx])
    return np.stack(images), np.stack(masks), boxes
