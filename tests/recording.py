"""A small multi-camera animal recording in the original Pose Splatter raw layout, with its ground truth.

Independent of posesplat (numpy, h5py and imageio_ffmpeg only), so that tests of `python -m posesplat.prep` can check
what it imports against a truth it did not produce. `make_recording(out)` writes into `out`:

    config.json                     Pose Splatter's keys (absolute data_directory / project_directory)
    camera_params.h5                group camera_parameters: rotation [C,3,3], translation [C,3], intrinsic [C,3,3]
    videos/Camera{c+1}/0.mp4        RGB, libx264 yuv420p (lossy)
    mask_videos/{c+1}.mp4           0/255 masks as RGB, libx264 yuv420p (lossy: blurred edges)
    truth.npz                       centre, heading, calib_from_world (and the cameras), for debugging

The scene, in the true world (metres, z up, floor z = 0): a "rat" of three ellipsoids (body, head, tail), rigid,
rotated only by its heading (yaw about +z), walking forwards at 0.1-0.2 m/s along a figure of eight inside a 0.12 m
radius arena; `views` cameras ring the arena. Images are exact per-pixel ray casts through the pixel centres (OpenCV
convention: the top-left pixel's centre is (0, 0)). The calibration frame is the true world tilted by `tilt_deg`
about a horizontal axis, turned about z, shifted by a few cm and scaled to calibration units:
x_calib = s (Q x_world + o), s = 1 / unit_m.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import h5py
import imageio_ffmpeg
import numpy as np

# (name, centre offset in the animal's frame (x forward, y left, z up; from the body centre), semi-axes, albedo)
PARTS = (
    ("body", (0.0, 0.0, 0.0), (0.05, 0.022, 0.02), (0.80, 0.68, 0.52)),
    ("head", (0.06, 0.0, 0.008), (0.022, 0.014, 0.013), (0.90, 0.62, 0.56)),
    ("tail", (-0.075, 0.0, -0.01), (0.035, 0.006, 0.006), (0.62, 0.44, 0.46)),
)
BODY_HEIGHT = 0.022  # body centre above the floor (m)
ARENA_RADIUS = 0.12
PATH_HALF_LENGTH = 0.085  # the figure of eight's half length (its half width is half that)
LOOK_AT = np.array([0.0, 0.0, 0.03])
LIGHT = np.array([0.35, -0.25, 1.0]) / np.linalg.norm([0.35, -0.25, 1.0])
MARGIN = 0.15  # ell_m = (1 + MARGIN) * the smallest cube side (centred at the body centre) that holds the animal
FIT_PX = 2.0  # fully-seeing cameras keep every body point this many pixels inside the image
RGB_QUALITY, MASK_QUALITY = 5, 7


def rot_z(a: np.ndarray) -> np.ndarray:
    """[..., 3, 3] rotations by a (radians) about +z."""
    a = np.asarray(a, dtype=float)
    c, s = np.cos(a), np.sin(a)
    out = np.zeros(a.shape + (3, 3))
    out[..., 0, 0], out[..., 0, 1], out[..., 1, 0], out[..., 1, 1], out[..., 2, 2] = c, -s, s, c, 1.0
    return out


def rot_axis(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rodrigues: rotation by angle (radians) about the unit vector axis."""
    k = np.asarray(axis, dtype=float) / np.linalg.norm(axis)
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(angle) * kx + (1 - np.cos(angle)) * kx @ kx


def look_at(eye: np.ndarray, target: np.ndarray, roll: float = 0.0) -> np.ndarray:
    """World-to-camera rotation (OpenCV: x right, y down, z forward) of a camera at eye looking at target."""
    f = (target - eye) / np.linalg.norm(target - eye)
    right = np.cross(f, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(f, right)
    R = np.stack([right, down, f])
    c, s = np.cos(roll), np.sin(roll)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]]) @ R


def ps_normalised_unit(Rs: np.ndarray, ts: np.ndarray) -> float:
    """Pose Splatter's normalised unit (calibration units), as its get_cam_params computes it: with camera centres
    C_c = -R_c^T t_c and their mean cbar, its new coordinates are R_2 (x + cbar) / U with U = max_c |C_c + cbar|."""
    C = -np.einsum("cji,cj->ci", Rs, ts)
    return float(np.max(np.linalg.norm(C + C.mean(0), axis=1)))


def figure_eight(frames: int, fps: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Body-centre xy [F, 2] and unwrapped heading [F]: a Gerono lemniscate walked forwards at 0.1-0.2 m/s."""
    a = PATH_HALF_LENGTH
    phi = np.linspace(0, 2 * np.pi, 4097)
    pts = np.stack([a * np.sin(phi), a * np.sin(phi) * np.cos(phi)], -1)
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))])
    period = arc[-1]
    t = np.arange(frames) / fps
    w, p = rng.uniform(2.0, 3.0), rng.uniform(0, 2 * np.pi)
    speed = 0.15 + 0.04 * np.sin(w * t + p)  # m/s, in [0.11, 0.19]
    s = rng.uniform(0, period) + np.concatenate([[0.0], np.cumsum(0.5 * (speed[1:] + speed[:-1]) / fps)])
    ph = np.interp(np.mod(s, period), arc, phi)
    xy = np.stack([a * np.sin(ph), a * np.sin(ph) * np.cos(ph)], -1)
    heading = np.unwrap(np.arctan2(a * np.cos(2 * ph), a * np.cos(ph)))
    turn = rng.uniform(0, 2 * np.pi)  # the figure's orientation in the arena
    return xy @ rot_z(turn)[:2, :2].T, heading + turn


def surface_samples(n: int = 2000) -> np.ndarray:
    """Points on the animal's surface in its own frame (x forward, z up, origin at the body centre) [P, 3]."""
    g = np.random.default_rng(12345).normal(size=(n, 3))
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    return np.concatenate([np.asarray(off) + g * np.asarray(ax) for _, off, ax, _ in PARTS])


@dataclass
class Recording:
    config: Path  # the Pose Splatter JSON config
    folder: Path
    unit_m: float  # metres per calibration unit (0.001: millimetres)
    calib_from_world: np.ndarray  # [4,4] similarity: x_calib = calib_from_world @ [x_world_m, 1]
    Rs: np.ndarray  # [C,3,3] as written to the HDF5: x_cam = R x_calib + t (calibration units)
    ts: np.ndarray  # [C,3]
    Ks: np.ndarray  # [C,3,3] OpenCV principal point (top-left pixel centre = (0, 0))
    centre: np.ndarray  # [F_src, 3] true body centre, true world (metres, z up, floor z = 0)
    heading: np.ndarray  # [F_src] true yaw about +z (radians, 0 = facing +x, ccw), unwrapped
    fps: float  # the container's frame rate
    ell_m: float  # cube side (m) holding the whole animal in every frame, ~15% margin (any yaw of the cube)
    ps_unit: float = 1.0  # Pose Splatter's normalised unit U (calibration units)
    ell_ps: float = 1.0  # ell_m in Pose Splatter's normalised units (the config's `ell`)
    width: int = 0
    height: int = 0
    lengths: list[int] = field(default_factory=list)  # frames in each camera's videos
    leave_view: Optional[int] = None
    visible: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), bool))  # [C, F_src] animal fully in image
    cut: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), bool))  # [C, F_src] partly out of the image
    gone: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), bool))  # [C, F_src] wholly out of the image

    @property
    def frames(self) -> int:
        return len(self.centre)

    @property
    def views(self) -> int:
        return len(self.Rs)

    @property
    def world_from_calib(self) -> np.ndarray:
        return np.linalg.inv(self.calib_from_world)

    def to_calib(self, points_world: np.ndarray) -> np.ndarray:
        """[..., 3] true-world metres -> calibration coordinates."""
        A = self.calib_from_world
        return np.asarray(points_world) @ A[:3, :3].T + A[:3, 3]

    def to_world(self, points_calib: np.ndarray) -> np.ndarray:
        """[..., 3] calibration coordinates -> true-world metres."""
        A = self.world_from_calib
        return np.asarray(points_calib) @ A[:3, :3].T + A[:3, 3]

    def project(self, view: int, points_world: np.ndarray) -> np.ndarray:
        """[..., 2] OpenCV pixel coordinates (u, v) of true-world points in a view, through the HDF5's K [R | t]."""
        x = self.to_calib(points_world) @ self.Rs[view].T + self.ts[view]
        uvw = x @ self.Ks[view].T
        return uvw[..., :2] / uvw[..., 2:]

    def to_animal(self, frame: int, points_world: np.ndarray) -> np.ndarray:
        """[..., 3] true-world points in the animal's frame (x forward, z up, origin at the body centre)."""
        return (np.asarray(points_world) - self.centre[frame]) @ rot_z(self.heading[frame])

    def from_animal(self, frame: int, points: np.ndarray) -> np.ndarray:
        return np.asarray(points) @ rot_z(self.heading[frame]).T + self.centre[frame]

    def body_points(self, frame: int, n: int = 2000, seed: int = 0) -> np.ndarray:
        """[n, 3] points uniformly distributed inside the true body (the union of its parts), true world metres."""
        rng = np.random.default_rng([seed, frame])
        lo = np.min([np.subtract(off, ax) for _, off, ax, _ in PARTS], axis=0)
        hi = np.max([np.add(off, ax) for _, off, ax, _ in PARTS], axis=0)
        got: list[np.ndarray] = []
        have = 0
        while have < n:
            p = rng.uniform(lo, hi, size=(4 * n, 3))
            p = p[_inside_local(p)]
            got.append(p)
            have += len(p)
        return self.from_animal(frame, np.concatenate(got)[:n])

    def inside(self, frame: int, points_world: np.ndarray) -> np.ndarray:
        """Bool [...]: which true-world points lie inside the true body at that frame."""
        return _inside_local(self.to_animal(frame, points_world))


def _inside_local(p: np.ndarray) -> np.ndarray:
    out = np.zeros(p.shape[:-1], bool)
    for _, off, ax, _ in PARTS:
        out |= np.sum(((p - np.asarray(off)) / np.asarray(ax)) ** 2, axis=-1) <= 1.0
    return out


def _cast(eye: np.ndarray, dirs: np.ndarray, centre: np.ndarray, heading: np.ndarray
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest hit of rays (eye [3], dirs [P, 3], world) with the animal in each frame: part index [F, P] (-1: miss)
    and the unit world normal there [F, P, 3]; also the hit distance [F, P]."""
    A = rot_z(heading)  # [F, 3, 3] world from animal
    o = np.einsum("fji,fj->fi", A, eye - centre)  # eye in the animal frame [F, 3]
    d = np.einsum("fji,pj->fpi", A, dirs)  # [F, P, 3]
    F, P = d.shape[:2]
    best = np.full((F, P), np.inf)
    part = np.full((F, P), -1)
    normal_local = np.zeros((F, P, 3))
    for k, (_, off, ax, _) in enumerate(PARTS):
        ax = np.asarray(ax)
        oo = (o - np.asarray(off)) / ax  # [F, 3]
        dd = d / ax  # [F, P, 3]
        qa = np.sum(dd * dd, -1)
        qb = 2 * np.einsum("fpi,fi->fp", dd, oo)
        qc = np.sum(oo * oo, -1)[:, None] - 1.0
        disc = qb * qb - 4 * qa * qc
        ok = disc >= 0
        sq = np.sqrt(np.where(ok, disc, 0.0))
        t = (-qb - sq) / (2 * qa)
        t = np.where(t > 0, t, (-qb + sq) / (2 * qa))  # (an eye inside the part; never in this scene)
        hit = ok & (t > 0) & (t < best)
        best = np.where(hit, t, best)
        part = np.where(hit, k, part)
        q = oo[:, None, :] + t[..., None] * dd  # on the unit sphere
        n = q / ax  # gradient direction of the quadric, animal frame
        normal_local = np.where(hit[..., None], n, normal_local)
    normal = np.einsum("fij,fpj->fpi", A, normal_local)
    normal /= np.maximum(np.linalg.norm(normal, axis=-1, keepdims=True), 1e-12)
    return part, normal, best


def _write_video(path: Path, frames: np.ndarray, fps: float, quality: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = frames.shape[1:3]
    gen = imageio_ffmpeg.write_frames(str(path), size=(w, h), fps=fps, codec="libx264", macro_block_size=2,
                                      quality=quality, ffmpeg_log_level="error")
    gen.send(None)
    for fr in frames:
        gen.send(np.ascontiguousarray(fr, dtype=np.uint8))
    gen.close()


def _bounds(R: np.ndarray, C: np.ndarray, f: float, cx: float, cy: float, pts: np.ndarray) -> np.ndarray:
    """Pixel coordinates [..., 2] of world points through a metric camera (R, centre C, focal f, principal point)."""
    x = (pts - C) @ R.T
    return np.stack([f * x[..., 0] / x[..., 2] + cx, f * x[..., 1] / x[..., 2] + cy], -1)


def make_recording(out: Path, *, frames: int = 40, views: int = 4, width: int = 96, height: int = 80,
                   fps: float = 30.0, config_fps: float | None = None, lengths: list[int] | None = None,
                   tilt_deg: float = 25.0, unit_m: float = 0.001, frame_jump: int = 1, image_downsample: int = 1,
                   leave_view: int | None = None, holdout_views: list[int] | None = None,
                   extra_keys: dict | None = None, seed: int = 0) -> Recording:
    """Write a recording in Pose Splatter's raw layout into out (made if missing) and return its ground truth.

    lengths: frames in each camera's two videos (default: all `frames`; each <= frames). leave_view: that camera is
    turned so that the left image edge cuts the animal in about half the frames (fewer where the animal would
    otherwise leave the image wholly: it never does; Recording.cut says which), the others see it whole in every
    frame. extra_keys: merged into the config last; a value None deletes the key."""
    out = Path(out)
    if width % 2 or height % 2:
        raise ValueError(f"width and height must be even (yuv420p), got {width}x{height}")
    if views < 2:
        raise ValueError("need at least two views")
    lengths = [frames] * views if lengths is None else [int(n) for n in lengths]
    if len(lengths) != views or not all(1 <= n <= frames for n in lengths):
        raise ValueError(f"lengths must be {views} counts in [1, {frames}], got {lengths}")
    if leave_view is not None and not 0 <= leave_view < views:
        raise ValueError(f"leave_view {leave_view} out of range [0, {views})")
    rng = np.random.default_rng(seed)

    # ---- motion (true world)
    xy, heading = figure_eight(frames, fps, rng)
    centre = np.concatenate([xy, np.full((frames, 1), BODY_HEIGHT)], 1)
    surf = surface_samples()  # animal frame
    surf_world = np.einsum("fij,pj->fpi", rot_z(heading), surf) + centre[:, None]  # [F, P, 3]
    radius = max(np.max(np.linalg.norm(surf[:, :2], axis=1)), np.max(np.abs(surf[:, 2])))
    ell_m = float(2 * radius * (1 + MARGIN))

    # ---- cameras (true world, metres)
    cx, cy = (width - 1) / 2, (height - 1) / 2
    az0 = rng.uniform(0, 2 * np.pi)
    cams = []
    for c in range(views):
        az = az0 + 2 * np.pi * c / views + rng.uniform(-0.15, 0.15)
        el = np.deg2rad(rng.uniform(30, 45))
        dist = rng.uniform(0.5, 0.55)
        target = LOOK_AT + np.array([*rng.uniform(-0.01, 0.01, 2), 0.0])
        eye = target + dist * np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
        R = look_at(eye, target, roll=np.deg2rad(rng.uniform(-4, 4)))
        pp = (cx + rng.uniform(-1, 1), cy + rng.uniform(-1, 1))
        # focal: the animal's length spans about a third of the image width, but every body point of every frame
        # stays FIT_PX inside the image
        f_target = (width / 3) * dist / (surf[:, 0].max() - surf[:, 0].min())
        x = (surf_world - eye) @ R.T
        a, b = x[..., 0] / x[..., 2], x[..., 1] / x[..., 2]
        lim = [np.min((pp[0] - FIT_PX) / -a[a < 0]), np.min((width - 1 - FIT_PX - pp[0]) / a[a > 0]),
               np.min((pp[1] - FIT_PX) / -b[b < 0]), np.min((height - 1 - FIT_PX - pp[1]) / b[b > 0])]
        f = min(f_target, *lim)
        cams.append(dict(R=R, C=eye, f=f, fy=f * (1 + rng.uniform(-0.005, 0.005)), pp=pp))
    if leave_view is not None:
        cam = cams[leave_view]
        # turn the camera about its own y axis (the look-at point slides sideways) until the left image edge cuts
        # the animal in half the frames (the median over frames of its leftmost pixel is 0), but no further than
        # keeps a few pixels of it in the image in every frame
        def turned(theta: float) -> np.ndarray:
            return _bounds(rot_axis([0, 1, 0], theta) @ cam["R"], cam["C"], cam["f"], *cam["pp"], surf_world)[..., 0]

        def solve(g) -> float:  # g(theta) increases with theta (the image content moves right); its root
            lo, hi = -0.8, 0.8
            for _ in range(50):
                mid = 0.5 * (lo + hi)
                lo, hi = (mid, hi) if g(mid) < 0 else (lo, mid)
            return 0.5 * (lo + hi)

        theta = max(solve(lambda th: float(np.median(turned(th).min(1)))),
                    solve(lambda th: float(turned(th).max(1).min()) - max(4.0, 0.08 * width)))
        cam["R"] = rot_axis([0, 1, 0], theta) @ cam["R"]

    # ---- calibration frame
    s = 1.0 / unit_m
    axis = np.array([*rot_z(rng.uniform(0, 2 * np.pi))[:2, 0], 0.0])  # horizontal: up tilts by exactly tilt_deg
    Q = rot_axis(axis, np.deg2rad(tilt_deg)) @ rot_z(rng.uniform(0, 2 * np.pi))
    o = rng.normal(size=3)
    o *= rng.uniform(0.03, 0.06) / np.linalg.norm(o)
    calib_from_world = np.eye(4)
    calib_from_world[:3, :3], calib_from_world[:3, 3] = s * Q, s * o
    Rs = np.stack([cam["R"] @ Q.T for cam in cams])
    # x_cam_calib = s (R (x_w - C)) = R Q^T x_c - s R (Q^T o + C)
    ts = np.stack([-s * cam["R"] @ (Q.T @ o + cam["C"]) for cam in cams])
    Ks = np.stack([np.array([[cam["f"], 0, cam["pp"][0]], [0, cam["fy"], cam["pp"][1]], [0, 0, 1.0]])
                   for cam in cams])

    # ---- render and write
    out.mkdir(parents=True, exist_ok=True)
    jj, ii = np.meshgrid(np.arange(width, dtype=float), np.arange(height, dtype=float))
    pix = np.stack([jj.ravel(), ii.ravel(), np.ones(jj.size)], -1)
    albedo = np.array([p[3] for p in PARTS])
    visible = np.zeros((views, frames), bool)
    cut = np.zeros((views, frames), bool)
    gone = np.zeros((views, frames), bool)
    for c, cam in enumerate(cams):
        K = Ks[c]
        dirs = (pix @ np.linalg.inv(K).T) @ cam["R"]  # world directions of the rays through the pixel centres
        part, normal, _ = _cast(cam["C"], dirs, centre, heading)
        n = lengths[c]
        part, normal = part[:n], normal[:n]
        shade = 0.35 + 0.65 * np.clip(normal @ LIGHT, 0, None)  # [F, P]
        fg = albedo[np.maximum(part, 0)] * shade[..., None]
        tint = np.array([0.50, 0.48, 0.45]) + rng.uniform(-0.03, 0.03, 3)
        bg = tint + 0.14 * (jj.ravel() / (width - 1) - 0.5)[:, None] - 0.10 * (ii.ravel() / (height - 1) - 0.5)[:, None]
        rgb = np.where(part[..., None] >= 0, fg, bg[None])
        rgb = np.clip(np.round(rgb * 255), 0, 255).astype(np.uint8).reshape(n, height, width, 3)
        mask = np.repeat(np.where(part >= 0, 255, 0).astype(np.uint8).reshape(n, height, width, 1), 3, -1)
        _write_video(out / "videos" / f"Camera{c + 1}" / "0.mp4", rgb, fps, RGB_QUALITY)
        _write_video(out / "mask_videos" / f"{c + 1}.mp4", mask, fps, MASK_QUALITY)
        uv = _bounds(cam["R"], cam["C"], cam["f"], *cam["pp"], surf_world)
        inx = (uv[..., 0] >= 0) & (uv[..., 0] <= width - 1) & (uv[..., 1] >= 0) & (uv[..., 1] <= height - 1)
        visible[c], gone[c] = inx.all(1), ~inx.any(1)
        cut[c] = ~visible[c] & ~gone[c]

    with h5py.File(out / "camera_params.h5", "w") as h:
        g = h.create_group("camera_parameters")
        g.create_dataset("rotation", data=Rs)
        g.create_dataset("translation", data=ts)
        g.create_dataset("intrinsic", data=Ks)

    U = ps_normalised_unit(Rs, ts)
    ell_ps = ell_m / unit_m / U
    root = str(out.resolve()) + "/"
    config = {
        "data_directory": root,
        "project_directory": root,
        "mask_video_fns": [f"mask_videos/{c + 1}.mp4" for c in range(views)],
        "video_fns": [f"videos/Camera{c + 1}/0.mp4" for c in range(views)],
        "camera_fn": "camera_params.h5",
        **({"holdout_views": list(holdout_views)} if holdout_views is not None else {}),
        "image_width": width,
        "image_height": height,
        "image_downsample": image_downsample,
        "frame_jump": frame_jump,
        "fps": config_fps if config_fps is not None else fps,
        "adaptive_camera": False,
        "ell": ell_ps,
        "ell_tracking": 1.15 * ell_ps,
        "grid_size": 32,
        "img_lambda": 0.5,
        "ssim_lambda": 0.0,
        "lr": 1e-4,
        "valid_every": 5,
        "volume_fill_color": 0.38,
        "model_fn": "checkpoint.pt",
    }
    for k, v in (extra_keys or {}).items():
        if v is None:
            config.pop(k, None)
        else:
            config[k] = v
    cfg_path = out / "config.json"
    cfg_path.write_text(json.dumps(config, indent=2) + "\n")
    np.savez(out / "truth.npz", centre=centre, heading=heading, calib_from_world=calib_from_world, Rs=Rs, ts=ts,
             Ks=Ks, fps=fps, unit_m=unit_m, ell_m=ell_m, ps_unit=U, ell_ps=ell_ps, lengths=np.array(lengths),
             visible=visible, cut=cut, gone=gone)
    return Recording(config=cfg_path, folder=out, unit_m=unit_m, calib_from_world=calib_from_world, Rs=Rs, ts=ts,
                     Ks=Ks, centre=centre, heading=heading, fps=float(fps), ell_m=ell_m, ps_unit=U, ell_ps=ell_ps,
                     width=width, height=height, lengths=lengths, leave_view=leave_view, visible=visible, cut=cut,
                     gone=gone)


# ---------------------------------------------------- the truth compared with an imported dataset


def to_dataset(ds, rec: Recording, points_world: np.ndarray) -> np.ndarray:
    """True-world points [..., 3] -> the imported dataset's world (through the calibration frame)."""
    W = np.asarray(ds.attrs["world_from_calibration"])
    return rec.to_calib(points_world) @ W[:3, :3].T + W[:3, 3]


def yaw_in_dataset(ds, rec: Recording, heading: np.ndarray) -> np.ndarray:
    """True-world headings (radians) -> the imported dataset's world."""
    d = np.stack([np.cos(heading), np.sin(heading), 0 * heading], 1)
    A = np.asarray(ds.attrs["world_from_calibration"])[:3, :3] @ rec.calib_from_world[:3, :3]
    d = d @ A.T
    return np.arctan2(d[:, 1], d[:, 0])


def angle_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|a - b| in degrees, wrapped to [0, 180]."""
    return np.degrees(np.abs(np.angle(np.exp(1j * (a - b)))))


def in_cube(ds, frame: int, points: np.ndarray) -> np.ndarray:
    """Dataset-world points [N, 3] in the frame's animal-centred cube coordinates (centre, heading)."""
    c, s = np.cos(ds.heading[frame]), np.sin(ds.heading[frame])
    return (points - ds.centre[frame]) @ np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def cube_share(ds, rec: Recording, frame: int, source: int) -> float:
    """Share of the true body of a source frame inside the dataset's cube (ell, centre, heading) of that frame."""
    local = in_cube(ds, frame, to_dataset(ds, rec, rec.body_points(source, 2000, seed=frame)))
    return float((np.abs(local) <= ds.ell / 2).all(1).mean())
