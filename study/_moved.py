"""The modules' paths before study/ became three packages, importable for studies started before the move.

Ray pickles a stage's trainable, searcher, scheduler and callbacks by module path (tuner.pkl): a study interrupted
before the move names `study.sink`, `study.search`, `study.trainable`. This finder gives such a name the module at
its new home, so the study resumes. It imports nothing until an old name is asked for.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

MOVED = {f"study.{name}": f"study.{package}.{name}" for package, names in (
    ("base", ("storage", "space")),
    ("analysis", ("load", "explore", "confirm", "decide", "looks", "stats", "tuning", "report", "plots", "renders")),
    ("runner", ("search", "sink", "trainable", "board", "_ray_compat")),
) for name in names}  # study.run, analyze, simulate and resources are still modules: the commands, forwarding


class Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports an old module name as the module at its new home (the same module object under both names)."""

    def find_spec(self, name, path=None, target=None):
        return importlib.util.spec_from_loader(name, self) if name in MOVED else None

    def create_module(self, spec):
        return importlib.import_module(MOVED[spec.name])

    def exec_module(self, module) -> None:
        pass  # already executed at its new home


def install() -> None:
    """Put the finder on sys.meta_path once (study/__init__.py: every process that unpickles study's objects)."""
    if not any(isinstance(f, Alias) for f in sys.meta_path):
        sys.meta_path.append(Alias())
