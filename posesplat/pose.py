"""Quaternion algebra and the animal-local to world pose transform.

Orientations are composed as quaternions directly; rotation matrices are never converted back to quaternions
(the earlier attempt's eigendecomposition over every Gaussian asked for 8 GiB at grid 64).
Quaternions are [w, x, y, z].
"""

from __future__ import annotations

import torch
from torch import Tensor


def quat_multiply(a: Tensor, b: Tensor) -> Tensor:
    """Hamilton product a * b for [..., 4] quaternions (rotation b first, then a)."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ],
        dim=-1,
    )


def quat_to_rotmat(q: Tensor) -> Tensor:
    """[..., 4] quaternions (any norm) -> [..., 3, 3] rotation matrices."""
    w, x, y, z = torch.nn.functional.normalize(q, dim=-1).unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(q.shape[:-1] + (3, 3))


def yaw_quat(heading: Tensor) -> Tensor:
    """[...] yaw angles about +z (radians) -> [..., 4] quaternions."""
    half = 0.5 * heading
    zero = torch.zeros_like(half)
    return torch.stack([torch.cos(half), zero, zero, torch.sin(half)], dim=-1)


def yaw_rotmat(heading: Tensor) -> Tensor:
    """[...] yaw angles about +z -> [..., 3, 3] rotation matrices."""
    c, s = torch.cos(heading), torch.sin(heading)
    zero, one = torch.zeros_like(c), torch.ones_like(c)
    return torch.stack([c, -s, zero, s, c, zero, zero, zero, one], dim=-1).reshape(heading.shape + (3, 3))


def local_to_world(
    means: Tensor,  # [N, 3] animal-local positions
    quats: Tensor | None,  # [N, 4] animal-local orientations, or None
    centre: Tensor,  # [3] animal centre in world
    heading: Tensor,  # [] yaw in radians
) -> tuple[Tensor, Tensor | None]:
    """Move Gaussians from the animal frame to world: x_w = R_z(heading) x + centre, q_w = q_heading * q."""
    means_w = means @ yaw_rotmat(heading).T + centre
    if quats is None:
        return means_w, None
    return means_w, quat_multiply(yaw_quat(heading).expand_as(quats), quats)
