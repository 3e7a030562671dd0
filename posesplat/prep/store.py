"""The finish step and the output's guard. The finished store gets the cameras, poses and attributes and is swapped
into place. An output that prep did not write is never replaced. One already up to date is left as it is."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import zarr

from posesplat.io import swap_folder
from posesplat.prep.cache import PREP_VERSION
from posesplat.prep.cameras import Cameras
from posesplat.prep.errors import PrepError
from posesplat.prep.inputs import Inputs
from posesplat.prep.pose import Pose

GENERATOR = "posesplat.prep"  # the store's `generator` attribute, which marks an output prep may replace


def _attrs(path: Path) -> dict:

    try:
        return dict(zarr.open_group(str(path), mode="r").attrs)
    except Exception:  # not a zarr group: treat as foreign
        return {}


def up_to_date(out: Path, fp: str, log: Callable[[str], None]) -> bool:
    """Whether `out` already holds the dataset of fingerprint fp; refuses an `out` that prep did not write."""
    if out.exists() and _attrs(out).get("prep_fingerprint") == fp:
        log(f"{out}: up to date")
        return True
    if out.exists() and _attrs(out).get("generator") != GENERATOR:
        raise PrepError(f"{out}: exists and was not written by {GENERATOR}; remove it or choose another --out")
    return False


def store_attrs(inp: Inputs, cams: Cameras, ps: Pose, fp: str, ell: float, ell_source: str,
                volume_idx: list[list[int]]) -> dict:
    """The dataset's attributes (docs/dataset.md, docs/prep.md)."""
    cfg = inp.cfg
    scale = np.diag([cams.unit_m] * 3 + [1.0])
    return {
        "generator": GENERATOR, "generator_version": PREP_VERSION, "format_version": 1,
        "args": {"config": str(inp.config.resolve()), **cfg.model_dump()}, "prep_fingerprint": fp,
        "ell": ell, "ell_source": ell_source, "grid_size": cfg.grid_size, "volume_idx": volume_idx,
        "background": [float(b) for b in cfg.background], "up": [0.0, 0.0, 1.0], "units": "m",
        "calibration_unit_m": cams.unit_m, "pose_splatter_unit_m": cams.ps_unit_m, "fps": inp.fps,
        "source_frames": inp.n_src, "frame_jump": cfg.frame_jump, "up_method": str(ps.up_method),
        "world_from_calibration": (ps.world_from_calib @ scale).tolist(),
    }


def finish(inp: Inputs, cams: Cameras, ps: Pose, store: Path, fp: str, attrs: dict) -> None:
    """Write the cameras, poses and attributes into the store, then swap it into place as the output."""
    root = zarr.open_group(str(store), mode="r+")
    for name, arr in (("intrinsics", cams.Ks), ("extrinsics", ps.extrinsics),
                      ("centre", ps.centre), ("heading", ps.heading),
                      ("holdout_views", np.array(inp.holdout, dtype=np.int64))):
        if name in root:
            del root[name]
        root.create_array(name, data=arr)
    root.attrs.update(attrs)
    for stray in store.rglob("*.partial"):  # zarr's temporary files left by a killed writer
        stray.unlink()
    swap_folder(store, inp.out)  # `out` was refused by up_to_date unless posesplat.prep wrote it
    shutil.rmtree(inp.work / f"done-{fp}", ignore_errors=True)
    ds, C = inp.cfg.image_downsample, inp.n_views
    inp.log(f"wrote {inp.out} ({inp.n_out} frames, {C} cameras, {inp.W // ds}x{inp.H // ds}, up from "
            f"{ps.up_method}, ell {attrs['ell']:.4g} m, volume_idx {attrs['volume_idx']})")
