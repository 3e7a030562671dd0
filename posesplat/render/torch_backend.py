"""Pure-PyTorch rasteriser: only the (Gaussian, pixel) pairs inside each Gaussian's 3.33-sigma box are evaluated.

Algorithm (differentiable end to end, no Python loop over Gaussians or pixels):
1. Order Gaussians by (camera, depth); enumerate the pixels of each one's box (repeat_interleave + arange).
2. Evaluate alpha per pair without gradients and drop pairs with alpha < 1/255 (gsplat skips them too).
3. Stable-sort the surviving pairs by pixel: pairs of one pixel end up contiguous and front to back.
4. Transmittance by a segmented exclusive cumulative sum of log(1 - alpha) (float64), weights = alpha * T,
   cut where T would fall below 1e-4 as gsplat does; colours and alpha are scattered with index_add.
"""

from __future__ import annotations

import torch
from torch import Tensor

ALPHA_MIN = 1.0 / 255.0
T_MIN = 1e-4


def _pairs(
    radii: Tensor, means2d: Tensor, depths: Tensor, width: int, height: int, min_radius: int = 0
) -> tuple[Tensor, Tensor, Tensor]:
    """Enumerate box pixels: (camera, gaussian) ids [P] and flat pixel ids [P], depth-ordered per camera."""
    C, N = depths.shape
    order = torch.argsort(depths.detach(), dim=1)  # [C, N] front to back
    cam = torch.arange(C, device=depths.device)[:, None].expand(C, N).reshape(-1)
    gid = order.reshape(-1)
    r = radii[cam, gid].long()  # [C*N, 2]
    r = torch.where(r > 0, r.clamp_min(min_radius), r)
    m = means2d.detach()[cam, gid]
    x0 = (m[:, 0] - r[:, 0]).floor().clamp(0, width).long()
    x1 = (m[:, 0] + r[:, 0]).ceil().clamp(0, width).long()
    y0 = (m[:, 1] - r[:, 1]).floor().clamp(0, height).long()
    y1 = (m[:, 1] + r[:, 1]).ceil().clamp(0, height).long()
    keep = (r[:, 0] > 0) & (r[:, 1] > 0) & (x1 > x0) & (y1 > y0)
    cam, gid, x0, x1, y0, y1 = cam[keep], gid[keep], x0[keep], x1[keep], y0[keep], y1[keep]
    wx = x1 - x0
    counts = wx * (y1 - y0)
    owner = torch.repeat_interleave(torch.arange(len(counts), device=depths.device), counts)
    starts = torch.cumsum(counts, 0) - counts
    local = torch.arange(owner.numel(), device=depths.device) - starts[owner]
    px = x0[owner] + local % wx[owner]
    py = y0[owner] + local // wx[owner]
    pix = (cam[owner] * height + py) * width + px
    return cam[owner], gid[owner], pix


def _alpha_conic(opac: Tensor, means2d: Tensor, conics: Tensor, px: Tensor, py: Tensor) -> Tensor:
    """3DGS / screen-space alpha of pairs (gsplat: sigma < 0 skipped, clamp at 0.99)."""
    dx = px + 0.5 - means2d[:, 0]
    dy = py + 0.5 - means2d[:, 1]
    sigma = 0.5 * (conics[:, 0] * dx * dx + conics[:, 2] * dy * dy) + conics[:, 1] * dx * dy
    alpha = torch.clamp_max(opac * torch.exp(-sigma), 0.99)
    return torch.where(sigma >= 0, alpha, torch.zeros_like(alpha))


def _alpha_surfel(opac: Tensor, means2d: Tensor, M: Tensor, px: Tensor, py: Tensor) -> Tensor:
    """2DGS alpha of pairs: ray-splat intersection with the screen-space low-pass floor (gsplat's 2dgs)."""
    x, y = px + 0.5, py + 0.5
    h_u = -M[:, 0, :] + M[:, 2, :] * x[:, None]
    h_v = -M[:, 1, :] + M[:, 2, :] * y[:, None]
    tmp = torch.cross(h_u, h_v, dim=-1)
    us, vs = tmp[:, 0] / tmp[:, 2], tmp[:, 1] / tmp[:, 2]
    dx, dy = x - means2d[:, 0], y - means2d[:, 1]
    sigma = 0.5 * torch.minimum(us**2 + vs**2, 2 * (dx**2 + dy**2))
    return torch.clamp_max(opac * torch.exp(-sigma), 0.999)


def rasterize(
    kind: str,  # "conic" (3d, 2d_screen) or "surfel" (2d)
    radii: Tensor,  # [C, N, 2] int
    means2d: Tensor,  # [C, N, 2]
    depths: Tensor,  # [C, N]
    shape: Tensor,  # conics [C, N, 3] or ray transforms [C, N, 3, 3]
    colors: Tensor,  # [N, 3]
    opacities: Tensor,  # [N]
    width: int,
    height: int,
    background: Tensor | None = None,  # [3]
) -> tuple[Tensor, Tensor]:
    """Composite front to back: rgb [C, H, W, 3], alpha [C, H, W]."""
    C = depths.shape[0]
    # a surfel's screen-space low-pass floor reaches ~2.4 px beyond its centre whatever its 3D extent; gsplat's
    # tiles evaluate those pixels too, so surfel boxes are at least 3 px
    cam, gid, pix = _pairs(radii, means2d, depths, width, height, 3 if kind == "surfel" else 0)
    px, py = (pix % width).to(means2d.dtype), ((pix // width) % height).to(means2d.dtype)
    alpha_fn = _alpha_conic if kind == "conic" else _alpha_surfel

    def alpha_of(c, g, x, y):
        return alpha_fn(opacities[g], means2d[c, g], shape[c, g], x, y)

    with torch.no_grad():  # cheap pre-pass: drop pairs gsplat would skip
        keep = alpha_of(cam, gid, px, py) >= ALPHA_MIN
    cam, gid, pix, px, py = cam[keep], gid[keep], pix[keep], px[keep], py[keep]
    pix_sorted, perm = torch.sort(pix, stable=True)  # pairs of a pixel contiguous, still front to back
    cam, gid, px, py = cam[perm], gid[perm], px[perm], py[perm]
    alpha = alpha_of(cam, gid, px, py)
    alpha = torch.where(alpha >= ALPHA_MIN, alpha, torch.zeros_like(alpha))
    log1m = torch.log1p(-alpha).double()
    cs = torch.cumsum(log1m, 0)
    first = torch.ones_like(pix_sorted, dtype=torch.bool)
    first[1:] = pix_sorted[1:] != pix_sorted[:-1]
    seg = torch.cumsum(first.long(), 0) - 1
    start = (cs - log1m)[first][seg]  # cumulative sum just before each pixel's first pair
    log_T = (cs - log1m - start).to(alpha.dtype)  # exclusive: transmittance before this pair
    T = torch.exp(log_T)
    alive = (T * (1 - alpha)).detach() > T_MIN  # gsplat stops before the pair that would drop T below 1e-4
    w = torch.where(alive, alpha * T, torch.zeros_like(alpha))
    n_pix = C * height * width
    rgb = torch.zeros(n_pix, 3, device=means2d.device, dtype=colors.dtype).index_add(0, pix_sorted, w[:, None] * colors[gid])
    acc = torch.zeros(n_pix, device=means2d.device, dtype=colors.dtype).index_add(0, pix_sorted, w)
    if background is not None:
        rgb = rgb + (1 - acc)[:, None] * background
    return rgb.reshape(C, height, width, 3), acc.reshape(C, height, width)
