"""posesplat.prep: import Pose Splatter / DANNCE-layout recordings into the dataset format, with no manual steps.

`python -m posesplat.prep CONFIG [--out DATASET.zarr] [--workers N] [--trim]`; `prep(config, ...)` in Python.

Each step is written atomically with its inputs' fingerprint into a work folder beside the output. So a re-run
skips what is finished and an interrupted run resumes. The steps:
`cameras` (HDF5 -> metric OpenCV cameras).
`track` (per frame: a centre triangulated from the masks, then the visual hull's centroid and covariance).
`pose` (up direction, world frame, smoothed centres, headings from the hull's principal axis with the 180-degree
ambiguity resolved by continuity).
`frames` (images and masks written in parallel, one zarr chunk per frame, no locks; crop indices from the carved
volumes).
`finish` (the store is renamed into place). See docs/prep.md.

Modules, in the order prep() uses them (pipeline.py): config.py and inputs.py (the config, its files and the
videos checked: videos.py), cameras.py, up.py, track.py (with hull.py's per-frame geometry), pose.py, cube.py (the
cube's side and crop), frames.py, store.py (finish). Also cache.py and blocks.py, which run the steps resumably and
in parallel. And cli.py, the command line.
"""

from posesplat.prep.cache import PREP_VERSION
from posesplat.prep.cli import main
from posesplat.prep.config import PrepConfig, load_prep_config
from posesplat.prep.errors import PrepError
from posesplat.prep.frames import FAULT_ENV
from posesplat.prep.pipeline import prep
from posesplat.prep.pose import headings_from_axes
from posesplat.prep.up import find_up, up_from_lines
from posesplat.prep.videos import read_video

__all__ = ["prep", "main", "PrepError", "PrepConfig", "load_prep_config", "PREP_VERSION", "FAULT_ENV", "find_up",
           "up_from_lines", "headings_from_axes", "read_video"]
