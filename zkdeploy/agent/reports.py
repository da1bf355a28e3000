"""What an agent reports back and carries out for operators through ZooKeeper:
fleet-wide dry runs (``zkdeploy plan``), the central change history
(``zkdeploy history``) and undo requests (``zkdeploy undo --node``).

``Reports`` runs on its own thread, woken by the watches on plan and undo
requests, so a node that waits for quorum (on the cycle thread) still
answers plans, and an undo that waits for its slots holds back nothing else.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from zkdeploy.agent.host import Host
from zkdeploy.agent.metrics import Metrics
from zkdeploy.agent.payloads import Payloads
from zkdeploy.agent.presence import Presence
from zkdeploy.agent.restart import restart_tasks, scenario_tasks
from zkdeploy.agent.slots import hold_slots
from zkdeploy.coordination import Store
from zkdeploy.errors import CoordinationError, PayloadError, RolloutAborted, ZkdeployError
from zkdeploy.journal import Executor, undo_last, undo_since
from zkdeploy.model import STEP_ACTIONS
from zkdeploy.transfer.unpack import check_archive

log = logging.getLogger(__name__)

#: plan requests older than this are ignored by agents that start later
PLAN_MAX_AGE = 3600.0


def _is_target(target: Any) -> bool:
    """A plan request's target: a service, a version, and a scenario's steps if any (each a mapping
    with a ``name`` and a known ``do``, as ``zkdeploy.config.scenario`` validated them)."""
    if not (isinstance(target, dict) and isinstance(target.get("service"), str)
            and isinstance(target.get("version"), str)):
        return False
    steps = target.get("steps") or []
    return isinstance(steps, list) and all(
        isinstance(step, dict) and isinstance(step.get("name"), str) and step.get("do") in STEP_ACTIONS
        for step in steps)


class Reports:
    """Plans, history and undo requests of one node."""

    def __init__(self, store: Store, host: Host, presence: Presence, payloads: Payloads,
                 fetch: Callable[..., Any], stopping: threading.Event, metrics: Metrics | None = None) -> None:
        self.store = store
        self.metrics = metrics
        self.host = host
        self.presence = presence
        self.payloads = payloads
        self.fetch = fetch
        self.stopping = stopping
        self.wake = threading.Event()
        self._answered: set[str] = set()

    def run(self, interval: float) -> None:
        """The thread's loop: answer what is pending whenever a request arrives (or every ``interval``)."""
        def fire(*_: object) -> None:
            self.wake.set()

        self.store.watch_plan_requests(fire)
        self.store.watch_undo_requests(self.host.node, fire)
        while not self.stopping.is_set():
            self.wake.wait(interval)
            self.wake.clear()
            if not self.presence.registered or self.host.catalog is None or not self.store.connected:
                continue
            try:
                self.answer_plans()
                self.serve_undo_requests()
            except CoordinationError as exc:
                log.warning("reports: %s", exc)
            except Exception:  # one bad request must not end the thread; logged with its traceback
                log.exception("reports: failed")

    # -- plans (NoAction) --------------------------------------------------------------
    def plan_service(self, service: str, version: str, steps: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
        """This node's exact list of changes for restarting ``service`` into ``version`` (through a
        scenario's ``steps`` when there are some; their checks are not run).

        Runs the restart's own code path in NoAction mode.  Fetching and
        verifying the payload is allowed (it lands in the payload cache);
        nothing under the service's release or current paths, no service
        process and no journal entry changes.
        """
        svc = self.host.service(service)
        releases = self.host.releases[service]
        old = releases.current_version()
        out: dict[str, Any] = {"service": service, "from": old, "to": version, "actions": [], "error": None}
        running = self.host.running(svc)
        if old == version and running:
            return out
        release = self.payloads.release(service, version)
        if release is None:
            out["error"] = f"{service}@{version} is not staged"
            return out
        try:
            if not releases.has(version):
                payload = releases.payload_path(version)
                if not payload.exists():
                    self.fetch(release, payload)
                check_archive(payload)
        except PayloadError as exc:
            out["error"] = str(exc)
            return out
        executor = Executor(self.host.journal, registry=self.host.registry, noaction=True)
        with executor.change_set(f"{service} {old or '-'} -> {version}") as cs:
            if steps:
                scenario_tasks(cs, svc, releases, old, version, running, steps)
            else:
                restart_tasks(cs, svc, releases, old, version, running)
        out["actions"] = [{"kind": p.kind, "description": p.description, "undoable": p.undoable,
                           "params": p.params} for p in executor.plan]
        return out

    def answer_plans(self) -> None:
        """Answer every plan request that concerns this node and is not answered yet."""
        node, services = self.host.node, self.host.services()
        for name in self.store.plan_requests():
            if name in self._answered:
                continue
            self._answered.add(name)
            request = self.store.plan_request(name)
            targets = request.get("targets") if isinstance(request, dict) else None
            if not isinstance(targets, list) or not all(_is_target(t) for t in targets) \
                    or not isinstance(request, dict) or not isinstance(request.get("nodes") or [], list):
                log.error("plan request %s is malformed; ignored: %.200r", name, request)
                continue
            if time.time() - float(request.get("created") or 0) > PLAN_MAX_AGE:
                continue
            if request.get("nodes") and node not in request["nodes"]:
                continue  # a scenario's plan asks the hosts it discovered, and only them
            wanted = [t for t in targets if t["service"] in services]
            if not wanted or self.store.has_answered(name, node):
                continue
            answers = []
            for target in wanted:
                try:
                    answers.append(self.plan_service(target["service"], target["version"],
                                                     target.get("steps") or ()))
                except ZkdeployError as exc:
                    answers.append({"service": target["service"], "to": target["version"], "actions": [],
                                    "error": str(exc)})
            self.store.answer_plan(name, node, {"node": node, "at": time.time(), "data_dir": str(self.host.data),
                                                "services": answers})
            log.info("answered plan request %s: %d action(s)", name, sum(len(s["actions"]) for s in answers))

    # -- history ------------------------------------------------------------------------
    def push_history(self, change_id: int, steps: list[dict[str, Any]] | None = None) -> None:
        """Report one live change set to the central history (best effort: the journal is the record);
        ``steps``: a scenario's checked steps and their results (``zkdeploy scenario run`` reads them)."""
        try:
            change = self.host.journal.get_change(change_id)
            self.store.record_history({
                "node": self.host.node, "change_id": change.id, "description": change.description,
                "deploy_id": change.deploy_id, "status": change.status, "created": change.created,
                "finished": change.finished,
                "services": sorted({t.execute.params.get("service") for t in change.tasks
                                    if t.execute.params.get("service")}),
                "tasks": [t.execute.description for t in change.tasks],
                **({"steps": steps} if steps else {}),
            })
        except ZkdeployError as exc:
            log.warning("could not report change set %d to the history: %s", change_id, exc)

    # -- undo requests ---------------------------------------------------------------------
    def serve_undo_requests(self) -> None:
        """Carry out pending undo requests for this node, each under the quorum rules
        (not while the killswitch is on)."""
        pending = {name: r for name, r in sorted(self.store.undo_requests(self.host.node).items())
                   if isinstance(r, dict) and r.get("state") == "pending"}
        if not pending or self.store.killswitch() is not None:
            return
        for name, request in pending.items():
            try:
                result = self._undo(request)
                request.update(state="done", result=result, finished=time.time())
            except (ZkdeployError, KeyError, TypeError, ValueError) as exc:
                log.error("undo request %s failed: %s", name, exc)
                request.update(state="failed", error=str(exc) or type(exc).__name__, finished=time.time())
            self.store.update_undo_request(self.host.node, name, request)
            for report in request.get("result") or []:
                self.push_history(report["change_id"])

    def _select(self, request: dict[str, Any], dry_run: bool) -> list[Any]:
        journal, registry = self.host.journal, self.host.registry
        if request.get("last"):
            return undo_last(journal, registry, int(request["last"]), dry_run=dry_run)
        return undo_since(journal, registry, datetime.fromisoformat(request["since"]), dry_run=dry_run)

    def _undo(self, request: dict[str, Any]) -> list[dict[str, Any]]:
        """Take a restart slot for every service the undo touches, undo, publish what now runs."""
        planned = self._select(request, dry_run=True)
        ids = {r.change_id for r in planned}
        touched = {task.execute.params.get("service") for r in planned
                   for task in self.host.journal.get_change(r.change_id).tasks[:1]}
        # a change set that holds a service out (a failed scenario check) may have made no change:
        # its undo still lifts the hold, under the service's slot
        touched |= {s for s in self.host.services() if (hold := self.host.hold_of(s)) and hold.change_id in ids}
        services = {name: svc.spec.quorum for name, svc in sorted(self.host.services().items()) if name in touched}
        locks = [self.host.busy(s) for s in services]
        for lock in locks:
            lock.acquire()
        try:
            with hold_slots(self.store, self.presence, services, "undo", self._abort_reason), self.host.changing:
                reports = self._select(request, dry_run=False)
        except RolloutAborted as exc:
            raise CoordinationError(f"undo abandoned: {exc}") from None
        finally:
            for lock in locks:
                lock.release()
        log.info("undo request carried out: %s", ", ".join(f"{r.change_id} {r.status}" for r in reports))
        if self.metrics is not None:
            for report in reports:
                self.metrics.change_set_finished(report.status, "undo")
        return [r.to_dict() for r in reports]

    def _abort_reason(self) -> str | None:
        if self.stopping.is_set():
            return "agent is stopping"
        if self.store.killswitch() is not None:
            return "killswitch is on"
        return None
