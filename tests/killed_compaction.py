"""`python tests/killed_compaction.py N ARGS...`: `python -m study.run ARGS...` whose Nth compaction of a trial's
metrics (study.base.metrics_folder.compact) kills the driver's whole process group with SIGKILL after the trial
file is written and its first part removed: the moment a kill leaves a trial file beside some of its parts."""

import os
import signal
import sys

from study.base import metrics_folder
from study.runner.run import main

N = int(sys.argv.pop(1))
real_compact = metrics_folder.compact
calls = 0


def compact(store, tid, names=None):
    global calls
    calls += 1
    if calls == N:
        delete = store.delete

        def delete_then_die(*parts):
            delete(*parts)
            os.killpg(0, signal.SIGKILL)

        store.delete = delete_then_die  # this store only: the trial file is written before any part is removed
    return real_compact(store, tid, names)


metrics_folder.compact = compact  # the sink calls it through the module

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
