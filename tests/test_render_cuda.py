"""On CUDA only: the torch backend runs on the GPU exactly as on the CPU, and agrees with the gsplat backend
(gsplat's CUDA rasterisers) in images, alpha and the gradients of every Gaussian field, per mode.

Tolerances (docs/rendering.md): images atol 2e-3; gradients within 2 % of gsplat's norm, cosine > 0.99."""

import pytest
import torch

from posesplat.modes import names
from posesplat.render import Gaussians, render
from scenes import cameras, scene

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
MODES = list(names())
FIELDS = ("means", "colors", "opacities", "quats", "scales", "offsets", "angles")


def _render_with_grads(g: Gaussians, mode: str, vm, K, W, H, backend: str, device: str):
    """Render on device with a fixed random loss; return the output and the gradient of every field."""
    fields = {k: getattr(g, k).to(device).clone().requires_grad_() for k in FIELDS if getattr(g, k) is not None}
    bg = torch.tensor([0.1, 0.2, 0.3], device=device)
    out = render(Gaussians(**fields), mode, vm.to(device), K.to(device), W, H, backend=backend, background=bg)
    weights = torch.rand(out.rgb.shape, generator=torch.Generator().manual_seed(0)).to(device)
    ((out.rgb * weights).sum() + out.alpha.square().sum()).backward()
    return out, {k: v.grad for k, v in fields.items()}


@pytest.mark.parametrize("mode", MODES)
def test_torch_backend_on_cuda_equals_cpu(mode):
    vm, K, W, H = cameras(C=3, W=96, H=80)
    g = scene(mode, N=800, seed=4)
    out_cpu, grads_cpu = _render_with_grads(g, mode, vm, K, W, H, "torch", "cpu")
    out_gpu, grads_gpu = _render_with_grads(g, mode, vm, K, W, H, "torch", "cuda")
    torch.testing.assert_close(out_gpu.rgb.cpu(), out_cpu.rgb, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out_gpu.alpha.cpu(), out_cpu.alpha, atol=1e-5, rtol=1e-4)
    for k in grads_cpu:
        torch.testing.assert_close(grads_gpu[k].cpu(), grads_cpu[k], atol=1e-4, rtol=1e-3, msg=k)


@pytest.mark.parametrize("mode", MODES)
def test_torch_backend_matches_gsplat(mode):
    vm, K, W, H = cameras(C=3, W=96, H=80)
    g = scene(mode, N=800, seed=4)
    ours, grads = _render_with_grads(g, mode, vm, K, W, H, "torch", "cuda")
    ref, grads_ref = _render_with_grads(g, mode, vm, K, W, H, "gsplat", "cuda")
    assert ref.alpha.max() > 0.5 and (ref.alpha > 0.01).float().mean() > 0.05  # a non-trivial image
    torch.testing.assert_close(ours.alpha, ref.alpha, atol=2e-3, rtol=0)
    torch.testing.assert_close(ours.rgb, ref.rgb, atol=2e-3, rtol=0)
    for k in grads:
        a, b = grads[k].flatten(), grads_ref[k].flatten()
        assert b.norm() > 0, k
        assert torch.nn.functional.cosine_similarity(a, b, dim=0) > 0.99, k
        assert (a - b).norm() <= 0.02 * b.norm(), k


@pytest.mark.parametrize("mode", ["3d", "2d_screen"])
def test_depth_matches_gsplat(mode):
    """Expected depth (centre z) of the torch backend equals gsplat's RGB+ED depth where the image is covered."""
    vm, K, W, H = cameras(C=3, W=96, H=80)
    g = scene(mode, N=800, seed=4)
    ours, _ = _render_with_grads(g, mode, vm, K, W, H, "torch", "cuda")
    ref, _ = _render_with_grads(g, mode, vm, K, W, H, "gsplat", "cuda")
    seen = ref.alpha > 0.5
    assert seen.float().mean() > 0.05
    torch.testing.assert_close(ours.depth[seen], ref.depth[seen], atol=1e-3 * float(ref.depth[seen].max()), rtol=0)


def test_surfel_depth_and_normals_match_gsplat_facing_the_camera():
    """2d surfels facing one camera (their plane is at their centre's depth): the torch backend's intersection
    depth equals gsplat's centre depth, and the composited surfel normals equal rasterization_2dgs's."""
    W, H = 96, 80
    vm = torch.eye(4)[None]
    vm[0, 2, 3] = 3.0  # a camera at z = -3 looking along +z; identity rotations face it
    K = torch.tensor([[[50.0, 0, W / 2], [0, 55.0, H / 2], [0, 0, 1]]])
    g = scene("2d", N=800, seed=4)
    g.quats = torch.tensor([[1.0, 0, 0, 0]]).expand(800, 4).contiguous()
    ours, _ = _render_with_grads(g, "2d", vm, K, W, H, "torch", "cuda")
    ref, _ = _render_with_grads(g, "2d", vm, K, W, H, "gsplat", "cuda")
    seen = ref.alpha > 0.5
    assert seen.float().mean() > 0.05
    torch.testing.assert_close(ours.depth[seen], ref.depth[seen], atol=1e-3 * float(ref.depth[seen].max()), rtol=0)
    torch.testing.assert_close(ours.surfel_normals, ref.surfel_normals, atol=2e-3, rtol=0)


def test_surfel_distortion_matches_gsplat_facing_the_camera():
    """2DGS's depth distortion of surfels facing one camera: the torch backend's (sorted pairs, segmented sums)
    equals rasterization_2dgs's render_distort, and so do the gradients of its sum in the means and opacities (in
    quats and scales they differ by design: gsplat's pair depth is the centre's, ours the ray's intersection)."""
    W, H = 96, 80
    vm = torch.eye(4)[None]
    vm[0, 2, 3] = 3.0
    K = torch.tensor([[[50.0, 0, W / 2], [0, 55.0, H / 2], [0, 0, 1]]])
    g = scene("2d", N=800, seed=4)
    g.quats = torch.tensor([[1.0, 0, 0, 0]]).expand(800, 4).contiguous()
    res = {}
    for backend in ("torch", "gsplat"):
        fields = {k: getattr(g, k).cuda().clone().requires_grad_() for k in ("means", "colors", "opacities", "quats",
                                                                             "scales")}
        out = render(Gaussians(**fields), "2d", vm.cuda(), K.cuda(), W, H, backend=backend, distortion=True)
        out.distortion.sum().backward()
        res[backend] = (out.distortion.detach(), {k: fields[k].grad for k in ("means", "opacities")})
    (ours, grads), (ref, grads_ref) = res["torch"], res["gsplat"]
    assert float(ref.max()) > 0 and (ref > 0.01 * ref.max()).float().mean() > 0.05
    torch.testing.assert_close(ours, ref, atol=1e-3 * float(ref.max()), rtol=0)
    for k in grads:
        a, b = grads[k].flatten(), grads_ref[k].flatten()
        assert torch.nn.functional.cosine_similarity(a, b, dim=0) > 0.99, k
        assert (a - b).norm() <= 0.02 * b.norm(), k
