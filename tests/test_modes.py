"""The mode registry is the one source of truth: every mode's parts agree, and a new mode is one registry entry plus
its projection — config validation, the head, the model, rendering, training, the study's spaces, resources, the
analysis' order, plots and benchmarks then all take it without another edit."""

import dataclasses

import pytest
import torch

from posesplat import modes
from posesplat.config import ConfigError, make_config
from posesplat.head import GaussianHead
from posesplat.render import Gaussians, RenderError, render
from posesplat.render import project
from scenes import scene
from shared import tiny_config


def test_every_mode_has_a_projection_and_consistent_parts():
    assert set(project.PROJECTIONS) == set(modes.MODES)
    fields = set(Gaussians.__dataclass_fields__)
    for m in modes.MODES.values():
        assert set(m.fields) <= fields and {"means", "colors", "opacities"} <= set(m.fields), m.name
        assert list(m.head)[-2:] == ["colour", "opacity"] and m.head["offset"] == (2 if m.frame == "screen" else 3)
        assert m.head["scale"] == m.fields["scales"][0], m.name
        assert ("quat" in m.head) == ("quats" in m.fields) and ("angle" in m.head) == ("angles" in m.fields)
        assert ("offsets" in m.fields) == (m.frame == "screen")
        assert m.gsplat is not None or project.PROJECTIONS[m.name].kind == "conic", m.name
    assert modes.MODES["3d"].params_per_gaussian == 14 and modes.MODES["2d"].params_per_gaussian == 13
    assert modes.MODES["2d_screen"].params_per_gaussian == 9


ISO = modes.Mode(
    "3d_iso", "isotropic 3D", "isotropic 3D Gaussians: a sphere with one scale",
    head={"offset": 3, "scale": 1, "colour": 3, "opacity": 1},
    fields={"means": (3,), "colors": (3,), "opacities": (), "scales": (1,)},
    frame="world", scale_unit=0.5, random_rotation=False, gsplat=None, colour="C4",
)


def project_iso(g, viewmats, Ks, width, height):
    quats = torch.zeros(g.means.shape[0], 4, dtype=g.means.dtype)
    quats[:, 0] = 1
    return project.project_3d(g.means, quats, g.scales.expand(-1, 3), viewmats, Ks, width, height)


@pytest.fixture
def iso(monkeypatch):
    """The new mode: its registry entry and its projection, nothing else."""
    monkeypatch.setitem(modes.MODES, ISO.name, ISO)
    monkeypatch.setitem(project.PROJECTIONS, ISO.name, project.Projection("conic", project_iso))
    return ISO.name


def one_camera(W=48, H=40):
    vm = torch.eye(4)[None]
    vm[0, 2, 3] = 2.0
    return vm, torch.tensor([[[60.0, 0, W / 2], [0, 60.0, H / 2], [0, 0, 1]]]), W, H


def test_a_new_mode_renders_like_the_same_gaussians_in_3d(iso):
    gen = torch.Generator().manual_seed(0)
    n = 40
    means, colors = (torch.rand(n, 3, generator=gen) - 0.5) * 0.6, torch.rand(n, 3, generator=gen)
    opacities, s = 0.3 + 0.6 * torch.rand(n, generator=gen), 0.02 + 0.05 * torch.rand(n, 1, generator=gen)
    vm, K, W, H = one_camera()
    out = render(Gaussians(means=means, colors=colors, opacities=opacities, scales=s), iso, vm, K, W, H)
    quats = torch.tensor([[1.0, 0, 0, 0]]).expand(n, 4)
    ref = render(Gaussians(means=means, colors=colors, opacities=opacities, quats=quats, scales=s.expand(-1, 3)),
                 "3d", vm, K, W, H)
    assert out.alpha.max() > 0.5
    torch.testing.assert_close(out.rgb, ref.rgb)
    torch.testing.assert_close(out.alpha, ref.alpha)
    with pytest.raises(RenderError, match=r"Gaussians.scales has shape \[40, 3\], expected \[40, 1\] in mode '3d_iso'"):
        render(Gaussians(means=means, colors=colors, opacities=opacities, scales=s.expand(-1, 3)), iso, vm, K, W, H)


def zero_head(mode, X=4, voxel=0.05, px_per_voxel=3.0):
    """A freshly initialised head's Gaussians (its last layer is zero) on a random carved volume."""
    torch.manual_seed(0)
    head = GaussianHead(6, 8, mode)
    centres = torch.stack(torch.meshgrid(*[torch.linspace(-0.1, 0.1, X)] * 3, indexing="ij"), -1)
    g = head(torch.rand(6, X, X, X), torch.rand(5, X, X, X), centres, voxel=voxel, px_per_voxel=px_per_voxel,
             min_n=10, max_n=64)
    return g, centres.reshape(-1, 3)[g.index]


@pytest.mark.parametrize("mode, scale, frame_unit, quats, random_rotation", [
    ("3d", 0.5, "voxel", True, False), ("2d", 0.7, "voxel", True, True), ("2d_screen", 0.7, "px", False, False)])
def test_the_three_modes_start_as_before(mode, scale, frame_unit, quats, random_rotation):
    """What the registry now says, pinned to what head.py and model.py did by name before it: initial scales,
    means at the voxel centres (world) or anchors with zero pixel offsets (screen), identity or random rotations."""
    from posesplat.model import PoseSplatter

    g, centres = zero_head(mode)
    unit = 0.05 if frame_unit == "voxel" else 3.0
    torch.testing.assert_close(g.scales, torch.full_like(g.scales, scale * unit))
    torch.testing.assert_close(g.means, centres)
    assert (g.quats is not None) == quats and (g.offsets is not None) == (mode == "2d_screen")
    if quats:
        torch.testing.assert_close(g.quats, torch.tensor([[1.0, 0, 0, 0]]).expand_as(g.quats))
    else:
        assert g.angles.abs().max() == 0 and g.offsets.abs().max() == 0
    model = PoseSplatter(make_config({"gaussian_mode": mode, "grid_size": 8}), 0.2, [[0, 8]] * 3, 3.0)
    assert (model.base_quats is not None) == random_rotation


def test_a_new_mode_is_validated_and_its_head_emits_its_fields(iso):
    assert make_config({"gaussian_mode": iso}).gaussian_mode == iso
    with pytest.raises(ConfigError, match="gaussian_mode.*'4d'.*3d_iso"):
        make_config({"gaussian_mode": "4d"})
    g, _ = zero_head(iso)
    assert g.scales.shape == (g.means.shape[0], 1) and g.quats is None and g.offsets is None and g.angles is None
    torch.testing.assert_close(g.scales, torch.full_like(g.scales, 0.5 * 0.05))  # zero head: scale_unit voxels


def test_a_new_screen_frame_mode_gets_anchors_and_pixel_offsets(monkeypatch):
    disc = dataclasses.replace(ISO, name="screen_disc", frame="screen", scale_unit=1.5,
                               head={"offset": 2, "scale": 1, "colour": 3, "opacity": 1},
                               fields={"means": (3,), "colors": (3,), "opacities": (), "offsets": (2,), "scales": (1,)})
    monkeypatch.setitem(modes.MODES, disc.name, disc)
    g, centres = zero_head(disc.name)
    torch.testing.assert_close(g.means, centres)  # anchors: the offset is in pixels, added after projection
    assert g.offsets.shape == (g.means.shape[0], 2) and g.offsets.abs().max() == 0 and g.quats is None
    torch.testing.assert_close(g.scales, torch.full_like(g.scales, 1.5 * 3.0))  # scale_unit pixels per voxel


def test_gsplat_takes_each_modes_fields_as_its_rasteriser_needs():
    """The inputs the gsplat backend hands gsplat's own rasterisers (checked here on the CPU; the CUDA tests render)."""
    from posesplat.render.gsplat_backend import native_inputs

    g3, g2 = scene("3d"), scene("2d")
    quats, scales = native_inputs(g3, "3d", "rasterization")
    assert quats is g3.quats and scales is g3.scales
    quats, scales = native_inputs(g2, "2d", "rasterization_2dgs")
    assert torch.equal(scales[:, :2], g2.scales) and torch.equal(scales[:, 2], torch.ones(len(scales)))
    iso = Gaussians(means=g3.means, colors=g3.colors, opacities=g3.opacities, scales=g3.scales[:, :1])
    quats, scales = native_inputs(iso, "3d_iso", "rasterization")
    assert torch.equal(scales, g3.scales[:, :1].expand(-1, 3)) and torch.equal(quats[:, 0], torch.ones(len(quats)))
    with pytest.raises(RenderError, match="mode 'flat' has 2 scales, which gsplat.rasterization cannot take"):
        native_inputs(g2, "flat", "rasterization")


PAPER_KPIX = 288 * 256 / 1000


def test_a_new_mode_trains_and_the_study_takes_it(iso, small_dataset):
    from posesplat.train import train
    import pandas as pd

    from study.analysis import load

    from study.runner import resources
    from study.base.space import Space, load_space
    from bench.render import make_scene

    cfg = tiny_config(small_dataset, eval_frames=2, steps_per_epoch=6, epochs=4, lr_schedule="constant",
                      valid_every=4, gaussian_mode=iso)
    history = train(cfg, progress=False)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["params_per_gaussian"] == 8
    space = Space.model_validate({"name": "x", "modes": [iso, "3d"]})
    assert load_space("smoke", [iso]).modes[-1] == iso
    assert space.modes == [iso, "3d"]
    assert load.mode_order({iso, "3d", "2d"}) == ["2d", "3d", iso] and modes.colour(iso) == "C4"
    fitted = resources.load_model()
    with pytest.warns(UserWarning, match="no coefficients for mode '3d_iso'"):
        assert resources.peak_mb(iso, 32) == max(resources.peak_mb(m, 32, model=fitted) for m in fitted)
    rows = pd.DataFrame({"gaussian_mode": [iso] * 3, "grid_size": [16, 32, 48], "peak_mb": [110.0, 140.0, 220.0]})
    refitted = resources.refit(rows, 4096, fitted)
    assert refitted[iso].per_kvoxel_mb > 0 and resources.peak_mb(iso, 32, model=refitted) == pytest.approx(
        refitted[iso].base_mb + refitted[iso].per_kvoxel_mb * 32.768 + refitted[iso].per_kpixel_mb * PAPER_KPIX)
    assert resources.change_line(iso, fitted.get(iso), refitted[iso]).startswith("  3d_iso: new, base ")
    from study.analysis.page import report_title

    assert report_title([iso, "3d"]) == "isotropic 3D vs 3D Gaussian splatting: decision"
    g, f = make_scene(iso, 200, 64, torch.device("cpu"))
    assert g.scales.shape == (200, 1) and g.quats is None
