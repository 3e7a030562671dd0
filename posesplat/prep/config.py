"""The prep config: Pose Splatter's keys (same names, same meaning) and prep's own, read, validated and resolved into
input paths (docs/prep.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from posesplat.messages import one_line, read_json
from posesplat.prep.errors import PrepError


class PrepConfig(BaseModel):
    """The keys prep reads: Pose Splatter's (same names, same meaning) and a few of its own (docs/prep.md)."""

    model_config = ConfigDict(extra="ignore")
    data_directory: str = Field("", description="prefix of video_fns and mask_video_fns (Pose Splatter)")
    project_directory: str = Field("", description="prefix of camera_fn, vertical_lines_fn and the default output")
    camera_fn: str
    video_fns: list[str] = Field(min_length=1)
    mask_video_fns: list[str] = Field(min_length=1)
    image_width: Optional[int] = Field(None, ge=1, description="checked against the videos")
    image_height: Optional[int] = Field(None, ge=1, description="checked against the videos")
    image_downsample: int = Field(1, ge=1)
    frame_jump: int = Field(1, ge=1)
    holdout_views: Optional[list[int]] = Field(None, description="null: posesplat.data.default_holdout")
    ell: Optional[float] = Field(None, gt=0, description="cube side in Pose Splatter's normalised rig units")
    ell_tracking: Optional[float] = Field(None, gt=0, description="tracking cube side, Pose Splatter's units")
    ell_m: Optional[float] = Field(None, gt=0, description="cube side in metres (instead of ell)")
    grid_size: int = Field(48, ge=8, le=256)
    volume_idx: Optional[list[list[int]]] = None
    unit_m: Optional[float] = Field(None, gt=0, description="metres per calibration unit (millimetres: 0.001)")
    principal_point: Literal["opencv", "pixel_corner"] = Field(
        "opencv", description="opencv: the top-left pixel's centre is (0, 0); pixel_corner: it is (0.5, 0.5)")
    up: Optional[list[float]] = Field(None, min_length=3, max_length=3, description="up in calibration coordinates")
    vertical_lines: Optional[list[list[tuple[tuple[float, float], tuple[float, float]]]]] = Field(
        None, description="per camera, segments [[u1, v1], [u2, v2]] (video pixels) along vertical edges: up is "
                          "triangulated from them")
    vertical_lines_fn: Optional[str] = Field(
        None, description="Pose Splatter's vertical-lines npz (img_nums [M], lines [M, 2, 2]), in project_directory")
    background: list[float] = Field([0.0, 0.0, 0.0], min_length=3, max_length=3)
    mask_threshold: int = Field(128, ge=1, le=255)
    smooth_frames: float = Field(1.0, ge=0, description="Gaussian sigma (output frames) for centres and headings")
    trunk_radius: Optional[float] = Field(None, gt=0, description="metres; heading from the hull within it of the "
                                                                 "centroid (default 0.135 ell)")
    fps: Optional[float] = Field(None, gt=0, description="checked against the videos; frames are read by index")
    adaptive_camera: bool = Field(False, description="Pose Splatter's per-frame principal-point shift: unsupported")


# Keys of Pose Splatter configs that prep does not use, and why (the warning names them; nothing is dropped silently)
NOT_USED = {
    **dict.fromkeys(("img_lambda", "ssim_lambda", "lr", "valid_every", "plot_every", "save_every", "train_time",
                     "valid_time"), "training settings: put them in the training config"),
    **dict.fromkeys(("volume_directory", "image_directory", "render_directory", "center_rotation_fn",
                     "volume_sum_fn", "model_fn", "feature_fn", "embedding_fn", "image_compression_level",
                     "volume_compression_level"), "Pose Splatter's own working files: prep writes one dataset"),
    "volume_fill_color": "unsupported: carving gives unseen voxels colour 0",
    "adaptive_grid": "unsupported (Pose Splatter's plot_voxels only)",
}
COMMENT_KEYS = ("_comment",)


def unused_keys(values: dict, cfg: PrepConfig) -> list[str]:
    """Each config key prep does not use, with why: one phrase per key (a key prep reads is not listed)."""
    out = []
    for k in values:
        if k in PrepConfig.model_fields or k in COMMENT_KEYS:
            continue
        out.append(f"{k} ({NOT_USED.get(k, 'unknown key: misspelt?')})")
    if cfg.adaptive_camera:
        out.append("adaptive_camera=true (unsupported: per-frame principal-point shifts are not applied; the "
                   "calibration's principal points are used)")
    return out


def resolve(prefix: str, name: str, config: Path, key: str) -> Path:
    """os.path.join(prefix, name) against the current directory, as Pose Splatter resolves it; a missing file that
    exists relative to the config's folder instead is named with that hint."""
    path = Path(prefix) / name
    if path.is_file() or path.is_absolute():
        return path.absolute()
    alt = config.parent / path
    if alt.is_file():
        raise PrepError(f"{path}: no such file ({key} in {config}; paths are relative to the current directory, as in "
                        f"Pose Splatter, and it exists relative to the config's folder: run from {config.parent} or "
                        f"make the directories absolute)")
    return path.absolute()


def load_prep_config(path: str | Path) -> tuple[PrepConfig, dict[str, Path], list[str]]:
    """Read and validate a prep config; returns it, its resolved input paths (camera, videos, masks) and the keys it
    does not use (with why)."""
    path = Path(path)
    values = read_json(path, PrepError, "config file")
    if not isinstance(values, dict):
        raise PrepError(f"{path}: must be a JSON object of keys")
    try:
        cfg = PrepConfig.model_validate(values)
    except ValidationError as err:
        raise PrepError(one_line(err, str(path))) from None
    files = {"camera": resolve(cfg.project_directory, cfg.camera_fn, path, "camera_fn")}
    files |= {f"video {c}": resolve(cfg.data_directory, v, path, "video_fns") for c, v in enumerate(cfg.video_fns)}
    files |= {f"mask video {c}": resolve(cfg.data_directory, v, path, "mask_video_fns")
              for c, v in enumerate(cfg.mask_video_fns)}
    if len(cfg.video_fns) != len(cfg.mask_video_fns):
        raise PrepError(f"{path}: {len(cfg.video_fns)} video_fns but {len(cfg.mask_video_fns)} mask_video_fns")
    for h in cfg.holdout_views or []:
        if not 0 <= h < len(cfg.video_fns):
            raise PrepError(f"{path}: key 'holdout_views': view {h} out of range [0, {len(cfg.video_fns)})")
    if len(set(cfg.holdout_views or [])) >= len(cfg.video_fns) - 1:
        raise PrepError(f"{path}: key 'holdout_views': at least two cameras must stay observed for carving")
    for group in (("up", "vertical_lines", "vertical_lines_fn"), ("ell", "ell_m")):
        given = [k for k in group if getattr(cfg, k) is not None]
        if len(given) > 1:
            what = "set the up direction" if group[0] == "up" else "set the cube's side"
            raise PrepError(f"{path}: keys {' and '.join(repr(k) for k in given)} both {what}; keep one")
    if cfg.vertical_lines is not None and len(cfg.vertical_lines) != len(cfg.video_fns):
        raise PrepError(f"{path}: key 'vertical_lines': {len(cfg.vertical_lines)} cameras but the config names "
                        f"{len(cfg.video_fns)} videos (one list of segments per camera, [] for none)")
    if cfg.vertical_lines_fn is not None:
        files["vertical lines"] = resolve(cfg.project_directory, cfg.vertical_lines_fn, path, "vertical_lines_fn")
    for name, f in files.items():
        if not f.is_file():
            raise PrepError(f"{f}: no such file ({name} in {path})")
    return cfg, files, unused_keys(values, cfg)
