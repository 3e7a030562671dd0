"""The Gaussian modes: one entry each, from which config validation, the head, rendering, the study's spaces,
resources, analysis, plots and benchmarks take their lists.

Adding a mode: an entry here (its head layout and render fields), its projection in render/project.py (and the
gsplat path in render/gsplat_backend.py), and its branch in head.Head.forward / render.render where it differs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Mode:
    name: str
    summary: str
    head: dict[str, int]  # head output channels after the score, in order: offset, log-scale, rotation, colour, opacity
    fields: dict[str, tuple[int, ...]]  # render.Gaussians fields -> trailing shape (N rows each)
    colour: str  # matplotlib colour of the mode in the study's plots

    @property
    def params_per_gaussian(self) -> int:
        return sum(self.head.values())


# in display order (tables, plots): the two modes the study compares, then the ablation
MODES: dict[str, Mode] = {m.name: m for m in (
    Mode("2d", "2D Gaussian surfels (Huang et al. 2024): a disc with two scales and a normal",
         {"offset": 3, "scale": 2, "rot": 4, "colour": 3, "opacity": 1},
         {"means": (3,), "colors": (3,), "opacities": (), "quats": (4,), "scales": (2,)}, "C0"),
    Mode("3d", "3D Gaussian splatting: an ellipsoid with three scales",
         {"offset": 3, "scale": 3, "rot": 4, "colour": 3, "opacity": 1},
         {"means": (3,), "colors": (3,), "opacities": (), "quats": (4,), "scales": (3,)}, "C1"),
    Mode("2d_screen", "screen-space 2D ablation: a projected anchor with a pixel offset and a pixel-space ellipse",
         {"offset": 2, "scale": 2, "rot": 1, "colour": 3, "opacity": 1},
         {"means": (3,), "colors": (3,), "opacities": (), "offsets": (2,), "scales": (2,), "angles": ()}, "C2"),
)}
NAMES = tuple(MODES)
ModeName = Literal[NAMES]  # for pydantic fields: a value outside NAMES is a one-line validation error
PARAMS_PER_GAUSSIAN = {m.name: m.params_per_gaussian for m in MODES.values()}


def colour(name: str) -> str:
    """The plot colour of a mode (an unknown one gets the next free colour)."""
    return MODES[name].colour if name in MODES else "C3"
