"""`python -m study.resources`: the GPU memory model (study.runner.resources). Its names stay importable here: a
study started before the move pickled this module by name (a trial's resources function refers to it)."""

import sys

from study.runner.resources import *  # noqa: F401,F403
from study.runner.resources import main

if __name__ == "__main__":
    sys.exit(main())
