"""`python -m posesplat.prep CONFIG [--out DATASET.zarr] [--workers N] [--trim]` (see posesplat.prep.main)."""

import sys

from posesplat.prep import main

if __name__ == "__main__":  # a spawned worker imports no package's __main__, but guard anyway
    sys.exit(main())
