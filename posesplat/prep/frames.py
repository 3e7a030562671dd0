"""The frames step: images composited on the background and masks, downsampled, written in parallel blocks into
the store (one zarr chunk per frame, so no locks), and each frame's carved animal boxed for the crop (volume_idx)."""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

from posesplat.prep.blocks import BLOCK, run_blocks
from posesplat.prep.cache import clear_stale, fingerprint
from posesplat.prep.cameras import Cameras, Rig
from posesplat.prep.cube import crop_indices
from posesplat.prep.hull import grid_points, hull
from posesplat.prep.inputs import Inputs
from posesplat.prep.pose import Pose
from posesplat.prep.videos import Footage, read_masks, read_video

FAULT_ENV = "POSESPLAT_PREP_FAULT"  # test hook: "frames:<block>" SIGKILLs the process in the middle of that block


@dataclass(frozen=True, eq=False)
class FramesJob:
    """What every frames block reads."""

    footage: Footage
    rig: Rig  # extrinsics in the world frame
    store: str  # the zarr store the blocks write into
    centres: np.ndarray  # [T, 3] world
    headings: np.ndarray  # [T] yaw about +z
    background: tuple[float, ...]  # RGB in [0, 1]
    ell: float  # cube side, metres
    grid_size: int


def composite(frame: np.ndarray, mask_full: np.ndarray, mask: np.ndarray, ds: int, bg: np.ndarray) -> np.ndarray:
    """RGB frame -> uint8 [H/ds, W/ds, 3] on the background colour: composite, box-average, re-mask."""
    img = np.where(mask_full[..., None], frame.astype(np.float32), bg * 255)
    if ds > 1:
        h, w = img.shape[0] // ds * ds, img.shape[1] // ds * ds
        img = img[:h, :w].reshape(h // ds, ds, w // ds, ds, 3).mean((1, 3))
    img = np.where(mask[..., None], img, bg * 255)
    return np.round(img).clip(0, 255).astype(np.uint8)


def frames_block(job: FramesJob, j0: int, j1: int) -> dict[str, list]:
    """Write output frames j0..j1 (images, masks: one chunk each) and return each frame's occupied-cell box."""
    root = zarr.open_group(job.store, mode="r+")
    Ks, Es, obs, views = job.rig.Ks, job.rig.Es, list(job.rig.observed), list(range(len(job.footage.videos)))
    centres, headings, bg = job.centres, job.headings, np.asarray(job.background)
    G = job.grid_size
    local = grid_points(G, job.ell)
    ft = job.footage
    jump = ft.frame_jump
    videos = [read_video(Path(ft.videos[c]), j0 * jump, j1 - j0, jump, ft.video_fps[c]) for c in views]
    boxes = []
    fault = os.environ.get(FAULT_ENV, "")
    for j, (rgb, (full, small)) in enumerate(zip(zip(*videos), read_masks(ft, views, j0, j1)), start=j0):
        root["images"][j] = np.stack([composite(f, fm, m, ft.ds, bg) for f, fm, m in zip(rgb, full, small)])
        if fault == f"frames:{j0 // BLOCK}":  # test hook: die between the two chunks of a frame
            os.kill(os.getpid(), signal.SIGKILL)
        root["masks"][j] = small.astype(np.uint8)
        c, s = np.cos(headings[j]), np.sin(headings[j])
        world = local @ np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]).T + centres[j]
        seen = [v for v in obs if small[v].any()]
        occ = hull(small[seen], Ks[seen], Es[seen], world) if len(seen) >= 2 else np.zeros(len(world), bool)
        occ = occ.reshape(G, G, G)
        idx = [np.flatnonzero(occ.any(axis=tuple(a for a in range(3) if a != ax))) for ax in range(3)]
        boxes.append([[int(i.min()), int(i.max()) + 1] if len(i) else None for i in idx])
    return {"boxes": boxes}


def create_store(store: Path, n_out: int, C: int, h: int, w: int) -> None:
    """The store's image and mask arrays, one chunk per frame, unless an interrupted run made them already."""
    if not (store / "zarr.json").exists():
        root = zarr.open_group(str(store), mode="w", zarr_format=3)
        root.create_array("images", shape=(n_out, C, h, w, 3), chunks=(1, C, h, w, 3), dtype="uint8")
        root.create_array("masks", shape=(n_out, C, h, w), chunks=(1, C, h, w), dtype="uint8")


def frames_fingerprint(inp: Inputs, ps: Pose, ell: float) -> str:
    """The frames step's fingerprint, which the finished dataset records (prep_fingerprint)."""
    cfg = inp.cfg
    return fingerprint(ps.fp, inp.source, cfg.background, cfg.volume_idx, inp.n_src, inp.W, inp.H, ell, inp.holdout)


def frames_step(inp: Inputs, cams: Cameras, ps: Pose, ell: float, fp: str) -> tuple[Path, list[list[int]]]:
    """The frames written into a store in the work folder (resuming an interrupted run's blocks); returns the store
    and volume_idx (the config's, else the crop that holds every frame's carved animal)."""
    cfg = inp.cfg
    store = inp.work / f"frames-{fp}.zarr"
    clear_stale(inp.work, "frames", store.name)
    clear_stale(inp.work, "done", f"done-{fp}")
    ds = cfg.image_downsample
    create_store(store, inp.n_out, inp.n_views, inp.H // ds, inp.W // ds)
    job = FramesJob(inp.footage, Rig(cams.Ks, ps.extrinsics, tuple(inp.observed)), str(store), ps.centre, ps.heading,
                    tuple(cfg.background), ell, cfg.grid_size)
    res = run_blocks(frames_block, job, inp.n_out, inp.work / f"done-{fp}", inp.workers, "frames", inp.progress)
    boxes = [b for r in res for b in r["boxes"]]
    volume_idx = cfg.volume_idx or crop_indices(boxes, cfg.grid_size)
    inp.log("frames: done")
    return store, volume_idx
