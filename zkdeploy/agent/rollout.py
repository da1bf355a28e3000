"""One restart of one service on this node, under the quorum rules.

``Restart.run`` is the protocol of DESIGN.md step 3-4: queue, wait for the
quorum under the lock, take a slot, then drain, stop, switch, start, check,
undrain.  Each destructive step is preceded by a fencing check and recorded
with its undo, so a failure, a lost session or a failed health check
rolls the node back to the release it ran before.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from zkdeploy.agent.faults import crash_point
from zkdeploy.agent.releases import ReleaseDir
from zkdeploy.agent.states import Phase, ServiceMachine
from zkdeploy.coordination import CONNECTED, SUSPENDED, QueueLock, Store
from zkdeploy.errors import (
    CoordinationError,
    HealthCheckError,
    LockLostError,
    RolloutAborted,
    SessionLostError,
    ZkdeployError,
)
from zkdeploy.model import ONLINE, RESTARTING
from zkdeploy.policy.quorum import may_go_down
from zkdeploy.runner.service import HostService

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    """How a restart ended: ``ok`` at ``version``, or rolled back with ``error``."""

    ok: bool
    version: str | None
    error: str = ""
    healthy: bool = True


@dataclass
class _Undo:
    description: str
    action: Callable[[], None]


@dataclass
class Restart:
    """Restart ``svc`` into ``target`` on this node.

    ``publish(state, phase, version, detail)`` writes this node's /current
    entry; ``abort_reason()`` returns why waiting should stop, or None.
    """

    store: Store
    node: str
    svc: HostService
    releases: ReleaseDir
    machine: ServiceMachine
    publish: Callable[..., None]
    abort_reason: Callable[[], str | None]
    quorum: int | str
    target: str
    session_timeout: float = 10.0
    undo: list[_Undo] = field(default_factory=list)

    @property
    def service(self) -> str:
        return self.svc.name

    # -- waiting for a slot ----------------------------------------------
    def acquire_slot(self) -> None:
        """Queue, then wait under the lock until one more node may go down; take the slot."""
        self.machine.to(Phase.WAITING, f"queued to restart into {self.target}")
        self.publish(detail=f"queued to restart into {self.target}")
        lock = QueueLock(self.store, self.service, self.node)
        try:
            lock.acquire(self.abort_reason)
            last_reason = None
            while True:
                reason = self.abort_reason()
                if reason:
                    raise RolloutAborted(reason)
                lock.require_held_or_queued()
                changed = threading.Event()
                entries = self.store.current(self.service, changed)
                me = entries.get(self.node)
                if me is None:
                    raise LockLostError(f"this node's /current entry of {self.service} is gone")
                online = sum(1 for e in entries.values() if e.state == ONLINE)
                decision = may_go_down(online=online, present=len(entries), quorum=self.quorum,
                                       self_online=me.state == ONLINE)
                if decision.allowed:
                    self.store.take_slot(self.service, me.evolve(
                        state=RESTARTING, phase=Phase.WAITING.value, target=self.target,
                        detail=f"restarting into {self.target}", since=time.time()))
                    self.publish(state=RESTARTING, detail=f"restarting into {self.target}", write=False)
                    return
                if decision.reason != last_reason:
                    log.info("%s: %s", self.service, decision.reason)
                    self.publish(detail=decision.reason)
                    last_reason = decision.reason
                changed.wait(1.0)
        finally:
            lock.release()

    # -- fencing ------------------------------------------------------------
    def fence(self) -> None:
        """Before a destructive step: pause while suspended; raise LockLostError unless we own our slot."""
        deadline = time.monotonic() + self.session_timeout
        while self.store.conn.state == SUSPENDED and time.monotonic() < deadline:
            time.sleep(0.1)
        if self.store.conn.state != CONNECTED:
            raise LockLostError(f"ZooKeeper session is {self.store.conn.state}: not starting a new step")
        self.store.require_owned(self.store.layout.slot(self.service, self.node))

    def step(self, phase: Phase, detail: str, action: Callable[[], None], undo: _Undo | None,
             fenced: bool = True) -> None:
        if fenced:
            self.fence()
        self.machine.to(phase, detail)
        crash_point(self.service, phase.value)
        action()
        if undo is not None:
            self.undo.append(undo)

    # -- the restart ------------------------------------------------------------
    def run(self, old_version: str | None, was_running: bool) -> Outcome:
        """Acquire a slot and restart; always leaves the slot released and the node idle."""
        self.acquire_slot()
        try:
            return self._restart(old_version, was_running)
        finally:
            try:
                self.store.release_slot(self.service, self.node)
            except CoordinationError as exc:
                log.warning("%s: could not release the restart slot (it goes with the session): %s",
                            self.service, exc)

    def _restart(self, old: str | None, was_running: bool) -> Outcome:
        svc, target = self.svc, self.target
        try:
            if was_running:
                self.step(Phase.DRAINING, "pre-stop hooks", lambda: svc.hooks("pre_stop", old),
                          _Undo("post-start hooks (undrain)", lambda: svc.hooks("post_start", old)))
                self.step(Phase.STOPPING, f"stopping {old}", lambda: svc.stop(old),
                          _Undo(f"start {old}", lambda: self._start_checked(old)))
            previous = self.releases.current_version()
            self.step(Phase.SWITCHING, f"switching to {target}", lambda: self.releases.switch(target),
                      _Undo(f"switch back to {previous}", lambda: self._switch_back(previous)))
            self.step(Phase.STARTING, f"starting {target}", lambda: svc.start(target),
                      _Undo(f"stop {target}", lambda: svc.stop(target)))
            # From here on the new version is up: health checks and undrain only restore service.
            self.step(Phase.CHECKING, "health checks", lambda: svc.wait_healthy(target), None, fenced=False)
            svc.hooks("post_start", target)
        except (ZkdeployError, OSError) as exc:
            return self._roll_back(exc, old)
        self.machine.to(Phase.IDLE, f"online at {target}")
        return Outcome(True, target)

    def _switch_back(self, previous: str | None) -> None:
        if previous:
            self.releases.switch(previous)
        else:
            self.releases.link.unlink(missing_ok=True)

    def _start_checked(self, version: str | None) -> None:
        if version is None:
            return
        self.svc.start(version)
        self.svc.wait_healthy(version)
        self.svc.hooks("post_start", version)

    def _roll_back(self, exc: BaseException, old: str | None) -> Outcome:
        kind = {
            HealthCheckError: "health checks failed",
            LockLostError: "lost the restart slot",
            SessionLostError: "lost the ZooKeeper session",
        }.get(type(exc), "step failed")
        error = f"{kind}: {exc}"
        log.error("%s: %s; rolling back %d step(s)", self.service, error, len(self.undo))
        self.machine.to(Phase.ROLLING_BACK, error)
        healthy = True
        for undo in reversed(self.undo):
            try:
                log.info("%s: undo: %s", self.service, undo.description)
                undo.action()
            except (ZkdeployError, OSError) as undo_exc:
                healthy = False
                log.error("%s: undo %r failed: %s", self.service, undo.description, undo_exc)
        self.undo.clear()
        self.machine.to(Phase.IDLE, f"rolled back to {old}: {error}")
        return Outcome(False, self.releases.current_version(), error, healthy and old is not None)
