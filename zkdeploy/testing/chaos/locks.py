"""Watching the restart queues and slots from outside the agents: the ``/locks`` tree over time.

:class:`LocksWatch` polls, for every service, the restart queue (which node each queue node
belongs to, in order), the slots, and what ``/current`` says each node is doing, so the judge
can tell whether a queue or slot node outlived the step that made it (see
:func:`zkdeploy.testing.chaos.invariants.check_locks`).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from zkdeploy.coordination import Store
from zkdeploy.errors import ZkdeployError


@dataclass(frozen=True)
class LocksPoll:
    """One look at the lock tree of every service, and at /current, at wall time ``at``."""

    at: float
    queues: dict[str, tuple[str, ...]]           # service -> the node of each queue node, first first
    slots: dict[str, tuple[str, ...]]            # service -> nodes holding a slot
    current: dict[str, dict[str, tuple[str, str]]]  # service -> node -> (state, phase)


class LocksWatch:
    """Polls the lock tree of ``services`` every ``interval`` seconds in a thread.

    Nothing runs until :meth:`start`; :meth:`stop` joins the poller (bounded).  A poll that
    fails (an election, a reconnect) is skipped: it only thins the record.
    """

    def __init__(self, store: Store, services: list[str], interval: float = 0.25) -> None:
        self.store = store
        self.services = services
        self.interval = interval
        self.polls: list[LocksPoll] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="locks-watch", daemon=True)

    def poll_once(self) -> LocksPoll:
        queues, slots, current = {}, {}, {}
        for service in self.services:
            # /current first: a lock node seen after its owner's entry changed is judged by the
            # entry that was true when it was made, never by one older than the lock node
            current[service] = {n: (e.state, e.phase) for n, e in self.store.current(service).items()}
            queues[service] = tuple(self.store.queue(service))
            slots[service] = tuple(self.store.slots(service))
        return LocksPoll(time.time(), queues, slots, current)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.polls.append(self.poll_once())
            except ZkdeployError:
                pass
            self._stop.wait(self.interval)

    def start(self) -> LocksWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=15)
