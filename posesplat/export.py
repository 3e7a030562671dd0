"""Trained Gaussians as splat files that standard 3DGS viewers open: `python -m posesplat.export`.

    python -m posesplat.export CHECKPOINT --frames A:B [--format ply|splat|ply_compressed] --out DIR

One file per frame, `frame<k>` plus the format's suffix. It holds the Gaussians the model emits for frame k,
reconstructed from its observed views, in the recording's world frame (the pose applied). Written by
`gsplat.export_splats` in the 3DGS conventions its viewers expect: log scales, logit opacities, SH degree 0 from the
colour, unit wxyz quaternions.
A 2d surfel gets a thin third axis (SURFEL_THICKNESS of its smaller scale): a 3DGS viewer shows it as a disc.
2d_screen has no 3D extent: refused. docs/export.md says how to open the files.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from gsplat import export_splats
from torch import Tensor

from posesplat.checkpoint import CheckpointError
from posesplat.config import ConfigError
from posesplat.data import DatasetError
from posesplat.io import atomic_write
from posesplat.modes import MODES
from posesplat.progress import Progress
from posesplat.render import Gaussians
from posesplat.trained import load_checkpoint, opened_dataset, reconstruct

FORMATS = {"ply": ".ply", "splat": ".splat", "ply_compressed": ".compressed.ply"}  # format -> file suffix
SURFEL_THICKNESS = 0.01  # a surfel's third scale, as a fraction of its smaller in-plane scale
SH_C0 = 0.28209479177387814  # degree-0 spherical harmonic: colour = 0.5 + SH_C0 * sh0 (gsplat.exporter.sh2rgb)
OPACITY_EPS = 1e-6  # logits of opacities clamped to [eps, 1 - eps]: both ends render alike (alpha under 1/255, or
# clamped at 0.999 by both backends), and an opacity of exactly 0 or 1 would be an infinite logit that
# export_splats drops


class ExportError(ValueError):
    """Input the export refuses: one line naming it."""


def exportable(mode: str) -> None:
    """Refuse a mode whose Gaussians have no extent in the world (a screen-frame mode: 2d_screen). The mode is a
    model's, which its config validated."""
    if MODES[mode].frame != "world":
        raise ExportError(f"mode {mode!r}: its Gaussians are ellipses drawn in each image ({MODES[mode].summary}), "
                          f"with no 3D extent a 3DGS viewer could show; export a 3d or 2d model")


def splat_fields(g: Gaussians, mode: str) -> dict[str, Tensor]:
    """World-space Gaussians -> the arguments of gsplat.export_splats (N Gaussians, on the CPU):
    means [N, 3], scales [N, 3] (log), quats [N, 4] (unit wxyz), opacities [N] (logit), sh0 [N, 1, 3], shN [N, 0, 3].
    Three scales as they are; two (a surfel) get a third of SURFEL_THICKNESS x the smaller; one is used thrice."""
    exportable(mode)
    n = g.means.shape[0]
    scales = g.scales.detach().float().cpu()
    if scales.shape[1] == 2:
        scales = torch.cat([scales, SURFEL_THICKNESS * scales.min(dim=1, keepdim=True).values], dim=1)
    scales = scales.expand(n, 3)
    quats = g.quats.detach().float().cpu() if g.quats is not None else torch.tensor([[1.0, 0, 0, 0]]).expand(n, 4)
    colors = g.colors.detach().float().cpu()
    return {
        "means": g.means.detach().float().cpu(),
        "scales": torch.log(scales),
        "quats": F.normalize(quats, dim=-1),
        "opacities": torch.logit(g.opacities.detach().float().cpu(), eps=OPACITY_EPS),
        "sh0": ((colors - 0.5) / SH_C0)[:, None, :],
        "shN": colors.new_zeros(n, 0, 3),
    }


def check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt!r}: unknown (choose from {', '.join(FORMATS)})")


def write_splats(g: Gaussians, mode: str, path: Path, fmt: str = "ply") -> Path:
    """One frame's Gaussians written to `path` in format `fmt` (whole or not at all)."""
    check_format(fmt)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, export_splats(**splat_fields(g, mode), format=fmt))
    return path


def file_name(frame: int, fmt: str) -> str:
    return f"frame{frame}{FORMATS[fmt]}"


def parse_frames(text: str, n_frames: int) -> range:
    """`A:B` (frames A to B-1, as in Python), `A:` (to the end), `:B` (from frame 0) or `K` (one frame), checked
    against the dataset's n_frames."""
    head, colon, tail = text.strip().partition(":")
    try:
        if not colon:
            start = int(head)
            stop = start + 1
        else:
            start, stop = int(head) if head else 0, int(tail) if tail else n_frames
    except ValueError:
        raise ExportError(f"--frames {text!r}: expected A:B (frames A to B-1), A:, :B or K, in whole numbers") from None
    if not 0 <= start < stop <= n_frames:
        raise ExportError(f"--frames {text!r}: the dataset has frames 0 to {n_frames - 1}; the range must be "
                          f"non-empty and lie within them")
    return range(start, stop)


def export_frames(checkpoint: str | Path, frames: str, fmt: str, out: Path, device: Optional[str] = None,
                  overwrite: bool = False) -> list[Path]:
    """The files of `frames` (parse_frames' text) of the model in `checkpoint`, written into `out`. Everything is
    checked before the first file is written; a file already there is refused unless `overwrite`."""
    check_format(fmt)
    if device not in (None, "cpu", "cuda"):
        raise ExportError(f"--device {device!r}: choose cpu or cuda")
    cfg, model = load_checkpoint(checkpoint, device=device)
    exportable(model.mode)
    todo = parse_frames(frames, opened_dataset(cfg.dataset).n_frames)
    paths = [out / file_name(k, fmt) for k in todo]
    there = [p for p in paths if p.exists()]
    if there and not overwrite:
        raise ExportError(f"{there[0]}: already exists ({len(there)} of the {len(paths)} files); pass --overwrite "
                          f"to replace them, or another --out")
    for k, path in zip(Progress(todo, desc=f"export {model.mode}", unit="frame"), paths):
        write_splats(reconstruct(model, cfg, k), model.mode, path, fmt)
    return paths


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m posesplat.export", description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="a trained model's checkpoint.pt (python -m posesplat.train, or a study's trial)")
    p.add_argument("--frames", required=True, help="A:B (frames A to B-1 of the checkpoint's dataset), A:, :B or K")
    p.add_argument("--format", default="ply", help=f"one of {', '.join(FORMATS)} (default ply)")
    p.add_argument("--out", required=True, type=Path, help="folder for the files (created if missing)")
    p.add_argument("--device", help="cpu or cuda (default: the checkpoint's config)")
    p.add_argument("--overwrite", action="store_true", help="replace files of the same names in --out")
    a = p.parse_args(argv)
    try:
        paths = export_frames(a.checkpoint, a.frames, a.format, a.out, a.device, a.overwrite)
    except (ExportError, CheckpointError, ConfigError, DatasetError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    names = paths[0].name if len(paths) == 1 else f"{paths[0].name} .. {paths[-1].name}"
    print(f"wrote {len(paths)} {a.format} file(s) to {a.out}: {names}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
