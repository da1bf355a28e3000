"""What an agent reports back and carries out for operators through ZooKeeper:
fleet-wide dry runs (``zkdeploy plan``), the central change history
(``zkdeploy history``) and undo requests (``zkdeploy undo --node``)."""

from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

from zkdeploy.agent.rollout import restart_tasks
from zkdeploy.errors import CoordinationError, PayloadError, RolloutAborted, ZkdeployError
from zkdeploy.journal import Executor, undo_last, undo_since
from zkdeploy.transfer.unpack import check_archive

if TYPE_CHECKING:
    from zkdeploy.agent.daemon import Agent

log = logging.getLogger(__name__)

#: plan requests older than this are ignored by agents that start later
PLAN_MAX_AGE = 3600.0


# -- plans (NoAction) --------------------------------------------------------------
def plan_service(agent: Agent, service: str, version: str) -> dict[str, Any]:
    """This node's exact list of changes for restarting ``service`` into ``version``.

    Runs the restart's own code path in NoAction mode.  Fetching and verifying
    the payload is allowed (it lands in the payload cache); nothing under the
    service's release or current paths, no service process and no journal
    entry changes.
    """
    svc = agent._services()[service]
    releases = agent.releases[service]
    old = releases.current_version()
    out: dict[str, Any] = {"service": service, "from": old, "to": version, "actions": [], "error": None}
    if old == version and svc.running():
        return out
    release = agent._release(service, version)
    if release is None:
        out["error"] = f"{service}@{version} is not staged"
        return out
    try:
        if not releases.has(version):
            payload = releases.payload_path(version)
            if not payload.exists():
                agent.transport.fetch(release, payload)
            check_archive(payload)
    except PayloadError as exc:
        out["error"] = str(exc)
        return out
    executor = Executor(agent.journal, registry=agent.registry, noaction=True)
    with executor.change_set(f"{service} {old or '-'} -> {version}") as cs:
        restart_tasks(cs, svc, releases, old, version, svc.running())
    out["actions"] = [{"kind": p.kind, "description": p.description, "undoable": p.undoable, "params": p.params}
                      for p in executor.plan]
    return out


def answer_plans(agent: Agent, answered: set[str]) -> None:
    """Answer every plan request that concerns this node and is not answered yet."""
    store = agent.store
    for name in store.plan_requests():
        if name in answered:
            continue
        answered.add(name)
        request = store.plan_request(name)
        if not request or time.time() - request.get("created", 0) > PLAN_MAX_AGE:
            continue
        wanted = [t for t in request.get("targets", []) if t["service"] in agent._services()]
        if not wanted or store.has_answered(name, agent.node):
            continue
        services = []
        for target in wanted:
            try:
                services.append(plan_service(agent, target["service"], target["version"]))
            except ZkdeployError as exc:
                services.append({"service": target["service"], "to": target["version"], "actions": [],
                                 "error": str(exc)})
        store.answer_plan(name, agent.node, {"node": agent.node, "at": time.time(),
                                             "data_dir": str(agent.data), "services": services})
        log.info("answered plan request %s: %d action(s)", name, sum(len(s["actions"]) for s in services))


# -- history ------------------------------------------------------------------------
def push_history(agent: Agent, change_id: int) -> None:
    """Report one live change set to the central history (best effort: the journal is the record)."""
    try:
        change = agent.journal.get_change(change_id)
        agent.store.record_history({
            "node": agent.node, "change_id": change.id, "description": change.description,
            "deploy_id": change.deploy_id, "status": change.status, "created": change.created,
            "finished": change.finished,
            "services": sorted({t.execute.params.get("service") for t in change.tasks
                                if t.execute.params.get("service")}),
            "tasks": [t.execute.description for t in change.tasks],
        })
    except ZkdeployError as exc:
        log.warning("could not report change set %d to the history: %s", change_id, exc)


# -- undo requests ---------------------------------------------------------------------
def serve_undo_requests(agent: Agent) -> None:
    """Carry out pending undo requests for this node, each under the quorum rules."""
    store = agent.store
    for name, request in sorted(store.undo_requests(agent.node).items()):
        if not request or request.get("state") != "pending":
            continue
        try:
            result = _undo(agent, request)
            request.update(state="done", result=result, finished=time.time())
        except ZkdeployError as exc:
            log.error("undo request %s failed: %s", name, exc)
            request.update(state="failed", error=str(exc), finished=time.time())
        store.update_undo_request(agent.node, name, request)
        for report in request.get("result") or []:
            push_history(agent, report["change_id"])


def _select(agent: Agent, request: dict[str, Any], dry_run: bool) -> list[Any]:
    if request.get("last"):
        return undo_last(agent.journal, agent.registry, int(request["last"]), dry_run=dry_run)
    return undo_since(agent.journal, agent.registry, datetime.fromisoformat(request["since"]), dry_run=dry_run)


def _undo(agent: Agent, request: dict[str, Any]) -> list[dict[str, Any]]:
    """Take a restart slot for every service the undo touches, undo, publish what now runs."""
    planned = _select(agent, request, dry_run=True)
    touched = {agent.journal.get_change(r.change_id).tasks[0].execute.params.get("service") for r in planned}
    services = sorted(touched & set(agent._services()))
    try:
        with agent.holding_slots(services, "undo"):
            reports = _select(agent, request, dry_run=False)
    except RolloutAborted as exc:
        raise CoordinationError(f"undo abandoned: {exc}") from None
    log.info("undo request carried out: %s", ", ".join(f"{r.change_id} {r.status}" for r in reports))
    return [r.to_dict() for r in reports]
