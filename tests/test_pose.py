"""The quaternion pose transform equals the rotation-matrix result, with no eigendecomposition."""

import math

import pytest
import torch

from posesplat.pose import local_to_world, quat_multiply, quat_to_rotmat, yaw_quat, yaw_rotmat
from shared import TINY_MODEL

EIGEN = [(torch.linalg, n) for n in ("eigh", "eig", "eigvals", "eigvalsh", "svd", "svdvals")] + [
    (torch, n) for n in ("svd",)] + [(torch.Tensor, "svd")]


@pytest.fixture
def no_eigendecomposition(monkeypatch):
    """Any eigen- or singular-value decomposition raises while the fixture is active."""
    for owner, name in EIGEN:
        def refuse(*args, _name=name, **kw):
            raise AssertionError(f"{_name} was called: the pose path must not decompose matrices")

        monkeypatch.setattr(owner, name, refuse)


def test_quaternion_pose_equals_matrix_pose(no_eigendecomposition):
    torch.manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(500, 4, dtype=torch.float64), dim=-1)
    means = torch.randn(500, 3, dtype=torch.float64)
    centre = torch.tensor([0.1, -0.2, 0.05], dtype=torch.float64)
    heading = torch.tensor(1.234, dtype=torch.float64)
    means_w, quats_w = local_to_world(means, q, centre, heading)
    Rz = yaw_rotmat(heading)
    assert torch.allclose(means_w, means @ Rz.T + centre)
    assert torch.allclose(quat_to_rotmat(quats_w), Rz @ quat_to_rotmat(q), atol=1e-12)


def test_quaternion_basics():
    h = torch.tensor([0.0, math.pi / 2, -2.0])
    assert torch.allclose(quat_to_rotmat(yaw_quat(h)), yaw_rotmat(h), atol=1e-6)
    a = torch.nn.functional.normalize(torch.randn(10, 4), dim=-1)
    b = torch.nn.functional.normalize(torch.randn(10, 4), dim=-1)
    assert torch.allclose(quat_to_rotmat(quat_multiply(a, b)), quat_to_rotmat(a) @ quat_to_rotmat(b), atol=1e-5)
    # 90 degrees of yaw takes +x to +y
    assert torch.allclose(yaw_rotmat(torch.tensor(math.pi / 2)) @ torch.tensor([1.0, 0, 0]), torch.tensor([0.0, 1, 0]), atol=1e-6)


def test_refusal_is_armed(no_eigendecomposition):
    """The fixture really intercepts the decompositions (else the tests above could not fail)."""
    with pytest.raises(AssertionError, match="eigh was called"):
        torch.linalg.eigh(torch.eye(3))


@pytest.mark.parametrize("mode", ["3d", "2d", "2d_screen"])
def test_model_forward_and_backward_use_no_eigendecomposition(small_dataset, no_eigendecomposition, mode):
    """A real frame through carve -> U-Net -> head -> pose -> world Gaussians, and the gradient back through it."""
    from posesplat.config import make_config
    from posesplat.data import open_dataset
    from posesplat.model import PoseSplatter

    cfg = make_config({"dataset": str(small_dataset), **TINY_MODEL, "gaussian_mode": mode})
    ds = open_dataset(small_dataset)
    b = ds.load(0, [0, 2, 3, 5], 1)
    torch.manual_seed(0)
    model = PoseSplatter(cfg, ds.ell, [[0, 16], [0, 16], [0, 16]], px_per_voxel=2.0)
    g = model(b["images"], b["masks"], b["viewmats"], b["Ks"], b["centre"], b["heading"])
    assert g.means.shape[0] >= 50 and torch.isfinite(g.means).all()
    if mode != "2d_screen":
        assert torch.allclose(g.quats.norm(dim=-1), torch.ones(len(g.quats)), atol=1e-5)
    (g.means.sum() + g.opacities.sum()).backward()
    assert all(p.grad is not None for p in model.head.parameters())
