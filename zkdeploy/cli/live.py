"""Live views: ``status --watch``, ``deploy --wait``, ``rollout status`` and ``stage --seed-until``.

A view is shown one of three ways, chosen once:

- on a terminal it is redrawn in place (rich's Live): a progress bar per
  service (nodes at the target version / nodes concerned), the deploy's state
  in colour (halted and failed red, stalled and paused yellow), elapsed time,
  an estimate of the time left, what the rollout waits for, and under it each
  node that holds it back with its reason;
- otherwise (a pipe, a file, a CI log) one plain line per change, without
  escape codes and never wrapped;
- with ``--json``, one JSON document per line, printed when something changed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from zkdeploy.cli import output
from zkdeploy.cli.frames import IDLE, STALLED, Estimator, Frame, deploys_frame, elapsed, row_dict, span
from zkdeploy.cli.views import fleet_status
from zkdeploy.coordination import Store
from zkdeploy.errors import RolloutError
from zkdeploy.model import DeployEntry

#: the colour of each state (anything else is shown plain)
STATE_STYLES = {
    "pending": "cyan", "done": "green", IDLE: "dim", "paused": "yellow", STALLED: "bold yellow",
    "halted": "bold red", "aborted": "red", "rolled_back": "yellow",
}
BAR_WIDTH = 16


def _clock(at: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(at))


def render(frame: Frame, title: str, lefts: Mapping[str, float | None]) -> RenderableType:
    """The terminal picture of ``frame``: the killswitch, a table of one line per service (its bar,
    counts and times; it fits 80 columns), then per service what its rollout waits for and each
    node that holds it back, as lines that wrap rather than being cut."""
    table = Table(box=None, show_edge=False, pad_edge=False, header_style="bold")
    for column in ("SERVICE", "TARGET", "DEPLOY", "STATE", "PROGRESS", "NODES", "ELAPSED", "LEFT"):
        table.add_column(column, no_wrap=True)
    why: list[RenderableType] = []
    for row in frame.rows:
        style = STATE_STYLES.get(row.state, "")
        bar = ProgressBar(total=max(row.total, 1), completed=row.done if row.total else 0, width=BAR_WIDTH,
                          complete_style=style if row.state in ("halted", "aborted", STALLED) else "cyan",
                          finished_style="green")
        left = lefts.get(row.key)
        table.add_row(row.service, row.target or "-", row.deploy or "-", Text(row.state, style=style), bar,
                      f"{row.done}/{row.total}", span(elapsed(row, frame.at)) if row.started is not None else "-",
                      ("~" + span(left) if left else span(left)) if row.is_open else "-")
        why.append(Text.assemble((row.service, "bold"), ": ",
                                 (row.waiting_for, "red" if row.state == "halted" else "")))
        for held in row.holding:
            why.append(Text.assemble("  ", (held.node, "bold"), "  ",
                                     (held.reason, "red" if held.severe else "yellow")))
        if row.more:
            why.append(Text(f"  … and {row.more} more node(s) not at {row.target}", style="dim"))
    parts: list[RenderableType] = []
    if frame.killswitch:
        parts.append(Text(f"KILLSWITCH ON: {frame.killswitch}", style="bold red"))
    parts += [Text(f"{title} — {_clock(frame.at)}", style="bold"), table, Text(""), *why]
    return Group(*parts)


def plain_lines(frame: Frame, lefts: Mapping[str, float | None]) -> dict[str, tuple[str, str]]:
    """The plain lines of ``frame``, by key: (what is compared to see a change, what is printed).
    Elapsed time and the estimate are printed but not compared: they alone are no change."""
    out: dict[str, tuple[str, str]] = {}
    if frame.killswitch:
        out["killswitch"] = (f"KILLSWITCH ON: {frame.killswitch}",) * 2
    for row in frame.rows:
        core = f"{row.service} {row.deploy or '-'} {row.state} {row.done}/{row.total} at {row.target or '-'}"
        timing = ""
        if row.started is not None:
            timing = f", elapsed {span(elapsed(row, frame.at))}"
            if row.is_open:
                left = lefts.get(row.key)
                timing += f", ~{span(left)} left" if left else ", time left ?"
        out[row.key] = (f"{core} — {row.waiting_for}", f"{core}{timing} — {row.waiting_for}")
        for held in row.holding:
            out[f"{row.key}/{held.node}"] = (f"  {row.service} {held.node}: {held.reason}",) * 2
    return out


class LiveView:
    """Shows successive frames in the way chosen for this output (see the module's docstring).

    A context manager: on a terminal the redrawn area is started on entry and
    left on the screen, as last drawn, on exit (Ctrl-C included).
    """

    def __init__(self, title: str, *, as_json: bool, console: Console | None = None) -> None:
        self.title = title
        self.as_json = as_json
        self.console = console or output.console
        self.estimator = Estimator()
        self._live: Live | None = None
        self._lines: dict[str, str] = {}
        self._doc = ""

    def __enter__(self) -> LiveView:
        if not self.as_json and self.console.is_terminal:
            self._live = Live(console=self.console, auto_refresh=False, transient=False)
            self._live.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def show(self, frame: Frame, doc: Mapping[str, Any] | None = None) -> None:
        """Show ``frame``; with ``--json``, print ``doc`` (default: the frame's rows) if it changed."""
        lefts = {row.key: self.estimator.left(row, frame.at) for row in frame.rows}
        if self.as_json:
            self._json(frame, lefts, doc)
        elif self._live is not None:
            self._live.update(render(frame, self.title, lefts), refresh=True)
        else:
            lines = plain_lines(frame, lefts)
            if "killswitch" in self._lines and "killswitch" not in lines:
                output.say(f"{_clock(frame.at)} killswitch off")
            for key, (compared, printed) in lines.items():
                if self._lines.get(key) != compared:
                    output.say(f"{_clock(frame.at)} {printed}")
            self._lines = {key: compared for key, (compared, _) in lines.items()}

    def _json(self, frame: Frame, lefts: Mapping[str, float | None], doc: Mapping[str, Any] | None) -> None:
        if doc is None:
            rows = [row_dict(row, frame.at, lefts[row.key]) for row in frame.rows]
            compared = json.dumps([{k: v for k, v in r.items() if k not in ("elapsed_seconds", "left_seconds")}
                                   for r in rows], sort_keys=True, default=str)
            doc = {"killswitch": frame.killswitch, "deploys": rows}
        else:
            compared = json.dumps(doc, sort_keys=True, default=str)
        compared += str(frame.killswitch)
        if compared != self._doc:
            self._doc = compared
            output.emit_json({"at": frame.at, **doc}, one_line=True)


def follow_deploys(store: Store, names: Sequence[str], *, title: str, timeout: float, interval: float,
                   as_json: bool, ended: Callable[[DeployEntry], bool]) -> tuple[list[DeployEntry], bool]:
    """Show the deploys ``names`` live until every one has ``ended`` or ``timeout`` seconds passed:
    (their entries as last read, whether they all ended).  KeyboardInterrupt propagates (the view
    is left as it was); a deploy that disappears is a RolloutError."""
    deadline = time.monotonic() + timeout
    with LiveView(title, as_json=as_json) as view:
        while True:
            entries = []
            for name in names:
                entry = store.deploy(name)
                if entry is None:
                    raise RolloutError(f"deploy {name} is gone from the queue (pruned or deleted)")
                entries.append(entry)
            view.show(deploys_frame(fleet_status(store), entries, time.time()))
            if all(ended(e) for e in entries):
                return entries, True
            if time.monotonic() > deadline:
                return entries, False
            time.sleep(interval)


class Meter:
    """One count going up to a total (``stage --seed-until``: hosts that hold the payload): a
    progress bar on a terminal, drawn while the ``with`` block runs and left on the screen; a plain
    line per change otherwise; nothing when ``quiet``."""

    def __init__(self, description: str, total: int, *, quiet: bool = False, console: Console | None = None) -> None:
        self.description = description
        self.total = total
        self.quiet = quiet
        self.console = console or output.console
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._last = ""

    def __enter__(self) -> Meter:
        if not self.quiet and self.console.is_terminal:
            self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TextColumn("{task.fields[note]}"), TimeElapsedColumn(), console=self.console,
                                      auto_refresh=False)
            self._task = self._progress.add_task(self.description, total=self.total, note="")
            self._progress.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def update(self, done: int, note: str) -> None:
        """``done`` of the total now, and a note (the swarm's rate...)."""
        if self.quiet:
            return
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, completed=min(done, self.total), note=note, refresh=True)
            return
        line = f"{done}/{self.total} {self.description}; {note}"
        if line != self._last:
            output.say(line)
            self._last = line
