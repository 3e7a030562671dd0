"""The metrics schema: every value the training loop reports per epoch, with its unit, which direction is better,
whether it is also reported per test frame, and how the analysis turns a trial's epochs into one number.

Evaluation (posesplat.train, posesplat.scores) reads this table. So do the study's parquet types and TensorBoard
groups (study.runner.sink, study.runner.board), the analysis (study.analysis.load) and the space's choice of
decision metrics (study.base.space). A new metric is therefore one entry here plus the line that measures it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

Group = Literal["quality", "loss", "cost", "info"]  # info: a trial's constants and labels, not a curve


@dataclass(frozen=True)
class Metric:
    name: str
    group: Group
    unit: str  # "" when unitless
    higher_is_better: Optional[bool]  # None: not a score (a label, a constant, a count)
    description: str
    label: str = ""  # short name for tables and plots (default: the name)
    per_frame: bool = False  # also reported per evaluated test frame, as the list `<name>_frames`
    evaluated: bool = False  # measured only on epochs with an evaluation (NaN on the others)
    over_epochs: Literal["selected", "median", "max"] = "selected"  # a trial's value in the analysis: at its
    # selected epoch (best validation), or the median or max over its epochs
    kind: Literal["float", "int", "text"] = "float"


SPLITS = {"valid": "the observed (training) views, validation frames",
          "valid_heldout": "the held-out views, validation frames",
          "test_heldout": "the held-out views, test frames"}
IMAGE = {  # per view, from posesplat.scores.image_metrics: (unit, label, what)
    "iou": ("", "IoU", "mask IoU (rendered alpha > 0.5 against the true mask)"),
    "psnr": ("dB", "PSNR (full image)", "PSNR over every pixel, background included"),
    "psnr_fg": ("dB", "foreground PSNR", "PSNR over the pixels where either mask is set"),
    "ssim": ("", "SSIM", "SSIM (torchmetrics, Gaussian window)"),
}


GEOMETRY = {  # per view, from posesplat.geometry.view_errors over the true mask's pixels: (unit, label, what)
    "depth_err": ("m", "depth error", "mean |expected depth - true depth| (camera z)"),
    "depth_err_rel": ("", "relative depth error", "mean |expected depth - true depth| / true depth"),
    "normal_err": ("deg", "normal error", "mean angle between the rendered depth's normals and the true normals"),
}


GEOMETRY_NAMES = (*(f"test_heldout_{k}" for k in GEOMETRY), "test_surface_dist")  # NaN without true geometry


def _image_metrics() -> list[Metric]:
    return [Metric(f"{split}_{k}", "quality", unit, True, f"{what} on {where}", label=label,
                   per_frame=split == "test_heldout", evaluated=True)
            for split, where in SPLITS.items() for k, (unit, label, what) in IMAGE.items()]


METRICS: tuple[Metric, ...] = (
    Metric("epoch", "info", "", None, "the epoch (1-based)", kind="int"),
    *_image_metrics(),
    *(Metric(f"test_heldout_{k}", "quality", unit, False, f"{what} on {SPLITS['test_heldout']} (synthetic data "
             "with gt/depth and gt/normal only; NaN elsewhere)", label=label, per_frame=True, evaluated=True)
      for k, (unit, label, what) in GEOMETRY.items()),
    Metric("test_surface_dist", "quality", "m", False, "Chamfer-style distance between the rendered depth of every "
           "view (held-out and observed) back-projected to points and the true body surface (the true depth maps' "
           "points), mean of both directions, test frames (synthetic data with gt/depth only)",
           label="surface distance", per_frame=True, evaluated=True),
    Metric("gt_iou3d", "quality", "", True, "volumetric IoU of the cells that became Gaussians against the true body "
           "(synthetic data only), test frames", label="3D IoU", evaluated=True),
    Metric("gt_mass_inside", "quality", "", True, "share of the Gaussians' opacity inside the true body (synthetic "
           "data only), test frames", label="opacity inside the body", evaluated=True),
    Metric("train_loss", "loss", "", False, "the training objective, mean over the epoch's steps"),
    Metric("train_iou_loss", "loss", "", False, "1 - soft mask IoU, mean over the epoch"),
    Metric("train_l1", "loss", "", False, "L1 image error, mean over the epoch"),
    Metric("train_ssim_loss", "loss", "", False, "1 - SSIM, mean over the epoch (NaN when ssim_lambda is 0)"),
    Metric("train_dist_loss", "loss", "m", False, "2DGS's depth distortion (unweighted), mean over the epoch's steps "
           "where it was on (NaN when dist_lambda is 0 or during its warm-up)"),
    Metric("train_normal_loss", "loss", "", False, "2DGS's normal consistency (unweighted), mean over the epoch's "
           "steps where it was on (NaN when normal_lambda is 0 or during its warm-up)"),
    Metric("current_lr", "loss", "", None, "the learning rate at the end of the epoch"),
    Metric("epoch_time_s", "cost", "s", False, "seconds of training in the epoch (evaluation excluded)",
           label="time per epoch", over_epochs="median"),
    Metric("eval_time_s", "cost", "s", False, "seconds of evaluation in the epoch (0 when not evaluated)"),
    Metric("render_ms", "cost", "ms", False, "milliseconds per rendered view in evaluation", label="render time",
           evaluated=True, over_epochs="median"),
    Metric("cuda_peak_allocated_mb", "cost", "MB", False, "peak CUDA memory allocated by torch in the epoch "
           "(torch.cuda.max_memory_allocated; NaN on a CPU)", label="peak CUDA memory", over_epochs="max"),
    Metric("cpu_peak_rss_growth_mb", "cost", "MB", False, "growth of the process's resident set to its peak in the "
           "epoch (VmHWM minus the resident set at the start; NaN on a GPU)", label="peak RSS growth",
           over_epochs="max"),
    Metric("gaussians_per_frame", "cost", "", False, "Gaussians per frame, mean over the evaluated frames",
           label="Gaussians per frame", evaluated=True),
    Metric("mem_kind", "info", "", None, "which memory column this epoch measured: cuda_max_allocated or "
           "cpu_rss_delta", kind="text"),
    Metric("params_per_gaussian", "info", "", False, "parameters per Gaussian of the mode (posesplat.modes)",
           label="parameters per Gaussian", kind="int"),
    Metric("model_params", "info", "", None, "trainable parameters of the model", kind="int"),
    Metric("checkpoint_bytes", "info", "B", None, "size of the epoch's checkpoint file (-1: none written)", kind="int"),
    Metric("device", "info", "", None, "the torch device that trained (cpu, cuda:0)", kind="text"),
    Metric("backend", "info", "", None, "the renderer backend (torch or gsplat)", kind="text"),
)
BY_NAME = {m.name: m for m in METRICS}
FRAMES = "test_frames"  # per evaluated test frame: the frame indices the `<name>_frames` lists follow
RENAMED = {"n_gaussians": "gaussians_per_frame"}  # columns of studies written before this schema
# ... and `peak_mem_mb`, which held either memory column, by `mem_kind`:
PEAK_MEM = {"cuda_max_allocated": "cuda_peak_allocated_mb", "cpu_rss_delta": "cpu_peak_rss_growth_mb"}


def names(group: Optional[Group] = None, *, evaluated: Optional[bool] = None, per_frame: Optional[bool] = None
          ) -> list[str]:
    """The metric names of a group (all groups by default), filtered by the flags given, in schema order."""
    return [m.name for m in METRICS if (group is None or m.group == group)
            and (evaluated is None or m.evaluated == evaluated) and (per_frame is None or m.per_frame == per_frame)]


def validation_twin(name: str) -> Optional[str]:
    """The validation metric that tracks a test metric on the held-out views (test_heldout_iou -> valid_heldout_iou);
    None where validation does not measure it (the geometry errors)."""
    twin = "valid_heldout" + name[len("test_heldout"):] if name.startswith("test_heldout") else None
    return twin if twin in BY_NAME else None


def frame_column(name: str) -> str:
    """The per-test-frame list column of a per-frame metric."""
    return f"{name}_frames"


def unevaluated() -> dict[str, object]:
    """The values an epoch without evaluation reports for the evaluated metrics (NaN, empty per-frame lists)."""
    return {**{k: float("nan") for k in names(evaluated=True)},
            **{frame_column(k): [] for k in names(per_frame=True)}, FRAMES: []}


def label(name: str) -> str:
    """The short name of a metric with its unit, for tables and plots."""
    m = BY_NAME[name]
    return f"{m.label or m.name}" + (f" ({m.unit})" if m.unit else "")
