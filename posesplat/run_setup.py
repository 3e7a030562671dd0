"""A training run's setup: open and check the data, split frames and views, check the cube and crop the grid.

`prepare(cfg)` gives the `Setup` the loop, evaluation and `posesplat.trained.load_checkpoint` build the model from.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from posesplat.carve import carve, find_volume_idx
from posesplat.config import Config, ConfigError
from posesplat.data import MultiViewDataset, open_dataset
from posesplat.model import PoseSplatter, pixels_per_unit
from posesplat.render import pick_backend


@dataclass
class Setup:
    """Everything derived from the config and the data before the model exists."""

    ds: MultiViewDataset
    frames: dict[str, np.ndarray]  # train / valid / test frame indices
    observed: list[int]
    heldout: list[int]
    ell: float
    volume_idx: list[list[int]]
    px_per_voxel: float
    width: int
    height: int
    background: torch.Tensor  # [3]
    device: torch.device
    backend: str


def resolve_device(cfg: Config) -> torch.device:
    """'auto' picks CUDA when available."""
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("config: key 'device': 'cuda' was asked for but torch sees no CUDA device")
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def load_frame(setup: Setup, frame: int, views: Sequence[int], downsample: int) -> dict[str, torch.Tensor]:
    """One frame's views as tensors on the training device."""
    batch = setup.ds.load(int(frame), list(views), downsample)
    return {k: v.to(setup.device) for k, v in batch.items()}


ELL_TOUCH_WARN, ELL_TOUCH_REFUSE = 0.0, 0.05  # share of sampled frames whose hull reaches the cube's faces


def sample_hulls(cfg: Config, ds: MultiViewDataset, frames: np.ndarray, observed: list[int], ell: float,
                 grid_size: Optional[int] = None) -> torch.Tensor:
    """Carved hulls [N, G, G, G] (whole cube) of up to 16 training frames, evenly spread."""
    picks = frames[np.linspace(0, len(frames) - 1, min(16, len(frames))).round().astype(int)]
    out = []
    for f in picks:
        b = ds.load(int(f), observed, cfg.image_downsample)
        out.append(carve(b["images"], b["masks"], b["viewmats"], b["Ks"], b["centre"], b["heading"],
                         grid_size or cfg.grid_size, ell)[0])
    return torch.stack(out)


def touches_faces(hulls: torch.Tensor) -> torch.Tensor:
    """bool [N]: the hull [N, G, G, G] occupies a cell on the cube's outer layer (the animal may be clipped)."""
    occ = hulls > 0.5
    faces = [occ[:, [0, -1]], occ[:, :, [0, -1]], occ[:, :, :, [0, -1]]]
    return torch.stack([f.flatten(1).any(1) for f in faces]).any(0)


def suggest_ell(cfg: Config, ds: MultiViewDataset, frames: np.ndarray, observed: list[int], ell: float) -> str:
    """A cube side that holds the hull of the sampled frames: carve a cube twice as large and measure the hull."""
    big = sample_hulls(cfg, ds, frames, observed, 2 * ell, 32) > 0.5  # [N, 32, 32, 32]
    if touches_faces(big.float()).any():
        return f"at least {2 * ell:.3g}"
    centres = (torch.arange(32) + 0.5) / 32 * 2 * ell - ell  # cell centres along an axis
    if not big.any():
        return f"about {ell:.3g} (no hull in a cube twice as large: check masks and cameras)"
    reach = max(float(centres[big.any(dim=tuple(d for d in (0, 1, 2, 3) if d != a)).nonzero()].abs().max()) +
                ell / 32 for a in (1, 2, 3))
    return f"{1.1 * 2 * reach:.3g}"


def check_ell(cfg: Config, ds: MultiViewDataset, frames: np.ndarray, observed: list[int], ell: float,
              hulls: torch.Tensor) -> None:
    """Refuse an `ell` whose cube clips the carved animal in more than 5% of the sampled frames; warn below."""
    share = float(touches_faces(hulls).float().mean())
    if share <= ELL_TOUCH_WARN:
        return
    where = "the config's 'ell'" if cfg.ell else f"the dataset's 'ell' attribute ({ds.path})"
    msg = (f"the carved animal reaches the faces of the {ell:.3g} m cube in {share:.0%} of {len(hulls)} sampled "
           f"training frames: {where} is too small for the animal; set ell to {suggest_ell(cfg, ds, frames, observed, ell)}")
    if share > ELL_TOUCH_REFUSE:
        raise ConfigError(msg)
    print(f"warning: {msg}", file=sys.stderr)


def prepare(cfg: Config, volume_idx: Optional[list[list[int]]] = None) -> Setup:
    """Open and validate the data, split frames and views, and derive the grid crop and image size."""
    ds = open_dataset(cfg.dataset)
    ds.keep_in_memory(cfg.frames_in_memory_mb)
    frames = ds.frame_split(cfg.max_frames, cfg.frame_jump, cfg.split)
    observed, heldout = ds.view_split(cfg.holdout_views)
    ell = cfg.ell or ds.ell
    if ell is None:
        raise ConfigError(f"config: key 'ell' is not set and the dataset {cfg.dataset} has no 'ell' attribute")
    if volume_idx is None:  # a new model (not a checkpoint's): check the cube, then crop it
        hulls = sample_hulls(cfg, ds, frames["train"], observed, ell)
        check_ell(cfg, ds, frames["train"], observed, ell, hulls)
        volume_idx = cfg.volume_idx or find_volume_idx(hulls.sum(0))
    device = resolve_device(cfg)
    d = cfg.image_downsample
    b = ds.load(int(frames["train"][0]), observed, d)
    height, width = b["masks"].shape[1:]
    ppu = pixels_per_unit(b["Ks"], b["viewmats"], b["centre"])
    background = torch.tensor(ds.background, dtype=torch.float32, device=device)
    if ds.has_gt and ds.geometry_note:  # a synthetic store from before format 2: said once, here
        print(f"warning: {ds.geometry_note}", file=sys.stderr)
    return Setup(
        ds, frames, observed, heldout, float(ell), volume_idx, ppu * ell / cfg.grid_size, int(width), int(height),
        background, device, pick_backend(cfg.backend, device),
    )


def build_model(cfg: Config, setup: Setup) -> PoseSplatter:
    """A new model for the setup's cube and grid crop, on its device."""
    return PoseSplatter(cfg, setup.ell, setup.volume_idx, setup.px_per_voxel).to(setup.device)
