"""The agent's Prometheus metrics: every definition in one place, behind a narrow interface.

Each ``Metrics`` has a registry of its own (never prometheus_client's global
one), so several agents in one process (the simulated fleet of the tests)
keep separate figures.  The parts of the agent call the methods below and
accept ``metrics=None`` (tests that build a part on its own).  ``serve``
exposes the registry over HTTP; the reference is docs/metrics.md.
"""

from __future__ import annotations

import logging
import threading
import time
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, start_http_server

from zkdeploy.errors import ConfigError

log = logging.getLogger(__name__)

#: the outcomes of a restart (label ``outcome`` of zkdeploy_restarts_total)
OUTCOMES = ("ok", "rolled_back", "held", "fenced")
#: where payload bytes come from (label ``source`` of zkdeploy_payload_bytes_total)
SOURCES = ("swarm", "origin")
#: what starts the swarm worker (label ``reason`` of zkdeploy_swarm_worker_starts_total)
WORKER_STARTS = ("fetch", "wake", "always")
#: the session states of zkdeploy.coordination (label ``state`` of zkdeploy_zookeeper_session_state)
SESSION_STATES = ("connected", "suspended", "lost")
#: the states a node publishes for a service (label ``state`` of zkdeploy_service_state)
SERVICE_STATES = ("online", "restarting", "failed", "stopped")

# A restart's steps take from milliseconds (a symlink swap) to minutes (a drain, a slow start).
_STEP_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
# Waiting for quorum lasts as long as the nodes ahead take to restart: up to hours in a large fleet.
_WAIT_BUCKETS = (0.1, 0.5, 1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200)


def parse_listen(listen: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6) as (host, port); ConfigError when malformed."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"metrics listen address {listen!r} is not host:port")
    return host.strip("[]"), int(port)


class Metrics:
    """One agent's metrics.  Every method is thread-safe and cheap (the decision cycle calls them)."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._lock = threading.Lock()
        self._service_labels: dict[str, tuple[str, str]] = {}  # service -> (version, state) published last
        self.service_version = Gauge(
            "zkdeploy_service_version_info", "The version of a service this node runs (value 1).",
            ["service", "version"], registry=r)
        self.service_state = Gauge(
            "zkdeploy_service_state", "1 for the state this node publishes for a service, 0 for the others.",
            ["service", "state"], registry=r)
        self.restarts = Counter(
            "zkdeploy_restarts", "Restarts of a service on this node, by outcome.",
            ["service", "outcome"], registry=r)
        self.restart_seconds = Histogram(
            "zkdeploy_restart_duration_seconds", "Time a restart took, from its first step to its outcome.",
            ["service"], buckets=_STEP_BUCKETS, registry=r)
        self.phase_seconds = Histogram(
            "zkdeploy_restart_phase_duration_seconds", "Time spent in each phase of a restart.",
            ["phase"], buckets=_STEP_BUCKETS, registry=r)
        self.quorum_wait = Histogram(
            "zkdeploy_quorum_wait_seconds", "Time from joining a service's restart queue to holding the slot.",
            ["service"], buckets=_WAIT_BUCKETS, registry=r)
        self.payload_bytes = Counter(
            "zkdeploy_payload_bytes", "Verified payload bytes this node fetched, by source.",
            ["source"], registry=r)
        self.swarm_worker = Gauge(
            "zkdeploy_swarm_worker_running", "1 while this agent's swarm worker process runs (it is started to "
            "fetch or when woken to seed, and stopped when idle), else 0.", registry=r)
        self.swarm_worker_starts = Counter(
            "zkdeploy_swarm_worker_starts", "Starts of this agent's swarm worker, by what started it: a fetch, a "
            "fetcher waking this holder, or always (idle_stop 0).", ["reason"], registry=r)
        self.session_state_gauge = Gauge(
            "zkdeploy_zookeeper_session_state", "1 for the ZooKeeper session's current state, 0 for the others.",
            ["state"], registry=r)
        self.connected = Gauge(
            "zkdeploy_zookeeper_connected", "1 while the ZooKeeper session is connected, else 0.", registry=r)
        self.last_contact = Gauge(
            "zkdeploy_zookeeper_last_contact_timestamp_seconds",
            "Unix time of the last successful contact with ZooKeeper (0: never).", registry=r)
        self.change_sets = Counter(
            "zkdeploy_journal_change_sets", "Change sets this agent wrote or undid in its journal, by the "
            "status they ended in and what caused it: a restart, an operator's undo request, a crash "
            "recovery.", ["status", "cause"], registry=r)
        for source in SOURCES:  # absent series read as "no data", not 0: create them up front
            self.payload_bytes.labels(source=source)
        for reason in WORKER_STARTS:
            self.swarm_worker_starts.labels(reason=reason)
        for state in SESSION_STATES:
            self.session_state_gauge.labels(state=state).set(0)
        self._server: WSGIServer | None = None

    # -- the events ------------------------------------------------------------------
    def service_published(self, service: str, version: str | None, state: str) -> None:
        """What this node now publishes for ``service``: its version (an info series) and its state."""
        version = version or ""
        with self._lock:
            previous = self._service_labels.get(service)
            if previous == (version, state):
                return
            if previous is not None and previous[0] != version:
                try:
                    self.service_version.remove(service, previous[0])
                except KeyError:
                    pass  # never set: nothing to remove
            self._service_labels[service] = (version, state)
            if version:
                self.service_version.labels(service=service, version=version).set(1)
            for known in {*SERVICE_STATES, state}:
                self.service_state.labels(service=service, state=known).set(1 if known == state else 0)

    def restart_done(self, service: str, outcome: str, seconds: float) -> None:
        """One restart of ``service`` ended with ``outcome`` (one of OUTCOMES) after ``seconds``."""
        self.restarts.labels(service=service, outcome=outcome).inc()
        self.restart_seconds.labels(service=service).observe(max(seconds, 0.0))

    def services_known(self, services: list[str] | tuple[str, ...]) -> None:
        """Create the restart counters of ``services`` at 0, so a rate over them is defined from the start."""
        for service in services:
            for outcome in OUTCOMES:
                self.restarts.labels(service=service, outcome=outcome)

    def phase_done(self, phase: str, seconds: float) -> None:
        self.phase_seconds.labels(phase=phase).observe(max(seconds, 0.0))

    def quorum_waited(self, service: str, seconds: float) -> None:
        self.quorum_wait.labels(service=service).observe(max(seconds, 0.0))

    def payload_fetched(self, source: str, size: int) -> None:
        self.payload_bytes.labels(source=source).inc(max(size, 0))

    def swarm_worker_changed(self, running: bool, reason: str = "") -> None:
        """The swarm worker started (``reason``: one of WORKER_STARTS) or stopped."""
        self.swarm_worker.set(1 if running else 0)
        if running:
            self.swarm_worker_starts.labels(reason=reason).inc()

    def session_changed(self, state: str) -> None:
        """The ZooKeeper session is now ``state`` (connected, suspended or lost)."""
        for known in {*SESSION_STATES, state}:
            self.session_state_gauge.labels(state=known).set(1 if known == state else 0)
        self.connected.set(1 if state == "connected" else 0)
        if state == "connected":
            self.contacted()

    def contacted(self) -> None:
        """ZooKeeper answered just now."""
        self.last_contact.set(time.time())

    def change_set_finished(self, status: str, cause: str = "restart") -> None:
        """A change set ended in ``status``; ``cause``: restart, undo (an operator's request) or recovery."""
        self.change_sets.labels(status=status, cause=cause).inc()

    # -- exposing --------------------------------------------------------------------
    def text(self) -> str:
        """The registry in the Prometheus text format (what the endpoint serves)."""
        return generate_latest(self.registry).decode()

    def serve(self, listen: str) -> tuple[str, int]:
        """Serve the registry at ``http://<listen>/metrics`` on a daemon thread; the bound (host, port)
        (port 0 picks a free one).  ConfigError when the address is malformed or cannot be bound."""
        host, port = parse_listen(listen)
        try:
            server, _thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise ConfigError(f"cannot serve metrics on {listen}: {exc.strerror or exc}") from None
        self._server = server
        bound = server.server_address
        return str(bound[0]), int(bound[1])

    def close(self) -> None:
        """Stop serving (nothing when not serving)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
