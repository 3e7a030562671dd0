"""Depth and normals of the torch backend: the expected depth equals an independent per-pixel reference (the
centre's camera z for conic modes, the ray-surfel intersection for 2d), its gradients pass gradcheck, and on scenes
whose surface is known the geometry errors are near zero and grow with the displacement of the Gaussians."""

import math

import pytest
import torch

from posesplat.geometry import surface_distance, surface_points, view_errors
from posesplat.render import Gaussians, render
from scenes import cameras, dense_pairs, plane_scene, scene


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


@pytest.mark.parametrize("mode", ["3d", "2d"])
def test_known_plane_errors_vanish_and_grow_with_displacement(mode):
    """Gaussians on the true plane: depth error under 0.5% of the distance (3d's centre depth is biased towards
    the camera by a fraction of a footprint; 2d's intersections lie on the plane), normals within a few degrees,
    surface distance under 1% of the distance; lifted by s along the normal, the depth error is the plane's z-depth
    change (lam s / h per pixel, in the scene's unit) within 10% plus the unlifted error, and the surface distance
    grows with s."""
    res = {}
    for s in (0.0, 0.05, 0.1):
        g, vm, K, W, H, depth_gt, normal_gt, mask = plane_scene(mode, s)
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
    g, vm, K, W, H, depth_gt, normal_gt, mask = plane_scene("2d", 0.0)
    out = render(g, "2d", vm, K, W, H)
    a = math.radians(10)
    tilted = normal_gt @ torch.tensor([[1.0, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]]).T
    base = view_errors(out.depth, out.normals, depth_gt, normal_gt, mask)["normal_err"][0]
    err = view_errors(out.depth, out.normals, depth_gt, tilted, mask)["normal_err"][0]
    assert err == pytest.approx(10.0, abs=base + 0.5)
    flipped = view_errors(out.depth, out.normals, depth_gt, -normal_gt, mask)["normal_err"][0]
    assert flipped > 170  # a normal facing away from the camera is the wrong side
