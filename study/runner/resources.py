"""Per-trial resources: CPUs, and a GPU fraction sized by a memory model so trials that need more get more.

The model is linear in the voxels of the grid and in the pixels of an image (what benchmark table 2 shows). Per mode:
    peak_mb(mode, grid, pixels) = base_mb + per_kvoxel_mb * grid_size**3 / 1000 + per_kpixel_mb * pixels / 1000
The coefficients come from `python -m bench` table 2 (docs/benchmarks.md). They are written to
study/runner/memory_model.json with the device they were measured on. Measured on CPU (resident-set high-water mark with
the torch renderer) they overestimate a GPU trial that renders with gsplat, which needs far less memory per pixel; the
fraction also keeps a 1.5x safety factor. A trial's pixels are those of the dataset's images after `image_downsample`;
where they are not known the paper's 288x256 is assumed. Fractions are multiples of STEP (1/20 of a GPU), at least
1/max_trials_per_gpu (space `resources.max_trials_per_gpu`, default 8) and at most one GPU; a trial that runs out of GPU
memory is retried with twice its fraction (study.runner.search.TrialRetries). After a study,
`python -m study.resources STUDY [--write]` refits the model from the peaks its trials measured.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np
import torch

from posesplat.config import make_config
from posesplat.data import open_dataset
from posesplat.io import atomic_write
from posesplat.metrics import PEAK_MEM
from posesplat.modes import names
from study.analysis.load import load_studies, memory_column
from study.base.space import MODE_KEY

PAPER_PIXELS = 288 * 256  # 1152x1024 downsampled by 4
SAFETY = 1.5
STEP = 0.05  # GPU fractions are multiples of 1/20 of a GPU
MAX_TRIALS_PER_GPU = 8  # default cap: no trial gets less than 1/8 of a GPU, so compute is not oversubscribed
MODEL_FILE = Path(__file__).with_name("memory_model.json")


class MemoryModel(NamedTuple):
    base_mb: float
    per_kvoxel_mb: float
    per_kpixel_mb: float = 0.0


DEFAULT = MemoryModel(150.0, 0.55, 20.0)  # used only without study/runner/memory_model.json


def load_model(path: Path = MODEL_FILE) -> dict[str, MemoryModel]:
    """MemoryModel per mode from `path` (written by `python -m bench`), else DEFAULT for every mode."""
    if not path.exists():
        return {m: DEFAULT for m in names()}
    return {m: MemoryModel(c["base_mb"], c["per_kvoxel_mb"], c.get("per_kpixel_mb", 0.0))
            for m, c in json.loads(path.read_text())["modes"].items()}


def peak_mb(mode: str, grid_size: int, pixels: int = PAPER_PIXELS,
            model: Optional[dict[str, MemoryModel]] = None) -> float:
    """Estimated peak memory of one training step (MB), by `model` or the shipped one. A mode the model has no
    coefficients for (added after the fit) gets the largest estimate of the fitted modes, with one warning."""
    model = load_model() if model is None else model
    if mode in model:
        fits = [model[mode]]
    else:
        warnings.warn(f"memory model: no coefficients for mode {mode!r}; sized as the largest fitted mode "
                      "(fit it: python -m bench)", stacklevel=2)
        fits = list(model.values()) or [DEFAULT]
    return max(m.base_mb + m.per_kvoxel_mb * grid_size**3 / 1000 + m.per_kpixel_mb * pixels / 1000 for m in fits)


def gpu_fraction(mode: str, grid_size: int, gpu_mem_mb: float, pixels: int = PAPER_PIXELS,
                 model: Optional[dict[str, MemoryModel]] = None, max_per_gpu: int = MAX_TRIALS_PER_GPU) -> float:
    """Smallest multiple of STEP of a GPU that holds the trial with the safety factor, at least 1/max_per_gpu (so at
    most max_per_gpu trials share a GPU) and at most one GPU."""
    need = SAFETY * peak_mb(mode, grid_size, pixels, model) / gpu_mem_mb
    stepped = math.ceil(round(need / STEP, 6)) * STEP
    return round(min(1.0, max(stepped, 1.0 / max_per_gpu)), 4)


def oom_resized(fraction: float) -> Optional[float]:
    """The fraction a trial that ran out of GPU memory is retried with: doubled, at most one GPU (None at one)."""
    return None if fraction >= 1.0 else round(min(1.0, 2 * fraction), 4)


def refit(rows, pixels: Optional[int] = None, prior: Optional[dict[str, MemoryModel]] = None,
          ) -> dict[str, MemoryModel]:
    """The memory model refitted from peaks a study measured: per mode, least squares of `peak_mb` on
    [1, grid_size**3/1000] (+ pixels/1000 when the rows' pixels vary). `rows` has columns gaussian_mode, grid_size,
    peak_mb and optionally pixels; a study's images all have one size, so the pixel coefficient is then kept from
    `prior` (the shipped model) and its share subtracted first. Modes with fewer than two grid sizes keep `prior`."""
    prior = load_model() if prior is None else prior
    out = dict(prior)
    for mode, g in rows.groupby(MODE_KEY):
        g = g[np.isfinite(g["peak_mb"].astype(float))]
        if g["grid_size"].nunique() < 2:
            continue
        kvox = g["grid_size"].astype(float).to_numpy() ** 3 / 1000
        y = g["peak_mb"].astype(float).to_numpy()
        kpix = (g["pixels"].astype(float).to_numpy() if "pixels" in g else np.full(len(g), pixels or PAPER_PIXELS)) / 1000
        p = prior.get(mode, DEFAULT)
        if np.ptp(kpix) > 0:
            coef, *_ = np.linalg.lstsq(np.column_stack([np.ones_like(kvox), kvox, kpix]), y, rcond=None)
            out[mode] = MemoryModel(*(float(c) for c in coef))
        else:
            coef, *_ = np.linalg.lstsq(np.column_stack([np.ones_like(kvox), kvox]), y - p.per_kpixel_mb * kpix,
                                       rcond=None)
            out[mode] = MemoryModel(float(coef[0]), float(coef[1]), p.per_kpixel_mb)
    return out


def change_line(mode: str, old: Optional[MemoryModel], new: MemoryModel) -> str:
    """One line of the refit's report: a mode's coefficients before and after (a mode the model lacked: "new")."""
    if old is None:
        return (f"  {mode}: new, base {new.base_mb:.1f} MB, per kvoxel {new.per_kvoxel_mb:.4f} MB, per kpixel "
                f"{new.per_kpixel_mb:.4f} MB")
    return (f"  {mode}: base {old.base_mb:.1f} -> {new.base_mb:.1f} MB, per kvoxel {old.per_kvoxel_mb:.4f} -> "
            f"{new.per_kvoxel_mb:.4f} MB, per kpixel {new.per_kpixel_mb:.4f} MB"
            + ("" if new != old else " (unchanged: too few grids)"))


def detect_gpu_mem_mb() -> Optional[float]:
    """Memory of the local GPU 0, or None without CUDA."""
    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_properties(0).total_memory / 2**20


def write_model(model: dict[str, dict], device: str, source: str, path: Path = MODEL_FILE) -> None:
    """Write a memory model file (through a temporary name)."""
    atomic_write(path, json.dumps({"source": source, "device": device, "modes": model}, indent=1))


def study_peaks(study: Path) -> tuple["object", str]:
    """(rows: gaussian_mode, grid_size, peak_mb = each trial's largest peak, the memory kind they measured) of a
    study's explore and confirm stages; CUDA peaks (cuda_max_allocated) when there are any, else CPU ones."""
    paths = [study] + ([study / "confirm"] if (study / "confirm" / "metrics").is_dir() else [])
    m = load_studies(paths).metrics
    col = memory_column(m)
    if col is None:
        raise ValueError(f"{study}: its metrics hold no peak memory ({' or '.join(PEAK_MEM.values())})")
    rows = m.groupby(["study", "trial_id"]).agg(**{MODE_KEY: (MODE_KEY, "first")},
                                                grid_size=("grid_size", "first"), peak_mb=(col, "max"))
    kind = next(k for k, c in PEAK_MEM.items() if c == col)
    return rows[rows["peak_mb"].notna()].reset_index(drop=True), kind


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m study.resources",
                                description="Refit the GPU memory model from the peaks a study's trials measured.")
    p.add_argument("study", help="study directory (its explore and confirm metrics are read)")
    p.add_argument("--pixels", type=int, help="pixels of one training image (default: from the study's dataset and "
                                              "image_downsample)")
    p.add_argument("--write", action="store_true", help=f"write the refitted model to {MODEL_FILE} (default: print)")
    a = p.parse_args(argv)
    study = Path(a.study)
    try:
        rows, kind = study_peaks(study)
        pixels = a.pixels or study_pixels(study)
    except (ValueError, OSError) as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    old = load_model()
    new = refit(rows, pixels, old)
    print(f"memory model refitted from {len(rows)} trials of {study} ({kind} peaks, {pixels} pixels per image):")
    for mode in sorted(new):
        print(change_line(mode, old.get(mode), new[mode]))
    if a.write:
        write_model({m: c._asdict() for m, c in new.items()}, "cuda" if kind.startswith("cuda") else "cpu",
                    f"python -m study.resources {study} ({kind} peaks)")
        print(f"written to {MODEL_FILE}")
    return 0


def study_pixels(study: Path) -> int:
    """Pixels of one training image of a study: its dataset's images after its image_downsample."""
    base = json.loads((study / "study.json").read_text())["base_config"]
    ds, d = open_dataset(base["dataset"]), make_config(base).image_downsample
    return (ds.height // d) * (ds.width // d)


if __name__ == "__main__":
    sys.exit(main())
