"""``zkdeploy scenario run FILE``: a deploy as a tested scenario (seed 003), from the operator's side.

The file is validated first (zkdeploy.config.scenario), its hosts are
discovered and counted (``select``/``expect``, the same code as ``deploy
--select/--expect``: refused with exit 2 and nothing queued when the count
is off), then one deploy entry is queued that carries the scenario's steps;
each agent runs them as journaled tasks with their checks.  The summary is
built only from what the agents report: their /current entries (state,
version, ``held: ...`` detail) and the central history records they push
after each change set, which carry each checked step's result.  It is green
only when every discovered host passed every step (or was already at the
version: a second run changes nothing on hosts that are done).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import click

from zkdeploy.cli import discovery_cmd
from zkdeploy.cli.commands import DEPLOYS_KEPT, make_entries, resolve_targets
from zkdeploy.cli.context import Ctx, handle_errors, json_option, pass_ctx, positive_seconds
from zkdeploy.cli.output import emit_json, say, table
from zkdeploy.cli.reports_cmd import show_plan
from zkdeploy.cli.waveplan import wave_plans
from zkdeploy.config.scenario import Scenario, load_scenario
from zkdeploy.config.schema import Catalog
from zkdeploy.coordination import Store
from zkdeploy.errors import RolloutError
from zkdeploy.model import DONE, FAILED, ONLINE, PENDING, CurrentEntry, DeployEntry
from zkdeploy.policy.discovery import answers

#: after the deploy ended, how long to wait for the agents' last reports (history, /current) to land
SETTLE_SECONDS = 15.0

# What a host's row says, and whether it counts as green.
DONE_HERE = "done"              # every checked step passed here, online at the version
ALREADY = "already done"        # at the version (and online) before the run: nothing was changed
HELD = "held"                   # a check failed: held out of the load balancer, counted as down
FAILED_HERE = "failed"          # the restart failed otherwise (rolled back)
NO_RESPONSE = "no response"     # discovered, absent from /current now
WAITING = "not done"            # never got there (the deploy halted or timed out first)
GREEN = (DONE_HERE, ALREADY)
#: the agent's phases (zkdeploy.agent.states) of a restart under way: its report is still to come
RESTARTING_PHASES = frozenset({"draining", "stopping", "switching", "starting", "checking", "rolling_back"})


@click.group("scenario")
def scenario_group() -> None:
    """Deploys as tested scenarios: discover, count, then checked steps on each host (docs/discovery.md)."""


def _discover(ctx: Ctx, file: str, select: str | None, expect: str | None
              ) -> tuple[Scenario, Store, Catalog, list[tuple[str, str]], dict[str, tuple[str, ...]], str | None]:
    """The scenario FILE validated, its release resolved and its hosts discovered and counted
    (--select/--expect override the file's): what `scenario run` and `scenario plan` start from."""
    spec = load_scenario(file)
    select = select if select is not None else spec.select
    expect = expect if expect is not None else (spec.expect if select == spec.select else None)
    store = ctx.store()
    catalog, resolved = resolve_targets(store, (spec.deploy,), f"scenario {spec.scenario}")
    chosen = discovery_cmd.discover_for_deploy(store, [resolved[0][0]], select, expect)
    return spec, store, catalog, resolved, chosen, select


@scenario_group.command("run")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--wait/--no-wait", default=True, show_default=True,
              help="Follow the hosts' steps and print the per-step, per-host summary when the deploy ended.")
@click.option("--timeout", type=float, default=3600.0, show_default=True,
              help="With --wait: give up waiting after this many seconds (the deploy goes on).")
@discovery_cmd.select_option
@discovery_cmd.expect_option
@json_option
@pass_ctx
@handle_errors
def scenario_run(ctx: Ctx, file: str, wait: bool, timeout: float, select: str | None, expect: str | None,
                 as_json: bool) -> None:
    """Run the scenario FILE: validate it, discover and count its hosts, queue its deploy, and report.

    --select/--expect override the file's `select`/`expect`.  Refused with
    exit 2, nothing queued, when the file is invalid (every bad key is
    listed), the release is not staged, or the selector's count is outside
    what is expected.  Each host runs the steps in order under the quorum
    rules; the first failed check holds that host out of the load balancer
    and halts the deploy.  Exit codes: 0 every host passed every step (or
    queued, with --no-wait), 2 refused, 3 ZooKeeper unreachable, 4 the
    deploy halted, a host is not green, or the wait timed out.
    """
    spec, store, catalog, resolved, chosen, select = _discover(ctx, file, select, expect)
    service, version = resolved[0]
    plans = wave_plans(store, catalog, [service], override=None, no_waves=False)
    entry = make_entries(store, catalog, resolved,
                         waves=discovery_cmd.restrict_waves(plans, chosen) if chosen else plans)[0]
    steps = tuple(step.model_dump(exclude_none=True) for step in spec.steps)
    entry = entry.evolve(scenario=spec.scenario, steps=steps, nodes=chosen.get(service, ()), select=select or "")
    current = store.current(service)
    hosts = tuple(chosen[service]) if chosen else tuple(sorted(current))
    before = {n: (current[n].version if n in current and current[n].state == ONLINE else None) for n in hosts}
    name = store.enqueue([entry])[0]
    store.prune_deploys(keep=DEPLOYS_KEPT)
    queued = {"name": name, "scenario": spec.scenario, "service": service, "version": version,
              "hosts": list(hosts), "select": select}
    if not wait:
        if as_json:
            emit_json({"queued": queued})
        else:
            say(f"queued {name}: scenario {spec.scenario}, {service}@{version} on {len(hosts)} host(s): "
                f"{', '.join(hosts)}")
        return
    if not as_json:
        say(f"scenario {spec.scenario}: {service}@{version} on {len(hosts)} host(s)"
            + (f" discovered with {select!r}" if select else "") + f": {', '.join(hosts)}; queued {name}")
    final = _follow(store, name, service, hosts, timeout, quiet=as_json)
    summary = summarize(final, steps, hosts, before, store.current(service),
                        [r for r in store.history() if r.get("deploy_id") == name])
    if as_json:
        emit_json({"queued": queued, **summary})
    else:
        print_summary(summary)
    if not summary["green"]:
        why = (f"deploy {name} {final.state}: {final.message}" if final.state != DONE
               else "not every host passed every step")
        raise RolloutError(f"scenario {spec.scenario} is not green: {why}")


@scenario_group.command("plan")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--timeout", type=float, default=60.0, show_default=True,
              help="Seconds to wait for every discovered host to answer.")
@discovery_cmd.select_option
@discovery_cmd.expect_option
@json_option
@pass_ctx
@handle_errors
def scenario_plan(ctx: Ctx, file: str, timeout: float, select: str | None, expect: str | None,
                  as_json: bool) -> None:
    """Dry-run the scenario FILE on the hosts it discovers: each host's exact changes, step by
    step (the checks are not run), as `zkdeploy plan` does for a plain deploy.

    Validated and discovered as `scenario run` does (same refusals, exit 2);
    nothing is queued and nothing changes on any host.  Identical plans are
    grouped.  Exit code 4 if some host did not answer within --timeout.
    """
    positive_seconds("--timeout", timeout)
    spec, store, _, resolved, chosen, select = _discover(ctx, file, select, expect)
    service = resolved[0][0]
    hosts = tuple(chosen[service]) if chosen else tuple(sorted(store.current(service)))
    if not as_json:
        say(f"scenario {spec.scenario}: {resolved[0][0]}@{resolved[0][1]} on {len(hosts)} host(s)"
            + (f" discovered with {select!r}" if select else "") + f": {', '.join(hosts)}")
    show_plan(store, resolved, timeout, as_json, steps=[step.model_dump(exclude_none=True) for step in spec.steps],
              nodes=hosts)


def _follow(store: Store, name: str, service: str, hosts: Sequence[str], timeout: float,
            quiet: bool) -> DeployEntry:
    """Wait until the deploy is no longer pending, printing each host's step as its agent reports it;
    then give the agents a moment to push their last reports.  RolloutError when ``timeout`` passed."""
    deadline = time.monotonic() + timeout
    seen: dict[str, str] = {}
    while True:
        entry = store.deploy(name)
        if entry is None:
            raise RolloutError(f"deploy {name} disappeared from the queue")
        entries = store.current(service)
        if not quiet:
            for node in hosts:
                e = entries.get(node)
                line = f"{e.phase}: {e.detail}" if e is not None else "absent"
                if seen.get(node) != line:
                    seen[node] = line
                    say(f"{time.strftime('%H:%M:%S')} {node:<12} {line}")
        if entry.state != PENDING:
            break
        if time.monotonic() > deadline:
            raise RolloutError(f"gave up waiting after {timeout:g}s; deploy {name} goes on "
                               f"(zkdeploy status shows it)")
        time.sleep(0.5)
    settle = time.monotonic() + SETTLE_SECONDS
    failed = {f.get("node") for f in entry.failures}
    while time.monotonic() < settle:  # a halting host reports the failure before its history and /current
        reported = {r.get("node") for r in store.history() if r.get("deploy_id") == name}
        entries = store.current(service)
        if failed <= reported and not any(e.phase in RESTARTING_PHASES for n, e in entries.items() if n in hosts):
            break
        time.sleep(0.3)
    return store.deploy(name) or entry


def summarize(entry: DeployEntry, steps: Sequence[Mapping[str, Any]], hosts: Sequence[str],
              before: Mapping[str, str | None], current: Mapping[str, CurrentEntry],
              records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The per-step, per-host result of deploy ``entry`` from what the agents reported: their /current
    entries and their history records for it (the newest per host counts).  ``before``: each host's
    version when the scenario was queued.  Green only when every host is done or already was."""
    latest: dict[str, Mapping[str, Any]] = {}
    for rec in sorted(records, key=lambda r: str(r.get("id", ""))):
        latest[str(rec.get("node"))] = rec
    failures = {str(f.get("node")): str(f.get("error", "")) for f in entry.failures}
    rows = []
    for node in hosts:
        now, record = current.get(node), latest.get(node)
        results = {r.get("step"): r for r in (record or {}).get("steps", ())}
        at_version = now is not None and now.version == entry.version and now.state == ONLINE
        if record is None and at_version and before.get(node) == entry.version:
            status, detail = ALREADY, f"already at {entry.version}: nothing changed"
        elif now is None:
            status, detail = NO_RESPONSE, "absent from /current (agent or host down)"
        elif now.state == FAILED and now.detail.startswith("held:"):
            status, detail = HELD, now.detail
        elif record is not None and at_version and all(
                results.get(s["name"], {}).get("ok") for s in steps if s.get("check", "none") != "none"):
            status, detail = DONE_HERE, f"online at {entry.version}"
        elif record is not None or node in failures:
            status, detail = FAILED_HERE, failures.get(node) or now.detail
        else:
            status, detail = WAITING, f"{now.phase}: {now.detail}" if now.detail else now.phase
        cells = []
        for step in steps:
            result: Mapping[str, Any] | None = results.get(step["name"])
            if status == ALREADY:
                cell = {"status": "already", "seen": f"at {entry.version} before the run"}
            elif result is not None:
                cell = {"status": "passed" if result.get("ok") else "FAILED", "seen": result.get("seen", "")}
            elif status == DONE_HERE:
                cell = {"status": "done", "seen": "no check"}
            else:
                cell = {"status": "-", "seen": ""}
            cells.append({"step": step["name"], "check": step.get("check", "none"), **cell})
        rows.append({"node": node, "status": status, "green": status in GREEN, "detail": detail,
                     "version": now.version if now else None, "steps": cells})
    got = answers(hosts, entry.version, current, failed=failures)
    green = entry.state == DONE and all(r["green"] for r in rows) and bool(rows)
    return {"deploy": entry.name, "scenario": entry.scenario, "service": entry.service, "version": entry.version,
            "state": str(entry.state), "message": entry.message, "green": green, "hosts": rows,
            "no_response": list(got.no_response), "unexpected": list(got.unexpected)}


def print_summary(summary: dict[str, Any]) -> None:
    """The per-step, per-host table, the failures with what their check saw, and one verdict line."""
    rows = summary["hosts"]
    names = [c["step"] for c in rows[0]["steps"]] if rows else []
    say("")
    table(f"scenario {summary['scenario']}: {summary['service']}@{summary['version']} "
          f"(deploy {summary['deploy']} {summary['state']})",
          ["HOST", *names, "RESULT"],
          [[r["node"], *[c["status"] for c in r["steps"]], r["status"]] for r in rows])
    for r in rows:
        for c in r["steps"]:
            if c["status"] == "FAILED":
                say(f"  {r['node']}: step {c['step']!r} ({c['check']}): {c['seen']}")
        if not r["green"] and not any(c["status"] == "FAILED" for c in r["steps"]):
            say(f"  {r['node']}: {r['status']}: {r['detail']}")
    if summary["no_response"]:
        say(f"discovered but never answered: {', '.join(summary['no_response'])}")
    if summary["unexpected"]:
        say(f"answered without being discovered: {', '.join(summary['unexpected'])}")
    done = sum(1 for r in rows if r["green"])
    if summary["green"]:
        say(f"GREEN: {done}/{len(rows)} host(s) passed every step")
    else:
        say(f"NOT GREEN: {done}/{len(rows)} host(s) passed every step; deploy {summary['deploy']} "
            f"{summary['state']}" + (f": {summary['message']}" if summary["message"] else ""))

