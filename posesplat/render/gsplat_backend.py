"""gsplat backend (CUDA): `rasterization` for 3d, `rasterization_2dgs` for 2d, and for 2d_screen our torch
projection of the anchors followed by gsplat's tile intersection and `rasterize_to_pixels` with our conics."""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

TILE = 16  # gsplat's default tile size


def _render_screen(g, viewmats: Tensor, Ks: Tensor, width: int, height: int, bg: Optional[Tensor]):
    """2d_screen: projected anchors + pixel offsets, camera-independent conics, gsplat's CUDA rasteriser."""
    from gsplat import isect_offset_encode, isect_tiles, rasterize_to_pixels

    from posesplat.render.project import project_screen

    C, N = viewmats.shape[0], g.means.shape[0]
    radii, means2d, depths, conics = project_screen(g.means, g.offsets, g.scales, g.angles, viewmats, Ks,
                                                    width, height)
    tw, th = math.ceil(width / TILE), math.ceil(height / TILE)
    _, isect_ids, flatten_ids = isect_tiles(means2d, radii, depths, TILE, tw, th)
    offsets = isect_offset_encode(isect_ids, C, tw, th).reshape(C, th, tw)
    return rasterize_to_pixels(
        means2d, conics, g.colors.expand(C, N, 3).contiguous(), g.opacities.expand(C, N).contiguous(),
        width, height, TILE, offsets, flatten_ids, backgrounds=bg,
    )


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
    elif mode == "2d":  # gsplat takes [N, 3] scales and ignores the third (its CUDA projection uses 1)
        scales3 = torch.cat([g.scales, torch.ones_like(g.scales[:, :1])], dim=-1)
        rgb, alpha, *_ = gsplat.rasterization_2dgs(
            g.means, g.quats, scales3, g.opacities, g.colors, viewmats, Ks, width, height, backgrounds=bg,
        )
    else:
        rgb, alpha = _render_screen(g, viewmats, Ks, width, height, bg)
    return rgb, alpha[..., 0]
