"""Restart slots: the permission to take a service down on this node.

A ``SlotRequest`` is the protocol of DESIGN.md step 3: a place in the
service's FIFO restart queue; at its head, the quorum decision on a fresh
count (``Store.quorum_view``: who is present and who is a member, names only;
how many nodes hold an online token, counted, never listed: one round trip
at any fleet size); and, when one more node may go down, the slot taken in
one transaction with the node's ``restarting`` entry and the removal of its
online token, conditional on the availability epoch the decision counted at.  ``poll`` is one step of
that and never blocks: the decision cycle polls on every wake-up (the
predecessor's watch, a change of /current, the deploy entry) and goes on
answering everything else meanwhile.  ``hold_slots`` is the blocking form,
for undo requests and crash recovery, which run outside the cycle.

``fence`` is the check before every destructive step: the session is
connected (after waiting out a suspension up to the negotiated session
timeout) and still owns the slot.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator

from zkdeploy.agent.metrics import Metrics
from zkdeploy.agent.presence import Presence
from zkdeploy.agent.states import Phase
from zkdeploy.coordination import CONNECTED, SUSPENDED, Store
from zkdeploy.errors import ConflictError, CoordinationError, LockLostError, NotAdmittedError, RolloutAborted
from zkdeploy.model import ONLINE, RESTARTING, CurrentEntry
from zkdeploy.policy.quorum import may_go_down

log = logging.getLogger(__name__)

QUEUED = "queued behind "


class SlotRequest:
    """One node's request to take one service down for ``why`` (a target version, an undo)."""

    def __init__(self, store: Store, presence: Presence, service: str, quorum: int | str, why: str,
                 answering: Callable[[], bool] | None = None, metrics: Metrics | None = None) -> None:
        self.store = store
        self.metrics = metrics
        self._joined = time.monotonic()
        self.presence = presence
        self.node = presence.node
        self.service = service
        self.quorum = quorum
        self.why = why
        self._queue = store.restart_queue(service, self.node)
        self.granted = False
        self.free = False  # granted because this node was not online: going down cost no quorum
        self.reason = ""
        #: whether this node's service answers now (a fresh local probe): an entry that still says
        #: ``failed`` for a service that answers again must not make going down look free
        self.answering = answering

    def join(self) -> None:
        """Take a place in the restart queue (once) and say so."""
        machine = self.presence.machines[self.service]
        if machine.phase == Phase.IDLE:
            machine.to(Phase.STAGED, f"{self.why} ready")
        machine.to(Phase.WAITING, f"queued: {self.why}")
        self._joined = time.monotonic()
        self._queue.join()

    def poll(self, wake: threading.Event | None = None) -> bool:
        """One step: True when the slot is now held.  Otherwise ``reason`` says what it waits for,
        and ``wake`` is set by the watches left on what would change the answer."""
        if self.granted:
            return True
        position = self._queue.poll(wake)
        if position > 0:
            # A node whose service is down costs no quorum to restart, so it need not wait its turn
            # (the head may be waiting for exactly this node to come back up): it decides now on
            # its own entry, and its slot transaction is conditional on that entry as always.
            waiting = f"{QUEUED}{position} node(s) to restart"
            if self.presence.local[self.service].state == ONLINE:
                return self._waiting(waiting, queued=True)  # the usual case, known without a read
            me = self.store.current_entry(self.service, self.node)
            if me is None or me.state == ONLINE or (self.answering is not None and self.answering()):
                return self._waiting(waiting, queued=True)
            return self._take(me, free=True, wake=wake)
        try:
            with self.presence.lock:  # this node's entry and token are read as they are, not mid-publish
                view = self.store.quorum_view(self.service, self.node, wake)
        except ConflictError:  # the count kept changing while it was read: decide again
            if wake is not None:
                wake.set()
            return self._waiting("deciding again on a fresh count of the online tokens")
        me = view.me
        if me is None:
            raise LockLostError(f"this node's /current entry of {self.service} is gone")
        self_online = me.state == ONLINE
        if not self_online and self.answering is not None and self.answering():
            self_online = True  # our entry is stale: going down costs quorum
        online = view.others_online + int(self_online)
        present = len(view.present | {self.node})
        members = len(view.members | view.present)  # absent members count as down
        decision = may_go_down(online=online, present=present, members=members, quorum=self.quorum,
                               self_online=self_online)
        if not decision.allowed:
            return self._waiting(decision.reason)
        return self._take(me, free=not self_online, wake=wake, epoch=view.epoch)

    def _take(self, me: CurrentEntry, *, free: bool, wake: threading.Event | None, epoch: int | None = None) -> bool:
        """Take the slot in one transaction with this node's ``restarting`` entry, conditional on the
        entry read and on the availability epoch the decision counted at (``epoch``; a free take
        costs no quorum and has none); leave the queue then, so the next waiter decides with this
        node counted down."""
        self.free = free
        detail = f"restarting: {self.why}"
        leave = self._queue.leave_ops()  # leaving the queue is part of the slot's transaction when it can be
        with self.presence.lock:  # the health monitor must not publish between the read and the slot
            try:
                self.store.take_slot(self.service, me.evolve(state=RESTARTING, phase=Phase.WAITING.value,
                                                             detail=detail, since=time.time()), epoch, leave)
            except ConflictError:
                self._queue.recheck()  # our place may be gone too: the next poll reads the queue
                if wake is not None:
                    wake.set()  # our entry or the count changed since it was read: decide again on a fresh read
                return self._waiting("deciding again on a fresh read of /current")
            except NotAdmittedError as exc:
                return self._waiting(f"not admitted: {exc}")
            self.presence.publish(self.service, state=RESTARTING, detail=detail, write=False)
        self.granted = True
        if self.metrics is not None:
            self.metrics.quorum_waited(self.service, time.monotonic() - self._joined)
        if leave:
            self._queue.left()
        else:
            self._queue.release()  # the next waiter decides with this node counted as restarting
        return True

    def _waiting(self, reason: str, *, queued: bool = False) -> bool:
        """Say why this request waits.  A place in the queue that moved up is logged, not written:
        in a fleet of N waiting nodes, writing every move would make N writes per restart."""
        if reason != self.reason:
            log.info("%s: %s", self.service, reason)
            if not (queued and self.reason.startswith(QUEUED)):
                self.presence.note(self.service, reason)
            self.reason = reason
        return False

    @property
    def waited(self) -> float:
        """Seconds since this request joined the queue."""
        return time.monotonic() - self._joined

    @property
    def at_head(self) -> bool:
        return self._queue.position() == 0

    def cancel(self, reason: str) -> None:
        """Leave the queue without restarting (the deploy changed, the killswitch, stopping)."""
        self._queue.release()
        machine = self.presence.machines[self.service]
        if not self.granted and not machine.restarting:
            machine.reset(reason)
            self.presence.publish(self.service, detail=reason)

    def release(self) -> None:
        """Give the slot back (retrying through connection losses while the session lives)."""
        self._queue.release()
        if self.granted:
            self.store.release_slot(self.service, self.node)
            self.granted = False


def fence(store: Store, service: str, node: str) -> None:
    """Before a destructive step: wait out a suspension (up to the negotiated session timeout),
    then LockLostError unless the session is connected and owns this node's slot."""
    deadline = time.monotonic() + store.session_timeout
    while store.state == SUSPENDED and time.monotonic() < deadline:
        time.sleep(0.05)
    if store.state != CONNECTED:
        raise LockLostError(f"ZooKeeper session is {store.state}: not starting a new step")
    store.require_slot(service, node)


@contextlib.contextmanager
def hold_slots(store: Store, presence: Presence, quorums: dict[str, int | str], why: str,
               should_abort: Callable[[], str | None]) -> Iterator[None]:
    """Take a restart slot of each service in ``quorums`` under the quorum rules, for work other
    than a restart that may take them down (an undo, a crash recovery); afterwards give the slots
    back and publish what each service now runs.  RolloutAborted when ``should_abort`` says so."""
    held: list[SlotRequest] = []
    try:
        for service, quorum in quorums.items():
            request = SlotRequest(store, presence, service, quorum, why)
            held.append(request)
            request.join()
            while True:
                reason = should_abort()
                if reason:
                    raise RolloutAborted(reason)
                wake = threading.Event()
                if request.poll(wake):
                    break
                wake.wait(1.0)
        for request in held:
            fence(store, request.service, presence.node)
        yield
    except Exception:
        _give_back(held, presence, why)
        raise
    _give_back(held, presence, why)  # not on a BaseException (a simulated kill): a dead process cleans nothing


def _give_back(held: list[SlotRequest], presence: Presence, why: str) -> None:
    for request in held:
        try:
            request.release()
        except CoordinationError as exc:
            log.warning("%s: could not give the slot back: %s", request.service, exc)
        presence.host.release_hold(request.service)  # an undo (or a recovery) changed what a hold kept
        presence.machines[request.service].reset(f"{why} finished")
        presence.observe(request.service, write=True)
