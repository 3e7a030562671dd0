"""Trained models for analysis: one loaded from its checkpoint, and its reconstruction of a frame rendered into any
cameras (the study's figures and turntables)."""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from posesplat.checkpoint import read as read_checkpoint
from posesplat.config import Config, make_config
from posesplat.data import MultiViewDataset, open_dataset
from posesplat.model import PoseSplatter
from posesplat.render import Gaussians, RenderOut, pick_backend, render
from posesplat.run_setup import build_model, prepare


def load_checkpoint(path: str | Path, device: str | None = None) -> tuple[Config, PoseSplatter]:
    """A trained model from a checkpoint (for rendering and analysis); the file is read without unpickling
    (posesplat.checkpoint.read: one line naming it when refused)."""
    state = read_checkpoint(Path(path))
    cfg = make_config(state["config"], str(path))
    if device:
        cfg = cfg.model_copy(update={"device": device})
    setup = prepare(cfg, state["volume_idx"])
    model = build_model(cfg, setup)
    model.load_state_dict(state["model"])
    model.eval()
    return cfg, model


@functools.lru_cache(maxsize=4)
def opened_dataset(path: str) -> MultiViewDataset:
    """A dataset opened (and validated) once for the frames reconstructed from it."""
    return open_dataset(path)


@torch.no_grad()
def reconstruct(model: PoseSplatter, cfg: Config, frame: int) -> Gaussians:
    """The world-space Gaussians of `frame`, reconstructed from its observed views (the holdout views unseen)."""
    ds = opened_dataset(cfg.dataset)
    observed, _ = ds.view_split(cfg.holdout_views)
    device = next(model.parameters()).device
    b = {k: v.to(device) for k, v in ds.load(int(frame), observed, cfg.image_downsample).items()}
    return model(b["images"], b["masks"], b["viewmats"], b["Ks"], b["centre"], b["heading"])


@torch.no_grad()
def render_frame(
    model: PoseSplatter, cfg: Config, frame: int, viewmats: torch.Tensor, Ks: torch.Tensor, width: int, height: int
) -> RenderOut:
    """Reconstruct `frame` from its observed views and render it into arbitrary cameras [V,4,4], [V,3,3]."""
    g = reconstruct(model, cfg, frame)
    device = g.means.device
    background = torch.tensor(opened_dataset(cfg.dataset).background, dtype=torch.float32, device=device)
    return render(
        g, model.mode, viewmats.to(device).float(), Ks.to(device).float(), width, height,
        pick_backend(cfg.backend, device), background,
    )
