"""Projection of Gaussians into cameras, per mode, following gsplat's conventions exactly.

3d follows `gsplat.cuda._torch_impl._fully_fused_projection` (EWA, eps2d dilation, 3.33-sigma radii),
2d follows `gsplat.cuda._torch_impl_2dgs._fully_fused_projection_2dgs` (ray-splat transforms),
2d_screen projects an anchor and uses a camera-independent pixel-space covariance.
`PROJECTIONS` (at the end) gives each mode of posesplat.modes its projection: adding a mode adds one here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal

import torch
from torch import Tensor

from posesplat.pose import quat_to_rotmat

EPS2D = 0.3
NEAR, FAR = 0.01, 1e10


def quat_scale_to_matrix(quats: Tensor, scales: Tensor) -> Tensor:
    """R(q) @ diag(s): [N, 4], [N, 3] -> [N, 3, 3].

    Args:
        quats: [N, 4] rotations, wxyz (any norm).
        scales: [N, 3] scales along the rotated axes.
    Returns:
        M: [N, 3, 3] R(q) with its columns scaled; M M^T is the covariance.
    """
    return quat_to_rotmat(quats) * scales[:, None, :]


def world_to_cam(means: Tensor, viewmats: Tensor) -> Tensor:
    """[N, 3] world points -> [C, N, 3] camera coordinates.

    Args:
        means: [N, 3] world points.
        viewmats: [C, 4, 4] world-to-camera matrices (OpenCV axes).
    Returns:
        means_c: [C, N, 3] the points in each camera's coordinates.
    """
    return torch.einsum("cij,nj->cni", viewmats[:, :3, :3], means) + viewmats[:, None, :3, 3]


def _cull(radius: Tensor, means2d: Tensor, depths: Tensor, width: int, height: int, valid: Tensor) -> Tensor:
    """Zero the radii of Gaussians behind the near plane, degenerate, or entirely off-image."""
    valid = valid & (depths > NEAR) & (depths < FAR)
    inside = (
        (means2d[..., 0] + radius[..., 0] > 0) & (means2d[..., 0] - radius[..., 0] < width)
        & (means2d[..., 1] + radius[..., 1] > 0) & (means2d[..., 1] - radius[..., 1] < height)
    )
    return torch.where((valid & inside)[..., None], radius, torch.zeros_like(radius)).int()


def _conics_radii(cov2d: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Dilated [C, N, 2, 2] covariances -> conics [C, N, 3], radii (float) [C, N, 2], det [C, N]."""
    cov2d = cov2d + EPS2D * torch.eye(2, device=cov2d.device, dtype=cov2d.dtype)
    det = (cov2d[..., 0, 0] * cov2d[..., 1, 1] - cov2d[..., 0, 1] * cov2d[..., 1, 0]).clamp(min=1e-10)
    conics = torch.stack(
        [cov2d[..., 1, 1] / det, -(cov2d[..., 0, 1] + cov2d[..., 1, 0]) / 2.0 / det, cov2d[..., 0, 0] / det], dim=-1
    )
    radius = torch.stack(
        [torch.ceil(3.33 * cov2d[..., 0, 0].sqrt()), torch.ceil(3.33 * cov2d[..., 1, 1].sqrt())], dim=-1
    )
    return conics, radius.detach(), det


def project_3d(
    means: Tensor, quats: Tensor, scales: Tensor, viewmats: Tensor, Ks: Tensor, width: int, height: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """3D Gaussians -> radii [C,N,2] int, means2d [C,N,2], depths [C,N], conics [C,N,3].

    Args:
        means: [N, 3] world centres.
        quats: [N, 4] rotations, wxyz.
        scales: [N, 3] world standard deviations along the rotated axes.
        viewmats: [C, 4, 4] world-to-camera matrices (OpenCV axes).
        Ks: [C, 3, 3] pinhole intrinsics, in pixels.
        width: W, the image width in pixels.
        height: H, the image height in pixels.
    Returns:
        radii: [C, N, 2] int pixel radii, ceil(3.33 sigma) per axis; 0: culled (near plane, degenerate, off-image).
        means2d: [C, N, 2] projected centres, in pixels.
        depths: [C, N] camera z of the centres.
        conics: [C, N, 3] inverse 2D covariances (a, b, c), after the EPS2D dilation.
    """
    M = quat_scale_to_matrix(quats, scales)
    covars = M @ M.transpose(-1, -2)  # [N, 3, 3]
    R = viewmats[:, :3, :3]
    means_c = world_to_cam(means, viewmats)  # [C, N, 3]
    covars_c = torch.einsum("cij,njk,clk->cnil", R, covars, R)  # R Sigma R^T
    tx, ty, tz = means_c.unbind(-1)
    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    tan_fovx, tan_fovy = 0.5 * width / fx, 0.5 * height / fy
    lim_x_pos, lim_x_neg = (width - cx) / fx + 0.3 * tan_fovx, cx / fx + 0.3 * tan_fovx
    lim_y_pos, lim_y_neg = (height - cy) / fy + 0.3 * tan_fovy, cy / fy + 0.3 * tan_fovy
    txc = tz * torch.clamp(tx / tz, min=-lim_x_neg, max=lim_x_pos)
    tyc = tz * torch.clamp(ty / tz, min=-lim_y_neg, max=lim_y_pos)
    O = torch.zeros_like(tz)
    J = torch.stack([fx / tz, O, -fx * txc / tz**2, O, fy / tz, -fy * tyc / tz**2], dim=-1).reshape(*tz.shape, 2, 3)
    cov2d = J @ covars_c @ J.transpose(-1, -2)
    means2d = torch.einsum("cij,cnj->cni", Ks[:, :2, :3], means_c) / tz[..., None]
    conics, radius, det = _conics_radii(cov2d)
    return _cull(radius, means2d, tz, width, height, det > 0), means2d, tz, conics


def project_2dgs(
    means: Tensor, quats: Tensor, scales: Tensor, viewmats: Tensor, Ks: Tensor, width: int, height: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """2D surfels (scales [N, 2]) -> radii [C,N,2] int, means2d [C,N,2], depths [C,N], ray transforms [C,N,3,3].

    Args:
        means: [N, 3] world centres.
        quats: [N, 4] rotations, wxyz; the third axis is the surfel's normal.
        scales: [N, 2] world scales along the surfel's two in-plane axes.
        viewmats: [C, 4, 4] world-to-camera matrices (OpenCV axes).
        Ks: [C, 3, 3] pinhole intrinsics, in pixels.
        width: W, the image width in pixels.
        height: H, the image height in pixels.
    Returns:
        radii: [C, N, 2] int pixel radii, ceil(3.33 sigma) per axis; 0: culled (near plane, degenerate, off-image).
        means2d: [C, N, 2] projected centres, in pixels.
        depths: [C, N] camera z of the centres.
        ray_transforms: [C, N, 3, 3] K [s1 u, s2 v, p_c] per camera (gsplat's ray-splat transforms).
    """
    scales3 = torch.cat([scales, torch.ones_like(scales[:, :1])], dim=-1)
    RS_wl = quat_scale_to_matrix(quats, scales3)  # [N, 3, 3]
    means_c = world_to_cam(means, viewmats)  # [C, N, 3]
    RS_cl = torch.einsum("cij,njk->cnik", viewmats[:, :3, :3], RS_wl)  # [C, N, 3, 3]
    T_cl = torch.cat([RS_cl[..., :2], means_c[..., None]], dim=-1)  # columns s1 u, s2 v, p_c
    M = torch.einsum("cij,cnjk->cnik", Ks, T_cl).transpose(-1, -2)  # (W H)^T
    test = torch.tensor([1.0, 1.0, -1.0], device=means.device, dtype=means.dtype)
    d = (M[..., 2] * M[..., 2] * test).sum(-1, keepdim=True)  # [C, N, 1]
    valid = d.abs() > 0
    f = torch.where(valid, test / torch.where(valid, d, torch.ones_like(d)), torch.zeros_like(test))[..., None]
    means2d = (M[..., :2] * M[..., 2:3] * f).sum(-2)  # [C, N, 2]
    extents = (means2d**2 - (M[..., :2] * M[..., :2] * f).sum(-2)).clamp_min(1e-4).sqrt()
    radius = torch.ceil(3.33 * extents).detach()
    depths = means_c[..., 2]
    return _cull(radius, means2d, depths, width, height, valid[..., 0]), means2d, depths, M.transpose(-1, -2)


def project_screen(
    anchors: Tensor, offsets: Tensor, scales: Tensor, angles: Tensor, viewmats: Tensor, Ks: Tensor,
    width: int, height: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Screen-space Gaussians: projected anchors + pixel offsets, one pixel covariance for every camera.

    Args:
        anchors: [N, 3] world anchors.
        offsets: [N, 2] pixel offsets from the projected anchors.
        scales: [N, 2] pixel standard deviations along the rotated axes.
        angles: [N] in-image rotations, in radians.
        viewmats: [C, 4, 4] world-to-camera matrices (OpenCV axes).
        Ks: [C, 3, 3] pinhole intrinsics, in pixels.
        width: W, the image width in pixels.
        height: H, the image height in pixels.
    Returns:
        radii: [C, N, 2] int pixel radii, ceil(3.33 sigma) per axis; 0: culled (near plane, degenerate, off-image).
        means2d: [C, N, 2] projected centres, in pixels.
        depths: [C, N] camera z of the anchors.
        conics: [C, N, 3] inverse 2D covariances (a, b, c), after the EPS2D dilation.
    """
    means_c = world_to_cam(anchors, viewmats)
    tz = means_c[..., 2]
    means2d = torch.einsum("cij,cnj->cni", Ks[:, :2, :3], means_c) / tz[..., None] + offsets
    c, s = torch.cos(angles), torch.sin(angles)
    R = torch.stack([c, -s, s, c], dim=-1).reshape(-1, 2, 2)
    RS = R * scales[:, None, :]
    cov2d = (RS @ RS.transpose(-1, -2)).expand(viewmats.shape[0], -1, -1, -1)
    conics, radius, det = _conics_radii(cov2d)
    return _cull(radius, means2d, tz, width, height, det > 0), means2d, tz, conics


def surfel_normals(quats: Tensor, means: Tensor, viewmats: Tensor) -> Tensor:
    """World normals [C, N, 3] of surfels (their rotation's third axis), each turned to face the camera (2DGS).

    Args:
        quats: [N, 4] surfel rotations, wxyz.
        means: [N, 3] world centres.
        viewmats: [C, 4, 4] world-to-camera matrices (OpenCV axes).
    Returns:
        normals: [C, N, 3] world unit normals, each facing camera c.
    """
    n = quat_to_rotmat(quats)[:, :, 2]  # [N, 3]
    cam = -torch.einsum("cji,cj->ci", viewmats[:, :3, :3], viewmats[:, :3, 3])  # camera centres [C, 3]
    facing = ((means[None] - cam[:, None]) * n[None]).sum(-1, keepdim=True)  # [C, N, 1]; > 0: faces away
    return torch.where(facing > 0, -n[None], n[None])


def depth_to_points(depth: Tensor, viewmats: Tensor, Ks: Tensor) -> Tensor:
    """World points [C, H, W, 3] at z-depth [C, H, W] through the pixel centres (u = j + 0.5, v = i + 0.5).

    Args:
        depth: [C, H, W] camera z per pixel.
        viewmats: [C, 4, 4] world-to-camera matrices (OpenCV axes).
        Ks: [C, 3, 3] pinhole intrinsics, in pixels.
    Returns:
        points: [C, H, W, 3] world points.
    """
    C, H, W = depth.shape
    i, j = torch.meshgrid(torch.arange(H, device=depth.device, dtype=depth.dtype) + 0.5,
                          torch.arange(W, device=depth.device, dtype=depth.dtype) + 0.5, indexing="ij")
    K = Ks.to(depth.dtype)
    x = (j - K[:, 0, 2, None, None]) / K[:, 0, 0, None, None]  # [C, H, W]
    y = (i - K[:, 1, 2, None, None]) / K[:, 1, 1, None, None]
    cam = torch.stack([x, y, torch.ones_like(x)], -1) * depth[..., None]  # camera coordinates [C, H, W, 3]
    R, t = viewmats[:, :3, :3].to(depth.dtype), viewmats[:, :3, 3].to(depth.dtype)
    return torch.einsum("cji,chwj->chwi", R, cam - t[:, None, None])  # R^T (x_cam - t)


def depth_to_normal(depth: Tensor, viewmats: Tensor, Ks: Tensor) -> Tensor:
    """World normals [C, H, W, 3] of a z-depth map [C, H, W] by central differences of its back-projected points
    (gsplat's `depth_to_normal`): facing the camera, 0 on the image border.

    Args:
        depth: [C, H, W] camera z per pixel.
        viewmats: [C, 4, 4] world-to-camera matrices (OpenCV axes).
        Ks: [C, 3, 3] pinhole intrinsics, in pixels.
    Returns:
        normals: [C, H, W, 3] world unit normals; 0 on the one-pixel image border.
    """
    P = depth_to_points(depth, viewmats, Ks)
    down = P[:, 2:, 1:-1] - P[:, :-2, 1:-1]  # [C, H-2, W-2, 3]
    right = P[:, 1:-1, 2:] - P[:, 1:-1, :-2]
    n = torch.nn.functional.normalize(torch.linalg.cross(down, right, dim=-1), dim=-1)
    return torch.nn.functional.pad(n, (0, 0, 1, 1, 1, 1))


@dataclass(frozen=True)
class Projection:
    """How one mode projects. `kind` picks the rasteriser's alpha ("conic": a pixel-space Gaussian; "surfel": a
    ray-splat intersection). `fn(g, viewmats, Ks, width, height)` -> radii [C,N,2] int, means2d [C,N,2],
    depths [C,N], and conics [C,N,3] ("conic") or ray transforms [C,N,3,3] ("surfel"). g: render.Gaussians."""

    kind: Literal["conic", "surfel"]
    fn: Callable[[Any, Tensor, Tensor, int, int], tuple[Tensor, Tensor, Tensor, Tensor]]


PROJECTIONS: dict[str, Projection] = {
    "3d": Projection("conic", lambda g, vm, K, w, h: project_3d(g.means, g.quats, g.scales, vm, K, w, h)),
    "2d": Projection("surfel", lambda g, vm, K, w, h: project_2dgs(g.means, g.quats, g.scales, vm, K, w, h)),
    "2d_screen": Projection(
        "conic", lambda g, vm, K, w, h: project_screen(g.means, g.offsets, g.scales, g.angles, vm, K, w, h)),
}
