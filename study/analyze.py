"""`python -m study.analyze STUDY...`: the decision report (study.analysis.analyze)."""

import sys

from study.analysis.analyze import main

if __name__ == "__main__":
    sys.exit(main())
