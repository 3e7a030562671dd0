"""Import Pose Splatter / DANNCE-layout recordings into the dataset format, with no manual steps.

`python -m posesplat.prep CONFIG [--out DATASET.zarr] [--workers N] [--trim]` (docs/prep.md)
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures.process import BrokenProcessPool
from typing import Optional

from posesplat.prep.errors import PrepError
from posesplat.prep.pipeline import prep


def main(argv: Optional[list[str]] = None) -> int:
    """The command line: 0 on success, 2 for a refused input (one line on stderr), 1 when a worker died."""
    p = argparse.ArgumentParser(prog="python -m posesplat.prep", description=__doc__.splitlines()[0])
    p.add_argument("config", help="Pose Splatter-style JSON config (docs/prep.md)")
    p.add_argument("--out", help="dataset to write (default: dataset.zarr in project_directory, which Pose Splatter "
                                        "resolves against the current directory)")
    p.add_argument("--workers", type=int, default=None, help="parallel processes (default: CPUs, at most 8)")
    p.add_argument("--trim", action="store_true",
                   help="videos of unequal length: use the first frames of each, as many as the shortest holds "
                        "(default: refuse)")
    a = p.parse_args(argv)
    try:
        prep(a.config, a.out, a.workers, trim=a.trim)
    except PrepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenProcessPool:
        print("error: a worker process died (out of memory or killed); run the same command again to resume",
              file=sys.stderr)
        return 1
    return 0
