"""The quaternion pose transform equals the rotation-matrix result, with no eigendecomposition."""

import math

import torch

from posesplat.pose import local_to_world, quat_multiply, quat_to_rotmat, yaw_quat, yaw_rotmat


def test_quaternion_pose_equals_matrix_pose():
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
