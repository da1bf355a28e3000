"""Carrying out a plan's faults on a running fleet: agents SIGKILLed or SIGSTOPped, ZooKeeper leaders killed.

Each planned fault runs in its own thread, waits for its moment, picks its target among those
eligible then (the plan's ``pick`` index), hits it, holds, and resumes it; every signal and
every restart happens under one lock, and :meth:`Injector.cancel` ends them all (a stopped
agent is still continued, so that it can be stopped cleanly).

How each kind is carried out is looked up in :data:`INJECTORS` (kind -> function), filled with
:func:`injects`.  A new kind that hits an agent's host needs only a :class:`HostAction` (what
to do to the host, and how to bring it back) passed to :meth:`Injector.host_fault`; other
targets write their own function.  The kind itself is registered in
:mod:`zkdeploy.testing.chaos.plan`.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from zkdeploy.coordination import Store
from zkdeploy.demo.fleet import Host, LocalFleet
from zkdeploy.errors import ZkdeployError
from zkdeploy.testing.chaos.plan import (
    HOST_SETTLE,
    KILL,
    MAX_HOSTS_FAULTED,
    STOP_LONG,
    STOP_SHORT,
    ZK_LEADER,
    Plan,
    PlannedFault,
)
from zkdeploy.testing.chaos.result import FaultRecord
from zkdeploy.testing.zkserver import ZkCluster, ZkServer


class Log(Protocol):
    def say(self, text: str) -> None: ...


InjectFn = Callable[["Injector", PlannedFault], None]

#: how each fault kind is carried out
INJECTORS: dict[str, InjectFn] = {}


def injects(*kinds: str) -> Callable[[InjectFn], InjectFn]:
    """Register the decorated function as the way to carry out faults of ``kinds``."""
    def register(fn: InjectFn) -> InjectFn:
        for kind in kinds:
            if kind in INJECTORS:
                raise ValueError(f"fault kind {kind!r} already has an injector")
            INJECTORS[kind] = fn
        return fn
    return register


class Injector:
    """Runs the planned faults in threads, one per fault; ``cancel()`` stops them all."""

    def __init__(self, plan: Plan, fleet: LocalFleet, cluster: ZkCluster, store: Store, log: Log) -> None:
        unknown = sorted({f.kind for f in plan.faults} - INJECTORS.keys())
        if unknown:
            raise ValueError(f"no injector for fault kind(s) {', '.join(unknown)}")
        self.plan = plan
        self.fleet = fleet
        self.cluster = cluster
        self.store = store
        self.log = log
        self.records: list[FaultRecord] = []
        self._cancel = threading.Event()
        #: every signal and every restart happens under it
        self.lock = threading.Lock()
        self._busy: dict[str, float] = {}  # host -> busy until (inf while its fault lasts)
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
    def _restarting_hosts(self) -> list[str]:
        try:
            return sorted({n for s in self.fleet.services for n in self.store.slots(s.name)})
        except ZkdeployError:  # the ensemble may be electing a leader: no preference this time
            return []

    def _choose_host(self, fault: PlannedFault) -> Host | None:
        """Reserve a host for ``fault``: waits (up to 20 s) while too many hosts are faulted."""
        deadline = time.monotonic() + 20.0
        while not self._cancel.is_set() and time.monotonic() < deadline:
            restarting = self._restarting_hosts() if fault.prefer_restarting else []
            with self.lock:
                now = time.monotonic()
                busy = {h for h, until in self._busy.items() if until > now}
                if len(busy) < MAX_HOSTS_FAULTED:
                    free = [h for h in self.fleet.hosts if h.name not in busy
                            and h.process is not None and h.process.poll() is None]
                    preferred = [h for h in free if h.name in restarting]
                    pool = preferred or free
                    if pool:
                        host = pool[fault.pick % len(pool)]
                        self._busy[host.name] = float("inf")
                        return host
            self._cancel.wait(0.2)
        return None

    def host_fault(self, fault: PlannedFault, action: HostAction) -> None:
        """Hit a host chosen for ``fault`` with ``action``, hold, and resume it; the host is
        released (after :data:`HOST_SETTLE`) whatever happens."""
        host = self._choose_host(fault)
        if host is None:
            return
        record = FaultRecord(fault.kind, host.name, 0.0, None, fault.hold)
        try:
            with self.lock:
                if self._cancel.is_set() or host.process is None or host.process.poll() is not None:
                    return
                phases = self._phases(host.name)
                pid = host.process.pid
                record.started = time.time()
                action.hit(self, host)
                record.detail = phases
                self.records.append(record)
            self.log.say(f"{fault.kind} {host.name} (pid {pid}; {phases})")
            self._cancel.wait(fault.hold)
            with self.lock:
                if self._cancel.is_set() and not action.resume_on_cancel:
                    return
                action.resume(self, host, pid)
                record.resumed = time.time()
            self.log.say(f"{fault.kind} {host.name}: {action.resumed}")
        finally:
            with self.lock:
                self._busy[host.name] = time.monotonic() + HOST_SETTLE

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


@dataclass(frozen=True)
class HostAction:
    """A fault on an agent's host: ``hit`` and ``resume`` run under the injector's lock.

    ``resume(injector, host, pid)`` gets the pid the agent had when hit.  On cancel, the host
    is resumed only when ``resume_on_cancel`` (a stopped agent must be continued to be stopped
    cleanly; a killed one is not restarted).  ``resumed`` is the log's word for it.
    """

    hit: Callable[[Injector, Host], None]
    resume: Callable[[Injector, Host, int], None]
    resume_on_cancel: bool
    resumed: str


def _sigkill(_injector: Injector, host: Host) -> None:
    assert host.process is not None
    host.process.send_signal(signal.SIGKILL)
    host.process.wait(timeout=30)


def _restart_agent(injector: Injector, host: Host, _pid: int) -> None:
    injector.fleet.start_agent(host)


def _sigstop(_injector: Injector, host: Host) -> None:
    assert host.process is not None
    os.kill(host.process.pid, signal.SIGSTOP)


def _sigcont(_injector: Injector, _host: Host, pid: int) -> None:
    os.kill(pid, signal.SIGCONT)


AGENT_KILL = HostAction(_sigkill, _restart_agent, resume_on_cancel=False, resumed="restarted")
AGENT_STOP = HostAction(_sigstop, _sigcont, resume_on_cancel=True, resumed="continued")


@injects(KILL)
def kill_agent(injector: Injector, fault: PlannedFault) -> None:
    """SIGKILL of an agent (its services live on); a new agent process is started after the hold."""
    injector.host_fault(fault, AGENT_KILL)


@injects(STOP_LONG, STOP_SHORT)
def stop_agent(injector: Injector, fault: PlannedFault) -> None:
    """SIGSTOP of an agent, SIGCONT after the hold (longer or shorter than its session timeout)."""
    injector.host_fault(fault, AGENT_STOP)


@injects(ZK_LEADER)
def kill_zk_leader(injector: Injector, fault: PlannedFault) -> None:
    """SIGKILL of the ZooKeeper ensemble's leader (found within 10 s), restarted after the hold."""
    leader: ZkServer | None = None
    deadline = time.monotonic() + 10.0
    while leader is None and time.monotonic() < deadline and not injector.cancelled():
        leader = injector.cluster.leader()
        if leader is None:
            injector.sleep(0.2)
    if leader is None:
        return
    with injector.lock:
        if injector.cancelled():
            return
        record = FaultRecord(ZK_LEADER, f"zk:{leader.client_port}", time.time(), None, fault.hold)
        leader.kill(signal.SIGKILL)
        injector.records.append(record)
    injector.log.say(f"zk-leader: killed server {leader.myid} (port {leader.client_port})")
    if injector.sleep(fault.hold):
        return
    with injector.lock:
        if injector.cancelled():
            return
        injector.cluster.restart(leader, timeout=60)
        record.resumed = time.time()
    injector.log.say(f"zk-leader: server {leader.myid} restarted")
