"""2DGS's two training terms (depth distortion, normal consistency): the distortion equals a brute-force pairwise
evaluation and an analytic two-layer value, both terms pass gradcheck in float64, the normal term vanishes on a
surface whose surfels lie in it, the registry decides which mode may have them, and the warm-up schedule switches
them on exactly where 2DGS does, leaving the loss untouched while they are off."""

import dataclasses
import math

import pytest
import torch

from posesplat import modes
from posesplat.config import ConfigError, make_config
from posesplat.render import Gaussians, render
from posesplat.losses import geometry_terms, loss_terms, normal_error, term_on, training_loss
from posesplat.train import train
from scenes import cameras, dense_pairs, plane_scene, scene
from shared import tiny_values


@pytest.mark.parametrize("mode", ["2d", "3d"])  # surfel and conic pairs: the pair depth is all it reads
@pytest.mark.parametrize("seed", [0, 1])
def test_distortion_equals_brute_force_pairs(mode, seed):
    """sum over every pair (i, j) of a pixel's Gaussians of w_i w_j |z_i - z_j|, O(pairs^2) from world geometry."""
    vm, K, W, H = cameras()
    g = scene(mode, N=80, seed=seed)
    out = render(g, mode, vm, K, W, H, distortion=True)
    ref = torch.stack([(w[:, None] * w[None] * (z[:, None] - z[None]).abs()).sum((0, 1)).reshape(H, W)
                       for w, z, _ in dense_pairs(g, mode, vm, K, W, H)])
    assert out.distortion.shape == (3, H, W)
    assert (ref > 1e-3).float().mean() > 0.2  # many pixels with several layers at different depths
    torch.testing.assert_close(out.distortion, ref, atol=1e-6, rtol=1e-4)


def _facing_surfel(z: float, opacity: float) -> Gaussians:
    """A wide surfel facing a camera at the origin looking along +z, at depth z."""
    return Gaussians(means=torch.tensor([[0.0, 0.0, z]]), colors=torch.full((1, 3), 0.5),
                     opacities=torch.tensor([opacity]), quats=torch.tensor([[1.0, 0, 0, 0]]),
                     scales=torch.tensor([[1.0, 1.0]]))


def _cat(*gs: Gaussians) -> Gaussians:
    return Gaussians(**{k: torch.cat([getattr(g, k) for g in gs]) for k in ("means", "colors", "opacities", "quats",
                                                                           "scales")})


def test_two_layers_give_the_analytic_distortion():
    """Two surfels facing the camera s apart: 2 w_front w_back s (the double sum counts both orders), linear in s
    and in metres; one layer alone has none."""
    W, H = 16, 12
    vm, K = torch.eye(4)[None], torch.tensor([[[20.0, 0, W / 2], [0, 20.0, H / 2], [0, 0, 1]]])
    a1 = render(_facing_surfel(1.0, 0.8), "2d", vm, K, W, H).alpha
    assert float(render(_facing_surfel(1.0, 0.8), "2d", vm, K, W, H, distortion=True).distortion.abs().max()) == 0
    for s in (0.05, 0.2):
        a2 = render(_facing_surfel(1.0 + s, 0.6), "2d", vm, K, W, H).alpha
        out = render(_cat(_facing_surfel(1.0, 0.8), _facing_surfel(1.0 + s, 0.6)), "2d", vm, K, W, H,
                     distortion=True)
        want = 2 * a1 * a2 * (1 - a1) * s
        assert float(want.max()) > 0.1 * s
        torch.testing.assert_close(out.distortion, want, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("mode", ["2d", "3d"])
def test_asking_for_the_distortion_changes_nothing_else(mode):
    vm, K, W, H = cameras()
    g = scene(mode, N=80)
    plain, more = render(g, mode, vm, K, W, H), render(g, mode, vm, K, W, H, distortion=True)
    assert plain.distortion is None
    for k in ("rgb", "alpha", "depth", "normals"):
        assert torch.equal(getattr(plain, k), getattr(more, k)), k


def _gradcheck(f, g: Gaussians) -> bool:
    names = [k for k in ("means", "opacities", "quats", "scales") if getattr(g, k) is not None]
    inputs = tuple(getattr(g, k).clone().requires_grad_() for k in names)
    return torch.autograd.gradcheck(lambda *xs: f(Gaussians(**dict(zip(names, xs)), colors=g.colors)), inputs,
                                    eps=1e-6, atol=1e-4, rtol=1e-3)


def test_distortion_gradcheck_float64():
    vm, K, W, H = cameras(C=2, W=8, H=7, dtype=torch.float64)
    g = scene("2d", N=4, seed=5, dtype=torch.float64)
    g.means = g.means * 0.3
    f = lambda x: render(x, "2d", vm, K, W, H, distortion=True).distortion
    assert float(f(g).max()) > 1e-3
    assert _gradcheck(f, g)


def test_normal_error_gradcheck_float64():
    """Through the surfels' normals and the depth's normals; the alpha weighting is not differentiated (2DGS), so
    the finite differences hold it at its value."""
    vm, K, W, H = cameras(C=1, W=8, H=7, dtype=torch.float64)
    g = scene("2d", N=4, seed=5, dtype=torch.float64)
    g.means = g.means * 0.3
    alpha = render(g, "2d", vm, K, W, H).alpha
    f = lambda x: normal_error(dataclasses.replace(render(x, "2d", vm, K, W, H), alpha=alpha))
    assert float((1 - f(g)).abs().max()) > 1e-2  # not the constant 1 of empty pixels
    assert _gradcheck(f, g)


def test_normal_error_vanishes_when_the_surfels_lie_in_the_surface():
    """Opaque surfels tiling a plane at 50 degrees: the depth's normals are the surfels' own, so the error is near 0
    inside the tiling (1 where nothing is drawn); turned 30 degrees out of the plane, it approaches 1 - cos 30."""
    g, vm, K, W, H, _, _, inside = plane_scene("2d", 0.0)
    inner = inside[0] > 0.5
    flat = normal_error(render(g, "2d", vm, K, W, H))[0]
    a = math.radians(30) / 2
    g.quats = torch.tensor([[math.cos(a), math.sin(a), 0.0, 0.0]]).expand_as(g.quats).clone()
    tilted = normal_error(render(g, "2d", vm, K, W, H))[0]
    assert float(flat[inner].mean()) < 0.03, float(flat[inner].mean())
    assert float(tilted[inner].mean()) > float(flat[inner].mean()) + 0.05, float(tilted[inner].mean())
    assert torch.equal(flat[0], torch.ones(W, dtype=flat.dtype))  # the top row: nothing drawn, no normal


@pytest.mark.parametrize("mode", ["3d", "2d_screen"])
@pytest.mark.parametrize("key", ["dist_lambda", "normal_lambda"])
def test_config_refuses_a_term_the_mode_cannot_have(mode, key):
    with pytest.raises(ConfigError) as e:
        make_config({"gaussian_mode": mode, key: 0.05}, "x.json")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"x.json: {key} 0.05 ") and f"mode '{mode}'" in msg, msg
    assert make_config({"gaussian_mode": mode, key: 0.0}).gaussian_mode == mode  # 0: off, allowed everywhere
    assert getattr(make_config({"gaussian_mode": "2d", key: 0.05}), key) == 0.05


def test_the_registry_decides_which_mode_has_a_term(monkeypatch):
    with pytest.raises(ConfigError):
        make_config({"gaussian_mode": "3d", "dist_lambda": 0.1})
    monkeypatch.setitem(modes.MODES, "3d", dataclasses.replace(modes.MODES["3d"], terms=("dist_lambda",)))
    assert make_config({"gaussian_mode": "3d", "dist_lambda": 0.1}).dist_lambda == 0.1
    assert modes.with_term("dist_lambda") == ["2d", "3d"] and modes.with_term("normal_lambda") == ["2d"]


@pytest.mark.parametrize("values", [{"dist_lambda": -1}, {"dist_start": 1.5}, {"normal_start": -0.1}])
def test_bad_term_values_are_refused(values):
    with pytest.raises(ConfigError, match=f"key '{next(iter(values))}'"):
        make_config({"gaussian_mode": "2d", **values})


def test_schedule_is_2dgs_as_a_fraction_of_the_steps():
    cfg = make_config({"gaussian_mode": "2d", "dist_lambda": 1.0, "normal_lambda": 1.0})
    assert (term_on(cfg.dist_start, 3000, 30000), term_on(cfg.dist_start, 3001, 30000)) == (False, True)
    assert (term_on(cfg.normal_start, 6999, 30000), term_on(cfg.normal_start, 7000, 30000)) == (False, True)
    assert geometry_terms(cfg, 10, 100) == (False, False) and geometry_terms(cfg, 11, 100) == (True, False)
    assert geometry_terms(cfg, 24, 100) == (True, True)
    off = make_config({"gaussian_mode": "2d"})
    assert geometry_terms(off, 100, 100) == (False, False)  # weight 0: never computed


def test_with_the_terms_off_the_loss_is_the_old_one_bit_for_bit():
    """The objective without 2DGS's terms is exactly 1 - IoU + img_lambda L1 (+ ssim_lambda (1 - SSIM)), the same
    floating-point operations in the same order as before the terms existed."""
    vm, K, W, H = cameras()
    g = scene("2d", N=80)
    out = render(g, "2d", vm, K, W, H)
    images, masks = torch.rand(3, H, W, 3), (torch.rand(3, H, W) > 0.5).float()
    for ssim in (0.0, 0.2):
        cfg = make_config({"gaussian_mode": "2d", "ssim_lambda": ssim, "img_lambda": 0.37})
        terms = loss_terms(out, images, masks, ssim)
        old = terms["iou_loss"] + cfg.img_lambda * terms["l1"]
        if ssim:
            old = old + cfg.ssim_lambda * terms["ssim_loss"]
        assert torch.equal(training_loss(cfg, terms), old)
    on = make_config({"gaussian_mode": "2d", "dist_lambda": 2.0, "normal_lambda": 3.0})
    both = loss_terms(render(g, "2d", vm, K, W, H, distortion=True), images, masks, 0.0, True, True)
    assert set(both) == {"iou_loss", "l1", "dist_loss", "normal_loss"}
    assert torch.equal(training_loss(on, both), both["iou_loss"] + 0.5 * both["l1"] + 2.0 * both["dist_loss"]
                       + 3.0 * both["normal_loss"])


def test_training_switches_the_terms_on_after_their_warm_up(small_dataset):
    """Two epochs of 3 steps with both terms starting after half of the 6 steps: the first epoch's loss equals a
    run without the terms bit for bit, the second differs and reports both terms."""
    base = tiny_values(small_dataset, eval_frames=1, steps_per_epoch=3, epochs=2, valid_every=2, gaussian_mode="2d")
    plain = train(make_config(base), progress=False)
    terms = train(make_config({**base, "dist_lambda": 5.0, "normal_lambda": 0.5, "dist_start": 0.5,
                               "normal_start": 0.5}), progress=False)
    assert terms[0]["train_loss"] == plain[0]["train_loss"]
    assert all(math.isnan(e[k]) for e in (plain[0], plain[1], terms[0]) for k in ("train_dist_loss",
                                                                                 "train_normal_loss"))
    assert terms[1]["train_dist_loss"] > 0 and 0 < terms[1]["train_normal_loss"] < 1
    assert terms[1]["train_loss"] != plain[1]["train_loss"]
