"""The on-host change journal: every change with its undo, crash-safe, in SQLite.

Typical use::

    journal = Journal.open(path)
    ex = Executor(journal, registry=default_registry(), noaction=False)
    with ex.change_set(description="web 1 -> 2", deploy_id="d-0000000003") as cs:
        cs.write_file("/etc/x.conf", b"...", mode=0o644)
        cs.swap_symlink("/data/current/web", "/data/releases/web/2")
        cs.run(["systemctl", "reload", "x"], undo=["systemctl", "reload", "x"], timeout=30)

See docs/journal.md for the model, the schema, recovery and NoAction.
"""

from zkdeploy.crash import CRASH_ENV
from zkdeploy.journal.actions import ActionHandler
from zkdeploy.journal.executor import NOTHING_TO_UNDO, ChangeSetBuilder, Executor, TaskOutcome
from zkdeploy.journal.model import (
    CANNOT_UNDO_TEXT,
    NO_UNDO,
    NOOP,
    Action,
    ChangeSet,
    PlannedAction,
    Task,
)
from zkdeploy.journal.recovery import RecoveryAction, recover
from zkdeploy.journal.registry import Registry, default_registry
from zkdeploy.journal.report import backout_steps, render_change, render_changes, render_plan
from zkdeploy.journal.store import SCHEMA_VERSION, Journal
from zkdeploy.journal.undo import UndoReport, UndoStep, undo_change, undo_last, undo_order, undo_since

__all__ = [
    "CANNOT_UNDO_TEXT",
    "CRASH_ENV",
    "NOOP",
    "NOTHING_TO_UNDO",
    "NO_UNDO",
    "SCHEMA_VERSION",
    "Action",
    "ActionHandler",
    "ChangeSet",
    "ChangeSetBuilder",
    "Executor",
    "Journal",
    "PlannedAction",
    "RecoveryAction",
    "Registry",
    "Task",
    "TaskOutcome",
    "UndoReport",
    "UndoStep",
    "backout_steps",
    "default_registry",
    "recover",
    "render_change",
    "render_changes",
    "render_plan",
    "undo_change",
    "undo_last",
    "undo_order",
    "undo_since",
]
