"""The decision cycle: observe a snapshot, decide, act.  One step never waits for the fleet.

Each run reads what it needs (catalog, killswitch, the open deploy entries),
decides for each service of this node whether it should restart and into
what (the active deploy's version, or the most popular version after the
node came back), and takes one step towards it: join the restart queue, poll
it, or (once the slot is held) run the restart.  Waiting for quorum is a
poll on every wake-up, so the agent answers plans and undo requests (on
their own thread) and notices a paused deploy or the killswitch at once.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from zkdeploy.agent import deploys, recovery
from zkdeploy.agent.host import Host
from zkdeploy.agent.payloads import Payloads
from zkdeploy.agent.presence import Presence
from zkdeploy.agent.reports import Reports
from zkdeploy.agent.restart import Restart
from zkdeploy.agent.slots import SlotRequest, hold_slots
from zkdeploy.agent.states import Phase
from zkdeploy.config.loader import parse_catalog
from zkdeploy.coordination import Store
from zkdeploy.errors import ConfigError, CoordinationError
from zkdeploy.model import FAILED, ONLINE, PENDING, STOPPED, DeployEntry
from zkdeploy.policy.progress import active_deploy
from zkdeploy.policy.versions import most_popular
from zkdeploy.runner.service import HostService

log = logging.getLogger(__name__)


@dataclass
class Pending:
    """A restart this node has asked for and not yet made."""

    request: SlotRequest
    target: str
    deploy: DeployEntry | None


class Cycle:
    """The decision cycle of one node.  ``run_once`` is one step; the agent calls it on every wake-up."""

    def __init__(self, store: Store, host: Host, presence: Presence, payloads: Payloads, reports: Reports,
                 wake: threading.Event, stopping: threading.Event, *, deferred_recovery: bool = False) -> None:
        self.store = store
        self.host = host
        self.presence = presence
        self.payloads = payloads
        self.reports = reports
        self.wake = wake
        self.stopping = stopping
        self.node = host.node
        self.deferred_recovery = deferred_recovery
        self.pending: dict[str, Pending] = {}
        self.converge: dict[str, str] = {}
        self._failed: set[tuple[str, str]] = set()  # (deploy, service) whose release failed here
        self._closed: set[str] = set()              # deploy entries seen closed (never read again)
        self._catalog_version = -2
        self._watching = False
        self._watched_head: str | None = None
        self._last_summary = ""

    # -- one cycle ------------------------------------------------------------------
    def run_once(self) -> None:
        if not self.store.connected:
            self._summary(f"ZooKeeper session {self.store.state}: no new step")
            return
        self._ensure_watches()
        if not self._load_catalog():
            return
        if self.presence.register():
            self.payloads.announce_held(first=self.presence.registrations == 1)
            self._converge_on_return()
        if not self.presence.registered:
            return
        switch = self.store.killswitch()
        if switch is not None:
            self.cancel_all("killswitch is on")
            self._summary(f"killswitch on: {switch.message}")
            return
        if self.deferred_recovery:
            recovery.settle_registered(self.host, self.hold)
            self.deferred_recovery = False
        entries = self._open_deploys()
        head = active_deploy(entries)
        self._watch_head(head)
        services = self.host.services()
        self._want_payloads(entries, head, services)
        restarted = False
        for service, svc in services.items():
            restarted |= self._step(svc, self._desired(service, head))
        if head is not None and head.state == PENDING and (restarted or self._is_steward(head.service)):
            # Completion and stalls are judged by the node that just restarted, and each cycle by one
            # steward per service (the first present node by name), not by every node: a fleet-wide
            # read of /current per node per cycle would grow with the square of the fleet.
            deploys.maybe_complete(self.store, head)
            current = self.store.deploy(head.name)
            if current is not None and current.state == PENDING:
                self._watch_progress(current)
            head = current
        self._summary(self._describe(head))

    # -- what each service should do ------------------------------------------------------
    def _desired(self, service: str, head: DeployEntry | None) -> tuple[str, DeployEntry | None] | None:
        """The version ``service`` should restart into now, for which deploy; None to stay."""
        rec = self.presence.local[service]
        machine = self.presence.machines[service]
        if head is not None and head.service == service:
            self.converge.pop(service, None)  # the rollout brings this node to its target
            if head.state != PENDING or (head.name, service) in self._failed:
                return None
            if rec.version == head.version and rec.state == ONLINE:
                if machine.phase == Phase.STAGED:
                    machine.reset()
                return None
            return (head.version, head) if self.payloads.ready(service, head.version) else None
        target = self.converge.get(service)
        if target is None:
            return None
        if target == rec.version and rec.state != STOPPED:
            self.converge.pop(service)
            return None
        return (target, None) if self.payloads.ready(service, target) else None

    def _step(self, svc: HostService, want: tuple[str, DeployEntry | None] | None) -> bool:
        """One step towards ``want`` for ``svc``; True when a restart ran."""
        service = svc.name
        pending = self.pending.get(service)
        if pending is not None and (want is None or want[0] != pending.target
                                    or (want[1] and want[1].name) != (pending.deploy and pending.deploy.name)):
            self._cancel(service, "the rollout changed" if want is None else f"the target is now {want[0]}")
            pending = None
        if want is None:
            return False
        busy = self.host.busy(service)
        if not busy.acquire(blocking=False):
            if pending is not None:
                self._cancel(service, "an undo or recovery of this service is under way here")
            return False
        try:
            target, deploy = want
            try:
                if pending is None:
                    request = SlotRequest(self.store, self.presence, service, svc.spec.quorum, f"into {target}")
                    pending = self.pending[service] = Pending(request, target, deploy)
                    request.join()
                if not pending.request.poll(self.wake):
                    if deploy is not None and pending.request.reason.startswith("waiting for quorum"):
                        self._watch_progress(deploy)
                    return False
            except CoordinationError as exc:
                log.warning("%s: gave up waiting for a slot: %s", service, exc)
                self._cancel(service, str(exc))
                return False
            del self.pending[service]
            self._restart(svc, pending)
            return True
        finally:
            busy.release()

    def _cancel(self, service: str, reason: str) -> None:
        pending = self.pending.pop(service, None)
        if pending is None:
            return
        log.info("%s: not restarting: %s", service, reason)
        try:
            pending.request.cancel(reason)
        except CoordinationError as exc:
            log.warning("%s: leaving the restart queue: %s", service, exc)

    def cancel_all(self, reason: str) -> None:
        for service in list(self.pending):
            self._cancel(service, reason)

    def _restart(self, svc: HostService, pending: Pending) -> None:
        """Restart ``svc`` into the pending target; its slot is held and is given back here."""
        service, target, deploy = svc.name, pending.target, pending.deploy
        releases = self.host.releases[service]
        old = releases.current_version()
        restart = Restart(self.store, self.host, svc, self.presence.machines[service], target,
                          deploy_id=deploy.name if deploy else None,
                          on_failure=(lambda error: deploys.report_failure(self.store, self.node, deploy.name, error))
                          if deploy else None)
        try:
            outcome = restart.run(old, self.host.running(svc))
        finally:
            try:
                pending.request.release()
            except CoordinationError as exc:
                log.warning("%s: could not give the restart slot back: %s", service, exc)
        if outcome.change_id is not None:
            self.reports.push_history(outcome.change_id)
        if outcome.ok:
            self.presence.publish(service, version=target, state=ONLINE, detail=f"online at {target}", target="")
            log.info("%s: online at %s", service, target)
            return
        current = releases.current_version()
        healthy = outcome.healthy and self.host.probe(svc, current) is None
        self.presence.publish(service, version=current or "", state=ONLINE if healthy else FAILED,
                              detail=outcome.error, target="")
        if deploy is not None and not outcome.fenced:
            self._failed.add((deploy.name, service))  # a lost slot is retried; a bad release is not

    @contextlib.contextmanager
    def hold(self, services: list[str], why: str) -> Iterator[None]:
        """Hold a restart slot of each service for work outside a restart (crash recovery)."""
        quorums = {s: self.host.service(s).spec.quorum for s in services}
        for service in services:
            self.host.busy(service).acquire()
        try:
            with hold_slots(self.store, self.presence, quorums, why, self._stop_reason), self.host.changing:
                yield
        finally:
            for service in services:
                self.host.busy(service).release()

    def _stop_reason(self) -> str | None:
        if self.stopping.is_set():
            return "agent is stopping"
        if not self.store.connected:
            return f"ZooKeeper session {self.store.state}"
        if self.store.killswitch() is not None:
            return "killswitch is on"
        return None

    # -- convergence after a return ---------------------------------------------------------
    def _converge_on_return(self) -> None:
        """After (re)joining, note which services should move to the most popular version.

        A service that is down, or runs another version than the most popular
        one among the other online nodes, is restarted into it through the
        restart queue like any restart (a service that is down costs no
        quorum), unless a rollout of that service is under way.  Ties go to
        the most recently staged version (see policy.versions).
        """
        for service in self.host.services():
            rec = self.presence.local[service]
            others = [e for n, e in self.store.current(service).items() if n != self.node and e.state == ONLINE]
            releases = {v: r for v in self.store.staged_versions(service) if (r := self.payloads.release(service, v))}
            target = most_popular([e.version for e in others], {v: r.staged_at for v, r in releases.items()})
            target = target or rec.version
            if not target or (target == rec.version and rec.state != STOPPED):
                continue
            if target not in releases and not self.host.releases[service].has(target):
                log.warning("%s: most popular version %s is neither staged nor installed here", service, target)
                continue
            log.info("%s: %s at %s; the most popular version is %s: converging", service, rec.state,
                     rec.version or "-", target)
            self.converge[service] = target

    # -- reading the snapshot ----------------------------------------------------------------
    def _load_catalog(self) -> bool:
        data, version = self.store.catalog()
        if version == self._catalog_version:
            return self.host.catalog is not None
        self._catalog_version = version
        if data is None:
            log.warning("no catalog stored yet (zkdeploy services apply FILE)")
            self.host.catalog = None
            return False
        try:
            catalog = parse_catalog(data, "catalog in ZooKeeper")
        except ConfigError as exc:
            log.error("%s", exc)
            self.host.catalog = None
            return False
        self.host.catalog = catalog
        missing = [s for s in self.host.names if s not in catalog.services]
        if missing:
            log.warning("services not in the catalog (ignored): %s", ", ".join(missing))
        return True

    def _open_deploys(self) -> list[DeployEntry]:
        """The open deploy entries.  A closed entry never opens again, so once seen closed it is
        not read again: a cycle costs one read per open entry, not one per entry kept."""
        entries = self.store.deploys(skip=self._closed)
        self._closed.update(e.name for e in entries if not e.is_open)
        return [e for e in entries if e.is_open]

    def _want_payloads(self, entries: list[DeployEntry], head: DeployEntry | None,
                       services: dict[str, HostService]) -> None:
        """Tell the payload workers what each service will need: the active deploy's release first."""
        for service in services:
            versions = [head.version] if head is not None and head.service == service else []
            versions += [d.version for d in entries if d.service == service]
            if service in self.converge:
                versions.append(self.converge[service])
            newest = self.payloads.newest(service)
            if newest is not None:
                versions.append(newest)
            running = self.presence.local[service].version
            self.payloads.want(service, [v for v in versions if v != running])

    def _is_steward(self, service: str) -> bool:
        nodes = self.store.current_nodes(service)
        return bool(nodes) and min(nodes) == self.node

    def _watch_progress(self, head: DeployEntry) -> None:
        catalog = self.host.catalog
        spec = catalog.services.get(head.service) if catalog else None
        entry = self.store.deploy(head.name)
        if entry is not None and entry.state == PENDING:
            deploys.watch_progress(self.store, entry, spec.quorum if spec else None)

    # -- watches --------------------------------------------------------------------------------
    def _ensure_watches(self) -> None:
        if self._watching:
            return
        fire = (lambda *_: self.wake.set())
        self.store.watch_deploy_queue(fire)
        self.store.watch_killswitch(fire)
        self.store.watch_catalog(fire)
        for service in self.host.names:
            self.store.watch_releases(service, fire)
        self._watching = True

    def _watch_head(self, head: DeployEntry | None) -> None:
        if head is None or head.name == self._watched_head:
            return
        self._watched_head = name = head.name

        def on_change(data: bytes | None) -> bool | None:
            self.wake.set()
            return False if self._watched_head != name or data is None else None

        self.store.watch_deploy(name, on_change)

    # -- the summary line ------------------------------------------------------------------------
    def _describe(self, head: DeployEntry | None) -> str:
        parts = [f"{s}={r.version or '-'}:{r.state}" for s, r in sorted(self.presence.local.items())]
        deploy = f"deploy {head.name} {head.service}@{head.version} {head.state}" if head else "no deploy"
        return f"{' '.join(parts)}; {deploy}"

    def _summary(self, text: str) -> None:
        level = logging.INFO if text != self._last_summary else logging.DEBUG
        log.log(level, "cycle: %s", text)
        self._last_summary = text
