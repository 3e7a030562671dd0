"""Validated training configuration (one JSON file per configuration).

Key names follow Pose Splatter's configs where they exist (``holdout_views``, ``image_downsample``, ``ell``,
``grid_size``, ``volume_idx``, ``frame_jump``, ``lr``, ``img_lambda``, ``ssim_lambda``, ``valid_every``).
Every error is one line naming the file and the key.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, Optional, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from posesplat.messages import one_line, read_json
from posesplat.modes import MODES, TERMS, ModeName, names as mode_names, with_term



def _term_allowed(key: str) -> str:
    """The config table's 'allowed' text of a 2DGS term's weight, from the mode registry."""
    return "0 unless gaussian_mode is " + " or ".join(f"`{m}`" for m in with_term(key))


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message is one line naming the key."""


class Config(BaseModel):
    """One training configuration. Defaults are the CPU debug size."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # --- data ---
    dataset: str = Field("data/synthetic_mouse.zarr", description="zarr v3 dataset (path or URI)")
    holdout_views: Optional[list[int]] = Field(None, description="held-out camera indices; null: the dataset's",
                                               json_schema_extra={"allowed": "camera indices"})
    image_downsample: int = Field(2, ge=1, le=16, description="integer downsampling of images and masks")
    frame_jump: int = Field(1, ge=1, description="use every k-th frame")
    max_frames: Optional[int] = Field(None, ge=3, description="use only the first N frames (after frame_jump)")
    split: tuple[float, float, float] = Field((1 / 3, 1 / 3, 1 / 3), description="train/valid/test fractions",
                                           json_schema_extra={"allowed": "three fractions > 0 summing to 1"})
    # --- volume ---
    ell: Optional[float] = Field(None, gt=0, description="side of the carving cube (world units); null: dataset's")
    grid_size: int = Field(48, ge=8, le=256, description="voxels per side of the carving cube")
    volume_idx: Optional[list[list[int]]] = Field(
        None, description="[[x0,x1],[y0,y1],[z0,z1]] crop of the grid; null: found from the data",
        json_schema_extra={"allowed": "0 <= start < stop <= grid_size per axis"},
    )
    # --- model ---
    gaussian_mode: ModeName = Field(
        "3d", description="3D Gaussians, 2D surfels, or the screen-space 2D ablation (rendering.md)",
        json_schema_extra={"allowed": ", ".join(f"`{m}`" for m in mode_names())})
    num_unets: int = Field(1, ge=0, le=4, description="3D U-Nets stacked between carving and head")
    base_filters: int = Field(8, ge=2, le=64, description="channels of the U-Nets' first level (doubled per level)")
    min_n: int = Field(500, ge=1, description="minimum number of Gaussians per frame",
                       json_schema_extra={"allowed": "<= max_n"})
    max_n: int = Field(8000, ge=1, description="maximum number of Gaussians per frame")
    backend: Literal["auto", "torch", "gsplat"] = Field("auto", description="auto: gsplat on CUDA, torch otherwise")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when available")
    # --- optimisation ---
    lr: float = Field(1e-3, gt=0, le=1, description="Adam learning rate")
    lr_schedule: Literal["constant", "cosine"] = Field(
        "cosine", description="cosine: down to 5% of lr over epochs x steps_per_epoch")
    img_lambda: float = Field(0.5, ge=0, description="weight of the RGB L1 term")
    ssim_lambda: float = Field(0.0, ge=0, description="weight of the 1 - SSIM term (0: not computed)")
    dist_lambda: float = Field(0.0, ge=0, description="weight of 2DGS's depth distortion, per metre of depth (0: "
                               "not computed; modes with surfels only)",
                               json_schema_extra={"allowed": _term_allowed("dist_lambda")})
    normal_lambda: float = Field(0.0, ge=0, description="weight of 2DGS's normal consistency (0: not computed; "
                                 "modes with surfels only)",
                                 json_schema_extra={"allowed": _term_allowed("normal_lambda")})
    dist_start: float = Field(0.1, ge=0, le=1, description="the distortion term is on after this fraction of the "
                              "training steps (2DGS: 3000 of 30000)")
    normal_start: float = Field(0.2333, ge=0, le=1, description="the normal term is on after this fraction of the "
                                "training steps (2DGS: 7000 of 30000)")
    grad_clip: Optional[float] = Field(1.0, gt=0, description="gradient-norm clip; null: no clipping")
    epochs: int = Field(10, ge=1, description="epochs (also the horizon of the cosine schedule)")
    steps_per_epoch: Optional[int] = Field(None, ge=1, description="null: one step per training frame")
    views_per_step: int = Field(1, ge=1, description="observed views rendered per training step")
    valid_every: int = Field(1, ge=1, description="evaluate every k-th epoch (and at the last)")
    eval_frames: Optional[int] = Field(6, ge=1, description="cap on valid/test frames evaluated; null: all")
    eval_valid_frames: Optional[int] = Field(
        None, ge=1, description="cap on valid frames evaluated, when it differs from eval_frames (null: eval_frames)")
    seed: int = Field(0, description="seeds the weights, frame order and view choice")
    # --- resources ---
    frames_in_memory_mb: float = Field(
        1024, ge=0, description="decoded frames a run keeps in memory, every view downsampled (16 bytes a pixel, "
        "32 with true geometry); beyond it frames are read from the store each time; 0: always read")

    def eval_cap(self, split: str) -> Optional[int]:
        """The cap on `split`'s evaluated frames: eval_valid_frames for the valid split where set, else eval_frames."""
        return self.eval_valid_frames if split == "valid" and self.eval_valid_frames is not None else self.eval_frames

    @model_validator(mode="after")
    def _check(self) -> "Config":
        if self.min_n > self.max_n:
            raise ValueError(f"min_n ({self.min_n}) is larger than max_n ({self.max_n})")
        if abs(sum(self.split) - 1.0) > 1e-6 or min(self.split) <= 0:
            raise ValueError(f"split {self.split} must be three positive fractions summing to 1")
        for key, needs in TERMS.items():  # the mode registry says which of 2DGS's terms a mode can have
            if getattr(self, key) > 0 and key not in MODES[self.gaussian_mode].terms:
                able = ", ".join(with_term(key)) or "none"
                raise ValueError(f"{key} {getattr(self, key):g} needs {needs}, which mode '{self.gaussian_mode}' "
                                 f"has not (modes that have it: {able}); set {key} to 0 for this mode")
        if self.volume_idx is not None:
            ok = len(self.volume_idx) == 3 and all(
                len(r) == 2 and 0 <= r[0] < r[1] <= self.grid_size for r in self.volume_idx
            )
            if not ok:
                raise ValueError(f"volume_idx {self.volume_idx} must be three [start, stop) ranges within grid_size")
        return self


def make_config(values: dict[str, Any], source: str = "config") -> Config:
    """Validate a dict into a Config, raising ConfigError with one line on the first problem."""
    try:
        return Config.model_validate(values)
    except ValidationError as err:
        raise ConfigError(one_line(err, source, Config.model_fields)) from None


def load_config(path: str | Path, overrides: Optional[dict[str, Any]] = None) -> Config:
    """Read a JSON config file, apply overrides (e.g. from a study trial) and validate."""
    path = Path(path)
    values = read_json(path, ConfigError, "config file")
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: must hold a JSON object of keys, not {type(values).__name__}")
    values.pop("_comment", None)
    values.update(overrides or {})
    return make_config(values, str(path))


def _type_name(annotation: Any) -> str:
    """A short JSON-minded name of a field's type: 'int', 'float or null', 'list[int] or null', ..."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return "str"
    if origin is Union:
        names = [_type_name(a) for a in args if a is not type(None)]
        return " or ".join(names) + (" or null" if type(None) in args else "")
    if origin in (list, tuple):
        inner = ", ".join(_type_name(a) for a in args if a is not Ellipsis)
        return f"{origin.__name__}[{inner}]"
    return getattr(annotation, "__name__", str(annotation))


def _allowed(name: str) -> str:
    """A field's allowed values: its Literal choices or its numeric bounds ('' when unconstrained)."""
    field = Config.model_fields[name]
    if get_origin(field.annotation) is Literal:
        return ", ".join(f"`{a}`" for a in get_args(field.annotation))
    ops = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
    bounds = [f"{ops[k]} {getattr(m, k)}" for m in field.metadata for k in ops if hasattr(m, k)]
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    return ", ".join(bounds + ([str(extra["allowed"])] if "allowed" in extra else []))


def schema_table() -> str:
    """Every Config key as a markdown table (key, type, default, allowed, meaning); pasted into docs/training.md."""
    rows = ["| key | type | default | allowed | meaning |", "|---|---|---|---|---|"]
    for name, field in Config.model_fields.items():
        default = json.dumps(field.default, default=str).replace("0.3333333333333333", "1/3")
        rows.append(f"| `{name}` | {_type_name(field.annotation)} | `{default}` | {_allowed(name)} | "
                    f"{field.description or ''} |")
    return "\n".join(rows)


if __name__ == "__main__":  # python -m posesplat.config prints the table for docs/training.md
    print(schema_table())
