"""The journal's data model: actions, tasks, change sets, planned actions.

Everything here is plain, immutable data.  An action is a ``kind`` (the name
of a handler in a :class:`~zkdeploy.journal.actions.Registry`) plus JSON
parameters and a human description; the journal stores actions as data, so an
undo recorded yesterday is replayed exactly as recorded, whatever today's code
would compute.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

# Change-set statuses.
OPEN = "open"
DONE = "done"
FAILED = "failed"
UNDOING = "undoing"
UNDONE = "undone"
PARTIALLY_UNDONE = "partially-undone"
CHANGE_STATUSES = (OPEN, DONE, FAILED, UNDOING, UNDONE, PARTIALLY_UNDONE)

# Task statuses (``status``) and the state of a task's undo (``undo_state``).
PENDING = "pending"
TASK_STATUSES = (PENDING, DONE, FAILED, UNDONE)
UNDO_STATES = (None, PENDING, FAILED)

#: The undo kind meaning "this change cannot be undone automatically".
NO_UNDO = "no_undo"
#: The undo kind meaning "there is nothing to undo" (a read-only step).
NOOP = "noop"

CANNOT_UNDO_TEXT = "cannot be undone automatically"


def utcnow() -> str:
    """Return the current UTC time as ISO-8601 with microseconds and ``+00:00``."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


def to_utc(moment: datetime) -> datetime:
    """Return ``moment`` as an aware UTC datetime; a naive datetime is taken as UTC."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def dumps(value: Any) -> str:
    """Serialise JSON canonically (sorted keys, no spaces) for storage."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class Action:
    """One side of a task: what to run (``kind`` + ``params``) and what it means."""

    kind: str
    params: dict[str, Any]
    description: str

    @property
    def is_no_undo(self) -> bool:
        """True when this action is the explicit "cannot be undone" marker."""
        return self.kind == NO_UNDO

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "params": self.params, "description": self.description}


@dataclass(frozen=True)
class PlannedAction:
    """One change the executor would make (NoAction) or attempted (live).

    ``position`` is the 1-based index of the task in its change set,
    ``change`` that change set's description; ``params`` are exactly the
    execute parameters a live run records in the journal; ``undoable`` is
    False when the task would be recorded as "cannot be undone automatically".
    """

    position: int
    change: str
    kind: str
    description: str
    params: dict[str, Any]
    undoable: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {
            "position": self.position,
            "change": self.change,
            "kind": self.kind,
            "description": self.description,
            "params": self.params,
            "undoable": self.undoable,
        }


@dataclass(frozen=True)
class Task:
    """A recorded task: its execute and undo actions and how far it got."""

    change_id: int
    position: int
    execute: Action
    undo: Action
    reverse: bool
    status: str
    undo_state: str | None
    started: str
    finished: str | None = None
    undone: str | None = None
    result: Any = None
    error: str | None = None
    undo_error: str | None = None

    @property
    def undoable(self) -> bool:
        """False when the undo is the explicit ``no_undo`` marker."""
        return not self.undo.is_no_undo

    def to_dict(self) -> dict[str, Any]:
        return {
            "change_id": self.change_id,
            "position": self.position,
            "execute": self.execute.to_dict(),
            "undo": self.undo.to_dict(),
            "reverse": self.reverse,
            "status": self.status,
            "undo_state": self.undo_state,
            "undoable": self.undoable,
            "started": self.started,
            "finished": self.finished,
            "undone": self.undone,
            "result": self.result,
            "error": self.error,
            "undo_error": self.undo_error,
        }


@dataclass(frozen=True)
class ChangeSet:
    """A recorded change set with its tasks in execution order."""

    id: int
    deploy_id: str | None
    created: str
    description: str
    status: str
    finished: str | None = None
    note: str | None = None
    tasks: tuple[Task, ...] = field(default_factory=tuple)

    @property
    def undoable(self) -> bool:
        """False when any task that took effect carries the ``no_undo`` marker."""
        return all(t.undoable for t in self.tasks if t.status in (DONE, FAILED, PENDING))

    @property
    def created_at(self) -> datetime:
        return datetime.fromisoformat(self.created)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "deploy_id": self.deploy_id,
            "created": self.created,
            "finished": self.finished,
            "description": self.description,
            "status": self.status,
            "note": self.note,
            "undoable": self.undoable,
            "tasks": [t.to_dict() for t in self.tasks],
        }
