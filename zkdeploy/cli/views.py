"""Read-only views of the fleet assembled from one pass over ZooKeeper."""

from __future__ import annotations

from collections import Counter
from typing import Any

from zkdeploy.coordination import Store
from zkdeploy.model import DeployEntry, Member
from zkdeploy.policy.progress import active_deploy, explain
from zkdeploy.policy.quorum import required_online


def deploy_dict(entry: DeployEntry) -> dict[str, Any]:
    return {
        "name": entry.name, "service": entry.service, "version": entry.version, "state": entry.state,
        "group": entry.group, "requested_by": entry.requested_by, "created": entry.created,
        "finished": entry.finished, "max_failures": entry.max_failures,
        "failures": list(entry.failures), "message": entry.message, "kind": entry.kind,
        "previous": entry.previous, "on_failure": entry.on_failure,
        "progress_deadline": entry.progress_deadline, "stalled_since": entry.stalled_since,
    }


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
    head = active_deploy(deploys)
    switch = store.killswitch()
    out: dict[str, Any] = {
        "killswitch": {"message": switch.message, "by": switch.by, "since": switch.since} if switch else None,
        "active_deploy": deploy_dict(head) if head else None,
        "queue": [deploy_dict(d) for d in deploys if d.is_open],
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
        elif open_for:
            waiting = f"queued behind {head.service}@{head.version} ({head.name})" if head else "queued"
        else:
            waiting = "no rollout under way"
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
        })
    return out


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
    for name, rec in present.items():
        services = {}
        for service in rec.services:
            entry = current.get(service, {}).get(name)
            services[service] = (
                {"version": entry.version, "state": entry.state, "phase": entry.phase} if entry else None)
        rows.append({"node": name, "present": True, "address": rec.address, "labels": rec.labels,
                     "agent_version": rec.agent_version, "services": services, "last_seen": seen.get(name)})
    for name in set(member_of) - set(present):
        rows.append({"node": name, "present": False, "address": None, "labels": {}, "agent_version": None,
                     "services": dict.fromkeys(sorted(member_of[name])), "last_seen": seen[name]})
    return sorted(rows, key=lambda r: r["node"])
