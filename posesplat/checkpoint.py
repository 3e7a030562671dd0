"""Checkpoint files: `write`, `read` (never unpickles), the training state they hold (`save_checkpoint`, `restore`)
and `python -m posesplat.checkpoint upgrade PATH... --trust`.

A checkpoint (format 2) holds tensors, plain containers, numbers and strings only, the config as JSON text, so it
loads with `torch.load(weights_only=True)`: a file holding any other pickled object is refused before any object is
built. Checkpoints of format 1 (before 2026-12) were read by unpickling, which runs whatever a file holds; `upgrade`
rewrites them in format 2 and is to be run only on checkpoints you trust.
"""

from __future__ import annotations

import argparse
import json
import pickle
import re
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import torch

from posesplat.io import atomic_file

if TYPE_CHECKING:
    from posesplat.config import Config

FORMAT = 2
OLD_FORMATS = (1,)  # what `upgrade` converts
KEPT = ".format1"  # the suffix of the old file `upgrade` keeps beside the new one
PLAIN = (str, int, float, bool, type(None), torch.Tensor)


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or written; one line naming the file."""


def upgrade_command(path: str | Path) -> str:
    return f"python -m posesplat.checkpoint upgrade {path} --trust"


def _check_plain(v: Any, where: str) -> None:
    """Refuse anything `read` could not load: only tensors, numbers, strings, None, dicts, lists and tuples."""
    if isinstance(v, dict):
        for k, x in v.items():
            _check_plain(k, where)
            _check_plain(x, f"{where}[{k!r}]")
    elif isinstance(v, (list, tuple)):
        for i, x in enumerate(v):
            _check_plain(x, f"{where}[{i}]")
    elif not isinstance(v, PLAIN) or isinstance(v, np.generic):
        raise TypeError(f"{where} is a {type(v).__module__}.{type(v).__qualname__}")


def write(path: str | Path, state: dict) -> int:
    """Write `state` (its "config" a dict) atomically as a checkpoint of FORMAT; returns its size in bytes."""
    path = Path(path)
    state = {**state, "format": FORMAT, "config": json.dumps(state["config"])}
    try:
        _check_plain(state, "state")
    except TypeError as e:
        raise CheckpointError(f"{path}: not written: {e}, which a checkpoint cannot hold (tensors and plain values "
                              f"only)") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path, fsync=True) as f:
        torch.save(state, f)
    return path.stat().st_size


def _refusal(path: Path, e: Exception) -> str:
    """One line for a file that weights-only loading refused (the pickled global it named, if any)."""
    found = re.search(r"GLOBAL ([\w.]+)", str(e))
    what = f"a pickled {found.group(1)}" if found else "a pickled object"
    return (f"{path}: refused without loading: holds {what}, not only tensors and plain values (loading it would run "
            f"code). If it is a posesplat checkpoint from before format {FORMAT} that you trust, convert it with "
            f"`{upgrade_command(path)}`")


def _load(path: Path) -> Any:
    """The file's contents through weights-only unpickling (no object of a class outside torch's allowlist)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such checkpoint") from None
    except pickle.UnpicklingError as e:
        raise CheckpointError(_refusal(path, e)) from None
    except Exception as e:  # a truncated or foreign file
        detail = str(e).strip().splitlines()[0] if str(e).strip() else "no detail"
        raise CheckpointError(f"{path}: not a readable posesplat checkpoint ({type(e).__name__}: {detail})") from None


def read(path: str | Path) -> dict:
    """The state of a checkpoint of FORMAT (its "config" as a dict), read without unpickling any object."""
    path = Path(path)
    state = _load(path)
    fmt = state.get("format") if isinstance(state, dict) else None
    if fmt in OLD_FORMATS:
        raise CheckpointError(f"{path}: a posesplat checkpoint of format {fmt}, which loading would unpickle; if you "
                              f"trust where it came from, convert it with `{upgrade_command(path)}`")
    if fmt != FORMAT or not isinstance(state.get("config"), str):
        raise CheckpointError(f"{path}: not a posesplat checkpoint of format {FORMAT}")
    try:
        state["config"] = json.loads(state["config"])
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: its config is not valid JSON ({e.msg})") from None
    return state


def rng_state(device: torch.device) -> dict[str, Any]:
    """torch's CPU RNG state, and the training device's CUDA RNG state when training on CUDA (else None)."""
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return {"torch_rng": torch.get_rng_state(), "cuda_rng": cuda}


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Restore what rng_state saved; a CUDA state is restored only when training on CUDA again."""
    torch.set_rng_state(state["torch_rng"])
    if device.type == "cuda" and state.get("cuda_rng") is not None:
        torch.cuda.set_rng_state(state["cuda_rng"], device)


def save_checkpoint(path: Path, cfg: Config, volume_idx: list[list[int]], model: torch.nn.Module,
                    opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LRScheduler, epoch: int,
                    history: list, device: torch.device) -> int:
    """Write the checkpoint atomically (temporary name, then rename); returns its size in bytes."""
    state = {
        "config": cfg.model_dump(mode="json"),
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "volume_idx": volume_idx,
        **rng_state(device),
        "history": history,
    }
    return write(path, state)


def restore(state: dict, model: torch.nn.Module, opt: torch.optim.Optimizer,
            sched: torch.optim.lr_scheduler.LRScheduler, device: torch.device) -> tuple[list[dict], int]:
    """Load a checkpoint's state (`read`) into the model, optimiser and scheduler and restore its RNG states;
    returns its metrics history and the epoch to continue from."""
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    set_rng_state(state, device)
    return list(state["history"]), state["epoch"] + 1


def needs_upgrade(source: Any) -> bool:
    """Whether a checkpoint (a path or an open binary file) is of an older format or holds pickled objects, which
    `read` refuses and `upgrade` converts; a damaged or foreign file is not (read names what is wrong with it)."""
    try:
        state = torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        return True
    except Exception:
        return False
    return isinstance(state, dict) and state.get("format") in OLD_FORMATS


def plain(v: Any) -> Any:
    """v with numpy numbers and arrays as Python numbers and lists (what a format 1 history could hold)."""
    if isinstance(v, dict):
        return {k: plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return type(v)(plain(x) for x in v)
    if isinstance(v, (np.generic, np.ndarray)):
        return v.tolist()
    return v


def upgrade(path: str | Path) -> Optional[Path]:
    """Rewrite a trusted checkpoint of an older format in FORMAT (UNPICKLES IT: it runs whatever the file holds).
    The old file is kept beside it (`<name>.format1`); returns that path, or None when the file is already current."""
    path = Path(path)
    try:
        read(path)
        return None
    except CheckpointError:
        pass
    try:
        old = torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such checkpoint") from None
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: "
                              f"{str(e).strip().splitlines()[0] if str(e).strip() else 'no detail'})") from None
    if not isinstance(old, dict) or old.get("format") not in OLD_FORMATS or not isinstance(old.get("config"), dict):
        raise CheckpointError(f"{path}: not a posesplat checkpoint of format {', '.join(map(str, OLD_FORMATS))}")
    kept = path.with_name(path.name + KEPT)
    if kept.exists():
        raise CheckpointError(f"{kept}: already exists; move it away to upgrade {path}")
    new = {k: plain(v) if k in ("history", "volume_idx", "epoch") else v for k, v in old.items() if k != "format"}
    try:  # before anything is written
        _check_plain(new, "state")
    except TypeError as e:
        raise CheckpointError(f"{path}: cannot be upgraded: {e}, which format {FORMAT} cannot hold") from None
    with open(path, "rb") as src, atomic_file(kept, fsync=True) as dst:
        shutil.copyfileobj(src, dst)
    write(path, new)
    return kept


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m posesplat.checkpoint", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    up = sub.add_parser("upgrade", help=f"rewrite checkpoints of format {', '.join(map(str, OLD_FORMATS))} in format "
                                        f"{FORMAT}, keeping each old file beside it as <name>{KEPT}")
    up.add_argument("paths", nargs="+", metavar="PATH")
    up.add_argument("--trust", action="store_true", help="required: upgrading unpickles each file, which runs any "
                                                         "code it holds; give it only checkpoints you trust")
    a = p.parse_args(argv)
    if not a.trust:
        print("error: upgrading unpickles each checkpoint, which runs any code it holds: pass --trust, and only for "
              "checkpoints you or someone you trust wrote", file=sys.stderr)
        return 2
    rc = 0
    for path in a.paths:
        try:
            kept = upgrade(path)
        except (CheckpointError, FileNotFoundError) as e:
            print(f"error: {e}", file=sys.stderr)
            rc = 2
            continue
        print(f"{path}: already format {FORMAT}" if kept is None
              else f"{path}: upgraded to format {FORMAT} (the old file is kept as {kept})")
    return rc


if __name__ == "__main__":
    sys.exit(main())
