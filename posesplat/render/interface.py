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
    """'auto' -> gsplat on CUDA, torch elsewhere; gsplat without CUDA is refused with one line.

    Args:
        requested: "auto", "torch" or "gsplat" (the config's `backend`).
        device: the device of the Gaussians.
    Returns:
        backend: "torch" or "gsplat".
    Raises:
        RenderError: an unknown backend, or gsplat without CUDA.
    """
    if requested == "auto":
        return "gsplat" if device.type == "cuda" else "torch"
    if requested not in BACKENDS:
        raise RenderError(f"config: key 'backend': unknown backend {requested!r} (choose from auto, torch, gsplat)")
    if requested == "gsplat" and device.type != "cuda":
        raise RenderError("config: key 'backend': 'gsplat' needs a CUDA device; use 'torch' or 'auto' on CPU")
    return requested


def projection(mode: str) -> Projection:
    """The mode's projection (render/project.py PROJECTIONS); an unknown mode, or one without, is one line.

    Args:
        mode: a Gaussian mode's name (a key of posesplat.modes.MODES).
    Returns:
        projection: the mode's Projection (its rasteriser kind and projection function).
    Raises:
        RenderError: an unknown mode, or a mode without a projection.
    """
    if mode not in MODES:
        raise RenderError(f"render: unknown Gaussian mode {mode!r} (choose from {', '.join(MODES)})")
    if mode not in PROJECTIONS:
        raise RenderError(f"render: mode {mode!r} has no projection (add it to posesplat/render/project.py PROJECTIONS)")
    return PROJECTIONS[mode]


def check_inputs(g: Gaussians, mode: str, viewmats: Tensor, Ks: Tensor) -> None:
    """Raise RenderError naming the first missing or mis-shaped input (cheap: shapes only).

    Args:
        g: N Gaussians; each field of the mode must be set, with shape [N, *tail] (`Mode.fields`).
        mode: a key of posesplat.modes.MODES.
        viewmats: [C, 4, 4] world-to-camera matrices.
        Ks: [C, 3, 3] intrinsics, one per viewmat.
    Raises:
        RenderError: an unknown mode, or the first missing or mis-shaped input, by name.
    """
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
    """(kind, radii, means2d, depths, conics-or-ray-transforms) for the torch rasteriser.

    Args:
        g: N Gaussians with the mode's fields (checked by check_inputs).
        mode: a key of posesplat.render.project.PROJECTIONS.
        viewmats: [C, 4, 4] world-to-camera matrices.
        Ks: [C, 3, 3] intrinsics, in pixels.
        width: W, the image width in pixels.
        height: H, the image height in pixels.
    Returns:
        kind: "conic" or "surfel" (which alpha the rasteriser evaluates).
        radii: [C, N, 2] int pixel radii; 0 where a Gaussian is culled.
        means2d: [C, N, 2] projected centres, in pixels.
        depths: [C, N] camera z of the centres.
        shape: [C, N, 3] conics ("conic") or [C, N, 3, 3] ray transforms ("surfel").
    """
    p = projection(mode)
    return (p.kind, *p.fn(g, viewmats, Ks, width, height))
