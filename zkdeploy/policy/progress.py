"""Where a rollout stands: the active deploy, completion, and what it waits for."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence

from zkdeploy.model import ABORTED, HALTED, ONLINE, PAUSED, PENDING, ROLLED_BACK, CurrentEntry, DeployEntry
from zkdeploy.policy.quorum import figures, required_online


def active_deploy(deploys: Sequence[DeployEntry],
                  graph: Mapping[str, Iterable[str]] | None = None) -> DeployEntry | None:
    """The head of the queue: the oldest open entry (pending, paused or halted) that is not blocked.

    With the catalog's dependency ``graph``, an entry is blocked while an
    earlier entry of the same request (``group``) for a service it depends on,
    directly or not, ended short of done (aborted or rolled back): it waits,
    and the entries after it (a rollback, another request) go first.  A
    halted or paused entry is open: it stays the head and holds back
    everything after it, as before.
    """
    ordered = sorted(deploys, key=lambda e: e.name)
    for entry in ordered:
        if entry.is_open and blocked_by(entry, ordered, graph) is None:
            return entry
    return None


def blocked_by(entry: DeployEntry, deploys: Sequence[DeployEntry],
               graph: Mapping[str, Iterable[str]] | None) -> DeployEntry | None:
    """The earlier entry of ``entry``'s request, for a service it depends on, that ended short of
    done (so ``entry`` must wait), or None."""
    if not graph or not entry.group:
        return None
    needs: set[str] = set()
    todo = list(graph.get(entry.service, ()))
    while todo:
        service = todo.pop()
        if service not in needs:
            needs.add(service)
            todo.extend(graph.get(service, ()))
    for other in deploys:
        if other.name < entry.name and other.group == entry.group and other.service in needs \
                and other.state in (ABORTED, ROLLED_BACK):
            return other
    return None


def is_complete(entries: Mapping[str, CurrentEntry], version: str, slots: Sequence[str] = (),
                excused: Collection[str] = ()) -> bool:
    """True when at least one node runs the service and every present node is online at ``version``.

    ``excused`` nodes (those whose restart failed within the deploy's failure
    budget and rolled back) are not waited for.
    """
    if not entries or slots:
        return False
    waited = [e for n, e in entries.items() if n not in excused]
    return bool(waited) and all(e.state == ONLINE and e.version == version for e in waited)


def explain(deploy: DeployEntry | None, entries: Mapping[str, CurrentEntry], quorum: int | str | None,
            slots: Sequence[str], queue: Sequence[str], killswitch: str | None = None,
            members: Collection[str] = ()) -> str:
    """One sentence, in plain words, about what the rollout of ``deploy`` is waiting for.

    ``members`` are the service's known members, present or not: a
    percentage quorum is figured on them, and absent ones are named as such.
    """
    if deploy is None:
        return "no rollout under way"
    if killswitch is not None:
        return f"stopped by the killswitch: {killswitch}"
    if deploy.state == HALTED:
        return f"halted: {deploy.message or 'too many failures'} (resume or abort it)"
    if deploy.state == PAUSED:
        return f"paused ({deploy.message})" if deploy.message else "paused"
    if deploy.state != PENDING:
        return deploy.state
    if deploy.stalled_since is not None and deploy.message:
        return deploy.message
    absent = sorted(set(members) - set(entries))
    if not entries:
        return f"no member is present (absent: {', '.join(absent[:5])})" if absent else "no node runs this service"
    at_target = [n for n, e in entries.items() if e.version == deploy.version and e.state == ONLINE]
    if len(at_target) == len(entries):
        return "complete"
    online = sum(1 for e in entries.values() if e.state == ONLINE)
    size = len(entries) + len(absent)
    if quorum is not None:
        said = figures(online, size, len(absent), required_online(quorum, size))
    else:
        said = f"{online} online" + (f" of {size} members ({len(absent)} absent)" if absent else "")
    if slots:
        return f"restarting {', '.join(sorted(slots))}; {said}"
    waiting = [e for e in entries.values() if e.phase == "waiting" and e.detail.startswith("waiting for quorum")]
    if waiting:
        return waiting[0].detail
    fetching = [n for n, e in entries.items() if e.phase == "fetching"]
    if fetching:
        return f"fetching the payload on {len(fetching)} node(s): {', '.join(sorted(fetching)[:5])}"
    failed = [n for n, e in entries.items() if e.state != ONLINE and e.version != deploy.version]
    if failed and not queue:
        return f"waiting for {', '.join(sorted(failed)[:5])} ({len(failed)} node(s) not online)"
    if queue:
        return f"{len(queue)} node(s) queued to restart; {said}"
    return f"{len(at_target)}/{len(entries)} nodes at {deploy.version}"
