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

import logging
import threading
import time
from dataclasses import dataclass

from zkdeploy.agent import deploys, recovery
from zkdeploy.agent.host import Host
from zkdeploy.agent.metrics import Metrics
from zkdeploy.agent.payloads import Payloads
from zkdeploy.agent.presence import Presence
from zkdeploy.agent.reports import Reports
from zkdeploy.agent.restart import Outcome, Restart
from zkdeploy.agent.rule import Rule, Want
from zkdeploy.agent.slots import SlotRequest, fence
from zkdeploy.agent.states import Phase
from zkdeploy.config.loader import parse_catalog
from zkdeploy.coordination import Store
from zkdeploy.errors import ConfigError, ConflictError, CoordinationError, JournalError
from zkdeploy.model import ABORTED, FAILED, ONLINE, PENDING, DeployEntry
from zkdeploy.policy.lifecycle import Actor, can, transition
from zkdeploy.policy.progress import active_deploy, blocked_by
from zkdeploy.runner.service import HostService

log = logging.getLogger(__name__)


@dataclass
class Pending:
    """A restart (or recovery) this node has asked a slot for and not yet made."""

    request: SlotRequest
    want: Want


class Cycle:
    """The decision cycle of one node.  ``run_once`` is one step; the agent calls it on every wake-up."""

    def __init__(self, store: Store, host: Host, presence: Presence, payloads: Payloads, reports: Reports,
                 wake: threading.Event, stopping: threading.Event, *, deferred_recovery: bool = False,
                 metrics: Metrics | None = None) -> None:
        self.store = store
        self.metrics = metrics
        self.host = host
        self.presence = presence
        self.payloads = payloads
        self.reports = reports
        self.wake = wake
        self.stopping = stopping
        self.node = host.node
        self.deferred_recovery = deferred_recovery
        self.pending: dict[str, Pending] = {}
        self.view = payloads.view
        self.rule = Rule(store, presence, payloads, self.view)
        self.recovering: set[str] = set()  # services whose interrupted change waits for a slot to be undone
        self._failed: set[tuple[str, str]] = set()  # (deploy, service) whose release failed here
        self._closed: dict[str, DeployEntry] = {}   # deploy entries seen closed (never read again)
        self._catalog_version = -2
        self._last_summary = ""
        self._progress_due: dict[str, float] = {}  # deploy -> when the steward next looks for a stall
        self._seals: dict[str, str] = {}  # seal -> the digest it holds (a seal never changes)

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
            self.rule.returning.update(self.host.services())
        if not self.presence.registered:
            return
        switch = self.view.killswitch()
        if switch is not None:
            self.cancel_all("killswitch is on")
            self._summary(f"killswitch on: {switch.message}")
            return
        if self.deferred_recovery:
            self.recovering.update(recovery.settle_registered(self.host))
            self.deferred_recovery = False
        entries = self._checked(self._open_deploys())
        head = self._judged(self._head(entries))
        services = self.host.services()
        known = [*self._closed.values(), *entries]
        wants: dict[str, Want | None] = {}
        for service in services:
            if service in self.recovering:
                wants[service] = Want("the release it ran before a crash", recovery=True)
            else:
                wants[service] = self.rule.evaluate(service, head, known, self._failed)
        self._want_payloads(entries, head, services, wants)
        restarted = False
        for service, svc in services.items():
            want = wants[service]
            if want is not None and not want.recovery and not self.payloads.ready(service, want.target):
                want = None  # its payload is being fetched: the next cycle after it arrives
            if want is None and self.presence.machines[service].phase == Phase.STAGED \
                    and service not in self.pending:
                self.presence.machines[service].reset()
            restarted |= self._step(svc, want)
        if head is not None and head.state == PENDING and self.store.stewards \
                and (restarted or self._is_steward(head.service)):
            # Completion and stalls are judged by the node that just restarted, and each cycle by one
            # steward per service, not by every node: a fleet-wide read of /current per node per
            # cycle would grow with the square of the fleet.
            if head.waves:
                deploys.advance_waves(self.store, head, self.rule.marks(head.service).get(head.version),
                                      self._trusted_pin())
            deploys.maybe_complete(self.store, head, self._trusted_pin())
            current = self.store.deploy(head.name)
            if current is not None and current.state == PENDING and self._is_steward(head.service):
                self._watch_progress(current)
            head = current
        self._summary(self._describe(head))

    # -- one step for one service ----------------------------------------------------------
    def _step(self, svc: HostService, want: Want | None) -> bool:
        """One step towards ``want`` for ``svc``; True when a restart (or recovery) ran."""
        service = svc.name
        pending = self.pending.get(service)
        if pending is not None and (want is None or not want.same(pending.want)):
            self._cancel(service, "the rollout changed" if want is None else f"the target is now {want.target}")
            pending = None
        if want is None:
            return False
        busy = self.host.busy(service)
        if not busy.acquire(blocking=False):
            if pending is not None:
                self._cancel(service, "an undo of this service is under way here")
            return False
        try:
            try:
                if pending is None:
                    why = "to recover" if want.recovery else f"into {want.target}"
                    request = SlotRequest(self.store, self.presence, service, svc.spec.quorum, why,
                                          answering=lambda: self.host.probe(svc, self.presence.local[service].version)
                                          is None, metrics=self.metrics)
                    pending = self.pending[service] = Pending(request, want)
                    request.join()
                if not pending.request.poll(self.wake):
                    if want.deploy is not None and pending.request.reason.startswith("waiting for quorum") \
                            and pending.request.waited > want.deploy.progress_deadline:
                        self._watch_progress(want.deploy)  # a head stuck for longer than the deadline says why
                    return False
            except CoordinationError as exc:
                log.warning("%s: gave up waiting for a slot: %s", service, exc)
                self._cancel(service, str(exc))
                return False
            del self.pending[service]
            if want.recovery:
                self._recover(svc, pending)
            else:
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
        service, target, deploy = svc.name, pending.want.target, pending.want.deploy
        releases = self.host.releases[service]
        old = releases.current_version()
        restart = Restart(self.store, self.host, svc, self.presence.machines[service], target,
                          deploy_id=deploy.name if deploy else None, free=pending.request.free,
                          steps=tuple(deploy.steps) if deploy else (),
                          on_failure=(lambda error: deploys.report_failure(
                              self.store, self.node, deploy.name, error, halt=bool(deploy.steps)))
                          if deploy else None, metrics=self.metrics)
        started = time.monotonic()
        try:
            outcome = restart.run(old, self.host.running(svc))
        except Exception:
            self._give_back(pending)
            raise
        if outcome.held:  # out of the load balancer, counted as down, until its next restart or an undo
            self.host.hold(service, f"held: {outcome.error}", outcome.change_id)  # also through an agent restart
        else:  # this restart ended a hold; a process killed before here leaves it to the crash recovery
            self.host.release_hold(service)
        self._count(service, outcome, time.monotonic() - started)
        # What the node runs now, with the slot given back in the same write: the next waiter is woken
        # by this one change (the hand-off), and the change report follows it rather than delaying it.
        if outcome.ok:
            self.presence.publish(service, version=target, state=ONLINE, detail=f"online at {target}", target="",
                                  give_back_slot=True)
            log.info("%s: online at %s", service, target)
        elif outcome.held:
            self.presence.publish(service, version=releases.current_version() or "", state=FAILED,
                                  detail=f"held: {outcome.error}", target="", give_back_slot=True)
            if deploy is not None:
                self._failed.add((deploy.name, service))
        else:
            current = releases.current_version()
            healthy = outcome.healthy and self.host.probe(svc, current) is None
            self.presence.publish(service, version=current or "", state=ONLINE if healthy else FAILED,
                                  detail=outcome.error, target="", give_back_slot=True)
            if deploy is not None and not outcome.fenced:
                self._failed.add((deploy.name, service))  # a lost slot is retried; a bad release is not
        self._give_back(pending)  # a request only if the write above did not give the slot back
        if outcome.change_id is not None:
            self.reports.push_history(outcome.change_id, steps=restart.step_results)

    def _count(self, service: str, outcome: Outcome, seconds: float) -> None:
        """The restart's outcome and its change set's final status, in the metrics."""
        if self.metrics is None:
            return
        kind = "ok" if outcome.ok else "held" if outcome.held else "fenced" if outcome.fenced else "rolled_back"
        self.metrics.restart_done(service, kind, seconds)
        if outcome.change_id is not None:
            try:
                self.metrics.change_set_finished(self.host.journal.get_change(outcome.change_id).status)
            except JournalError as exc:
                log.warning("%s: change set %d not counted: %s", service, outcome.change_id, exc)

    def _give_back(self, pending: Pending) -> None:
        try:
            pending.request.release()
        except CoordinationError as exc:
            log.warning("%s: could not give the restart slot back: %s", pending.request.service, exc)

    def _recover(self, svc: HostService, pending: Pending) -> None:
        """Undo what a crash interrupted, now that the slot is held (the service may go down)."""
        service = svc.name
        machine = self.presence.machines[service]
        if pending.request.free and self.host.answers(svc):
            # granted at no cost because the service did not answer; it answers now, so undoing (which
            # stops it) would cost quorum: give the slot back and decide again (as Restart.enter does)
            log.info("%s: answers again; the recovery decides again for a slot that costs quorum", service)
            self._give_back(pending)
            machine.reset("answers again: deciding again")
            self.presence.observe(service, write=True)
            return
        try:
            with self.host.changing:
                fence(self.store, service, self.node)
                recovery.undo_interrupted(self.host, self.metrics)
        except Exception:
            self._give_back(pending)
            raise
        self.recovering.discard(service)
        self._give_back(pending)
        machine.reset("recovered after a crash")
        self.presence.observe(service, write=True)

    # -- reading the snapshot ----------------------------------------------------------------
    def _load_catalog(self) -> bool:
        data, version = self.view.catalog()
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

    def _checked(self, entries: list[DeployEntry]) -> list[DeployEntry]:
        """The open entries, each refused (halted, saying why) when what it asks for is not what was
        queued (``deploys.seal_refusal``): nothing acts on a rewritten entry."""
        out = []
        for entry in entries:
            reason = deploys.seal_refusal(self.store, entry, self._seals)
            out.append(entry if reason is None else deploys.refuse(self.store, entry, reason))
        return out

    def _open_deploys(self) -> list[DeployEntry]:
        """The open deploy entries.  A closed entry never opens again, so once seen closed it is
        not read again: a cycle costs one read per open entry, not one per entry kept."""
        entries = self.view.deploys(skip=self._closed)
        self._closed.update((e.name, e) for e in entries if not e.is_open)
        return [e for e in entries if e.is_open]

    def _head(self, entries: list[DeployEntry]) -> DeployEntry | None:
        """The active deploy: the oldest open one.  An open entry whose request's deploy of a service
        it depends on ended short of done (aborted, rolled back) is aborted here, saying why, so it
        neither starts on a mixed fleet nor waits for ever; the entries after it (a rollback) go on."""
        catalog = self.host.catalog
        graph = catalog.graph() if catalog else None
        known = [*self._closed.values(), *entries]
        for entry in entries:
            blocker = blocked_by(entry, known, graph)
            mark = self.rule.marks(entry.service).get(entry.version)
            if blocker is not None:
                why = (f"aborted: it depends on {blocker.service}, whose deploy {blocker.name} "
                       f"({blocker.service}@{blocker.version}) was {blocker.state}")
            elif mark is not None and mark.mark in ("bad", "badfwd"):
                why = f"aborted: {entry.service}@{entry.version} is marked {mark.mark} by {mark.by}: {mark.why}"
            else:
                continue
            if not can(entry, ABORTED, by=Actor.AGENT) or not self.store.stewards:
                continue  # not abortable; or a steward records it (blocked or marked, it does not start)
            try:
                self.store.update_deploy(transition(entry, ABORTED, by=Actor.AGENT, message=why))
                log.warning("deploy %s of %s@%s %s", entry.name, entry.service, entry.version, why)
            except ConflictError:
                pass  # changed meanwhile (another agent aborted it first): the next cycle sees
        return active_deploy(known, graph)

    def _want_payloads(self, entries: list[DeployEntry], head: DeployEntry | None,
                       services: dict[str, HostService], wants: dict[str, Want | None]) -> None:
        """Tell the payload workers what each service will need: what the rule asks for first,
        then the active deploy's release, the queued ones, and the newest staged."""
        for service in services:
            want = wants.get(service)
            versions = [want.target] if want is not None and not want.recovery else []
            if head is not None and head.service == service:
                versions.append(head.version)
            versions += [d.version for d in entries if d.service == service]
            newest = self.payloads.newest(service)
            if newest is not None:
                versions.append(newest)
            running = self.presence.local[service].version
            self.payloads.want(service, [v for v in versions if v != running])

    def _trusted_pin(self) -> deploys.PinCheck | None:
        """With trusted signing keys: a check that a pin's signature verifies (any node's pin)."""
        guard = self.payloads.guard
        return None if guard is None else guard.verifier.accepts

    def _judged(self, head: DeployEntry | None) -> DeployEntry | None:
        """The head with the failures its nodes reported folded in: a steward records them (a halt
        past the budget) and reads it back; another agent reads it as a steward will record it."""
        if head is None or not head.is_open:
            return head
        reports = self.view.failures(head)
        if not reports:
            return head
        if self.store.stewards:
            deploys.judge(self.store, head.name)
            head = self.store.deploy(head.name) or head
            reports = {n: r for n, r in reports.items() if n not in {f.get("node") for f in head.failures}}
        return deploys.as_judged(self.store, head, reports)

    def _is_steward(self, service: str) -> bool:
        """Whether this agent stewards ``service``'s deploy this cycle: under ACL roles, every agent
        holding the steward role (two or three per fleet); without roles, the first present node
        of the service by name."""
        if not self.store.stewards:
            return False
        if self.store.guarded:
            return True
        nodes = self.view.current_nodes(service) if service in self.host.names else self.store.current_nodes(service)
        return bool(nodes) and min(nodes) == self.node

    def _watch_progress(self, head: DeployEntry) -> None:
        """The steward's look at whether the deploy stalled: it reads every entry of the service, so
        at most ten times per progress deadline (and every 5 s at most), not on every wake-up."""
        now = time.monotonic()
        if now < self._progress_due.get(head.name, 0.0) or not self.store.stewards:
            return
        self._progress_due[head.name] = now + min(5.0, head.progress_deadline / 10)
        catalog = self.host.catalog
        spec = catalog.services.get(head.service) if catalog else None
        deploys.watch_progress(self.store, head, spec.quorum if spec else None)

    # -- watches --------------------------------------------------------------------------------
    def _ensure_watches(self) -> None:
        self.view.start()

    # -- the summary line ------------------------------------------------------------------------
    def _describe(self, head: DeployEntry | None) -> str:
        parts = [f"{s}={r.version or '-'}:{r.state}" for s, r in sorted(self.presence.local.items())]
        deploy = f"deploy {head.name} {head.service}@{head.version} {head.state}" if head else "no deploy"
        return f"{' '.join(parts)}; {deploy}"

    def _summary(self, text: str) -> None:
        level = logging.INFO if text != self._last_summary else logging.DEBUG
        log.log(level, "cycle: %s", text)
        self._last_summary = text
