"""What this node tells the fleet: its presence record and its /current entries.

The local record of each service is the truth the agent acts on; ZooKeeper
gets a copy of it after every change (the phase machine's transitions, the
health monitor's verdicts, the outcome of a restart).  Registration after a
new session re-creates every ephemeral record of this node and refreshes its
persistent membership of each service it runs.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from zkdeploy import __version__
from zkdeploy.agent.facts import gather as gather_facts
from zkdeploy.agent.host import Host
from zkdeploy.agent.metrics import Metrics
from zkdeploy.agent.states import RESTART_PHASES, Phase, ServiceMachine
from zkdeploy.config.schema import AgentConfig
from zkdeploy.coordination import Store
from zkdeploy.errors import ConflictError, CoordinationError, NotAdmittedError
from zkdeploy.model import RESTARTING, STOPPED, CurrentEntry, NodeRecord

log = logging.getLogger(__name__)

#: seconds the background writer lets phase changes gather before it writes the latest record
LATER_INTERVAL = 0.25


@dataclass
class Local:
    """What this node publishes about one service."""

    version: str | None = None
    state: str = STOPPED
    detail: str = ""
    target: str | None = None


class Presence:
    """This node's records in the coordination store, local copy first."""

    def __init__(self, config: AgentConfig, host: Host, store: Store | None = None,
                 metrics: Metrics | None = None) -> None:
        self.config = config
        self.metrics = metrics
        self.node = config.node
        self.host = host
        self.store = store
        self.local: dict[str, Local] = {s: Local() for s in config.services}
        # a service held out when the agent stopped (a scenario check failed) starts held
        self.machines = {s: ServiceMachine(s, self._on_phase(s),
                                           Phase.HELD if host.hold_of(s) is not None else Phase.IDLE)
                         for s in config.services}
        #: held while the local record is read and written; the health monitor re-checks under it
        self.lock = threading.RLock()
        self.registered_generation = -1
        self.registrations = 0  # sessions registered so far (1: the first since the agent started)
        self._unwritten: set[str] = set()  # services whose last write to ZooKeeper failed
        self._unadmitted: set[str] = set()  # services this node may not count itself online in (ACL roles)
        self._later: set[str] | None = None  # with a background writer: services whose phase waits to be written
        self._later_due = threading.Event()

    def attach(self, store: Store, *, background: bool = False) -> None:
        """Write to ``store`` from now on.  With ``background``, a change of phase that leaves the
        service's availability as it was is written by a writer thread of its own, latest first,
        instead of holding up the step that made it (see ``_on_phase``)."""
        self.store = store
        if background and self._later is None:
            self._later = set()
            threading.Thread(target=self._write_later, name=f"presence-{self.node}", daemon=True).start()

    # -- publishing ---------------------------------------------------------
    def _on_phase(self, service: str) -> Callable[[Phase, Phase, str], None]:
        def changed(old: Phase, new: Phase, detail: str) -> None:
            log.info("%s: %s -> %s%s", service, old.value, new.value, f" ({detail})" if detail else "")
            state = RESTARTING if new in RESTART_PHASES else None
            with self.lock:
                if state in (None, self.local[service].state):
                    self.note(service, detail)
                else:
                    self.publish(service, state=state, detail=detail)
        return changed

    def note(self, service: str, detail: str) -> None:
        """Say why ``service`` is where it is (a detail, availability unchanged): written by the
        background writer when there is one, at once otherwise."""
        with self.lock:
            later = self._later is not None
            self.publish(service, detail=detail, write=not later)
            if later:
                assert self._later is not None
                self._later.add(service)
                self._later_due.set()

    def _write_later(self) -> None:
        """The background writer: what a phase change left unwritten, each service's latest record.

        Changes arriving within ``LATER_INTERVAL`` of a write are written together, once.
        Only changes of phase and detail come here; every change of availability (the slot
        transaction's ``restarting``, ``online`` after the health check, ``failed``) is written
        before the step that follows it, so the quorum never counts on a record still in flight.
        Whatever this writes is the local record as it is when written, never an older one."""
        assert self._later is not None
        while True:
            self._later_due.wait()
            with self.lock:
                self._later_due.clear()
                services, self._later = sorted(self._later), set()
            for service in services:
                self.publish(service)
            time.sleep(LATER_INTERVAL)  # what changes meanwhile is written once, as it is then

    def publish(self, service: str, *, state: str | None = None, version: str | None = None,
                detail: str | None = None, target: str | None = None, write: bool = True,
                give_back_slot: bool = False) -> None:
        """Update this node's record of ``service`` (local first, then ZooKeeper unless ``write`` is
        False).  A failed write is logged; the health monitor re-asserts the record later.  With
        ``give_back_slot`` (the end of a restart) the write gives this node's slot back too, in the
        same transaction when it can (``Store.publish_current``); the caller's ``SlotRequest.release``
        then makes no request, and gives the slot back itself when this did not."""
        with self.lock:
            rec = self.local[service]
            if state is not None:
                rec.state = state
            if version is not None:
                rec.version = version
            if detail is not None:
                rec.detail = detail
            if target is not None:
                rec.target = target or None
            if self.metrics is not None:
                self.metrics.service_published(service, rec.version, rec.state)
            if not write or self.store is None or self.registered_generation < 0:
                return
            if self._later is not None:
                self._later.discard(service)  # this write carries the latest record already
            try:
                self.store.publish_current(service, self.entry(service), give_back_slot=give_back_slot)
                self._unwritten.discard(service)
            except NotAdmittedError as exc:
                self._not_admitted(service, exc)
            except CoordinationError as exc:
                self._unwritten.add(service)
                log.warning("%s: could not publish state (written again later): %s", service, exc)
            else:
                if service in self._unadmitted:
                    self._unadmitted.discard(service)
                    log.info("%s: admitted: this node counts as online again", service)

    def _not_admitted(self, service: str, exc: NotAdmittedError) -> None:
        """The entry is written, its online token is not (ACL roles, not admitted yet): the health
        monitor tries again with every flush; said once."""
        self._unwritten.add(service)
        if service not in self._unadmitted:
            self._unadmitted.add(service)
            log.warning("%s", exc)

    def flush(self) -> None:
        """Write again every record whose last write failed (a connection loss, a lost reply)."""
        for service in sorted(self._unwritten):
            self.publish(service)

    def entry(self, service: str) -> CurrentEntry:
        rec = self.local[service]
        return CurrentEntry(node=self.node, version=rec.version, state=rec.state,
                            phase=self.machines[service].phase.value, target=rec.target,
                            since=time.time(), detail=rec.detail[:500])

    def observe(self, service: str, write: bool = False) -> None:
        """Set the local record of ``service`` from what really runs on the host."""
        version, state, detail = self.host.observe(service)
        self.publish(service, version=version, state=state, detail=detail, write=write)

    # -- registration ---------------------------------------------------------
    @property
    def registered(self) -> bool:
        return self.registered_generation >= 0

    def register(self) -> bool:
        """(Re-)create this node's ephemeral records after a new session, and record (or refresh)
        it as a member of each service it runs: a member stays one, present or not, until an
        operator forgets it, so a percentage quorum counts it while it is away.

        Returns True when this call registered a new session (the caller then
        re-announces what the node holds); False when registered already or
        not possible yet (an entry of the previous session still exists: it
        goes when the server expires that session).
        """
        assert self.store is not None
        generation = self.store.require_connected()
        if generation == self.registered_generation:
            return False
        facts = gather_facts(self.config.facts)
        for error in facts.errors:
            log.warning("fact source failed: %s", error)
        record = NodeRecord(node=self.node, address=self.config.address, services=self.config.services,
                            labels=self.config.labels.model_dump(exclude_none=True),
                            agent_version=__version__, pid=os.getpid(), started=time.time(),
                            facts=facts.values, fact_errors=tuple(facts.errors))
        try:
            self.store.register_node(record)
            for service in self.host.services():
                self.store.add_member(service, self.node)  # after the presence node: see Store.forget_member
                self.store.prepare_service(service, self.node)
                with self.lock:
                    if not self.machines[service].restarting:
                        self.observe(service)
                    try:
                        self.store.publish_current(service, self.entry(service))
                    except NotAdmittedError as exc:
                        self._not_admitted(service, exc)  # registered all the same: it counts as down
        except ConflictError as exc:
            log.warning("not registered yet: %s", exc)
            return False
        self.registered_generation = generation
        self.registrations += 1
        log.info("registered node %s (session generation %d)", self.node, generation)
        return True
