"""Per-voxel head: picks voxels by an adaptive threshold and turns each into one Gaussian (per mode).

Parameters per Gaussian: `3d` 14 (mean 3, log-scale 3, quaternion 4, colour 3, opacity 1), `2d` 13 (mean 3,
log-scale 2, quaternion 4, colour 3, opacity 1), `2d_screen` 9 (pixel offset 2, log-scale 2, angle 1, colour 3,
opacity 1). Means are voxel centres plus a learned offset of at most one voxel.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from torch import Tensor

from posesplat.modes import MODES
from posesplat.pose import quat_multiply

# head output channels per mode, in order: score, then the mode's layout (posesplat.modes)
_LAYOUT = {m.name: m.head for m in MODES.values()}


@dataclass
class LocalGaussians:
    """Gaussians in the animal-local frame, before the pose transform. N selected voxels."""

    means: Tensor  # [N, 3] voxel centre (+ offset in 3d/2d)
    colors: Tensor  # [N, 3]
    opacities: Tensor  # [N]
    scales: Tensor  # [N, 3] or [N, 2]
    quats: Tensor | None  # [N, 4] (3d, 2d)
    offsets: Tensor | None  # [N, 2] pixels (2d_screen)
    angles: Tensor | None  # [N] (2d_screen)
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
        self.mode = mode
        self.layout = _LAYOUT[mode]
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
        px_per_voxel: float,  # typical pixels per voxel side (2d_screen scale unit)
        min_n: int,
        max_n: int,
        base_quats: Tensor | None = None,  # [P, 4] fixed initial orientations (2d surfels)
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
        if self.mode == "2d_screen":
            return LocalGaussians(
                means=base, colors=colors, opacities=opacities,
                scales=0.7 * px_per_voxel * torch.exp(parts["scale"].clamp(-6, 4)),
                quats=None, offsets=px_per_voxel * torch.tanh(parts["offset"]), angles=parts["rot"][:, 0],
                index=idx,
            )
        means = base + voxel * torch.tanh(parts["offset"])
        scale_unit = 0.5 if self.mode == "3d" else 0.7
        scales = scale_unit * voxel * torch.exp(parts["scale"].clamp(-6, 4))
        identity = torch.tensor([1.0, 0.0, 0.0, 0.0], device=r.device)
        quats = parts["rot"] + identity
        if base_quats is not None:
            quats = quat_multiply(base_quats[idx], quats)
        return LocalGaussians(means, colors, opacities, scales, quats, None, None, idx)
