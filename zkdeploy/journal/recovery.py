"""Recovery after a crash: finish or undo whatever a killed process left in flight.

Call :func:`recover` when the agent starts, before it makes any new change.
It relies on every handler's execute and undo being idempotent: replaying a
file write, a symlink swap or their undos is always safe; replaying a command
is as safe as the command (commands given to the journal should be
idempotent, as deploy steps should be anyway).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from zkdeploy.crash import SimulatedCrash
from zkdeploy.errors import JournalError
from zkdeploy.journal.model import DONE, FAILED, NO_UNDO, PENDING, UNDOING, ChangeSet, Task
from zkdeploy.journal.registry import Registry, default_registry
from zkdeploy.journal.store import Journal
from zkdeploy.journal.undo import run_undo

POLICIES = ("undo", "complete")


@dataclass(frozen=True)
class RecoveryAction:
    """What recovery did about one interrupted change set or task."""

    change_id: int
    position: int | None
    action: str
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {"change_id": self.change_id, "position": self.position, "action": self.action,
                "detail": self.detail}


def _finish_task(journal: Journal, registry: Registry, change: ChangeSet, task: Task, policy: str) -> RecoveryAction:
    """Complete or undo one in-flight task; raises (after journaling) when that fails."""
    cid, pos = change.id, task.position
    if task.undo_state == PENDING or policy == "undo":
        if task.undo.kind == NO_UNDO:
            journal.finish_task(cid, pos, FAILED, error="interrupted by a crash; cannot be undone automatically")
            return RecoveryAction(cid, pos, "needs-attention",
                                  f"{task.execute.description}: interrupted and cannot be undone automatically")
        journal.set_undo_state(cid, pos, PENDING)
        try:
            registry.get(task.undo.kind).execute(task.undo.params, noaction=False)
        except SimulatedCrash:
            raise  # a killed process records nothing
        except BaseException as exc:
            journal.set_undo_state(cid, pos, FAILED, f"{type(exc).__name__}: {exc}")
            journal.finish_task(cid, pos, FAILED, error="interrupted by a crash; undo in recovery failed")
            raise
        journal.set_undo_state(cid, pos, None)
        return RecoveryAction(cid, pos, "undone", task.undo.description)
    try:
        result = registry.get(task.execute.kind).execute(task.execute.params, noaction=False)
    except SimulatedCrash:
        raise  # a killed process records nothing
    except BaseException as exc:
        journal.finish_task(cid, pos, FAILED, error=f"completing after a crash: {type(exc).__name__}: {exc}")
        raise
    journal.finish_task(cid, pos, DONE, result=result)
    return RecoveryAction(cid, pos, "completed", task.execute.description)


def recover(journal: Journal, registry: Registry | None = None, policy: str = "undo") -> list[RecoveryAction]:
    """Bring every change set a crash interrupted to a settled state.

    * an ``undoing`` change set (crash mid-undo) has its undo finished,
      whatever the policy: the operator asked for it;
    * in an ``open`` change set (crash mid-change), the in-flight task is
      undone (policy ``undo``) or re-executed (``complete``), and the change
      set is marked ``failed`` with a note, since the tasks its process would
      have added next never ran.  Undo the whole change set afterwards with
      :func:`~zkdeploy.journal.undo.undo_change` if wanted.

    Holds the writer lock (JournalError if a live process holds it).  Every
    change set is attempted; if any step failed, JournalError lists them all
    after the journal has recorded each failure.
    """
    if policy not in POLICIES:
        raise JournalError(f"recovery policy must be one of {', '.join(POLICIES)}, not {policy!r}")
    registry = registry or default_registry()
    done: list[RecoveryAction] = []
    errors: list[str] = []
    with journal.writer_lock():
        for change in journal.interrupted_changes():
            if change.status == UNDOING:
                try:
                    report = run_undo(journal, change, registry)
                    done.append(RecoveryAction(change.id, None, "undo-resumed", f"change set now {report.status}"))
                except JournalError as exc:
                    errors.append(str(exc))
                continue
            notes = []
            for task in change.tasks:
                if task.status != PENDING and task.undo_state != PENDING:
                    continue
                try:
                    action = _finish_task(journal, registry, change, task, policy)
                except Exception as exc:  # recorded in the journal by _finish_task; reported below
                    errors.append(f"change set {change.id} task {task.position}: {type(exc).__name__}: {exc}")
                    notes.append(f"task {task.position} recovery failed")
                    continue
                done.append(action)
                notes.append(f"task {task.position} {action.action}")
            note = "interrupted by a crash; recovered" + (": " + ", ".join(notes) if notes else "")
            journal.set_change_status(change.id, FAILED, note=note)
            done.append(RecoveryAction(change.id, None, "closed", note))
    if errors:
        raise JournalError("recovery could not settle everything:\n" + "\n".join(f"  - {e}" for e in errors))
    return done
