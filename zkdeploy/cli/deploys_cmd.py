"""Deploys as objects: ``zkdeploy deploys`` lists them, ``zkdeploy rollout status DEPLOY`` follows one.

``rollout status`` is the way back to a rollout started elsewhere (or left by
Ctrl-C in ``deploy --wait``): it follows the deploy until it ends and exits
with its outcome, 0 done, 4 halted, aborted, rolled back or timed out.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import click

from zkdeploy.cli.context import (
    EXIT_INTERRUPTED,
    Ctx,
    deploy_name as full_deploy_name,
    handle_errors,
    json_option,
    pass_ctx,
    positive_seconds,
)
from zkdeploy.cli.live import follow_deploys
from zkdeploy.cli.output import emit_json, error, say, table
from zkdeploy.cli.views import deploy_dict
from zkdeploy.coordination import Store
from zkdeploy.errors import ConfigError, RolloutError
from zkdeploy.model import DONE, ONLINE, PAUSED, PENDING, DeployEntry


def progress(store: Store, entry: DeployEntry) -> tuple[int, int]:
    """(n, m): of the m nodes the deploy concerns (its selected nodes, or the service's members,
    absent ones included), the n that run its version and are online."""
    current = store.current(entry.service)
    nodes = set(entry.nodes) if entry.nodes else set(current) | set(store.member_nodes(entry.service))
    done = sum(1 for n in nodes if n in current and current[n].version == entry.version and current[n].state == ONLINE)
    return done, len(nodes)


def age(since: float, now: float | None = None) -> str:
    """``42s``, ``7m``, ``3h``, ``2d``: how long ago ``since`` was."""
    span = max(0, int((time.time() if now is None else now) - since))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if span >= 2 * size:
            return f"{span // size}{unit}"
    return f"{span}s"


def _row(store: Store, entry: DeployEntry) -> dict[str, Any]:
    done, total = progress(store, entry)
    return {**deploy_dict(entry), "progress": {"done": done, "total": total}}


@click.command("deploys")
@click.option("--all", "all_", is_flag=True, help="Finished deploys too (done, aborted, rolled back).")
@json_option
@pass_ctx
@handle_errors
def deploys(ctx: Ctx, all_: bool, as_json: bool) -> None:
    """List the open deploys (pending, paused, halted), oldest first, or --all of them: name,
    state, age, service@version and progress (nodes at the version / nodes concerned).

    A deploy is named by its name or its number: `zkdeploy rollout status 13`
    follows d-0000000013.
    """
    store = ctx.store()
    rows = [_row(store, e) for e in store.deploys() if all_ or e.is_open]
    if as_json:
        emit_json(rows)
        return
    if not rows:
        say("no open deploy (--all shows finished ones too)" if not all_ else "no deploy recorded")
        return
    table(None, ["DEPLOY", "STATE", "AGE", "TARGET", "PROGRESS", "KIND", "MESSAGE"],
          [[r["name"], r["state"], age(r["created"]), f"{r['service']}@{r['version']}",
            f"{r['progress']['done']}/{r['progress']['total']}", r["kind"], r["message"] or "-"] for r in rows])


@click.group("rollout")
def rollout() -> None:
    """Follow a deploy (kubectl rollout status)."""


@rollout.command("status")
@click.argument("deploy", metavar="DEPLOY")
@click.option("--timeout", type=float, default=3600.0, show_default=True, metavar="SECONDS",
              help="Give up following after this many seconds (exit 4; the rollout goes on).")
@click.option("--interval", type=float, default=1.0, show_default=True, metavar="SECONDS",
              help="Seconds between looks at the deploy.")
@json_option
@pass_ctx
@handle_errors
def rollout_status(ctx: Ctx, deploy: str, timeout: float, interval: float, as_json: bool) -> None:
    """Follow DEPLOY (its name, or its number: 13 for d-0000000013) until it ends, showing its
    progress: redrawn in place on a terminal (progress bar, elapsed time, time left, why nodes hold
    it back), one line per change otherwise, one JSON document per line with --json (the last one
    is the deploy as `deploys --json` shows it).

    Exit codes: 0 done, 2 no such deploy, 3 ZooKeeper unreachable, 4 halted,
    aborted, rolled back, or still running when --timeout passed (the rollout
    goes on), 130 interrupted (the rollout goes on).
    """
    name = full_deploy_name(deploy)
    positive_seconds("--timeout", timeout)
    positive_seconds("--interval", interval)
    store = ctx.store()
    if store.deploy(name) is None:
        raise ConfigError(f"no deploy {name} (`zkdeploy deploys --all` lists them)")
    try:
        [entry], ended = follow_deploys(store, [name], title=f"zkdeploy rollout status {name} (Ctrl-C stops "
                                        f"following)", timeout=timeout, interval=interval, as_json=as_json,
                                        ended=lambda e: e.state not in (PENDING, PAUSED))
    except KeyboardInterrupt:
        error(f"interrupted: stopped following; the rollout goes on (zkdeploy rollout status {name})")
        sys.exit(EXIT_INTERRUPTED)
    done, total = progress(store, entry)
    if not ended:
        raise RolloutError(f"{name} is still {entry.state} after {timeout:g}s ({done}/{total}); the rollout "
                           f"goes on (zkdeploy rollout status {name})")
    if as_json:
        emit_json(_row(store, entry), one_line=True)
    else:
        say(f"{name} {entry.service}@{entry.version}: {entry.state}, {done}/{total} node(s) at the version"
            + (f" — {entry.message}" if entry.message else ""))
    if entry.state != DONE:
        raise RolloutError(f"{name} {entry.service}@{entry.version} ended {entry.state}"
                           + (f": {entry.message}" if entry.message else ""))
