"""Per-trial resources: CPUs, and a GPU fraction sized by a memory model so trials that need more get more.

The model is linear in the number of voxels of the grid (what benchmark table 2 shows), per mode:
    peak_mb(mode, grid) = BASE_MB[mode] + PER_KVOXEL_MB[mode] * grid_size**3 / 1000
The coefficients come from `python -m bench` (docs/benchmarks.md). They were measured on CPU (resident-set
high-water mark) because no GPU was available when they were fitted; GPU allocations are of the same tensors, and
the fraction keeps a 1.5x safety factor.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

BASE_MB = {"3d": 150.0, "2d": 150.0, "2d_screen": 150.0}
PER_KVOXEL_MB = {"3d": 0.55, "2d": 0.55, "2d_screen": 0.45}
SAFETY = 1.5


def load_model() -> dict[str, tuple[float, float]]:
    """(base MB, MB per 1000 voxels) per mode: study/memory_model.json written by `python -m bench`, else defaults."""
    path = Path(__file__).with_name("memory_model.json")
    model = {m: (BASE_MB[m], PER_KVOXEL_MB[m]) for m in BASE_MB}
    if path.exists():
        for m, c in json.loads(path.read_text())["modes"].items():
            model[m] = (c["base_mb"], c["per_kvoxel_mb"])
    return model


def peak_mb(mode: str, grid_size: int) -> float:
    """Estimated peak memory of one training step (MB)."""
    base, per = load_model()[mode]
    return base + per * grid_size**3 / 1000


def gpu_fraction(mode: str, grid_size: int, gpu_mem_mb: float) -> float:
    """Smallest quarter of a GPU that holds the trial with the safety factor (at most one GPU)."""
    need = SAFETY * peak_mb(mode, grid_size) / gpu_mem_mb
    return min(1.0, max(0.25, math.ceil(need * 4) / 4))


def detect_gpu_mem_mb() -> Optional[float]:
    """Memory of the local GPU 0, or None without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_properties(0).total_memory / 2**20
