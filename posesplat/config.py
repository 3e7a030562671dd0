"""Validated training configuration (one JSON file per configuration).

Key names follow Pose Splatter's configs where they exist (``holdout_views``, ``image_downsample``, ``ell``,
``grid_size``, ``volume_idx``, ``frame_jump``, ``lr``, ``img_lambda``, ``ssim_lambda``, ``valid_every``).
Every error is one line naming the file and the key.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

MODES = ("3d", "2d", "2d_screen")


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message is one line naming the key."""


class Config(BaseModel):
    """One training configuration. Defaults are the CPU debug size."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # --- data ---
    dataset: str = Field("data/synthetic_mouse.zarr", description="zarr v3 dataset (path or URI)")
    holdout_views: Optional[list[int]] = Field(None, description="held-out camera indices; None: the dataset's")
    image_downsample: int = Field(2, ge=1, le=16, description="integer downsampling of images and masks")
    frame_jump: int = Field(1, ge=1, description="use every k-th frame")
    max_frames: Optional[int] = Field(None, ge=3, description="use only the first N frames (after frame_jump)")
    split: tuple[float, float, float] = Field((1 / 3, 1 / 3, 1 / 3), description="train/valid/test fractions")
    # --- volume ---
    ell: Optional[float] = Field(None, gt=0, description="side of the carving cube (world units); None: dataset's")
    grid_size: int = Field(48, ge=8, le=256, description="voxels per side of the carving cube")
    volume_idx: Optional[list[list[int]]] = Field(
        None, description="[[x0,x1],[y0,y1],[z0,z1]] crop of the grid; None: found from the data"
    )
    # --- model ---
    gaussian_mode: Literal["3d", "2d", "2d_screen"] = "3d"
    num_unets: int = Field(1, ge=0, le=4)
    base_filters: int = Field(8, ge=2, le=64)
    min_n: int = Field(500, ge=1, description="minimum number of Gaussians per frame")
    max_n: int = Field(8000, ge=1, description="maximum number of Gaussians per frame")
    backend: Literal["auto", "torch", "gsplat"] = Field("auto", description="auto: gsplat on CUDA, torch otherwise")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # --- optimisation ---
    lr: float = Field(1e-3, gt=0, le=1)
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    img_lambda: float = Field(0.5, ge=0)
    ssim_lambda: float = Field(0.0, ge=0)
    grad_clip: Optional[float] = Field(1.0, gt=0)
    epochs: int = Field(10, ge=1)
    steps_per_epoch: Optional[int] = Field(None, ge=1, description="None: one step per training frame")
    views_per_step: int = Field(1, ge=1, description="observed views rendered per training step")
    valid_every: int = Field(1, ge=1)
    eval_frames: Optional[int] = Field(6, ge=1, description="cap on valid/test frames evaluated; None: all")
    num_workers: int = Field(0, ge=0)
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> "Config":
        if self.min_n > self.max_n:
            raise ValueError(f"min_n ({self.min_n}) is larger than max_n ({self.max_n})")
        if abs(sum(self.split) - 1.0) > 1e-6 or min(self.split) <= 0:
            raise ValueError(f"split {self.split} must be three positive fractions summing to 1")
        if self.volume_idx is not None:
            ok = len(self.volume_idx) == 3 and all(
                len(r) == 2 and 0 <= r[0] < r[1] <= self.grid_size for r in self.volume_idx
            )
            if not ok:
                raise ValueError(f"volume_idx {self.volume_idx} must be three [start, stop) ranges within grid_size")
        return self

    @property
    def n_params_per_gaussian(self) -> int:
        return {"3d": 14, "2d": 13, "2d_screen": 9}[self.gaussian_mode]


def _one_line(err: ValidationError, source: str) -> str:
    """Turn pydantic's first error into one line: '<source>: key 'x': problem'."""
    e = err.errors()[0]
    loc = ".".join(str(p) for p in e["loc"])
    if e["type"] == "extra_forbidden":
        key = str(e["loc"][0])
        close = difflib.get_close_matches(key, list(Config.model_fields), n=1, cutoff=0.5)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return f"{source}: unknown key '{key}'{hint}"
    msg = e["msg"].removeprefix("Value error, ")
    if not loc:
        return f"{source}: {msg}"
    return f"{source}: key '{loc}': {msg} (got {e.get('input')!r})"


def make_config(values: dict[str, Any], source: str = "config") -> Config:
    """Validate a dict into a Config, raising ConfigError with one line on the first problem."""
    try:
        return Config.model_validate(values)
    except ValidationError as err:
        raise ConfigError(_one_line(err, source)) from None


def load_config(path: str | Path, overrides: Optional[dict[str, Any]] = None) -> Config:
    """Read a JSON config file, apply overrides (e.g. from a study trial) and validate."""
    path = Path(path)
    try:
        values = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: must hold a JSON object of keys, not {type(values).__name__}")
    values.pop("_comment", None)
    values.update(overrides or {})
    return make_config(values, str(path))
