"""gsplat backend (CUDA): `rasterization` for 3d, `rasterization_2dgs` for 2d.

2d_screen has no gsplat counterpart and is rendered by the torch backend on any device.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def render_gsplat(
    g, mode: str, viewmats: Tensor, Ks: Tensor, width: int, height: int, background: Optional[Tensor] = None
) -> tuple[Tensor, Tensor]:
    """rgb [C, H, W, 3], alpha [C, H, W] from gsplat's CUDA rasterisers."""
    import gsplat

    C = viewmats.shape[0]
    bg = None if background is None else background.expand(C, 3)
    if mode == "3d":
        rgb, alpha, _ = gsplat.rasterization(
            g.means, g.quats, g.scales, g.opacities, g.colors, viewmats, Ks, width, height, backgrounds=bg,
        )
    elif mode == "2d":
        scales3 = torch.cat([g.scales, torch.ones_like(g.scales[:, :1])], dim=-1)
        rgb, alpha, *_ = gsplat.rasterization_2dgs(
            g.means, g.quats, scales3, g.opacities, g.colors, viewmats, Ks, width, height, backgrounds=bg,
        )
    else:
        raise ValueError(f"gsplat backend has no mode {mode!r}")
    return rgb, alpha[..., 0]
