"""Per-trial resources: CPUs, and a GPU fraction sized by a memory model so trials that need more get more.

The model is linear in the voxels of the grid and in the pixels of an image (what benchmark table 2 shows), per mode:
    peak_mb(mode, grid, pixels) = base_mb + per_kvoxel_mb * grid_size**3 / 1000 + per_kpixel_mb * pixels / 1000
The coefficients come from `python -m bench` table 2 (docs/benchmarks.md), written to study/memory_model.json with
the device they were measured on. Measured on CPU (resident-set high-water mark with the torch renderer) they
overestimate a GPU trial that renders with gsplat, which needs far less memory per pixel; the fraction also keeps a
1.5x safety factor. A trial's pixels are those of the dataset's images after `image_downsample`; where they are not
known the paper's 288x256 is assumed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import NamedTuple, Optional

PAPER_PIXELS = 288 * 256  # 1152x1024 downsampled by 4
SAFETY = 1.5
MODEL_FILE = Path(__file__).with_name("memory_model.json")


class MemoryModel(NamedTuple):
    base_mb: float
    per_kvoxel_mb: float
    per_kpixel_mb: float = 0.0


DEFAULT = MemoryModel(150.0, 0.55, 20.0)  # used only without study/memory_model.json


def load_model(path: Path = MODEL_FILE) -> dict[str, MemoryModel]:
    """MemoryModel per mode from `path` (written by `python -m bench`), else DEFAULT for every mode."""
    if not path.exists():
        return {m: DEFAULT for m in ("3d", "2d", "2d_screen")}
    return {m: MemoryModel(c["base_mb"], c["per_kvoxel_mb"], c.get("per_kpixel_mb", 0.0))
            for m, c in json.loads(path.read_text())["modes"].items()}


def peak_mb(mode: str, grid_size: int, pixels: int = PAPER_PIXELS,
            model: Optional[dict[str, MemoryModel]] = None) -> float:
    """Estimated peak memory of one training step (MB), by `model` or the shipped one."""
    m = (model or load_model())[mode]
    return m.base_mb + m.per_kvoxel_mb * grid_size**3 / 1000 + m.per_kpixel_mb * pixels / 1000


def gpu_fraction(mode: str, grid_size: int, gpu_mem_mb: float, pixels: int = PAPER_PIXELS,
                 model: Optional[dict[str, MemoryModel]] = None) -> float:
    """Smallest quarter of a GPU that holds the trial with the safety factor (at most one GPU)."""
    need = SAFETY * peak_mb(mode, grid_size, pixels, model) / gpu_mem_mb
    return min(1.0, max(0.25, math.ceil(need * 4) / 4))


def detect_gpu_mem_mb() -> Optional[float]:
    """Memory of the local GPU 0, or None without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_properties(0).total_memory / 2**20
