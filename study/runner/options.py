"""The study command's options: the command line parsed once into one typed object, `Options`, that the runner's
functions read (preflight checks them before anything runs)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Optional

DESCRIPTION = "Run the 2D-vs-3D Gaussian splatting study with Ray Tune: `python -m study.run --space comparison`."


@dataclass(frozen=True)
class Options:
    """`python -m study.run`'s options, one field per option (parse_args says what each means); `vars()` gives
    the dict study.json records."""

    space: str = "comparison"
    name: Optional[str] = None
    storage: str = "studies"
    dataset: Optional[str] = None
    num_samples: Optional[int] = None
    max_epochs: Optional[int] = None
    gpus_per_trial: Optional[float] = None
    cpus_per_trial: Optional[float] = None
    max_concurrent: Optional[int] = None
    search: str = "optuna"
    seed: int = 0
    modes: list[str] = field(default_factory=list)
    cpu: bool = False
    max_failures: int = 1
    address: Optional[str] = None
    gpu_mem_mb: Optional[float] = None
    resume: bool = False
    no_report: bool = False
    verbose: bool = False
    repair: bool = False


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show a default only where there is one (the help text says what an unset option means)."""
    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False or action.default == []:
            return action.help or ""
        return super()._get_help_string(action)


def parse_args(argv: Optional[list[str]]) -> Options:
    """The command line as Options (argparse's own error and exit status 2 on a bad one)."""
    p = argparse.ArgumentParser(prog="python -m study.run", description=DESCRIPTION, formatter_class=_HelpFormatter)
    p.add_argument("--space", default="comparison", help="search space: a name in search_spaces/ or a JSON file path")
    p.add_argument("--name", help="study name (default: the space's name)")
    p.add_argument("--storage", default="studies", help="directory or URI (s3://, gs://, hdfs://, file://) that "
                                                        "holds studies; on a cluster every node must reach it")
    p.add_argument("--dataset", help="dataset to train on (default: the space's base config or "
                                     "data/synthetic_mouse.zarr)")
    p.add_argument("--num-samples", type=int, help="trials per (mode, grid cell); default from the space")
    p.add_argument("--max-epochs", type=int, help="epoch budget per trial; default from the space")
    p.add_argument("--gpus-per-trial", type=float, help="GPU fraction per trial; default from the memory model")
    p.add_argument("--cpus-per-trial", type=float, help="CPUs per trial; default from the space")
    p.add_argument("--max-concurrent", type=int, help="most trials running at once (default: as resources allow)")
    p.add_argument("--search", choices=["optuna", "random"], default="optuna",
                   help="per-mode Optuna TPE, or seeded random search as a baseline")
    p.add_argument("--seed", type=int, default=0, help="seed of the samplers and of the trials")
    p.add_argument("--modes", nargs="*", default=[], help="extra modes to add to the space's, e.g. 2d_screen")
    p.add_argument("--cpu", action="store_true", help="use the space's CPU scale-down even if a GPU is present")
    p.add_argument("--max-failures", type=int, default=1, help="retries of a trial from its last checkpoint")
    p.add_argument("--address", help="address of an existing Ray cluster (default: start a local one); its "
                                     "resources decide whether trials get GPUs")
    p.add_argument("--gpu-mem-mb", type=float, help="memory of one GPU for the memory model (default: measured; "
                                                    "on a cluster by a small task on a GPU node, else 16000)")
    p.add_argument("--resume", action="store_true", help="continue an existing study (refused if there is none); "
                                                         "re-running the same command also resumes")
    p.add_argument("--no-report", action="store_true", help="skip the analysis report at the end")
    p.add_argument("--verbose", action="store_true", help="show Ray's own console output (its trial boxes and "
                   "status tables) on screen instead of in <study>/ray.log")
    p.add_argument("--repair", action="store_true", help="recover a study whose study.json or Ray state is damaged, "
                                                         "as the error message says (damaged files are kept aside)")
    return Options(**vars(p.parse_args(argv)))
