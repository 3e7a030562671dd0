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
from posesplat.prep.videos import Footage, close_readers, read_frames, read_masks

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


def composite(frames: np.ndarray, mask_full: np.ndarray, mask: np.ndarray, ds: int, bg: np.ndarray) -> np.ndarray:
    """RGB frames [..., H, W, 3] -> uint8 [..., H/ds, W/ds, 3] on the background colour: composite, box-average,
    re-mask (masks [..., H, W] and [..., H/ds, W/ds]). Without downsampling the pixels are the frame's or the
    background's rounded, so it stays in uint8 (the same values as the float path): the background filled, then the
    foreground's pixels copied by index (a few percent of a frame, so faster than a select over every pixel)."""
    if ds == 1:
        out = np.empty(frames.shape, np.uint8)  # C order, so that the reshapes below are views of it
        row = np.tile(np.round(bg * 255).clip(0, 255).astype(np.uint8), frames.shape[-2])  # [W * 3]
        out.reshape(-1, len(row))[:] = row  # an image row at a time: 40x faster than broadcasting [3]
        idx = np.flatnonzero(np.broadcast_to(mask, frames.shape[:-1]))  # pixel ids over [..., H, W]
        out.reshape(-1, 3)[idx] = frames.reshape(-1, 3)[idx]
        return out
    img = np.where(mask_full[..., None], frames.astype(np.float32), bg * 255)
    h, w = img.shape[-3] // ds * ds, img.shape[-2] // ds * ds
    img = img[..., :h, :w, :].reshape(*img.shape[:-3], h // ds, ds, w // ds, ds, 3).mean((-4, -2))
    img = np.where(mask[..., None], img, bg * 255)
    return np.round(img).clip(0, 255).astype(np.uint8)


def composited(frames: np.ndarray, mask_full: np.ndarray, mask: np.ndarray, ds: int, bg: np.ndarray) -> np.ndarray:
    """A block's frames [F, V, H, W, 3] composited (see composite): at once without downsampling (uint8 throughout),
    else frame by frame, which bounds the float temporaries to one frame's."""
    if ds == 1:
        return composite(frames, mask_full, mask, ds, bg)
    return np.stack([composite(frames[f], mask_full[f], mask[f], ds, bg) for f in range(len(frames))])


def occupied_box(job: FramesJob, local: np.ndarray, small: np.ndarray, j: int) -> list:
    """Output frame j's carved animal in the heading-aligned cube (cell centres `local` [G^3, 3], masks [V, h, w]):
    per axis [first, last + 1] of its occupied cells, None where none."""
    Ks, Es, G = job.rig.Ks, job.rig.Es, job.grid_size
    c, s = np.cos(job.headings[j]), np.sin(job.headings[j])
    world = local @ np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]).T + job.centres[j]  # [G^3, 3]
    seen = [v for v in job.rig.observed if small[v].any()]
    occ = hull(small[seen], Ks[seen], Es[seen], world) if len(seen) >= 2 else np.zeros(len(world), bool)
    occ = occ.reshape(G, G, G)
    idx = [np.flatnonzero(occ.any(axis=tuple(a for a in range(3) if a != ax))) for ax in range(3)]
    return [[int(i.min()), int(i.max()) + 1] if len(i) else None for i in idx]


def frames_block(job: FramesJob, j0: int, j1: int) -> dict[str, list]:
    """Write output frames j0..j1 (images, masks: one chunk each) and return each frame's occupied-cell box."""
    root = zarr.open_group(job.store, mode="r+")
    ft, bg = job.footage, np.asarray(job.background)
    views = list(range(len(ft.videos)))
    rgb = read_frames(ft.videos, ft.video_fps, views, j0, j1, ft.frame_jump)  # [F, V, H, W, 3]
    full, small = read_masks(ft, views, j0, j1)  # [F, V, H, W], [F, V, h, w]
    fast = {"write_empty_chunks": True}  # no test of each chunk for all fill values: it took 5x the write
    root["images"].with_config(fast)[j0:j1] = composited(rgb, full, small, ft.ds, bg)
    if os.environ.get(FAULT_ENV, "") == f"frames:{j0 // BLOCK}":  # test hook: die between images and masks
        os.kill(os.getpid(), signal.SIGKILL)
    root["masks"].with_config(fast)[j0:j1] = small.view(np.uint8)  # bool as 0/1 bytes, no copy
    local = grid_points(job.grid_size, job.ell)  # [G^3, 3] the cube's cell centres
    return {"boxes": [occupied_box(job, local, small[j - j0], j) for j in range(j0, j1)]}


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
    try:
        res = run_blocks(frames_block, job, inp.n_out, inp.work / f"done-{fp}", inp.workers, "frames", inp.progress)
    finally:
        close_readers()  # those of this process (blocks run here with one worker)
    boxes = [b for r in res for b in r["boxes"]]
    volume_idx = cfg.volume_idx or crop_indices(boxes, cfg.grid_size)
    inp.log("frames: done")
    return store, volume_idx
