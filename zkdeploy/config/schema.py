"""The shape of zkdeploy's configuration, validated by pydantic.

Unknown keys are errors (a typo must not silently disable a health check).
Cross-field rules (dependencies, cycles, template fields) live in the loader,
which reports every problem at once.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from zkdeploy.coordination.credentials import Credentials, Security, TlsOptions
from zkdeploy.errors import ZkdeployError
from zkdeploy.names import check_name
from zkdeploy.policy.quorum import parse_quorum


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HealthCheck(_Strict):
    """One health check: exactly one of ``http``, ``tcp`` or ``command``.

    ``http`` passes on a 2xx answer, ``tcp`` when a connection opens,
    ``command`` when it exits 0.  Each attempt has ``timeout`` seconds; the
    check is tried ``retries`` times, ``interval`` seconds apart, before it
    fails.  All strings are templates (see ServiceSpec).
    """

    http: str | None = None
    tcp: str | None = None
    command: str | None = None
    timeout: float = Field(2.0, gt=0, le=600)
    interval: float = Field(1.0, ge=0, le=600)
    retries: int = Field(30, ge=1, le=100000)

    @model_validator(mode="after")
    def _exactly_one(self) -> HealthCheck:
        given = [k for k in ("http", "tcp", "command") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError("a health check needs exactly one of 'http', 'tcp' or 'command'")
        return self

    @property
    def kind(self) -> str:
        return "http" if self.http else "tcp" if self.tcp else "command"

    @property
    def target(self) -> str:
        return self.http or self.tcp or self.command or ""


_DURATION = re.compile(r"^\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*$")


def parse_duration(value: object, what: str = "duration") -> float:
    """Seconds from a number or a text like ``1h``, ``30m``, ``1h30m``, ``90s``, ``45``."""
    if isinstance(value, bool):
        raise ValueError(f"{what}: expected seconds or a duration like '1h30m'")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str) and value.strip() and (m := _DURATION.match(value)) and any(m.groups()):
        hours, minutes, secs = (float(g) if g else 0.0 for g in m.groups())
        seconds = hours * 3600 + minutes * 60 + secs
    else:
        raise ValueError(f"{what} {value!r}: expected seconds or a duration like '1h30m'")
    if seconds < 0:
        raise ValueError(f"{what} {value!r}: must not be negative")
    return seconds


class WaveSpec(_Strict):
    """One wave of a service's rollout (etch's controlled deployment).

    A wave takes the nodes its ``select`` matches (see zkdeploy.policy.selector)
    that no earlier wave took; ``canary: N`` keeps only N of them (the same N
    every time).  It opens when the release is ``min_age`` old (since it was
    staged), ``soak`` after the previous wave was verified healthy, and, with
    ``approval``, once an operator promotes it (only a release marked good,
    with ``require_good``).  A wave is verified when each of its nodes runs
    the release and has stayed healthy for ``min_healthy_time``.
    """

    name: str
    select: str = "*"
    canary: int | None = Field(None, ge=1)
    min_age: float = 0.0
    soak: float = 0.0
    approval: bool = False
    require_good: bool = False
    min_healthy_time: float = 0.0

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_name("wave", value)

    @field_validator("select")
    @classmethod
    def _select(cls, value: str) -> str:
        from zkdeploy.policy.selector import parse

        try:
            parse(value)
        except ZkdeployError as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("min_age", "soak", "min_healthy_time", mode="before")
    @classmethod
    def _duration(cls, value: object, info: ValidationInfo) -> float:
        return parse_duration(value, info.field_name or "duration")


class LoadBalancerSpec(_Strict):
    """How a service sits behind HAProxy (docs in conf/haproxy.cfg).

    With this key the restart drains the node first and puts it back last,
    both as journaled steps: the agent answers HAProxy's agent-check (its
    ``lb_agent`` port; the server line sends ``agent-send "<service>\\n"``)
    with ``drain_state`` (``drain`` or ``maint``), then waits until the balancer
    reports the server ``backend``/``server`` drained with no current session,
    read through the runtime API ``socket``, or ``drain_timeout`` passed.
    Without ``socket`` the drain waits ``agent_interval`` twice (HAProxy
    polls the agent that often) and cannot confirm.  ``ready_timeout`` bounds
    the wait for the balancer to take the server back (UP, not drained).
    ``server`` is a template (``{node}``, ``{service}`` and the agent's vars).
    """

    backend: str
    server: str = "{node}"
    socket: str | None = None
    drain_state: Literal["drain", "maint"] = "drain"
    drain_timeout: float = Field(30.0, gt=0, le=3600)
    ready_timeout: float = Field(30.0, gt=0, le=3600)
    agent_interval: float = Field(2.0, gt=0, le=600)


class ServiceSpec(_Strict):
    """One service of the fleet catalog.

    Commands and health-check targets are templates filled with ``{release}``
    (the release directory), ``{version}``, ``{service}``, ``{node}``,
    ``{data}`` (the agent's data directory) and the agent's ``vars``.
    With ``managed: true`` (the default) ``start`` runs in the foreground and
    the agent keeps its process (stopped with SIGTERM to its process group
    unless ``stop`` is given); with ``managed: false`` ``start`` and ``stop``
    are one-shot commands such as ``systemctl start web``.
    """

    depends_on: tuple[str, ...] = ()
    quorum: int | str
    start: str
    stop: str | None = None
    managed: bool = True
    health_checks: tuple[HealthCheck, ...] = ()
    pre_stop: tuple[str, ...] = ()
    post_start: tuple[str, ...] = ()
    keep_releases: int = Field(3, ge=1, le=1000)
    max_failures: int | str = 0
    on_failure: Literal["pause", "rollback", "mark_bad"] = "pause"
    progress_deadline: float = Field(600.0, gt=0)
    waves: tuple[WaveSpec, ...] = ()
    start_timeout: float = Field(60.0, gt=0)
    stop_timeout: float = Field(30.0, gt=0)
    hook_timeout: float = Field(60.0, gt=0)
    load_balancer: LoadBalancerSpec | None = None

    @field_validator("quorum", "max_failures", mode="before")
    @classmethod
    def _quorum(cls, value: object, info: ValidationInfo) -> object:
        try:
            parse_quorum(value, info.field_name or "quorum")
        except ZkdeployError as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("depends_on", mode="before")
    @classmethod
    def _deps(cls, value: object) -> object:
        if isinstance(value, str):
            return (value,)
        return value

    @model_validator(mode="after")
    def _managed_needs(self) -> ServiceSpec:
        if not self.managed and not self.stop:
            raise ValueError("a service with 'managed: false' needs a 'stop' command")
        names = [w.name for w in self.waves]
        if len(set(names)) != len(names):
            raise ValueError(f"waves: names must be unique, got {', '.join(names)}")
        return self


class Catalog(_Strict):
    """The fleet catalog: every service zkdeploy can deploy."""

    services: dict[str, ServiceSpec]

    def graph(self) -> dict[str, tuple[str, ...]]:
        return {name: spec.depends_on for name, spec in self.services.items()}


class ZooKeeperTls(_Strict):
    """TLS to the ensemble's secure port: the CA to trust and, optionally, a client certificate
    (its subject is then this node's identity in ACLs).  Verification and host name checks are
    always on."""

    ca: str
    cert: str | None = None
    key: str | None = None
    key_password_file: str | None = None


class ZooKeeperSettings(_Strict):
    hosts: str = "127.0.0.1:2181"
    root: str = "/dc"
    session_timeout: float = Field(10.0, ge=1, le=600)
    connect_timeout: float = Field(15.0, gt=0, le=600)
    operation_timeout: float = Field(10.0, gt=0, le=600)
    auth_file: str | None = None  # credentials (zkdeploy.coordination.credentials); mode 600
    tls: ZooKeeperTls | None = None

    def security(self) -> Security:
        """The credentials and TLS options these settings name (files read and checked now)."""
        tls = TlsOptions(**self.tls.model_dump()) if self.tls is not None else None
        return Security(Credentials.load(self.auth_file) if self.auth_file else None, tls)

    @field_validator("root")
    @classmethod
    def _root(cls, value: str) -> str:
        if not value.startswith("/") or (value.endswith("/") and value != "/") or "//" in value:
            raise ValueError("root must be an absolute znode path like '/dc'")
        for part in value.strip("/").split("/"):
            if part:
                try:
                    check_name("root path component", part)
                except ZkdeployError as exc:
                    raise ValueError(str(exc)) from None
        return value


class SwarmSettings(_Strict):
    """The agent's BitTorrent session (payloads come from peers; ZooKeeper is the tracker)."""

    enabled: bool = True
    listen_port: int = Field(6881, ge=0, le=65535)
    upload_rate_limit: int = Field(0, ge=0)          # bytes/s, 0 = unlimited
    download_rate_limit: int = Field(0, ge=0)
    stall_timeout: float = Field(60.0, gt=0)         # no byte from any peer this long: fall back to the origin
    allow_multiple_connections_per_ip: bool = False  # true only when several agents share one address
    max_peers: int = Field(50, ge=1)                 # peers to connect to, nearest first
    # the session runs in a worker process started when there is something to fetch or a fetcher wakes
    # this holder, and stopped after this many seconds with no download and no peer (0: never stopped)
    idle_stop: float = Field(60.0, ge=0)


class Labels(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)
    rack: str | None = None
    dc: str | None = None
    env: str | None = None


class FactsSettings(_Strict):
    """Site facts (zkdeploy.agent.facts): a YAML ``file`` of facts and a ``dir`` of executables that
    each print a YAML mapping or ``key=value`` lines, each run for at most ``timeout`` seconds."""

    file: str | None = None
    dir: str | None = None
    timeout: float = Field(5.0, gt=0, le=300)


class LbAgentSettings(_Strict):
    """The agent's answer to HAProxy's agent-check (zkdeploy.agent.lbcheck): ``listen``:``port``."""

    listen: str = "127.0.0.1"
    port: int = Field(..., ge=0, le=65535)


class MetricsSettings(_Strict):
    """The agent's Prometheus endpoint (``http://<listen>/metrics``; docs/metrics.md).  Loopback by
    default: put it on another address only where the scraper needs it."""

    enabled: bool = True
    listen: str = "127.0.0.1:9469"

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host.strip("[]") or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError("listen must be host:port, like '127.0.0.1:9469' (port 0: any free port)")
        return value


class SigningSettings(_Strict):
    """Signed releases: with trusted public keys (several, for rotation), the agent never fetches,
    unpacks or switches to a release that is unsigned, signed by another key, tampered with, or
    older than one it installed without a new (rollback) signature."""

    trusted_keys: tuple[str, ...] = ()


class ServiceLaunchSettings(_Strict):
    """How the agent starts its managed services (zkdeploy.runner.launch; docs/operations.md).

    ``direct``: children of the agent, each in a session of its own.  ``systemd``: each in a
    transient scope ``zkdeploy-<service>.scope`` under ``slice`` (``systemd-run --scope``), a cgroup
    of its own outside the agent's unit; the agent refuses to start when it cannot make one.
    ``auto`` (the default): ``systemd`` when systemd is PID 1, ``systemd-run`` exists, the agent was
    started by systemd and a probe scope can be made, else ``direct``.  ``properties`` are
    ``--property=`` assignments of each scope (resource limits such as ``MemoryMax=1G``).
    """

    mode: Literal["auto", "systemd", "direct"] = "auto"
    slice: str = "zkdeploy.slice"
    properties: tuple[str, ...] = ()

    @field_validator("properties")
    @classmethod
    def _properties(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            key, sep, _ = item.partition("=")
            if not sep or not re.fullmatch(r"[A-Z][A-Za-z0-9]*", key):
                raise ValueError(f"{item!r} is not a systemd property assignment like 'MemoryMax=1G'")
        return value

    @field_validator("slice")
    @classmethod
    def _slice(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.:-]+\.slice", value):
            raise ValueError(f"{value!r} is not a slice unit name like 'zkdeploy.slice'")
        return value


class ServiceLogSettings(_Strict):
    """The managed services' output, ``<data>/logs/<service>.log``: rotated by size to ``.1`` ..
    ``.<keep>`` by a log pump beside each service (zkdeploy.runner.logpump).  ``max_bytes: 0``
    turns rotation off: the service writes the file itself and it grows without end."""

    max_bytes: int = Field(10 * 1024 * 1024, ge=0)
    keep: int = Field(5, ge=1, le=1000)


class WatchdogSettings(_Strict):
    """systemd's watchdog (``WatchdogSec=`` in the unit): the agent pings it while its decision
    cycle is alive, that is idle between cycles or inside one cycle for less than ``cycle_limit``
    seconds.  A cycle busy for longer is wedged: the pings stop and systemd restarts the agent.
    Keep it above the longest restart a service can take (its stop, start, health checks, hooks
    and load-balancer timeouts, twice for a rollback)."""

    cycle_limit: float = Field(900.0, gt=0, le=86400)


class AgentConfig(_Strict):
    """One agent's file: who this node is and what it runs."""

    node: str
    zookeeper: ZooKeeperSettings = ZooKeeperSettings()
    data_dir: str
    services: tuple[str, ...]
    labels: Labels = Labels()
    address: str = "127.0.0.1"
    vars: dict[str, str | int | float] = {}
    swarm: SwarmSettings = SwarmSettings()
    cycle_interval: float = Field(2.0, gt=0, le=300)
    monitor_interval: float = Field(2.0, gt=0, le=300)
    log_format: Literal["plain", "json"] = "plain"
    signing: SigningSettings = SigningSettings()
    facts: FactsSettings | None = None
    lb_agent: LbAgentSettings | None = None
    metrics: MetricsSettings = MetricsSettings()
    service_launch: ServiceLaunchSettings = ServiceLaunchSettings()
    service_logs: ServiceLogSettings = ServiceLogSettings()
    watchdog: WatchdogSettings = WatchdogSettings()

    @field_validator("node")
    @classmethod
    def _node(cls, value: str) -> str:
        try:
            return check_name("node", value)
        except ZkdeployError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("services")
    @classmethod
    def _services(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            try:
                check_name("service", name)
            except ZkdeployError as exc:
                raise ValueError(str(exc)) from None
        return value
