"""The records zkdeploy keeps in ZooKeeper, as immutable values.

Each record knows how to turn itself into the JSON stored in its znode and
back.  Records read from ZooKeeper carry the znode version (``zversion``) so
that writes which race can be made conditional.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field, fields, replace
from enum import StrEnum
from typing import Any, Literal, TypeVar, get_args

from zkdeploy.errors import CoordinationError

T = TypeVar("T", bound="Record")

# Service states published in /dc/current (what the service is doing now).
ONLINE = "online"
RESTARTING = "restarting"
FAILED = "failed"
STOPPED = "stopped"
SERVICE_STATES = (ONLINE, RESTARTING, FAILED, STOPPED)

#: what a tested scenario's step may do (zkdeploy.config.scenario; agents check steps read back from ZooKeeper)
StepAction = Literal["lb_block", "install", "command", "lb_unblock"]
STEP_ACTIONS: frozenset[str] = frozenset(get_args(StepAction))


class DeployState(StrEnum):
    """The state of a deploy entry (``/dc/deploy/<seq>``).

    Stored in the entry's JSON as its plain value (``"pending"``, ...).  Which
    state may follow which, and who may make each move, is defined once in
    zkdeploy.policy.lifecycle; every change of state goes through its
    ``transition``.
    """

    PENDING = "pending"          # active when at the head of the queue
    PAUSED = "paused"            # an operator paused it: no node starts a new restart for it
    HALTED = "halted"            # past its failure budget with on_failure: pause
    DONE = "done"                # every present node runs the version (terminal)
    ABORTED = "aborted"          # an operator (or a failed deploy it depended on) stopped it (terminal)
    ROLLED_BACK = "rolled_back"  # past its budget with on_failure: rollback; a rollback deploy follows (terminal)


PENDING = DeployState.PENDING
PAUSED = DeployState.PAUSED
HALTED = DeployState.HALTED
DONE = DeployState.DONE
ABORTED = DeployState.ABORTED
ROLLED_BACK = DeployState.ROLLED_BACK
#: the states an entry can still leave (the others are terminal: a closed entry never opens again)
OPEN_DEPLOY_STATES = frozenset({PENDING, PAUSED, HALTED})


def now() -> float:
    return time.time()


@dataclass(frozen=True)
class Record:
    """Base of every stored record: JSON encoding and the znode version."""

    zversion: int = field(default=-1, compare=False, repr=False)

    def to_bytes(self) -> bytes:
        data = asdict(self)
        data.pop("zversion", None)
        return json.dumps(data, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls: type[T], raw: bytes, zversion: int = -1, **extra: Any) -> T:
        try:
            data = json.loads(raw.decode() or "{}")
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CoordinationError(f"corrupt {cls.__name__} record: {exc}") from None
        if not isinstance(data, dict):
            raise CoordinationError(f"corrupt {cls.__name__} record: not a JSON object")
        known = {f.name for f in fields(cls)}
        data = {k: v for k, v in data.items() if k in known}
        data.update(extra)
        for key, value in data.items():
            if isinstance(value, list):
                data[key] = tuple(value)
        try:
            return cls(zversion=zversion, **data)
        except TypeError as exc:
            raise CoordinationError(f"corrupt {cls.__name__} record: {exc}") from None

    def evolve(self: T, **changes: Any) -> T:
        return replace(self, **changes)


@dataclass(frozen=True)
class NodeRecord(Record):
    """``/dc/nodes/<node>``: an agent's presence."""

    node: str = ""
    address: str = ""
    services: tuple[str, ...] = ()
    labels: dict[str, Any] = field(default_factory=dict)
    agent_version: str = ""
    pid: int = 0
    started: float = 0.0
    #: what the agent found out about its host (zkdeploy.agent.facts): dotted keys like ``os.family``
    facts: dict[str, Any] = field(default_factory=dict)
    #: site fact sources that failed at the last gathering (a file that does not parse, an executable
    #: that failed or timed out), each ``source: why``
    fact_errors: tuple[str, ...] = ()


@dataclass(frozen=True)
class Member(Record):
    """``/dc/members/<service>/<node>``: a node that has registered the service (persistent).

    A member stays one, present or not, until an operator forgets it
    (``zkdeploy nodes forget``): a percentage quorum is a share of the
    members, and an absent member counts as down.  ``first_seen`` is when the
    node first registered the service; ``last_seen`` when its latest
    ZooKeeper session registered it (it is not refreshed every cycle).
    """

    node: str = ""
    first_seen: float = 0.0
    last_seen: float = 0.0


@dataclass(frozen=True)
class CurrentEntry(Record):
    """``/dc/current/<service>/<node>``: what this node runs and in which state.

    ``state`` is the service's availability (online, restarting, failed,
    stopped); ``phase`` is where the agent's state machine is for this service
    (see zkdeploy.agent.states).
    """

    node: str = ""
    version: str | None = None
    state: str = STOPPED
    phase: str = "idle"
    target: str | None = None
    since: float = 0.0
    detail: str = ""


@dataclass(frozen=True)
class Release(Record):
    """``/dc/staging/<service>/<version>``: a staged release."""

    service: str = ""
    version: str = ""
    sha256: str = ""
    size: int = 0
    origin: str = ""
    staged_by: str = ""
    staged_at: float = 0.0
    info_hash: str | None = None


#: the fields of a deploy entry fixed when it is queued, which decide what runs where (what its seal
#: covers); the others are its progress, and ``progress_deadline`` (when a stall is reported)
SPEC_FIELDS = ("service", "version", "group", "requested_by", "created", "max_failures", "kind", "previous",
               "on_failure", "waves", "nodes", "select", "scenario", "steps", "seal")


@dataclass(frozen=True)
class DeployEntry(Record):
    """``/dc/deploy/<seq>``: one service's rollout in the deploy queue.

    ``name`` is the znode name (its sequence number orders the queue).
    """

    name: str = ""
    service: str = ""
    version: str = ""
    state: str = PENDING  # a DeployState value (a plain str when read back from ZooKeeper)
    group: str = ""
    requested_by: str = ""
    created: float = 0.0
    finished: float | None = None
    max_failures: int | str = 0
    failures: tuple[dict[str, Any], ...] = ()
    message: str = ""
    kind: str = "deploy"
    previous: str | None = None
    on_failure: str = "pause"
    progress_deadline: float = 600.0
    stalled_since: float | None = None
    #: the wave plan, resolved when the deploy was queued: each wave's spec (zkdeploy.config.schema.WaveSpec)
    #: and the ``nodes`` it took then; empty for a deploy without waves (one wave of every node)
    waves: tuple[dict[str, Any], ...] = ()
    wave: int = 0  # the open wave (index into ``waves``); the waves before it are verified
    #: per wave: ``opened``, ``verified`` (times) and ``approved_by``
    wave_log: tuple[dict[str, Any], ...] = ()
    #: the nodes a ``--select`` discovered when the deploy was queued: only they restart for it, and
    #: it completes when they do (empty: every node of the service)
    nodes: tuple[str, ...] = ()
    select: str = ""
    #: a tested scenario (zkdeploy.config.scenario): its name and the steps each host runs, checked
    scenario: str = ""
    steps: tuple[dict[str, Any], ...] = ()
    #: the name of the entry's seal (``seals/<seal>``), made with it in one transaction by whoever
    #: queued it: the digest of what the entry asks for (``spec_digest``), which agents may not
    #: write (docs/security.md); empty for an entry queued before seals
    seal: str = ""

    @property
    def is_open(self) -> bool:
        return self.state in OPEN_DEPLOY_STATES

    @property
    def failures_key(self) -> str:
        """The name of the parent where nodes report their failures on it (``failures/<key>``): its
        seal, made with it (its name for an entry queued before seals)."""
        return self.seal or self.name

    def spec_digest(self) -> str:
        """SHA-256 of what the entry asks for, as queued (``SPEC_FIELDS``): every field but its
        progress (state, finished, failures, message, stalled_since, wave, wave_log), which agents
        write, and its progress deadline.  Computed once per entry object (it is frozen): every
        agent checks the open entries against their seals on every cycle."""
        cached: str | None = self.__dict__.get("_spec_digest")
        if cached is None:
            data = asdict(self)
            spec = {k: data[k] for k in SPEC_FIELDS}
            cached = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
            object.__setattr__(self, "_spec_digest", cached)
        return cached

    def to_bytes(self) -> bytes:
        data = asdict(self)
        data.pop("zversion", None)
        data.pop("name", None)
        return json.dumps(data, sort_keys=True).encode()


@dataclass(frozen=True)
class Killswitch(Record):
    """``/dc/control/killswitch``: when present, no agent starts a new step."""

    message: str = ""
    by: str = ""
    since: float = 0.0


MARKS = ("bad", "badfwd", "good", "none")


@dataclass(frozen=True)
class Mark(Record):
    """``/dc/marks/<service>/m-<seq>``: one mark of a release (append-only; the latest per version counts).

    ``bad``: nodes running it go back to the newest older release not marked
    bad; ``badfwd``: they go forward to the next newer one not marked bad that
    passed its first wave; ``good``: waves that require a good release accept
    it; ``none``: the release is unmarked again.

    ``seq``, ``key`` and ``sig``: a signed mark's sequence number (above every
    earlier mark of the service), the id of the key that signed it, and the
    signature (zkdeploy.signing); all empty for an unsigned mark.
    """

    service: str = ""
    version: str = ""
    mark: str = "none"
    by: str = ""
    at: float = 0.0
    why: str = ""
    seq: int = 0
    key: str = ""
    sig: str = ""

    @property
    def signed(self) -> bool:
        return bool(self.sig)


@dataclass(frozen=True)
class Pin(Record):
    """``/dc/pins/<node>/<service>``: this node runs ``version`` whatever deploys, waves and marks say,
    until ``until`` (None: until unpinned).

    ``kind`` ``unpin``: a signed removal of the pin (``zkdeploy unpin --sign``), kept in the pin's place
    so that its sequence number goes on; it is never active.  ``seq``, ``key``, ``sig``: as for a Mark.
    """

    node: str = ""
    service: str = ""
    version: str = ""
    until: float | None = None
    by: str = ""
    at: float = 0.0
    why: str = ""
    kind: str = "pin"
    seq: int = 0
    key: str = ""
    sig: str = ""

    @property
    def signed(self) -> bool:
        return bool(self.sig)

    def active(self, now: float) -> bool:
        return self.kind == "pin" and (self.until is None or now < self.until)
