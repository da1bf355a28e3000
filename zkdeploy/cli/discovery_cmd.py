"""Discovery from the command line: ``nodes --select EXPR`` and ``deploy --select EXPR --expect N``.

The selector language is zkdeploy.policy.selector's, read against each
present node's facts, labels, classes and service versions
(zkdeploy.policy.discovery.view).  A deploy discovers first and records the
set on its entries; when the count is not what ``--expect`` says, nothing is
queued (exit 2).
"""

from __future__ import annotations

from typing import Any

import click

from zkdeploy.cli.output import emit_json, say, table
from zkdeploy.coordination import Store
from zkdeploy.errors import DeployRefusedError
from zkdeploy.model import CurrentEntry, NodeRecord
from zkdeploy.policy.discovery import Expect, check_count, discover, parse_expect

select_option = click.option(
    "--select", "select", metavar="EXPR",
    help="Only the nodes this selector takes, by facts, labels and classes "
         "(e.g. \"os.family=debian and (env=prod or class=web) and cpus>=4\"); see docs/discovery.md.")
expect_option = click.option(
    "--expect", "expect", metavar="N|MIN..MAX",
    help="With --select: refuse (exit 2, nothing changed) unless the selector finds this many nodes.")


def _snapshot(store: Store) -> tuple[dict[str, NodeRecord], dict[str, dict[str, CurrentEntry]]]:
    return store.nodes(), {service: store.current(service) for service in store.current_services()}


def nodes_selected(store: Store, expr: str) -> list[dict[str, Any]]:
    """The present nodes ``expr`` takes, each with its labels and facts (for ``nodes --select``)."""
    nodes, current = _snapshot(store)
    found = discover(expr, nodes, current)
    return [{"node": n, "address": nodes[n].address, "labels": nodes[n].labels, "facts": nodes[n].facts,
             "fact_errors": list(nodes[n].fact_errors),
             "services": {s: current.get(s, {}).get(n) and current[s][n].version for s in nodes[n].services}}
            for n in found]


def print_selected(store: Store, expr: str, as_json: bool) -> None:
    """``zkdeploy nodes --select EXPR``: the matching nodes and their count."""
    rows = nodes_selected(store, expr)
    if as_json:
        emit_json({"select": expr, "count": len(rows), "nodes": rows})
        return
    table(None, ["NODE", "ADDRESS", "LABELS", "FACTS", "SERVICES"],
          [[r["node"], r["address"] or "-",
            ",".join(f"{k}={v}" for k, v in sorted(r["labels"].items())) or "-",
            " ".join(f"{k}={r['facts'][k]}" for k in ("os.name", "cpus", "memory_mb") if k in r["facts"])
            + (f" ({len(r['fact_errors'])} fact source(s) failed)" if r["fact_errors"] else ""),
            "  ".join(f"{s}={v or '?'}" for s, v in sorted(r["services"].items()))] for r in rows])
    say(f"{len(rows)} node(s) match {expr!r}")


def discover_for_deploy(store: Store, services: list[str], expr: str | None,
                        expect_text: str | None) -> dict[str, tuple[str, ...]]:
    """The discovered nodes that run each of ``services`` ({} without ``expr``).

    DeployRefusedError (exit 2; nothing is written) when the selector matches
    no node, when its count is outside ``--expect``, or when a service has
    no discovered node that runs it.
    """
    if expr is None:
        if expect_text is not None:
            raise DeployRefusedError("--expect needs --select EXPR (the set whose count it checks)")
        return {}
    expect: Expect | None = parse_expect(expect_text) if expect_text is not None else None
    nodes, current = _snapshot(store)
    found = discover(expr, nodes, current)
    check_count(expr, found, expect)
    out: dict[str, tuple[str, ...]] = {}
    problems = []
    for service in services:
        runs = tuple(n for n in found if n in current.get(service, {}) or service in nodes[n].services)
        if not runs:
            problems.append(f"no node that --select {expr!r} found runs {service}")
        out[service] = runs
    if problems:
        raise DeployRefusedError("deploy refused, nothing was queued:\n" + "\n".join(f"  - {p}" for p in problems))
    return out


def restrict_waves(plans: dict[str, tuple[dict[str, Any], ...]],
                   chosen: dict[str, tuple[str, ...]]) -> dict[str, tuple[dict[str, Any], ...]]:
    """Each service's wave plan cut down to its discovered nodes; waves left empty are dropped."""
    out = dict(plans)
    for service, nodes in chosen.items():
        waves = [{**w, "nodes": [n for n in w.get("nodes", ()) if n in nodes]} for w in plans.get(service, ())]
        out[service] = tuple(w for w in waves if w["nodes"])
    return out


def say_discovered(chosen: dict[str, tuple[str, ...]], expr: str) -> None:
    nodes = sorted({n for ns in chosen.values() for n in ns})
    say(f"discovered {len(nodes)} node(s) with {expr!r}: {', '.join(nodes)}")
