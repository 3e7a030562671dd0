"""The Gaussian modes: one entry each, from which config validation, the head, the model, rendering, the study's
spaces, resources, analysis, plots and benchmarks take what they know of a mode.

Adding a mode is an entry here and its projection in `render/project.py` (`PROJECTIONS`, under the same name);
nothing else branches on a mode's name (docs/architecture.md). `tests/test_modes.py` adds one and trains it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal, Optional

from pydantic import AfterValidator


@dataclass(frozen=True)
class Mode:
    name: str
    label: str  # in titles and prose: "2D vs 3D Gaussian splatting"
    summary: str
    # head output channels after the score, in order; keys: offset (3 world or 2 pixels), scale (log-scales, one per
    # axis), quat (4, a rotation) or angle (1, an in-image rotation) or neither (isotropic), colour 3, opacity 1
    head: dict[str, int]
    fields: dict[str, tuple[int, ...]]  # render.Gaussians fields the mode sets -> trailing shape (N rows each)
    # where the head places a Gaussian: "world" (voxel centre + up to one voxel, scales in voxel sides) or "screen"
    # (the voxel centre is an anchor projected into each camera, + up to px_per_voxel pixels; scales in pixels)
    frame: Literal["world", "screen"]
    scale_unit: float  # the scale a zero head output gives, in voxel sides (world) or pixels per voxel (screen)
    random_rotation: bool  # start from random orientations (surfels that all face one way would miss side views)
    # gsplat's own rasteriser for the mode (a function of gsplat taking means, quats, [N, 3] scales, ...), or None:
    # the mode's projection, then gsplat's tile intersection and rasterize_to_pixels (conic projections only)
    gsplat: Optional[str]
    colour: str  # matplotlib colour of the mode in the study's plots
    # 2DGS's training terms the mode can have (config keys of TERMS); the config refuses the others for it
    terms: tuple[str, ...] = ()

    @property
    def params_per_gaussian(self) -> int:
        return sum(self.head.values())


_GAUSSIAN = {"means": (3,), "colors": (3,), "opacities": ()}

# 2DGS's training terms: config key -> what a mode needs for it (docs/training.md says why 3d has neither: a 3D
# Gaussian's centre depth is no point where the ray meets it, and gsplat renders the distortion for surfels only)
TERMS = {"dist_lambda": "ray-primitive intersection depths (2DGS's depth distortion)",
         "normal_lambda": "surfel normals (2DGS's normal consistency)"}

# in display order (tables, plots): the two modes the study compares, then the ablation
MODES: dict[str, Mode] = {m.name: m for m in (
    Mode("2d", "2D", "2D Gaussian surfels (Huang et al. 2024): a disc with two scales and a normal",
         {"offset": 3, "scale": 2, "quat": 4, "colour": 3, "opacity": 1},
         {**_GAUSSIAN, "quats": (4,), "scales": (2,)}, "world", 0.7, True, "rasterization_2dgs", "C0",
         terms=tuple(TERMS)),
    Mode("3d", "3D", "3D Gaussian splatting: an ellipsoid with three scales",
         {"offset": 3, "scale": 3, "quat": 4, "colour": 3, "opacity": 1},
         {**_GAUSSIAN, "quats": (4,), "scales": (3,)}, "world", 0.5, False, "rasterization", "C1"),
    Mode("2d_screen", "screen-space 2D", "screen-space 2D ablation: a projected anchor with a pixel offset and a pixel-space ellipse",
         {"offset": 2, "scale": 2, "angle": 1, "colour": 3, "opacity": 1},
         {**_GAUSSIAN, "offsets": (2,), "scales": (2,), "angles": ()}, "screen", 0.7, False, None, "C2"),
)}
DEFAULT_PAIR = ("2d", "3d")  # what a space compares when it names no modes: [challenger, reference]


def names() -> tuple[str, ...]:
    """The registered modes, in display order (read at call time, so a mode added to MODES counts)."""
    return tuple(MODES)


def with_term(key: str) -> list[str]:
    """The modes that can have the 2DGS term `key` (a key of TERMS), read at call time."""
    return [m for m, e in MODES.items() if key in e.terms]


def _known(name: str) -> str:
    if name not in MODES:
        raise ValueError(f"unknown Gaussian mode {name!r} (choose from {', '.join(MODES)})")
    return name


ModeName = Annotated[str, AfterValidator(_known)]  # for pydantic fields: an unknown mode is a one-line error


def label(name: str) -> str:
    """How a mode is named in titles (an unknown one by its name)."""
    return MODES[name].label if name in MODES else name


def colour(name: str) -> str:
    """The plot colour of a mode (an unknown one gets the next free colour)."""
    return MODES[name].colour if name in MODES else "C3"
