"""The Executor: runs change sets task by task, journaling each before it acts.

For every task, in live mode:

1. the undo is captured as data (backups written and fsynced);
2. the task row -- status ``pending``, execute and undo actions -- is
   committed durably;
3. the change is made;
4. the task is marked ``done`` (or ``failed`` with the error).

So after a SIGKILL at any instant the journal says what was done and which
task was in flight.  In NoAction mode the very same calls run with
``noaction=True``: handlers make no change, nothing is written (no journal
file, no row, no backup) and ``Executor.plan`` collects the actions a live run
would perform, with the same parameters.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zkdeploy.crash import SimulatedCrash, crash_point
from zkdeploy.errors import JournalError
from zkdeploy.journal.actions import ActionHandler
from zkdeploy.journal.backups import BackupStore
from zkdeploy.journal.fileactions import plan_file_write
from zkdeploy.journal.model import (
    CANNOT_UNDO_TEXT,
    DONE,
    FAILED,
    NO_UNDO,
    NOOP,
    Action,
    PlannedAction,
    dumps,
)
from zkdeploy.journal.registry import Registry, default_registry
from zkdeploy.journal.store import Journal

#: An undo given to ``task``: an Action, or ``(kind, params)`` / ``(kind, params, description)``.
UndoSpec = Action | tuple[str, dict[str, Any]] | tuple[str, dict[str, Any], str]

#: Pass as ``undo=`` for a step that changes nothing (a check, a reload that undoes itself).
NOTHING_TO_UNDO = Action(NOOP, {}, "nothing to undo")


@dataclass(frozen=True)
class TaskOutcome:
    """What one task call did: its position, action and result (None in NoAction)."""

    position: int
    kind: str
    description: str
    result: Any


def _has_capture(handler: ActionHandler) -> bool:
    return type(handler).capture_undo is not ActionHandler.capture_undo


class ChangeSetBuilder:
    """The handle a ``with executor.change_set(...)`` block adds tasks through.

    Every method executes its task at once (live) or only plans it (NoAction)
    and returns a :class:`TaskOutcome`; a failing task raises and stays
    recorded as ``failed``.
    """

    def __init__(self, executor: Executor, change_id: int | None, description: str) -> None:
        self.executor = executor
        self.id = change_id
        self.description = description
        self.count = 0

    # -- the generic entry point ------------------------------------------
    def task(
        self,
        kind: str,
        params: dict[str, Any],
        *,
        undo: UndoSpec | None = None,
        no_undo: bool = False,
        description: str | None = None,
        undo_description: str | None = None,
        reverse: bool = False,
    ) -> TaskOutcome:
        """Run one task of ``kind``.

        Its undo is ``undo`` when given, else captured by the handler (file
        kinds); ``no_undo=True`` records that it cannot be undone
        automatically.  A kind that captures no undo needs one of the two.
        ``reverse=True`` moves this task's undo out of the default last-first
        unwinding: see :func:`zkdeploy.journal.undo.undo_order`.
        """
        ex = self.executor
        handler = ex.registry.get(kind)
        if undo is not None and no_undo:
            raise JournalError(f"{kind}: give either undo= or no_undo=True, not both")
        if undo is None and not no_undo and not _has_capture(handler):
            raise JournalError(
                f"{kind} ({handler.describe(params)}) needs undo=... or no_undo=True "
                f"(use NOTHING_TO_UNDO for a step that changes nothing)"
            )
        undo_action = self._undo_action(undo, undo_description) if undo is not None else None
        try:
            dumps(params)
        except (TypeError, ValueError) as exc:
            raise JournalError(f"{kind}: params are not JSON: {exc}") from exc
        desc = description or handler.describe(params)
        self.count += 1
        position = self.count
        if no_undo:
            undoable = False
        elif undo_action is not None:
            undoable = undo_action.kind != NO_UNDO
        else:
            undoable = bool(params.get("backup", True))
        ex.plan.append(PlannedAction(position, self.description, kind, desc, params, undoable))
        if ex.noaction:
            result = handler.execute(params, noaction=True)
            return TaskOutcome(position, kind, desc, result)
        return self._run_live(handler, kind, params, desc, position, undo_action, no_undo, reverse)

    def _undo_action(self, undo: UndoSpec, undo_description: str | None) -> Action:
        if isinstance(undo, Action):
            action = undo
        else:
            kind, params = undo[0], undo[1]
            text = undo[2] if len(undo) > 2 else None
            action = Action(kind, dict(params), text or self.executor.registry.describe(kind, params))
        if undo_description:
            action = Action(action.kind, action.params, undo_description)
        self.executor.registry.get(action.kind)  # an unknown undo kind is refused up front
        return action

    def _run_live(
        self, handler: ActionHandler, kind: str, params: dict[str, Any], desc: str, position: int,
        undo: Action | None, no_undo: bool, reverse: bool,
    ) -> TaskOutcome:
        ex = self.executor
        journal = ex.journal
        assert journal is not None and self.id is not None
        if no_undo:
            undo = Action(NO_UNDO, {"reason": "marked no_undo", "of": desc}, CANNOT_UNDO_TEXT)
        elif undo is None:
            undo = handler.capture_undo(params, journal.backups)
            assert undo is not None
        journal.add_task(self.id, position, Action(kind, params, desc), undo, reverse, handler.targets(params))
        crash_point(str(position), "before")
        try:
            result = handler.execute(params, noaction=False)
        except SimulatedCrash:
            raise  # a killed process records nothing
        except BaseException as exc:
            journal.finish_task(self.id, position, FAILED, error=f"{type(exc).__name__}: {exc}")
            raise
        crash_point(str(position), "after")
        journal.finish_task(self.id, position, DONE, result=result)
        return TaskOutcome(position, kind, desc, result)

    # -- conveniences ------------------------------------------------------
    def write_file(
        self, path: str | os.PathLike[str], content: bytes | str, *, mode: int | None = None,
        owner: tuple[int, int] | None = None, description: str | None = None, reverse: bool = False,
    ) -> TaskOutcome:
        """Atomically write ``content`` to ``path``; the undo restores what was there."""
        data = content.encode() if isinstance(content, str) else bytes(content)
        ex = self.executor
        params = plan_file_write(os.fspath(path), data, mode, owner, ex.backups)
        if not ex.noaction:
            ex.backups.put_bytes(data)  # the new content is journaled too, so recovery can replay it
        return self.task("file_write", params, description=description, reverse=reverse)

    def swap_symlink(
        self, link: str | os.PathLike[str], target: str | os.PathLike[str], *,
        description: str | None = None, reverse: bool = False,
    ) -> TaskOutcome:
        """Atomically point ``link`` at ``target``; the undo points it back (or removes it)."""
        params = {"link": os.path.abspath(link), "target": os.fspath(target)}
        return self.task("symlink_swap", params, description=description, reverse=reverse)

    def remove_tree(
        self, path: str | os.PathLike[str], *, backup: bool = True,
        description: str | None = None, reverse: bool = False,
    ) -> TaskOutcome:
        """Remove directory ``path``; with ``backup`` a tar is kept so the undo restores it."""
        params = {"path": os.path.abspath(path), "backup": bool(backup)}
        return self.task("remove_tree", params, description=description, reverse=reverse)

    def run(
        self, command: Sequence[str] | str, *, undo: Sequence[str] | str | Action | None = None,
        no_undo: bool = False, timeout: float = 60, undo_timeout: float | None = None,
        cwd: str | None = None, env: dict[str, str] | None = None,
        description: str | None = None, undo_description: str | None = None, reverse: bool = False,
    ) -> TaskOutcome:
        """Run a command (argv list; a string runs through the shell) with a timeout.

        ``undo`` is the command that reverses it (same form), an Action, or
        NOTHING_TO_UNDO; or pass ``no_undo=True``.
        """
        params = _command_params(command, timeout, cwd, env)
        undo_spec: UndoSpec | None
        if undo is None or isinstance(undo, Action):
            undo_spec = undo
        else:
            undo_spec = ("command", _command_params(undo, undo_timeout or timeout, cwd, env))
        return self.task("command", params, undo=undo_spec, no_undo=no_undo, description=description,
                         undo_description=undo_description, reverse=reverse)

    def call(
        self, func: str, args: list[Any] | dict[str, Any] | None = None, *,
        undo: tuple[str, list[Any] | dict[str, Any]] | Action | None = None, no_undo: bool = False,
        description: str | None = None, undo_description: str | None = None, reverse: bool = False,
    ) -> TaskOutcome:
        """Call ``"module:function"`` with JSON ``args``; ``undo`` is ``("module:function", args)``."""
        params = {"func": func, "args": [] if args is None else args}
        undo_spec: UndoSpec | None = (
            undo if undo is None or isinstance(undo, Action) else ("python", {"func": undo[0], "args": undo[1]}))
        return self.task("python", params, undo=undo_spec, no_undo=no_undo, description=description,
                         undo_description=undo_description, reverse=reverse)


def _command_params(
    command: Sequence[str] | str, timeout: float, cwd: str | None, env: dict[str, str] | None
) -> dict[str, Any]:
    params: dict[str, Any] = {"timeout": timeout}
    if isinstance(command, str):
        params["shell"] = command
    else:
        if not command:
            raise JournalError("a command needs a non-empty argv")
        params["argv"] = [os.fspath(a) for a in command]
    if cwd is not None:
        params["cwd"] = cwd
    if env:
        params["env"] = dict(env)
    return params


class Executor:
    """Runs change sets against one journal.

    ``journal`` is an open :class:`Journal`, or (handy for NoAction) a path:
    a live executor opens it, a NoAction executor never creates or reads it.
    ``plan`` lists every action attempted, in order, in both modes.
    """

    def __init__(
        self, journal: Journal | str | os.PathLike[str], registry: Registry | None = None,
        noaction: bool = False,
    ) -> None:
        self.noaction = noaction
        self.registry = registry or default_registry()
        if isinstance(journal, Journal):
            self.journal: Journal | None = journal
            self.backups = journal.backups
        elif noaction:
            self.journal = None
            self.backups = BackupStore(Path(str(Path(journal).absolute()) + ".backups"))
        else:
            self.journal = Journal.open(journal)
            self.backups = self.journal.backups
        self.plan: list[PlannedAction] = []

    @contextlib.contextmanager
    def change_set(self, description: str, deploy_id: str | None = None) -> Iterator[ChangeSetBuilder]:
        """Open a change set; tasks added in the block run (or are planned) at once.

        Guarantees: the change set is recorded ``open`` before its first task;
        a clean exit marks it ``done``; an exception marks it ``failed`` (its
        finished tasks stay recorded) and propagates.  The journal's writer
        lock is held throughout, so no undo or recovery runs concurrently.
        """
        if self.noaction:
            yield ChangeSetBuilder(self, None, description)
            return
        journal = self.journal
        assert journal is not None
        with journal.writer_lock():
            change_id = journal.begin_change(description, deploy_id)
            crash_point("begin")
            try:
                yield ChangeSetBuilder(self, change_id, description)
            except SimulatedCrash:
                raise  # a killed process records nothing
            except BaseException as exc:
                journal.set_change_status(change_id, FAILED, note=f"{type(exc).__name__}: {exc}")
                raise
            crash_point("end")
            journal.set_change_status(change_id, DONE)
