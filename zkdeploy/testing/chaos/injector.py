"""Carrying out a plan's faults on a running fleet: the :class:`Injector`.

Each planned fault runs in its own thread, waits for its moment, picks its target among those
eligible then (the plan's ``pick`` index), hits it, holds, and resumes it; every signal and
every restart happens under one lock, and :meth:`Injector.cancel` ends them all (a stopped
agent is still continued, so that it can be stopped cleanly).  The injector owns what the
faults share: the threads, the reservation of hosts (at most :data:`~.plan.MAX_HOSTS_FAULTED`
at once, each settling for :data:`~.plan.HOST_SETTLE` after), the lock, and the records.

How each kind is carried out (agents killed or stopped, links cut, ZooKeeper servers killed,
health endpoints broken, operator commands) is looked up in :data:`INJECTORS` (kind ->
function), which :mod:`zkdeploy.testing.chaos.faults` fills; a fault on an agent's host is a
:class:`~.faults.HostAction` passed to :meth:`Injector.host_fault`.  The kind itself is
registered in :mod:`zkdeploy.testing.chaos.plan`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Protocol

from zkdeploy.coordination import Store
from zkdeploy.demo.fleet import Host, LocalFleet
from zkdeploy.errors import ZkdeployError
from zkdeploy.testing.chaos.faults import INJECTORS, HostAction
from zkdeploy.testing.chaos.plan import HOST_SETTLE, MAX_HOSTS_FAULTED, Plan, PlannedFault
from zkdeploy.testing.chaos.result import FaultRecord
from zkdeploy.testing.tcpproxy import ProxyGroup
from zkdeploy.testing.zkserver import ZkCluster

# the table and HostAction are re-exported: importers of the injector (tests/chaos) find them here
__all__ = ["INJECTORS", "HostAction", "Injector", "Log"]


class Log(Protocol):
    def say(self, text: str) -> None: ...


class Injector:
    """Runs the planned faults in threads, one per fault; ``cancel()`` stops them all."""

    def __init__(self, plan: Plan, fleet: LocalFleet, cluster: ZkCluster, store: Store, log: Log,
                 links: Mapping[str, ProxyGroup] | None = None) -> None:
        unknown = sorted({f.kind for f in plan.faults} - INJECTORS.keys())
        if unknown:
            raise ValueError(f"no injector for fault kind(s) {', '.join(unknown)}")
        self.plan = plan
        self.fleet = fleet
        self.cluster = cluster
        self.store = store
        self.log = log
        #: each host's link to ZooKeeper (link faults need them)
        self.links = dict(links or {})
        self.records: list[FaultRecord] = []
        self._cancel = threading.Event()
        #: every signal and every restart happens under it
        self.lock = threading.Lock()
        self._busy: dict[str, float] = {}  # host -> busy until (inf while its fault lasts)
        self.health_busy: set[tuple[str, str]] = set()  # (host, service) whose /health is broken now
        self._threads: list[threading.Thread] = []
        self.t0 = 0.0

    def start(self, t0: float) -> None:
        """Start one thread per planned fault; offsets count from the wall time ``t0``."""
        self.t0 = t0
        for i, fault in enumerate(self.plan.faults):
            th = threading.Thread(target=self._run_fault, args=(i, fault), name=f"fault-{i}", daemon=True)
            th.start()
            self._threads.append(th)

    def done(self) -> bool:
        return all(not th.is_alive() for th in self._threads)

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for th in self._threads:
            th.join(max(0.0, deadline - time.monotonic()))

    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def sleep(self, seconds: float) -> bool:
        """Wait ``seconds``; True (at once) when the run is cancelled meanwhile."""
        return self._cancel.wait(seconds)

    def cancel(self) -> None:
        """Stop every fault: nothing new is hit, stopped agents are continued; joins (bounded)."""
        self._cancel.set()
        self.join(75)

    # -- one fault ------------------------------------------------------------
    def _run_fault(self, index: int, fault: PlannedFault) -> None:
        try:
            if self._cancel.wait(max(0.0, self.t0 + fault.offset - time.time())):
                return
            INJECTORS[fault.kind](self, fault)
        except Exception as exc:  # a failing injector must be reported, not hide the run
            self.log.say(f"fault {index} ({fault.kind}) failed: {type(exc).__name__}: {exc}")
            with self.lock:
                self.records.append(FaultRecord(fault.kind, "?", time.time(), None, fault.hold,
                                                f"injector error: {exc}"))

    # -- faults on an agent's host ------------------------------------------------
    def restarting_hosts(self, queued: bool = False) -> list[str]:
        """Hosts that hold a restart slot now (and, with ``queued``, those waiting in a restart queue)."""
        try:
            names = {n for s in self.fleet.services for n in self.store.slots(s.name)}
            if queued:
                names |= {n for s in self.fleet.services for n in self.store.queue(s.name)}
            return sorted(names)
        except ZkdeployError:  # the ensemble may be electing a leader: no preference this time
            return []

    def slot_of(self, node: str) -> str | None:
        """The service ``node`` holds a restart slot of now, if any."""
        try:
            return next((s.name for s in self.fleet.services if node in self.store.slots(s.name)), None)
        except ZkdeployError:
            return None

    def phase_of(self, node: str, service: str) -> str | None:
        try:
            entry = self.store.current(service).get(node)
        except ZkdeployError:
            return None
        return entry.phase if entry is not None else None

    def choose_host(self, fault: PlannedFault, preferred: Callable[[], list[str]] | None = None,
                    wait_preferred: float = 0.0) -> Host | None:
        """Reserve a host for ``fault``: waits (up to 20 s) while too many hosts are faulted.

        ``preferred`` (default: the hosts holding a restart slot, when the fault prefers them)
        names the hosts to aim at if one is free; with ``wait_preferred``, wait that long for
        one to appear before taking any free host."""
        if preferred is None and fault.prefer_restarting:
            preferred = self.restarting_hosts
        deadline = time.monotonic() + 20.0
        preferred_until = time.monotonic() + wait_preferred
        while not self._cancel.is_set() and time.monotonic() < deadline:
            wanted = preferred() if preferred is not None else []
            with self.lock:
                now = time.monotonic()
                busy = {h for h, until in self._busy.items() if until > now}
                if len(busy) < MAX_HOSTS_FAULTED:
                    free = [h for h in self.fleet.hosts if h.name not in busy
                            and h.process is not None and h.process.poll() is None]
                    aimed = [h for h in free if h.name in wanted]
                    if aimed or now >= preferred_until:
                        pool = aimed or free
                        if pool:
                            host = pool[fault.pick % len(pool)]
                            self._busy[host.name] = float("inf")
                            return host
            self._cancel.wait(0.2)
        return None

    def release_host(self, host: Host) -> None:
        with self.lock:
            self._busy[host.name] = time.monotonic() + HOST_SETTLE

    def host_fault(self, fault: PlannedFault, action: HostAction, host: Host | None = None,
                   preferred: Callable[[], list[str]] | None = None, service: str = "",
                   since: float | None = None) -> FaultRecord | None:
        """Hit a host chosen for ``fault`` (or ``host``, already reserved) with ``action``, hold, and
        resume it; the host is released (after :data:`HOST_SETTLE`) whatever happens.  The record,
        or None when nothing was hit.  ``since``: when the fault began, if before the hit (a health
        endpoint broken ahead of the kill); the record starts then."""
        host = host or self.choose_host(fault, preferred)
        if host is None:
            return None
        record = FaultRecord(fault.kind, host.name, 0.0, None, fault.hold, service=service)
        try:
            with self.lock:
                if self._cancel.is_set() or host.process is None or host.process.poll() is not None:
                    return None
                phases = self._phases(host.name)
                pid = host.process.pid
                record.started = time.time() if since is None else since
                action.hit(self, host)
                record.detail = phases
                self.records.append(record)
            self.log.say(f"{fault.kind} {host.name} (pid {pid}; {phases})")
            self._cancel.wait(fault.hold)
            with self.lock:
                if self._cancel.is_set() and not action.resume_on_cancel:
                    return record
                action.resume(self, host, pid)
                record.resumed = time.time()
            self.log.say(f"{fault.kind} {host.name}: {action.resumed}")
            return record
        finally:
            self.release_host(host)

    def _phases(self, node: str) -> str:
        """What the host was doing when hit, from /current (for the report only)."""
        try:
            parts = []
            for svc in self.fleet.services:
                entry = self.store.current(svc.name).get(node)
                if entry is not None:
                    parts.append(f"{svc.name} {entry.version or '-'} {entry.state}/{entry.phase}")
            return ", ".join(parts)
        except ZkdeployError:  # the report says so; the fault goes ahead
            return "state unknown"
