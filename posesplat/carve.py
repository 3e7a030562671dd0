"""Shape carving: masks and images of the observed views into a voxel grid centred on the animal.

The grid is a cube of side `ell` with `grid_size` cells per side, centred on the animal's centre and rotated by its
heading, so the network always sees the animal in the same canonical frame. `volume_idx` crops the cube to the
cells the animal ever occupies.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from posesplat.pose import yaw_rotmat

CARVE_CHANNELS = 5  # hull, fraction of views seeing foreground, mean colour (3)


def voxel_centres(grid_size: int, ell: float, volume_idx: Sequence[Sequence[int]] | None = None) -> Tensor:
    """Animal-local coordinates of the cell centres: [X, Y, Z, 3] (cropped by volume_idx)."""
    step = ell / grid_size
    axis = (torch.arange(grid_size, dtype=torch.float32) + 0.5) * step - 0.5 * ell
    if volume_idx is None:
        volume_idx = [[0, grid_size]] * 3
    xs, ys, zs = (axis[a:b] for a, b in volume_idx)
    return torch.stack(torch.meshgrid(xs, ys, zs, indexing="ij"), dim=-1)


def project(points: Tensor, viewmats: Tensor, Ks: Tensor) -> tuple[Tensor, Tensor]:
    """World points [P, 3] -> pixel coordinates [V, P, 2] and camera depths [V, P]."""
    cam = torch.einsum("vij,pj->vpi", viewmats[:, :3, :3], points) + viewmats[:, None, :3, 3]
    z = cam[..., 2]
    uv = torch.einsum("vij,vpj->vpi", Ks[:, :2, :3], cam / z.clamp_min(1e-6)[..., None])
    return uv, z


def touches_border(masks: Tensor) -> Tensor:
    """[V] 1.0 where a view's mask [V, H, W] has foreground on its image border (the animal may leave the image)."""
    border = torch.cat([masks[:, 0], masks[:, -1], masks[:, :, 0], masks[:, :, -1]], dim=1)  # [V, 2W + 2H]
    return (border > 0.5).any(dim=1).float()


def carve(
    images: Tensor,  # [V, H, W, 3] in [0, 1]
    masks: Tensor,  # [V, H, W] in {0, 1}
    viewmats: Tensor,  # [V, 4, 4] world-to-camera
    Ks: Tensor,  # [V, 3, 3]
    centre: Tensor,  # [3]
    heading: Tensor,  # []
    grid_size: int,
    ell: float,
    volume_idx: Sequence[Sequence[int]] | None = None,
) -> Tensor:
    """Carve the observed views into a [5, X, Y, Z] volume: visual hull, mean mask, mask-weighted mean colour.

    A view whose mask stays clear of its image border sees the whole animal, so it has a say about every cell (one
    outside its image, or behind it, is background). A view whose mask touches the border may have lost part of the
    animal beyond it: it has a say only about the cells it images, so an animal leaving one camera's image is not cut
    there. A view whose mask is empty (the animal lost) has no say. A cell is in the hull when at least min(2, V)
    views have a say and all of them show foreground; the mean mask is over those views.
    """
    V, H, W = masks.shape
    local = voxel_centres(grid_size, ell, volume_idx).to(images.device)  # [X, Y, Z, 3]
    shape = local.shape[:3]
    world = local.reshape(-1, 3) @ yaw_rotmat(heading).T + centre  # [P, 3]
    uv, z = project(world, viewmats, Ks)  # [V, P, 2], [V, P]
    in_image = ((z > 0) & (uv[..., 0] >= 0) & (uv[..., 0] <= W) & (uv[..., 1] >= 0) & (uv[..., 1] <= H)).float()
    sees = torch.maximum(in_image, 1 - touches_border(masks)[:, None])  # [V, P]
    sees = sees * (masks.flatten(1).amax(1) > 0.5)[:, None]  # a view that lost the animal has no say (as in prep)
    # grid_sample's normalised coordinates with align_corners=False: -1 is the left edge of pixel 0.
    grid = torch.stack([uv[..., 0] / W * 2 - 1, uv[..., 1] / H * 2 - 1], dim=-1)[:, None]  # [V, 1, P, 2]
    stacked = torch.cat([masks[..., None], images], dim=-1).permute(0, 3, 1, 2)  # [V, 4, H, W]
    samples = F.grid_sample(stacked, grid, mode="bilinear", padding_mode="border", align_corners=False)
    samples = samples[:, :, 0] * in_image[:, None]  # [V, 4, P]
    m, rgb = samples[:, 0], samples[:, 1:]  # [V, P], [V, 3, P]
    n_seen = sees.sum(0)  # [P]
    hull = (m.clamp(0, 1) + (1 - sees)).prod(dim=0) * (n_seen >= min(2, V))  # [P]
    frac = m.sum(0) / n_seen.clamp_min(1)
    colour = (rgb * m[:, None]).sum(0) / m.sum(0).clamp_min(1e-6)  # [3, P]
    vol = torch.cat([hull[None], frac[None], colour], dim=0)  # [5, P]
    return vol.reshape(CARVE_CHANNELS, *shape)


def find_volume_idx(hulls: Tensor, margin: int = 2, multiple: int = 4) -> list[list[int]]:
    """Crop ranges [[x0,x1],[y0,y1],[z0,z1]] covering every occupied cell of summed hulls [X, Y, Z] (+ margin).

    Each range is widened to a multiple of `multiple` cells so the U-Nets can halve it twice.
    """
    occupied = hulls > 0.5
    if not occupied.any():
        raise ValueError("shape carving found no occupied voxel: check the masks, cameras, centre and ell")
    out = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        idx = torch.nonzero(occupied.any(dim=other)).flatten()
        n = hulls.shape[axis]
        out.append(widened(max(int(idx.min()) - margin, 0), min(int(idx.max()) + 1 + margin, n), n, multiple))
    return out


def widened(lo: int, hi: int, n: int, multiple: int = 4) -> list[int]:
    """The cell range [lo, hi) of an axis of n cells grown to a multiple of `multiple` cells (upwards while it can,
    then downwards), or to the whole axis: the U-Nets halve a crop twice."""
    while (hi - lo) % multiple and hi - lo < n:
        if hi < n:
            hi += 1
        else:
            lo -= 1
    return [lo, hi]
