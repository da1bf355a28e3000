"""Commands that print state: status and nodes (``nodes forget`` is in commands.py)."""

from __future__ import annotations

import time
from typing import Any

import click

from zkdeploy.cli import discovery_cmd
from zkdeploy.cli.context import Ctx, handle_errors, json_option, pass_ctx, positive_seconds
from zkdeploy.cli.frames import status_frame
from zkdeploy.cli.live import LiveView
from zkdeploy.cli.output import emit_json, say, table
from zkdeploy.cli.views import fleet_status, nodes_view
from zkdeploy.policy.selector import parse as parse_selector


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
    _print_controls(status)


def _print_controls(status: dict[str, Any]) -> None:
    """The waves of the active deploy, the marks of each service and the pins (controlled deployment)."""
    head = status["active_deploy"]
    if status["waves"] and head:
        say("")
        say(f"waves of {head['name']} ({head['service']}@{head['version']}):")
        table(None, ["#", "WAVE", "NODES", "VERSIONS", "STATE", "GATE", "WHY"],
              [[w["number"], w["name"], ", ".join(w["nodes"]) or "-",
                ", ".join(f"{n}×{v}" for v, n in w["versions"].items()) or "-",
                w["state"] + (f" (approved by {w['approved_by']})" if w["approved_by"] else ""),
                _gate(w["gate"]), w["reason"] or "-"] for w in status["waves"]])
    marks = [m for svc in status["services"] for m in svc["marks"]]
    if marks:
        say("")
        say("release marks (the latest of each version; `zkdeploy unmark` clears one):")
        table(None, ["SERVICE", "VERSION", "MARK", "BY", "WHEN", "WHY"],
              [[m["service"], m["version"], m["mark"], m["by"], seen(m["at"]), m["why"]] for m in marks])
    if status["pins"]:
        say("")
        say("pins (the node runs this release whatever deploys, waves and marks say):")
        table(None, ["NODE", "SERVICE", "VERSION", "UNTIL", "BY", "WHY"],
              [[p["node"], p["service"], p["version"], _until(p), p["by"], p["why"]] for p in status["pins"]])


def _gate(gate: dict[str, Any]) -> str:
    parts = []
    for key, label in (("min_age", "age"), ("soak", "soak"), ("min_healthy_time", "healthy")):
        if gate.get(key):
            parts.append(f"{label} {_span(float(gate[key]))}")
    if gate.get("canary"):
        parts.append(f"canary {gate['canary']}")
    if gate.get("approval"):
        parts.append("approval")
    if gate.get("require_good"):
        parts.append("good only")
    return ", ".join(parts) or "-"


def _span(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g}h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g}m"
    return f"{seconds:g}s"


def _until(pin: dict[str, Any]) -> str:
    if pin["until"] is None:
        return "unpinned"
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(pin["until"]))
    return when if pin["active"] else f"{when} (lapsed)"


@click.command("status")
@click.option("--watch", is_flag=True,
              help="Follow the fleet until Ctrl-C: redrawn in place on a terminal (progress bars, elapsed time, "
                   "time left, why nodes hold a rollout back); one line per change otherwise; with --json one "
                   "JSON document per line, per change.")
@click.option("--interval", type=float, default=1.0, show_default=True, metavar="SECONDS",
              help="With --watch: seconds between looks at the fleet (greater than 0).")
@json_option
@pass_ctx
@handle_errors
def status(ctx: Ctx, watch: bool, interval: float, as_json: bool) -> None:
    """For each service: the target version, how many nodes run which version in which
    state, and in plain words what the rollout is waiting for; the waves of the active
    deploy (nodes, versions, verified/open/waiting and why), the release marks and the pins."""
    positive_seconds("--interval", interval)
    store = ctx.store()
    if not watch:
        data = fleet_status(store)
        if as_json:
            emit_json(data)
        else:
            _print_status(data)
        return
    try:
        with LiveView("zkdeploy status --watch (Ctrl-C to stop)", as_json=as_json) as view:
            while True:
                data = fleet_status(store)
                view.show(status_frame(data, time.time()), doc=data if as_json else None)
                time.sleep(interval)
    except KeyboardInterrupt:  # the way out of --watch: not an error
        return


@click.group("nodes", invoke_without_command=True)
@discovery_cmd.select_option
@json_option
@click.pass_context
def nodes(click_ctx: click.Context, select: str | None, as_json: bool) -> None:
    """List the nodes: the registered agents, their labels, what each runs and its pins, and
    the absent members of each service with when they were last seen.

    A node that has registered a service stays its member, present or not,
    until `zkdeploy nodes forget NODE`: an absent member counts as down, and
    a percentage quorum is a share of the members.
    """
    if click_ctx.invoked_subcommand is None and select is not None:
        _list_selected(click_ctx.find_object(Ctx), select, as_json)
    elif click_ctx.invoked_subcommand is None:
        _list_nodes(click_ctx.find_object(Ctx), as_json)


@handle_errors
def _list_selected(ctx: Ctx, select: str, as_json: bool) -> None:
    parse_selector(select)  # a bad selector is refused before connecting
    discovery_cmd.print_selected(ctx.store(), select, as_json)


@handle_errors
def _list_nodes(ctx: Ctx, as_json: bool) -> None:
    rows = nodes_view(ctx.store())
    if as_json:
        emit_json(rows)
        return
    if not rows:
        say("no agent is registered")
        return
    table(None, ["NODE", "ADDRESS", "LABELS", "SERVICES", "PINS", "SEEN"],
          [[r["node"], r["address"] or "-", ",".join(f"{k}={v}" for k, v in sorted(r["labels"].items())) or "-",
            "  ".join(f"{s}={v['version']}:{v['state']}" if v else f"{s}=?" for s, v in sorted(r["services"].items())),
            "  ".join(f"{s}={p['version']} until {_until(p)}" for s, p in sorted(r["pins"].items())) or "-",
            "present" if r["present"] else "absent, last seen " + seen(r["last_seen"])]
           for r in rows])
