"""TensorBoard for a study: one run per trial, named so researchers can filter and colour by what matters.

A run is `<stage>/<mode>/<cell>/<label>-<trial id>`, e.g. `explore/3d/grid48_frames100/lr0.00031_ssim0.12-1a2b3c4d`
or `confirm/2d/grid32_frames100/seed3-5e6f7a8b`, under `<stage folder>/tensorboard/`. Scalars are grouped by tag
prefix (`quality/`, `loss/`, `cost/`) and carry a description; what does not change over epochs (model size,
device, backend) is an HParams column only. The HParams session has typed values, the study's metrics first and,
written by the driver when the trial ends, `trial/stopped_early` and `trial/failed`.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf import struct_pb2
from PIL import Image, ImageDraw
from tensorboard.backend.event_processing import plugin_event_accumulator as pea
from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
from tensorboard.compat.proto.tensor_pb2 import TensorProto
from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2
from tensorboard.plugins.hparams import metadata as hparams_metadata
from tensorboard.plugins.scalar import metadata as scalar_metadata
from tensorboard.util import tensor_util
from torch.utils.tensorboard import SummaryWriter

from posesplat.metrics import METRICS
from study.base.rows import FAILED, STOPPED
from study.base.storage import Store
from study.base.space import MODE_KEY, Space

GROUPS = {g: {m.name: m.description for m in METRICS if m.group == g} for g in ("quality", "loss", "cost")}
CONSTANTS = tuple(m.name for m in METRICS if m.group == "info")  # in HParams only: the same every epoch
STATUS = {"trial/stopped_early": "1 when the scheduler (ASHA) stopped the trial before its epoch budget",
          "trial/failed": "1 when the trial failed (its error is in trials.parquet)"}
SHORT = {"grid_size": "grid", "max_frames": "frames", "ssim_lambda": "ssim", "img_lambda": "img"}
PANEL = "first validation frame, first held-out view: ground truth | render | absolute error"


def tag_of(name: str) -> str:
    """The grouped tag of a metric: `quality/valid_heldout_iou`, `loss/train_loss`, `cost/epoch_time_s`."""
    return next((f"{g}/{name}" for g, names in GROUPS.items() if name in names), f"other/{name}")


def describe(name: str) -> str:
    return next((names[name] for names in GROUPS.values() if name in names), "")


def fmt(value: Any) -> str:
    """A config value in a run name: integers as they are, floats to 3 significant digits, None as `all`."""
    if value is None:
        return "all"
    if isinstance(value, float) and not value.is_integer():
        return f"{value:.3g}"
    text = str(int(value)) if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)
    return text.replace("/", "_")  # a run name's levels are folders


@dataclass(frozen=True)
class Names:
    """How a stage names its runs: the stage, the grid's cell keys and the keys that tell a cell's trials apart."""

    stage: str
    cell_keys: tuple[str, ...]
    label_keys: tuple[str, ...]
    metrics: tuple[str, ...] = ()  # the study's own metrics, first in HParams
    fixed_keys: tuple[str, ...] = ()  # keys the space fixes per mode (Space.mode_config), HParams columns too

    def run(self, config: dict, trial_id: str) -> str:
        mode = config.get(MODE_KEY, "mode")
        cell = "_".join(f"{SHORT.get(k, k)}{fmt(config.get(k))}" for k in self.cell_keys) or "cell"
        label = "_".join(f"{SHORT.get(k, k)}{fmt(config.get(k))}" for k in self.label_keys) or "trial"
        return f"{self.stage}/{mode}/{cell}/{label}-{trial_id}"

    def keys(self) -> tuple[str, ...]:
        """What tells a stage's trials apart (the HParams columns besides the metrics): mode, cell, label, seed and
        the keys the space fixes per mode (2DGS's term weights, say)."""
        return tuple(dict.fromkeys((MODE_KEY, *self.cell_keys, *self.label_keys, "seed", *self.fixed_keys)))

    def dirname(self, trial) -> str:
        """Ray's folder of a trial (`TuneConfig.trial_dirname_creator`): its run name in one level, e.g.
        `explore_3d_grid48_frames100_lr0.00031_ssim0.12-1a2b3c4d` (Ray's default would list every config key)."""
        return self.run(trial.config, trial.trial_id).replace("/", "_")

    def folder(self, config: dict, trial_id: str) -> tuple[str, ...]:
        """The run's folder parts under the study: `("tensorboard", stage, mode, cell, label-id)` (Tune's private
        `_` keys of a trial config are not part of the name)."""
        public = {k: v for k, v in config.items() if not k.startswith("_")}
        return ("tensorboard", *self.run(public, trial_id).split("/"))

    def metric_order(self, names: list[str]) -> list[str]:
        """The study's metrics, then quality, loss and cost in their tables' order, then anything else."""
        known = [*self.metrics, *(n for g in GROUPS.values() for n in g)]
        ordered = [n for n in dict.fromkeys(known) if n in names]
        return ordered + sorted(set(names) - set(ordered))


def study_metrics(space: Space) -> tuple[str, ...]:
    """The metrics the study decides on, first in TensorBoard's HParams table."""
    confirm = (*space.confirm.quality, space.confirm.cost) if space.confirm else ()
    return tuple(dict.fromkeys((space.metric, *confirm)))


def stage_names(space: Space, stage: str, cell, label_keys: tuple[str, ...]) -> Names:
    """How a stage names its runs, with the study's metrics and the space's fixed keys."""
    return Names(stage, tuple(cell), label_keys, study_metrics(space), space.fixed_keys())


STAGES = ("explore", "tune", "confirm")


def runs(store: Store) -> dict[str, tuple[str, ...]]:
    """Trial id -> its run's folder parts under `tensorboard/`: four levels (stage, mode, cell, label-id), or one
    (`tensorboard/<trial id>/`) for trials of studies started before runs were named. Files are not runs."""
    out = {}
    for top in store.list("tensorboard", folders_only=True):
        if not top.startswith(STAGES):  # one level: the folder is the trial id
            out[top] = ("tensorboard", top)
            continue
        for mode in store.list(f"tensorboard/{top}", folders_only=True):
            for cell in store.list(f"tensorboard/{top}/{mode}", folders_only=True):
                for run in store.list(f"tensorboard/{top}/{mode}/{cell}", folders_only=True):
                    out[run.rsplit("-", 1)[-1]] = ("tensorboard", top, mode, cell, run)
    return out


# ----------------------------------------------------------------------------------------------- protos


def _scalar_summary(tag: str, value: float, description: str, first: bool):
    """A scalar as TensorBoard's own summaries write it today (a float tensor under the scalars plugin); the first
    event of a tag carries its display name and description, which both of TensorBoard's loaders read."""
    meta = (scalar_metadata.create_summary_metadata(display_name=tag.split("/", 1)[-1], description=description) if first
            else SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name=scalar_metadata.PLUGIN_NAME)))
    tensor = TensorProto(dtype=1, float_val=[float(value)])  # dtype 1: DT_FLOAT, shape []
    return Summary(value=[Summary.Value(tag=tag, tensor=tensor, metadata=meta)])


def _hparam_value(v: Any):
    """(proto Value, DataType name) of a hyperparameter. The plugin's only number type is float64, which its table
    prints with 5 significant digits (a grid size of 16 shows as `16.000`). So integers (grid size, frames, seed,
    model size) are written as text: they show as `16` and filter by value, as the discrete settings they are."""
    if isinstance(v, bool):
        return struct_pb2.Value(bool_value=v), "DATA_TYPE_BOOL"
    if isinstance(v, int):
        return struct_pb2.Value(string_value=str(v)), "DATA_TYPE_STRING"
    if isinstance(v, float):
        return struct_pb2.Value(number_value=v), "DATA_TYPE_FLOAT64"
    return struct_pb2.Value(string_value=str(v)), "DATA_TYPE_STRING"


def hparams_summaries(hparams: dict[str, Any], metrics: list[str], group: str):
    """The HParams plugin's experiment and session-start summaries (its documented protos, as torch writes them)."""
    def summary(tag: str, data: plugin_data_pb2.HParamsPluginData) -> Summary:
        data.version = hparams_metadata.PLUGIN_DATA_VERSION
        meta = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(
            plugin_name=hparams_metadata.PLUGIN_NAME, content=data.SerializeToString()))
        return Summary(value=[Summary.Value(tag=tag, metadata=meta)])

    start = plugin_data_pb2.SessionStartInfo(group_name=group)
    infos = []
    for k, v in hparams.items():
        if v is None:
            continue
        value, dtype = _hparam_value(v)
        start.hparams[k].CopyFrom(value)
        infos.append(api_pb2.HParamInfo(name=k, type=api_pb2.DataType.Value(dtype)))
    metric_infos = [api_pb2.MetricInfo(name=api_pb2.MetricName(tag=m), display_name=m, description=d)
                    for m, d in ((tag_of(n) if n not in STATUS else n, describe(n) or STATUS.get(n, ""))
                                 for n in metrics)]
    experiment = api_pb2.Experiment(hparam_infos=infos, metric_infos=metric_infos)
    return [summary(hparams_metadata.EXPERIMENT_TAG, plugin_data_pb2.HParamsPluginData(experiment=experiment)),
            summary(hparams_metadata.SESSION_START_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_start_info=start))]


PANELS = {"heldout": ("ground truth", "render", "|error|"),  # posesplat.train's panels -> their captions
          "geometry": ("true depth", "rendered depth", "true normals", "normals of the depth")}


def labelled(panel: np.ndarray, labels: tuple[str, ...] = PANELS["heldout"]) -> np.ndarray:
    """A render panel [H, k W, 3] with a caption strip above each of its k images."""
    h, w = panel.shape[0], panel.shape[1] // len(labels)
    strip = Image.new("RGB", (panel.shape[1], 14), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    for i, text in enumerate(labels):
        draw.text((i * w + 3, 1), text, fill=(0, 0, 0))
    return np.concatenate([np.asarray(strip), panel], axis=0)


# ----------------------------------------------------------------------------------------------- writers


class TrialBoard:
    """TensorBoard writer of one trial: grouped, described scalars, labelled panels and the HParams session."""

    def __init__(self, logdir: Path, names: Names, config: dict, trial_id: str, first_epoch: int = 1):
        # purge_step: a resumed trial hides the events of epochs it is about to redo (written before a crash), also
        # when it restarts from epoch 1 (interrupted after writing epoch 1 but before Ray registered its checkpoint)
        self.writer = SummaryWriter(str(logdir), purge_step=first_epoch)
        self.names, self.trial_id = names, trial_id
        self.hparams = {"stage": names.stage, **{k: config[k] for k in names.keys() if k in config}}
        self.seen: set[str] = set()  # tags written by this process (the first event of a tag carries its description)
        self.started = False

    def write(self, metrics: dict[str, Any], images: dict[str, np.ndarray]) -> None:
        step = int(metrics["epoch"])
        scalars = {k: float(v) for k, v in metrics.items() if k not in CONSTANTS and isinstance(v, (int, float))
                   and not isinstance(v, bool) and math.isfinite(v)}
        if not self.started:  # the session: hyperparameters and constants; its metrics are the scalar tags
            constants = {k: metrics[k] for k in CONSTANTS if k in metrics and k not in ("epoch", "checkpoint_bytes")}
            names = [k for k, v in metrics.items() if k not in CONSTANTS and isinstance(v, (int, float))
                     and not isinstance(v, bool)]
            for s in hparams_summaries({**self.hparams, **constants, "trial_id": self.trial_id},
                                       self.names.metric_order(names) + list(STATUS),
                                       self.names.run(self.hparams, self.trial_id)):
                self.writer.file_writer.add_summary(s)
            self.started = True
        for k, v in scalars.items():
            tag = tag_of(k)
            self.writer.file_writer.add_summary(_scalar_summary(tag, v, describe(k), tag not in self.seen), step)
            self.seen.add(tag)
        for name, img in images.items():
            self.writer.add_image(f"renders/{name}", labelled(img, PANELS.get(name, PANELS["heldout"])), step,
                                  dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def write_end(store: Store, run: tuple[str, ...], status: str, epoch: int) -> None:
    """The driver's last word on a trial's run: `trial/stopped_early` and `trial/failed` at its last epoch."""
    with tempfile.TemporaryDirectory(prefix="posesplat-tb-end-") as d:
        w = SummaryWriter(d, filename_suffix=".end")
        for tag, value in (("trial/stopped_early", status == STOPPED), ("trial/failed", status == FAILED)):
            w.file_writer.add_summary(_scalar_summary(tag, float(value), STATUS[tag], True), max(epoch, 1))
        w.close()
        store.upload(Path(d), *run)


def scalars(path: Path, tag: str) -> list[tuple[int, float]]:
    """(step, value) of a scalar tag of a run folder, read with TensorBoard's own reader (for tests and notebooks)."""
    acc = pea.EventAccumulator(str(path))
    acc.Reload()
    return [(e.step, float(tensor_util.make_ndarray(e.tensor_proto))) for e in acc.Tensors(tag)]
