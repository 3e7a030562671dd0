"""prep(): the steps in order, each a function of the inputs and the earlier steps' outputs (docs/prep.md)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from posesplat.prep.cameras import cameras_step
from posesplat.prep.cube import choose_ell
from posesplat.prep.frames import frames_fingerprint, frames_step
from posesplat.prep.inputs import read_inputs
from posesplat.prep.pose import pose_step
from posesplat.prep.store import finish, store_attrs, up_to_date
from posesplat.prep.track import config_sides, track_step
from posesplat.prep.up import up_from_config_lines


def prep(config: str | Path, out: Optional[str | Path] = None, workers: Optional[int] = None,
         progress: bool = True, log: Callable[[str], None] = lambda s: print(f"prep: {s}", file=sys.stderr),
         trim: bool = False) -> Path:
    """Import a recording; returns the dataset path. Re-running skips finished steps and resumes interrupted ones."""
    inp = read_inputs(Path(config), out, workers, progress, log, trim)
    cams = cameras_step(inp)
    lines_up = up_from_config_lines(inp.cfg, inp.lines, inp.lines_source, cams.Ks, cams.Es)  # fails before tracking
    ell_given, track_side = config_sides(inp.cfg, cams.ps_unit_m)
    tr = track_step(inp, cams, ell_given, track_side)
    ps = pose_step(inp, cams, tr, lines_up)
    ell, ell_source = choose_ell(inp.cfg, ell_given, ps.need, cams.ps_unit_m, float(np.median(cams.distances)),
                                 inp.config, log)
    fp = frames_fingerprint(inp, ps, ell)
    if up_to_date(inp.out, fp, log):
        return inp.out
    store, volume_idx = frames_step(inp, cams, ps, ell, fp)
    finish(inp, cams, ps, store, fp, store_attrs(inp, cams, ps, fp, ell, ell_source, volume_idx))
    return inp.out
