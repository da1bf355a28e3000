"""The agent's state machine for one service on one node.

Every phase and every allowed transition is listed here, and nowhere else::

    idle ─► fetching ─► staged ─► waiting ─► draining ─► stopping ─► switching ─► starting ─► checking ─► idle (online at the target)
                │          │         │           │           │           │            │           │
                ▼          ▼         ▼           └───────────┴───────────┴────────────┴───────────┴─► rolling_back ─► idle (online at the old version, or failed)
              idle       idle      idle (aborted: deploy changed, killswitch, agent stopping, lock lost)

A restart run as a tested scenario whose check fails moves to ``held``
instead of rolling back: the node stays as the failed step left it (out of
the load balancer), is published ``failed`` so it keeps counting against the
quorum, and the health monitor leaves it alone until the next restart or an
operator's undo.

A node whose service is not running skips draining and stopping
(``waiting ─► switching``).  Payloads are fetched beside the decision cycle:
a node may queue for a restart into a release it holds while it still
fetches another one (``fetching ─► waiting``); the fetch then no longer moves
the phase.  The availability published for the quorum
(``online``, ``restarting``, ``failed``, ``stopped``) follows from the phase:
every phase from draining to rolling_back is ``restarting``.
"""  # noqa: E501 (the diagram's lines are as long as it is wide)

from __future__ import annotations

import threading
from collections.abc import Callable
from enum import Enum

from zkdeploy.errors import ZkdeployError


class Phase(str, Enum):  # noqa: UP042 (StrEnum would change str(Phase.IDLE) from 'Phase.IDLE' to 'idle')
    IDLE = "idle"
    FETCHING = "fetching"
    STAGED = "staged"
    WAITING = "waiting"
    DRAINING = "draining"
    STOPPING = "stopping"
    SWITCHING = "switching"
    STARTING = "starting"
    CHECKING = "checking"
    ROLLING_BACK = "rolling_back"
    HELD = "held"  # a scenario's check failed: the node stays as it is, out of the load balancer


P = Phase
TRANSITIONS: dict[Phase, frozenset[Phase]] = {
    P.IDLE: frozenset({P.FETCHING, P.STAGED, P.WAITING}),
    P.FETCHING: frozenset({P.STAGED, P.IDLE, P.WAITING}),
    P.STAGED: frozenset({P.WAITING, P.FETCHING, P.IDLE}),
    P.WAITING: frozenset({P.DRAINING, P.SWITCHING, P.STAGED, P.IDLE}),
    P.DRAINING: frozenset({P.STOPPING, P.ROLLING_BACK, P.HELD}),
    P.STOPPING: frozenset({P.SWITCHING, P.ROLLING_BACK, P.HELD}),
    P.SWITCHING: frozenset({P.STARTING, P.ROLLING_BACK, P.HELD}),
    P.STARTING: frozenset({P.CHECKING, P.ROLLING_BACK, P.HELD}),
    P.CHECKING: frozenset({P.IDLE, P.ROLLING_BACK, P.HELD}),
    P.ROLLING_BACK: frozenset({P.IDLE}),
    P.HELD: frozenset({P.IDLE, P.WAITING}),
}

#: phases in which the service is (or may be) out of service for a restart
RESTART_PHASES = frozenset({P.DRAINING, P.STOPPING, P.SWITCHING, P.STARTING, P.CHECKING, P.ROLLING_BACK})


class TransitionError(ZkdeployError):
    """A transition that the state machine does not allow (a bug, never user input)."""


class ServiceMachine:
    """The phase of one service, changed only through ``to()``.

    ``on_change(old, new, detail)`` is called after every transition (the
    agent publishes it to ZooKeeper and logs it).
    """

    def __init__(self, service: str, on_change: Callable[[Phase, Phase, str], None],
                 phase: Phase = Phase.IDLE) -> None:
        if phase not in (Phase.IDLE, Phase.HELD):
            raise TransitionError(f"{service}: an agent starts idle, or held as it was left")
        self.service = service
        self._phase: Phase = phase
        self._on_change = on_change
        self._lock = threading.Lock()

    @property
    def phase(self) -> Phase:
        return self._phase

    @property
    def restarting(self) -> bool:
        return self._phase in RESTART_PHASES

    def to(self, new: Phase, detail: str = "") -> None:
        with self._lock:
            old = self._phase
            if new == old:
                return
            if new not in TRANSITIONS[old]:
                raise TransitionError(f"{self.service}: {old.value} -> {new.value} is not a valid transition")
            self._phase = new
        self._on_change(old, new, detail)

    def to_from(self, allowed: frozenset[Phase] | set[Phase], new: Phase, detail: str = "") -> bool:
        """Move to ``new`` only if the phase is one of ``allowed`` (atomically); True if it moved."""
        with self._lock:
            old = self._phase
            if old not in allowed or old == new:
                return False
            if new not in TRANSITIONS[old]:
                raise TransitionError(f"{self.service}: {old.value} -> {new.value} is not a valid transition")
            self._phase = new
        self._on_change(old, new, detail)
        return True

    def reset(self, detail: str = "") -> None:
        """Back to idle from any non-restart phase (deploy changed, fetch failed)."""
        if self._phase in RESTART_PHASES:
            raise TransitionError(f"{self.service}: cannot leave {self._phase.value} without rolling back")
        if self._phase != Phase.IDLE:
            self.to(Phase.IDLE, detail)
