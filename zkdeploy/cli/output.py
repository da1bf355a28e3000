"""Printing state: a table for people, JSON for scripts."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # rich is loaded on the first print: ``zkdeploy agent`` never prints through it
    from rich.console import Console

_consoles: dict[bool, Console] = {}


def _console(stderr: bool = False) -> Console:
    if stderr not in _consoles:
        from rich.console import Console

        _consoles[stderr] = Console(stderr=stderr, highlight=False, soft_wrap=True)
    return _consoles[stderr]


def __getattr__(name: str) -> Any:
    """``output.console`` and ``output.err_console``, made when first asked for."""
    if name in ("console", "err_console"):
        return _console(stderr=name == "err_console")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

#: the width output is laid out to when it does not go to a terminal (a file, a pipe, a CI log):
#: wide enough that no line is ever wrapped; a terminal gets its own width
UNWRAPPED = 100_000


def _out(target: Console) -> Console:
    """``target`` on a terminal (its own width); otherwise a console as wide as UNWRAPPED on the
    same stream, so that no line is wrapped.  Decided at each print, because the stream a console
    writes to can change (tests, redirections)."""
    if target.is_terminal:
        return target
    from rich.console import Console

    return Console(stderr=target.stderr, highlight=False, soft_wrap=True, width=UNWRAPPED)


#: the keys whose numbers are moments (seconds since the epoch, as stored in ZooKeeper); every
#: ``--json`` output prints them as ISO 8601 UTC strings (iso), like the journal's and history's
TIMESTAMP_KEYS = frozenset({
    "at", "approved_at", "created", "finished", "first_seen", "last_seen", "opened", "since", "staged_at",
    "stalled_since", "until", "verified",
})


def iso(when: float) -> str:
    """``when`` (seconds since the epoch) as ISO 8601 in UTC, the one format of every time in
    ``--json`` output: ``2026-05-01T12:00:00.250000+00:00`` (as the journal writes its times)."""
    return datetime.fromtimestamp(when, UTC).isoformat(timespec="microseconds")


#: subtrees left exactly as they are: a journal action's parameters are replayed, not zkdeploy's records
OPAQUE_KEYS = frozenset({"params"})


def jsonable(data: Any) -> Any:
    """``data`` with every number under a key of TIMESTAMP_KEYS (at any depth, OPAQUE_KEYS aside)
    turned into iso(); strings (times already in ISO 8601), None and everything else are left as they are."""
    if isinstance(data, Mapping):
        return {k: v if k in OPAQUE_KEYS
                else iso(v) if k in TIMESTAMP_KEYS and isinstance(v, int | float) and not isinstance(v, bool)
                else jsonable(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [jsonable(v) for v in data]
    return data


def emit_json(data: Any, *, one_line: bool = False) -> None:
    """Print ``data`` as JSON on stdout, times as ISO 8601 UTC (jsonable); ``one_line``: compact, on
    one line (the watch views print one document per line)."""
    text = json.dumps(jsonable(data), indent=None if one_line else 2, sort_keys=True, default=str,
                      separators=(",", ":") if one_line else None)
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    from rich.table import Table

    t = Table(title=title, title_justify="left", show_edge=False, pad_edge=False, box=None,
              header_style="bold")
    for col in columns:
        t.add_column(col)
    for row in rows:
        t.add_row(*["" if v is None else str(v) for v in row])
    _out(_console()).print(t)


def say(text: str) -> None:
    _out(_console()).print(text, markup=False)


def error(text: str) -> None:
    _out(_console(stderr=True)).print(f"error: {text}", markup=False, style="red")


def warn(text: str) -> None:
    """A warning on stderr: the command went on, but the operator should know."""
    _out(_console(stderr=True)).print(f"warning: {text}", markup=False, style="yellow")
