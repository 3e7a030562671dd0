"""The dataset reader: loading, downsampling, splits, DataLoader workers, and one test per validation error."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from posesplat.data import DatasetError, FrameDataset, inside_body, open_dataset
from shared import TINY_MODEL


@pytest.fixture
def store(small_dataset, tmp_path) -> Path:
    """A private copy of the small dataset that a test may break."""
    return Path(shutil.copytree(small_dataset, tmp_path / "copy.zarr"))


def rewrite(store: Path, name: str, data: np.ndarray) -> None:
    """Replace one array of a store by `data`."""
    root = zarr.open_group(str(store), mode="r+")
    del root[name]
    root.create_array(name, data=data)


def error_line(store: Path, fn=open_dataset) -> str:
    with pytest.raises(DatasetError) as e:
        fn(store)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(str(store))
    return msg


# ------------------------------------------------------------------ reading


def test_open_reports_shapes_and_cameras(small_dataset):
    ds = open_dataset(small_dataset)
    assert (ds.n_frames, ds.n_views, ds.height, ds.width) == (24, 6, 64, 64)
    assert ds.intrinsics.shape == (6, 3, 3) and ds.extrinsics.shape == (6, 4, 4)
    assert ds.holdout_views == [1, 4] and ds.has_gt and ds.ell == pytest.approx(0.24)
    assert ds.attrs["units"] == "m"
    assert open_dataset(f"file://{Path(small_dataset).resolve()}").n_frames == 24


def test_load_tensors(small_dataset):
    ds = open_dataset(small_dataset)
    b = ds.load(7, [0, 2, 5])
    assert b["images"].shape == (3, 64, 64, 3) and b["images"].dtype == torch.float32
    assert b["masks"].shape == (3, 64, 64) and set(b["masks"].unique().tolist()) == {0.0, 1.0}
    raw = zarr.open_group(str(small_dataset), mode="r")["images"][7, 2]
    assert torch.equal(b["images"][1], torch.from_numpy(raw).float() / 255)
    assert torch.allclose(b["Ks"][2], torch.from_numpy(ds.intrinsics[5]).float())
    assert torch.allclose(b["viewmats"][0], torch.from_numpy(ds.extrinsics[0]).float())
    assert b["frame"].item() == 7 and b["views"].tolist() == [0, 2, 5]
    assert b["centre"].shape == (3,) and b["heading"].shape == ()


def test_downsample_box_averages_and_scales_intrinsics(small_dataset):
    ds = open_dataset(small_dataset)
    full, half = ds.load(3, [1, 3]), ds.load(3, [1, 3], downsample=2)
    assert half["images"].shape == (2, 32, 32, 3)
    block = full["images"][0, 10:12, 20:22].mean((0, 1))
    assert torch.allclose(half["images"][0, 5, 10], block, atol=1e-6)
    box = full["masks"].reshape(2, 32, 2, 32, 2).mean((2, 4))
    assert torch.equal(half["masks"], (box >= 0.5).float())
    K, K2 = full["Ks"][0], half["Ks"][0]
    assert torch.allclose(K2[:2], K[:2] / 2) and K2[2, 2] == 1
    # a world point lands on the same relative image position at both resolutions
    x = torch.tensor([0.01, -0.02, 0.03, 1.0])
    cam = (full["viewmats"][0] @ x)[:3]
    uv, uv2 = (K @ cam)[:2] / cam[2], (K2 @ cam)[:2] / cam[2]
    assert torch.allclose(uv2, uv / 2, atol=1e-4)


def test_gt_and_inside_body(small_dataset):
    ds = open_dataset(small_dataset)
    gt = ds.gt(0)
    assert gt.shape == (9, 10) and ds.gt_kinds().tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 1]
    body_centre, far = gt[0, :3], gt[0, :3] + np.array([0.0, 0.0, 0.2])
    tail_tip = gt[-1, :3]
    assert inside_body(gt, np.stack([body_centre, far, tail_tip]), ds.gt_kinds()).tolist() == [True, False, True]


# ------------------------------------------------------------------ splits


def test_frame_split_thirds_are_contiguous(small_dataset):
    s = open_dataset(small_dataset).frame_split()
    assert [s[k].tolist() for k in ("train", "valid", "test")] == [
        list(range(0, 8)), list(range(8, 16)), list(range(16, 24))]


def test_frame_split_jump_then_max_frames(small_dataset):
    ds = open_dataset(small_dataset)
    s = ds.frame_split(max_frames=6, frame_jump=3)  # frames 0, 3, ..., 21, first six of them
    assert [s[k].tolist() for k in ("train", "valid", "test")] == [[0, 3], [6, 9], [12, 15]]
    s = ds.frame_split(split=(0.5, 0.25, 0.25))
    assert (len(s["train"]), len(s["valid"]), len(s["test"])) == (12, 6, 6)


def test_frame_split_errors(small_dataset):
    ds = open_dataset(small_dataset)
    with pytest.raises(DatasetError, match="max_frames 9 is larger than the 8 frames"):
        ds.frame_split(max_frames=9, frame_jump=3)
    with pytest.raises(DatasetError, match="valid split is empty"):
        ds.frame_split(max_frames=2)


def test_view_split(small_dataset):
    ds = open_dataset(small_dataset)
    assert ds.view_split() == ([0, 2, 3, 5], [1, 4])
    assert ds.view_split([0]) == ([1, 2, 3, 4, 5], [0])
    with pytest.raises(DatasetError, match=r"holdout_views': view index 6 out of range \[0, 6\)"):
        ds.view_split([2, 6])


# ------------------------------------------------------------------ DataLoader


def test_dataloader_with_two_workers(small_dataset):
    ds = open_dataset(small_dataset)
    fd = FrameDataset(small_dataset, frames=[2, 5, 9, 13], views=[0, 3], downsample=2)
    loader = torch.utils.data.DataLoader(fd, batch_size=1, num_workers=2, shuffle=False)
    batches = list(loader)
    assert [b["frame"].item() for b in batches] == [2, 5, 9, 13]
    for b in batches:
        ref = ds.load(b["frame"].item(), [0, 3], downsample=2)
        assert torch.equal(b["images"][0], ref["images"]) and torch.equal(b["masks"][0], ref["masks"])


# ------------------------------------------------------------------ validation errors, one line each


def test_dataset_from_a_uri_reads_like_the_path(small_dataset, tmp_path):
    """Workers on a cluster open the dataset from the URI in the config (here fsspec's file://): same arrays, and a
    training run and a study plan take it as it is."""
    from posesplat.config import make_config
    from posesplat.train import train
    from study.runner.preflight import check_study
    from study.runner.run import parse_args

    uri = small_dataset.resolve().as_uri()
    assert uri.startswith("file://")
    a, b = open_dataset(uri), open_dataset(small_dataset)
    assert (a.n_frames, a.n_views, a.height, a.width) == (b.n_frames, b.n_views, b.height, b.width)
    for key in ("images", "masks", "Ks", "viewmats"):
        assert torch.equal(a.load(5, [0, 3], 2)[key], b.load(5, [0, 3], 2)[key])
    cfg = make_config({"dataset": uri, **TINY_MODEL, "max_frames": 12, "eval_frames": 1, "steps_per_epoch": 2,
                       "epochs": 1})
    assert train(cfg, progress=False)[-1]["valid_heldout_iou"] > 0
    plan = check_study(parse_args(["--space", "smoke", "--storage", str(tmp_path / "s"), "--dataset", uri]))
    assert plan.base["dataset"] == uri  # not resolved against the driver's working directory
    with pytest.raises(DatasetError, match="memory://nothing.zarr: not a readable zarr dataset"):
        open_dataset("memory://nothing.zarr")


def test_missing_store(tmp_path):
    assert "no such dataset" in error_line(tmp_path / "absent.zarr")


def test_not_a_zarr_store(tmp_path):
    (tmp_path / "junk.zarr").mkdir()
    assert "not a readable zarr dataset" in error_line(tmp_path / "junk.zarr")


def test_missing_array(store):
    root = zarr.open_group(str(store), mode="r+")
    del root["masks"]
    assert error_line(store).endswith("array 'masks': missing")


def test_frame_counts_disagree(store):
    rewrite(store, "heading", np.zeros(23))
    assert "array 'heading': shape [23] should be [24]" in error_line(store)


def test_view_counts_disagree(store):
    rewrite(store, "intrinsics", zarr.open_group(str(store), mode="r")["intrinsics"][:5])
    assert "array 'intrinsics': shape [5, 3, 3] should be [6, 3, 3]" in error_line(store)


def test_mask_shape_disagrees(store):
    rewrite(store, "masks", np.zeros((24, 5, 64, 64), np.uint8))
    assert "array 'masks': shape [24, 5, 64, 64] disagrees with images" in error_line(store)


def test_non_finite_intrinsics(store):
    K = zarr.open_group(str(store), mode="r")["intrinsics"][:]
    K[3, 0, 2] = np.nan
    rewrite(store, "intrinsics", K)
    assert "array 'intrinsics': non-finite values in camera 3" in error_line(store)


def test_singular_intrinsics(store):
    K = zarr.open_group(str(store), mode="r")["intrinsics"][:]
    K[2, 0, 0] = 0.0
    rewrite(store, "intrinsics", K)
    assert "array 'intrinsics': camera 2 is singular" in error_line(store)


def test_extrinsics_not_a_rotation(store):
    E = zarr.open_group(str(store), mode="r")["extrinsics"][:]
    E[4, :3, :3] *= 2.0
    rewrite(store, "extrinsics", E)
    assert "array 'extrinsics': camera 4: the 3x3 part is not a rotation" in error_line(store)


def test_extrinsics_reflection(store):
    E = zarr.open_group(str(store), mode="r")["extrinsics"][:]
    E[1, 0, :3] *= -1.0  # orthogonal but det -1
    rewrite(store, "extrinsics", E)
    assert "array 'extrinsics': camera 1" in error_line(store)


def test_mask_values_outside_0_1_at_open(store):
    root = zarr.open_group(str(store), mode="r+")
    root["masks"][0, 2, 5, 5] = 255
    assert "array 'masks': frame 0 has values outside {0, 1} (e.g. 255)" in error_line(store)


def test_mask_values_outside_0_1_at_load(store):
    ds = open_dataset(store)
    zarr.open_group(str(store), mode="r+")["masks"][5, 1, 3, 3] = 2  # frame 5 is not among those checked at open
    ds.load(4, [1])
    assert "array 'masks': frame 5 has values outside {0, 1}" in error_line(store, lambda s: ds.load(5, [0, 1]))


def test_holdout_out_of_range(store):
    rewrite(store, "holdout_views", np.array([1, 6], np.int64))
    assert "array 'holdout_views': view index 6 out of range [0, 6)" in error_line(store)


def test_gt_frames_disagree(store):
    root = zarr.open_group(str(store), mode="r+")
    params = root["gt/params"][:10]
    del root["gt/params"]
    root["gt"].create_array("params", data=params)
    assert "array 'gt/params': has 10 frames, images have 24" in error_line(store)


def test_max_frames_too_large(small_dataset):
    ds = open_dataset(small_dataset)
    with pytest.raises(DatasetError) as e:
        ds.frame_split(max_frames=100)
    assert str(e.value) == (f"{small_dataset}: array 'images': max_frames 100 is larger than the 24 frames "
                            "available (with frame_jump 1)")


def set_attrs(store: Path, **attrs) -> None:
    root = zarr.open_group(str(store), mode="r+")
    for k, v in attrs.items():
        if v is None:
            del root.attrs[k]
        else:
            root.attrs[k] = v


def test_gt_without_kind_is_refused_at_open(store):
    del zarr.open_group(str(store), mode="r+")["gt/kind"]
    assert "array 'gt/kind': missing (a gt group needs both gt/params and gt/kind)" in error_line(store)


@pytest.mark.parametrize("name, data, message", [
    ("gt/kind", np.zeros(3, np.int8), "array 'gt/kind': must be integer [P] with P = 9"),
    ("gt/kind", np.full(9, 7, np.int8), "array 'gt/kind': unknown kind 7"),
    ("gt/params", np.zeros((24, 9, 7), np.float32), "array 'gt/params': must be float [F, P, 10]"),
    ("gt/params", np.full((24, 9, 10), np.nan, np.float32), "array 'gt/params': non-finite values in frame 0"),
    ("gt/params", np.zeros((24, 9, 10), np.float32), "array 'gt/params': frame 0: sizes (columns 7-9) must be"),
])
def test_gt_is_validated_completely(store, name, data, message):
    root = zarr.open_group(str(store), mode="r+")
    del root[name]
    root["gt"].create_array(name.split("/")[1], data=data)
    assert message in error_line(store)


@pytest.mark.parametrize("attrs, message", [
    ({"up": None}, "attribute 'up': missing: the world must be z-up"),
    ({"up": [0.0, 1.0, 0.0]}, "attribute 'up': is [0.0, 1.0, 0.0]: the world must be z-up"),
    ({"units": "mm"}, "attribute 'units': is 'mm': world coordinates must be metres"),
    ({"background": None}, "attribute 'background': missing"),
    ({"background": [0, 0, 300]}, "attribute 'background': must be 3 numbers in [0, 1]"),
    ({"ell": -1}, "attribute 'ell': must be a positive number"),
])
def test_attributes_are_checked(store, attrs, message):
    set_attrs(store, **attrs)
    msg = str(pytest.raises(DatasetError, open_dataset, store).value)
    assert msg.startswith(str(store)) and "\n" not in msg and message in msg


def test_background_pixels_must_match_the_background_attribute(store):
    set_attrs(store, background=[1.0, 1.0, 1.0])  # the images are on black
    msg = error_line(store)
    assert "array 'images': frame 0, view 0: 100% of the pixels outside the mask differ from the background " \
           "attribute [255, 255, 255]/255 (median there [0, 0, 0])" in msg


def test_default_holdout_adapts_to_the_rig(store):
    from posesplat.data import default_holdout

    assert [default_holdout(c) for c in (2, 3, 4, 5, 6, 9)] == [[], [1], [1], [1], [1, 4], [1, 4, 7]]
    del zarr.open_group(str(store), mode="r+")["holdout_views"]
    assert open_dataset(store).holdout_views == [1, 4]
    root = zarr.open_group(str(store), mode="r+")  # a 4-camera rig without holdout_views
    for name in ("images", "masks", "intrinsics", "extrinsics", "gt/depth", "gt/normal"):
        rewrite(store, name, root[name][:, :4] if name in ("images", "masks", "gt/depth", "gt/normal") else root[name][:4])
    ds = open_dataset(store)
    assert ds.n_views == 4 and ds.holdout_views == [1] and ds.view_split() == ([0, 2, 3], [1])


def test_frames_kept_in_memory_load_as_from_the_store(small_dataset):
    """keep_in_memory: every load and true geometry equal to the store's (any views, any order, downsampled), a
    caller's change to what it got never reaches the next load, and the kept frames stay within the budget."""
    store, kept = open_dataset(small_dataset), open_dataset(small_dataset)
    kept.keep_in_memory(1.0)  # MB: a few frames of this dataset (0.4 MB a frame at full size), not all
    for frame in (0, 5, 0, 11, 5, 17, 23):
        for views in ([0, 1, 2, 3, 4, 5], [4, 1], [3]):
            for down in (1, 2):
                want, got = store.load(frame, views, down), kept.load(frame, views, down)
                assert want.keys() == got.keys()
                assert all(torch.equal(want[k], got[k]) for k in want), (frame, views, down)
                got["images"].fill_(0.5)  # the caller's copy
                assert all(torch.equal(a, b) for a, b in zip(store.gt_geometry(frame, views, down),
                                                             kept.gt_geometry(frame, views, down)))
    assert torch.equal(kept.load(5, [4, 1], 2)["images"], store.load(5, [4, 1], 2)["images"])
    assert 0.5 < kept.kept_mb() <= 1.0
    for frame in (0, 17, 0):  # true primitives and their kinds: equal, and a caller's change stays the caller's
        assert np.array_equal(kept.gt(frame), store.gt(frame)) and np.array_equal(kept.gt_kinds(), store.gt_kinds())
        kept.gt(frame)[:] = 0
        kept.gt_kinds()[:] = 0
    assert kept.kept_mb() <= 1.0
    with pytest.raises(DatasetError, match="view index 9 out of range"):
        kept.load(0, [9])
