"""``zkdeploy demo``: a real rolling deploy on a local fleet, for newcomers."""

from __future__ import annotations

import click

from zkdeploy.cli.context import handle_errors, json_option
from zkdeploy.cli.output import emit_json, say, table
from zkdeploy.coordination import Store


@click.command("demo")
@click.option("--nodes", "size", type=click.IntRange(5, 30), default=6, show_default=True,
              help="How many hosts (agents) to run (db needs 4 online, so at least 5).")
@click.option("--keep", is_flag=True, help="Keep the hosts' directories (agent logs, releases) afterwards.")
@click.option("--use-zk", "use_zk", is_flag=True,
              help="Use the ZooKeeper given by --zk instead of starting a private one.")
@click.option("--lb", is_flag=True,
              help="Put the services behind a real HAProxy (Debian's haproxy): agents drain each server before "
                   "its restart, and load through the balancer shows how many requests failed.")
@json_option
@click.pass_context
@handle_errors
def demo(ctx: click.Context, size: int, keep: bool, use_zk: bool, lb: bool, as_json: bool) -> None:
    """Run a real rolling deploy on a local fleet, then clean up.

    Starts a private ZooKeeper on a free loopback port (or uses --zk with
    --use-zk), runs NODES agents as separate processes, each with its own
    directory standing for a host and running two tiny HTTP services: db, and
    web which depends on db.  It installs version 1, stages version 2 of
    both, deploys it with live progress, and prints a summary: the total
    time, and for each service the most nodes that were unavailable at once
    (measured by probing the services' HTTP ports) against what its quorum
    allows.  With --lb the fleet sits behind HAProxy on loopback and the
    summary adds the requests sent through it during the rollout, and how
    many failed.
    """
    from zkdeploy.demo.scenario import run_demo

    printer = (lambda _t: None) if as_json else say
    last = {"text": ""}

    def progress(store: Store) -> None:
        from zkdeploy.cli.views import fleet_status

        status = fleet_status(store)
        lines = []
        for svc in status["services"]:
            versions = ", ".join(f"{v['nodes']}×v{v['version']} {v['state']}" for v in svc["versions"])
            lines.append(f"  {svc['service']:<4} {versions:<40} {svc['waiting_for']}")
        text = "\n".join(lines)
        if text != last["text"]:
            printer(text + "\n")
            last["text"] = text

    summary = run_demo(ctx.obj.zk if use_zk else None, size=size, keep=keep, say=printer, progress=progress, lb=lb)
    if as_json:
        emit_json(summary)
        return
    say(f"\nrollout of db and web to version 2 took {summary['total_seconds']}s on {summary['nodes']} nodes")
    table(None, ["SERVICE", "QUORUM", "MOST DOWN AT ONCE", "QUORUM ALLOWS", "OK", "AT V2"],
          [[s["service"], s["quorum"], s["max_unavailable_observed"], s["max_unavailable_allowed"],
            "yes" if s["within_quorum"] else "NO", f"{s['nodes_at_new_version']}/{s['nodes']}"]
           for s in summary["services"]])
    say("web restarted only after every db node ran version 2: "
        + ("yes" if summary["dependency_order_respected"] else "NO"))
    if "load" in summary:
        say(f"through HAProxy during the rollout: {summary['load']['requests']} requests, "
            f"{summary['load']['failed']} failed")
