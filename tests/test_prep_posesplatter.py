"""Real recordings in, right or refused: Pose Splatter configs as they are, on recordings made by tests/recording.py
(its own renderer, not posesplat.synth): millimetre calibration, a tilted world, lossy mask videos, frame_jump and
image_downsample. Each import is checked against the recording's ground truth."""

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from posesplat.carve import carve
from posesplat.data import open_dataset
from posesplat.prep import main, prep

sys.path.insert(0, str(Path(__file__).parent))
from recording import (Recording, angle_deg, cube_share, in_cube, make_recording, to_dataset,  # noqa: E402
                       yaw_in_dataset)

MM = {"unit_m": 0.001}  # the one key a millimetre calibration needs beyond Pose Splatter's config


def run(rec: Recording, *args: str, capsys=None, **edits) -> tuple[int, list[str]]:
    """`python -m posesplat.prep` (in-process) on the recording's config with `edits`; (exit code, stderr lines)."""
    if edits:
        values = {**json.loads(rec.config.read_text()), **edits}
        rec.config.write_text(json.dumps({k: v for k, v in values.items() if v is not None}))
    rc = main([str(rec.config), "--workers", "1", *args])
    return rc, capsys.readouterr().err.strip().splitlines() if capsys else []


def refused(rec: Recording, capsys, *args: str, **edits) -> str:
    rc, lines = run(rec, *args, capsys=capsys, **edits)
    errors = [line for line in lines if line.startswith("error: ")]
    assert rc == 2 and len(errors) == 1 and lines[-1] == errors[0], lines
    assert not (rec.folder / "dataset.zarr").exists()
    return errors[0]


def on_mask(ds, rec: Recording, frame: int, source: int, view: int) -> float:
    """Share of the true body's points of a source frame that the dataset's camera puts on its mask."""
    pts = to_dataset(ds, rec, rec.body_points(source, 500, seed=frame))
    cam = pts @ ds.extrinsics[view, :3, :3].T + ds.extrinsics[view, :3, 3]
    uv = (cam / cam[:, 2:]) @ ds.intrinsics[view].T
    j, i = np.floor(uv[:, 0]).astype(int), np.floor(uv[:, 1]).astype(int)
    ok = (i >= 0) & (i < ds.height) & (j >= 0) & (j < ds.width)
    mask = ds.root["masks"][frame, view]
    return float(mask[i[ok], j[ok]].mean()) if ok.any() else 1.0


# ------------------------------------------------------------------ the config as Pose Splatter has it


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    rec = make_recording(tmp_path_factory.mktemp("ps") / "rec", frames=40, frame_jump=2, image_downsample=2,
                         extra_keys={**MM, "typo_key": 1})
    lines = []
    out = prep(rec.config, workers=2, progress=False, log=lines.append)
    return rec, open_dataset(out), lines


def test_cameras_project_known_points_onto_the_same_pixels(imported):
    rec, ds, _ = imported
    pts = rec.body_points(0, 300)
    for v in range(rec.views):
        uv_true = (rec.project(v, pts) + 0.5) / 2  # OpenCV pixels at full size -> pixel centres, downsampled 2
        cam = to_dataset(ds, rec, pts) @ ds.extrinsics[v, :3, :3].T + ds.extrinsics[v, :3, 3]
        uv = (cam / cam[:, 2:]) @ ds.intrinsics[v].T
        assert np.abs(uv[:, :2] - uv_true).max() < 1e-6


def test_world_is_metric_and_z_up(imported):
    rec, ds, _ = imported
    A = np.asarray(ds.attrs["world_from_calibration"])[:3, :3] @ rec.calib_from_world[:3, :3]
    np.testing.assert_allclose(A @ A.T, np.eye(3), atol=1e-9)  # a rotation: metres in, metres out
    tilt = np.degrees(np.arccos(np.clip(A[2, 2], -1, 1)))  # the true up in the dataset's world
    assert tilt < 3, tilt
    assert ds.attrs["units"] == "m" and ds.attrs["calibration_unit_m"] == 0.001
    assert ds.attrs["pose_splatter_unit_m"] == pytest.approx(rec.ps_unit * 0.001)


def test_ell_means_what_it_means_in_pose_splatter(imported):
    rec, ds, _ = imported
    assert ds.ell == pytest.approx(rec.ell_m, rel=1e-9) and ds.attrs["ell_source"] == "config ell"


def test_centres_and_headings_match_the_truth(imported):
    rec, ds, _ = imported
    sources = np.arange(ds.n_frames) * 2  # frame_jump 2
    err_mm = 1000 * np.linalg.norm(ds.centre - to_dataset(ds, rec, rec.centre[sources]), axis=1)
    err_deg = angle_deg(ds.heading, yaw_in_dataset(ds, rec, rec.heading[sources]))
    assert np.median(err_mm) < 8 and err_mm.max() < 15, err_mm.round(1)  # the hull's centroid is ~5 mm ahead
    assert err_deg.max() < 10, err_deg.round(1)


def test_the_cube_holds_the_body(imported):
    rec, ds, _ = imported
    shares = [cube_share(ds, rec, j, 2 * j) for j in range(ds.n_frames)]
    assert min(shares) >= 0.99, np.round(shares, 3)


def test_unused_keys_are_listed_in_one_line(imported):
    _, _, lines = imported
    unused = [line for line in lines if line.startswith("config keys not used:")]
    assert len(unused) == 1, lines
    for phrase in ("lr (training settings", "model_fn (Pose Splatter's own working files",
                   "volume_fill_color (unsupported", "typo_key (unknown key: misspelt?)"):
        assert phrase in unused[0]
    assert "holdout_views: [1] (not in the config: the default for 4 cameras)" in lines


# ------------------------------------------------------------------ frame rates and lengths


@pytest.mark.parametrize("container, configured", [(20.0, 30.0), (50.0, 30.0)])
def test_frames_are_read_by_index_whatever_the_fps(tmp_path, container, configured):
    rec = make_recording(tmp_path / "rec", frames=36, fps=container, config_fps=configured, frame_jump=2,
                         extra_keys=MM)
    lines = []
    ds = open_dataset(prep(rec.config, workers=1, progress=False, log=lines.append))
    assert any(f"key 'fps' is {configured:g} but" in line and f"is {container:g} fps" in line for line in lines)
    assert ds.n_frames == 18 and ds.attrs["fps"] == pytest.approx(container)
    worst = min(on_mask(ds, rec, j, 2 * j, v) for j in range(ds.n_frames) for v in range(rec.views))
    assert worst > 0.9, worst  # every output frame shows the source frame of its index
    shifted = min(on_mask(ds, rec, j, 2 * j + 4, v) for j in range(ds.n_frames - 2) for v in range(rec.views))
    assert shifted < 0.8, shifted  # the check sees a 4-frame slip (what seeking with the configured fps gave)


def test_a_variable_frame_rate_is_read_by_index_too(tmp_path):
    """Camera 2's videos re-timed with jittered timestamps (no rate to seek with): decoded from the start, warned."""
    import subprocess

    import imageio_ffmpeg

    rec = make_recording(tmp_path / "rec", frames=24, extra_keys=MM)
    values = json.loads(rec.config.read_text())
    for key in ("video_fns", "mask_video_fns"):
        src = rec.folder / values[key][2]
        dst = src.with_suffix(".mkv")
        subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-i", str(src), "-vf",
                        "setpts='(N/30+eq(mod(N,3),1)*0.012)/TB'", "-fps_mode", "vfr", "-enc_time_base", "1/1000",
                        "-c:v", "libx264", "-qp", "0", str(dst)], check=True)
        values[key][2] = str(Path(values[key][2]).with_suffix(".mkv"))
    rec.config.write_text(json.dumps(values))
    lines = []
    ds = open_dataset(prep(rec.config, workers=1, progress=False, log=lines.append))
    assert any("0.mkv (2 video(s)) has no constant frame rate: frames are decoded from the start" in line or
               "2.mkv (2 video(s)) has no constant frame rate" in line for line in lines), lines
    assert min(on_mask(ds, rec, j, j, v) for j in range(ds.n_frames) for v in range(rec.views)) > 0.9


def test_unequal_lengths_are_refused_or_trimmed(tmp_path, capsys):
    rec = make_recording(tmp_path / "rec", frames=20, lengths=[20, 20, 17, 20], extra_keys=MM)
    err = refused(rec, capsys)
    assert "videos/Camera3/0.mp4: 17 frames, the shortest of the videos" in err and "--trim" in err
    rc, _ = run(rec, "--trim", capsys=capsys)
    ds = open_dataset(rec.folder / "dataset.zarr")
    assert rc == 0 and ds.n_frames == 17 and ds.attrs["source_frames"] == 17
    assert min(on_mask(ds, rec, j, j, v) for j in range(17) for v in range(4)) > 0.9


# ------------------------------------------------------------------ what can be misread is refused


def test_millimetres_without_unit_m_are_refused(tmp_path, capsys):
    rec = make_recording(tmp_path / "rec", frames=6)
    err = refused(rec, capsys)
    assert "camera_params.h5: with 'unit_m' unset (metres) the cameras stand" in err
    assert "set 'unit_m' to the calibration's unit in metres (0.001 if it is in millimetres)" in err
    err = refused(rec, capsys, unit_m=1e-6)
    assert "with 'unit_m' 1e-06 the cameras stand" in err


def test_relative_paths_resolve_against_the_current_directory(tmp_path, capsys, monkeypatch):
    rec = make_recording(tmp_path / "rec", frames=6, extra_keys={**MM, "data_directory": "", "project_directory": ""})
    monkeypatch.chdir(tmp_path)
    err = refused(rec, capsys)
    assert "no such file (camera_fn in" in err and f"run from {rec.folder}" in err
    monkeypatch.chdir(rec.folder)  # where Pose Splatter would be run from
    rc, _ = run(rec, capsys=capsys)
    assert rc == 0 and (rec.folder / "dataset.zarr").exists()


@pytest.mark.parametrize("edits, message", [
    ({"image_width": 200}, "key 'image_width' is 200 but the videos are 96x80"),
    ({"ell_m": 0.3}, "keys 'ell' and 'ell_m' both set the cube's side; keep one"),
    ({"holdout_views": [0, 1, 2]}, "key 'holdout_views': at least two cameras must stay observed"),
])
def test_bad_config_values_are_one_line(tmp_path, capsys, edits, message):
    rec = make_recording(tmp_path / "rec", frames=6, extra_keys=MM)
    assert message in refused(rec, capsys, **edits)


# ------------------------------------------------------------------ ell: derived, checked


def test_ell_is_derived_when_not_given(tmp_path):
    rec = make_recording(tmp_path / "rec", frames=30, extra_keys={**MM, "ell": None, "ell_tracking": None})
    lines = []
    ds = open_dataset(prep(rec.config, workers=1, progress=False, log=lines.append))
    assert ds.attrs["ell_source"] == "derived" and any(line.startswith("ell: ") for line in lines)
    assert 0.6 * rec.ell_m < ds.ell < 1.6 * rec.ell_m, (ds.ell, rec.ell_m)
    assert min(cube_share(ds, rec, j, j) for j in range(ds.n_frames)) >= 0.99


def test_too_small_an_ell_is_warned_at_import_and_refused_by_the_trainer(tmp_path):
    from posesplat.config import ConfigError, make_config
    from posesplat.run_setup import prepare

    rec = make_recording(tmp_path / "rec", frames=30, extra_keys=MM)
    rec.config.write_text(json.dumps({**json.loads(rec.config.read_text()), "ell": 0.5 * rec.ell_ps}))
    lines = []
    out = prep(rec.config, workers=1, progress=False, log=lines.append)
    assert any(line.startswith("warning: ell (") and "would hold 99%" in line for line in lines), lines
    cfg = make_config({"dataset": str(out), "grid_size": 16, "device": "cpu"})
    with pytest.raises(ConfigError, match=r"reaches the faces of the .* m cube in \d+% of .* set ell to [0-9.]+$"):
        prepare(cfg)


# ------------------------------------------------------------------ an animal that leaves one camera's image


def body_kept(ds, rec: Recording, f: int, views: list[int], clear_border: bool = False) -> float:
    """Share of the true body's points whose voxel the carving of `views` keeps (grid 48 over the dataset's cube);
    clear_border blanks the masks' outer pixels, so no view counts as one the animal leaves."""
    b = ds.load(int(f), views)
    masks = b["masks"].clone()
    if clear_border:
        masks[:, [0, -1]], masks[:, :, [0, -1]] = 0, 0
    hull = carve(b["images"], masks, b["viewmats"], b["Ks"], b["centre"], b["heading"], 48, ds.ell)[0]
    local = in_cube(ds, f, to_dataset(ds, rec, rec.body_points(int(f), 500)))
    idx = np.clip(np.floor((local / ds.ell + 0.5) * 48).astype(int), 0, 47)
    return float((hull[idx[:, 0], idx[:, 1], idx[:, 2]] > 0.5).float().mean())


def test_an_animal_leaving_one_view_is_not_carved_away(tmp_path):
    rec = make_recording(tmp_path / "rec", frames=30, views=5, leave_view=0, holdout_views=[], extra_keys=MM)
    cut = np.flatnonzero(rec.cut[0])
    assert len(cut) >= 5  # the animal is cut by camera 0's image edge in these frames
    ds = open_dataset(prep(rec.config, workers=1, progress=False, log=lambda s: None))
    kept = np.array([[body_kept(ds, rec, f, [0, 1, 2, 3, 4]), body_kept(ds, rec, f, [1, 2, 3, 4]),
                      body_kept(ds, rec, f, [0, 1, 2, 3, 4], clear_border=True)] for f in cut])
    assert (kept[:, 0] > kept[:, 1] - 0.05).all(), kept.round(3)  # camera 0 cuts nothing off the body
    lost = kept[:, 0] - kept[:, 2]  # what carving outside camera 0's image (the old rule) cut off
    assert lost.mean() > 0.04 and lost.max() > 0.15, kept.round(3)
    err_mm = 1000 * np.linalg.norm(ds.centre[cut] - to_dataset(ds, rec, rec.centre[cut]), axis=1)
    assert err_mm.max() < 15, err_mm.round(1)
