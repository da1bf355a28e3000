"""The seeded fault plan: everything random in a chaos run is drawn here, from ``random.Random(seed)``.

A plan is a pure function of its seed (and of the fleet size and session timeout): two calls
with the same arguments return equal plans, so a run can be reproduced, and ``--plan`` prints
it as JSON, one object per run, each fault with its ``kind``.

Fault kinds live in one registry (:data:`FAULT_KINDS`): a :class:`FaultKind` says what a fault
of that kind targets, how long it is held (drawn from the run's RNG) and how far apart two
faults on the same kind of target must be.  How a kind is carried out is registered in
:mod:`zkdeploy.testing.chaos.faults`.  A kind is drawn by plans only when it is listed in
:data:`KINDS`; registering a kind does not change the plans of existing seeds, adding it to
:data:`KINDS` does.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass

from zkdeploy.testing.chaos.scenario import DEFAULT_SCENARIO, SESSION_TIMEOUT

#: a fault's target: an agent's host (its process or its link to ZooKeeper), the health endpoint
#: of one service on a host (the agent and the service run on), a ZooKeeper server (or the
#: whole ensemble), or the operator's side (commands through the real CLI)
HOST, HEALTH, ZK_SERVER, OPERATOR = "host", "health", "zk-server", "operator"

KILL, STOP_LONG, STOP_SHORT, ZK_LEADER = "kill", "stop-long", "stop-short", "zk-leader"
LINK_CUT_SHORT, LINK_CUT_LONG, REPLY_DROP = "link-cut-short", "link-cut-long", "reply-drop"
ZK_FOLLOWER, ZK_RESTART = "zk-follower", "zk-restart"
HEALTH_MALFORMED, HEALTH_HANG, HEALTH_FLAP = "health-malformed", "health-hang", "health-flap"
RESTART_FAILING = "restart-failing"
OP_PAUSE, OP_KILLSWITCH, OP_ABORT, OP_ROLLBACK, OP_UNDO = (
    "op-pause", "op-killswitch", "op-abort", "op-rollback", "op-undo")

#: faults are planned at offsets (seconds after the deploy command) within this window
FAULT_WINDOW = (0.5, 18.0)
#: at most this many hosts are under a fault at once (db's quorum 4 of 6 then still holds)
MAX_HOSTS_FAULTED = 2
#: a host is left alone this long after its fault ended, before it may be hit again
HOST_SETTLE = 4.0


@dataclass(frozen=True)
class FaultKind:
    """What the planner and the judge need to know about one kind of fault.

    ``hold(rng, session_timeout)`` draws the fault's duration; it must draw from ``rng`` the
    same way for a given kind forever, or existing seeds change.  ``replaces_agent``: the fault
    leaves a new agent process on the host (its registration from before the fault is stale).
    ``spacing``: a fault of this kind starts at least this many seconds after the previous one
    of a kind with a spacing on the same ``target`` (one ZooKeeper server down at a time).
    """

    name: str
    target: str
    hold: Callable[[random.Random, float], float]
    replaces_agent: bool = False
    spacing: float = 0.0


#: every known fault kind, by name (see :func:`register_kind`)
FAULT_KINDS: dict[str, FaultKind] = {}


def register_kind(kind: FaultKind) -> FaultKind:
    """Add ``kind`` to the registry; a name can be registered once."""
    if kind.name in FAULT_KINDS:
        raise ValueError(f"fault kind {kind.name!r} is already registered")
    FAULT_KINDS[kind.name] = kind
    return kind


register_kind(FaultKind(KILL, HOST, lambda rng, _st: rng.uniform(1.5, 5.0), replaces_agent=True))
register_kind(FaultKind(STOP_LONG, HOST, lambda rng, st: st + rng.uniform(1.5, 4.0)))
register_kind(FaultKind(STOP_SHORT, HOST, lambda rng, st: rng.uniform(0.5, st / 2)))
# one ZooKeeper server down at a time: the ensemble of 3 keeps its majority
register_kind(FaultKind(ZK_LEADER, ZK_SERVER, lambda rng, _st: rng.uniform(2.0, 6.0), spacing=15.0))
# the agent's link to ZooKeeper cut (both ways, nothing lost) while host and services run on
register_kind(FaultKind(LINK_CUT_SHORT, HOST, lambda rng, st: rng.uniform(0.5, st * 0.75)))
register_kind(FaultKind(LINK_CUT_LONG, HOST, lambda rng, st: st + rng.uniform(1.5, 4.0)))
# the hold is how long replies (server -> client) are dropped before the connection is reset
register_kind(FaultKind(REPLY_DROP, HOST, lambda rng, st: rng.uniform(0.2, min(1.5, st / 3))))
register_kind(FaultKind(ZK_FOLLOWER, ZK_SERVER, lambda rng, _st: rng.uniform(2.0, 6.0), spacing=15.0))
register_kind(FaultKind(ZK_RESTART, ZK_SERVER, lambda rng, _st: rng.uniform(1.0, 4.0), spacing=15.0))
# /health broken on one service of one host; a restart's check retries for about 10 s
register_kind(FaultKind(HEALTH_MALFORMED, HEALTH, lambda rng, _st: rng.uniform(1.0, 8.0)))
register_kind(FaultKind(HEALTH_HANG, HEALTH, lambda rng, _st: rng.uniform(1.0, 8.0)))
register_kind(FaultKind(HEALTH_FLAP, HEALTH, lambda rng, _st: rng.uniform(1.0, 8.0)))
# SIGKILL of an agent while the release it is checking fails; a new agent after the hold
register_kind(FaultKind(RESTART_FAILING, HOST, lambda rng, _st: rng.uniform(1.5, 4.0), replaces_agent=True))
# operator commands: the hold is how long a pause or a killswitch lasts (resume, off)
register_kind(FaultKind(OP_PAUSE, OPERATOR, lambda rng, _st: rng.uniform(1.0, 6.0), spacing=4.0))
register_kind(FaultKind(OP_KILLSWITCH, OPERATOR, lambda rng, _st: rng.uniform(1.0, 6.0), spacing=4.0))
register_kind(FaultKind(OP_ABORT, OPERATOR, lambda rng, _st: 0.0, spacing=4.0))
register_kind(FaultKind(OP_ROLLBACK, OPERATOR, lambda rng, _st: 0.0, spacing=4.0))
register_kind(FaultKind(OP_UNDO, OPERATOR, lambda rng, _st: 0.0, spacing=4.0))

#: the kinds a plan draws from, in this order (the order is part of every seed's plan)
KINDS = (KILL, STOP_LONG, STOP_SHORT, ZK_LEADER,
         LINK_CUT_SHORT, LINK_CUT_LONG, REPLY_DROP, ZK_FOLLOWER, ZK_RESTART,
         HEALTH_MALFORMED, HEALTH_HANG, HEALTH_FLAP, RESTART_FAILING,
         OP_PAUSE, OP_KILLSWITCH, OP_ABORT, OP_ROLLBACK, OP_UNDO)
#: the built-in kinds that hit an agent's host
HOST_KINDS = tuple(k for k in KINDS if FAULT_KINDS[k].target == HOST)
#: the kinds carried out through the operator's CLI
OPERATOR_KINDS = tuple(k for k in KINDS if FAULT_KINDS[k].target == OPERATOR)
#: the kinds that break a health endpoint (restart-failing too, in a run whose release is healthy)
HEALTH_KINDS = tuple(k for k in KINDS if FAULT_KINDS[k].target == HEALTH)


def is_host_fault(kind: str) -> bool:
    """True when a fault of ``kind`` hits an agent's host (False for unknown kinds)."""
    spec = FAULT_KINDS.get(kind)
    return spec is not None and spec.target == HOST


@dataclass
class PlannedFault:
    """One fault as planned: the injector resolves ``pick`` against the targets it sees then."""

    kind: str
    offset: float          # seconds after the deploy command
    hold: float            # seconds until the agent (or server) is restarted / continued
    pick: int              # which eligible target (index, modulo the candidates)
    prefer_restarting: bool  # aim at a host that holds a restart slot at that moment, if any


@dataclass
class Plan:
    seed: int
    nodes: int
    fail_health: bool
    faults: list[PlannedFault]
    scenario: str = DEFAULT_SCENARIO

    def to_json(self) -> str:
        """One line of JSON: the seed, the fleet size, ``fail_health``, the scenario and every fault
        with its ``kind``."""
        return json.dumps(asdict(self))


def plan_run(seed: int, nodes: int = 6, session_timeout: float = SESSION_TIMEOUT,
             scenario: str = DEFAULT_SCENARIO) -> Plan:
    """The reproducible part of a run: the faults (kind, moment, duration, target choice)."""
    rng = random.Random(seed)
    fail_health = rng.random() < 0.25
    count = rng.randint(3, 5)
    kinds = [rng.choice(KINDS) for _ in range(count)]
    offsets = sorted(round(rng.uniform(*FAULT_WINDOW), 2) for _ in range(count))
    faults = []
    last_spaced: dict[str, float] = {}  # target -> offset of its last spaced fault
    for name, offset in zip(kinds, offsets, strict=True):
        kind = FAULT_KINDS[name]
        hold = kind.hold(rng, session_timeout)
        if kind.spacing:
            earliest = last_spaced.get(kind.target, -1e9) + kind.spacing
            if offset < earliest:
                offset = round(earliest, 2)
            last_spaced[kind.target] = offset
        faults.append(PlannedFault(name, offset, round(hold, 2), rng.randrange(1 << 16), rng.random() < 0.6))
    faults.sort(key=lambda f: f.offset)
    return Plan(seed, nodes, fail_health, faults, scenario)
