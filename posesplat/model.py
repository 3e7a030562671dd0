"""PoseSplatter: carve -> 3D U-Nets -> per-voxel head -> pose transform -> world-space Gaussians."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
from torch import Tensor

from posesplat.carve import CARVE_CHANNELS, carve, voxel_centres
from posesplat.config import Config
from posesplat.head import GaussianHead, LocalGaussians, random_quats
from posesplat.modes import MODES
from posesplat.pose import local_to_world
from posesplat.render import Gaussians
from posesplat.unet import UNetStack


class PoseSplatter(nn.Module):
    """The Pose Splatter model for one Gaussian mode.

    `volume_idx` (the grid crop) and `px_per_voxel` (screen-space scale unit) are derived from the data once and
    kept as plain attributes, so checkpoints hold only learnable state plus these few numbers.
    """

    def __init__(self, cfg: Config, ell: float, volume_idx: Sequence[Sequence[int]], px_per_voxel: float):
        super().__init__()
        self.mode = cfg.gaussian_mode
        self.grid_size, self.ell = cfg.grid_size, float(ell)
        self.volume_idx = [list(map(int, r)) for r in volume_idx]
        self.voxel = self.ell / self.grid_size
        self.px_per_voxel = float(px_per_voxel)
        self.min_n, self.max_n = cfg.min_n, cfg.max_n
        width = cfg.base_filters
        self.unets = UNetStack(CARVE_CHANNELS, width, cfg.num_unets)
        self.head = GaussianHead(width + CARVE_CHANNELS, 2 * width, self.mode)
        centres = voxel_centres(self.grid_size, self.ell, self.volume_idx)
        self.register_buffer("centres", centres, persistent=False)
        n_vox = centres.shape[0] * centres.shape[1] * centres.shape[2]
        base = random_quats(n_vox, seed=0) if MODES[self.mode].random_rotation else None
        self.register_buffer("base_quats", base, persistent=False)

    def local_gaussians(
        self, images: Tensor, masks: Tensor, viewmats: Tensor, Ks: Tensor, centre: Tensor, heading: Tensor
    ) -> tuple[LocalGaussians, Tensor]:
        """Observed views of one frame -> Gaussians in the animal frame, and the carved volume [5, X, Y, Z]."""
        vol = carve(images, masks, viewmats, Ks, centre, heading, self.grid_size, self.ell, self.volume_idx)
        feats = self.unets(vol[None])[0]
        g = self.head(
            torch.cat([feats, vol], dim=0), vol, self.centres, self.voxel, self.px_per_voxel,
            self.min_n, self.max_n, self.base_quats,
        )
        return g, vol

    def forward(
        self,
        images: Tensor,  # [V, H, W, 3] observed views
        masks: Tensor,  # [V, H, W]
        viewmats: Tensor,  # [V, 4, 4]
        Ks: Tensor,  # [V, 3, 3]
        centre: Tensor,  # [3]
        heading: Tensor,  # []
    ) -> Gaussians:
        """Observed views of one frame -> world-space Gaussians ready to render into any camera."""
        g, _ = self.local_gaussians(images, masks, viewmats, Ks, centre, heading)
        return to_world(g, centre, heading)


def to_world(g: LocalGaussians, centre: Tensor, heading: Tensor) -> Gaussians:
    """Apply the pose transform to local Gaussians (quaternions composed directly)."""
    means, quats = local_to_world(g.means, g.quats, centre, heading)
    return Gaussians(
        means=means, colors=g.colors, opacities=g.opacities, quats=quats, scales=g.scales,
        offsets=g.offsets, angles=g.angles,
    )


def pixels_per_unit(Ks: Tensor, viewmats: Tensor, target: Tensor) -> float:
    """Typical pixels per world unit at the animal: mean focal length over mean camera distance to `target` [3]."""
    R, t = viewmats[:, :3, :3], viewmats[:, :3, 3]
    cam_centres = -torch.einsum("vji,vj->vi", R, t)  # C = -R^T t
    dist = (cam_centres - target).norm(dim=-1).mean()
    focal = 0.5 * (Ks[:, 0, 0] + Ks[:, 1, 1]).mean()
    return float(focal / dist)
