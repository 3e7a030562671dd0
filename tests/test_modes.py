"""The mode registry is the one source of truth: every mode's parts agree, and a new mode is one registry entry plus
its projection — config validation, the head, the model, rendering, training, the study's spaces, resources, the
analysis' order, plots and benchmarks then all take it without another edit."""

import pytest
import torch

from posesplat import modes
from posesplat.config import ConfigError, make_config
from posesplat.head import GaussianHead
from posesplat.render import Gaussians, RenderError, render
from posesplat.render import project


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
    torch.testing.assert_close(out.rgb, ref.rgb) and torch.testing.assert_close(out.alpha, ref.alpha)
    with pytest.raises(RenderError, match=r"Gaussians.scales has shape \[40, 3\], expected \[40, 1\] in mode '3d_iso'"):
        render(Gaussians(means=means, colors=colors, opacities=opacities, scales=s.expand(-1, 3)), iso, vm, K, W, H)


def test_a_new_mode_is_validated_and_its_head_emits_its_fields(iso):
    assert make_config({"gaussian_mode": iso}).gaussian_mode == iso
    with pytest.raises(ConfigError, match="gaussian_mode.*'4d'.*3d_iso"):
        make_config({"gaussian_mode": "4d"})
    head = GaussianHead(6, 8, iso)
    X = 4
    carved = torch.rand(5, X, X, X)
    centres = torch.stack(torch.meshgrid(*[torch.linspace(-0.1, 0.1, X)] * 3, indexing="ij"), -1)
    g = head(torch.rand(6, X, X, X), carved, centres, voxel=0.05, px_per_voxel=3.0, min_n=10, max_n=64)
    assert g.scales.shape == (g.means.shape[0], 1) and g.quats is None and g.offsets is None and g.angles is None
    torch.testing.assert_close(g.scales, torch.full_like(g.scales, 0.5 * 0.05))  # zero head: scale_unit voxels


def test_a_new_mode_trains_and_the_study_takes_it(iso, small_dataset):
    from posesplat.train import train
    from study import load, resources
    from study.space import Space, load_space
    from bench.render import make_scene

    cfg = make_config(dict(dataset=str(small_dataset), image_downsample=1, grid_size=16, base_filters=4, min_n=50,
                           max_n=2000, max_frames=12, eval_frames=2, steps_per_epoch=6, epochs=4, lr=3e-3,
                           lr_schedule="constant", valid_every=4, gaussian_mode=iso))
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
    from study.report import report_title

    assert report_title([iso, "3d"]) == "isotropic 3D vs 3D Gaussian splatting: decision"
    g, f = make_scene(iso, 200, 64, torch.device("cpu"))
    assert g.scales.shape == (200, 1) and g.quats is None
