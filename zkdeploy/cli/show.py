"""Commands that print state: status and nodes."""

from __future__ import annotations

import time

import click

from zkdeploy.cli.context import Ctx, handle_errors, json_option, pass_ctx
from zkdeploy.cli.output import console, emit_json, say, table
from zkdeploy.cli.views import fleet_status, nodes_view


def _print_status(status: dict) -> None:
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
        rows.append([svc["service"], svc["target"] or "-", svc["quorum"], svc["nodes"], versions, payload,
                     svc["waiting_for"]])
    table(None, ["SERVICE", "TARGET", "QUORUM", "NODES", "VERSIONS", "NEWEST PAYLOAD", "ROLLOUT"], rows)


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


@click.command("nodes")
@json_option
@pass_ctx
@handle_errors
def nodes(ctx: Ctx, as_json: bool) -> None:
    """List the registered nodes, their labels and what each runs."""
    rows = nodes_view(ctx.store())
    if as_json:
        emit_json(rows)
        return
    if not rows:
        say("no agent is registered")
        return
    table(None, ["NODE", "ADDRESS", "LABELS", "SERVICES"],
          [[r["node"], r["address"], ",".join(f"{k}={v}" for k, v in sorted(r["labels"].items())) or "-",
            "  ".join(f"{s}={v['version']}:{v['state']}" if v else f"{s}=?" for s, v in sorted(r["services"].items()))]
           for r in rows])
