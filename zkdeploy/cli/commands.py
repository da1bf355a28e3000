"""Operator commands that queue rollouts: ``deploy`` and ``rollback`` (and what they share with ``plan`` and
``scenario run``: resolving targets, making deploy entries), and ``nodes forget``."""

from __future__ import annotations

import getpass
import socket
import sys
import time
import uuid
from typing import Any

import click

from zkdeploy.cli import discovery_cmd
from zkdeploy.cli.context import (
    EXIT_INTERRUPTED,
    Ctx,
    confirm,
    force_option,
    handle_errors,
    json_option,
    pass_ctx,
    positive_seconds,
)
from zkdeploy.cli.live import follow_deploys
from zkdeploy.cli.output import emit_json, error, say, warn
from zkdeploy.cli.views import deploy_dict
from zkdeploy.cli.waveplan import load_waves, wave_plans
from zkdeploy.config.loader import parse_catalog
from zkdeploy.config.schema import Catalog
from zkdeploy.coordination import Store
from zkdeploy.errors import ConfigError, ConflictError, DeployRefusedError, RolloutError
from zkdeploy.model import ABORTED, DONE, ONLINE, PENDING, DeployEntry
from zkdeploy.names import check_name
from zkdeploy.policy.discovery import parse_expect
from zkdeploy.policy.lifecycle import TERMINAL, Actor, can, transition
from zkdeploy.policy.order import dependency_order
from zkdeploy.policy.quorum import failure_budget, required_online
from zkdeploy.policy.selector import parse as parse_selector
from zkdeploy.policy.versions import most_popular

#: finished deploy entries kept in ZooKeeper (the oldest beyond are removed when a deploy is queued)
DEPLOYS_KEPT = 500


def who() -> str:
    return f"{getpass.getuser()}@{socket.gethostname()}"


# -- deploy ------------------------------------------------------------------------------
def _parse_target(spec: str) -> tuple[str, str | None]:
    service, _, version = spec.partition("@")
    check_name("service", service)
    if version:
        check_name("version", version)
    return service, version or None


def check_targets(targets: tuple[str, ...]) -> None:
    """Every ``SERVICE[@VERSION]`` argument is a safe name (UnsafeNameError, exit 2, otherwise);
    checked before connecting."""
    for spec in targets:
        _parse_target(spec)


def resolve_targets(store: Store, targets: tuple[str, ...], what: str) -> tuple[Catalog, list[tuple[str, str]]]:
    """The catalog, and ``SERVICE[@VERSION]`` arguments as (service, version) in dependency order;
    or DeployRefusedError.

    Refuses unknown services, unstaged versions, dependency cycles, services
    no node runs, and quorums that leave no node free to restart (figured on
    the service's members, absent ones included); every problem is listed at
    once.
    """
    data, _ = store.catalog()
    if data is None:
        raise DeployRefusedError("no catalog stored (zkdeploy services apply FILE)")
    catalog = parse_catalog(data, "catalog in ZooKeeper")
    wanted: dict[str, str | None] = {}
    for spec in targets:
        service, version = _parse_target(spec)
        if service not in catalog.services:
            raise DeployRefusedError(f"unknown service {service!r} (known: {', '.join(sorted(catalog.services))})")
        wanted[service] = version
    problems, out = [], []
    for service in dependency_order(catalog.graph(), wanted):
        releases = store.releases(service)
        version = wanted[service] or (max(releases.values(), key=lambda r: r.staged_at).version if releases else None)
        if version is None or version not in releases:
            problems.append(f"{service}@{version or '?'} is not staged (zkdeploy stage {service} VERSION PAYLOAD)")
            continue
        present = set(store.current(service))
        members = len(present | set(store.member_nodes(service)))  # absent members count too
        quorum = catalog.services[service].quorum
        if not present:
            problems.append(f"{service}: no node runs it (no agent has registered it in /current)")
        elif required_online(quorum, members) >= members:
            problems.append(f"{service}: quorum {quorum} needs {required_online(quorum, members)} of "
                            f"{members} member(s) online, so no node could ever restart")
        out.append((service, version))
    if problems:
        raise DeployRefusedError(f"{what} refused, nothing was queued:\n" + "\n".join(f"  - {p}" for p in problems))
    return catalog, out


@click.command("deploy")
@click.argument("targets", nargs=-1, required=True, metavar="SERVICE[@VERSION]...")
@click.option("--wait", is_flag=True, help="Show progress and return only when the rollout ended.")
@click.option("--timeout", type=float, default=3600.0, show_default=True,
              help="With --wait: give up waiting after this many seconds (the rollout goes on).")
@click.option("--max-failures", metavar="N|PCT",
              help="Nodes that may fail their restart before the deploy stops (default: the catalog's).")
@click.option("--waves", "waves_file", type=click.Path(dir_okay=False), metavar="FILE",
              help="Roll in these waves (a YAML list of waves) instead of the catalog's.")
@click.option("--no-waves", is_flag=True, help="Ignore the catalog's waves: every node at once (quorum rules hold).")
@discovery_cmd.select_option
@discovery_cmd.expect_option
@json_option
@pass_ctx
@handle_errors
def deploy(ctx: Ctx, targets: tuple[str, ...], wait: bool, timeout: float, max_failures: str | None,
           waves_file: str | None, no_waves: bool, select: str | None, expect: str | None, as_json: bool) -> None:
    """Queue rollouts of SERVICE[@VERSION]... in dependency order.

    Without @VERSION the most recently staged version is deployed.  Refused
    (nothing queued) for an unknown service, an unstaged version, a
    dependency cycle, or a quorum that leaves no node free to restart.
    A service with `waves:` in the catalog (or --waves FILE) rolls in waves,
    resolved now against the labels of the nodes that run it; a selector that
    matches no node, or overlapping waves, refuse the deploy
    (docs/controlled-deployment.md).  With --select EXPR only the nodes it
    discovers (by facts, labels, classes) restart, and --expect N|MIN..MAX
    refuses the deploy when their count differs (docs/discovery.md).
    Exit codes: 0 done (or queued without --wait), 2 refused, 3 ZooKeeper
    unreachable, 4 the rollout halted, was aborted or timed out.
    """
    # every input is checked before connecting: a bad one exits 2 whether ZooKeeper answers or not
    check_targets(targets)
    if max_failures is not None:
        failure_budget(max_failures.strip(), 1)  # validates
    if waves_file and no_waves:
        raise ConfigError("give --waves FILE or --no-waves, not both")
    if expect is not None and select is None:
        raise DeployRefusedError("--expect needs --select EXPR (the set whose count it checks)")
    if select is not None:
        parse_selector(select)
    if expect is not None:
        parse_expect(expect)
    positive_seconds("--timeout", timeout)
    override = load_waves(waves_file) if waves_file else None
    store = ctx.store()
    catalog, resolved = resolve_targets(store, targets, "deploy")
    chosen = discovery_cmd.discover_for_deploy(store, [s for s, _ in resolved], select, expect)
    plans = wave_plans(store, catalog, [s for s, _ in resolved], override=override, no_waves=no_waves)
    entries = make_entries(store, catalog, resolved, max_failures=max_failures,
                           waves=discovery_cmd.restrict_waves(plans, chosen) if chosen else plans)
    if chosen and select is not None:  # only the discovered nodes restart for these deploys
        entries = [e.evolve(nodes=chosen[e.service], select=select) for e in entries]
        if not as_json:
            discovery_cmd.say_discovered(chosen, select)
    names = store.enqueue(entries)
    store.prune_deploys(keep=DEPLOYS_KEPT)
    _warn_killswitch(store)
    _report_queued(ctx, names, entries, wait, timeout, as_json)


def _warn_killswitch(store: Store) -> None:
    """Say on stderr that the killswitch is on: what was queued waits until it is off."""
    switch = store.killswitch()
    if switch is not None:
        warn(f"the killswitch is on ({switch.message}, by {switch.by}): queued, but no agent starts "
              f"until `zkdeploy killswitch off`")


def make_entries(store: Store, catalog: Catalog, targets: list[tuple[str, str]], *,
                 max_failures: str | None = None, kind: str = "deploy",
                 waves: dict[str, tuple[dict[str, Any], ...]] | None = None) -> list[DeployEntry]:
    """Deploy entries for resolved targets, with the catalog's failure policy, each
    service's current most popular version as the one to roll back to, and its
    resolved wave plan from ``waves`` (none: every node at once)."""
    group = uuid.uuid4().hex[:12]
    entries = []
    for service, version in targets:
        spec = catalog.services[service]
        online = [e.version for e in store.current(service).values() if e.state == ONLINE]
        entries.append(DeployEntry(
            service=service, version=version, group=group, requested_by=who(), created=time.time(),
            max_failures=_count_or_pct(max_failures) if max_failures is not None else spec.max_failures,
            previous=most_popular(online), on_failure=spec.on_failure,
            progress_deadline=spec.progress_deadline, kind=kind, waves=(waves or {}).get(service, ())))
    return entries


def _count_or_pct(text: str) -> int | str:
    return int(text) if text.strip().isdigit() else text


def _report_queued(ctx: Ctx, names: list[str], entries: list[DeployEntry], wait: bool, timeout: float,
                   as_json: bool) -> None:
    """Say what was queued; with ``wait``, follow it live (zkdeploy.cli.live) until no deploy of it is
    pending, then say how it ended: RolloutError (exit 4) unless every one is done."""
    queued = [{"name": n, "service": e.service, "version": e.version} for n, e in zip(names, entries, strict=True)]
    if not wait:
        if as_json:
            emit_json({"queued": queued})
        else:
            for q in queued:
                say(f"queued {q['name']}: {q['service']}@{q['version']}")
        return
    if not as_json:
        say("queued " + ", ".join(f"{q['service']}@{q['version']} ({q['name']})" for q in queued))
    try:  # only a pending deploy rolls on by itself: paused, halted or closed, the wait ends
        final, ended = follow_deploys(ctx.store(), names, title="zkdeploy deploy --wait (Ctrl-C stops watching)",
                                      timeout=timeout, interval=0.5, as_json=as_json,
                                      ended=lambda e: e.state != PENDING)
    except KeyboardInterrupt:
        if len(names) == 1:
            how = f"`zkdeploy rollout status {names[0]}`, stop it with `zkdeploy abort {names[0]}`"
        else:
            how = f"`zkdeploy rollout status DEPLOY` for each of {', '.join(names)}, or `zkdeploy deploys`"
        error(f"interrupted: stopped waiting; the rollout goes on. Follow it with {how}")
        sys.exit(EXIT_INTERRUPTED)
    if not ended:
        raise RolloutError(f"gave up waiting after {timeout:g}s; the rollout goes on "
                           f"(zkdeploy status shows it)")
    if as_json:
        emit_json({"queued": queued, "result": [deploy_dict(e) for e in final]}, one_line=True)
    bad = [e for e in final if e.state != DONE]
    if bad:
        raise RolloutError("rollout did not complete: " + "; ".join(
            f"{e.service}@{e.version} {e.state}{': ' + e.message if e.message else ''}" for e in bad))
    if not as_json:
        say("rollout complete: " + ", ".join(f"{e.service}@{e.version} done ({e.name})" for e in final))


@click.command("rollback")
@click.argument("service")
@click.option("--to", "version", help="The version to go back to (default: the one the last deploy replaced).")
@click.option("--wait", is_flag=True, help="Show progress and return only when the rollback ended.")
@click.option("--timeout", type=float, default=3600.0, show_default=True,
              help="With --wait: give up waiting after this many seconds (the rollback goes on).")
@force_option
@json_option
@pass_ctx
@handle_errors
def rollback(ctx: Ctx, service: str, version: str | None, wait: bool, timeout: float, force: bool,
             as_json: bool) -> None:
    """Roll SERVICE back, as a deploy of its own, under the same quorum rules.

    Open deploys of SERVICE are aborted first, after asking (--yes does not
    ask).  Without --to, the version the last finished deploy of SERVICE
    replaced is used.
    """
    check_name("service", service)
    if version is not None:
        check_name("version", version)
    positive_seconds("--timeout", timeout)
    store = ctx.store()
    if version is None:
        done = [d for d in store.deploys() if d.service == service and d.state in TERMINAL
                and d.previous and d.kind == "deploy"]
        if not done:
            raise DeployRefusedError(f"no earlier deploy of {service} says what it replaced; give --to VERSION")
        version = done[-1].previous
    catalog, targets = resolve_targets(store, (f"{service}@{version}",), "rollback")
    doomed = [e for e in store.deploys() if e.service == service and can(e, ABORTED, by=Actor.OPERATOR)]
    if doomed:
        confirm(f"roll {service} back to {version}: this aborts "
                f"{', '.join(f'{e.name} ({e.state})' for e in doomed)}. Go on?", force)
    for entry in doomed:
        store.update_deploy(transition(entry, ABORTED, by=Actor.OPERATOR, message=f"aborted by rollback ({who()})"))
    entries = make_entries(store, catalog, targets, kind="rollback")
    names = store.enqueue(entries)
    _warn_killswitch(store)
    _report_queued(ctx, names, entries, wait, timeout, as_json)


# -- nodes forget ---------------------------------------------------------------------------
@click.command("forget")
@click.argument("node")
@click.option("--service", "services", multiple=True, metavar="SERVICE",
              help="Forget NODE as a member of SERVICE only (repeatable; default: of every service).")
@force_option
@json_option
@pass_ctx
@handle_errors
def nodes_forget(ctx: Ctx, node: str, services: tuple[str, ...], force: bool, as_json: bool) -> None:
    """Remove NODE, which left for good, from the members of its services.

    A node that has registered a service stays its member, present or not:
    while it is absent it counts as down, and a percentage quorum is a share
    of the members, so an absent member can hold a rollout back.  Refused
    (exit 2) while NODE is present (its agent is registered): stop the agent
    first, or wait for its session to expire.  A forgotten node that comes
    back becomes a member again when it registers.
    """
    check_name("node", node)
    for service in services:
        check_name("service", service)
    store = ctx.store()
    if node in store.nodes():
        raise ConfigError(f"{node} is present (its agent is registered): only a node that left can be forgotten; "
                          f"stop its agent, or wait for its ZooKeeper session to expire")
    candidates = list(services) or store.member_services()
    of = [s for s in candidates if node in store.member_nodes(s)]
    if not of:
        raise ConfigError(f"{node} is not a member of {', '.join(candidates) if services else 'any service'}")
    confirm(f"forget {node} as a member of {', '.join(of)}? A percentage quorum will no longer count it", force)
    forgotten = []
    for service in of:
        try:
            if store.forget_member(service, node):
                forgotten.append(service)
        except ConflictError as exc:  # it registered meanwhile: it is present again
            raise ConfigError(f"{exc}" + (f" (already forgotten of {', '.join(forgotten)})" if forgotten else "")) \
                from None
    if as_json:
        emit_json({"node": node, "forgotten": forgotten})
    else:
        say(f"forgot {node} as a member of {', '.join(forgotten)}" if forgotten else f"{node}: nothing to forget")

