"""Steering the deploys under way: ``abort``, ``pause``, ``resume``, and the fleet-wide ``killswitch``."""

from __future__ import annotations

import time
from typing import Any

import click

from zkdeploy.cli.commands import who
from zkdeploy.cli.context import (
    Ctx,
    confirm,
    deploy_name as full_deploy_name,
    force_option,
    handle_errors,
    json_option,
    pass_ctx,
)
from zkdeploy.cli.output import emit_json, say
from zkdeploy.errors import ConfigError
from zkdeploy.model import ABORTED, HALTED, PAUSED, PENDING, DeployState, Killswitch
from zkdeploy.policy.lifecycle import Actor, can, transition


def _set_state(ctx: Ctx, name: str | None, new: DeployState) -> list[str]:
    """Move deploy ``name`` (or, for None, every deploy an operator may move) to ``new``; the names moved.

    A named deploy that cannot make the move is refused (DeployTransitionError,
    exit 2) before anything is written.
    """
    store = ctx.store()
    if name is not None:
        entry = store.deploy(name)
        if entry is None:
            raise ConfigError(f"no deploy {name} (`zkdeploy deploys --all` lists them)")
        entries = [entry]
    else:
        entries = [e for e in store.deploys() if e.state != new and can(e, new, by=Actor.OPERATOR)]
    changed = []
    for entry in entries:
        store.update_deploy(transition(entry, new, by=Actor.OPERATOR, message=f"{new} by {who()}"))
        changed.append(entry.name)
    return changed


@click.command("abort")
@click.argument("deploy_name", required=False, metavar="[DEPLOY]")
@click.option("--all", "all_", is_flag=True, help="Abort every open deploy.")
@force_option
@json_option
@pass_ctx
@handle_errors
def abort(ctx: Ctx, deploy_name: str | None, all_: bool, force: bool, as_json: bool) -> None:
    """Abort DEPLOY (its name or number: d-0000000003 or 3), or --all open deploys; asks first.

    Nodes already restarted keep the new version; nodes not yet restarted
    keep the old one; a restart in progress finishes.
    """
    name = _one_or_all(deploy_name, all_)
    confirm(f"abort {name or 'every open deploy'}?", force)
    _say_moved(_set_state(ctx, name, ABORTED), "aborted", as_json)


@click.command("pause")
@click.argument("deploy_name", required=False, metavar="[DEPLOY]")
@click.option("--all", "all_", is_flag=True, help="Pause every pending deploy.")
@json_option
@pass_ctx
@handle_errors
def pause(ctx: Ctx, deploy_name: str | None, all_: bool, as_json: bool) -> None:
    """Pause DEPLOY (its name or number) or --all pending ones: no node starts a new restart for
    it; restarts under way finish."""
    _say_moved(_set_state(ctx, _one_or_all(deploy_name, all_), PAUSED), "paused", as_json)


@click.command("resume")
@click.argument("deploy_name", required=False, metavar="[DEPLOY]")
@click.option("--all", "all_", is_flag=True, help="Resume every paused deploy (halted ones are resumed by name).")
@json_option
@pass_ctx
@handle_errors
def resume(ctx: Ctx, deploy_name: str | None, all_: bool, as_json: bool) -> None:
    """Resume DEPLOY (its name or number), paused or halted, or --all paused ones.

    A halted deploy's failure budget is raised to the failures it already had,
    so one more failure halts it again.
    """
    name = _one_or_all(deploy_name, all_)
    store = ctx.store()
    if name is None:
        entries = [e for e in store.deploys() if e.state == PAUSED]
    else:
        entry = store.deploy(name)
        if entry is None:
            raise ConfigError(f"no deploy {name} (`zkdeploy deploys --all` lists them)")
        if entry.state == PENDING:  # pending -> pending is an operator's move too (promote), but not a resume
            raise ConfigError(f"deploy {name} ({entry.service}@{entry.version}) is pending: only a paused or "
                              f"halted deploy resumes; nothing was changed")
        entries = [entry]
    moved = []
    for entry in entries:
        budget = len(entry.failures) if entry.state == HALTED else entry.max_failures
        store.update_deploy(transition(entry, PENDING, by=Actor.OPERATOR, message=f"resumed by {who()}",
                                       max_failures=budget))
        moved.append(entry.name)
    _say_moved(moved, "resumed", as_json)


def _one_or_all(text: str | None, all_: bool) -> str | None:
    """The full name of the one deploy named, or None for --all; ConfigError for neither or both."""
    if (text is None) == (not all_):
        raise ConfigError("name one deploy or give --all" if text is None else "name a deploy or give --all, not both")
    return full_deploy_name(text) if text is not None else None


def _say_moved(names: list[str], verb: str, as_json: bool) -> None:
    if as_json:
        emit_json({verb: names})
        return
    for name in names:
        say(f"{verb} {name}")
    if not names:
        say(f"no deploy was {verb}")



@click.command("killswitch")
@click.argument("action", type=click.Choice(["on", "off", "show"]))
@click.option("--message", "-m", default="", help="Why (shown by status and in every agent's log).")
@json_option
@pass_ctx
@handle_errors
def killswitch(ctx: Ctx, action: str, message: str, as_json: bool) -> None:
    """Stop (on) or allow (off) every agent's new steps, fleet-wide, or show the killswitch.

    With it on, no agent starts a new step anywhere; deploys still queue.
    `on` needs --message and says which earlier message it replaces.
    """
    if action == "on" and not message:
        raise ConfigError("killswitch on needs --message TEXT")
    store = ctx.store()
    earlier = store.killswitch()
    if action == "on":
        store.set_killswitch(Killswitch(message=message, by=who(), since=time.time()))
    elif action == "off":
        store.set_killswitch(None)
    switch = store.killswitch()
    replaced = earlier if action == "on" and earlier is not None else None
    if as_json:
        emit_json({**_killswitch_dict(switch), "replaced": _killswitch_dict(replaced) if replaced else None})
        return
    if replaced is not None:
        say(f"replaced the earlier killswitch message: {replaced.message} (by {replaced.by}, "
            f"since {_when(replaced.since)})")
    say(f"killswitch on: {switch.message} (by {switch.by}, since {_when(switch.since)})" if switch
        else "killswitch off")


def _killswitch_dict(switch: Killswitch | None) -> dict[str, Any]:
    """The killswitch as ``killswitch show --json`` prints it: on, message, by, since (emit_json
    prints it as ISO 8601 UTC, as every time)."""
    if switch is None:
        return {"on": False, "message": None, "by": None, "since": None}
    return {"on": True, "message": switch.message, "by": switch.by, "since": switch.since}


def _when(when: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when))
