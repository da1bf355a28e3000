"""``zkdeploy journal``: read this host's change journal, undo changes, print back-out steps.

The journal file is ``--journal PATH``, else ``$ZKDEPLOY_JOURNAL``, else
``--data DIR`` -> ``DIR/state/journal.db``.  Every error exits with the code
of its ZkdeployError kind (JournalError: 7) and prints its message to stderr.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import wraps
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import click

from zkdeploy.cli.context import confirm
from zkdeploy.cli.output import emit_json
from zkdeploy.errors import ConfigError, ZkdeployError
from zkdeploy.hostlayout import HostLayout
from zkdeploy.journal import Journal, backout_steps, recover, render_change, render_changes, undo_change
from zkdeploy.journal.report import render_undo_reports
from zkdeploy.journal.undo import check_not_future, undo_last, undo_since

P = ParamSpec("P")
R = TypeVar("R")

_RELATIVE = re.compile(r"^(\d+)\s*([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(text: str) -> datetime:
    """Parse ``--since``: an ISO-8601 date or datetime (no zone = UTC) or an age like ``2h``, ``3d``."""
    match = _RELATIVE.match(text.strip())
    if match:
        return datetime.now(UTC) - timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is not a date: use ISO-8601 (2024-05-01, 2024-05-01T10:00:00+02:00) or an age (30m, 2h, 7d)"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# A date in the future is refused here, as a bad input (exit 2), before anything is opened.
# click 8.4 made ParamType generic; ParamType[datetime] would fail at run time with the click 8.1-8.3 we allow.
class SinceType(click.ParamType):  # type: ignore[type-arg]
    name = "DATE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> datetime:
        if isinstance(value, datetime):
            return value
        try:
            moment = parse_since(str(value))
        except click.BadParameter as exc:
            self.fail(exc.message, param, ctx)
        if moment > datetime.now(UTC):  # the same refusal (exit 2) in every command that takes --since
            self.fail(f"{value!r} is in the future ({moment.isoformat()})", param, ctx)
        return moment


SINCE = SinceType()


def _echo_json(value: Any) -> None:
    emit_json(value)


@dataclass
class JournalOptions:
    """The group's options, kept on the click context for its subcommands."""

    journal: str | None = None
    data: str | None = None


def _journal_path(ctx: click.Context) -> Path:
    opts = ctx.find_object(JournalOptions) or JournalOptions()
    if opts.journal:
        return Path(opts.journal)
    if os.environ.get("ZKDEPLOY_JOURNAL"):
        return Path(os.environ["ZKDEPLOY_JOURNAL"])
    if opts.data:
        return HostLayout(Path(opts.data)).journal
    raise ConfigError("no journal given: use --journal PATH, $ZKDEPLOY_JOURNAL, or --data DIR")


def _open(ctx: click.Context) -> Journal:
    return Journal.open(_journal_path(ctx), create=False)


def reports_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Turn a ZkdeployError into its message on stderr and its exit code."""

    @wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except ZkdeployError as exc:
            click.echo(f"error: {exc}", err=True)
            raise click.exceptions.Exit(exc.exit_code) from exc

    return wrapper


@click.group("journal")
@click.option("--journal", "journal_path", type=click.Path(dir_okay=False), default=None,
              help="Journal file (default: $ZKDEPLOY_JOURNAL, else DIR/state/journal.db from --data).")
@click.option("--data", "data_dir", type=click.Path(file_okay=False), default=None,
              help="The agent's data directory; the journal is DATA/state/journal.db.")
@click.pass_context
def journal(ctx: click.Context, journal_path: str | None, data_dir: str | None) -> None:
    """This host's change journal: what changed, who wrote a file, undo, back-out steps."""
    ctx.obj = JournalOptions(journal=journal_path, data=data_dir)


@journal.command("list")
@click.option("--since", type=SINCE, default=None, help="Only change sets created since DATE (ISO-8601 or 2h/7d).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most N change sets, newest first.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
@reports_errors
def list_cmd(ctx: click.Context, since: datetime | None, limit: int | None, as_json: bool) -> None:
    """List change sets, newest first."""
    if since is not None:
        check_not_future(since)
    with _open(ctx) as jr:
        changes = jr.list_changes(since=since, limit=limit)
    if as_json:
        _echo_json([c.to_dict() for c in changes])
    else:
        click.echo(render_changes(changes))


@journal.command("show")
@click.argument("change_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
@reports_errors
def show_cmd(ctx: click.Context, change_id: int, as_json: bool) -> None:
    """Show change set CHANGE_ID with every task and its undo."""
    with _open(ctx) as jr:
        change = jr.get_change(change_id)
    if as_json:
        _echo_json(change.to_dict())
    else:
        click.echo(render_change(change))


@journal.command("blame")
@click.argument("path", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
@reports_errors
def blame_cmd(ctx: click.Context, path: str, as_json: bool) -> None:
    """Which change set last wrote PATH (file write, symlink swap or tree removal)."""
    with _open(ctx) as jr:
        task = jr.blame(path)
        change = jr.get_change(task.change_id) if task else None
    target = os.path.abspath(path)
    if as_json:
        _echo_json({"path": target, "change": change.to_dict() if change else None,
                    "task": task.to_dict() if task else None})
    elif task is None or change is None:
        click.echo(f"{target}: no change set in this journal wrote it")
    else:
        click.echo(f"{target}: change set {change.id} ({change.description}), deploy {change.deploy_id or '-'},"
                   f" {change.created}, status {change.status}")
        click.echo(f"  task {task.position}: {task.execute.description}")
        click.echo(f"  undo: {task.undo.description}")


@journal.command("backout-steps")
@click.argument("change_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
@reports_errors
def backout_cmd(ctx: click.Context, change_id: int, as_json: bool) -> None:
    """Print the manual steps that back change set CHANGE_ID out (for emergencies)."""
    with _open(ctx) as jr:
        steps = backout_steps(jr, change_id)
    if as_json:
        _echo_json({"change_id": change_id, "steps": steps})
    else:
        click.echo("\n".join(steps))


@journal.command("undo")
@click.option("--last", "last", type=click.IntRange(min=1), default=None, help="Undo the last N change sets.")
@click.option("--since", type=SINCE, default=None, help="Undo every change set since DATE.")
@click.option("--change", "change_id", type=int, default=None, help="Undo change set ID.")
@click.option("--dry-run", is_flag=True, help="Print what would be undone; change nothing.")
@click.option("--force", is_flag=True,
              help="Undo even change sets holding steps that cannot be undone automatically (they are skipped).")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
@reports_errors
def undo_cmd(ctx: click.Context, last: int | None, since: datetime | None, change_id: int | None,
             dry_run: bool, force: bool, yes: bool, as_json: bool) -> None:
    """Undo change sets by replaying the undo steps recorded with them (newest first)."""
    chosen = [name for name, value in (("--last", last), ("--since", since), ("--change", change_id))
              if value is not None]
    if len(chosen) != 1:
        raise click.UsageError("give exactly one of --last N, --since DATE, --change ID")

    def run(dry: bool) -> list[Any]:
        if last is not None:
            return undo_last(jr, None, last, dry_run=dry, force=force)
        if since is not None:
            return undo_since(jr, None, since, dry_run=dry, force=force)
        assert change_id is not None
        return [undo_change(jr, None, change_id, dry_run=dry, force=force)]

    with _open(ctx) as jr:
        plan = run(True)  # validates everything before anything changes
        if not dry_run and plan and not yes:
            click.echo(render_undo_reports(plan), err=True)
            confirm("undo these change sets?", force=False)
        reports = plan if dry_run or not plan else run(False)
    if as_json:
        _echo_json([r.to_dict() for r in reports])
    else:
        click.echo(render_undo_reports(reports))


@journal.command("recover")
@click.option("--policy", type=click.Choice(["undo", "complete"]), default="undo", show_default=True,
              help="Undo or complete a task a crash left in flight.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
@reports_errors
def recover_cmd(ctx: click.Context, policy: str, as_json: bool) -> None:
    """Settle change sets a crash interrupted (the agent does this itself at start)."""
    with _open(ctx) as jr:
        actions = recover(jr, None, policy=policy)
    if as_json:
        _echo_json([a.to_dict() for a in actions])
    elif not actions:
        click.echo("nothing to recover")
    else:
        for action in actions:
            where = f"task {action.position}" if action.position else "change set"
            click.echo(f"change set {action.change_id} {where}: {action.action}: {action.detail}")
