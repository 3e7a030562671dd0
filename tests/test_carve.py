"""Shape carving's rule for views that do not see a cell: a sphere seen by three cameras, one of which it leaves."""

import math

import torch

from posesplat.carve import carve, touches_border


def look_at(eye: torch.Tensor) -> torch.Tensor:
    """World-to-camera [4, 4] of a camera at `eye` looking at the origin (OpenCV axes, world z up)."""
    z = -eye / eye.norm()
    x = torch.linalg.cross(z, torch.tensor([0.0, 0.0, 1.0]))
    x = x / x.norm()
    y = torch.linalg.cross(z, x)
    R = torch.stack([x, y, z])
    E = torch.eye(4)
    E[:3, :3], E[:3, 3] = R, -R @ eye
    return E


def sphere_masks(Es, K, H, W, radius=0.05) -> torch.Tensor:
    """Exact silhouettes [V, H, W] of a sphere at the origin (pixel centres tested)."""
    v, u = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    rays = torch.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], torch.ones_like(u)], -1)
    out = []
    for E in Es:
        d = rays @ E[:3, :3]  # world ray directions
        d = d / d.norm(dim=-1, keepdim=True)
        eye = -E[:3, :3].T @ E[:3, 3]
        b = d @ eye
        out.append((b * b - (eye @ eye - radius**2) >= 0).float())
    return torch.stack(out)


def rig():
    H = W = 48
    K = torch.tensor([[60.0, 0, 24], [0, 60.0, 24], [0, 0, 1]])
    eyes = [torch.tensor([0.5 * math.cos(a), 0.5 * math.sin(a), 0.3]) for a in (0.0, 2.1, 4.2)]
    return torch.stack([look_at(e) for e in eyes]), K, H, W


def hull_of(masks, Es, K, H, W):
    images = torch.zeros(*masks.shape, 3)
    return carve(images, masks, Es, K.expand(len(Es), 3, 3), torch.zeros(3), torch.tensor(0.0), 24, 0.16)[0]


def test_a_view_the_animal_leaves_does_not_cut_it():
    Es, K, H, W = rig()
    masks = sphere_masks(Es, K, H, W)
    full = hull_of(masks, Es, K, H, W)
    K0 = K.clone()
    K0[0, 2] = 46.0  # camera 0 looks to one side: the sphere now crosses its image's right edge
    Ks = torch.stack([K0, K, K])
    moved = torch.stack([sphere_masks(Es[:1], K0, H, W)[0], masks[1], masks[2]])
    assert touches_border(moved).tolist() == [1.0, 0.0, 0.0]
    images = torch.zeros(3, H, W, 3)
    left = carve(images, moved, Es, Ks, torch.zeros(3), torch.tensor(0.0), 24, 0.16)[0]
    kept = float((left > 0.5)[full > 0.5].float().mean())
    assert kept > 0.99, kept  # every cell of the sphere's hull survives (outside camera 0's image only two views say)
    # the same view with its border pixels blanked claims to see the whole animal: then it cuts the sphere
    cleared = moved.clone()
    cleared[0, :, -2:] = 0
    cut = carve(images, cleared, Es, Ks, torch.zeros(3), torch.tensor(0.0), 24, 0.16)[0]
    assert float((cut > 0.5)[full > 0.5].float().mean()) < 0.8


def test_a_view_that_sees_the_whole_animal_carves_outside_its_image():
    Es, K, H, W = rig()
    masks = sphere_masks(Es, K, H, W)
    hull = hull_of(masks, Es, K, H, W) > 0.5
    # the hull is the sphere's (radius 0.05 in a 0.16 cube of 24 cells): no cell far from it survives
    axis = (torch.arange(24) + 0.5) / 24 * 0.16 - 0.08
    r = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).norm(dim=-1)
    assert hull[r < 0.04].all() and not hull[r > 0.075].any()


def test_a_cell_needs_two_views_with_a_say():
    Es, K, H, W = rig()
    masks = sphere_masks(Es[:1], K, H, W)
    masks[0, :, 0] = 1  # one view, touching its border: nothing can be carved with one say
    images = torch.zeros(1, H, W, 3)
    one = carve(images, masks, Es[:1], K[None], torch.zeros(3), torch.tensor(0.0), 24, 0.16)[0]
    assert float(one.max()) == 1.0  # min(2, V) = 1 view suffices when there is only one


def test_a_view_that_lost_the_animal_has_no_say():
    Es, K, H, W = rig()
    masks = sphere_masks(Es, K, H, W)
    two = hull_of(masks[1:], Es[1:], K, H, W)
    lost = masks.clone()
    lost[0] = 0  # camera 0's segmentation lost the animal in this frame (as prep's tracking treats it)
    assert torch.equal(hull_of(lost, Es, K, H, W) > 0.5, two > 0.5) and float((two > 0.5).sum()) > 100


def test_a_crop_range_is_widened_to_a_multiple_of_four_within_the_axis():
    """find_volume_idx's and the importer's crops share `widened`: the range grows to a multiple of 4 cells, upwards
    first, never past the axis, and keeps every cell it had; an axis too short stays whole."""
    from posesplat.carve import widened

    assert widened(3, 9, 32) == [3, 11]
    assert widened(30, 32, 32) == [28, 32]  # at the top: grows downwards
    assert widened(0, 31, 31) == [0, 31]  # the whole axis, not a multiple
    for lo in range(0, 20):
        for hi in range(lo + 1, 21):
            a, b = widened(lo, hi, 20)
            assert 0 <= a <= lo < hi <= b <= 20 and ((b - a) % 4 == 0 or (a, b) == (0, 20))
