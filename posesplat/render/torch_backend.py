"""Pure-PyTorch rasteriser: only the (Gaussian, pixel) pairs that gsplat would composite are evaluated with autograd.

Algorithm (differentiable end to end, no Python loop over Gaussians or pixels):
1. Order Gaussians by (camera, depth); enumerate the pixels of each one's box (repeat_interleave + arange), in
   chunks of Gaussians so that no more than CHUNK_PAIRS candidate pairs exist at once.
2. Without gradients: alpha per pair; drop pairs under 1/255 (gsplat skips them). Stable-sort by pixel id, so each
   pixel's pairs are contiguous and front to back. Transmittance by a segmented exclusive cumulative sum of
   log(1 - alpha). Drop every pair at or after the one that would take T to 1e-4 (gsplat stops there). What is left
   is exactly the set of pairs with a non-zero weight, often a small fraction of the boxes in dense scenes.
3. With gradients, on the surviving pairs only: one gather of the packed per-Gaussian parameters, alpha,
   transmittance by the same segmented cumulative sum (float64) and weights alpha * T. Then one index_add of
   (w * colour, w * depth, w, w * normal) into the pixels. Depth is each pair's camera z: the Gaussian's centre
   (conic) or the ray-surfel intersection (surfel, 2DGS's rule: the centre where the low-pass floor wins).
4. On request, 2DGS's depth distortion from the same weights and depths: each pixel's pairs sorted by depth and two
   more segmented cumulative sums (pair_distortion).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

ALPHA_MIN = 1.0 / 255.0  # gsplat's ALPHA_THRESHOLD
ALPHA_MAX = 0.999  # gsplat 1.5's clamp, 3d and 2d alike
T_MIN = 1e-4  # gsplat stops a pixel before the pair that would take T to this or below
CHUNK_PAIRS = 1 << 22  # at most this many candidate pairs enumerated at once (memory bound of step 1)
CHUNK_PIXEL_PAIRS = 32  # chunks of about this many candidate pairs per pixel, so that finished pixels are seen early
CHUNK_MIN_PAIRS = 1 << 16  # but not smaller than this (per-chunk overhead)


def _pack(means2d: Tensor, shape: Tensor, depths: Tensor, opacities: Tensor, colors: Tensor) -> Tensor:
    """Per (camera, Gaussian) parameters in one [C*N, K] tensor: means2d 2 | conic 3 or ray transform 9 | depth 1 |
    opacity 1 | colour 3, so that pairs need one gather (and the backward one index_add)."""
    C, N = means2d.shape[:2]
    return torch.cat(
        [means2d.reshape(C * N, 2), shape.reshape(C * N, -1), depths.reshape(C * N, 1),
         opacities.expand(C, N).reshape(C * N, 1), colors.expand(C, N, 3).reshape(C * N, 3)], dim=1,
    )


def _pair_depth(kind: str, q: tuple[Tensor, ...], px: Tensor, py: Tensor) -> Tensor:
    """Camera z [P] of pairs: the centre's (conic); for surfels the ray-surfel intersection z = u M[2][0] +
    v M[2][1] + M[2][2], or the centre's where the low-pass floor sets alpha (2DGS's CUDA rule)."""
    if kind == "conic":
        return q[-5]
    us, vs, floor = _surfel_uv(q, px + 0.5, py + 0.5)
    return torch.where(floor, q[10], us * q[8] + vs * q[9] + q[10])


def _surfel_uv(q: tuple[Tensor, ...], x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Surfel-plane coordinates (u, v) [P] where pixel centres (x, y) [P] meet the surfel (the cross product of the
    two pixel planes), and whether the screen-space low-pass floor 2 |x - mu|^2 is below u^2 + v^2 [P] bool."""
    m = q[2:11]  # ray transform M row-major: M[i][j] = m[3 i + j]
    hu = [m[6 + j] * x - m[j] for j in range(3)]
    hv = [m[6 + j] * y - m[3 + j] for j in range(3)]
    t0 = hu[1] * hv[2] - hu[2] * hv[1]
    t1 = hu[2] * hv[0] - hu[0] * hv[2]
    t2 = hu[0] * hv[1] - hu[1] * hv[0]
    us, vs = t0 / t2, t1 / t2
    dx, dy = x - q[0], y - q[1]
    return us, vs, 2 * (dx * dx + dy * dy) < us * us + vs * vs


def _alpha(kind: str, q: tuple[Tensor, ...], px: Tensor, py: Tensor) -> Tensor:
    """Alpha of pairs from the K columns [P] of their packed parameters at pixel columns px / rows py [P];
    0 where gsplat skips the pair."""
    x, y = px + 0.5, py + 0.5
    dx, dy = x - q[0], y - q[1]
    if kind == "conic":  # 3d and 2d_screen: conic (a, b, c)
        sigma = 0.5 * (q[2] * dx * dx + q[4] * dy * dy) + q[3] * dx * dy
    else:  # 2d surfels: ray-splat intersection (u, v) = cross(h_u, h_v), with the screen-space low-pass floor
        us, vs, _ = _surfel_uv(q, x, y)
        sigma = 0.5 * torch.minimum(us * us + vs * vs, 2 * (dx * dx + dy * dy))
    alpha = torch.clamp_max(q[-4] * torch.exp(-sigma), ALPHA_MAX)
    return torch.where((sigma >= 0) & (alpha >= ALPHA_MIN), alpha, torch.zeros_like(alpha))


def _surfel_extent(S: Tensor, mu: Tensor, o: Tensor, width: int, height: int) -> tuple[Tensor, Tensor]:
    """Screen bounds lo, hi [G, 2] of the pixels where a surfel can reach alpha 1/255. They bound its disc
    u^2 + v^2 <= e^2, e^2 = 2 ln(255 o), seen in perspective, united with the low-pass floor's disc
    |x - mu|^2 <= ln(255 o). The disc's box is the exact bounding box of the projected conic (2DGS's dual-conic
    formula, gsplat's 1-sigma box with radius e). The whole image where the disc reaches behind the camera plane.
    S: ray transforms WH [G, 3, 3], mu: means2d [G, 2].

    gsplat instead evaluates the 16 px tiles touched by ceil(3.33 x 1-sigma box), which under perspective can miss
    faint pixels of large oblique surfels; this box misses none (docs/rendering.md)."""
    e2 = 2 * torch.log(255 * o).clamp_min(1e-12)
    test = torch.stack([torch.ones_like(e2), torch.ones_like(e2), -1 / e2], dim=-1)  # [G, 3]
    d = (test * S[:, 2] ** 2).sum(-1, keepdim=True)  # [G, 1]; < 0 iff the whole disc is in front of the camera
    bounded = d < 0
    d = torch.where(bounded, d, -torch.ones_like(d))
    centre = (test[:, None] * S[:, :2] * S[:, 2:3]).sum(-1) / d  # [G, 2]
    ext = (centre**2 - (test[:, None] * S[:, :2] ** 2).sum(-1) / d).clamp_min(0).sqrt()
    size = torch.tensor([width, height], dtype=S.dtype, device=S.device)
    lo = torch.where(bounded, centre - ext, torch.zeros_like(centre))
    hi = torch.where(bounded, centre + ext, size.expand_as(centre))
    floor = torch.log(255 * o).clamp_min(0).sqrt()[:, None]
    return torch.minimum(lo, mu - floor), torch.maximum(hi, mu + floor)


def _boxes(kind: str, radii: Tensor, depths: Tensor, packed: Tensor, width: int, height: int):
    """Visible (camera * N + Gaussian) ids [G] in (camera, depth) order with their pixel boxes [x0, x1) x [y0, y1)
    holding every pixel centre where the Gaussian's alpha can reach 1/255. Visibility is gsplat's (radii > 0).
    Conic boxes use gsplat's opacity-aware extent min(3.33, sqrt(2 ln(255 o))) sigma; surfels _surfel_extent."""
    C, N = depths.shape
    order = torch.argsort(depths.detach(), dim=1)  # [C, N] front to back
    cg = (order + N * torch.arange(C, device=depths.device)[:, None]).reshape(-1)
    cg = cg[(radii.reshape(C * N, 2)[cg] > 0).all(-1)]
    p = packed.detach()[cg]  # means2d 2 | shape | opacity 1 | colour 3
    cg, p = cg[p[:, -4] >= ALPHA_MIN], p[p[:, -4] >= ALPHA_MIN]
    mu, o = p[:, :2], p[:, -4]
    if kind == "conic":  # radii are ceil(3.33 sigma): shrinking them by extend / 3.33 still covers the extent
        extend = torch.sqrt(2 * torch.log(o / ALPHA_MIN)).clamp_max(3.33)
        r = torch.ceil(radii.reshape(C * N, 2)[cg].to(mu.dtype) * (extend / 3.33)[:, None])
        lo, hi = mu - r, mu + r
    else:
        lo, hi = _surfel_extent(p[:, 2:11].reshape(-1, 3, 3), mu, o, width, height)
    x0 = lo[:, 0].floor().clamp(0, width).long()
    x1 = hi[:, 0].ceil().clamp(0, width).long()
    y0 = lo[:, 1].floor().clamp(0, height).long()
    y1 = hi[:, 1].ceil().clamp(0, height).long()
    keep = (x1 > x0) & (y1 > y0)
    return cg[keep], x0[keep], x1[keep], y0[keep], y1[keep]


def _box_pixels(cg: Tensor, x0: Tensor, x1: Tensor, y0: Tensor, y1: Tensor, N: int, width: int, height: int):
    """Every pixel of every box: (camera * N + Gaussian) ids [P] and flat pixel ids (camera, row, column) [P]."""
    wx = x1 - x0
    counts = wx * (y1 - y0)
    owner = torch.repeat_interleave(torch.arange(len(counts), device=cg.device), counts)
    local = torch.arange(owner.numel(), device=cg.device) - (torch.cumsum(counts, 0) - counts)[owner]
    px = x0[owner] + local % wx[owner]
    py = y0[owner] + local // wx[owner]
    ids = cg[owner]
    return ids, ((ids // N) * height + py) * width + px


def _open_boxes(done: Tensor, cam: Tensor, x0: Tensor, x1: Tensor, y0: Tensor, y1: Tensor) -> Tensor:
    """[G] bool: the box has at least one pixel that is not done yet (summed-area table of done [C, H, W])."""
    C, H, W = done.shape
    sat = torch.zeros(C, H + 1, W + 1, dtype=torch.long, device=done.device)
    sat[:, 1:, 1:] = (~done).long().cumsum(1).cumsum(2)
    flat = sat.reshape(-1)
    at = lambda y, x: flat[(cam * (H + 1) + y) * (W + 1) + x]
    return at(y1, x1) - at(y0, x1) - at(y1, x0) + at(y0, x0) > 0


def _segment_exclusive_cumsum(x: Tensor, pix: Tensor) -> Tensor:
    """Exclusive cumulative sum of x [P] within runs of equal (sorted) pix [P], in float64."""
    x = x.double()
    incl = torch.cumsum(x, 0)
    first = torch.ones_like(pix, dtype=torch.bool)
    first[1:] = pix[1:] != pix[:-1]
    seg = torch.cumsum(first.long(), 0) - 1
    before = incl - x  # sum of everything before this pair
    return before - before[first][seg]


@torch.no_grad()
def contributing_pairs(kind: str, radii: Tensor, depths: Tensor, packed: Tensor, width: int,
                       height: int) -> tuple[Tensor, Tensor]:
    """The pairs gsplat composites, sorted by (camera, pixel, depth): (camera * N + Gaussian) ids [P], pixel ids [P].

    Boxes are enumerated in depth-ordered chunks. A pixel whose transmittance is already below T_MIN after the
    chunks in front takes no more pairs (the sum of log(1 - alpha) does not depend on order). A box whose pixels are
    all done is skipped before its pixels are enumerated.

    Args:
        kind: "conic" (3d, 2d_screen) or "surfel" (2d).
        radii: [C, N, 2] int pixel radii; 0: not visible.
        depths: [C, N] camera z of the centres.
        packed: [C * N, K] per (camera, Gaussian) parameters (`_pack`).
        width: W, the image width in pixels.
        height: H, the image height in pixels.
    Returns:
        ids: [P] (camera * N + Gaussian) id of each pair.
        pix: [P] flat pixel id of each pair, (camera * H + row) * W + column.
    """
    C, N = depths.shape
    cg, x0, x1, y0, y1 = _boxes(kind, radii, depths, packed, width, height)
    counts = (x1 - x0) * (y1 - y0)
    chunk_pairs = min(max(CHUNK_PIXEL_PAIRS * C * width * height, CHUNK_MIN_PAIRS), CHUNK_PAIRS)
    chunk = (torch.cumsum(counts, 0) - counts) // chunk_pairs  # chunk of each box (by its first pair)
    log_T = torch.zeros(C * height * width, dtype=torch.float64, device=depths.device)
    log_T_min = math.log(T_MIN) - 1e-6  # a margin keeps the skip conservative against rounding
    ids, pixs, alphas = [cg[:0]], [cg[:0]], [packed[:0, 0]]
    a = 0
    for n in torch.unique_consecutive(chunk, return_counts=True)[1].tolist():  # chunks of Gaussians
        box = (cg[a:a + n], x0[a:a + n], x1[a:a + n], y0[a:a + n], y1[a:a + n])
        a += n
        if a > n:  # not the first chunk: drop boxes and pairs that only reach finished pixels
            done = log_T < log_T_min
            box = [t[_open_boxes(done.reshape(C, height, width), box[0] // N, *box[1:])] for t in box]
        i, pix = _box_pixels(*box, N, width, height)
        if a > n:
            live = ~done[pix]
            i, pix = i[live], pix[live]
        alpha = _alpha(kind, packed[i].unbind(1), (pix % width).to(packed.dtype), ((pix // width) % height).to(packed.dtype))
        keep = alpha > 0
        i, pix, alpha = i[keep], pix[keep], alpha[keep]
        log_T.index_add_(0, pix, torch.log1p(-alpha).double())
        ids.append(i)
        pixs.append(pix)
        alphas.append(alpha)
    ids, pix, alpha = torch.cat(ids), torch.cat(pixs), torch.cat(alphas)
    pix, perm = torch.sort(pix, stable=True)  # a pixel's pairs contiguous, still front to back
    ids, alpha = ids[perm], alpha[perm]
    T = torch.exp(_segment_exclusive_cumsum(torch.log1p(-alpha), pix)).to(alpha.dtype)
    alive = T * (1 - alpha) > T_MIN
    return ids[alive], pix[alive]


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
    normals: Tensor | None = None,  # [C, N, 3] world normals to composite (surfels), or None
    distortion: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor | None]:
    """Composite front to back: rgb [C, H, W, 3], alpha [C, H, W] and expected depth [C, H, W]. The depth is
    sum w z / alpha, 0 where alpha is 0. Given `normals`, also their weighted sum [C, H, W, 3] (not normalised, as
    gsplat's). If asked, also the depth distortion [C, H, W] (`pair_distortion`).

    Args:
        kind: "conic" (3d, 2d_screen) or "surfel" (2d).
        radii: [C, N, 2] int pixel radii; 0: not visible.
        means2d: [C, N, 2] projected centres, in pixels.
        depths: [C, N] camera z of the centres.
        shape: [C, N, 3] conics ("conic") or [C, N, 3, 3] ray transforms ("surfel").
        colors: [N, 3] RGB in [0, 1].
        opacities: [N] in (0, 1).
        width: W, the image width in pixels.
        height: H, the image height in pixels.
        background: [3] colour behind the Gaussians, or None (black).
        normals: [C, N, 3] world normals to composite (surfels), or None.
        distortion: also return the depth distortion.
    Returns:
        rgb: [C, H, W, 3] composited colours, background included.
        alpha: [C, H, W] sum of the weights w.
        depth: [C, H, W] expected camera z.
        normals: [C, H, W, 3] weighted sum of `normals`, or None without them.
        distortion: [C, H, W] depth distortion, or None unless asked.
    """
    C = depths.shape[0]
    packed = _pack(means2d, shape, depths, opacities, colors)  # [C*N, K]
    ids, pix = contributing_pairs(kind, radii, depths, packed, width, height)
    # K columns [P]; unbind's backward is one stack, where column slices would each zero-fill a [P, K] gradient
    q = packed.index_select(0, ids).unbind(1)
    alpha = _alpha(kind, q, (pix % width).to(packed.dtype), ((pix // width) % height).to(packed.dtype))
    T = torch.exp(_segment_exclusive_cumsum(torch.log1p(-alpha), pix)).to(alpha.dtype)
    w = alpha * T  # [P]
    z = _pair_depth(kind, q, (pix % width).to(packed.dtype), ((pix // width) % height).to(packed.dtype))
    cols = [w * c for c in q[-3:]] + [w, w * z]
    if normals is not None:
        cols += (w[:, None] * normals.reshape(-1, 3).index_select(0, ids)).unbind(1)
    out = torch.zeros(C * height * width, len(cols), device=packed.device, dtype=packed.dtype)
    out = out.index_add(0, pix, torch.stack(cols, dim=1))
    rgb, acc = out[:, :3], out[:, 3]
    if background is not None:
        rgb = rgb + (1 - acc)[:, None] * background
    depth = out[:, 4] / acc.clamp_min(1e-10)
    normal = out[:, 5:8].reshape(C, height, width, 3) if normals is not None else None
    dist = pair_distortion(w, z, pix, C * height * width).reshape(C, height, width) if distortion else None
    return (rgb.reshape(C, height, width, 3), acc.reshape(C, height, width), depth.reshape(C, height, width), normal,
            dist)


def pair_distortion(w: Tensor, z: Tensor, pix: Tensor, n_pixels: int) -> Tensor:
    """2DGS's depth distortion per pixel [n_pixels]: sum over the pixel's pairs i, j of w_i w_j |z_i - z_j|. Both
    orders count, as in the paper's double sum and gsplat's render_distort. O(P log P), not O(P^2): with each
    pixel's pairs sorted by depth, the sum is 2 sum_i w_i (z_i sum_{j<i} w_j - sum_{j<i} w_j z_j). That is two
    segmented cumulative sums (float64).

    Args:
        w: [P] weights alpha * T of the pairs.
        z: [P] camera z of the pairs.
        pix: [P] flat pixel ids of the pairs (sorted).
        n_pixels: the number of pixels, C * H * W.
    Returns:
        distortion: [n_pixels] in the dtype of w; 0 for pixels without pairs.
    """
    order = torch.argsort(z.detach(), stable=True)
    order = order[torch.argsort(pix[order], stable=True)]  # by pixel, then depth
    ws, zs, ps = w[order], z[order], pix[order]
    before_w = _segment_exclusive_cumsum(ws, ps)  # [P] sum_{j<i} w_j
    before_wz = _segment_exclusive_cumsum(ws * zs, ps)  # [P] sum_{j<i} w_j z_j
    per_pair = 2 * ws.double() * (zs.double() * before_w - before_wz)  # [P]
    out = torch.zeros(n_pixels, dtype=torch.float64, device=w.device).index_add(0, ps, per_pair)
    return out.to(w.dtype)
