"""What a live view shows at one moment: a Frame, built from one look at the fleet (fleet_status).

Per service (or per deploy followed): the nodes that run the target version
out of the nodes concerned, the deploy's state, when it began (and ended),
what the rollout waits for in plain words, and each node that holds it back
with its reason (absent, failed, fetching, waiting for quorum, ...).  Pure
data, built without I/O from what ``fleet_status`` returned, so that the
three ways of showing it (zkdeploy.cli.live) agree.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from zkdeploy.model import ONLINE, OPEN_DEPLOY_STATES, PENDING, DeployEntry

#: the state of a service row that follows no deploy
IDLE = "idle"
#: the state shown for a pending deploy that made no progress for its progress_deadline
STALLED = "stalled"
#: per-node reasons shown under a service at most (the rest are counted)
MAX_REASONS = 8


class Holding(NamedTuple):
    """A node that is not yet online at the target, and why; ``severe``: failed, absent or not online."""

    node: str
    reason: str
    severe: bool


@dataclass(frozen=True)
class Row:
    """One service's rollout: ``done`` of the ``total`` nodes concerned run ``target`` and are online."""

    service: str
    target: str | None
    deploy: str | None
    state: str
    done: int
    total: int
    started: float | None
    ended: float | None
    waiting_for: str
    #: each node that is not yet online at the target, with its reason, the most telling first
    holding: tuple[Holding, ...] = ()
    more: int = 0  # nodes not at the target left out of ``holding``

    @property
    def key(self) -> str:
        return f"{self.service}/{self.deploy or '-'}"

    @property
    def is_open(self) -> bool:
        return self.state not in {IDLE, *_CLOSED}


_CLOSED = {"done", "aborted", "rolled_back"}


@dataclass(frozen=True)
class Frame:
    """Everything one redraw shows."""

    at: float
    killswitch: str | None
    rows: tuple[Row, ...]


def _killswitch(status: Mapping[str, Any]) -> str | None:
    switch = status.get("killswitch")
    return f"{switch['message']} (by {switch['by']})" if switch else None


def _reason(node: str, st: Mapping[str, Any] | None, absent: Mapping[str, Any], failed: Mapping[str, str]) -> str:
    if node in failed:
        return f"failed its restart: {failed[node]}"
    if st is None:
        return "absent (its agent is not registered)" if node in absent else "not registered"
    text = f"{st.get('version') or '-'} {st.get('state')}"
    if st.get("phase") and st["phase"] != "idle":
        text += f", {st['phase']}"
    detail = st.get("detail") or ""
    if st.get("state") == ONLINE and detail in ("", f"online at {st.get('version')}"):  # at rest, nothing to add
        return text + ", not restarted yet"
    return text + (f": {detail}" if detail else "")


def _rank(node: str, st: Mapping[str, Any] | None, failed: Mapping[str, str]) -> tuple[int, str]:
    """Failed or absent first, then nodes at work (a phase other than idle), then the idle ones."""
    if node in failed or st is None or st.get("state") != ONLINE:
        return 0, node
    return (1 if st.get("phase") not in (None, "", "idle") else 2), node


def _progress(svc: Mapping[str, Any], target: str | None, scope: Sequence[str],
              failures: Sequence[Mapping[str, Any]] = (),
              rolling: bool = True) -> tuple[int, tuple[Holding, ...], int]:
    """(nodes of ``scope`` online at ``target``, the others with their reasons, how many were left out).
    Unless ``rolling`` (the service's rollout is the one under way), only the failed and absent
    nodes are named: the others wait for nothing of their own."""
    states: Mapping[str, Any] = svc.get("node_states", {})
    absent = {m["node"]: m for m in svc.get("absent", ())}
    failed = {str(f.get("node")): str(f.get("error", "")) for f in failures}
    done = [n for n in scope if n in states and states[n]["version"] == target and states[n]["state"] == ONLINE]
    others = sorted((n for n in scope if n not in done), key=lambda n: _rank(n, states.get(n), failed))
    if not rolling:
        others = [n for n in others if _rank(n, states.get(n), failed)[0] == 0]
    holding = tuple(Holding(n, _reason(n, states.get(n), absent, failed), _rank(n, states.get(n), failed)[0] == 0)
                    for n in others[:MAX_REASONS])
    return len(done), holding, max(0, len(others) - MAX_REASONS)


def _scope(svc: Mapping[str, Any], nodes: Sequence[str] = ()) -> list[str]:
    """The nodes a rollout of ``svc`` concerns: the deploy's selected ``nodes``, or every member."""
    if nodes:
        return sorted(nodes)
    return sorted(set(svc.get("node_states", {})) | {m["node"] for m in svc.get("absent", ())})


def _state(state: str, stalled_since: float | None) -> str:
    return STALLED if state == PENDING and stalled_since is not None else str(state)


def status_frame(status: Mapping[str, Any], at: float) -> Frame:
    """``status --watch``: one row per service.  A service with an open deploy is measured against
    the deploy's version; one without, against the version most of its nodes run (state idle)."""
    head = (status.get("active_deploy") or {}).get("name")
    queue: dict[str, Mapping[str, Any]] = {}
    for d in status.get("queue", ()):
        queue.setdefault(d["service"], d)
    rows = []
    for svc in status.get("services", ()):
        deploy = queue.get(svc["service"])
        scope = _scope(svc, deploy.get("nodes", ()) if deploy else ())
        if deploy is not None:
            target, state = deploy["version"], _state(deploy["state"], deploy.get("stalled_since"))
        else:
            counts = Counter(v["version"] for v in svc.get("versions", ()) for _ in range(v["nodes"]))
            target, state = (counts.most_common(1)[0][0] if counts else None), IDLE
        rolling = deploy is not None and deploy["name"] == head
        done, holding, more = _progress(svc, target, scope, deploy.get("failures", ()) if deploy else (), rolling)
        rows.append(Row(service=svc["service"], target=target, deploy=deploy["name"] if deploy else None,
                        state=state, done=done, total=len(scope), started=deploy["created"] if deploy else None,
                        ended=None, waiting_for=svc.get("waiting_for", ""), holding=holding, more=more))
    return Frame(at=at, killswitch=_killswitch(status), rows=tuple(rows))


def deploys_frame(status: Mapping[str, Any], entries: Sequence[DeployEntry], at: float) -> Frame:
    """``deploy --wait`` and ``rollout status``: one row per deploy followed, in the order given."""
    services = {svc["service"]: svc for svc in status.get("services", ())}
    head = (status.get("active_deploy") or {}).get("name")
    rows = []
    for entry in entries:
        svc = services.get(entry.service, {"service": entry.service})
        scope = _scope(svc, entry.nodes)
        done, holding, more = _progress(svc, entry.version, scope, entry.failures, entry.name == head)
        if entry.state not in OPEN_DEPLOY_STATES:
            why = f"{entry.state}" + (f": {entry.message}" if entry.message else "")
            holding, more = (), 0
        else:  # the service's explanation (its first open deploy: this one, or the one it waits behind)
            why = str(svc.get("waiting_for") or "queued")
        rows.append(Row(service=entry.service, target=entry.version, deploy=entry.name,
                        state=_state(entry.state, entry.stalled_since), done=done, total=len(scope),
                        started=entry.created, ended=entry.finished, waiting_for=why, holding=holding, more=more))
    return Frame(at=at, killswitch=_killswitch(status), rows=tuple(rows))


class Estimator:
    """How long a rollout has left, from the pace seen so far.

    The pace is the nodes that reached the target while this view watched,
    over the time it watched; before any did, the nodes at the target over
    the time since the deploy began.  None while nothing moved yet.
    """

    def __init__(self) -> None:
        self._first: dict[str, tuple[float, int]] = {}

    def left(self, row: Row, now: float) -> float | None:
        if row.total and row.done >= row.total:
            return 0.0
        if not row.is_open:
            return None
        first = self._first.get(row.key)
        if first is None or row.done < first[1]:  # first sight, or nodes went back: measure afresh
            first = self._first[row.key] = (now, row.done)
        since, done_then = first
        if row.done > done_then and now > since:
            pace = (row.done - done_then) / (now - since)
        elif row.done > 0 and row.started is not None and now > row.started:
            pace = row.done / (now - row.started)
        else:
            return None
        return (row.total - row.done) / pace


def span(seconds: float | None) -> str:
    """``42s``, ``3m05s``, ``2h10m``, ``3d04h``; ``?`` when unknown."""
    if seconds is None:
        return "?"
    whole = max(0, round(seconds))
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def elapsed(row: Row, now: float) -> float | None:
    """Seconds since the row's deploy began, up to when it ended; None without a deploy."""
    if row.started is None:
        return None
    return max(0.0, (row.ended if row.ended is not None else now) - row.started)


def row_dict(row: Row, now: float, left: float | None) -> dict[str, Any]:
    """A row as the watch views' ``--json`` lines carry it (seconds as numbers, rounded)."""
    gone = elapsed(row, now)
    return {"service": row.service, "deploy": row.deploy, "target": row.target, "state": row.state,
            "done": row.done, "total": row.total, "created": row.started, "finished": row.ended,
            "elapsed_seconds": None if gone is None else round(gone, 1),
            "left_seconds": None if left is None else round(left, 1),
            "waiting_for": row.waiting_for,
            "holding": [{"node": h.node, "reason": h.reason} for h in row.holding], "holding_more": row.more}
