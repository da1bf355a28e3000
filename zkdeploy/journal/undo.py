"""Undo of recorded change sets, and recovery of work a crash interrupted.

Undo replays the undo actions recorded with each task -- never recomputed by
today's code.  An undo is itself journaled: the change set goes to
``undoing``, each task's undo is marked ``pending`` before it runs and the
task ``undone`` after, so a crash mid-undo is resumed by :func:`recover`.

Order (:func:`undo_order`): tasks are undone last task first, which unwinds
dependent changes (stop, swap, start is undone as stop, swap back, start).
A task recorded with ``reverse=True`` is taken out of that unwinding: its undo
runs *after* every unflagged undo, and flagged undos run among themselves in
execution order (first task first).  Use it for a step whose undo must see
the fully restored state, e.g. a ``pkill -HUP`` after a config write: the
config is restored first, then the HUP is sent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from zkdeploy.crash import SimulatedCrash, crash_point
from zkdeploy.errors import JournalError
from zkdeploy.journal.model import (
    CANNOT_UNDO_TEXT,
    DONE,
    FAILED,
    NO_UNDO,
    OPEN,
    PARTIALLY_UNDONE,
    PENDING,
    UNDOING,
    UNDONE,
    ChangeSet,
    Task,
    to_utc,
)
from zkdeploy.journal.registry import Registry, default_registry
from zkdeploy.journal.store import Journal

# What happens to a task in an undo.
UNDO = "undo"                      # its undo action runs
SKIP_NO_UNDO = "skip-no-undo"      # cannot be undone automatically (only with force)
SKIP_NOT_APPLIED = "skip-not-applied"  # its execute failed and its undo is unsafe to run blind
SKIP_UNDONE = "skip-undone"        # already undone

UNDOABLE_STATUSES = (DONE, FAILED, PARTIALLY_UNDONE, UNDOING)


@dataclass(frozen=True)
class UndoStep:
    """One task in an undo: which, what its undo does, and what happens to it."""

    position: int
    description: str
    undo_description: str
    outcome: str

    def to_dict(self) -> dict[str, Any]:
        return {"position": self.position, "description": self.description,
                "undo_description": self.undo_description, "outcome": self.outcome}


@dataclass
class UndoReport:
    """The result of undoing (or, with ``dry_run``, planning to undo) one change set."""

    change_id: int
    description: str
    dry_run: bool
    steps: list[UndoStep] = field(default_factory=list)
    status: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"change_id": self.change_id, "description": self.description, "dry_run": self.dry_run,
                "status": self.status, "steps": [s.to_dict() for s in self.steps]}


def undo_order(tasks: tuple[Task, ...] | list[Task]) -> list[Task]:
    """Tasks in the order their undos run: unflagged last-first, then ``reverse`` ones first-first."""
    ordered = sorted(tasks, key=lambda t: t.position)
    return [t for t in reversed(ordered) if not t.reverse] + [t for t in ordered if t.reverse]


def _outcome(task: Task, registry: Registry) -> str:
    if task.status == UNDONE:
        return SKIP_UNDONE
    if task.undo.kind == NO_UNDO:
        return SKIP_NO_UNDO
    if task.status == FAILED and task.undo_state is None and not registry.get(task.undo.kind).undo_after_failure:
        return SKIP_NOT_APPLIED
    return UNDO


def plan_undo(change: ChangeSet, registry: Registry) -> list[UndoStep]:
    """The undo steps of ``change`` in the order they would run (no side effects)."""
    return [
        UndoStep(t.position, t.execute.description, t.undo.description, _outcome(t, registry))
        for t in undo_order(change.tasks)
    ]


def _check(journal: Journal, change: ChangeSet, registry: Registry, force: bool, batch: set[int]) -> None:
    """Refuse (JournalError, nothing changed) an undo that cannot or should not run."""
    if change.status == OPEN:
        raise JournalError(
            f"change set {change.id} is still open (running, or interrupted by a crash: run recovery first)"
        )
    if change.status == UNDONE:
        raise JournalError(f"change set {change.id} is already undone")
    for task in change.tasks:
        registry.get(task.undo.kind)
    blocked = [t for t in change.tasks if t.undo.kind == NO_UNDO and t.status != UNDONE]
    if blocked and not force:
        names = "; ".join(f"task {t.position} ({t.execute.description})" for t in blocked)
        raise JournalError(
            f"change set {change.id} {CANNOT_UNDO_TEXT}: {names} {CANNOT_UNDO_TEXT}; "
            f"use force to undo the rest and skip it"
        )
    later = [(cid, path) for cid, path in journal.later_writers(change.id) if cid not in batch]
    if later and not force:
        what = ", ".join(f"{path} (change set {cid})" for cid, path in later)
        raise JournalError(
            f"change set {change.id} touched paths that later change sets changed again: {what}; "
            f"undo those first, or use force"
        )


def run_undo(journal: Journal, change: ChangeSet, registry: Registry) -> UndoReport:
    """Run the undo of an already-checked change set, journaling each step.

    Callers hold the writer lock.  Tasks that cannot be undone automatically
    are skipped (the caller checked ``force``); a failing undo stops the run,
    is recorded, and raises JournalError.
    """
    steps = plan_undo(change, registry)
    report = UndoReport(change.id, change.description, False, steps)
    before = change.status if change.status != UNDOING else FAILED
    journal.set_change_status(change.id, UNDOING)
    tasks = {t.position: t for t in change.tasks}
    undone_any = any(s.outcome == SKIP_UNDONE for s in steps)
    for step in steps:
        if step.outcome != UNDO:
            continue
        task = tasks[step.position]
        journal.set_undo_state(change.id, task.position, PENDING)
        crash_point("undo", str(task.position), "before")
        try:
            registry.get(task.undo.kind).execute(task.undo.params, noaction=False)
        except SimulatedCrash:
            raise  # a killed process records nothing
        except BaseException as exc:
            error = f"{type(exc).__name__}: {exc}"
            journal.set_undo_state(change.id, task.position, FAILED, error)
            status = PARTIALLY_UNDONE if undone_any else before
            journal.set_change_status(change.id, status, note=f"undo failed at task {task.position}: {error}")
            raise JournalError(
                f"undo of change set {change.id} stopped at task {task.position} "
                f"({task.undo.description}): {error}"
            ) from exc
        crash_point("undo", str(task.position), "after")
        journal.set_undo_state(change.id, task.position, None)
        undone_any = True
    complete = all(s.outcome in (UNDO, SKIP_UNDONE, SKIP_NOT_APPLIED) for s in steps)
    report.status = UNDONE if complete else PARTIALLY_UNDONE
    journal.set_change_status(change.id, report.status)
    return report


def _undo_many(
    journal: Journal, registry: Registry | None, changes: list[ChangeSet], dry_run: bool, force: bool
) -> list[UndoReport]:
    """Validate every change set first, then undo them in the given order (newest first)."""
    registry = registry or default_registry()
    batch = {c.id for c in changes}
    for change in changes:
        _check(journal, change, registry, force, batch)
    if dry_run:
        return [UndoReport(c.id, c.description, True, plan_undo(c, registry), c.status) for c in changes]
    reports = []
    with journal.writer_lock():
        for change in changes:
            reports.append(run_undo(journal, journal.get_change(change.id), registry))
    return reports


def undo_change(
    journal: Journal, registry: Registry | None, change_id: int, dry_run: bool = False, force: bool = False
) -> UndoReport:
    """Undo one change set.

    Refuses with JournalError, changing nothing, when the id is unknown, the
    change set is open or already undone, holds a task that cannot be undone
    automatically (unless ``force``: such tasks are skipped and the change set
    ends ``partially-undone``), or touched paths a later change set still in
    effect changed again (unless ``force``).  ``dry_run`` returns the plan only.
    """
    return _undo_many(journal, registry, [journal.get_change(change_id)], dry_run, force)[0]


def _refuse_in_flight(journal: Journal) -> None:
    stuck = journal.interrupted_changes()
    if stuck:
        ids = ", ".join(str(c.id) for c in stuck)
        raise JournalError(f"change sets {ids} are open or mid-undo (running, or a crash interrupted them); "
                           f"run recovery first")


def undo_last(
    journal: Journal, registry: Registry | None, n: int, dry_run: bool = False, force: bool = False
) -> list[UndoReport]:
    """Undo the ``n`` most recent change sets still in effect, newest first (all or nothing checked up front)."""
    if n < 1:
        raise JournalError(f"the number of change sets to undo must be at least 1, not {n}")
    _refuse_in_flight(journal)
    candidates = [c for c in journal.list_changes() if c.status in UNDOABLE_STATUSES]
    if len(candidates) < n:
        raise JournalError(f"journal {journal.path} has {len(candidates)} change sets that can be undone, not {n}")
    return _undo_many(journal, registry, candidates[:n], dry_run, force)


def check_not_future(since: datetime) -> datetime:
    """Return ``since`` as UTC; JournalError if it lies in the future."""
    moment = to_utc(since)
    if moment > datetime.now(UTC):
        raise JournalError(f"date {moment.isoformat()} is in the future")
    return moment


def undo_since(
    journal: Journal, registry: Registry | None, since: datetime, dry_run: bool = False, force: bool = False
) -> list[UndoReport]:
    """Undo every change set created at or after ``since`` still in effect, newest first."""
    moment = check_not_future(since)
    _refuse_in_flight(journal)
    candidates = [c for c in journal.list_changes(since=moment) if c.status in UNDOABLE_STATUSES]
    return _undo_many(journal, registry, candidates, dry_run, force)
