"""An import equals the per-frame reference, value for value: tests/prep_reference.py holds the code before issue 47
(videos decoded by ffmpeg subprocesses, the hull and compositing one frame at a time). The videos' counts, sizes,
rates and seek rates (part of the steps' fingerprints, so that an earlier import's work is reused), the track step's
arrays and the written images, masks and crop all equal it exactly; a tenth of a pixel's change would show."""

import json
import random
import sys
from pathlib import Path

import numpy as np
import pytest
from threadpoolctl import threadpool_info

from posesplat.data import open_dataset
from posesplat.prep import prep
from posesplat.prep.blocks import run_blocks
from posesplat.prep.cameras import Rig, cameras_step
from posesplat.prep.cube import crop_indices
from posesplat.prep.frames import FramesJob, composite, composited
from posesplat.prep.inputs import read_inputs
from posesplat.prep.track import TRACK_KEYS, TrackJob, config_sides
from posesplat.prep.videos import close_readers, read_video, video_info
from posesplat.synth import make_raw

sys.path.insert(0, str(Path(__file__).parent))
import prep_reference as ref  # noqa: E402

RAW = dict(frames=40, views=6, height=64, width=64, seed=2, progress=False)
VARIANTS = {"plain": {}, "downsampled": dict(image_downsample=2, frame_jump=2, background=[0.3, 0.6, 0.1])}


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def imported(request, tmp_path_factory) -> tuple[Path, Path]:
    """A raw recording (its config edited by the variant) imported with two workers: (config, dataset)."""
    cfg = make_raw(tmp_path_factory.mktemp(request.param) / "rec", **RAW)
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), **VARIANTS[request.param]}))
    return cfg, prep(cfg, workers=2, progress=False, log=lambda s: None)


def jobs(cfg: Path, out: Path) -> tuple[TrackJob, FramesJob]:
    """The track and frames steps' jobs as the import built them (cameras and poses from its work folder)."""
    inp = read_inputs(cfg, out, 1, False, lambda s: None, False)
    cams = cameras_step(inp)
    ell_given, track_side = config_sides(inp.cfg, cams.ps_unit_m)
    track = TrackJob(inp.footage, Rig(cams.Ks, cams.Es, tuple(inp.observed)), inp.cfg.grid_size, ell_given,
                     track_side, inp.cfg.trunk_radius)
    pose = np.load(inp.work / "pose.npz")
    frames = FramesJob(inp.footage, Rig(cams.Ks, pose["extrinsics"], tuple(inp.observed)), "", pose["centre"],
                       pose["heading"], tuple(inp.cfg.background), open_dataset(out).ell, inp.cfg.grid_size)
    return track, frames


def test_videos_are_measured_as_before(imported):
    cfg, _ = imported
    folder = cfg.parent
    for path in sorted(folder.glob("*videos/*.mp4")):
        assert video_info(path) == ref.video_info(path), path


def test_track_equals_the_reference(imported):
    cfg, out = imported
    job, _ = jobs(cfg, out)
    got = np.load(out.with_name(out.name + ".prep") / "track.npz")
    want = ref.track(job, 0, len(got["rough"]))
    assert np.isfinite(got["centroid"]).all()
    for k in TRACK_KEYS:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_frames_equal_the_reference(imported):
    cfg, out = imported
    _, job = jobs(cfg, out)
    ds = open_dataset(out)
    images, masks, boxes = ref.frames(job, 0, ds.n_frames)
    np.testing.assert_array_equal(ds.root["images"][:], images)
    np.testing.assert_array_equal(ds.root["masks"][:], masks)
    assert ds.attrs["volume_idx"] == crop_indices(boxes, job.grid_size)


def test_the_comparison_sees_a_tenth_of_a_pixel(imported):
    """The reference with every principal point moved by 0.1 px no longer equals the import: equality above is not
    a tolerance in disguise."""
    cfg, out = imported
    job, _ = jobs(cfg, out)
    Ks = job.rig.Ks.copy()
    Ks[:, :2, 2] += 0.1
    moved = TrackJob(job.footage, Rig(Ks, job.rig.Es, job.rig.observed), job.grid_size, job.ell, job.track_side,
                     job.trunk_radius)
    got = np.load(out.with_name(out.name + ".prep") / "track.npz")
    want = ref.track(moved, 0, 8)
    assert not np.array_equal(got["centroid"][:8], want["centroid"])


@pytest.mark.parametrize("constant_rate", [True, False])
def test_a_reader_gives_the_same_frames_in_any_order(imported, constant_rate):
    """One reader per video, blocks asked for in shuffled order (decoding on, seeking forward and back, or, with no
    rate, decoding from the first frame again) gives ffmpeg's frames of those indices."""
    cfg, _ = imported
    path = cfg.parent / "videos" / "3.mp4"
    n, _, _, _, rate = video_info(path)
    every = np.stack(list(ref.read_video(path, 0, n, 1, None)))
    spans = [(j, min(5, n - j)) for j in range(0, n, 5)]
    random.Random(0).shuffle(spans)
    try:
        for start, count in spans + spans[:3]:
            got = np.stack(list(read_video(path, start, count, 1, rate if constant_rate else None)))
            np.testing.assert_array_equal(got, every[start:start + count], err_msg=str(start))
    finally:
        close_readers()


@pytest.mark.parametrize("background", [(0.0, 0.0, 0.0), (0.3, 0.6, 0.1)])
def test_a_block_composited_at_once_equals_the_reference(background):
    """Without downsampling a block is composited at once, in uint8 (background rows filled, foreground copied by
    index): the same values as the reference's float path frame by frame, on any background colour."""
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (3, 2, 8, 10, 3), dtype=np.uint8)  # [F, V, H, W, 3]
    mask = rng.random((3, 2, 8, 10)) < 0.3
    bg = np.asarray(background)
    want = np.stack([np.stack([ref.composite(f, m, m, 1, bg) for f, m in zip(fs, ms)]) for fs, ms in zip(frames, mask)])
    np.testing.assert_array_equal(composited(frames, mask, mask, 1, bg), want)
    fortran = np.asfortranarray(frames)  # any memory layout: the output is written in its own C order
    np.testing.assert_array_equal(composited(fortran, mask, mask, 1, bg), want)
    np.testing.assert_array_equal(composite(frames[0, 0], mask[0, 0], mask[0, 0], 1, bg), want[0, 0])


def blas_threads(job: None = None, j0: int = 0, j1: int = 0) -> dict:
    """A block that reports the BLAS threads it runs with (top level: the workers unpickle it by name)."""
    return {"threads": [max((i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"), default=1)]}


@pytest.mark.parametrize("workers", [1, 2])
def test_blocks_run_with_one_blas_thread(workers, tmp_path):
    """In the workers and in this process: OpenBLAS's spinning threads beside the workers doubled an import's time.
    This process keeps its own threads outside the blocks."""
    before = blas_threads()["threads"]
    if before == [1]:
        pytest.skip("OpenBLAS runs one thread here anyway (one CPU or OPENBLAS_NUM_THREADS=1): the test could not fail")
    got = run_blocks(blas_threads, None, 40, tmp_path / "done", workers, "test", False)
    assert [r["threads"] for r in got] == [[1]] * 3
    assert blas_threads()["threads"] == before
