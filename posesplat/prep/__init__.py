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
import re
import shutil
import signal
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from posesplat.io import atomic_file, atomic_write, swap_folder
from posesplat.progress import Progress

PREP_VERSION = "2"  # 2: Pose Splatter units, reach, frames by index
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
    """The keys prep reads: Pose Splatter's (same names, same meaning) and a few of its own (docs/prep.md)."""

    model_config = ConfigDict(extra="ignore")
    data_directory: str = Field("", description="prefix of video_fns and mask_video_fns (Pose Splatter)")
    project_directory: str = Field("", description="prefix of camera_fn, vertical_lines_fn and the default output")
    camera_fn: str
    video_fns: list[str] = Field(min_length=1)
    mask_video_fns: list[str] = Field(min_length=1)
    image_width: Optional[int] = Field(None, ge=1, description="checked against the videos")
    image_height: Optional[int] = Field(None, ge=1, description="checked against the videos")
    image_downsample: int = Field(1, ge=1)
    frame_jump: int = Field(1, ge=1)
    holdout_views: Optional[list[int]] = Field(None, description="null: posesplat.data.default_holdout")
    ell: Optional[float] = Field(None, gt=0, description="cube side in Pose Splatter's normalised rig units")
    ell_tracking: Optional[float] = Field(None, gt=0, description="tracking cube side, Pose Splatter's units")
    ell_m: Optional[float] = Field(None, gt=0, description="cube side in metres (instead of ell)")
    grid_size: int = Field(48, ge=8, le=256)
    volume_idx: Optional[list[list[int]]] = None
    unit_m: Optional[float] = Field(None, gt=0, description="metres per calibration unit (millimetres: 0.001)")
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
    fps: Optional[float] = Field(None, gt=0, description="checked against the videos; frames are read by index")
    adaptive_camera: bool = Field(False, description="Pose Splatter's per-frame principal-point shift: unsupported")


# Keys of Pose Splatter configs that prep does not use, and why (the warning names them; nothing is dropped silently)
NOT_USED = {
    **dict.fromkeys(("img_lambda", "ssim_lambda", "lr", "valid_every", "plot_every", "save_every", "train_time",
                     "valid_time"), "training settings: put them in the training config"),
    **dict.fromkeys(("volume_directory", "image_directory", "render_directory", "center_rotation_fn",
                     "volume_sum_fn", "model_fn", "feature_fn", "embedding_fn", "image_compression_level",
                     "volume_compression_level"), "Pose Splatter's own working files: prep writes one dataset"),
    "volume_fill_color": "unsupported: carving gives unseen voxels colour 0",
    "adaptive_grid": "unsupported (Pose Splatter's plot_voxels only)",
}
COMMENT_KEYS = ("_comment",)
CAMERA_DISTANCE_M = (0.05, 20.0)  # a lab rig's cameras stand this far (metres) from the point they look at


def unused_keys(values: dict, cfg: PrepConfig) -> list[str]:
    """Each config key prep does not use, with why: one phrase per key (a key prep reads is not listed)."""
    out = []
    for k in values:
        if k in PrepConfig.model_fields or k in COMMENT_KEYS:
            continue
        out.append(f"{k} ({NOT_USED.get(k, 'unknown key: misspelt?')})")
    if cfg.adaptive_camera:
        out.append("adaptive_camera=true (unsupported: per-frame principal-point shifts are not applied; the "
                   "calibration's principal points are used)")
    return out


def resolve(prefix: str, name: str, config: Path, key: str) -> Path:
    """os.path.join(prefix, name) against the current directory, as Pose Splatter resolves it; a missing file that
    exists relative to the config's folder instead is named with that hint."""
    path = Path(prefix) / name
    if path.is_file() or path.is_absolute():
        return path.absolute()
    alt = config.parent / path
    if alt.is_file():
        raise PrepError(f"{path}: no such file ({key} in {config}; paths are relative to the current directory, as in "
                        f"Pose Splatter, and it exists relative to the config's folder: run from {config.parent} or "
                        f"make the directories absolute)")
    return path.absolute()


def load_prep_config(path: str | Path) -> tuple[PrepConfig, dict[str, Path], list[str]]:
    """Read and validate a prep config; returns it, its resolved input paths (camera, videos, masks) and the keys it
    does not use (with why)."""
    path = Path(path)
    try:
        values = json.loads(path.read_text())
    except FileNotFoundError:
        raise PrepError(f"{path}: no such config file") from None
    except json.JSONDecodeError as e:
        raise PrepError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None
    if not isinstance(values, dict):
        raise PrepError(f"{path}: must be a JSON object of keys")
    try:
        cfg = PrepConfig.model_validate(values)
    except ValidationError as err:
        e = err.errors()[0]
        key = ".".join(str(p) for p in e["loc"])
        raise PrepError(f"{path}: key '{key}': {e['msg']}") from None
    files = {"camera": resolve(cfg.project_directory, cfg.camera_fn, path, "camera_fn")}
    files |= {f"video {c}": resolve(cfg.data_directory, v, path, "video_fns") for c, v in enumerate(cfg.video_fns)}
    files |= {f"mask video {c}": resolve(cfg.data_directory, v, path, "mask_video_fns")
              for c, v in enumerate(cfg.mask_video_fns)}
    if len(cfg.video_fns) != len(cfg.mask_video_fns):
        raise PrepError(f"{path}: {len(cfg.video_fns)} video_fns but {len(cfg.mask_video_fns)} mask_video_fns")
    for h in cfg.holdout_views or []:
        if not 0 <= h < len(cfg.video_fns):
            raise PrepError(f"{path}: key 'holdout_views': view {h} out of range [0, {len(cfg.video_fns)})")
    if len(set(cfg.holdout_views or [])) >= len(cfg.video_fns) - 1:
        raise PrepError(f"{path}: key 'holdout_views': at least two cameras must stay observed for carving")
    for group in (("up", "vertical_lines", "vertical_lines_fn"), ("ell", "ell_m")):
        given = [k for k in group if getattr(cfg, k) is not None]
        if len(given) > 1:
            what = "set the up direction" if group[0] == "up" else "set the cube's side"
            raise PrepError(f"{path}: keys {' and '.join(repr(k) for k in given)} both {what}; keep one")
    if cfg.vertical_lines is not None and len(cfg.vertical_lines) != len(cfg.video_fns):
        raise PrepError(f"{path}: key 'vertical_lines': {len(cfg.vertical_lines)} cameras but the config names "
                        f"{len(cfg.video_fns)} videos (one list of segments per camera, [] for none)")
    if cfg.vertical_lines_fn is not None:
        files["vertical lines"] = resolve(cfg.project_directory, cfg.vertical_lines_fn, path, "vertical_lines_fn")
    for name, f in files.items():
        if not f.is_file():
            raise PrepError(f"{f}: no such file ({name} in {path})")
    return cfg, files, unused_keys(values, cfg)


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
    E[:, :3, :3], E[:, :3, 3] = R, t
    return K, E


def camera_centres(Es: np.ndarray) -> np.ndarray:
    """Camera centres [C, 3] (-R^T t) of world-to-camera extrinsics [C, 4, 4]."""
    return -np.einsum("cji,cj->ci", Es[:, :3, :3], Es[:, :3, 3])


def pose_splatter_unit(Es: np.ndarray) -> float:
    """Pose Splatter's length unit in calibration units: its get_cam_params (auto_orient) moves the origin to minus
    the mean camera centre and divides by the largest camera distance from there, so `ell` and `ell_tracking` are
    in units of max_c |C_c + mean(C)|."""
    C = camera_centres(Es)
    return float(np.linalg.norm(C + C.mean(0), axis=1).max())


def look_at_distances(Es: np.ndarray) -> np.ndarray:
    """Distances [C] from each camera to the point nearest all optical axes (where the rig looks)."""
    C, d = camera_centres(Es), Es[:, 2, :3]  # optical axis: the camera's +z in world coordinates
    P = np.eye(3)[None] - d[:, :, None] * d[:, None, :]  # projectors orthogonal to each axis
    target = np.linalg.lstsq(P.sum(0), np.einsum("cij,cj->i", P, C), rcond=None)[0]
    return np.linalg.norm(C - target, axis=1)


def metres_per_unit(cfg: PrepConfig, Es: np.ndarray, where: str) -> tuple[float, str]:
    """The calibration's unit in metres (the config's unit_m, else metres when the rig's size is plausible in
    metres) and a line saying so; refuses a scale that puts the cameras implausibly near or far."""
    dist = look_at_distances(Es)
    lo, hi = CAMERA_DISTANCE_M
    unit = cfg.unit_m or 1.0
    d_m = dist * unit
    span = f"{d_m.min():.3g}-{d_m.max():.3g} m" if cfg.unit_m else f"{dist.min():.3g}-{dist.max():.3g} units"
    if not (lo <= np.median(d_m) <= hi):
        hint = " (0.001 if it is in millimetres)" if 50 <= np.median(dist) <= 20000 else ""
        given = f"'unit_m' {cfg.unit_m}" if cfg.unit_m else "'unit_m' unset (metres)"
        raise PrepError(f"{where}: with {given} the cameras stand {span} from the point they look at, implausible "
                        f"for a lab rig ({lo}-{hi} m): set 'unit_m' to the calibration's unit in metres{hint}")
    how = "config unit_m" if cfg.unit_m else "metres assumed (unit_m unset)"
    return unit, f"calibration unit {unit:g} m ({how}): cameras {d_m.min():.3g}-{d_m.max():.3g} m from the rig's centre"


PASSTHROUGH = ["-fps_mode", "passthrough"]  # every decoded frame once, none duplicated or dropped for a rate


def frame_times(path: Path) -> np.ndarray:
    """Presentation time [N] (seconds) of every frame of a video's first video stream, in decoded order: one full
    decode by the bundled ffmpeg (its showinfo filter), which also counts the frames."""
    import subprocess

    import imageio_ffmpeg

    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostats", "-i", str(path), "-map", "0:v:0",
           "-vf", "showinfo", *PASSTHROUGH, "-f", "null", "-"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    times = [float(t) for t in re.findall(r"pts_time:\s*([-+0-9.eE]+)", r.stderr)]
    if r.returncode != 0 or not times:
        last = (r.stderr.strip().splitlines() or ["no frames"])[-1]
        raise PrepError(f"{path}: unreadable video (ffmpeg: {last})")
    return np.asarray(times)


def video_info(path: Path) -> tuple[int, int, int, float, Optional[float]]:
    """(frames decoded, width, height, container fps, the rate to seek with or None). A rate to seek with exists
    when every frame's timestamp is the first one plus its index over a constant rate (to a tenth of a frame): a
    time seek then lands on a frame index; otherwise frames must be decoded from the start."""
    import imageio_ffmpeg

    try:
        gen = imageio_ffmpeg.read_frames(str(path), output_params=PASSTHROUGH)
        meta = next(gen)
        gen.close()
    except (RuntimeError, OSError, StopIteration, IndexError) as e:
        raise PrepError(f"{path}: unreadable video ({type(e).__name__}: {e})".splitlines()[0]) from None
    times = frame_times(path)
    seek = None
    if len(times) > 1 and times[-1] > times[0]:
        rate = (len(times) - 1) / (times[-1] - times[0])
        if np.abs(times - times[0] - np.arange(len(times)) / rate).max() <= 0.1 / rate:
            seek = float(rate)
    return len(times), int(meta["size"][0]), int(meta["size"][1]), float(meta.get("fps") or 0), seek


def read_video(path: Path, start: int, count: int, step: int, fps: Optional[float]) -> Iterator[np.ndarray]:
    """Frames start, start+step, ... (count of them, by index in decoded order) as [H, W, 3] uint8. With the
    container's constant fps it seeks to frame `start`; with None it decodes from the first frame."""
    import imageio_ffmpeg

    seek = ["-ss", f"{(start - 0.5) / fps:.6f}"] if start > 0 and fps else None  # accurate seek to frame `start`
    skip = 0 if seek or start == 0 else start
    gen = imageio_ffmpeg.read_frames(str(path), input_params=seek, output_params=PASSTHROUGH)
    meta = next(gen)
    w, h = meta["size"]
    try:
        got, last = 0, start - 1
        for n, buf in enumerate(gen):
            if n < skip:
                continue
            last = start + n - skip
            if (last - start) % step == 0:
                yield np.frombuffer(buf, dtype=np.uint8).reshape(h, w, 3)
                got += 1
                if got == count:
                    return
        raise PrepError(f"{path}: ended after frame {last} while frame {start + (count - 1) * step} was needed")
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
    """Visual hull: bool [P] for world points [P, 3] (masks [V, H, W]), by the rule of carve.carve: a view whose mask
    touches its image border has a say only about the points it images, the others about every point; a point is in
    the hull when at least two views have a say and all of those show foreground."""
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
    its = [read_video(Path(job["mask_videos"][c]), j0 * jump, j1 - j0, jump, job["mask_fps"][c]) for c in views]
    for frames in zip(*its):
        full = np.stack([f.mean(-1) >= job["threshold"] for f in frames])
        small = np.stack([binarise(f, job["ds"], job["threshold"]) for f in frames])
        yield full, small


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


REACH_DIRS = 32  # horizontal directions of the hull's support function (the reach of the animal from its centre)


def track_block(job: dict, j0: int, j1: int) -> dict[str, np.ndarray]:
    """Per output frame: rough centre, hull centroid [3], trunk covariance [3, 3], lowest point along the cameras'
    up, the hull's reach from its centroid [REACH_DIRS + 2] (horizontal directions of the floor basis, then up and
    down) and whether the hull touches the tracking cube's faces (the reach is then a lower bound)."""
    Ks, Es, obs = np.asarray(job["Ks"]), np.asarray(job["Es"]), job["observed"]
    up = camera_up(Es)
    basis = world_from_calib(up, np.zeros((1, 3)), 0.0)[:3, :3]  # rows: two horizontal axes and up
    n = int(np.ceil(job["grid_size"] * TRACK_SCALE))
    unit = grid_points(n, 1.0) @ basis  # a unit cube aligned with the floor, scaled per frame
    theta = np.arange(REACH_DIRS) * 2 * np.pi / REACH_DIRS
    dirs = np.concatenate([np.cos(theta)[:, None] * basis[0] + np.sin(theta)[:, None] * basis[1], [up, -up]])
    keys = ("rough", "centroid", "cov", "low", "reach", "clipped")
    out = {k: [] for k in keys}
    for _, masks in read_masks(job, obs, j0, j1):
        rough = triangulate([mask_median(m) for m in masks], Ks[obs], Es[obs])
        seen = [v for v, m in enumerate(masks) if m.any()]  # a view that lost the animal does not carve it away
        if np.isnan(rough).any() or len(seen) < 2:
            pts, side = np.zeros((0, 3)), np.nan
        else:
            side = job["track_side"] or TRACK_SCALE * 1.2 * mask_extent(masks, Ks[obs], Es[obs], rough)
            pts = unit * side + rough
            pts = pts[hull(masks[seen], Ks[obs][seen], Es[obs][seen], pts)]
        out["rough"].append(rough)
        if len(pts) < 4:
            for k, shape in (("centroid", 3), ("cov", (3, 3)), ("low", ()), ("reach", REACH_DIRS + 2)):
                out[k].append(np.full(shape, np.nan))
            out["clipped"].append(0.0)
            continue
        centroid = pts.mean(0)
        ell = job["ell"] or side / TRACK_SCALE
        trunk = pts[np.linalg.norm(pts - centroid, axis=1) < (job["trunk_radius"] or TRUNK * ell)]
        local = (pts - rough) @ basis.T  # floor-aligned cube coordinates
        out["centroid"].append(centroid)
        out["cov"].append(np.cov(trunk.T, bias=True) if len(trunk) >= 4 else np.full((3, 3), np.nan))
        out["low"].append((pts @ up).min() - 0.5 * side / n)
        out["reach"].append(((pts - centroid) @ dirs.T).max(0) + 0.5 * side / n)
        out["clipped"].append(float(np.abs(local).max() > side / 2 - side / n))
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
    videos = [read_video(Path(job["videos"][c]), j0 * jump, j1 - j0, jump, job["video_fps"][c]) for c in views]
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
        atomic_write(folder / f"{b[0]:08d}.json",
                     json.dumps({k: np.asarray(v).tolist() if k != "boxes" else v for k, v in res.items()}))
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
    with atomic_file(path) as f:
        np.savez(f, fingerprint=np.array(fp), **out)
    log(f"{path.stem}: done")
    return out


def clear_stale(work: Path, prefix: str, keep: str) -> None:
    """Remove a step's folders from earlier inputs."""
    for p in work.glob(f"{prefix}-*"):
        if p.name != keep:
            shutil.rmtree(p, ignore_errors=True)


def check_videos(cfg: PrepConfig, files: dict[str, Path], config: Path, trim: bool,
                 log: Callable[[str], None]) -> tuple[int, int, int, float, dict[str, Optional[float]]]:
    """(source frames, width, height, container fps, per video the fps to seek with or None to decode from the
    start): sizes agree with each other and the config, lengths agree (or are trimmed to the shortest), and a
    configured fps that disagrees with the containers is reported (frames are read by index, never by time)."""
    infos = {name: video_info(p) for name, p in files.items() if name.startswith(("video", "mask video"))}
    _, W, H, fps, _ = infos["video 0"]
    for name, (_, w, h, _, _) in infos.items():
        if (w, h) != (W, H):
            raise PrepError(f"{files[name]}: {w}x{h} pixels but {files['video 0']} has {W}x{H}")
    for key, value, actual in (("image_width", cfg.image_width, W), ("image_height", cfg.image_height, H)):
        if value is not None and value != actual:
            raise PrepError(f"{config}: key '{key}' is {value} but the videos are {W}x{H} ({files['video 0']})")
    if H < cfg.image_downsample or W < cfg.image_downsample:
        raise PrepError(f"{config}: key 'image_downsample': {cfg.image_downsample} is larger than the {W}x{H} videos")
    counts = {name: info[0] for name, info in infos.items()}
    short, long = min(counts, key=counts.get), max(counts, key=counts.get)
    n_src = counts[short]
    if counts[long] != n_src:
        if not trim:
            raise PrepError(f"{files[short]}: {n_src} frames, the shortest of the videos ({files[long]} has "
                            f"{counts[long]}): run with --trim to use the first {n_src} frames of every video")
        log(f"warning: videos hold {n_src}-{counts[long]} frames; --trim: the first {n_src} of each are used")
    rates = sorted({round(info[3], 3) for info in infos.values()})
    if len(rates) > 1:
        log(f"warning: the videos' containers say {', '.join(map(str, rates))} fps; frames are matched by index")
    if cfg.fps is not None and abs(cfg.fps - fps) > 1e-3 * fps:
        log(f"warning: key 'fps' is {cfg.fps:g} but {files['video 0']} is {fps:g} fps: frames are read by index, so "
            f"this changes nothing; the dataset records the container's {fps:g}")
    varying = [name for name, info in infos.items() if info[4] is None and info[0] > 1]
    if varying:
        log(f"warning: {files[varying[0]]} ({len(varying)} video(s)) has no constant frame rate: frames are decoded "
            f"from the start instead of seeking (slower)")
    seek = {name: info[4] for name, info in infos.items()}
    return n_src, W, H, fps, seek


def cube_needed(reach: np.ndarray, heading: np.ndarray) -> np.ndarray:
    """Side [T] of the heading-aligned cube, centred on the hull's centroid, that holds each frame's hull, from its
    reach [T, REACH_DIRS + 2] (support in horizontal directions of the floor basis, then up and down)."""
    step = 2 * np.pi / REACH_DIRS
    horiz = np.concatenate([reach[:, :REACH_DIRS], reach[:, :1]], 1)  # closed circle for interpolation

    def along(angle: np.ndarray) -> np.ndarray:
        x = np.mod(angle, 2 * np.pi) / step
        i = np.floor(x).astype(int) % REACH_DIRS
        w = x - np.floor(x)
        rows = np.arange(len(reach))
        return (1 - w) * horiz[rows, i] + w * horiz[rows, i + 1]

    half = np.stack([along(heading + k * np.pi / 2) for k in range(4)] + [reach[:, -2], reach[:, -1]], 1)
    return 2 * half.max(1)


def prep(config: str | Path, out: Optional[str | Path] = None, workers: Optional[int] = None,
         progress: bool = True, log: Callable[[str], None] = lambda s: print(f"prep: {s}", file=sys.stderr),
         trim: bool = False) -> Path:
    """Import a recording; returns the dataset path. Re-running skips finished steps and resumes interrupted ones."""
    import zarr

    from posesplat.data import default_holdout

    config = Path(config)
    cfg, files, unused = load_prep_config(config)
    if unused:
        log(f"config keys not used: {'; '.join(unused)}")
    lines, lines_source = read_vertical_lines(cfg, files, config)
    out = Path(out) if out is not None else Path(cfg.project_directory).absolute() / "dataset.zarr"
    work = out.with_name(out.name + ".prep")
    workers = workers or min(os.cpu_count() or 1, 8)
    C = len(cfg.video_fns)
    holdout = cfg.holdout_views if cfg.holdout_views is not None else default_holdout(C)
    if cfg.holdout_views is None:
        log(f"holdout_views: {holdout} (not in the config: the default for {C} cameras)")

    # --- inputs: sizes, lengths and rates
    n_src, W, H, fps, seek = check_videos(cfg, files, config, trim, log)
    ds = cfg.image_downsample
    n_out = len(range(0, n_src, cfg.frame_jump))
    observed = [c for c in range(C) if c not in holdout]
    source = {k: file_id(p) for k, p in files.items()}
    work.mkdir(parents=True, exist_ok=True)

    # --- cameras
    fp_cam = fingerprint(PREP_VERSION, source["camera"], cfg.unit_m, cfg.principal_point, ds, C)

    def cameras():
        K, E = read_cameras(cfg, files["camera"], C)
        unit, line = metres_per_unit(cfg, E, str(files["camera"]))
        ps_unit = pose_splatter_unit(E) * unit
        K[:, :2] /= ds
        E[:, :3, 3] *= unit
        return {"intrinsics": K, "extrinsics": E, "unit_m": np.array(unit), "ps_unit_m": np.array(ps_unit),
                "unit_line": np.array(line), "distances": look_at_distances(E)}

    cams = cached_step(work / "cameras.npz", fp_cam, cameras, log)
    unit_m, ps_unit_m = float(cams["unit_m"]), float(cams["ps_unit_m"])
    log(f"{cams['unit_line']}; Pose Splatter's unit (ell, ell_tracking) is {ps_unit_m:.4g} m")
    lines_up = None
    if lines is not None:  # video pixels -> the cameras' convention (half-pixel shift, downsampled); fails early
        shift = 0.5 if cfg.principal_point == "opencv" else 0.0
        px = [[[[(x + shift) / ds for x in pt] for pt in seg] for seg in segs] for segs in lines]
        lines_up = up_from_lines(px, cams["intrinsics"], cams["extrinsics"], lines_source)
    ell_given = cfg.ell_m or (cfg.ell * ps_unit_m if cfg.ell else None)
    track_side = cfg.ell_tracking * ps_unit_m if cfg.ell_tracking else (TRACK_SCALE * ell_given if ell_given else None)
    job = {"Ks": cams["intrinsics"].tolist(), "Es": cams["extrinsics"].tolist(), "observed": observed,
           "views": list(range(C)), "mask_videos": [str(files[f"mask video {c}"]) for c in range(C)],
           "videos": [str(files[f"video {c}"]) for c in range(C)], "frame_jump": cfg.frame_jump,
           "video_fps": [seek[f"video {c}"] for c in range(C)], "mask_fps": [seek[f"mask video {c}"] for c in range(C)],
           "threshold": cfg.mask_threshold, "ds": ds, "ell": ell_given, "grid_size": cfg.grid_size,
           "track_side": track_side, "trunk_radius": cfg.trunk_radius}

    # --- track
    fp_track = fingerprint(fp_cam, [source[f"mask video {c}"] for c in observed], observed, ell_given, track_side,
                           cfg.grid_size, cfg.frame_jump, cfg.mask_threshold, n_out, job["mask_fps"],
                           cfg.trunk_radius)

    def track():
        clear_stale(work, "track", f"track-{fp_track}")
        res = run_blocks(track_block, job, n_out, work / f"track-{fp_track}", workers, "track", progress)
        return {k: np.concatenate([np.asarray(r[k], dtype=np.float64).reshape(-1, *np.shape(r[k])[1:])
                                   for r in res]) for k in ("rough", "centroid", "cov", "low", "reach", "clipped")}

    tr = cached_step(work / "track.npz", fp_track, track, log)
    found = np.isfinite(tr["centroid"]).all(1)
    clipped = float(tr["clipped"][found].mean()) if found.any() else 0.0
    if clipped > 0.05:
        key = "ell_tracking" if cfg.ell_tracking else ("ell_m" if cfg.ell_m else "ell") if ell_given else None
        fix = f"set '{key}' larger" if key else "set 'ell_tracking'"
        raise PrepError(f"{config}: the tracking cube ({track_side or 0:.3g} m) clips the carved animal in "
                        f"{clipped:.0%} of frames: {fix} (in Pose Splatter's unit, {ps_unit_m:.4g} m)")

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
        need = cube_needed(tr["reach"][found], headings[found])  # the heading-aligned cube each frame's hull needs
        return {"centre": centres, "heading": headings, "world_from_calib": M, "up": up, "up_method": np.array(method),
                "extrinsics": cams["extrinsics"] @ np.linalg.inv(M), "need": need}

    ps = cached_step(work / "pose.npz", fp_pose, pose, log)
    ell, ell_source = choose_ell(cfg, ell_given, ps["need"], ps_unit_m, float(np.median(cams["distances"])), config,
                                 log)

    # --- frames
    fp_frames = fingerprint(fp_pose, source, cfg.background, cfg.volume_idx, n_src, W, H, ell, holdout)
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
            "headings": ps["heading"].tolist(), "background": cfg.background, "ell": ell}
    res = run_blocks(frames_block, job, n_out, work / f"done-{fp_frames}", workers, "frames", progress)
    boxes = [b for r in res for b in r["boxes"]]
    volume_idx = cfg.volume_idx or crop_indices(boxes, cfg.grid_size)
    log("frames: done")

    # --- finish
    root = zarr.open_group(str(store), mode="r+")
    for name, arr in (("intrinsics", cams["intrinsics"]), ("extrinsics", ps["extrinsics"]),
                      ("centre", ps["centre"]), ("heading", ps["heading"]),
                      ("holdout_views", np.array(holdout, dtype=np.int64))):
        if name in root:
            del root[name]
        root.create_array(name, data=arr)
    scale = np.diag([unit_m] * 3 + [1.0])
    root.attrs.update({
        "generator": "posesplat.prep", "generator_version": PREP_VERSION, "format_version": 1,
        "args": {"config": str(config.resolve()), **cfg.model_dump()}, "prep_fingerprint": fp_frames,
        "ell": ell, "ell_source": ell_source, "grid_size": cfg.grid_size, "volume_idx": volume_idx,
        "background": [float(b) for b in cfg.background], "up": [0.0, 0.0, 1.0], "units": "m",
        "calibration_unit_m": unit_m, "pose_splatter_unit_m": ps_unit_m, "fps": fps, "source_frames": n_src,
        "frame_jump": cfg.frame_jump, "up_method": str(ps["up_method"]),
        "world_from_calibration": (ps["world_from_calib"] @ scale).tolist(),
    })
    for stray in store.rglob("*.partial"):  # zarr's temporary files left by a killed writer
        stray.unlink()
    swap_folder(store, out)  # `out` was refused above unless posesplat.prep wrote it
    shutil.rmtree(work / f"done-{fp_frames}", ignore_errors=True)
    log(f"wrote {out} ({n_out} frames, {C} cameras, {w}x{h}, up from {ps['up_method']}, ell {ell:.4g} m, "
        f"volume_idx {volume_idx})")
    return out


ELL_MARGIN, ELL_HOLDS = 1.1, 0.99  # a derived ell holds the carved animal of 99% of frames with a 10% margin


def choose_ell(cfg: PrepConfig, given: Optional[float], need: np.ndarray, ps_unit_m: float, camera_m: float,
               config: Path, log: Callable[[str], None]) -> tuple[float, str]:
    """The cube side in metres and where it came from: the config's (warned when it clips the carved animal in more
    than 1% of frames) or derived from the animal; refuses an animal larger than the cameras' distance from it."""
    derived = ELL_MARGIN * float(np.percentile(need, 100 * ELL_HOLDS))
    if derived > camera_m:
        raise PrepError(f"{config}: the carved animal needs a {derived:.3g} m cube while the cameras stand "
                        f"{camera_m:.3g} m away: the masks, 'mask_threshold' or the calibration ('unit_m') are wrong")
    suggest = f"{derived:.3g} m (ell {derived / ps_unit_m:.3g} in Pose Splatter's unit, or ell_m {derived:.3g})"
    if given is None:
        log(f"ell: {suggest}, derived: holds the carved animal in {ELL_HOLDS:.0%} of frames with a "
            f"{ELL_MARGIN - 1:.0%} margin")
        return derived, "derived"
    key = "ell_m" if cfg.ell_m else "ell"
    holds = float((need <= given).mean())
    if holds < ELL_HOLDS:
        log(f"warning: {key} ({given:.3g} m) holds the whole carved animal in only {holds:.0%} of frames; about "
            f"{suggest} would hold {ELL_HOLDS:.0%}")
    return given, f"config {key}"


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


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m posesplat.prep", description=__doc__.splitlines()[0])
    p.add_argument("config", help="Pose Splatter-style JSON config (docs/prep.md)")
    p.add_argument("--out", help="dataset to write (default: dataset.zarr in project_directory, which Pose Splatter "
                                        "resolves against the current directory)")
    p.add_argument("--workers", type=int, default=None, help="parallel processes (default: CPUs, at most 8)")
    p.add_argument("--trim", action="store_true",
                   help="videos of unequal length: use the first frames of each, as many as the shortest holds "
                        "(default: refuse)")
    a = p.parse_args(argv)
    try:
        prep(a.config, a.out, a.workers, trim=a.trim)
    except PrepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenProcessPool:
        print("error: a worker process died (out of memory or killed); run the same command again to resume",
              file=sys.stderr)
        return 1
    return 0

