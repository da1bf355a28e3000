"""Human-readable views of the journal: tables, change details, back-out steps.

Every view says "cannot be undone automatically" wherever a task carries the
``no_undo`` marker, so an operator never learns it only when an undo is refused.
"""

from __future__ import annotations

from collections.abc import Sequence

from zkdeploy.journal.model import (
    CANNOT_UNDO_TEXT,
    FAILED,
    PENDING,
    UNDONE,
    ChangeSet,
    PlannedAction,
    Task,
)
from zkdeploy.journal.registry import Registry, default_registry
from zkdeploy.journal.store import Journal
from zkdeploy.journal.undo import UndoReport, undo_order


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Plain left-aligned columns; the last column is not padded."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = []
    for row in [list(headers), *[list(r) for r in rows]]:
        cells = [c.ljust(w) for c, w in zip(row[:-1], widths[:-1], strict=True)] + [row[-1]]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _undo_text(change: ChangeSet) -> str:
    if change.undoable:
        return "yes"
    return "NO (" + CANNOT_UNDO_TEXT + ")"


def render_changes(changes: Sequence[ChangeSet]) -> str:
    """A table of change sets (id, created, status, deploy, tasks, undoable, description)."""
    if not changes:
        return "no change sets"
    rows = [
        [str(c.id), c.created[:19] + "Z", c.status, c.deploy_id or "-", str(len(c.tasks)), _undo_text(c),
         c.description]
        for c in changes
    ]
    return table(["ID", "CREATED", "STATUS", "DEPLOY", "TASKS", "UNDOABLE", "DESCRIPTION"], rows)


def _task_lines(task: Task) -> list[str]:
    state = task.status + (f", undo {task.undo_state}" if task.undo_state else "")
    lines = [f"  {task.position}. [{state}] {task.execute.description}"]
    flag = " (reverse: undone after the others, in execution order)" if task.reverse else ""
    lines.append(f"       undo: {task.undo.description}{flag}")
    if task.error:
        lines.append(f"       error: {task.error}")
    if task.undo_error:
        lines.append(f"       undo error: {task.undo_error}")
    return lines


def render_change(change: ChangeSet) -> str:
    """The full record of one change set, task by task, undos included."""
    lines = [
        f"change set {change.id}: {change.description}",
        f"  deploy:   {change.deploy_id or '-'}",
        f"  created:  {change.created}",
        f"  finished: {change.finished or '-'}",
        f"  status:   {change.status}",
        f"  undoable: {_undo_text(change)}",
    ]
    if change.note:
        lines.append(f"  note:     {change.note}")
    lines.append("  tasks:" if change.tasks else "  tasks: none")
    for task in change.tasks:
        lines.extend("  " + line for line in _task_lines(task))
    return "\n".join(lines)


def render_undo_reports(reports: Sequence[UndoReport]) -> str:
    """What an undo did (or, dry run, would do), change set by change set."""
    if not reports:
        return "nothing to undo"
    lines = []
    for report in reports:
        verb = "would undo" if report.dry_run else "undid"
        lines.append(f"{verb} change set {report.change_id}: {report.description}"
                     + ("" if report.dry_run else f" -> {report.status}"))
        for step in report.steps:
            what = {
                "undo": step.undo_description,
                "skip-no-undo": f"SKIPPED: {step.description}: {CANNOT_UNDO_TEXT}",
                "skip-not-applied": f"skipped: {step.description} failed and its undo is not safe to run blind",
                "skip-undone": f"already undone: {step.description}",
            }[step.outcome]
            lines.append(f"  task {step.position}: {what}")
    return "\n".join(lines)


def render_plan(plan: Sequence[PlannedAction]) -> str:
    """A NoAction plan: the changes a live run would make, in order."""
    if not plan:
        return "no changes"
    lines = []
    for action in plan:
        flag = "" if action.undoable else f"  [{CANNOT_UNDO_TEXT}]"
        lines.append(f"{action.change} #{action.position}: {action.kind}: {action.description}{flag}")
    return "\n".join(lines)


def backout_steps(journal: Journal, change_id: int, registry: Registry | None = None) -> list[str]:
    """The manual steps an operator would type to back change set ``change_id`` out.

    Lines starting with ``#`` are comments; the others are shell commands, in
    the order the automatic undo would run them, or ``NO AUTOMATIC UNDO: ...``
    lines for tasks that must be backed out by hand.  Reads only.
    """
    registry = registry or default_registry()
    change = journal.get_change(change_id)
    lines = [
        f"# back-out steps for change set {change.id}: {change.description}",
        f"# deploy {change.deploy_id or '-'}, created {change.created}, status {change.status}",
        "# run as root, in this order",
    ]
    for task in undo_order(change.tasks):
        header = f"# task {task.position}: {task.execute.description}"
        if task.status == UNDONE:
            lines.append(header + " (already undone: nothing to do)")
            continue
        if task.status == PENDING:
            header += " (was in flight when the journal was last written: check it first)"
        elif task.status == FAILED:
            header += " (its execute failed: check whether it changed anything first)"
        lines.append(header)
        if not task.undoable:
            lines.append(f"NO AUTOMATIC UNDO: {task.execute.description} {CANNOT_UNDO_TEXT}; back it out by hand")
            continue
        steps = registry.get(task.undo.kind).manual_steps(task.undo.params) if task.undo.kind in registry \
            else [f"# by hand: {task.undo.description}"]
        lines.extend(steps or ["# nothing to undo"])
    return lines
