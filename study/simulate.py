"""`python -m study.simulate`: the decision procedure's simulation (study.analysis.simulate)."""

import sys

from study.analysis.simulate import main

if __name__ == "__main__":
    sys.exit(main())
