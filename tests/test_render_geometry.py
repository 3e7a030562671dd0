"""Depth and normals of the torch backend: the expected depth equals an independent per-pixel reference (the
centre's camera z for conic modes, the ray-surfel intersection for 2d), its gradients pass gradcheck, and on scenes
whose surface is known the geometry errors are near zero and grow with the displacement of the Gaussians."""

import math

import pytest
import torch

from posesplat.geometry import surface_distance, surface_points, view_errors
from posesplat.pose import quat_to_rotmat
from posesplat.render import Gaussians, project_any, render
from test_render import cameras, scene


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


def dense_depth(g, mode, vm, K, W, H):
    """Reference expected depth [C, H, W] and surfel normals [C, H, W, 3] from world geometry (dense_pairs)."""
    pairs = dense_pairs(g, mode, vm, K, W, H)
    depths = [((w * z).sum(0) / w.sum(0).clamp_min(1e-10)).reshape(H, W) for w, z, _ in pairs]
    normals = [(w[..., None] * n[:, None]).sum(0).reshape(H, W, 3) for w, _, n in pairs]
    return torch.stack(depths), torch.stack(normals)


@pytest.mark.parametrize("mode", ["3d", "2d", "2d_screen"])
def test_depth_equals_per_pixel_reference(mode):
    vm, K, W, H = cameras()
    g = scene(mode, N=150)
    if mode == "2d_screen":
        g.quats = None
    out = render(g, mode, vm, K, W, H)
    depth, snormal = dense_depth(g, mode, vm, K, W, H)  # 2d_screen: conic pairs at the anchor's camera z, as 3d
    assert out.depth.shape == (3, H, W) and out.normals.shape == (3, H, W, 3)
    seen = out.alpha > 0.05
    assert seen.float().mean() > 0.3 and float(depth[seen].std()) > 0.05  # depth varies: not a constant
    torch.testing.assert_close(out.depth[seen], depth[seen], atol=1e-5, rtol=1e-5)
    if mode == "2d":
        torch.testing.assert_close(out.surfel_normals, snormal, atol=1e-4, rtol=1e-4)
    else:
        assert out.surfel_normals is None


def test_screen_depth_is_the_anchor_depth():
    """A single screen-space Gaussian's depth is its anchor's camera z wherever it is drawn."""
    vm, K, W, H = cameras()
    g = scene("2d_screen", N=1, seed=2)
    out = render(g, "2d_screen", vm, K, W, H)
    z = (g.means[0] @ vm[:, :3, :3].transpose(1, 2) + vm[:, :3, 3])[:, 2]  # [C]
    seen = out.alpha > 0.01
    assert seen.any()
    torch.testing.assert_close(out.depth[seen], z[:, None, None].expand_as(out.depth)[seen])


@pytest.mark.parametrize("mode", ["3d", "2d", "2d_screen"])
def test_depth_gradcheck_float64(mode):
    vm, K, W, H = cameras(C=2, W=8, H=7, dtype=torch.float64)
    g = scene(mode, N=4, seed=5, dtype=torch.float64)
    g.means = g.means * 0.3
    names = [k for k in ("means", "opacities", "quats", "scales", "offsets", "angles") if getattr(g, k) is not None]
    inputs = tuple(getattr(g, k).clone().requires_grad_() for k in names)

    def f(*xs):
        out = render(Gaussians(**dict(zip(names, xs)), colors=g.colors), mode, vm, K, W, H)
        return out.depth if mode != "2d" else (out.depth, out.surfel_normals[..., 2])

    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-4, rtol=1e-3)


def _plane_scene(mode: str, shift: float):
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


@pytest.mark.parametrize("mode", ["3d", "2d"])
def test_known_plane_errors_vanish_and_grow_with_displacement(mode):
    """Gaussians on the true plane: depth error under 0.5% of the distance (3d's centre depth is biased towards
    the camera by a fraction of a footprint; 2d's intersections lie on the plane), normals within a few degrees,
    surface distance under 1% of the distance; lifted by s along the normal, the depth error is the plane's z-depth
    change (lam s / h per pixel, in the scene's unit) within 10% plus the unlifted error, and the surface distance
    grows with s."""
    res = {}
    for s in (0.0, 0.05, 0.1):
        g, vm, K, W, H, depth_gt, normal_gt, mask = _plane_scene(mode, s)
        out = render(g, mode, vm, K, W, H)
        e = view_errors(out.depth, out.normals, depth_gt, normal_gt, mask)
        pred = surface_points(out.depth, (out.alpha > 0.5).float() * mask, vm, K)
        true = surface_points(depth_gt, mask, vm, K)
        res[s] = (e["depth_err"][0], e["depth_err_rel"][0], e["normal_err"][0], surface_distance(pred, true))
        if s:  # the analytic depth change of the lifted plane, z = s, over the same pixels: lam (h - s) / h
            h = 2.5 * math.sin(math.radians(50))
            want = float((depth_gt * s / h * mask).sum() / mask.sum())
            assert abs(res[s][0] - want) <= 0.1 * want + res[0.0][0], (mode, s, want, res)
    d0, r0, n0, c0 = res[0.0]
    assert d0 < 0.005 * 2.5 and r0 < 0.005, res
    assert n0 < 5.0, res
    assert c0 < 0.01 * 2.5, res
    assert res[0.05][3] > 5 * c0 and res[0.1][3] > 1.5 * res[0.05][3], res
    assert res[0.1][0] > 1.5 * res[0.05][0] > 1.5 * d0, res


def test_tilted_normals_are_measured_in_degrees():
    """Normals of the depth map of a plane against the true normal turned by 10 degrees: an error of 10 degrees."""
    g, vm, K, W, H, depth_gt, normal_gt, mask = _plane_scene("2d", 0.0)
    out = render(g, "2d", vm, K, W, H)
    a = math.radians(10)
    tilted = normal_gt @ torch.tensor([[1.0, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]]).T
    base = view_errors(out.depth, out.normals, depth_gt, normal_gt, mask)["normal_err"][0]
    err = view_errors(out.depth, out.normals, depth_gt, tilted, mask)["normal_err"][0]
    assert err == pytest.approx(10.0, abs=base + 0.5)
    flipped = view_errors(out.depth, out.normals, depth_gt, -normal_gt, mask)["normal_err"][0]
    assert flipped > 170  # a normal facing away from the camera is the wrong side
