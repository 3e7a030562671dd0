"""`python -m study.run --space comparison`: the study command (study.runner.run)."""

import sys

from study.runner.run import main

if __name__ == "__main__":
    sys.exit(main())
