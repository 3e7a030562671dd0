"""Render scenes shared by the rendering tests: cameras on a circle, random Gaussians of any mode, a plane tiled by
flat Gaussians with its true depth and normals, and the dense per-pixel (weight, depth, normal) pairs of a scene."""

import math

import torch

from posesplat.modes import MODES
from posesplat.pose import quat_to_rotmat
from posesplat.render import Gaussians, project_any


def cameras(C=3, W=40, H=32, dtype=torch.float32):
    """C cameras on a circle at distance 3 looking at the origin (OpenCV convention)."""
    vms, Ks = [], []
    for c in range(C):
        a = 2 * math.pi * c / C
        pos = torch.tensor([3 * math.cos(a), 3 * math.sin(a), 1.0], dtype=torch.float64)
        fwd = -pos / pos.norm()
        right = torch.linalg.cross(fwd, torch.tensor([0, 0, 1.0], dtype=torch.float64))
        right = right / right.norm()
        down = torch.linalg.cross(fwd, right)
        R = torch.stack([right, down, fwd])
        vm = torch.eye(4, dtype=torch.float64)
        vm[:3, :3], vm[:3, 3] = R, -R @ pos
        vms.append(vm)
        Ks.append(torch.tensor([[50.0, 0, W / 2], [0, 55.0, H / 2], [0, 0, 1]], dtype=torch.float64))
    return torch.stack(vms).to(dtype), torch.stack(Ks).to(dtype), W, H


def scene(mode, N=60, seed=0, dtype=torch.float32):
    """N random Gaussians of `mode` in the unit cube around the origin (its fields drawn in the registry's order)."""
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(N, 3, generator=g) - 0.5).to(dtype)
    kw = dict(means=means, colors=torch.rand(N, 3, generator=g).to(dtype),
              opacities=(0.2 + 0.7 * torch.rand(N, generator=g)).to(dtype))
    m = MODES[mode]  # the mode's other fields, in its registry order: world scales in metres, screen ones in pixels
    lo, span = (0.5, 2.0) if m.frame == "screen" else (0.03, 0.1)
    draw = {"quats": lambda s: torch.randn(N, *s, generator=g), "scales": lambda s: lo + span * torch.rand(N, *s, generator=g),
            "offsets": lambda s: torch.randn(N, *s, generator=g), "angles": lambda s: torch.rand(N, *s, generator=g) * 3}
    kw.update({k: draw[k](s).to(dtype) for k, s in m.fields.items() if k not in kw})
    return Gaussians(**kw)


def dense_pairs(g, mode, vm, K, W, H):
    """Per camera, from world geometry: every visible Gaussian's weight w [G, H*W] and depth z [G, H*W] at every
    pixel (gsplat's skip rules) and its normal n [G, 3]; a conic pair's depth is its centre's camera z, a surfel
    pair's the z where the pixel's ray meets the surfel's plane (the centre's where the screen-space floor sets
    alpha)."""
    kind, radii, m2, _, shape = project_any(g, mode, vm, K, W, H)
    ys, xs = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    x, y = xs.reshape(1, -1), ys.reshape(1, -1)
    pairs = []
    for c in range(vm.shape[0]):
        R, t = vm[c, :3, :3], vm[c, :3, 3]
        z_centre = (g.means @ R.T + t)[:, 2]  # [N]
        order = torch.argsort(z_centre)
        order = order[radii[c, order, 0] > 0]
        mu, zc = m2[c, order], z_centre[order]
        if kind == "conic":
            q = shape[c, order]
            dx, dy = x - mu[:, :1], y - mu[:, 1:]
            sigma = 0.5 * (q[:, :1] * dx**2 + q[:, 2:] * dy**2) + q[:, 1:2] * dx * dy
            z = zc[:, None].expand_as(sigma)
            n = torch.zeros(len(order), 3)
        else:  # the pixel's ray o + lam d (d with camera z 1) meets the plane through the mean with normal n
            rot = quat_to_rotmat(g.quats[order])  # [G, 3, 3]; columns: tangent u, tangent v, normal
            o = -R.T @ t
            d = torch.stack([(x - K[c, 0, 2]) / K[c, 0, 0], (y - K[c, 1, 2]) / K[c, 1, 1], torch.ones_like(x)], -1)
            d = (d @ R)[0]  # [HW, 3] world
            nrm = rot[:, :, 2]
            lam = ((g.means[order] - o) * nrm).sum(-1)[:, None] / (d @ nrm.T).T  # [G, HW]
            hit = o + lam[..., None] * d  # [G, HW, 3]
            local = hit - g.means[order, None]
            u = (local * rot[:, None, :, 0]).sum(-1) / g.scales[order, 0, None]
            v = (local * rot[:, None, :, 1]).sum(-1) / g.scales[order, 1, None]
            s3, s2 = u**2 + v**2, 2 * ((x - mu[:, :1]) ** 2 + (y - mu[:, 1:]) ** 2)
            sigma = 0.5 * torch.minimum(s3, s2)
            z = torch.where(s2 < s3, zc[:, None], lam)
            n = torch.where(((g.means[order] - o) * nrm).sum(-1, keepdim=True) > 0, -nrm, nrm)
        a = torch.clamp_max(g.opacities[order, None] * torch.exp(-sigma), 0.999) * (sigma >= 0)
        a = a * (a >= 1 / 255)
        T = torch.cumprod(torch.cat([torch.ones_like(a[:1]), 1 - a[:-1]]), 0)
        w = a * T * (T * (1 - a) > 1e-4)
        pairs.append((w, z, n))
    return pairs


def plane_scene(mode: str, shift: float):
    """Opaque Gaussians tiling the square |x|, |y| <= 0.3 of the plane z = shift (flat: 3d with a thin third axis,
    2d surfels; a few pixels wide), a camera 2.5 away looking down at 50 degrees, and the true depth and normals of
    the plane z = 0 where the rays meet it within |x|, |y| < 0.25."""
    k = torch.linspace(-0.3, 0.3, 41)
    xy = torch.stack(torch.meshgrid(k, k, indexing="ij"), -1).reshape(-1, 2)
    n = len(xy)
    means = torch.cat([xy, torch.full((n, 1), shift)], 1)
    scales = torch.full((n, 3 if mode == "3d" else 2), 0.012)
    if mode == "3d":
        scales[:, 2] = 1e-4
    g = Gaussians(means=means, colors=torch.full((n, 3), 0.5), opacities=torch.full((n,), 0.95),
                  quats=torch.tensor([[1.0, 0, 0, 0]]).expand(n, 4).clone(), scales=scales)
    a = math.radians(50)
    pos = torch.tensor([0.0, -2.5 * math.cos(a), 2.5 * math.sin(a)])
    fwd = -pos / pos.norm()
    right = torch.linalg.cross(fwd, torch.tensor([0, 0, 1.0]))
    right = right / right.norm()
    R = torch.stack([right, torch.linalg.cross(fwd, right), fwd])
    vm = torch.eye(4)[None]
    vm[0, :3, :3], vm[0, :3, 3] = R, -R @ pos
    W, H, F = 64, 64, 250.0
    K = torch.tensor([[[F, 0, W / 2], [0, F, H / 2], [0, 0, 1]]])
    ys, xs = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    d = torch.stack([(xs - W / 2) / F, (ys - H / 2) / F, torch.ones_like(xs)], -1) @ R  # world, camera z 1
    lam = -pos[2] / d[..., 2]  # the ray meets z = 0 at camera depth lam
    hit = pos + lam[..., None] * d
    inside = (hit[..., :2].abs() < 0.25).all(-1)  # away from the tiling's edge
    depth_gt = torch.where(inside, lam, torch.zeros_like(lam))[None]
    normal_gt = (torch.tensor([0.0, 0, 1]) * inside[..., None])[None]
    return g, vm, K, W, H, depth_gt, normal_gt, inside[None].float()
