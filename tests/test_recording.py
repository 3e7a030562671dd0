"""The test-data generator tests/recording.py itself: its files are what its ground truth says (no posesplat here)."""

import json
import sys
from pathlib import Path

import h5py
import imageio_ffmpeg
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from recording import Recording, make_recording, ps_normalised_unit, rot_z  # noqa: E402


def read_video(path: Path) -> tuple[dict, np.ndarray]:
    gen = imageio_ffmpeg.read_frames(str(path))
    meta = next(gen)
    w, h = meta["size"]
    frames = np.stack([np.frombuffer(b, np.uint8).reshape(h, w, 3) for b in gen])
    return meta, frames


def masks(rec: Recording, view: int) -> np.ndarray:
    return read_video(rec.folder / "mask_videos" / f"{view + 1}.mp4")[1][..., 0] > 127


@pytest.fixture(scope="module")
def rec(tmp_path_factory) -> Recording:
    return make_recording(tmp_path_factory.mktemp("rec") / "plain", seed=1)


@pytest.fixture(scope="module")
def rec_leave(tmp_path_factory) -> Recording:
    return make_recording(tmp_path_factory.mktemp("rec") / "leave", frames=30, views=5, width=64, height=48,
                          fps=25.0, config_fps=24.0, lengths=[30, 26, 30, 22, 30], leave_view=2,
                          holdout_views=[4], unit_m=0.01, tilt_deg=40.0, frame_jump=2, image_downsample=2,
                          extra_keys={"lr": None, "vertical_lines_fn": "lines.npz"}, seed=7)


@pytest.mark.parametrize("which", ["rec", "rec_leave"])
def test_centre_projects_onto_mask(which, request):
    """(1) The true body centre, mapped world -> calibration and projected with K [R | t] from the HDF5, lands on the
    decoded mask in every frame of every fully-seeing view; body points mostly land on it too."""
    r: Recording = request.getfixturevalue(which)
    with h5py.File(r.folder / "camera_params.h5", "r") as f:
        g = f["camera_parameters"]
        Rs, ts, Ks = g["rotation"][()], g["translation"][()], g["intrinsic"][()]
    np.testing.assert_array_equal(Rs, r.Rs)
    np.testing.assert_array_equal(ts, r.ts)
    np.testing.assert_array_equal(Ks, r.Ks)
    for c in range(r.views):
        m = masks(r, c)
        assert len(m) == r.lengths[c]
        if c == r.leave_view:
            assert r.cut[c].mean() > 0.25 and r.visible[c].mean() > 0.25
            continue
        assert r.visible[c].all()
        grown = m.copy()  # the mask grown by a pixel
        for dv in (-1, 0, 1):
            for du in (-1, 0, 1):
                grown |= np.roll(m, (dv, du), axis=(1, 2))
        for j in range(len(m)):
            x = r.to_calib(r.centre[j]) @ Rs[c].T + ts[c]
            u, v = (Ks[c] @ x)[:2] / x[2]
            assert m[j, int(round(v)), int(round(u))], (c, j, u, v)
            uv = np.round(r.project(c, r.body_points(j, 300, seed=j))).astype(int)
            assert m[j, uv[:, 1], uv[:, 0]].mean() > 0.9  # misses: the points near the silhouette's edge
            assert grown[j, uv[:, 1], uv[:, 0]].all()
        # the background is not black and is not foreground
        rgb = read_video(r.folder / "videos" / f"Camera{c + 1}" / "0.mp4")[1]
        assert 80 < np.median(rgb[~m]) < 180
        assert 0.005 < m.mean() < 0.3


def test_leave_view_cuts_left_edge(rec_leave):
    r = rec_leave
    m = masks(r, r.leave_view)
    n = len(m)
    on_edge = m[:, :, :2].any(axis=(1, 2))
    assert np.mean(on_edge == r.cut[r.leave_view, :n]) > 0.9
    assert 0.25 < on_edge.mean() < 0.75
    assert m.any(axis=(1, 2)).all() == (not r.gone[r.leave_view, :n].any())


@pytest.mark.parametrize("which", ["rec", "rec_leave"])
def test_video_count_size_fps(which, request):
    """(2) Each camera's RGB and mask videos hold its lengths[c] frames of width x height at fps."""
    r: Recording = request.getfixturevalue(which)
    for c in range(r.views):
        for p in (r.folder / "videos" / f"Camera{c + 1}" / "0.mp4", r.folder / "mask_videos" / f"{c + 1}.mp4"):
            n, secs = imageio_ffmpeg.count_frames_and_secs(str(p))
            assert n == r.lengths[c], p
            assert secs == pytest.approx(n / r.fps, abs=1.5 / r.fps)
            meta, frames = read_video(p)
            assert meta["size"] == (r.width, r.height)
            assert meta["fps"] == pytest.approx(r.fps)
            assert frames.shape == (r.lengths[c], r.height, r.width, 3)


@pytest.mark.parametrize("which", ["rec", "rec_leave"])
def test_body_points_and_cube(which, request):
    """(3) body_points lie inside the body; the ell_m cube centred at the centre holds every body point of every
    frame, turned with the heading or not."""
    r: Recording = request.getfixturevalue(which)
    for j in range(r.frames):
        p = r.body_points(j, 500, seed=j)
        assert p.shape == (500, 3)
        assert r.inside(j, p).all()
        assert (p[:, 2] > 0).all()  # above the floor
        assert (np.abs(r.to_animal(j, p)) < r.ell_m / 2).all()
        assert (np.abs(p - r.centre[j]) < r.ell_m / 2).all()
    # the body fills the cube's sides to within the margin, and points around the animal are outside
    p = np.concatenate([r.to_animal(j, r.body_points(j, 4000)) for j in range(3)])
    assert np.abs(p).max() * 2 * 1.1 < r.ell_m < np.abs(p).max() * 2 * 1.2
    assert not r.inside(0, r.centre[0] + [0.0, 0.0, 0.06])
    assert not r.inside(0, r.centre[0] - [0.0, 0.0, r.centre[0, 2]])  # the floor under it
    # inside agrees with the same points shifted into another frame's pose
    q = r.body_points(0, 200)
    assert r.inside(1, r.from_animal(1, r.to_animal(0, q))).all()


@pytest.mark.parametrize("which", ["rec", "rec_leave"])
def test_motion_walks_forwards(which, request):
    r: Recording = request.getfixturevalue(which)
    step = np.diff(r.centre, axis=0)
    speed = np.linalg.norm(step, axis=1) * r.fps
    assert (0.09 < speed).all() and (speed < 0.21).all()
    travel = np.arctan2(step[:, 1], step[:, 0])
    mid = 0.5 * (r.heading[1:] + r.heading[:-1])
    assert np.abs(np.angle(np.exp(1j * (travel - mid)))).max() < 0.1
    assert np.abs(np.diff(r.heading)).max() < 0.5  # unwrapped
    assert (np.linalg.norm(r.centre[:, :2], axis=1) < 0.12).all()
    assert np.allclose(r.centre[:, 2], 0.022)


@pytest.mark.parametrize("which", ["rec", "rec_leave"])
def test_config_and_units(which, request):
    """(4) The config carries Pose Splatter's keys; ell * U * unit_m == ell_m, U as get_cam_params computes it."""
    r: Recording = request.getfixturevalue(which)
    cfg = json.loads(r.config.read_text())
    root = str(r.folder.resolve()) + "/"
    assert cfg["data_directory"] == root and cfg["project_directory"] == root
    assert cfg["camera_fn"] == "camera_params.h5"
    assert cfg["video_fns"] == [f"videos/Camera{c + 1}/0.mp4" for c in range(r.views)]
    assert cfg["mask_video_fns"] == [f"mask_videos/{c + 1}.mp4" for c in range(r.views)]
    for fn in cfg["video_fns"] + cfg["mask_video_fns"]:
        assert Path(cfg["data_directory"], fn).is_file()
    assert Path(cfg["project_directory"], cfg["camera_fn"]).is_file()
    assert (cfg["image_width"], cfg["image_height"]) == (r.width, r.height)
    assert cfg["adaptive_camera"] is False and cfg["grid_size"] == 32
    assert cfg["ell"] * r.ps_unit * r.unit_m == pytest.approx(r.ell_m, rel=1e-12)
    assert cfg["ell"] == pytest.approx(r.ell_ps) and cfg["ell_tracking"] == pytest.approx(1.15 * r.ell_ps)
    for k, v in {"ssim_lambda": 0.0, "img_lambda": 0.5, "valid_every": 5, "volume_fill_color": 0.38,
                 "model_fn": "checkpoint.pt"}.items():
        assert cfg[k] == v
    if which == "rec":
        assert cfg["fps"] == r.fps and cfg["lr"] == 1e-4 and "holdout_views" not in cfg
        assert cfg["frame_jump"] == 1 and cfg["image_downsample"] == 1
    else:
        assert cfg["fps"] == 24.0 and r.fps == 25.0
        assert "lr" not in cfg and cfg["vertical_lines_fn"] == "lines.npz" and cfg["holdout_views"] == [4]
        assert cfg["frame_jump"] == 2 and cfg["image_downsample"] == 2

    # U by Pose Splatter's own steps (get_cam_params with auto_orient; R_2 does not change norms)
    Rs, ts = r.Rs, r.ts
    mean_translation = np.mean(np.transpose(Rs, (0, 2, 1)) @ ts[..., None], axis=0)
    translation = (Rs @ mean_translation.reshape(1, 3, 1))[..., 0] + ts
    positions = np.linalg.solve(Rs, translation[..., None])[..., 0]
    assert ps_normalised_unit(Rs, ts) == pytest.approx(np.max(np.linalg.norm(positions, axis=1)), rel=1e-12)
    assert r.ps_unit == pytest.approx(np.max(np.linalg.norm(positions, axis=1)), rel=1e-12)

    truth = np.load(r.folder / "truth.npz")
    np.testing.assert_array_equal(truth["centre"], r.centre)
    np.testing.assert_array_equal(truth["heading"], r.heading)
    np.testing.assert_array_equal(truth["calib_from_world"], r.calib_from_world)


@pytest.mark.parametrize("which", ["rec", "rec_leave"])
def test_calibration_frame_and_rig(which, request):
    """The calibration frame is a tilted, shifted, scaled copy of the world; the cameras ring the arena."""
    r: Recording = request.getfixturevalue(which)
    A = r.calib_from_world
    s = 1 / r.unit_m
    Q = A[:3, :3] / s
    np.testing.assert_allclose(Q @ Q.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(Q) == pytest.approx(1.0)
    tilt = 25.0 if which == "rec" else 40.0
    assert np.degrees(np.arccos(Q[2, 2])) == pytest.approx(tilt)  # calibration up = Q e_z is not +z
    assert 0.02 < np.linalg.norm(A[:3, 3]) / s < 0.07
    for c in range(r.views):
        R, t, K = r.Rs[c], r.ts[c], r.Ks[c]
        np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(R) == pytest.approx(1.0)
        assert K[0, 1] == K[1, 0] == K[2, 0] == K[2, 1] == 0 and K[2, 2] == 1
        assert abs(K[0, 2] - (r.width - 1) / 2) <= 1 and abs(K[1, 2] - (r.height - 1) / 2) <= 1
        C = r.to_world(-R.T @ t)  # camera centre, true world metres
        d = np.linalg.norm(C - [0, 0, 0.03])
        assert 0.48 < d < 0.57
        assert 28 < np.degrees(np.arcsin((C[2] - 0.03) / d)) < 47
        # OpenCV: the camera's y axis (down in the image) points down in the world, roughly
        down_world = r.world_from_calib[:3, :3] @ R[1] / r.unit_m
        assert down_world[2] < -0.3
    # the world-to-camera transform in calibration units is the metric one scaled (only t scales)
    x = r.centre[0]
    xc = r.to_calib(x) @ r.Rs[0].T + r.ts[0]
    assert np.linalg.norm(xc) * r.unit_m == pytest.approx(np.linalg.norm(r.to_world(-r.Rs[0].T @ r.ts[0]) - x))


def test_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="even"):
        make_recording(tmp_path / "a", width=95)
    with pytest.raises(ValueError, match="lengths"):
        make_recording(tmp_path / "b", frames=10, lengths=[10, 11, 10, 10])
    with pytest.raises(ValueError, match="leave_view"):
        make_recording(tmp_path / "c", leave_view=4)


def test_rot_z_convention():
    np.testing.assert_allclose(rot_z(np.pi / 2) @ [1.0, 0, 0], [0, 1, 0], atol=1e-12)  # ccw, 0 = facing +x
