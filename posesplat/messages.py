"""One line for bad input: a JSON file that does not parse, a pydantic model that refuses its values. Each names
the file or source and the key, so that the user knows what to fix without a traceback."""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any, Iterable

from pydantic import ValidationError

SHOWN = 60  # the longest input repr a message quotes ("(got ...)"); a longer one is left out


def parse_json(text: str, where: str | Path, error: type[Exception]) -> Any:
    """JSON from `text`; `error` with '<where>: not valid JSON (line N: why)' where it does not parse."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{where}: not valid JSON (line {e.lineno}: {e.msg})") from None


def read_json(path: str | Path, error: type[Exception], what: str = "file") -> Any:
    """JSON from the file at `path`; `error` with one line where it is missing or does not parse."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise error(f"{path}: no such {what}") from None
    return parse_json(text, path, error)


def one_line(err: ValidationError, source: str, known: Iterable[str] = ()) -> str:
    """pydantic's first error as '<source>: key 'a.b': problem (got value)', or '<source>: unknown key 'x' (did you
    mean 'y'?)' with the closest of `known` keys."""
    e = err.errors()[0]
    loc = ".".join(str(p) for p in e["loc"])
    if e["type"] == "extra_forbidden":
        close = difflib.get_close_matches(str(e["loc"][-1]), list(known), n=1, cutoff=0.5)
        return f"{source}: unknown key '{loc}'" + (f" (did you mean '{close[0]}'?)" if close else "")
    msg = e["msg"].removeprefix("Value error, ")
    if not loc:
        return f"{source}: {msg}"
    got = repr(e.get("input"))
    return f"{source}: key '{loc}': {msg}" + (f" (got {got})" if "input" in e and len(got) <= SHOWN else "")
