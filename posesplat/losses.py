"""The training objective: the loss terms of a rendering against the views, their weights, 2DGS's warm-up."""

from __future__ import annotations

import torch
from torchmetrics.functional.image import structural_similarity_index_measure as ssim_fn

from posesplat.config import Config
from posesplat.render import RenderOut

WEIGHTS = {"l1": "img_lambda", "ssim_loss": "ssim_lambda", "dist_loss": "dist_lambda",
           "normal_loss": "normal_lambda"}  # a loss term (after the IoU term, whose weight is 1) -> its config weight


def loss_terms(out: RenderOut, images: torch.Tensor, masks: torch.Tensor, ssim_lambda: float, dist: bool = False,
               normal: bool = False) -> dict[str, torch.Tensor]:
    """1 - soft IoU on masks, L1 on RGB normalised by foreground area, 1 - SSIM (only if used) and, when on, 2DGS's
    depth distortion and normal consistency (means over every pixel of the views, as 2DGS's train.py)."""
    a, m = out.alpha, masks  # [V, H, W]
    inter = (a * m).sum()
    iou = inter / (a.sum() + m.sum() - inter).clamp_min(1e-6)
    l1 = (out.rgb - images).abs().mean(-1).sum() / m.sum().clamp_min(1.0)
    terms = {"iou_loss": 1.0 - iou, "l1": l1}
    if ssim_lambda > 0:
        terms["ssim_loss"] = 1.0 - ssim_fn(out.rgb.permute(0, 3, 1, 2), images.permute(0, 3, 1, 2), data_range=1.0)
    if dist:
        terms["dist_loss"] = out.distortion.mean()
    if normal:
        terms["normal_loss"] = normal_error(out).mean()
    return terms


def training_loss(cfg: Config, terms: dict[str, torch.Tensor]) -> torch.Tensor:
    """The objective: the IoU term plus each other term times its weight (WEIGHTS), summed in loss_terms' order."""
    loss = terms["iou_loss"]
    for k, t in terms.items():
        if k != "iou_loss":
            loss = loss + getattr(cfg, WEIGHTS[k]) * t
    return loss


def normal_error(out: RenderOut) -> torch.Tensor:
    """2DGS's normal consistency per pixel [V, H, W]: 1 - <sum_i w_i n_i, alpha n_d>. It compares the surfels'
    composited normals (not normalised) with the unit normals n_d of the rendered depth. The n_d are weighted by the
    accumulated alpha, which is not differentiated. As in 2DGS's train.py and renderer, it is 0 where nothing is
    drawn and 1 - alpha^2 cos elsewhere."""
    return 1 - (out.surfel_normals * out.normals * out.alpha.detach()[..., None]).sum(-1)


def term_on(start: float, step: int, total: int) -> bool:
    """2DGS's warm-up: a term is on at the 1-based training step `step` of `total` once more than the fraction
    `start` of them is done (2DGS: from iteration 3001 of 30000 for the distortion, 7001 for the normal term)."""
    return step > start * total


def geometry_terms(cfg: Config, step: int, total: int) -> tuple[bool, bool]:
    """(distortion on, normal term on) at the 1-based training step `step` of `total` (off while the weight is 0)."""
    return (cfg.dist_lambda > 0 and term_on(cfg.dist_start, step, total),
            cfg.normal_lambda > 0 and term_on(cfg.normal_start, step, total))

