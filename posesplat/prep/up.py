"""The up direction, in the calibration frame: from the config, from hand-drawn vertical segments (the config's or
Pose Splatter's npz), or from the plane of the animal's path and the cameras' up axes; and the world frame it sets."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from posesplat.prep.config import PrepConfig
from posesplat.prep.errors import PrepError


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
    """Up [3] (calibration frame) from vertical segments (per camera, pixels in the Ks' convention). Each segment
    back-projects to a plane through its camera's centre that contains the vertical. So up is the direction common to
    all planes, the least-squares null vector of their stacked normals. Its sign is the cameras' up side."""
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


def up_from_config_lines(cfg: PrepConfig, lines: Optional[list], source: str, Ks: np.ndarray, Es: np.ndarray
                         ) -> Optional[np.ndarray]:
    """Up [3] from read_vertical_lines' segments (None without them), which are in video pixels: moved into the
    cameras' convention (half-pixel shift, downsampled) first."""
    if lines is None:
        return None
    shift = 0.5 if cfg.principal_point == "opencv" else 0.0
    px = [[[[(x + shift) / cfg.image_downsample for x in pt] for pt in seg] for seg in segs] for segs in lines]
    return up_from_lines(px, Ks, Es, source)
