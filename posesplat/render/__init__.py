"""One rendering interface for the three Gaussian modes, with a gsplat (CUDA) and a pure-PyTorch backend.

    out = render(gaussians, mode, viewmats [C,4,4], Ks [C,3,3], width, height, backend, background [3])
    out.rgb [C, H, W, 3], out.alpha [C, H, W]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from posesplat.render import project, torch_backend

MODES = ("3d", "2d", "2d_screen")
BACKENDS = ("torch", "gsplat")


@dataclass
class Gaussians:
    """World-space Gaussians; which fields are set depends on the mode (docs/architecture.md)."""

    means: Tensor  # [N, 3] (2d_screen: world anchors)
    colors: Tensor  # [N, 3] in [0, 1]
    opacities: Tensor  # [N] in (0, 1)
    quats: Optional[Tensor] = None  # [N, 4] wxyz (3d, 2d)
    scales: Optional[Tensor] = None  # [N, 3] 3d | [N, 2] 2d (world) | [N, 2] 2d_screen (pixels)
    offsets: Optional[Tensor] = None  # [N, 2] pixels (2d_screen)
    angles: Optional[Tensor] = None  # [N] radians (2d_screen)


@dataclass
class RenderOut:
    rgb: Tensor  # [C, H, W, 3]
    alpha: Tensor  # [C, H, W]


def pick_backend(requested: str, device: torch.device) -> str:
    """'auto' -> gsplat on CUDA, torch elsewhere; gsplat without CUDA is refused with one line."""
    if requested == "auto":
        return "gsplat" if device.type == "cuda" else "torch"
    if requested == "gsplat" and device.type != "cuda":
        raise ValueError("config: key 'backend': 'gsplat' needs a CUDA device; use 'torch' or 'auto' on CPU")
    if requested not in BACKENDS:
        raise ValueError(f"config: key 'backend': unknown backend {requested!r} (choose from auto, torch, gsplat)")
    return requested


def project_any(g: Gaussians, mode: str, viewmats: Tensor, Ks: Tensor, width: int, height: int):
    """(kind, radii, means2d, depths, conics-or-ray-transforms) for the torch rasteriser."""
    if mode == "3d":
        return ("conic", *project.project_3d(g.means, g.quats, g.scales, viewmats, Ks, width, height))
    if mode == "2d":
        return ("surfel", *project.project_2dgs(g.means, g.quats, g.scales, viewmats, Ks, width, height))
    if mode == "2d_screen":
        return ("conic", *project.project_screen(g.means, g.offsets, g.scales, g.angles, viewmats, Ks, width, height))
    raise ValueError(f"unknown Gaussian mode {mode!r} (choose from {', '.join(MODES)})")


def render(
    g: Gaussians, mode: str, viewmats: Tensor, Ks: Tensor, width: int, height: int,
    backend: str = "torch", background: Optional[Tensor] = None,
) -> RenderOut:
    """Render Gaussians into C cameras; differentiable with respect to every Gaussian field."""
    if backend == "gsplat" and mode != "2d_screen":
        from posesplat.render.gsplat_backend import render_gsplat

        rgb, alpha = render_gsplat(g, mode, viewmats, Ks, width, height, background)
        return RenderOut(rgb, alpha)
    kind, radii, means2d, depths, shape = project_any(g, mode, viewmats, Ks, width, height)
    rgb, alpha = torch_backend.rasterize(kind, radii, means2d, depths, shape, g.colors, g.opacities, width, height,
                                         background)
    return RenderOut(rgb, alpha)
