"""Ground-truth body geometry: solid primitives (ellipsoids and capsules) that synth makes and data scores against.

A primitive is a row of 10 numbers: centre (3), a unit quaternion wxyz rotating its local axes into the world (4),
and sizes (3): an ellipsoid's semi-axes, or a capsule's half-length along local x and radius (twice). docs/dataset.md.
"""

from __future__ import annotations

import numpy as np

ELLIPSOID, CAPSULE = 0, 1
KIND_NAMES = {ELLIPSOID: "ellipsoid", CAPSULE: "capsule"}


def quat_to_rotmat(q: np.ndarray) -> np.ndarray:
    """[..., 4] wxyz -> [..., 3, 3]."""
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = np.moveaxis(q, -1, 0)
    return np.stack(
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
         2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
         2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], axis=-1
    ).reshape(q.shape[:-1] + (3, 3))


def inside_body(gt: np.ndarray, points: np.ndarray, kinds: np.ndarray) -> np.ndarray:
    """True for world points [N, 3] inside any primitive of one frame (gt [P, 10], kinds [P])."""
    inside = np.zeros(len(points), dtype=bool)
    for prim, kind in zip(np.asarray(gt, dtype=np.float64), kinds):
        local = (points - prim[:3]) @ quat_to_rotmat(prim[3:7])
        if kind == CAPSULE:
            h, r = prim[7], prim[8]
            along = np.clip(local[:, 0], -h, h)
            inside |= (local[:, 0] - along) ** 2 + local[:, 1] ** 2 + local[:, 2] ** 2 <= r * r
        else:
            inside |= ((local / prim[7:10]) ** 2).sum(1) <= 1.0
    return inside
