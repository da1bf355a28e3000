"""One restart of one service on this node, under the quorum rules.

``Restart.run`` is the protocol of DESIGN.md step 3-4: queue, wait for the
quorum under the lock, take a slot, then drain, stop, switch, start, check,
undrain.  Each destructive step is preceded by a fencing check and recorded
in the host's journal with its undo before it is made, so a failure, a lost
session or a failed health check rolls the node back to the release it ran
before, and a crash leaves a journal that says exactly what was done.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from zkdeploy.agent.faults import crash_point
from zkdeploy.agent.host_actions import HOOKS, START, STOP
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
from zkdeploy.journal import NOTHING_TO_UNDO, ChangeSetBuilder, Executor, undo_change
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
    change_id: int | None = None
    fenced: bool = False  # interrupted by a lost slot or session: not the release's fault


def restart_tasks(cs: ChangeSetBuilder, svc: HostService, releases: ReleaseDir, old: str | None, target: str,
                  was_running: bool, enter: Callable[..., None] = lambda *a, **k: None,
                  check: Callable[[], None] | None = None) -> None:
    """The tasks of one restart, in order, each with its undo.

    The one code path of a restart: run live under a slot, and in NoAction
    mode (``zkdeploy plan``) to list exactly what the live run would change.
    ``enter(phase, detail, fenced=True)`` is called before each step.
    """
    if was_running:
        enter(Phase.DRAINING, "pre-stop hooks")
        cs.task(HOOKS, svc.hook_params("pre_stop", old), undo=(HOOKS, svc.hook_params("post_start", old)))
        enter(Phase.STOPPING, f"stopping {old}")
        cs.task(STOP, svc.stop_params(old), undo=(START, svc.start_params(old, wait_healthy=True)))
    enter(Phase.SWITCHING, f"switching to {target}")
    cs.swap_symlink(releases.link, releases.link_target(target))
    enter(Phase.STARTING, f"starting {target}")
    cs.task(START, svc.start_params(target, wait_healthy=False), undo=(STOP, svc.stop_params(target)))
    # From here on the new version is up: health checks and undrain only restore service.
    enter(Phase.CHECKING, "health checks", fenced=False)
    if check is not None:
        check()
    cs.task(HOOKS, svc.hook_params("post_start", target), undo=NOTHING_TO_UNDO)


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
    executor: Executor | None = None
    deploy_id: str | None = None
    on_failure: Callable[[str], None] | None = None
    on_quorum_wait: Callable[[], None] | None = None  # called by the queue's head while it waits
    session_timeout: float = 10.0

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
                if self.on_quorum_wait is not None:
                    self.on_quorum_wait()
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

    def enter(self, phase: Phase, detail: str, fenced: bool = True) -> None:
        """Move to ``phase``: fenced first for destructive steps, then the crash hook."""
        if fenced:
            self.fence()
        self.machine.to(phase, detail)
        crash_point(self.service, phase.value)

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
        """Every change goes through the journal, recorded with its undo before it is made."""
        change_id: int | None = None
        try:
            self.releases.link.parent.mkdir(parents=True, exist_ok=True)
            with self.executor.change_set(f"{self.service} {old or '-'} -> {self.target}",
                                          deploy_id=self.deploy_id) as cs:
                change_id = cs.id
                restart_tasks(cs, self.svc, self.releases, old, self.target, was_running, self.enter,
                              check=lambda: self.svc.wait_healthy(self.target))
        except (ZkdeployError, OSError) as exc:
            return self._roll_back(exc, old, change_id)
        self.machine.to(Phase.IDLE, f"online at {self.target}")
        return Outcome(True, self.target, change_id=change_id)

    def _roll_back(self, exc: BaseException, old: str | None, change_id: int | None) -> Outcome:
        kind = {
            HealthCheckError: "health checks failed",
            LockLostError: "lost the restart slot",
            SessionLostError: "lost the ZooKeeper session",
        }.get(type(exc), "step failed")
        error = f"{kind}: {exc}"
        fenced = isinstance(exc, (LockLostError, SessionLostError))
        log.error("%s: %s; undoing change set %s", self.service, error, change_id)
        if self.on_failure is not None and not fenced:
            # Reported before the roll-back brings this node back online, so that no other
            # node takes its place in the quorum and restarts into a version known to fail.
            try:
                self.on_failure(error)
            except ZkdeployError as report_exc:
                log.error("%s: could not report the failure: %s", self.service, report_exc)
        self.machine.to(Phase.ROLLING_BACK, error)
        healthy = old is not None
        if change_id is not None:
            try:
                report = undo_change(self.executor.journal, self.executor.registry, change_id)
                log.info("%s: change set %d %s", self.service, change_id, report.status)
            except ZkdeployError as undo_exc:
                healthy = False
                log.error("%s: undo of change set %d failed: %s", self.service, change_id, undo_exc)
        self.machine.to(Phase.IDLE, f"rolled back to {old}: {error}")
        return Outcome(False, self.releases.current_version(), error, healthy, change_id, fenced)
