"""The first step: the config read and checked, its files resolved, the videos measured, and where the run writes."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from posesplat.prep.cache import file_id
from posesplat.prep.config import PrepConfig, load_prep_config
from posesplat.prep.up import read_vertical_lines
from posesplat.prep.videos import Footage, check_videos


@dataclass(frozen=True, eq=False)
class Inputs:
    """One run's checked inputs, where it writes and how it reports: what every later step reads."""

    config: Path  # the config file
    cfg: PrepConfig
    files: dict[str, Path]  # "camera", "video c", "mask video c", "vertical lines" -> the resolved file
    source: dict[str, list]  # the same names -> file identity (path, size, mtime), for the fingerprints
    lines: Optional[list]  # per camera, vertical segments [[u1, v1], [u2, v2]] in video pixels; None: not given
    lines_source: str  # where the segments came from, for error messages
    holdout: list[int]  # held-out cameras
    observed: list[int]  # the other cameras, which carve
    n_src: int  # source frames (of the shortest video with --trim)
    n_out: int  # output frames: every frame_jump-th source frame
    W: int  # video width, pixels
    H: int  # video height, pixels
    fps: float  # the first video's container rate
    footage: Footage
    out: Path  # the dataset to write
    work: Path  # the steps' work folder beside it
    workers: int
    progress: bool
    log: Callable[[str], None]

    @property
    def n_views(self) -> int:
        return len(self.cfg.video_fns)


def read_inputs(config: Path, out: Optional[str | Path], workers: Optional[int], progress: bool,
                log: Callable[[str], None], trim: bool) -> Inputs:
    """Read and check everything prep is given, before any step runs (each check refuses with a PrepError)."""
    from posesplat.data import default_holdout  # deferred: it loads torch, which the spawned block workers need not

    cfg, files, unused = load_prep_config(config)
    if unused:
        log(f"config keys not used: {'; '.join(unused)}")
    lines, lines_source = read_vertical_lines(cfg, files, config)
    out = Path(out) if out is not None else Path(cfg.project_directory).absolute() / "dataset.zarr"
    work = out.with_name(out.name + ".prep")
    workers = workers or min(os.cpu_count() or 1, 8)
    C = len(cfg.video_fns)
    holdout = cfg.holdout_views if cfg.holdout_views is not None else default_holdout(C)
    if cfg.holdout_views is None:
        log(f"holdout_views: {holdout} (not in the config: the default for {C} cameras)")
    n_src, W, H, fps, seek = check_videos(cfg, files, config, trim, log)
    n_out = len(range(0, n_src, cfg.frame_jump))
    observed = [c for c in range(C) if c not in holdout]
    source = {k: file_id(p) for k, p in files.items()}
    work.mkdir(parents=True, exist_ok=True)
    return Inputs(config, cfg, files, source, lines, lines_source, holdout, observed, n_src, n_out, W, H, fps,
                  Footage.of(cfg, files, seek), out, work, workers, progress, log)
