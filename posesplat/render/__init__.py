"""One rendering interface for the Gaussian modes (posesplat.modes), with a gsplat (CUDA) and a pure-PyTorch backend.

    out = render(gaussians, mode, viewmats [C,4,4], Ks [C,3,3], width, height, backend, background [3])
    out.rgb [C, H, W, 3], out.alpha [C, H, W], out.depth [C, H, W] (expected z-depth), out.normals [C, H, W, 3]
    (world, from the depth), out.surfel_normals [C, H, W, 3] (2d only: the surfels' own normals, composited),
    out.distortion [C, H, W] (2DGS's depth distortion, with distortion=True)

backend: "torch" (any device, torch_backend.py), "gsplat" (CUDA, gsplat_backend.py) or "auto" (see pick_backend).
The maths of each mode and the agreement between backends: docs/rendering.md.
"""

from __future__ import annotations

from typing import Optional

from torch import Tensor

from posesplat.render import torch_backend
from posesplat.render.gsplat_backend import render_gsplat
from posesplat.render.interface import (  # noqa: F401 (the package's API: its users import these from here)
    BACKENDS, Gaussians, RenderError, RenderOut, check_inputs, pick_backend, project_any, projection)
from posesplat.render.project import depth_to_normal, surfel_normals


def render(
    g: Gaussians, mode: str, viewmats: Tensor, Ks: Tensor, width: int, height: int,
    backend: str = "torch", background: Optional[Tensor] = None,  # backend: torch | gsplat | auto
    distortion: bool = False,
) -> RenderOut:
    """Render Gaussians into C cameras; differentiable with respect to every Gaussian field. `distortion` also
    renders 2DGS's depth distortion (an extra sort of the pairs: only when a loss needs it).

    Args:
        g: N world-space Gaussians, with the fields of the mode (`Mode.fields`).
        mode: a key of posesplat.modes.MODES ("2d", "3d", "2d_screen").
        viewmats: [C, 4, 4] world-to-camera matrices (OpenCV axes: x right, y down, z forward).
        Ks: [C, 3, 3] pinhole intrinsics, in pixels.
        width: W, the image width in pixels.
        height: H, the image height in pixels.
        backend: "torch", "gsplat" (CUDA) or "auto" (see pick_backend).
        background: [3] colour behind the Gaussians, or None (black).
        distortion: also render the depth distortion (the gsplat backend: mode 2d only).
    Returns:
        out: RenderOut: rgb [C, H, W, 3], alpha, depth [C, H, W], normals [C, H, W, 3], surfel_normals
            [C, H, W, 3] (2d only, else None), distortion [C, H, W] (else None).
    """
    check_inputs(g, mode, viewmats, Ks)
    if pick_backend(backend, g.means.device) == "gsplat":
        rgb, alpha, depth, snormals, dist = render_gsplat(g, mode, viewmats, Ks, width, height, background,
                                                          distortion)
    else:
        kind, radii, means2d, depths, shape = project_any(g, mode, viewmats, Ks, width, height)
        n = surfel_normals(g.quats, g.means, viewmats) if kind == "surfel" else None  # [C, N, 3]
        rgb, alpha, depth, snormals, dist = torch_backend.rasterize(
            kind, radii, means2d, depths, shape, g.colors, g.opacities, width, height, background, n, distortion)
    return RenderOut(rgb, alpha, depth, depth_to_normal(depth, viewmats, Ks), snormals, dist)
