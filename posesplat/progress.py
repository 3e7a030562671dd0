"""Progress of long work: tqdm's bar on a terminal; where stderr is piped (a log file, CI, a cluster job) no
carriage-return updates, only one plain line when a stage starts and one when it ends."""

from __future__ import annotations

import sys
import time

from tqdm import tqdm


class Progress(tqdm):
    """A tqdm bar (same arguments) that prints `desc: started (N unit)` / `desc: done in T s` when piped."""

    def __init__(self, *args, **kwargs):
        self.piped = not kwargs.get("disable", False) and not (hasattr(sys.stderr, "isatty") and sys.stderr.isatty())
        if self.piped:
            kwargs["disable"] = True
        super().__init__(*args, **kwargs)
        if self.piped:
            self._t0, self._said_done, self._label = time.time(), False, kwargs.get("desc") or "working"
            total = kwargs.get("total") or (len(args[0]) if args and hasattr(args[0], "__len__") else None)
            size = f" ({total} {kwargs.get('unit', 'it')})" if total else ""
            print(f"{self._label}: started{size}", file=sys.stderr, flush=True)

    def __iter__(self):
        yield from super().__iter__()
        if self.piped:
            self.close()

    def close(self):
        if getattr(self, "piped", False) and not self._said_done:
            self._said_done = True
            print(f"{self._label}: done in {time.time() - self._t0:.1f} s", file=sys.stderr, flush=True)
        super().close()
