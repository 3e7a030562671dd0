"""The animal-centred cube: the side each frame's hull needs, the side the dataset gets (the config's, checked, or
derived from the animal), and the crop of its grid that holds every frame's carved animal (volume_idx)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import numpy as np

from posesplat.prep.config import PrepConfig
from posesplat.prep.errors import PrepError
from posesplat.prep.track import REACH_DIRS


def cube_needed(reach: np.ndarray, heading: np.ndarray) -> np.ndarray:
    """Side [T] of the heading-aligned cube, centred on the hull's centroid, that holds each frame's hull, from its
    reach [T, REACH_DIRS + 2] (support in horizontal directions of the floor basis, then up and down)."""
    step = 2 * np.pi / REACH_DIRS
    horiz = np.concatenate([reach[:, :REACH_DIRS], reach[:, :1]], 1)  # closed circle for interpolation

    def along(angle: np.ndarray) -> np.ndarray:
        x = np.mod(angle, 2 * np.pi) / step
        i = np.floor(x).astype(int) % REACH_DIRS
        w = x - np.floor(x)
        rows = np.arange(len(reach))
        return (1 - w) * horiz[rows, i] + w * horiz[rows, i + 1]

    half = np.stack([along(heading + k * np.pi / 2) for k in range(4)] + [reach[:, -2], reach[:, -1]], 1)
    return 2 * half.max(1)


ELL_MARGIN, ELL_HOLDS = 1.1, 0.99  # a derived ell holds the carved animal of 99% of frames with a 10% margin


def choose_ell(cfg: PrepConfig, given: Optional[float], need: np.ndarray, ps_unit_m: float, camera_m: float,
               config: Path, log: Callable[[str], None]) -> tuple[float, str]:
    """The cube side in metres and where it came from: the config's (warned when it clips the carved animal in more
    than 1% of frames) or derived from the animal; refuses an animal larger than the cameras' distance from it."""
    derived = ELL_MARGIN * float(np.percentile(need, 100 * ELL_HOLDS))
    if derived > camera_m:
        raise PrepError(f"{config}: the carved animal needs a {derived:.3g} m cube while the cameras stand "
                        f"{camera_m:.3g} m away: the masks, 'mask_threshold' or the calibration ('unit_m') are wrong")
    suggest = f"{derived:.3g} m (ell {derived / ps_unit_m:.3g} in Pose Splatter's unit, or ell_m {derived:.3g})"
    if given is None:
        log(f"ell: {suggest}, derived: holds the carved animal in {ELL_HOLDS:.0%} of frames with a "
            f"{ELL_MARGIN - 1:.0%} margin")
        return derived, "derived"
    key = "ell_m" if cfg.ell_m else "ell"
    holds = float((need <= given).mean())
    if holds < ELL_HOLDS:
        log(f"warning: {key} ({given:.3g} m) holds the whole carved animal in only {holds:.0%} of frames; about "
            f"{suggest} would hold {ELL_HOLDS:.0%}")
    return given, f"config {key}"


def crop_indices(boxes: list, grid_size: int, margin: int = 2, multiple: int = 4) -> list[list[int]]:
    """volume_idx from per-frame occupied-cell boxes: their union plus a margin, widened to a multiple of 4."""
    from posesplat.carve import widened  # deferred: carve loads torch, which the spawned block workers need not

    boxes = [b for b in boxes if b and all(r is not None for r in b)]
    if not boxes:
        raise PrepError("shape carving found no occupied voxel in any frame: check masks, cameras and ell")
    out = []
    for ax in range(3):
        lo = max(min(b[ax][0] for b in boxes) - margin, 0)
        hi = min(max(b[ax][1] for b in boxes) + margin, grid_size)
        out.append(widened(lo, hi, grid_size, multiple))
    return out
