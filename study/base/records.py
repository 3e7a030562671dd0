"""The study's JSON records (study.json, a tuning round's and the confirm stage's plan.json): read, checked, compared.

A damaged record is refused in one line naming it; with --repair it is set aside (never deleted) and read as absent.
"""

from __future__ import annotations

import json
from typing import Callable, Optional

from study.base.storage import Store, StudyError, set_aside


def read_record(store: Store, name: str, valid: Callable[[dict], bool], invalid: str, repair: bool, recovery: str,
                repaired: str) -> Optional[dict]:
    """A JSON record of the study (None when absent). A damaged one (not JSON, or not `valid`) is refused with one
    line naming it and `recovery`; with --repair it is set aside (never deleted) and None returned."""
    if not store.exists(name):
        return None
    try:
        record = json.loads(store.read_text(name))
        if not isinstance(record, dict) or not valid(record):
            raise ValueError(f"not a {name}: {invalid}")
        return record
    except (ValueError, UnicodeDecodeError) as e:
        what = f"{type(e).__name__}: {str(e).splitlines()[0]}" if str(e) else type(e).__name__
        if not repair:
            raise StudyError(f"{store.path(name)}: damaged ({what}); {recovery}") from None
        print(f"note: {store.path(name)} was damaged ({what}); kept as {set_aside(store, name)}; {repaired}",
              flush=True)
        return None


def read_study_json(study: Store, repair: bool) -> Optional[dict]:
    """The study's study.json (None when there is none, or when --repair set a damaged one aside: the study goes on
    with this command's settings)."""
    return read_record(study, "study.json", lambda d: all(isinstance(d.get(k), dict) for k in ("space", "options",
                                                                                                "base_config")),
                       "no space, options and base_config", repair,
                       "if this command has the study's settings, run it again with --repair (the damaged file is "
                       "kept aside)", "rebuilt from this command's settings")


def read_round_plan(store: Store, repair: bool) -> Optional[dict]:
    """A tuning round's plan.json (None: not planned yet, or set aside by --repair: planned again)."""
    return read_record(store, "plan.json", lambda d: isinstance(d.get("trials"), list), "no trials", repair,
                       "run the same command with --repair to plan the round again (kept aside)",
                       "planning the round again")


REPLAN = ("run the same command with --repair to plan the confirm stage again from the explore records (kept aside, "
          "not deleted)")


def read_confirm_plan(store: Store, repair: bool, recovery: str = REPLAN) -> Optional[dict]:
    """The confirm plan written before the stage's first trial (None: not planned yet, or set aside by --repair:
    planned again, since the plan is a function of the explore records and --seed). `store`: the confirm stage's
    folder; `recovery`: what the one line refusing a damaged plan tells the user to do."""
    return read_record(store, "plan.json", lambda d: isinstance(d.get("trials"), list) and "epochs" in d,
                       "no trials and epochs", repair, recovery, "planning again")


def dict_diff(held: dict, new: dict, prefix: str = "") -> list[str]:
    """What differs between two nested dicts, one `key.path old -> new` per leaf (`-` where a key is absent)."""
    out = []
    for k in list(held) + [k for k in new if k not in held]:
        a, b = held.get(k, "-"), new.get(k, "-")
        if isinstance(a, dict) and isinstance(b, dict):
            out += dict_diff(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k} {json.dumps(a) if a != '-' else a} -> {json.dumps(b) if b != '-' else b}")
    return out
