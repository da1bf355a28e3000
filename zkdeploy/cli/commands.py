"""Operator commands that write intent: services, stage, deploy, abort/resume, killswitch, nodes forget."""

from __future__ import annotations

import contextlib
import getpass
import json
import shutil
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import click

from zkdeploy.cli import discovery_cmd
from zkdeploy.cli.context import (
    EXIT_INTERRUPTED,
    Ctx,
    confirm,
    deploy_name as full_deploy_name,
    force_option,
    handle_errors,
    json_option,
    pass_ctx,
    positive_seconds,
)
from zkdeploy.cli.live import follow_deploys
from zkdeploy.cli.output import emit_json, error, say, table, warn
from zkdeploy.cli.security_cmd import release_signature
from zkdeploy.cli.seeding import seed_endpoint, seed_in_foreground
from zkdeploy.cli.views import deploy_dict
from zkdeploy.cli.waveplan import load_waves, wave_plans
from zkdeploy.config.loader import load_catalog, parse_catalog
from zkdeploy.config.schema import Catalog
from zkdeploy.coordination import Store
from zkdeploy.errors import ConfigError, ConflictError, DeployRefusedError, PayloadError, RolloutError
from zkdeploy.model import (
    ABORTED,
    DONE,
    HALTED,
    ONLINE,
    PAUSED,
    PENDING,
    DeployEntry,
    DeployState,
    Killswitch,
    Release,
)
from zkdeploy.names import check_name
from zkdeploy.policy.discovery import parse_expect
from zkdeploy.policy.lifecycle import TERMINAL, Actor, can, transition
from zkdeploy.policy.order import dependency_order
from zkdeploy.policy.quorum import failure_budget, required_online
from zkdeploy.policy.selector import parse as parse_selector
from zkdeploy.policy.versions import most_popular
from zkdeploy.signing import SIGNATURE_BLOB, load_private
from zkdeploy.transfer.fetch import is_url, open_origin, payload_digest
from zkdeploy.transfer.torrent import make_torrent
from zkdeploy.transfer.transport import TORRENT_BLOB
from zkdeploy.transfer.unpack import check_archive

#: finished deploy entries kept in ZooKeeper (the oldest beyond are removed when a deploy is queued)
DEPLOYS_KEPT = 500


def who() -> str:
    return f"{getpass.getuser()}@{socket.gethostname()}"


# -- services ------------------------------------------------------------------
@click.group("services")
def services_group() -> None:
    """Manage the fleet catalog of services (stored in ZooKeeper)."""


def _diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    lines = []
    old_s, new_s = old.get("services", {}), new.get("services", {})
    for name in sorted(set(old_s) | set(new_s)):
        if name not in old_s:
            lines.append(f"+ {name}")
        elif name not in new_s:
            lines.append(f"- {name}")
        elif old_s[name] != new_s[name]:
            keys = sorted(k for k in set(old_s[name]) | set(new_s[name]) if old_s[name].get(k) != new_s[name].get(k))
            for key in keys:
                before, after = json.dumps(old_s[name].get(key)), json.dumps(new_s[name].get(key))
                lines.append(f"~ {name}.{key}: {before} -> {after}")
    return lines


@services_group.command("apply")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--dry-run", is_flag=True, help="Validate and show the diff; store nothing.")
@force_option
@json_option
@pass_ctx
@handle_errors
def services_apply(ctx: Ctx, file: str, dry_run: bool, force: bool, as_json: bool) -> None:
    """Validate FILE, show what changes, and store it as the catalog.

    Every problem in FILE is reported at once, with its key.  The write is
    conditional: if someone else changed the catalog meanwhile, nothing is
    stored and you are asked to apply again.  Removing services asks first
    (--yes does not ask) when FILE empties the catalog or when agents still
    run a removed service (it is in /current): they would no longer be
    deployed, and a deploy of them is refused.
    """
    catalog = load_catalog(file)
    new = catalog.model_dump(mode="json", exclude_defaults=True)
    store = ctx.store()
    old, version = store.catalog()
    changes = _diff(old or {}, new)
    removed = sorted(set((old or {}).get("services", {})) - set(new.get("services", {})))
    running = {s: len(store.current(s)) for s in removed}
    running = {s: n for s, n in running.items() if n}
    risks = []
    if removed and not new.get("services"):
        risks.append(f"{file} has no service: this deletes the whole catalog ({len(removed)} service(s))")
    risks += [f"{s} is removed but {n} node(s) still run it (in /current)" for s, n in running.items()]
    for risk in risks:
        warn(risk)
    if risks and not dry_run:
        confirm("store this catalog?", force)
    if not dry_run and changes:
        store.put_catalog(new, version)
    if as_json:
        emit_json({"changes": changes, "stored": bool(changes) and not dry_run, "warnings": risks})
        return
    for line in changes or ["(no changes)"]:
        say(line)
    if changes:
        say("dry run: nothing stored" if dry_run else f"catalog stored ({len(new['services'])} services)")


@services_group.command("list")
@json_option
@pass_ctx
@handle_errors
def services_list(ctx: Ctx, as_json: bool) -> None:
    """List the services of the catalog with their quorum and dependencies."""
    data, _ = ctx.store().catalog()
    services = (data or {}).get("services", {})
    if as_json:
        emit_json(services)
        return
    if not services:
        say("no catalog stored (zkdeploy services apply FILE)")
        return
    table(None, ["SERVICE", "QUORUM", "DEPENDS ON", "HEALTH CHECKS", "KEEP"],
          [[name, s.get("quorum"), ", ".join(s.get("depends_on", [])) or "-",
            len(s.get("health_checks", [])), s.get("keep_releases", 3)] for name, s in sorted(services.items())])


# -- stage --------------------------------------------------------------------------
@click.command("stage")
@click.argument("service")
@click.argument("version")
@click.argument("payload")
@click.option("--no-torrent", is_flag=True, help="Agents fetch from the origin only (no swarm).")
@click.option("--seed-until", type=click.IntRange(1), metavar="N",
              help="Seed the payload from here until N hosts hold it (shows progress).")
@click.option("--listen", default="127.0.0.1:0", show_default=True, metavar="IP:PORT",
              help="With --seed-until: where this seeder listens (an address the agents reach).")
@click.option("--seed-timeout", type=float, default=3600.0, show_default=True,
              help="With --seed-until: give up after this many seconds (exit 5).")
@click.option("--sign", "sign_key", metavar="KEYFILE", type=click.Path(exists=True, dir_okay=False),
              help="Sign the release record with this key (zkdeploy keys generate).")
@json_option
@pass_ctx
@handle_errors
def stage(ctx: Ctx, service: str, version: str, payload: str, no_torrent: bool, seed_until: int | None,
          listen: str, seed_timeout: float, sign_key: str | None, as_json: bool) -> None:
    """Stage VERSION of SERVICE: hash PAYLOAD, make its torrent, record the release.

    PAYLOAD is a tar archive (optionally compressed), given as a path that the
    agents can read or as an http(s) URL: that is the origin, the fallback
    when the swarm stalls.  Agents that run SERVICE fetch it from their peers
    (ZooKeeper is the tracker), verify its SHA-256 and unpack it beside the
    running release.  The first copy comes from this command with
    --seed-until N, or from a `zkdeploy seed` daemon on the origin's host; when
    nobody seeds, one agent is elected to fetch it from the origin and the
    others get it from that agent.
    """
    check_name("service", service)
    check_name("version", version)
    if seed_until:
        seed_endpoint(listen)  # a bad --listen refuses before anything is staged
        positive_seconds("--seed-timeout", seed_timeout)
    if not is_url(payload) and not Path(payload).is_file():
        raise ConfigError(f"payload {payload} does not exist or is not a file")
    key = load_private(sign_key) if sign_key else None
    store = ctx.store()
    catalog, _ = store.catalog()
    if service not in (catalog or {}).get("services", {}):
        raise ConfigError(f"unknown service {service!r}: it is not in the catalog (zkdeploy services apply)")
    staged = store.release(service, version)
    with _local_copy(payload) as path:
        check_archive(path)
        if no_torrent:
            sha, size = payload_digest(path)
            meta = None
        else:
            meta = make_torrent(path)
            if meta.sha256 is None:  # make_torrent records the payload's SHA-256 as it hashes the pieces
                raise PayloadError(f"{payload}: no SHA-256 was recorded for its torrent")
            sha, size = meta.sha256, meta.size
        origin = payload if is_url(payload) else str(Path(payload).resolve())
        release = Release(service=service, version=version, sha256=sha, size=size, origin=origin,
                          staged_by=who(), staged_at=time.time(), info_hash=meta.info_hash if meta else None)
        blobs = {TORRENT_BLOB: meta.metainfo} if meta else {}
        if key is not None:
            blobs[SIGNATURE_BLOB] = release_signature(store, key, service, version, sha, size)
        if staged is not None and staged.sha256 != sha:
            raise ConfigError(f"{service}@{version} is already staged with a different payload (sha256 "
                              f"{staged.sha256[:12]}..., this one {sha[:12]}...); stage a new version instead; "
                              f"nothing was changed")
        try:
            store.put_release(release, blobs or None)
        except ConflictError as exc:  # staged meanwhile by someone else: refused, nothing of ours was written
            raise ConfigError(f"{exc}; nothing was changed") from None
        if as_json:
            emit_json({"service": service, "version": version, "sha256": sha, "size": size, "origin": origin,
                       "info_hash": release.info_hash})
        else:
            say(f"staged {service}@{version}: {size} bytes, sha256 {sha}"
                + (f", info-hash {meta.info_hash}" if meta else ""))
        if seed_until and meta is not None:
            seed_in_foreground(store, release, meta, path, seed_until, listen, seed_timeout, quiet=as_json)


@contextlib.contextmanager
def _local_copy(payload: str) -> Iterator[Path]:
    """The payload as a local file: the path itself, or a temporary download of a URL."""
    if not is_url(payload):
        path = Path(payload)
        if not path.is_file():
            raise ConfigError(f"payload {payload} does not exist or is not a file")
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="zkdeploy-stage-") as tmp:
        local = Path(tmp) / (Path(urlparse(payload).path).name or "payload")
        try:
            with open_origin(payload, 30.0) as src, open(local, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
        except OSError as exc:
            raise PayloadError(f"cannot fetch payload from {payload}: {exc}") from None
        yield local


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


# -- abort / resume / killswitch -------------------------------------------------------------
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
    """The killswitch as ``killswitch show --json`` prints it: on, message, by, since (ISO 8601 UTC)."""
    if switch is None:
        return {"on": False, "message": None, "by": None, "since": None}
    return {"on": True, "message": switch.message, "by": switch.by, "since": _iso(switch.since)}


def _iso(when: float) -> str:
    return datetime.fromtimestamp(when, UTC).isoformat(timespec="seconds")


def _when(when: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when))


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
