"""Commands that print state: status and nodes (``nodes forget`` is in commands.py)."""

from __future__ import annotations

import time
from typing import Any

import click

from zkdeploy.cli.context import Ctx, handle_errors, json_option, pass_ctx
from zkdeploy.cli.output import console, emit_json, say, table
from zkdeploy.cli.views import fleet_status, nodes_view


def seen(when: float | None, now: float | None = None) -> str:
    """``2024-05-01 12:00:00 (3h ago)``, or ``-`` when unknown."""
    if not when:
        return "-"
    ago = max(0, int((time.time() if now is None else now) - when))
    if ago < 120:
        span = f"{ago}s"
    elif ago < 7200:
        span = f"{ago // 60}m"
    elif ago < 172800:
        span = f"{ago // 3600}h"
    else:
        span = f"{ago // 86400}d"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when)) + f" ({span} ago)"


def _print_status(status: dict[str, Any]) -> None:
    if status["killswitch"]:
        ks = status["killswitch"]
        say(f"KILLSWITCH ON: {ks['message']} (by {ks['by']})")
    head = status["active_deploy"]
    if head:
        say(f"active deploy {head['name']}: {head['service']}@{head['version']} ({head['state']})"
            + (f" — {head['message']}" if head["message"] else ""))
    queued = [d for d in status["queue"] if not head or d["name"] != head["name"]]
    if queued:
        say("queued: " + ", ".join(f"{d['service']}@{d['version']}" for d in queued))
    rows = []
    for svc in status["services"]:
        versions = ", ".join(f"{v['nodes']}×{v['version']} {v['state']}" for v in svc["versions"]) or "-"
        staged = svc["staged"]
        payload = "-"
        if staged:
            payload = f"{staged['version']}: {staged['holders']}/{svc['nodes']} hold it"
            if staged["swarm_download_rate"]:
                payload += f", swarm {staged['swarm_download_rate'] / 1e6:.1f} MB/s"
        nodes = f"{svc['nodes']}/{svc['members']}" if svc["absent"] else svc["nodes"]
        rows.append([svc["service"], svc["target"] or "-", svc["quorum"], nodes, versions, payload,
                     svc["waiting_for"]])
    table(None, ["SERVICE", "TARGET", "QUORUM", "NODES", "VERSIONS", "NEWEST PAYLOAD", "ROLLOUT"], rows)
    absent = [[svc["service"], m["node"], seen(m["last_seen"])] for svc in status["services"] for m in svc["absent"]]
    if absent:
        say("")
        say("absent members (counted as down; `zkdeploy nodes forget NODE` removes one that left for good):")
        table(None, ["SERVICE", "NODE", "LAST SEEN"], absent)


@click.command("status")
@click.option("--watch", is_flag=True, help="Redraw every --interval seconds until Ctrl-C.")
@click.option("--interval", type=float, default=1.0, show_default=True)
@json_option
@pass_ctx
@handle_errors
def status(ctx: Ctx, watch: bool, interval: float, as_json: bool) -> None:
    """For each service: the target version, how many nodes run which version in which
    state, and in plain words what the rollout is waiting for."""
    store = ctx.store()
    while True:
        data = fleet_status(store)
        if as_json:
            emit_json(data)
        else:
            if watch:
                console.clear()
                say(time.strftime("%Y-%m-%d %H:%M:%S"))
            _print_status(data)
        if not watch:
            return
        try:
            time.sleep(interval)
        except KeyboardInterrupt:
            return


@click.group("nodes", invoke_without_command=True)
@json_option
@click.pass_context
def nodes(click_ctx: click.Context, as_json: bool) -> None:
    """List the nodes: the registered agents, their labels and what each runs, and the
    absent members of each service with when they were last seen.

    A node that has registered a service stays its member, present or not,
    until `zkdeploy nodes forget NODE`: an absent member counts as down, and
    a percentage quorum is a share of the members.
    """
    if click_ctx.invoked_subcommand is None:
        _list_nodes(click_ctx.find_object(Ctx), as_json)


@handle_errors
def _list_nodes(ctx: Ctx, as_json: bool) -> None:
    rows = nodes_view(ctx.store())
    if as_json:
        emit_json(rows)
        return
    if not rows:
        say("no agent is registered")
        return
    table(None, ["NODE", "ADDRESS", "LABELS", "SERVICES", "SEEN"],
          [[r["node"], r["address"] or "-", ",".join(f"{k}={v}" for k, v in sorted(r["labels"].items())) or "-",
            "  ".join(f"{s}={v['version']}:{v['state']}" if v else f"{s}=?" for s, v in sorted(r["services"].items())),
            "present" if r["present"] else "absent, last seen " + seen(r["last_seen"])]
           for r in rows])
