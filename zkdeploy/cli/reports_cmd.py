"""Fleet-wide dry runs, the central change history, and undo on a node, through ZooKeeper."""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import click

from zkdeploy.cli.commands import check_targets, resolve_targets, who
from zkdeploy.cli.context import Ctx, confirm, force_option, handle_errors, json_option, pass_ctx, positive_seconds
from zkdeploy.cli.journal_cmd import SINCE
from zkdeploy.cli.output import emit_json, say, table
from zkdeploy.cli.views import mark_dict
from zkdeploy.coordination import Store
from zkdeploy.errors import ConfigError, RolloutError
from zkdeploy.names import check_name

#: plan requests (and their answers) older than this are removed when a new plan is requested
PLANS_KEPT_SECONDS = 86400.0


def _wanted_nodes(store: Store, services: list[str]) -> set[str]:
    return {node for service in services for node in store.current(service)}


def _normalized(answer: dict[str, Any]) -> str:
    """A host's plan with its own name and data directory abstracted, so identical plans group."""
    text = json.dumps([{k: s.get(k) for k in ("service", "from", "to", "error")} |
                       {"actions": [a["description"] for a in s["actions"]]} for s in answer["services"]],
                      sort_keys=True)
    return text.replace(answer["data_dir"], "<data>").replace(answer["node"], "<node>")


@click.command("plan")
@click.argument("targets", nargs=-1, required=True, metavar="SERVICE[@VERSION]...")
@click.option("--timeout", type=float, default=60.0, show_default=True,
              help="Seconds to wait for every node that runs these services to answer.")
@json_option
@pass_ctx
@handle_errors
def plan(ctx: Ctx, targets: tuple[str, ...], timeout: float, as_json: bool) -> None:
    """Dry-run a deploy of SERVICE[@VERSION]... on every host: the exact changes and commands each
    would make (without @VERSION, the most recently staged version).

    Every agent concerned runs its restart in NoAction mode (it may fetch and
    verify the payload; nothing under the service's release or current paths,
    no service process and no journal entry changes) and reports back through
    ZooKeeper.  Identical plans are grouped.  Exit code 4 if some host did not
    answer within --timeout (they are named).
    """
    check_targets(targets)
    positive_seconds("--timeout", timeout)
    store = ctx.store()
    _, resolved = resolve_targets(store, targets, "plan")
    show_plan(store, resolved, timeout, as_json)


def show_plan(store: Store, resolved: list[tuple[str, str]], timeout: float, as_json: bool,
              steps: Sequence[dict[str, Any]] = (), nodes: Sequence[str] = ()) -> None:
    """Ask the hosts for their plan of ``resolved`` and print it, identical plans grouped.  With a
    scenario's ``steps``, each host plans those steps; with ``nodes``, only they are asked.
    RolloutError (exit 4) naming the hosts that did not answer within ``timeout``."""
    store.prune_plans(older_than=PLANS_KEPT_SECONDS)
    expected = set(nodes) if nodes else _wanted_nodes(store, [s for s, _ in resolved])
    targets = [{"service": s, "version": v, **({"steps": list(steps)} if steps else {})} for s, v in resolved]
    name = store.request_plan({"targets": targets, "created": time.time(), "by": who(),
                               **({"nodes": sorted(nodes)} if nodes else {})})
    deadline = time.monotonic() + timeout
    answers: dict[str, Any] = {}
    while time.monotonic() < deadline:
        answers = store.plan_answers(name)
        if expected <= set(answers):
            break
        time.sleep(0.2)
    missing = sorted(expected - set(answers))
    groups: dict[str, list[str]] = defaultdict(list)
    for node, answer in sorted(answers.items()):
        groups[_normalized(answer)].append(node)
    if as_json:
        emit_json({"request": name, "targets": resolved, "answers": answers, "missing": missing,
                   "groups": [{"nodes": nodes, "plan": answers[nodes[0]]["services"]} for nodes in groups.values()]})
    else:
        for group in groups.values():
            say(f"== {len(group)} host(s): {', '.join(group)}")
            for svc in answers[group[0]]["services"]:
                head = f"  {svc['service']}: {svc.get('from') or '-'} -> {svc['to']}"
                if svc.get("error"):
                    say(f"{head}: ERROR {svc['error']}")
                    continue
                say(head + ("" if svc["actions"] else ": nothing to do"))
                for i, action in enumerate(svc["actions"], 1):
                    note = "" if action["undoable"] else "  [cannot be undone automatically]"
                    say(f"    {i}. {action['description']}{note}")
        if missing:
            say(f"no answer within {timeout:g}s from: {', '.join(missing)}")
    if missing:
        raise RolloutError(f"{len(missing)} host(s) did not answer the plan: {', '.join(missing)}")


@click.command("history")
@click.option("--node", help="Only this node.")
@click.option("--service", help="Only changes of this service.")
@click.option("--since", type=SINCE, help="Only changes since DATE (ISO-8601 or an age like 2h, 7d).")
@click.option("--limit", type=click.IntRange(1), default=50, show_default=True, metavar="N",
              help="Show at most the N newest records that match.")
@click.option("--marks", "marks", is_flag=True,
              help="Show every release mark record (bad, badfwd, good, none: who, when, why) instead.")
@json_option
@pass_ctx
@handle_errors
def history(ctx: Ctx, node: str | None, service: str | None, since: datetime | None, limit: int,
            marks: bool, as_json: bool) -> None:
    """The central record of what changed where (reports agents push after each live change set);
    with --marks, the append-only record of release marks."""
    if since is not None and since > datetime.now(UTC):
        raise ConfigError(f"--since {since.isoformat()} is in the future")
    if marks:
        _mark_history(ctx.store(), service, since, limit, as_json)
        return
    records = ctx.store().history()
    out = [r for r in records
           if (node is None or r["node"] == node) and (service is None or service in r.get("services", []))
           and (since is None or datetime.fromisoformat(r["created"]) >= since)][-limit:]
    if as_json:
        emit_json(out)
        return
    if not out:
        say("no recorded changes match")
        return
    table(None, ["WHEN", "NODE", "CHANGE", "DEPLOY", "STATUS", "WHAT"],
          [[r["created"][:19], r["node"], r["change_id"], r.get("deploy_id") or "-", r["status"], r["description"]]
           for r in out])


def _mark_history(store: Store, service: str | None, since: datetime | None, limit: int, as_json: bool) -> None:
    if service is not None:
        check_name("service", service)
    catalog, _ = store.catalog()
    services = [service] if service else sorted((catalog or {}).get("services", {}))
    records = sorted((m for s in services for m in store.marks(s).values()), key=lambda m: m.at)
    out = [mark_dict(m) for m in records if since is None or m.at >= since.timestamp()][-limit:]
    if as_json:
        emit_json(out)
        return
    if not out:
        say("no release marks match")
        return
    table(None, ["WHEN", "SERVICE", "VERSION", "MARK", "BY", "WHY"],
          [[time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(m["at"])), m["service"], m["version"], m["mark"],
            m["by"], m["why"]] for m in out])


@click.command("undo")
@click.option("--node", required=True, help="The node whose changes to undo.")
@click.option("--last", type=click.IntRange(1), help="Undo the last N change sets still in effect.")
@click.option("--since", type=SINCE, help="Undo every change set since DATE.")
@click.option("--timeout", type=float, default=300.0, show_default=True, help="Seconds to wait for the node.")
@force_option
@json_option
@pass_ctx
@handle_errors
def undo(ctx: Ctx, node: str, last: int | None, since: datetime | None, timeout: float, force: bool,
         as_json: bool) -> None:
    """Ask NODE's agent to undo its recent changes, under the same quorum rules as any restart.

    The release that ran before is live again afterwards and /dc/current says
    so.  Exit code 4 if the node refused, failed or did not answer in time.
    """
    check_name("node", node)
    if (last is None) == (since is None):
        raise ConfigError("give exactly one of --last N or --since DATE")
    positive_seconds("--timeout", timeout)
    if since is not None and since > datetime.now(UTC):
        raise ConfigError(f"--since {since.isoformat()} is in the future")
    store = ctx.store()
    if node not in store.nodes():
        raise ConfigError(f"no agent is registered as {node!r}")
    what = f"every change set since {since.isoformat()}" if since is not None else f"the last {last} change set(s)"
    confirm(f"undo {what} on {node}?", force)
    name = store.request_undo(node, {"last": last, "since": since.isoformat() if since else None,
                                     "by": who(), "created": time.time(), "state": "pending"})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        request = store.undo_requests(node).get(name) or {}
        if request.get("state") in ("done", "failed"):
            break
        time.sleep(0.3)
    else:
        raise RolloutError(f"{node} did not carry out undo request {name} within {timeout:g}s (it still may)")
    if as_json:
        emit_json({"request": name, **request})
    elif request["state"] == "done":
        for report in request["result"]:
            say(f"{node}: change set {report['change_id']} ({report['description']}): {report['status']}")
    if request["state"] == "failed":
        raise RolloutError(f"{node} could not undo: {request.get('error')}")
