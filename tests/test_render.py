"""Torch rendering backend: projection equals gsplat's own PyTorch reference; the sparse rasteriser equals a dense
formulation of gsplat's compositing rules (also when pixels saturate across chunks); gradients are right (float64
gradcheck); peaks, occlusion, surfel and screen-space geometry behave physically; bad input is one clear line."""

import math

import pytest
import torch
from gsplat.cuda._torch_impl import _fully_fused_projection, _quat_scale_to_covar_preci
from gsplat.cuda._torch_impl_2dgs import _fully_fused_projection_2dgs

from posesplat.render import Gaussians, RenderError, pick_backend, project_any, render, torch_backend
from posesplat.render.project import project_2dgs, project_3d, project_screen
from scenes import cameras, scene


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_projection_3d_matches_gsplat_reference(seed):
    vm, K, W, H = cameras()
    g = scene("3d", N=300, seed=seed)
    radii, m2, d, con = project_3d(g.means, g.quats, g.scales, vm, K, W, H)
    cov, _ = _quat_scale_to_covar_preci(g.quats, g.scales, compute_preci=False, triu=False)
    r_ref, m_ref, d_ref, con_ref, _ = _fully_fused_projection(g.means, cov, vm, K, W, H)
    assert torch.equal(radii, r_ref)
    vis = r_ref[..., 0] > 0
    assert vis.sum() > 100
    torch.testing.assert_close(m2[vis], m_ref[vis], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(d, d_ref)
    torch.testing.assert_close(con[vis], con_ref[vis], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_projection_2dgs_matches_gsplat_reference(seed):
    vm, K, W, H = cameras()
    g = scene("2d", N=300, seed=seed)
    radii, m2, d, M = project_2dgs(g.means, g.quats, g.scales, vm, K, W, H)
    s3 = torch.cat([g.scales, torch.ones_like(g.scales[:, :1])], dim=-1)
    r_ref, m_ref, d_ref, M_ref, _ = _fully_fused_projection_2dgs(g.means, g.quats, s3, vm, K, W, H)
    assert torch.equal(radii, r_ref)
    vis = r_ref[..., 0] > 0
    torch.testing.assert_close(m2[vis], m_ref[vis], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(d, d_ref)
    torch.testing.assert_close(M[vis], M_ref[vis], rtol=1e-5, atol=1e-5)


def dense_render(g, mode, vm, K, W, H):
    """Reference: every Gaussian against every pixel, cumulative product over depth (gsplat's skip rules).

    Agreement with it also shows that the sparse boxes miss no pixel with alpha >= 1/255."""
    kind, radii, m2, depths, shape = project_any(g, mode, vm, K, W, H)
    C, N = depths.shape
    ys, xs = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    rgbs, alphas = [], []
    for c in range(C):
        order = torch.argsort(depths[c])
        order = order[radii[c, order, 0] > 0]
        x, y = xs.reshape(1, -1), ys.reshape(1, -1)
        mu = m2[c, order]
        if kind == "conic":
            q = shape[c, order]
            dx, dy = x - mu[:, :1], y - mu[:, 1:]
            sigma = 0.5 * (q[:, :1] * dx**2 + q[:, 2:] * dy**2) + q[:, 1:2] * dx * dy
            a = torch.clamp_max(g.opacities[order, None] * torch.exp(-sigma), 0.999) * (sigma >= 0)
        else:
            M = shape[c, order]
            hu = -M[:, None, 0] + M[:, None, 2] * x[..., None]
            hv = -M[:, None, 1] + M[:, None, 2] * y[..., None]
            t = torch.linalg.cross(hu, hv, dim=-1)
            s3 = (t[..., 0] / t[..., 2]) ** 2 + (t[..., 1] / t[..., 2]) ** 2
            s2 = 2 * ((x - mu[:, :1]) ** 2 + (y - mu[:, 1:]) ** 2)
            a = torch.clamp_max(g.opacities[order, None] * torch.exp(-0.5 * torch.minimum(s3, s2)), 0.999)
        a = a * (a >= 1 / 255)  # every pixel of the image: no box at all
        T = torch.cumprod(torch.cat([torch.ones_like(a[:1]), 1 - a[:-1]]), 0)
        w = a * T * (T * (1 - a) > 1e-4)
        rgbs.append((w[..., None] * g.colors[order, None]).sum(0).reshape(H, W, 3))
        alphas.append(w.sum(0).reshape(H, W))
    return torch.stack(rgbs), torch.stack(alphas)


@pytest.mark.parametrize("mode", ["3d", "2d", "2d_screen"])
def test_sparse_rasteriser_equals_dense(mode):
    vm, K, W, H = cameras()
    g = scene(mode, N=150)
    out = render(g, mode, vm, K, W, H)
    rgb, alpha = dense_render(g, mode, vm, K, W, H)
    assert alpha.max() > 0.5
    torch.testing.assert_close(out.alpha, alpha, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(out.rgb, rgb, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("mode", ["3d", "2d", "2d_screen"])
def test_gradcheck_float64(mode):
    vm, K, W, H = cameras(C=2, W=12, H=10, dtype=torch.float64)
    g = scene(mode, N=4, seed=5, dtype=torch.float64)
    g.means = g.means * 0.3
    names = [k for k in ("means", "colors", "opacities", "quats", "scales", "offsets", "angles") if getattr(g, k) is not None]
    inputs = tuple(getattr(g, k).clone().requires_grad_() for k in names)

    def f(*xs):
        out = render(Gaussians(**dict(zip(names, xs))), mode, vm, K, W, H)
        return out.rgb, out.alpha

    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-4, rtol=1e-3)


def test_occlusion_and_background():
    vm, K, W, H = cameras(C=1)
    cam_pos = -vm[0, :3, :3].T @ vm[0, :3, 3]
    front = 0.5 * cam_pos / cam_pos.norm()
    g = Gaussians(means=torch.stack([front, -front]), colors=torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]),
                  opacities=torch.tensor([0.99, 0.99]), quats=torch.tensor([[1.0, 0, 0, 0]] * 2),
                  scales=torch.full((2, 3), 0.2))
    out = render(g, "3d", vm, K, W, H, background=torch.tensor([0.0, 0.0, 1.0]))
    centre = out.rgb[0, H // 2, W // 2]
    assert centre[0] > 0.9 and centre[1] < 0.05  # the front (red) Gaussian hides the green one
    assert torch.allclose(out.rgb[0, 0, 0], torch.tensor([0.0, 0.0, 1.0]), atol=1e-3)  # corner shows background


def test_surfel_seen_obliquely_is_thin():
    """A surfel facing the camera is a disc; turned 80 degrees about the vertical it is a thin upright ellipse."""
    vm = torch.eye(4)[None]
    vm[0, 2, 3] = 3.0  # camera at z = -3 looking along +z
    K = torch.tensor([[[60.0, 0, 32], [0, 60.0, 32], [0, 0, 1]]])
    g = Gaussians(means=torch.zeros(1, 3), colors=torch.ones(1, 3), opacities=torch.tensor([0.99]),
                  quats=torch.tensor([[1.0, 0, 0, 0]]), scales=torch.tensor([[0.2, 0.2]]))
    face = render(g, "2d", vm, K, 64, 64).alpha[0] > 0.5
    a = math.radians(80)
    g.quats = torch.tensor([[math.cos(a / 2), 0, math.sin(a / 2), 0]])  # rotate about the camera's vertical (y)
    side = render(g, "2d", vm, K, 64, 64).alpha[0] > 0.5
    height = lambda m: int(m.any(1).sum())
    width = lambda m: int(m.any(0).sum())
    assert height(side) >= 0.7 * height(face)
    assert width(side) <= 0.4 * width(face) and width(face) >= 5


def test_saturated_pixels_across_chunks_equal_dense(monkeypatch):
    """Many opaque layers, enumerated in many small chunks: pixels finished by earlier chunks take no more pairs,
    and the image is still exactly gsplat's (dense reference)."""
    monkeypatch.setattr(torch_backend, "CHUNK_PIXEL_PAIRS", 1)
    monkeypatch.setattr(torch_backend, "CHUNK_MIN_PAIRS", 256)
    vm, K, W, H = cameras(C=2)
    for mode in ("3d", "2d", "2d_screen"):
        g = scene(mode, N=400, seed=3)
        g.opacities = 0.95 + 0.04 * torch.rand(400, generator=torch.Generator().manual_seed(1))
        g.scales = g.scales * 2
        kind, radii, m2, d, shape = project_any(g, mode, vm, K, W, H)
        packed = torch_backend._pack(m2, shape, d, g.opacities, g.colors)
        boxes = torch_backend._boxes(kind, radii, d, packed, W, H)
        n_pairs = int(((boxes[2] - boxes[1]) * (boxes[4] - boxes[3])).sum())
        assert n_pairs > 20 * 256  # many chunks
        out = render(g, mode, vm, K, W, H)
        rgb, alpha = dense_render(g, mode, vm, K, W, H)
        assert (alpha > 1 - 2e-4).float().mean() > 0.2, mode  # many pixels reach T < 1e-4
        torch.testing.assert_close(out.alpha, alpha, atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(out.rgb, rgb, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("mode", ["3d", "2d", "2d_screen"])
def test_single_gaussian_peaks_at_projected_mean(mode):
    """Alpha peaks (at the opacity) within a pixel of K (R x + t) (+ the pixel offset in 2d_screen), colour = c alpha."""
    vm, K, W, H = cameras(C=3, W=64, H=48)
    g = scene(mode, N=1, seed=7)
    g.means = g.means * 0.3
    g.opacities = torch.tensor([0.8])
    p = torch.einsum("cij,cj->ci", K, torch.einsum("cij,j->ci", vm[:, :3, :3], g.means[0]) + vm[:, :3, 3])
    centre = p[:, :2] / p[:, 2:] + (g.offsets if mode == "2d_screen" else 0)
    out = render(g, mode, vm, K, W, H)
    for c in range(3):
        a = out.alpha[c]
        i, j = divmod(int(a.argmax()), W)
        assert abs(j + 0.5 - centre[c, 0]) <= 1 and abs(i + 0.5 - centre[c, 1]) <= 1
        assert 0.4 < float(a.max()) <= 0.8 + 1e-6
        torch.testing.assert_close(out.rgb[c, i, j], g.colors[0] * a[i, j])


def test_alpha_clamped_like_gsplat():
    """gsplat 1.5 clamps a pair's alpha at 0.999 (3d and 2d alike)."""
    vm, K, W, H = cameras(C=1)
    for mode in ("3d", "2d"):
        g = scene(mode, N=1)
        g.means, g.opacities = torch.zeros(1, 3), torch.tensor([0.99999])
        g.quats, g.scales = torch.tensor([[1.0, 0, 0, 0]]), torch.full_like(g.scales, 3.0)  # flat at the centre
        assert float(render(g, mode, vm, K, W, H).alpha.max()) == pytest.approx(0.999, abs=1e-6)


def test_screen_space_shape_ignores_the_camera():
    """2d_screen: the same pixel footprint in a near and a far camera; a 3d Gaussian shrinks with distance."""
    near, far = torch.eye(4), torch.eye(4)
    near[2, 3], far[2, 3] = 1.0, 3.0
    vm = torch.stack([near, far])
    K = torch.tensor([[60.0, 0, 32], [0, 60.0, 32], [0, 0, 1]]).expand(2, 3, 3)
    common = dict(means=torch.zeros(1, 3), colors=torch.ones(1, 3), opacities=torch.tensor([0.9]))
    screen = Gaussians(**common, offsets=torch.zeros(1, 2), scales=torch.tensor([[6.0, 2.0]]),
                       angles=torch.tensor([0.5]))
    a = render(screen, "2d_screen", vm, K, 64, 64).alpha
    torch.testing.assert_close(a[0], a[1])
    _, _, _, conics = project_screen(screen.means, screen.offsets, screen.scales, screen.angles, vm, K, 64, 64)
    torch.testing.assert_close(conics[0], conics[1])
    g3 = Gaussians(**common, quats=torch.tensor([[1.0, 0, 0, 0]]), scales=torch.full((1, 3), 0.1))
    a3 = render(g3, "3d", vm, K, 64, 64).alpha
    assert (a3[0] > 0.1).sum() > 4 * (a3[1] > 0.1).sum()


def test_pick_backend():
    assert pick_backend("auto", torch.device("cpu")) == "torch"
    assert pick_backend("auto", torch.device("cuda")) == "gsplat"
    assert pick_backend("torch", torch.device("cpu")) == "torch"
    with pytest.raises(RenderError, match="'gsplat' needs a CUDA device"):
        pick_backend("gsplat", torch.device("cpu"))
    with pytest.raises(RenderError, match="unknown backend 'cuda'"):
        pick_backend("cuda", torch.device("cpu"))


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(mode="4d"), "unknown Gaussian mode '4d'"),
        (dict(quats=None), "Gaussians.quats is required in mode '3d'"),
        (dict(scales=torch.ones(60, 2)), r"Gaussians.scales has shape \[60, 2\], expected \[60, 3\]"),
        (dict(opacities=torch.ones(60, 1)), r"Gaussians.opacities has shape \[60, 1\], expected \[60\]"),
        (dict(Ks=torch.eye(3)[None]), r"Ks has shape \[1, 3, 3\], expected \[3, 3, 3\]"),
        (dict(backend="gsplat"), "'gsplat' needs a CUDA device"),
    ],
)
def test_bad_input_is_one_line(change, message):
    vm, K, W, H = cameras()
    g = scene("3d")
    kw = dict(mode="3d", Ks=K, backend="torch")
    for k, v in change.items():
        if hasattr(g, k):
            setattr(g, k, v)
        else:
            kw[k] = v
    with pytest.raises(RenderError, match=message) as e:
        render(g, kw["mode"], vm, kw["Ks"], W, H, backend=kw["backend"])
    assert "\n" not in str(e.value)
