"""Read-only views of the fleet assembled from one pass over ZooKeeper."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping
from typing import Any

from zkdeploy.coordination import Store
from zkdeploy.model import PENDING, CurrentEntry, DeployEntry, Mark, Member, Pin
from zkdeploy.policy.marks import effective
from zkdeploy.policy.progress import active_deploy, blocked_by, explain
from zkdeploy.policy.quorum import required_online
from zkdeploy.policy.waves import advance, states


def deploy_dict(entry: DeployEntry) -> dict[str, Any]:
    return {
        "name": entry.name, "service": entry.service, "version": entry.version, "state": entry.state,
        "group": entry.group, "requested_by": entry.requested_by, "created": entry.created,
        "finished": entry.finished, "max_failures": entry.max_failures,
        "failures": list(entry.failures), "message": entry.message, "kind": entry.kind,
        "previous": entry.previous, "on_failure": entry.on_failure,
        "progress_deadline": entry.progress_deadline, "stalled_since": entry.stalled_since,
        "waves": [dict(w) for w in entry.waves], "wave": entry.wave, "wave_log": [dict(x) for x in entry.wave_log],
        "nodes": list(entry.nodes), "select": entry.select,
    }


def mark_dict(mark: Mark) -> dict[str, Any]:
    return {"service": mark.service, "version": mark.version, "mark": mark.mark, "by": mark.by, "at": mark.at,
            "why": mark.why}


def pin_dict(pin: Pin, now: float | None = None) -> dict[str, Any]:
    """A pin; ``active`` is False once its expiry passed (it no longer counts)."""
    return {"node": pin.node, "service": pin.service, "version": pin.version, "until": pin.until,
            "by": pin.by, "at": pin.at, "why": pin.why, "active": pin.active(time.time() if now is None else now)}


def waves_view(store: Store, head: DeployEntry, current: Mapping[str, CurrentEntry], marks: Mapping[str, Mark],
               pins: list[Pin], now: float | None = None) -> list[dict[str, Any]]:
    """Each wave of the active deploy ``head``: its gate, its nodes, how many run which version, and
    whether it is verified, open or waiting, with the reason for the wave that decides now.

    The reason is what zkdeploy.policy.waves.advance says on this snapshot,
    the same decision the agents make (nothing is written here): a step that
    is due is described as such; the agents take it at their next cycle.
    """
    now = time.time() if now is None else now
    if not head.waves:
        return []
    labels = {n: dict(r.labels) for n, r in store.nodes().items()}
    release = store.release(head.service, head.version)
    mark = marks.get(head.version)
    excused = {f["node"] for f in head.failures} | {
        p.node for p in pins if p.service == head.service and p.version != head.version and p.active(now)}
    moved, why = advance(head, current, labels, release.staged_at if release else 0.0,
                         mark.mark if mark else None, now=now, excused=excused)
    if head.state != PENDING:
        reason = f"the deploy is {head.state}"
    elif moved is not None:
        reason = f"due now: {why}"
    else:
        reason = why
    log = [dict(x) for x in head.wave_log] + [{} for _ in range(len(head.waves) - len(head.wave_log))]
    out = []
    for state in states(head, current, labels, reason):
        spec = head.waves[state.index]
        versions = Counter(current[n].version or "-" for n in state.nodes)
        out.append({
            "number": state.index + 1, "name": state.name, "select": spec.get("select", "*"),
            "nodes": list(state.nodes), "at_version": state.at_version,
            "versions": dict(sorted(versions.items())), "state": state.state, "reason": state.reason,
            "opened": log[state.index].get("opened"), "verified": log[state.index].get("verified"),
            "approved_by": log[state.index].get("approved_by"),
            "gate": {k: spec.get(k) for k in ("min_age", "soak", "approval", "require_good", "min_healthy_time",
                                              "canary") if spec.get(k)},
        })
    return out


def fleet_status(store: Store) -> dict[str, Any]:
    """Everything ``zkdeploy status`` shows, as plain data.

    Per service, ``members`` counts its known members (present or not) and
    ``absent`` lists those with no entry in /current, with when each was last
    seen: they count as down, and a percentage quorum (``required_online``)
    is figured on the members.
    """
    catalog, _ = store.catalog()
    services = sorted(set((catalog or {}).get("services", {})) | set(store.current_services())
                      | set(store.member_services()))
    deploys = store.deploys()
    specs = (catalog or {}).get("services", {})
    graph = {name: _deps(spec) for name, spec in specs.items()}
    head = active_deploy(deploys, graph)
    switch = store.killswitch()
    pins = store.pins()
    out: dict[str, Any] = {
        "killswitch": {"message": switch.message, "by": switch.by, "since": switch.since} if switch else None,
        "active_deploy": deploy_dict(head) if head else None,
        "queue": [deploy_dict(d) for d in deploys if d.is_open],
        "waves": [],
        "pins": [pin_dict(p) for p in sorted(pins, key=lambda p: (p.node, p.service))],
        "services": [],
    }
    for service in services:
        spec = (catalog or {}).get("services", {}).get(service, {})
        entries = store.current(service)
        members = store.members(service)
        known = set(members) | set(entries)  # a present node is a member even before its record is read
        quorum = spec.get("quorum")
        open_for = [d for d in deploys if d.is_open and d.service == service]
        target = open_for[0].version if open_for else None
        slots = store.slots(service)
        queue = store.queue(service)
        counts = Counter((e.version or "-", e.state) for e in entries.values())
        is_head = head is not None and head.service == service
        if is_head:
            waiting = explain(head, entries, quorum, slots, queue, switch.message if switch else None,
                              members=known)
        elif open_for and (blocker := blocked_by(open_for[0], deploys, graph)) is not None:
            waiting = (f"blocked: it depends on {blocker.service}, whose deploy {blocker.name} "
                       f"({blocker.service}@{blocker.version}) ended {blocker.state}")
        elif open_for:
            waiting = f"queued behind {head.service}@{head.version} ({head.name})" if head else "queued"
        else:
            waiting = "no rollout under way"
        marks = effective(store.marks(service).values())
        if is_head and head is not None:
            out["waves"] = waves_view(store, head, entries, marks, pins)
        staged = None
        releases = store.releases(service)
        if releases:
            newest = max(releases.values(), key=lambda r: r.staged_at)
            peers = store.peers(newest.info_hash) if newest.info_hash else {}
            staged = {"version": newest.version, "holders": len(store.holders(service, newest.version)),
                      "info_hash": newest.info_hash,
                      "swarm_download_rate": sum(int(p.get("download_rate") or 0) for p in peers.values()),
                      "swarm_peers": len(peers)}
        out["services"].append({
            "staged": staged,
            "service": service,
            "quorum": quorum,
            "required_online": required_online(quorum, len(known)) if quorum is not None and known else None,
            "nodes": len(entries),
            "members": len(known),
            "absent": [member_dict(m) for name, m in sorted(members.items()) if name not in entries],
            "target": target,
            "versions": [{"version": v, "state": s, "nodes": n} for (v, s), n in sorted(counts.items())],
            "restarting": sorted(slots),
            "restart_queue": queue,
            "waiting_for": waiting,
            "node_states": {n: {"version": e.version, "state": e.state, "phase": e.phase, "detail": e.detail}
                            for n, e in sorted(entries.items())},
            "marks": [mark_dict(m) for m in sorted(marks.values(), key=lambda m: m.version)],
            "pins": [pin_dict(p) for p in sorted(pins, key=lambda p: p.node) if p.service == service],
        })
    return out


def _deps(spec: Mapping[str, Any]) -> tuple[str, ...]:
    deps = spec.get("depends_on", ()) if isinstance(spec, Mapping) else ()
    return (deps,) if isinstance(deps, str) else tuple(deps)


def member_dict(member: Member) -> dict[str, Any]:
    return {"node": member.node, "first_seen": member.first_seen, "last_seen": member.last_seen}


def nodes_view(store: Store) -> list[dict[str, Any]]:
    """Every registered node (``present``) and every absent member of a service, by name.

    ``last_seen`` is when the node's latest session registered (the newest of
    its member records), None for a node that is a member of nothing.
    """
    rows = []
    current = {service: store.current(service) for service in store.current_services()}
    seen: dict[str, float] = {}
    member_of: dict[str, list[str]] = {}
    for service in store.member_services():
        for name, member in store.members(service).items():
            seen[name] = max(seen.get(name, 0.0), member.last_seen)
            member_of.setdefault(name, []).append(service)
    present = store.nodes()
    pins: dict[str, dict[str, Any]] = {}
    for pin in store.pins():
        pins.setdefault(pin.node, {})[pin.service] = pin_dict(pin)
    for name, rec in present.items():
        services = {}
        for service in rec.services:
            entry = current.get(service, {}).get(name)
            services[service] = (
                {"version": entry.version, "state": entry.state, "phase": entry.phase} if entry else None)
        rows.append({"node": name, "present": True, "address": rec.address, "labels": rec.labels,
                     "agent_version": rec.agent_version, "services": services, "last_seen": seen.get(name),
                     "pins": pins.get(name, {})})
    for name in set(member_of) - set(present):
        rows.append({"node": name, "present": False, "address": None, "labels": {}, "agent_version": None,
                     "services": dict.fromkeys(sorted(member_of[name])), "last_seen": seen[name],
                     "pins": pins.get(name, {})})
    return sorted(rows, key=lambda r: r["node"])
