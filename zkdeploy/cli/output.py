"""Printing state: a table for people, JSON for scripts."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)

#: the width output is laid out to when it does not go to a terminal (a file, a pipe, a CI log):
#: wide enough that no line is ever wrapped; a terminal gets its own width
UNWRAPPED = 100_000


def _out(target: Console) -> Console:
    """``target`` on a terminal (its own width); otherwise a console as wide as UNWRAPPED on the
    same stream, so that no line is wrapped.  Decided at each print, because the stream a console
    writes to can change (tests, redirections)."""
    if target.is_terminal:
        return target
    return Console(stderr=target.stderr, highlight=False, soft_wrap=True, width=UNWRAPPED)


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    t = Table(title=title, title_justify="left", show_edge=False, pad_edge=False, box=None,
              header_style="bold")
    for col in columns:
        t.add_column(col)
    for row in rows:
        t.add_row(*["" if v is None else str(v) for v in row])
    _out(console).print(t)


def say(text: str) -> None:
    _out(console).print(text, markup=False)


def error(text: str) -> None:
    _out(err_console).print(f"error: {text}", markup=False, style="red")


def warn(text: str) -> None:
    """A warning on stderr: the command went on, but the operator should know."""
    _out(err_console).print(f"warning: {text}", markup=False, style="yellow")
