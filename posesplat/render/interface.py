"""The renderer's interface: the Gaussians in (`Gaussians`), the images out (`RenderOut`), the backends and modes it
accepts, and its input checks, each a one-line RenderError. Both backends and `posesplat.render.render` import it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from posesplat.modes import MODES
from posesplat.render.project import PROJECTIONS, Projection

BACKENDS = ("torch", "gsplat")


class RenderError(ValueError):
    """Bad renderer input (mode, backend, a Gaussian field or camera tensor); the message is one line naming it."""


@dataclass
class Gaussians:
    """World-space Gaussians; which fields are set depends on the mode (posesplat.modes: `Mode.fields`)."""

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
    depth: Tensor  # [C, H, W] expected camera z: sum(w z) / alpha (0 where alpha is 0)
    normals: Tensor  # [C, H, W, 3] world unit normals of the depth map (finite differences; 0 on the border)
    surfel_normals: Optional[Tensor] = None  # [C, H, W, 3] world, sum(w n) of the surfels' own normals (2d only)
    distortion: Optional[Tensor] = None  # [C, H, W] sum_ij w_i w_j |z_i - z_j| (render(..., distortion=True))


def pick_backend(requested: str, device: torch.device) -> str:
    """'auto' -> gsplat on CUDA, torch elsewhere; gsplat without CUDA is refused with one line."""
    if requested == "auto":
        return "gsplat" if device.type == "cuda" else "torch"
    if requested not in BACKENDS:
        raise RenderError(f"config: key 'backend': unknown backend {requested!r} (choose from auto, torch, gsplat)")
    if requested == "gsplat" and device.type != "cuda":
        raise RenderError("config: key 'backend': 'gsplat' needs a CUDA device; use 'torch' or 'auto' on CPU")
    return requested


def projection(mode: str) -> Projection:
    """The mode's projection (render/project.py PROJECTIONS); an unknown mode, or one without, is one line."""
    if mode not in MODES:
        raise RenderError(f"render: unknown Gaussian mode {mode!r} (choose from {', '.join(MODES)})")
    if mode not in PROJECTIONS:
        raise RenderError(f"render: mode {mode!r} has no projection (add it to posesplat/render/project.py PROJECTIONS)")
    return PROJECTIONS[mode]


def check_inputs(g: Gaussians, mode: str, viewmats: Tensor, Ks: Tensor) -> None:
    """Raise RenderError naming the first missing or mis-shaped input (cheap: shapes only)."""
    projection(mode)
    n = g.means.shape[0] if g.means is not None and g.means.dim() == 2 else None
    for name, tail in MODES[mode].fields.items():
        t = getattr(g, name)
        if t is None:
            raise RenderError(f"render: Gaussians.{name} is required in mode {mode!r}")
        if n is None or tuple(t.shape) != (n, *tail):
            want = f"[{n if n is not None else 'N'}{''.join(f', {k}' for k in tail)}]"
            raise RenderError(f"render: Gaussians.{name} has shape {list(t.shape)}, expected {want} in mode {mode!r}")
    C = viewmats.shape[0] if viewmats.dim() == 3 else -1
    if tuple(viewmats.shape) != (C, 4, 4):
        raise RenderError(f"render: viewmats has shape {list(viewmats.shape)}, expected [C, 4, 4]")
    if tuple(Ks.shape) != (C, 3, 3):
        raise RenderError(f"render: Ks has shape {list(Ks.shape)}, expected [{C}, 3, 3] (one per viewmat)")


def project_any(g: Gaussians, mode: str, viewmats: Tensor, Ks: Tensor, width: int, height: int):
    """(kind, radii, means2d, depths, conics-or-ray-transforms) for the torch rasteriser."""
    p = projection(mode)
    return (p.kind, *p.fn(g, viewmats, Ks, width, height))
