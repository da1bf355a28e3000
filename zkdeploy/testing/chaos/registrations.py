"""Watching ZooKeeper from outside the agents: when did each node (re-)register in ``/nodes``?"""

from __future__ import annotations

import threading
import time

from zkdeploy.coordination import Store
from zkdeploy.errors import ZkdeployError
from zkdeploy.testing.chaos.plan import FAULT_KINDS
from zkdeploy.testing.chaos.result import FaultRecord


class Registrations:
    """Polls /nodes and keeps, per node, the (poll time, started) of its registrations.

    Nothing runs until :meth:`start`; :meth:`stop` joins the poller (bounded).
    """

    def __init__(self, store: Store, interval: float = 0.25) -> None:
        self.store = store
        self.interval = interval
        self.polls: list[tuple[float, dict[str, tuple[int, float]]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="registrations", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                nodes = self.store.nodes()
                self.polls.append((time.time(), {n: (r.pid, r.started) for n, r in nodes.items()}))
            # a poll missed while the ensemble elects a leader or the connection is re-established
            # only thins the record (the Store reports every ZooKeeper failure as a ZkdeployError)
            except ZkdeployError:
                pass
            self._stop.wait(self.interval)

    def start(self) -> Registrations:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=15)

    def back_at(self, node: str, fault: FaultRecord) -> float | None:
        """When ``node`` was registered again after ``fault``: at its SIGCONT if its session survived
        (the record from before the fault is still there), else at its new registration."""
        if fault.resumed is None:
            return None
        kind = FAULT_KINDS.get(fault.kind)
        replaces_agent = kind is not None and kind.replaces_agent
        for at, nodes in self.polls:
            if at < fault.resumed or node not in nodes:
                continue
            _pid, started = nodes[node]
            if started >= fault.started:
                return at  # registered again, by a new process or after a new session
            if not replaces_agent:
                return fault.resumed  # the stopped agent's session survived
            # a killed agent's record lingers until its session expires: wait for the new one
        return None
