"""Import Pose Splatter / DANNCE-layout recordings into the dataset format, with no manual steps.

`python -m posesplat.prep CONFIG [--out DATASET.zarr] [--workers N]`

Steps, each written atomically with its inputs' fingerprint into a work folder beside the output (so a re-run skips
what is finished and an interrupted run resumes): `cameras` (HDF5 -> metric OpenCV cameras), `track` (per frame: a
centre triangulated from the masks, then the visual hull's centroid and covariance), `pose` (up direction, world
frame, smoothed centres, headings from the hull's principal axis with the 180-degree ambiguity resolved by
continuity), `frames` (images and masks written in parallel, one zarr chunk per frame, no locks; crop indices from
the carved volumes) and `finish` (the store is renamed into place). See docs/prep.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import shutil
import signal
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from posesplat.progress import Progress

PREP_VERSION = "1"
TRACK_SCALE = 1.25  # the tracking cube is this much larger than ell so that a rough centre still holds the animal
TRUNK = 0.135  # default trunk radius / ell: the heading is the principal axis of the hull within that distance of
# its centroid, because the tail and a turned head, which swing, would tilt the axis of the whole hull
BLOCK = 16  # output frames per parallel job (one done-marker per block)
FAULT_ENV = "POSESPLAT_PREP_FAULT"  # test hook: "frames:<block>" SIGKILLs the process in the middle of that block
CAMERA_GROUP, CAMERA_DATASETS = "camera_parameters", ("rotation", "translation", "intrinsic")  # the camera HDF5


class PrepError(ValueError):
    """An input is missing, unreadable or inconsistent; the message is one line naming it."""


# ----------------------------------------------------------------------------------------------- config


class PrepConfig(BaseModel):
    """The Pose Splatter keys prep reads (others, e.g. training keys, are ignored)."""

    model_config = ConfigDict(extra="ignore")
    data_directory: str = Field("", description="prefix of video_fns and mask_video_fns (Pose Splatter)")
    project_directory: str = Field("", description="prefix of camera_fn and the default output (Pose Splatter)")
    camera_fn: str
    video_fns: list[str] = Field(min_length=1)
    mask_video_fns: list[str] = Field(min_length=1)
    image_downsample: int = Field(1, ge=1)
    frame_jump: int = Field(1, ge=1)
    holdout_views: list[int] = []
    ell: float = Field(gt=0, description="carving-cube side in metres")
    grid_size: int = Field(48, ge=8, le=256)
    volume_idx: Optional[list[list[int]]] = None
    unit_m: float = Field(1.0, gt=0, description="metres per calibration unit (DANNCE millimetres: 0.001)")
    principal_point: Literal["opencv", "pixel_corner"] = Field(
        "opencv", description="opencv: the top-left pixel's centre is (0, 0); pixel_corner: it is (0.5, 0.5)")
    up: Optional[list[float]] = Field(None, min_length=3, max_length=3, description="up in calibration coordinates")
    vertical_lines: Optional[list[list[tuple[tuple[float, float], tuple[float, float]]]]] = Field(
        None, description="per camera, segments [[u1, v1], [u2, v2]] (video pixels) along vertical edges: up is "
                          "triangulated from them")
    vertical_lines_fn: Optional[str] = Field(
        None, description="Pose Splatter's vertical-lines npz (img_nums [M], lines [M, 2, 2]), in project_directory")
    background: list[float] = Field([0.0, 0.0, 0.0], min_length=3, max_length=3)
    mask_threshold: int = Field(128, ge=1, le=255)
    smooth_frames: float = Field(1.0, ge=0, description="Gaussian sigma (output frames) for centres and headings")
    trunk_radius: Optional[float] = Field(None, gt=0, description="metres; heading from the hull within it of the "
                                                                 "centroid (default 0.135 ell)")
    fps: Optional[float] = None


def load_prep_config(path: str | Path) -> tuple[PrepConfig, dict[str, Path]]:
    """Read and validate a prep config; returns it and its resolved input paths (camera, videos, masks)."""
    path = Path(path)
    try:
        values = json.loads(path.read_text())
    except FileNotFoundError:
        raise PrepError(f"{path}: no such config file") from None
    except json.JSONDecodeError as e:
        raise PrepError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None
    try:
        cfg = PrepConfig.model_validate(values)
    except ValidationError as err:
        e = err.errors()[0]
        key = ".".join(str(p) for p in e["loc"])
        raise PrepError(f"{path}: key '{key}': {e['msg']}") from None
    base = path.parent
    data, project = base / cfg.data_directory, base / (cfg.project_directory or cfg.data_directory)
    files = {"camera": project / cfg.camera_fn}
    files |= {f"video {c}": data / v for c, v in enumerate(cfg.video_fns)}
    files |= {f"mask video {c}": data / v for c, v in enumerate(cfg.mask_video_fns)}
    if len(cfg.video_fns) != len(cfg.mask_video_fns):
        raise PrepError(f"{path}: {len(cfg.video_fns)} video_fns but {len(cfg.mask_video_fns)} mask_video_fns")
    for h in cfg.holdout_views:
        if not 0 <= h < len(cfg.video_fns):
            raise PrepError(f"{path}: key 'holdout_views': view {h} out of range [0, {len(cfg.video_fns)})")
    if len(set(cfg.holdout_views)) >= len(cfg.video_fns) - 1:
        raise PrepError(f"{path}: key 'holdout_views': at least two cameras must stay observed for carving")
    given = [k for k in ("up", "vertical_lines", "vertical_lines_fn") if getattr(cfg, k) is not None]
    if len(given) > 1:
        raise PrepError(f"{path}: keys {' and '.join(repr(k) for k in given)} both set the up direction; keep one")
    if cfg.vertical_lines is not None and len(cfg.vertical_lines) != len(cfg.video_fns):
        raise PrepError(f"{path}: key 'vertical_lines': {len(cfg.vertical_lines)} cameras but the config names "
                        f"{len(cfg.video_fns)} videos (one list of segments per camera, [] for none)")
    if cfg.vertical_lines_fn is not None:
        files["vertical lines"] = project / cfg.vertical_lines_fn
    for name, f in files.items():
        if not f.is_file():
            raise PrepError(f"{f}: no such file ({name} in {path})")
    return cfg, files


def fingerprint(*parts: Any) -> str:
    """A short stable hash of JSON-able parts (file identities are (path, size, mtime))."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def file_id(path: Path) -> list:
    st = path.stat()
    return [str(path.resolve()), st.st_size, st.st_mtime_ns]


# ----------------------------------------------------------------------------------------------- inputs


def read_cameras(cfg: PrepConfig, path: Path, n_views: int) -> tuple[np.ndarray, np.ndarray]:
    """Camera HDF5 -> intrinsics [C,3,3] (gsplat pixel convention, not yet downsampled), metric extrinsics [C,4,4]."""
    import h5py

    try:
        with h5py.File(path, "r") as h:
            if not isinstance(h.get(CAMERA_GROUP), h5py.Group):
                found = ", ".join(sorted(h.keys())) or "nothing"
                raise PrepError(f"{path}: missing HDF5 group '{CAMERA_GROUP}' (the file holds: {found})")
            g = h[CAMERA_GROUP]
            for k in CAMERA_DATASETS:
                if not isinstance(g.get(k), h5py.Dataset):
                    found = ", ".join(sorted(g.keys())) or "nothing"
                    raise PrepError(f"{path}: missing HDF5 dataset '{CAMERA_GROUP}/{k}' (the group holds: {found})")
            R, t, K = (np.asarray(g[k][()], dtype=np.float64) for k in CAMERA_DATASETS)
    except OSError as e:
        raise PrepError(f"{path}: not a readable HDF5 file ({e})".splitlines()[0]) from None
    for name, arr, shape in (("rotation", R, (3, 3)), ("translation", t, (3,)), ("intrinsic", K, (3, 3))):
        if arr.ndim != len(shape) + 1 or arr.shape[1:] != shape:
            raise PrepError(f"{path}: camera_parameters/{name} has shape {list(arr.shape)}, expected [C, "
                            f"{', '.join(map(str, shape))}]")
        if len(arr) != n_views:
            raise PrepError(f"{path}: camera_parameters/{name} has {len(arr)} cameras but the config names "
                            f"{n_views} videos")
        if not np.isfinite(arr).all():
            raise PrepError(f"{path}: camera_parameters/{name} has non-finite values")
    for c in range(n_views):
        if not np.allclose(R[c] @ R[c].T, np.eye(3), atol=1e-4) or np.linalg.det(R[c]) < 0.999:
            raise PrepError(f"{path}: camera_parameters/rotation[{c}] is not a rotation matrix")
        if abs(K[c, 2, 2] - 1) > 1e-6 or np.abs(K[c, 2, :2]).max() > 1e-6:
            hint = " (it looks transposed: the principal point is in the bottom row)" if abs(K[c, 2, 0]) > 1 else ""
            raise PrepError(f"{path}: camera_parameters/intrinsic[{c}] must be [[fx,0,cx],[0,fy,cy],[0,0,1]]{hint}")
    K = K.copy()
    if cfg.principal_point == "opencv":
        K[:, :2, 2] += 0.5
    E = np.tile(np.eye(4), (n_views, 1, 1))
    E[:, :3, :3], E[:, :3, 3] = R, t * cfg.unit_m
    return K, E


def video_info(path: Path) -> tuple[int, int, int, float]:
    """(frames, width, height, fps) of a video, decoding nothing but the container."""
    import imageio_ffmpeg

    try:
        gen = imageio_ffmpeg.read_frames(str(path))
        meta = next(gen)
        gen.close()
        n, _ = imageio_ffmpeg.count_frames_and_secs(str(path))
    except (RuntimeError, OSError, StopIteration, IndexError) as e:
        raise PrepError(f"{path}: unreadable video ({type(e).__name__}: {e})".splitlines()[0]) from None
    return int(n), int(meta["size"][0]), int(meta["size"][1]), float(meta["fps"])


def read_video(path: Path, start: int, count: int, step: int, fps: float) -> Iterator[np.ndarray]:
    """Frames start, start+step, ... (count of them) as [H, W, 3] uint8; seeks, then decodes sequentially."""
    import imageio_ffmpeg

    seek = ["-ss", f"{(start - 0.5) / fps:.6f}"] if start > 0 else None  # accurate seek to frame `start`
    gen = imageio_ffmpeg.read_frames(str(path), input_params=seek)
    meta = next(gen)
    w, h = meta["size"]
    try:
        got = 0
        for i, buf in enumerate(gen):
            if i % step == 0:
                yield np.frombuffer(buf, dtype=np.uint8).reshape(h, w, 3)
                got += 1
                if got == count:
                    return
        raise PrepError(f"{path}: ended after frame {start + i} while frame {start + (count - 1) * step} was needed")
    finally:
        gen.close()


def binarise(frame: np.ndarray, ds: int, threshold: int) -> np.ndarray:
    """Mask video frame [H, W, 3] -> bool [H/ds, W/ds]: threshold, then box-average >= 0.5."""
    m = frame.mean(-1) >= threshold
    if ds == 1:
        return m
    h, w = m.shape[0] // ds * ds, m.shape[1] // ds * ds
    return m[:h, :w].reshape(h // ds, ds, w // ds, ds).mean((1, 3)) >= 0.5


def composite(frame: np.ndarray, mask_full: np.ndarray, mask: np.ndarray, ds: int, bg: np.ndarray) -> np.ndarray:
    """RGB frame -> uint8 [H/ds, W/ds, 3] on the background colour: composite, box-average, re-mask."""
    img = np.where(mask_full[..., None], frame.astype(np.float32), bg * 255)
    if ds > 1:
        h, w = img.shape[0] // ds * ds, img.shape[1] // ds * ds
        img = img[:h, :w].reshape(h // ds, ds, w // ds, ds, 3).mean((1, 3))
    img = np.where(mask[..., None], img, bg * 255)
    return np.round(img).clip(0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------- geometry


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
    """Visual hull: bool [P] for world points [P, 3] whose pixel is foreground in every view (masks [V, H, W])."""
    alive = np.arange(len(world))
    for m, K, E in zip(masks, Ks, Es):  # each view keeps only the points still inside: later views test few
        P = K @ E[:3]
        uvw = world[alive] @ P[:, :3].T + P[:, 3]
        z = uvw[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            j, i = np.floor(uvw[:, 0] / z), np.floor(uvw[:, 1] / z)
        ok = (z > 0) & (i >= 0) & (i < m.shape[0]) & (j >= 0) & (j < m.shape[1])
        alive, i, j = alive[ok], i[ok].astype(np.int64), j[ok].astype(np.int64)
        alive = alive[m[i, j]]
    inside = np.zeros(len(world), dtype=bool)
    inside[alive] = True
    return inside


def camera_up(Es: np.ndarray) -> np.ndarray:
    """Mean of the cameras' up axes (-y of each camera) in world coordinates: up for a rig of upright cameras."""
    up = -Es[:, 1, :3].sum(0)
    return up / np.linalg.norm(up)


def find_up(Es: np.ndarray, centroids: np.ndarray, override: Optional[list[float]]) -> tuple[np.ndarray, str]:
    """Up [3]: the plane of the animal's path when it is well spread and agrees with the cameras, else the cameras."""
    cam = camera_up(Es)
    if override is not None:
        up = np.asarray(override, dtype=np.float64)
        return up / np.linalg.norm(up), "config"
    pts = centroids[np.isfinite(centroids).all(1)]
    if len(pts) >= 10:
        _, s, vt = np.linalg.svd(pts - pts.mean(0), full_matrices=False)
        normal = vt[2] * np.sign(vt[2] @ cam)
        if s[1] > 0.2 * s[0] and s[2] < 0.3 * s[1] and normal @ cam > np.cos(np.radians(25)):
            return normal, "path plane"
    return cam, "camera axes"


def read_vertical_lines(cfg: PrepConfig, files: dict[str, Path], config: Path) -> tuple[Optional[list], str]:
    """Per camera, the hand-drawn vertical segments [[u1, v1], [u2, v2]] from the config or from Pose Splatter's npz
    (None if neither), and where they came from (for error messages)."""
    if cfg.vertical_lines is not None:
        lines, source = [[[list(a), list(b)] for a, b in segs] for segs in cfg.vertical_lines], \
            f"{config}: key 'vertical_lines'"
    elif cfg.vertical_lines_fn is not None:
        lines, source = _lines_from_npz(files["vertical lines"], len(cfg.video_fns)), str(files["vertical lines"])
    else:
        return None, ""
    n = sum(map(len, lines))
    if n < 2:
        raise PrepError(f"{source}: {n} segment(s); at least two are needed to find the vertical")
    return lines, source


def _lines_from_npz(path: Path, n: int) -> list:
    """Per camera, the segments of Pose Splatter's estimate_up_direction.py output (img_nums [M], lines [M, 2, 2])."""
    try:
        with np.load(path) as z:
            arrays = {k: np.asarray(z[k]) for k in z.files}
    except (OSError, ValueError, TypeError, AttributeError) as e:  # a .npy array has no context manager
        raise PrepError(f"{path}: not a readable npz file ({e})".splitlines()[0]) from None
    if "img_nums" not in arrays or "lines" not in arrays:
        raise PrepError(f"{path}: needs arrays 'img_nums' [M] and 'lines' [M, 2, 2] (holds: "
                        f"{', '.join(arrays) or 'nothing'})")
    cams, segs = arrays["img_nums"].reshape(-1), arrays["lines"].astype(np.float64)
    if segs.shape != (len(cams), 2, 2):
        raise PrepError(f"{path}: 'lines' has shape {list(segs.shape)}, expected [{len(cams)}, 2, 2]")
    if len(cams) and not (0 <= cams.min() and cams.max() < n):
        raise PrepError(f"{path}: 'img_nums' holds camera {int(cams.max() if cams.max() >= n else cams.min())}, "
                        f"out of range [0, {n})")
    return [segs[cams == c].tolist() for c in range(n)]


def up_from_lines(lines: list, Ks: np.ndarray, Es: np.ndarray, source: str) -> np.ndarray:
    """Up [3] (calibration frame) from vertical segments (per camera, pixels in the Ks' convention): each segment
    back-projects to a plane through its camera's centre that contains the vertical, so up is the direction common to
    all planes, the least-squares null vector of their stacked normals; its sign is the cameras' up side."""
    normals = []
    for c, segs in enumerate(lines):
        Kinv, R = np.linalg.inv(Ks[c]), Es[c, :3, :3]
        for i, (p1, p2) in enumerate(segs):
            n = R.T @ np.cross(Kinv @ [*p1, 1.0], Kinv @ [*p2, 1.0])
            if np.linalg.norm(n) < 1e-12 or not np.isfinite(n).all():
                raise PrepError(f"{source}: camera {c}, segment {i}: its two points coincide")
            normals.append(n / np.linalg.norm(n))
    if len(normals) < 2:
        raise PrepError(f"{source}: {len(normals)} segment(s); at least two are needed to find the vertical")
    _, sv, vt = np.linalg.svd(np.array(normals))
    if sv[1] < 0.05 * sv[0]:
        raise PrepError(f"{source}: the segments' planes (nearly) coincide, so they do not fix a direction; draw "
                        f"vertical edges far apart in the image or in more cameras")
    up = vt[-1]
    return up * np.sign(up @ camera_up(Es))


def world_from_calib(up: np.ndarray, centroids: np.ndarray, floor: float) -> np.ndarray:
    """Rigid [4, 4] metric calibration -> world: z = up, x = calibration x on the floor, origin under the path."""
    x = np.array([1.0, 0, 0]) - up[0] * up
    if np.linalg.norm(x) < 0.1:
        x = np.array([0, 1.0, 0]) - up[1] * up
    x /= np.linalg.norm(x)
    R = np.stack([x, np.cross(up, x), up])
    origin = np.nanmedian(centroids, axis=0)
    origin = origin - (origin @ up - floor) * up
    M = np.eye(4)
    M[:3, :3], M[:3, 3] = R, -R @ origin
    return M


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


# ----------------------------------------------------------------------------------------------- parallel jobs


def blocks(n: int) -> list[tuple[int, int]]:
    """Output-frame ranges [(j0, j1)] of BLOCK frames."""
    return [(j, min(j + BLOCK, n)) for j in range(0, n, BLOCK)]


def read_masks(job: dict, views: list[int], j0: int, j1: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(full-resolution masks [V, H, W], downsampled masks [V, H', W']) of output frames j0..j1."""
    jump = job["frame_jump"]
    its = [read_video(Path(job["mask_videos"][c]), j0 * jump, j1 - j0, jump, job["fps"]) for c in views]
    for frames in zip(*its):
        full = np.stack([f.mean(-1) >= job["threshold"] for f in frames])
        small = np.stack([binarise(f, job["ds"], job["threshold"]) for f in frames])
        yield full, small


def track_block(job: dict, j0: int, j1: int) -> dict[str, np.ndarray]:
    """Per output frame: rough centre, hull centroid [3], trunk covariance [3, 3], lowest point along cameras' up."""
    Ks, Es, obs = np.asarray(job["Ks"]), np.asarray(job["Es"]), job["observed"]
    up = camera_up(Es)
    basis = world_from_calib(up, np.zeros((1, 3)), 0.0)[:3, :3]  # rows: two horizontal axes and up
    n = int(np.ceil(job["grid_size"] * TRACK_SCALE))
    local = grid_points(n, job["ell"] * TRACK_SCALE) @ basis  # cube aligned with the floor
    out = {k: [] for k in ("rough", "centroid", "cov", "low")}
    for _, masks in read_masks(job, obs, j0, j1):
        rough = triangulate([mask_median(m) for m in masks], Ks[obs], Es[obs])
        pts = np.zeros((0, 3)) if np.isnan(rough).any() else local + rough
        seen = [v for v, m in enumerate(masks) if m.any()]  # a view that lost the animal does not carve it away
        pts = pts[hull(masks[seen], Ks[obs][seen], Es[obs][seen], pts)] if len(pts) and len(seen) >= 2 else pts[:0]
        out["rough"].append(rough)
        if len(pts) < 4:
            out["centroid"].append(np.full(3, np.nan))
            out["cov"].append(np.full((3, 3), np.nan))
            out["low"].append(np.nan)
            continue
        centroid = pts.mean(0)
        trunk = pts[np.linalg.norm(pts - centroid, axis=1) < job["trunk_radius"]]
        out["centroid"].append(centroid)
        out["cov"].append(np.cov(trunk.T, bias=True) if len(trunk) >= 4 else np.full((3, 3), np.nan))
        out["low"].append((pts @ up).min() - 0.5 * job["ell"] / job["grid_size"])
    return {k: np.asarray(v) for k, v in out.items()}


def frames_block(job: dict, j0: int, j1: int) -> dict[str, list]:
    """Write output frames j0..j1 (images, masks: one chunk each) and return each frame's occupied-cell box."""
    import zarr

    root = zarr.open_group(job["store"], mode="r+")
    Ks, Es, obs, views = np.asarray(job["Ks"]), np.asarray(job["Es"]), job["observed"], job["views"]
    centres, headings, bg = np.asarray(job["centres"]), np.asarray(job["headings"]), np.asarray(job["background"])
    G = job["grid_size"]
    local = grid_points(G, job["ell"])
    jump = job["frame_jump"]
    videos = [read_video(Path(job["videos"][c]), j0 * jump, j1 - j0, jump, job["fps"]) for c in views]
    boxes = []
    fault = os.environ.get(FAULT_ENV, "")
    for j, (rgb, (full, small)) in enumerate(zip(zip(*videos), read_masks(job, views, j0, j1)), start=j0):
        root["images"][j] = np.stack([composite(f, fm, m, job["ds"], bg) for f, fm, m in zip(rgb, full, small)])
        if fault == f"frames:{j0 // BLOCK}":  # test hook: die between the two chunks of a frame
            os.kill(os.getpid(), signal.SIGKILL)
        root["masks"][j] = small.astype(np.uint8)
        c, s = np.cos(headings[j]), np.sin(headings[j])
        world = local @ np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]).T + centres[j]
        seen = [v for v in obs if small[v].any()]
        occ = hull(small[seen], Ks[seen], Es[seen], world) if len(seen) >= 2 else np.zeros(len(world), bool)
        occ = occ.reshape(G, G, G)
        idx = [np.flatnonzero(occ.any(axis=tuple(a for a in range(3) if a != ax))) for ax in range(3)]
        boxes.append([[int(i.min()), int(i.max()) + 1] if len(i) else None for i in idx])
    return {"boxes": boxes}


_JOB: dict = {}


def _set_job(job: dict) -> None:
    _JOB.clear()
    _JOB.update(job)


def _run_with_job(fn: Callable, j0: int, j1: int):
    return fn(_JOB, j0, j1)


def run_blocks(fn: Callable, job: dict, n: int, folder: Path, workers: int, desc: str, progress: bool) -> list:
    """Run fn(job, j0, j1) over the blocks not yet finished in `folder` (one result file per block), in parallel."""
    folder.mkdir(parents=True, exist_ok=True)
    todo = [b for b in blocks(n) if not (folder / f"{b[0]:08d}.json").exists()]
    bar = Progress(total=n, initial=n - sum(j1 - j0 for j0, j1 in todo), desc=desc, unit="frame", disable=not progress)

    def save(b, res):
        tmp = folder / f"{b[0]:08d}.json.tmp-{os.getpid()}"
        tmp.write_text(json.dumps({k: np.asarray(v).tolist() if k != "boxes" else v for k, v in res.items()}))
        os.replace(tmp, folder / f"{b[0]:08d}.json")
        bar.update(b[1] - b[0])

    try:
        if workers <= 1 or len(todo) <= 1:
            for b in todo:
                save(b, fn(job, *b))
        else:  # the job (cameras, poses) goes to each worker once; each task names only its block
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_set_job, initargs=(job,)) as pool:
                futures = {pool.submit(_run_with_job, fn, *b): b for b in todo}
                for fut in as_completed(futures):
                    save(futures[fut], fut.result())
    finally:
        bar.close()
    return [json.loads((folder / f"{j0:08d}.json").read_text()) for j0, _ in blocks(n)]


# ----------------------------------------------------------------------------------------------- steps


def cached_step(path: Path, fp: str, fn: Callable[[], dict[str, np.ndarray]], log: Callable) -> dict[str, np.ndarray]:
    """Load `path` (npz) when it holds fingerprint fp, else compute and write it atomically."""
    if path.exists():
        with np.load(path) as z:
            if str(z["fingerprint"]) == fp:
                log(f"{path.stem}: up to date")
                return {k: z[k] for k in z.files if k != "fingerprint"}
    out = fn()
    tmp = path.with_name(f"{path.stem}.tmp-{os.getpid()}.npz")
    np.savez(tmp, fingerprint=np.array(fp), **out)
    os.replace(tmp, path)
    log(f"{path.stem}: done")
    return out


def clear_stale(work: Path, prefix: str, keep: str) -> None:
    """Remove a step's folders from earlier inputs."""
    for p in work.glob(f"{prefix}-*"):
        if p.name != keep:
            shutil.rmtree(p, ignore_errors=True)


def prep(config: str | Path, out: Optional[str | Path] = None, workers: Optional[int] = None,
         progress: bool = True, log: Callable[[str], None] = lambda s: print(f"prep: {s}", file=sys.stderr)) -> Path:
    """Import a recording; returns the dataset path. Re-running skips finished steps and resumes interrupted ones."""
    import zarr

    cfg, files = load_prep_config(config)
    lines, lines_source = read_vertical_lines(cfg, files, Path(config))
    base = Path(config).parent / (cfg.project_directory or cfg.data_directory)
    out = Path(out) if out is not None else base / "dataset.zarr"
    work = out.with_name(out.name + ".prep")
    work.mkdir(parents=True, exist_ok=True)
    workers = workers or min(os.cpu_count() or 1, 8)
    C = len(cfg.video_fns)

    # --- inputs: counts and sizes must agree
    infos = {name: video_info(p) for name, p in files.items() if name.startswith(("video", "mask video"))}
    n_src, W, H, fps = infos["video 0"]
    for name, (n, w, h, _) in infos.items():
        if n != n_src:
            raise PrepError(f"{files[name]}: {n} frames but {files['video 0']} has {n_src} (videos must be the same "
                            f"length)")
        if (w, h) != (W, H):
            raise PrepError(f"{files[name]}: {w}x{h} pixels but {files['video 0']} has {W}x{H}")
    ds = cfg.image_downsample
    if H < ds or W < ds:
        raise PrepError(f"{config}: key 'image_downsample': {ds} is larger than the {W}x{H} videos")
    fps = cfg.fps or fps
    n_out = len(range(0, n_src, cfg.frame_jump))
    observed = [c for c in range(C) if c not in cfg.holdout_views]
    source = {k: file_id(p) for k, p in files.items()}

    # --- cameras
    fp_cam = fingerprint(PREP_VERSION, source["camera"], cfg.unit_m, cfg.principal_point, ds, C)

    def cameras():
        K, E = read_cameras(cfg, files["camera"], C)
        K[:, :2] /= ds
        return {"intrinsics": K, "extrinsics": E}

    cams = cached_step(work / "cameras.npz", fp_cam, cameras, log)
    lines_up = None
    if lines is not None:  # video pixels -> the cameras' convention (half-pixel shift, downsampled); fails early
        shift = 0.5 if cfg.principal_point == "opencv" else 0.0
        px = [[[[(x + shift) / ds for x in pt] for pt in seg] for seg in segs] for segs in lines]
        lines_up = up_from_lines(px, cams["intrinsics"], cams["extrinsics"], lines_source)
    job = {"Ks": cams["intrinsics"].tolist(), "Es": cams["extrinsics"].tolist(), "observed": observed,
           "views": list(range(C)), "mask_videos": [str(files[f"mask video {c}"]) for c in range(C)],
           "videos": [str(files[f"video {c}"]) for c in range(C)], "frame_jump": cfg.frame_jump, "fps": fps,
           "threshold": cfg.mask_threshold, "ds": ds, "ell": cfg.ell, "grid_size": cfg.grid_size,
           "trunk_radius": cfg.trunk_radius or TRUNK * cfg.ell}

    # --- track
    fp_track = fingerprint(fp_cam, [source[f"mask video {c}"] for c in observed], observed, cfg.ell, cfg.grid_size,
                           cfg.frame_jump, cfg.mask_threshold, fps, job["trunk_radius"])

    def track():
        clear_stale(work, "track", f"track-{fp_track}")
        res = run_blocks(track_block, job, n_out, work / f"track-{fp_track}", workers, "track", progress)
        return {k: np.concatenate([np.asarray(r[k], dtype=np.float64).reshape(-1, *np.shape(r[k])[1:])
                                   for r in res]) for k in ("rough", "centroid", "cov", "low")}

    tr = cached_step(work / "track.npz", fp_track, track, log)

    # --- pose
    fp_pose = fingerprint(fp_track, cfg.up, cfg.smooth_frames, *([lines] if lines is not None else []))

    def pose():
        centroid = fill_gaps(tr["centroid"], str(config))
        if lines_up is not None:
            up, method = lines_up, "vertical lines"
        else:
            up, method = find_up(cams["extrinsics"], tr["centroid"], cfg.up)
        lows = tr["low"][np.isfinite(tr["low"])]
        M = world_from_calib(up, centroid, float(np.percentile(lows, 1)))
        centres = gaussian_smooth(centroid @ M[:3, :3].T + M[:3, 3], cfg.smooth_frames)
        ok = np.isfinite(tr["cov"]).all((1, 2))
        cov_w = np.einsum("ij,tjk,lk->til", M[:3, :3], np.where(ok[:, None, None], tr["cov"], np.eye(3)), M[:3, :3])
        axes = np.linalg.eigh(cov_w[:, :2, :2])[1][:, :, 1]  # [T, 2] major axis on the floor
        nearest = np.flatnonzero(ok)[np.abs(np.arange(len(ok))[:, None] - np.flatnonzero(ok)[None]).argmin(1)]
        axes = axes[nearest]  # frames without a hull take the nearest frame's axis
        headings = headings_from_axes(axes, centres, cfg.smooth_frames)
        return {"centre": centres, "heading": headings, "world_from_calib": M, "up": up, "up_method": np.array(method),
                "extrinsics": cams["extrinsics"] @ np.linalg.inv(M)}

    ps = cached_step(work / "pose.npz", fp_pose, pose, log)

    # --- frames
    fp_frames = fingerprint(fp_pose, source, cfg.background, cfg.volume_idx, n_src, W, H)
    if out.exists() and _attrs(out).get("prep_fingerprint") == fp_frames:
        log(f"{out}: up to date")
        return out
    if out.exists() and _attrs(out).get("generator") != "posesplat.prep":
        raise PrepError(f"{out}: exists and was not written by posesplat.prep; remove it or choose another --out")
    store = work / f"frames-{fp_frames}.zarr"
    clear_stale(work, "frames", store.name)
    clear_stale(work, "done", f"done-{fp_frames}")
    h, w = H // ds, W // ds
    if not (store / "zarr.json").exists():
        root = zarr.open_group(str(store), mode="w", zarr_format=3)
        root.create_array("images", shape=(n_out, C, h, w, 3), chunks=(1, C, h, w, 3), dtype="uint8")
        root.create_array("masks", shape=(n_out, C, h, w), chunks=(1, C, h, w), dtype="uint8")
    job |= {"store": str(store), "Es": ps["extrinsics"].tolist(), "centres": ps["centre"].tolist(),
            "headings": ps["heading"].tolist(), "background": cfg.background}
    res = run_blocks(frames_block, job, n_out, work / f"done-{fp_frames}", workers, "frames", progress)
    boxes = [b for r in res for b in r["boxes"]]
    volume_idx = cfg.volume_idx or crop_indices(boxes, cfg.grid_size)
    log("frames: done")

    # --- finish
    root = zarr.open_group(str(store), mode="r+")
    for name, arr in (("intrinsics", cams["intrinsics"]), ("extrinsics", ps["extrinsics"]),
                      ("centre", ps["centre"]), ("heading", ps["heading"]),
                      ("holdout_views", np.array(cfg.holdout_views, dtype=np.int64))):
        if name in root:
            del root[name]
        root.create_array(name, data=arr)
    scale = np.diag([cfg.unit_m] * 3 + [1.0])
    root.attrs.update({
        "generator": "posesplat.prep", "generator_version": PREP_VERSION, "format_version": 1,
        "args": {"config": str(Path(config).resolve()), **cfg.model_dump()}, "prep_fingerprint": fp_frames,
        "ell": cfg.ell, "grid_size": cfg.grid_size, "volume_idx": volume_idx,
        "background": [float(b) for b in cfg.background], "up": [0.0, 0.0, 1.0], "units": "m", "fps": fps,
        "up_method": str(ps["up_method"]), "world_from_calibration": (ps["world_from_calib"] @ scale).tolist(),
    })
    for stray in store.rglob("*.partial"):  # zarr's temporary files left by a killed writer
        stray.unlink()
    _swap_in(store, out)
    shutil.rmtree(work / f"done-{fp_frames}", ignore_errors=True)
    log(f"wrote {out} ({n_out} frames, {C} cameras, {w}x{h}, up from {ps['up_method']}, volume_idx {volume_idx})")
    return out


def crop_indices(boxes: list, grid_size: int, margin: int = 2, multiple: int = 4) -> list[list[int]]:
    """volume_idx from per-frame occupied-cell boxes: their union plus a margin, widened to a multiple of 4."""
    boxes = [b for b in boxes if b and all(r is not None for r in b)]
    if not boxes:
        raise PrepError("shape carving found no occupied voxel in any frame: check masks, cameras and ell")
    out = []
    for ax in range(3):
        lo = max(min(b[ax][0] for b in boxes) - margin, 0)
        hi = min(max(b[ax][1] for b in boxes) + margin, grid_size)
        while (hi - lo) % multiple and hi - lo < grid_size:
            if hi < grid_size:
                hi += 1
            else:
                lo -= 1
        out.append([lo, hi])
    return out


def _attrs(path: Path) -> dict:
    import zarr

    try:
        return dict(zarr.open_group(str(path), mode="r").attrs)
    except Exception:  # not a zarr group: treat as foreign
        return {}


def _swap_in(tmp: Path, out: Path) -> None:
    """Rename a finished store onto `out`, removing an old one only after the new one is in place."""
    old = out.with_name(f"{out.name}.old-{os.getpid()}")
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m posesplat.prep", description=__doc__.splitlines()[0])
    p.add_argument("config", help="Pose Splatter-style JSON config (docs/prep.md)")
    p.add_argument("--out", help="dataset to write (default: dataset.zarr in the project directory)")
    p.add_argument("--workers", type=int, default=None, help="parallel processes (default: CPUs, at most 8)")
    a = p.parse_args(argv)
    try:
        prep(a.config, a.out, a.workers)
    except PrepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenProcessPool:
        print("error: a worker process died (out of memory or killed); run the same command again to resume",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
