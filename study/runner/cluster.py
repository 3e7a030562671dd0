"""The Ray the study runs on: the study's own local instance or a cluster, and the GPUs it has."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
from typing import Optional

import ray

from study.runner import resources
from study.runner.interrupts import INTERRUPTED, RAY_GCS, TERMINATED
from study.base.storage import StudyError
from study.runner.options import Options


DEFAULT_GPU_MEM_MB = 16e3

def detect_gpu(args: Options) -> tuple[bool, Optional[float], list[str]]:
    """(trials get GPUs, memory of one GPU in MB, notes). Locally from torch; with --address from the cluster's
    resources, since the driver may run on a CPU-only head node. `--cpu` forces CPU; `--gpu-mem-mb` sets the memory
    (else it is measured: locally, or by a small task on a cluster GPU; DEFAULT_GPU_MEM_MB when that fails)."""
    if args.cpu:
        return False, None, []
    if not args.address:
        mem = resources.detect_gpu_mem_mb()
        return mem is not None, (args.gpu_mem_mb or mem) if mem is not None else None, []
    connect_ray(args.address)
    if ray.cluster_resources().get("GPU", 0) <= 0:
        return False, None, []
    mem = args.gpu_mem_mb or cluster_gpu_mem_mb()
    if mem:
        return True, mem, []
    return True, DEFAULT_GPU_MEM_MB, [f"note: could not measure the memory of the cluster's GPUs: the memory model "
                                      f"assumes {DEFAULT_GPU_MEM_MB:.0f} MB per GPU (set it with --gpu-mem-mb)"]

def cluster_gpu_mem_mb(timeout_s: float = 60.0) -> Optional[float]:
    """Memory (MB) of a GPU of the connected cluster, from a tiny task on a GPU node; None if there is no CUDA
    there or no GPU frees up within timeout_s."""
    ref = ray.remote(num_cpus=0, num_gpus=0.01, max_retries=0)(resources.detect_gpu_mem_mb).remote()
    ready, _ = ray.wait([ref], timeout=timeout_s)
    if not ready:
        ray.cancel(ref, force=True)
        return None
    try:
        return ray.get(ref)
    except Exception:  # e.g. torch missing on that node: the trials would say so themselves
        return None

def connect_ray(address: Optional[str]) -> None:
    """Join the cluster at `address`, or start the study's own local Ray (unless Ray is already up in-process)."""
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # "local": a fresh instance even when another Ray runs on this machine (ray.init() would join it)
    # SIGTERM blocked in this thread while Ray starts: the processes it starts inherit the mask, so SIGTERM to the
    # driver's process group reaches the driver alone (as Ray does for SIGINT)
    driver_sigterm = signal.getsignal(signal.SIGTERM)
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        ray.init(address=address or "local", include_dashboard=False, log_to_driver=False,
                 **({} if address else {"num_cpus": os.cpu_count()}))
        signal.signal(signal.SIGTERM, driver_sigterm)  # the driver's (signals_as_interrupt), not Ray's sys.exit
    except SystemExit as e:  # ray.init's own SIGTERM handler ran (another thread took the signal): sys.exit(15)
        if e.code != signal.SIGTERM:
            raise
        INTERRUPTED.set()
        TERMINATED.set()
        raise KeyboardInterrupt from None
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    RAY_GCS[:] = [ray.get_runtime_context().gcs_address]

@contextlib.contextmanager
def own_ray():
    """Shut down, on leaving, a Ray that the block started (connect_ray): a study run as a library call leaves no Ray
    behind, while a Ray its caller had started stays up."""
    started_before = ray.is_initialized()
    try:
        yield
    finally:
        if not started_before and ray.is_initialized():
            ray.shutdown()

def check_reachable(address: str) -> None:
    """Refuse a cluster address nobody answers at (ray.init would wait minutes); 'auto' is left to Ray."""
    host, _, port = address.split("://")[-1].rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as e:
        raise StudyError(f"--address {address}: no Ray cluster answers there ({e.strerror or e})") from None
