"""The synthetic generator: determinism, exact geometry, the carving cube, atomic writes and the CLI."""

from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from posesplat.data import inside_body, open_dataset
from posesplat.synth import main, make_dataset

ARRAYS = ["images", "masks", "intrinsics", "extrinsics", "centre", "heading", "holdout_views", "gt/params", "gt/kind"]


def tiny(path: Path, seed: int = 0) -> Path:
    return make_dataset(path, frames=12, views=6, height=48, width=48, seed=seed, progress=False)


def chunk_bytes(store: Path) -> dict[str, bytes]:
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_bytes(tmp_path):
    a, b = tiny(tmp_path / "a.zarr", seed=5), tiny(tmp_path / "b.zarr", seed=5)
    assert chunk_bytes(a) == chunk_bytes(b)
    assert len([k for k in chunk_bytes(a) if k.startswith("images/c/")]) == 12  # one chunk per frame


def test_different_seed_differs(tmp_path):
    a = zarr.open_group(tiny(tmp_path / "a.zarr", 1), mode="r")
    b = zarr.open_group(tiny(tmp_path / "b.zarr", 2), mode="r")
    for name in ("images", "masks", "centre", "heading", "gt/params"):
        assert not np.array_equal(a[name][:], b[name][:]), name
    np.testing.assert_array_equal(a["extrinsics"][:], b["extrinsics"][:])  # the rig does not depend on the seed


def test_store_layout(small_dataset):
    root = zarr.open_group(str(small_dataset), mode="r")
    assert root.metadata.zarr_format == 3
    for name in ARRAYS:
        assert name in root, name
    assert root["images"].dtype == np.uint8 and root["images"].chunks == (1, 6, 64, 64, 3)
    assert root["masks"].dtype == np.uint8 and root["masks"].chunks == (1, 6, 64, 64)
    assert root["intrinsics"].dtype == np.float64 and root["extrinsics"].shape == (6, 4, 4)
    assert root["holdout_views"][:].tolist() == [1, 4]
    attrs = dict(root.attrs)
    assert attrs["args"] == {"frames": 24, "views": 6, "height": 64, "width": 64, "seed": 3, "holdout": [1, 4]}
    assert (attrs["generator"], attrs["up"], attrs["units"], attrs["background"]) == (
        "posesplat.synth", [0.0, 0.0, 1.0], "m", [0.0, 0.0, 0.0])
    assert set(np.unique(root["masks"][:])) == {0, 1}


def test_animal_size_stands_on_floor_and_is_textured(small_dataset):
    ds = open_dataset(small_dataset)
    params = np.stack([ds.gt(f) for f in range(ds.n_frames)])
    assert 0.0 <= params[:, :, 2].min() and params[:, 0, 7].max() * 2 == pytest.approx(0.09, abs=0.02)  # body ~9 cm
    masks = np.asarray(ds.root["masks"][:], dtype=bool)
    width_frac = masks.any(axis=2).sum(-1).mean() / ds.width
    assert 0.25 < width_frac < 0.6, width_frac  # body plus tail spans roughly a third of the image
    assert not masks[..., 0, :].any() and not masks[..., -1, :].any()  # never cut by the image border
    img = ds.root["images"][:]
    assert img[~masks].max() == 0  # black background
    lum = img[masks].astype(float).mean(-1)
    assert lum.std() > 15 and len(np.unique(img[masks], axis=0)) > 200  # shading, parts and stripes


def test_ell_cube_holds_the_animal(small_dataset):
    ds = open_dataset(small_dataset)
    half = ds.ell / 2
    g = np.linspace(-half * 1.5, half * 1.5, 48)
    local = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)
    for f in range(ds.n_frames):
        c, s = np.cos(ds.heading[f]), np.sin(ds.heading[f])
        world = local @ np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]).T + ds.centre[f]
        inside = inside_body(ds.gt(f), world, ds.gt_kinds())
        assert inside.sum() > 100
        assert np.abs(local[inside]).max() < 0.9 * half, f  # margin of a tenth of the half-side


def project(K, E, pts):
    cam = pts @ E[:3, :3].T + E[:3, 3]
    uv = cam @ K.T
    return uv[:, :2] / uv[:, 2:], cam[:, 2]


def test_points_inside_the_body_project_into_every_mask(small_dataset):
    ds = open_dataset(small_dataset)
    rng = np.random.default_rng(0)
    for f in range(0, ds.n_frames, 5):
        gt = ds.gt(f).astype(np.float64)
        core = gt.copy()
        core[:2, 7:10] *= 0.5  # the body's and head's cores: more than a pixel inside the surface
        pts = ds.centre[f] + rng.uniform(-0.06, 0.06, size=(20000, 3))
        pts = pts[inside_body(core[:2], pts, ds.gt_kinds()[:2])]
        assert len(pts) > 100
        masks = ds.root["masks"][f]
        for c in range(ds.n_views):
            uv, z = project(ds.intrinsics[c], ds.extrinsics[c], pts)
            assert (z > 0).all()
            j, i = np.floor(uv).astype(int).T  # pixel (i, j) covers [j, j+1) x [i, i+1)
            assert masks[c][i, j].all(), (f, c)


def dilate(mask: np.ndarray, r: int) -> np.ndarray:
    """Binary dilation of [H, W] by a (2r+1)^2 square."""
    out = np.zeros_like(mask)
    padded = np.pad(mask, r)
    for di in range(2 * r + 1):
        for dj in range(2 * r + 1):
            out |= padded[di: di + mask.shape[0], dj: dj + mask.shape[1]]
    return out


def test_pixel_rays_agree_with_the_mask_exactly(small_dataset):
    """A background pixel's centre ray never enters the body; a foreground pixel's almost always does."""
    ds = open_dataset(small_dataset)
    j, i = np.meshgrid(np.arange(ds.width) + 0.5, np.arange(ds.height) + 0.5)
    pix = np.stack([j.ravel(), i.ravel(), np.ones(j.size)], 1)
    depth = np.linspace(-0.13, 0.13, 520)  # 0.5 mm steps across the animal
    for f in (0, 23):
        gt, kinds = ds.gt(f), ds.gt_kinds()
        for c in range(ds.n_views):
            mask = ds.root["masks"][f, c].astype(bool)
            near = dilate(mask, 3).ravel()  # the foreground and a 3-pixel ring of background around it
            K, E = ds.intrinsics[c], ds.extrinsics[c]
            origin = -E[:3, :3].T @ E[:3, 3]
            d = (pix[near] @ np.linalg.inv(K).T) @ E[:3, :3]
            d /= np.linalg.norm(d, axis=1, keepdims=True)
            t0 = (ds.centre[f] - origin) @ d.T  # the ray's closest approach to the animal centre
            pts = origin + (t0[:, None, None] + depth[None, :, None]) * d[:, None, :]
            hit = inside_body(gt, pts.reshape(-1, 3), kinds).reshape(len(d), -1).any(1)
            fg = mask.ravel()[near]
            assert (~fg).sum() > 100
            assert not (hit & ~fg).any(), (f, c)  # exact: no background ray enters the body
            assert (hit & fg).sum() >= 0.97 * fg.sum(), (f, c)  # grazing rays can slip between samples


def test_refuses_to_overwrite_and_leaves_no_temporary(tmp_path, capsys):
    out = tiny(tmp_path / "a.zarr")
    before = chunk_bytes(out)
    with pytest.raises(FileExistsError, match="a.zarr"):
        tiny(out)
    assert main(["--out", str(out), "--frames", "4", "--height", "32", "--width", "32"]) == 2
    err = capsys.readouterr().err.strip()
    assert "a.zarr" in err and "--force" in err and len(err.splitlines()) == 1
    assert chunk_bytes(out) == before
    assert main(["--out", str(out), "--frames", "4", "--height", "32", "--width", "32", "--force"]) == 0
    assert open_dataset(out).n_frames == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zarr"]


def test_cli_rejects_bad_holdout(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "x.zarr"), "--views", "4", "--holdout", "4", "--frames", "3"]) == 2
    assert "holdout" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_walk_is_smooth_and_forwards(small_dataset):
    ds = open_dataset(small_dataset)
    turn = np.abs(np.diff(ds.heading))
    assert turn.max() <= 4.0 / 30 + 1e-9  # at most 4 rad/s: the heading never jumps
    step = np.diff(ds.centre[:, :2], axis=0)
    facing = np.stack([np.cos(ds.heading[:-1]), np.sin(ds.heading[:-1])], 1)
    assert ((step * facing).sum(1) > 0.9 * np.linalg.norm(step, axis=1)).all()  # it moves where it faces
    assert np.linalg.norm(ds.centre[:, :2], axis=1).max() <= 0.05 + 1e-9 and np.ptp(ds.centre[:, 2]) == 0


def test_raw_recording_refuses_odd_sizes(tmp_path):
    from posesplat.synth import SynthError, make_raw

    with pytest.raises(SynthError, match="must be even"):
        make_raw(tmp_path / "raw", frames=3, views=3, height=33, width=32, progress=False)
    assert not list(tmp_path.iterdir())


def test_force_replaces_only_what_posesplat_wrote(tmp_path, capsys):
    """--force on a folder of the user's (or on data/, which holds a store) is refused with one line and deletes
    nothing; on a store posesplat wrote it replaces it."""
    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "chapter1.tex").write_text("keep me")
    data = tmp_path / "data"
    tiny(data / "a.zarr")
    for target in (mine, data):
        assert main(["--out", str(target), "--frames", "4", "--height", "32", "--width", "32", "--force"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "--force replaces only what posesplat wrote" in err, err
    assert (mine / "chapter1.tex").read_text() == "keep me"
    assert open_dataset(data / "a.zarr").n_frames == 12
    assert main(["--out", str(data / "a.zarr"), "--frames", "4", "--height", "32", "--width", "32", "--force"]) == 0
    assert open_dataset(data / "a.zarr").n_frames == 4  # a store posesplat wrote is replaced
    assert main(["--raw", str(mine), "--frames", "4", "--height", "32", "--width", "32", "--force"]) == 2
    assert "synthetic raw recording" in capsys.readouterr().err
    assert (mine / "chapter1.tex").read_text() == "keep me"


def test_read_only_folder_is_one_line(tmp_path, capsys):
    import os

    if os.geteuid() == 0:  # root writes anywhere: make the parent a file instead, which nobody can write into
        parent = tmp_path / "file"
        parent.write_text("x")
    else:
        parent = tmp_path / "ro"
        parent.mkdir()
        parent.chmod(0o500)
    rc = main(["--out", str(parent / "a.zarr"), "--frames", "4", "--height", "32", "--width", "32"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and str(parent) in err, err


def test_true_depth_and_normals_lie_on_the_body_surface(small_dataset):
    """gt/depth is set exactly on the mask; its back-projected points lie on the body's surface (just outside along
    the ray: outside, 0.2 mm further: inside), and gt/normal is the unit outward normal there, facing the camera."""
    from posesplat.render.project import depth_to_points

    ds = open_dataset(small_dataset)
    assert ds.attrs["format_version"] == 2 and ds.geometry_note is None
    f = 5
    depth, normal = ds.gt_geometry(f, range(ds.n_views))
    masks = ds.root["masks"][f].astype(bool)
    assert np.array_equal(depth.numpy() > 0, masks)
    vm, K = torch.from_numpy(ds.extrinsics), torch.from_numpy(ds.intrinsics)
    pts = depth_to_points(depth.double(), vm, K)[torch.from_numpy(masks)].numpy()  # [N, 3]
    n = normal[torch.from_numpy(masks)].double().numpy()
    np.testing.assert_allclose(np.linalg.norm(n, axis=1), 1, atol=1e-5)
    cams = -np.einsum("cji,cj->ci", ds.extrinsics[:, :3, :3], ds.extrinsics[:, :3, 3])
    cam = np.broadcast_to(cams[:, None, None], masks.shape + (3,))[masks]
    ray = (pts - cam) / np.linalg.norm(pts - cam, axis=1, keepdims=True)
    assert ((n * ray).sum(1) < 1e-6).all()  # outward normals face the camera that sees them
    gt, kinds = ds.gt(f), ds.gt_kinds()
    assert inside_body(gt, pts + 2e-4 * ray, kinds).mean() > 0.99
    assert inside_body(gt, pts - 2e-4 * ray, kinds).mean() < 0.01
    assert inside_body(gt, pts - 2e-4 * n, kinds).mean() > 0.99  # stepping against the normal goes in
