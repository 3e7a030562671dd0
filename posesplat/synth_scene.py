"""The synthetic scene that posesplat.synth writes: an articulated mouse walking in an arena, a ring of calibrated
cameras, and the exact ray caster that renders them.

Rendered by analytic ray-primitive intersection (ellipsoids and capsules) with Lambertian shading on a black
background, with the true depth and normals of every pixel; deterministic for a seed (`render_frames`).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from posesplat.gt import CAPSULE, ELLIPSOID, quat_to_rotmat
from posesplat.progress import Progress

# GT columns per primitive: centre 3, quaternion wxyz 4, size 3 (ellipsoid semi-axes; capsule half-length, radius,
# radius)
GT_COLUMNS = ["cx", "cy", "cz", "qw", "qx", "qy", "qz", "s0", "s1", "s2"]
N_TAIL = 5
PARTS = ["body", "head", "ear_left", "ear_right"] + [f"tail_{i}" for i in range(N_TAIL)]
KINDS = np.array([ELLIPSOID] * 4 + [CAPSULE] * N_TAIL, dtype=np.int8)
ALBEDO = np.array(
    [[0.55, 0.42, 0.30], [0.70, 0.58, 0.45], [0.95, 0.60, 0.65], [0.95, 0.60, 0.65]] + [[0.90, 0.65, 0.62]] * N_TAIL
)
ELL = 0.24  # carving-cube side (m) that holds the animal around its body centre in every frame
ARENA_RADIUS = 0.05
LIGHT = np.array([0.3, 0.2, 1.0]) / np.linalg.norm([0.3, 0.2, 1.0])
FPS = 30
FOV_HALF_DEG = 19.0  # half the horizontal field of view: the body spans ~1/3 of the width, the tail stays in frame


# ----------------------------------------------------------------------------------------------- rotations


def yaw_pitch_quat(yaw: float, pitch: float = 0.0) -> np.ndarray:
    """Quaternion of a yaw about +z after a pitch about +y."""
    qz = np.array([np.cos(yaw / 2), 0, 0, np.sin(yaw / 2)])
    qy = np.array([np.cos(pitch / 2), 0, np.sin(pitch / 2), 0])
    w1, x1, y1, z1 = qz
    w2, x2, y2, z2 = qy
    return np.array([w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2, w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
                     w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2, w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2])


def rotz(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


# ----------------------------------------------------------------------------------------------- the animal


def smooth_noise(t: np.ndarray, rng: np.random.Generator, base_hz: float) -> np.ndarray:
    """A smooth random signal [T] in about [-1, 1]: three sines at random frequencies and phases."""
    out = np.zeros_like(t)
    for k in range(3):
        out += np.sin(2 * np.pi * rng.uniform(0.5, 1.5) * base_hz * (k + 1) * t + rng.uniform(0, 2 * np.pi)) / (k + 1)
    return out / 1.83


def trajectory(frames: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A walk that stays in the arena: centres [F, 3], headings [F] (smooth, along the motion), body bend [F].

    Integrates a unicycle (the animal moves where it faces) with smooth random speed and turn rate, steering back
    towards the middle near the arena wall, so the heading never jumps.
    """
    t = np.arange(frames) / FPS
    speed = 0.045 + 0.025 * smooth_noise(t, rng, 0.15)  # m/s
    wander = 1.6 * smooth_noise(t, rng, 0.2)  # rad/s
    pos = rng.uniform(-0.3, 0.3, size=2) * ARENA_RADIUS
    head = rng.uniform(-np.pi, np.pi)
    xy, heading, turn = np.zeros((frames, 2)), np.zeros(frames), np.zeros(frames)
    for f in range(frames):
        r = np.linalg.norm(pos)
        home = np.angle(np.exp(1j * (np.arctan2(-pos[1], -pos[0]) - head)))  # turn needed to face the middle
        steer = 6.0 * max(r / ARENA_RADIUS - 0.5, 0.0) * home  # rad/s, only in the outer half
        turn[f] = np.clip(wander[f] + steer, -4.0, 4.0)
        xy[f], heading[f] = pos, head
        head = head + turn[f] / FPS
        pos = pos + speed[f] / FPS * np.array([np.cos(head), np.sin(head)])
        if np.linalg.norm(pos) > ARENA_RADIUS:  # the wall: slide along it
            pos = pos * ARENA_RADIUS / np.linalg.norm(pos)
    bend = np.clip(0.2 * turn, -0.5, 0.5) + 0.15 * np.sin(2 * np.pi * rng.uniform(0.3, 0.6) * t)
    centre = np.concatenate([xy, np.full((frames, 1), 0.022)], axis=1)
    return centre, heading, bend


def animal_primitives(centre: np.ndarray, heading: float, bend: float, phase: float) -> np.ndarray:
    """World-space primitive parameters [P, 10] (see GT_COLUMNS) of one posed animal."""
    R = rotz(heading)
    rows = []

    def add(local_c, yaw_local, size, pitch=0.0):
        c = centre + R @ np.asarray(local_c)
        rows.append(np.concatenate([c, yaw_pitch_quat(heading + yaw_local, pitch), size]))

    add([0, 0, 0], 0.0, [0.045, 0.024, 0.021])  # body
    neck = np.array([0.036, 0.0, 0.006])
    head_dir = rotz(bend) @ np.array([1.0, 0, 0])
    head_c = neck + 0.024 * head_dir
    add(head_c, bend, [0.026, 0.016, 0.015], pitch=0.15)  # head
    for side in (1, -1):
        ear = head_c + rotz(bend) @ np.array([-0.006, side * 0.012, 0.014])
        add(ear, bend + side * 0.4, [0.004, 0.009, 0.008])
    base, yaw = np.array([-0.043, 0.0, -0.004]), np.pi - 0.6 * bend
    seg, radius = 0.013, 0.0045
    for k in range(N_TAIL):
        yaw += 0.35 * np.sin(phase - 0.8 * k)
        d = np.array([np.cos(yaw), np.sin(yaw), -0.12])
        d /= np.linalg.norm(d)
        add(base + d * seg / 2, yaw, [seg / 2, radius, radius], pitch=0.12)
        base = base + d * seg
        radius *= 0.88
    return np.stack(rows)


# ----------------------------------------------------------------------------------------------- cameras


def camera_ring(views: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """A DANNCE-like ring of pinhole cameras: intrinsics [C,3,3], world-to-camera extrinsics [C,4,4]."""
    target = np.array([0.0, 0.0, 0.02])
    Ks, Es = [], []
    focal = 0.5 * width / np.tan(np.radians(FOV_HALF_DEG))
    for c in range(views):
        az = 2 * np.pi * c / views + 0.3
        elev = np.radians([28, 42, 35][c % 3])
        dist = 0.48 + 0.03 * (c % 2)
        pos = target + dist * np.array([np.cos(elev) * np.cos(az), np.cos(elev) * np.sin(az), np.sin(elev)])
        fwd = (target - pos) / np.linalg.norm(target - pos)
        right = np.cross(fwd, [0, 0, 1.0])
        right /= np.linalg.norm(right)
        down = np.cross(fwd, right)
        Rm = np.stack([right, down, fwd])  # rows: camera x, y, z axes in world
        E = np.eye(4)
        E[:3, :3], E[:3, 3] = Rm, -Rm @ pos
        K = np.array([[focal, 0, width / 2], [0, focal * 1.0, height / 2], [0, 0, 1]])
        Ks.append(K)
        Es.append(E)
    return np.stack(Ks), np.stack(Es)


def bounding_box(prims: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World axis-aligned box [3], [3] holding every primitive (each inside its bounding sphere)."""
    radius = np.where(KINDS == CAPSULE, prims[:, 7] + prims[:, 8], prims[:, 7:10].max(1))
    return (prims[:, :3] - radius[:, None]).min(0), (prims[:, :3] + radius[:, None]).max(0)


def pixel_window(K: np.ndarray, E: np.ndarray, lo: np.ndarray, hi: np.ndarray, height: int, width: int
                 ) -> tuple[int, int, int, int]:
    """Rows [r0, r1) and columns [c0, c1) that hold the projection of a world box: rays outside it miss."""
    corners = np.stack(np.meshgrid(*zip(lo, hi), indexing="ij"), -1).reshape(8, 3)
    cam = corners @ E[:3, :3].T + E[:3, 3]
    if (cam[:, 2] <= 1e-6).any():  # the box reaches behind the camera: cast every ray
        return 0, height, 0, width
    uv = cam @ K.T
    uv = uv[:, :2] / uv[:, 2:]
    c0, r0 = np.floor(uv.min(0)).astype(int) - 1
    c1, r1 = np.ceil(uv.max(0)).astype(int) + 1
    return max(r0, 0), max(min(r1, height), max(r0, 0)), max(c0, 0), max(min(c1, width), max(c0, 0))


def camera_rays(K: np.ndarray, E: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Ray origin [3] and unit directions [H*W, 3] through pixel centres (u = j + 0.5, v = i + 0.5)."""
    j, i = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    pix = np.stack([j.ravel(), i.ravel(), np.ones(height * width)], axis=1)
    d_cam = pix @ np.linalg.inv(K).T
    R, t = E[:3, :3], E[:3, 3]
    d = d_cam @ R  # R^T d_cam
    return -R.T @ t, d / np.linalg.norm(d, axis=1, keepdims=True)


# ----------------------------------------------------------------------------------------------- ray casting


def hit_ellipsoid(o: np.ndarray, d: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest hit distance [R] (inf if none) and world normals [R, 3] of rays against an ellipsoid."""
    R, s = quat_to_rotmat(p[3:7]), p[7:10]
    ol = (R.T @ (o - p[:3])) / s
    dl = (d @ R) / s
    a = (dl * dl).sum(1)
    b = 2 * dl @ ol
    c = ol @ ol - 1
    disc = b * b - 4 * a * c
    t = np.where(disc >= 0, (-b - np.sqrt(np.maximum(disc, 0))) / (2 * a), np.inf)
    t = np.where(t > 0, t, np.inf)
    hit_local = (ol + t[:, None] * dl) if np.isfinite(t).any() else np.zeros_like(dl)
    n = (np.nan_to_num(hit_local, posinf=0) / s) @ R.T
    return t, n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)


def hit_capsule(o: np.ndarray, d: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest hit distance [R] and normals [R, 3] of rays against a capsule (axis = local x, half-length, radius)."""
    R, h, r = quat_to_rotmat(p[3:7]), p[7], p[8]
    axis = R[:, 0]
    pa, pb = p[:3] - h * axis, p[:3] + h * axis
    ba = pb - pa
    oa = o - pa
    baba, bard, baoa = ba @ ba, d @ ba, ba @ oa
    rdoa, oaoa = d @ oa, oa @ oa
    a = baba - bard * bard
    b = baba * rdoa - baoa * bard
    c = baba * oaoa - baoa * baoa - r * r * baba
    disc = b * b - a * c
    t = np.full(d.shape[0], np.inf)
    ok = disc >= 0
    tc = np.where(ok, (-b - np.sqrt(np.maximum(disc, 0))) / np.where(a == 0, 1, a), np.inf)
    y = baoa + tc * bard
    body = ok & (y > 0) & (y < baba)
    t[body] = tc[body]
    for end in (pa, pb):  # spherical caps
        oc = o - end
        bb = d @ oc
        cc = oc @ oc - r * r
        dd = bb * bb - cc
        tcap = np.where(dd >= 0, -bb - np.sqrt(np.maximum(dd, 0)), np.inf)
        better = ~body & (tcap > 0) & (tcap < t)
        t[better] = tcap[better]
    t = np.where(t > 0, t, np.inf)
    hit = o + np.nan_to_num(t, posinf=0)[:, None] * d
    proj = np.clip((hit - pa) @ ba / baba, 0, 1)
    n = hit - (pa + proj[:, None] * ba)
    return t, n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)


def surface_pattern(part: int, p: np.ndarray, prim: np.ndarray) -> np.ndarray:
    """Multiplicative albedo pattern [R]: dark stripes across the body, a pale blaze on the head."""
    R = quat_to_rotmat(prim[3:7])
    local = (p - prim[:3]) @ R
    if part == 0:
        return 0.65 + 0.35 * (np.sin(local[:, 0] * 140.0) > 0)
    if part == 1:
        return np.where(np.abs(local[:, 1]) < 0.004, 1.35, 1.0)
    return np.ones(len(p))


@np.errstate(over="ignore", invalid="ignore", divide="ignore")  # rays that miss give inf/nan, masked out below
def render_view(prims: np.ndarray, o: np.ndarray, d: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Shaded RGB [R, 3] in [0, 1], mask [R], hit distance along the ray [R] (inf where it misses) and outward world
    normals [R, 3] (0 where it misses) of one camera's unit rays."""
    best = np.full(d.shape[0], np.inf)
    normal = np.zeros_like(d)
    part = np.full(d.shape[0], -1)
    for k, prim in enumerate(prims):
        fn = hit_ellipsoid if KINDS[k] == ELLIPSOID else hit_capsule
        t, n = fn(o, d, prim)
        closer = t < best
        best[closer], normal[closer], part[closer] = t[closer], n[closer], k
    mask = np.isfinite(best)
    rgb = np.zeros_like(d)
    if mask.any():
        hit = o + best[mask, None] * d[mask]
        n = normal[mask]
        shade = 0.35 + 0.65 * np.clip(n @ LIGHT, 0, 1)
        albedo = ALBEDO[part[mask]]
        pattern = np.ones(mask.sum())
        for k in (0, 1):
            sel = part[mask] == k
            pattern[sel] = surface_pattern(k, hit[sel], prims[k])
        rgb[mask] = np.clip(albedo * pattern[:, None] * shade[:, None], 0, 1)
    return rgb, mask, best, np.where(mask[:, None], normal, 0.0)


# ----------------------------------------------------------------------------------------------- the recording


def render_frames(frames: int, views: int, height: int, width: int, seed: int, progress: bool
                  ) -> tuple[dict[str, np.ndarray], Iterator[tuple]]:
    """Scene arrays (dict) and a generator of (frame, primitives [P, 10], images [C,H,W,3] uint8, masks [C,H,W],
    true z-depth [C,H,W] float32 (m, 0 off the body), true outward world normals [C,H,W,3] float32 (0 off it))."""
    rng = np.random.default_rng(seed)
    centre, heading, bend = trajectory(frames, rng)
    tail_phase = 2 * np.pi * rng.uniform(0.8, 1.5) * np.arange(frames) / 30.0
    Ks, Es = camera_ring(views, height, width)
    rays = [camera_rays(Ks[c], Es[c], height, width) for c in range(views)]

    def frames_iter():
        for f in Progress(range(frames), desc="synthetic mouse", unit="frame", disable=not progress):
            prims = animal_primitives(centre[f], heading[f], bend[f], tail_phase[f])
            img = np.zeros((views, height, width, 3), dtype=np.uint8)
            msk = np.zeros((views, height, width), dtype=np.uint8)
            depth = np.zeros((views, height, width), dtype=np.float32)
            normal = np.zeros((views, height, width, 3), dtype=np.float32)
            lo, hi = bounding_box(prims)
            for c, (o, d) in enumerate(rays):
                r0, r1, c0, c1 = pixel_window(Ks[c], Es[c], lo, hi, height, width)
                win = d.reshape(height, width, 3)[r0:r1, c0:c1].reshape(-1, 3)
                rgb, m, t, n = render_view(prims, o, win)
                img[c, r0:r1, c0:c1] = np.round(rgb * 255).astype(np.uint8).reshape(r1 - r0, c1 - c0, 3)
                msk[c, r0:r1, c0:c1] = m.reshape(r1 - r0, c1 - c0)
                z = np.where(m, np.nan_to_num(t, posinf=0.0) * (win @ Es[c][2, :3]), 0.0)  # camera z of the hit
                depth[c, r0:r1, c0:c1] = z.reshape(r1 - r0, c1 - c0)
                normal[c, r0:r1, c0:c1] = n.reshape(r1 - r0, c1 - c0, 3)
            yield f, prims, img, msk, depth, normal

    return {"centre": centre, "heading": heading, "intrinsics": Ks, "extrinsics": Es}, frames_iter()

