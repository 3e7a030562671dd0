"""Per-voxel head: picks voxels by an adaptive threshold and turns each into one Gaussian of the mode.

What a Gaussian is made of comes from the mode's registry entry (posesplat.modes: `head` layout, `frame`,
`scale_unit`). `3d` has 14 parameters (offset 3, log-scale 3, quaternion 4, colour 3, opacity 1). `2d` has 13 (two
log-scales). `2d_screen` has 9 (pixel offset 2, log-scale 2, angle 1, colour 3, opacity 1). In the world frame means are
voxel centres plus a learned offset of at most one voxel; in the screen frame the centre is an anchor and the offset
(at most px_per_voxel pixels) is added after projection.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from torch import Tensor

from posesplat.modes import MODES
from posesplat.pose import quat_multiply


@dataclass
class LocalGaussians:
    """Gaussians in the animal-local frame, before the pose transform. N selected voxels."""

    means: Tensor  # [N, 3] voxel centre (+ offset in the world frame)
    colors: Tensor  # [N, 3]
    opacities: Tensor  # [N]
    scales: Tensor  # [N, S], S the mode's scales
    quats: Tensor | None  # [N, 4] (modes with a quaternion: 3d, 2d)
    offsets: Tensor | None  # [N, 2] pixels (screen frame: 2d_screen)
    angles: Tensor | None  # [N] (modes with an angle: 2d_screen)
    index: Tensor  # [N] flat index of the selected voxels


def random_quats(n: int, seed: int = 0) -> Tensor:
    """n deterministic, uniformly random unit quaternions [n, 4] (initial surfel orientations)."""
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=-1)


def select_voxels(score: Tensor, min_n: int, max_n: int) -> Tensor:
    """Indices of voxels with score > 0.5, their count clamped to [min_n, max_n] by rank. score: [P] in (0,1)."""
    n = int((score > 0.5).sum())
    n = max(min(n, max_n), min(min_n, score.numel()))
    return torch.topk(score, n, sorted=False).indices


class GaussianHead(nn.Module):
    """1x1x1-convolution MLP from voxel features to Gaussian parameters."""

    def __init__(self, cin: int, hidden: int, mode: str):
        super().__init__()
        self.spec = MODES[mode]  # the mode's registry entry
        self.layout = self.spec.head
        cout = 1 + sum(self.layout.values())
        self.mlp = nn.Sequential(nn.Conv3d(cin, hidden, 1), nn.SiLU(), nn.Conv3d(hidden, cout, 1))
        nn.init.zeros_(self.mlp[-1].weight)  # start from the carved volume's own Gaussians
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(
        self,
        feats: Tensor,  # [Cin, X, Y, Z]
        carved: Tensor,  # [5, X, Y, Z]: hull, fraction, colour
        centres: Tensor,  # [X, Y, Z, 3] animal-local voxel centres
        voxel: float,  # voxel side (world units)
        px_per_voxel: float,  # typical pixels per voxel side (the screen frame's unit)
        min_n: int,
        max_n: int,
        base_quats: Tensor | None = None,  # [P, 4] fixed initial orientations (Mode.random_rotation)
    ) -> LocalGaussians:
        raw = self.mlp(feats[None])[0].flatten(1).T  # [P, cout]
        hull = carved[0].flatten()
        score = torch.sigmoid(raw[:, 0] + 10.0 * (hull - 0.5))
        idx = select_voxels(score.detach(), min_n, max_n)
        r = raw[idx]
        parts = dict(zip(self.layout, torch.split(r[:, 1:], list(self.layout.values()), dim=1)))
        rgb0 = carved[2:].flatten(1).T[idx].clamp(0.02, 0.98)
        colors = torch.sigmoid(torch.logit(rgb0) + parts["colour"])
        opacities = torch.sigmoid(parts["opacity"][:, 0] + 2.0) * score[idx]
        base = centres.reshape(-1, 3)[idx]
        screen = self.spec.frame == "screen"
        unit = px_per_voxel if screen else voxel
        offsets = unit * torch.tanh(parts["offset"])
        scales = self.spec.scale_unit * unit * torch.exp(parts["scale"].clamp(-6, 4))
        quats = angles = None
        if "quat" in parts:
            quats = parts["quat"] + torch.tensor([1.0, 0.0, 0.0, 0.0], device=r.device)
            if base_quats is not None:
                quats = quat_multiply(base_quats[idx], quats)
        if "angle" in parts:
            angles = parts["angle"][:, 0]
        if screen:
            return LocalGaussians(base, colors, opacities, scales, quats, offsets, angles, idx)
        return LocalGaussians(base + offsets, colors, opacities, scales, quats, None, angles, idx)
