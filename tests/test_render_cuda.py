"""On CUDA only: the torch backend agrees with gsplat's CUDA rasterisers (images, alpha and gradients)."""

import pytest
import torch

from posesplat.render import render

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.mark.parametrize("mode", ["3d", "2d"])
def test_torch_backend_matches_gsplat(mode):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from test_render import cameras, scene

    vm, K, W, H = cameras(C=3, W=96, H=80)
    g = scene(mode, N=800, seed=4)
    vm, K = vm.cuda(), K.cuda()
    outs, grads = {}, {}
    for backend in ("torch", "gsplat"):
        fields = {k: getattr(g, k).cuda().clone().requires_grad_() for k in ("means", "colors", "opacities", "quats", "scales")}
        from posesplat.render import Gaussians

        out = render(Gaussians(**fields), mode, vm, K, W, H, backend=backend)
        (out.rgb.square().sum() + out.alpha.sum()).backward()
        outs[backend] = out
        grads[backend] = {k: v.grad for k, v in fields.items()}
    torch.testing.assert_close(outs["torch"].alpha, outs["gsplat"].alpha, atol=2e-3, rtol=0)
    torch.testing.assert_close(outs["torch"].rgb, outs["gsplat"].rgb, atol=2e-3, rtol=0)
    for k in ("means", "colors", "opacities"):
        a, b = grads["torch"][k].flatten(), grads["gsplat"][k].flatten()
        assert torch.nn.functional.cosine_similarity(a, b, dim=0) > 0.99, k
        assert (a - b).norm() <= 0.02 * b.norm() + 1e-6, k
