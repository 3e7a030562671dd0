"""gsplat backend (CUDA): a mode's own gsplat rasteriser where its registry entry names one (`rasterization` for 3d,
`rasterization_2dgs` for 2d). Otherwise the mode's projection (ours, as in the torch backend), then gsplat's tile
intersection and `rasterize_to_pixels` with our conics (2d_screen)."""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from posesplat.modes import MODES
from posesplat.render.interface import RenderError, projection

TILE = 16  # gsplat's default tile size


def _rasterize_projected(g, mode: str, viewmats: Tensor, Ks: Tensor, width: int, height: int,
                         bg: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    """Our projection of the mode (conics), gsplat's CUDA tile intersection and rasteriser: colour and centre
    depth [C, H, W, 4] (depth accumulated, not normalised; background depth 0), alpha [C, H, W, 1]."""
    from gsplat import isect_offset_encode, isect_tiles, rasterize_to_pixels  # deferred: gsplat, CUDA only

    p = projection(mode)
    if p.kind != "conic":
        raise RenderError(f"render: mode {mode!r} has a {p.kind} projection and no gsplat rasteriser named in "
                          "posesplat/modes.py; use backend 'torch'")
    C, N = viewmats.shape[0], g.means.shape[0]
    radii, means2d, depths, conics = p.fn(g, viewmats, Ks, width, height)
    tw, th = math.ceil(width / TILE), math.ceil(height / TILE)
    _, isect_ids, flatten_ids = isect_tiles(means2d, radii, depths, TILE, tw, th)
    offsets = isect_offset_encode(isect_ids, C, tw, th).reshape(C, th, tw)
    colors = torch.cat([g.colors.expand(C, N, 3), depths[..., None]], dim=-1).contiguous()  # [C, N, 4]
    bg = None if bg is None else torch.cat([bg, torch.zeros_like(bg[:, :1])], dim=-1)
    return rasterize_to_pixels(
        means2d, conics, colors, g.opacities.expand(C, N).contiguous(),
        width, height, TILE, offsets, flatten_ids, backgrounds=bg,
    )


def render_gsplat(
    g, mode: str, viewmats: Tensor, Ks: Tensor, width: int, height: int, background: Optional[Tensor] = None,
    distortion: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Optional[Tensor], Optional[Tensor]]:
    """rgb [C, H, W, 3], alpha [C, H, W] and expected depth [C, H, W] from gsplat's CUDA rasterisers (render_mode
    "RGB+ED"). From `rasterization_2dgs`, also the surfels' composited world normals [C, H, W, 3] (else None). If
    asked, also its depth distortion `render_distort` [C, H, W] (else None).

    gsplat composites each Gaussian's centre depth, also in rasterization_2dgs (its distortion too). There it
    differs from the torch backend's ray-surfel intersection depth except where surfels face the camera
    (docs/rendering.md).

    Args:
        g: N world-space Gaussians (render.Gaussians) with the mode's fields.
        mode: a key of posesplat.modes.MODES.
        viewmats: [C, 4, 4] world-to-camera matrices (OpenCV axes).
        Ks: [C, 3, 3] pinhole intrinsics, in pixels.
        width: W, the image width in pixels.
        height: H, the image height in pixels.
        background: [3] colour behind the Gaussians, or None (black).
        distortion: also render the depth distortion (modes rendered by `rasterization_2dgs` only).
    Returns:
        rgb: [C, H, W, 3] composited colours, background included.
        alpha: [C, H, W] accumulated opacity.
        depth: [C, H, W] expected depth of the Gaussians' centres.
        normals: [C, H, W, 3] the surfels' composited world normals, or None.
        distortion: [C, H, W] depth distortion, or None.
    Raises:
        RenderError: distortion without `rasterization_2dgs`, or a surfel mode without a gsplat rasteriser.
    """
    import gsplat  # deferred: gsplat, CUDA only

    C = viewmats.shape[0]
    bg = None if background is None else background.expand(C, 3)
    name = MODES[mode].gsplat
    if distortion and name != "rasterization_2dgs":
        raise RenderError(f"render: the gsplat backend renders the depth distortion with rasterization_2dgs only, "
                          f"not for mode {mode!r}; use backend 'torch'")
    snormals = dist = None
    if name is None:
        colors, alpha = _rasterize_projected(g, mode, viewmats, Ks, width, height, bg)
        colors = torch.cat([colors[..., :3], colors[..., 3:] / alpha.clamp_min(1e-10)], dim=-1)
    else:
        quats, scales = native_inputs(g, mode, name)
        extra = {"distloss": True} if distortion else {}
        out = getattr(gsplat, name)(
            g.means, quats, scales, g.opacities, g.colors, viewmats, Ks, width, height, backgrounds=bg,
            render_mode="RGB+ED", **extra,
        )
        colors, alpha = out[:2]
        if name == "rasterization_2dgs":  # colours, alphas, normals, normals from depth, distortion, median, meta
            snormals = out[2]
            dist = out[4][..., 0] if distortion else None
    return colors[..., :3], alpha[..., 0], colors[..., 3], snormals, dist


def native_inputs(g, mode: str, name: str) -> tuple[Tensor, Tensor]:
    """quats [N, 4] and scales [N, 3] as gsplat's own rasterisers take them. A mode without rotations gets identity
    ones, and one scale is repeated on three axes. A surfel's two scales get a third that `rasterization_2dgs`
    ignores (its CUDA projection uses 1). Two scales for any other rasteriser would be read as a third of 1 world
    unit.

    Args:
        g: N Gaussians (render.Gaussians): scales [N, 1], [N, 2] or [N, 3]; quats [N, 4] or None.
        mode: the mode's name, for the error message.
        name: the gsplat rasteriser the mode names (`Mode.gsplat`), e.g. "rasterization".
    Returns:
        quats: [N, 4] rotations, wxyz.
        scales: [N, 3] scales.
    Raises:
        RenderError: a number of scales that gsplat.{name} cannot take.
    """
    n, k = g.means.shape[0], g.scales.shape[1]
    quats = g.quats if g.quats is not None else g.means.new_tensor([1.0, 0.0, 0.0, 0.0]).expand(n, 4).contiguous()
    if k == 3:
        return quats, g.scales
    if k == 1:
        return quats, g.scales.expand(n, 3).contiguous()
    if k == 2 and name == "rasterization_2dgs":
        return quats, torch.cat([g.scales, torch.ones_like(g.scales[:, :1])], dim=-1)
    raise RenderError(f"render: mode {mode!r} has {k} scales, which gsplat.{name} cannot take; name "
                      "rasterization_2dgs (two scales) or none in posesplat/modes.py")
