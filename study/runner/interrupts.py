"""Ctrl-C and SIGTERM during a study: recorded, handed to Tune's own interrupt (it saves and returns), and turned into
the exit status (130, 143) with one line saying how to resume."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import threading
import time


TERMINATED = threading.Event()  # set by SIGTERM: the interrupted run exits 143 instead of 130

INTERRUPTED = threading.Event()  # set by Ctrl-C or SIGTERM: a stage's Tuner returned early because of it

SAID = threading.Event()  # the driver printed its last line ("interrupted: ..." or "terminated: ...")

RAY_GCS: list[str] = []  # the address of the GCS of the Ray the driver runs on (connect_ray)

RESUME = "run the same command again to resume the study"

def exit_when_ray_is_gone(rc: int, grace_s: float = 10.0) -> None:
    """Should Ray's GCS die with a SIGTERM (Ray's processes block it only when connect_ray started them), Tune still
    saves its snapshot, but its clean-up and ray.shutdown would wait a minute for the GCS and abort the driver. A
    watcher thread ends the driver with `rc` (and the usual line) once the GCS stops answering and `grace_s` has
    passed."""

    def answers(address: str) -> bool:
        host, _, port = address.rpartition(":")
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
            return True
        except OSError:
            return False

    def watch():
        deadline = time.time() + grace_s
        while not RAY_GCS or answers(RAY_GCS[0]) or time.time() < deadline:
            time.sleep(0.5)
        if not SAID.is_set():
            print(f"terminated: {RESUME}", file=sys.stderr, flush=True)
        os._exit(rc)

    threading.Thread(target=watch, daemon=True, name="exit-when-ray-is-gone").start()

@contextlib.contextmanager
def signals_as_interrupt():
    """Ctrl-C (SIGINT) and SIGTERM (what a cluster scheduler sends) recorded, then handled alike: while a Tuner
    runs, by Tune's own interrupt handler (SIGUSR1's: it saves the experiment's state and returns); otherwise, or on
    a second signal, KeyboardInterrupt. Tune's SIGINT handler is off, so that the driver knows a stage that returned
    unfinished was interrupted (fit_stage). connect_ray puts SIGTERM's back after ray.init."""

    def handler(signum, frame):
        again = INTERRUPTED.is_set()
        INTERRUPTED.set()
        if signum == signal.SIGTERM:
            TERMINATED.set()
            if not again:
                exit_when_ray_is_gone(143)
        tune_handler = signal.getsignal(signal.SIGUSR1)  # Tune's, installed for the duration of a fit
        if callable(tune_handler) and not again:
            tune_handler(signal.SIGUSR1, frame)
        else:
            raise KeyboardInterrupt

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    tune_sigint = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        if tune_sigint is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = tune_sigint
