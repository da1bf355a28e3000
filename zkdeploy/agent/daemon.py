"""The agent daemon: the process around the decision cycle.

One ``Agent`` runs per node.  It owns the process lifecycle (the data
directory's lock, the journal, the ZooKeeper session) and composes the parts,
each behind a narrow interface:

- ``Host``          the data directory, journal, releases and services (agent/host.py)
- ``Presence``      this node's records in ZooKeeper (agent/presence.py)
- ``Payloads``      fetch, verify, unpack, prune, beside the cycle (agent/payloads.py)
- ``Cycle``         observe, decide, act; restarts under slots (agent/cycle.py, slots.py, restart.py)
- ``HealthMonitor`` keeps /current truthful (agent/monitor.py)
- ``Reports``       plans, history, undo requests, on their own thread (agent/reports.py)

Signal handlers set a flag and nothing else; watches only wake the cycle.

Under systemd (``Type=notify``, conf/zkdeploy-agent.service) the agent says
``READY=1`` once it is connected and registered, keeps ``STATUS=`` to one
line about its session and services, pings the watchdog while its decision
cycle is alive (``Liveness``: a cycle wedged past ``watchdog.cycle_limit``
stops the pings, and systemd restarts the agent) and says ``STOPPING=1`` on
its way out.  It takes systemd's variables out of its environment first, so
no service it starts inherits its notify socket.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from zkdeploy import __version__, sdnotify
from zkdeploy.agent.cycle import Cycle
from zkdeploy.agent.host import Host
from zkdeploy.agent.metrics import Metrics
from zkdeploy.agent.monitor import HealthMonitor
from zkdeploy.agent.payloads import Payloads
from zkdeploy.agent.presence import Presence
from zkdeploy.agent.recovery import settle_at_start
from zkdeploy.agent.reports import Reports
from zkdeploy.agent.view import View
from zkdeploy.config.schema import AgentConfig
from zkdeploy.coordination import Store
from zkdeploy.errors import ConfigError, CoordinationError, ZkdeployError
from zkdeploy.runner import launch, process
from zkdeploy.sdnotify import Notifier
from zkdeploy.transfer.transport import Transport

log = logging.getLogger(__name__)

#: seconds between connection attempts while ZooKeeper does not answer
CONNECT_RETRY = 2.0
#: plans and undo requests are watched: the reports thread's own look is a safety net, once a minute
REPORTS_REFRESH = 60.0


class Liveness:
    """Whether the agent's main loop is alive, for systemd's watchdog.

    The loop wraps each step it takes (a connection attempt, a decision cycle) in ``step()``.
    It is alive while inside a step for less than ``step_limit`` seconds, or idle for less than
    ``idle_limit`` seconds since its last step.  Every call of a step has a timeout and every wait
    between steps is shorter than ``idle_limit``, so "not alive" means wedged: a deadlock, or a
    call that ignored its timeout.
    """

    def __init__(self, step_limit: float, idle_limit: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.step_limit = step_limit
        self.idle_limit = idle_limit
        self._clock = clock
        self._lock = threading.Lock()
        self._busy_since: float | None = None
        self._idle_since = clock()

    @contextmanager
    def step(self) -> Iterator[None]:
        with self._lock:
            self._busy_since = self._clock()
        try:
            yield
        finally:
            with self._lock:
                self._busy_since = None
                self._idle_since = self._clock()

    def wedged(self) -> str | None:
        """None while alive; else what is wedged, for the log."""
        with self._lock:
            now = self._clock()
            if self._busy_since is not None:
                busy = now - self._busy_since
                return f"the decision cycle has been busy for {busy:.0f}s (limit {self.step_limit:g}s)" \
                    if busy >= self.step_limit else None
            idle = now - self._idle_since
            return f"the main loop has not run a step for {idle:.0f}s (limit {self.idle_limit:g}s)" \
                if idle >= self.idle_limit else None


class Watchdog:
    """Pings systemd's watchdog every ``notifier.watchdog_interval`` while ``liveness`` says the agent
    is alive, and stays silent once it is wedged (systemd then kills and restarts the agent).

    While the agent is not yet ready, or is stopping, each ping also extends systemd's start or stop
    timeout (``EXTEND_TIMEOUT_USEC``): a start that waits for ZooKeeper, or a stop that finishes a
    restart, is given the time it needs as long as it is alive, and no more."""

    def __init__(self, notifier: Notifier, liveness: Liveness, in_transition: Callable[[], bool]) -> None:
        self.notifier = notifier
        self.liveness = liveness
        self.in_transition = in_transition
        self._silent = False

    def tick(self) -> bool:
        """One ping if the agent is alive; whether it pinged."""
        wedged = self.liveness.wedged()
        if wedged is not None:
            if not self._silent:
                log.error("no more watchdog pings: %s; systemd restarts the agent after WatchdogSec", wedged)
            self._silent = True
            return False
        if self._silent:
            log.info("the agent is alive again; watchdog pings resume")
            self._silent = False
        timeout = self.notifier.watchdog_timeout or 0.0
        extra = [sdnotify.extend_timeout_field(timeout)] if self.in_transition() else []
        try:
            self.notifier.watchdog(*extra)
        except OSError as exc:
            log.warning("watchdog ping to %s failed: %s", self.notifier.socket, exc)
            return False
        return True

    def run(self, done: threading.Event) -> None:
        interval = self.notifier.watchdog_interval
        if interval is None:
            return
        self.tick()
        while not done.wait(interval):
            self.tick()


def runner_settings(config: AgentConfig) -> tuple[process.RunnerSettings, str]:
    """How this agent launches its services and keeps their logs, and why that launch mode
    (ConfigError when the agent file asks for systemd scopes the agent cannot make)."""
    settings = config.service_launch
    how, why = launch.resolve(settings.mode, slice=settings.slice, properties=settings.properties)
    return process.RunnerSettings(how, config.service_logs.max_bytes, config.service_logs.keep), why


class Agent:
    """The per-node daemon.  ``run()`` blocks until ``stop()`` is called."""

    def __init__(self, config: AgentConfig, host: Host | None = None, transport: Transport | None = None,
                 metrics: Metrics | None = None, notifier: Notifier | None = None) -> None:
        self.config = config
        self.node = config.node
        self.stopping = threading.Event()
        self.wake = threading.Event()
        #: this agent's metrics (a registry of its own); served over HTTP by ``run()`` when enabled
        self.metrics = metrics or Metrics(config.node)
        self.metrics.services_known(config.services)
        self.host = host or Host(config)
        self.transport = transport or Transport(config, metrics=self.metrics)
        self.presence = Presence(config, self.host, metrics=self.metrics)
        self.store: Store | None = None
        self.cycle: Cycle | None = None
        self.payloads: Payloads | None = None
        self.reports: Reports | None = None
        self.monitor = HealthMonitor(self.host, self.presence, config.monitor_interval, self.stopping)
        self._deferred_recovery = False
        #: systemd's notify socket; None until ``run()`` takes it from the environment
        self.notifier = notifier
        self.liveness = Liveness(config.watchdog.cycle_limit, max(config.cycle_interval, CONNECT_RETRY) + 30.0)
        self.ready = False
        self._cycled = False  # a decision cycle has run
        self._status = ""
        self._status_lock = threading.Lock()

    def stop(self) -> None:
        """Ask the agent to stop after the current step (safe from a signal handler)."""
        self.stopping.set()
        self.wake.set()
        if self.reports is not None:
            self.reports.wake.set()

    # -- composition ------------------------------------------------------------
    def attach(self, store: Store, *, threaded: bool = True) -> Cycle:
        """Build the parts that talk to the store.  ``threaded=False`` (tests) installs payloads
        in the caller's thread."""
        self.store = store
        self.presence.attach(store, background=threaded)
        self.transport.attach(store)
        view = View(store, self.node, self.host.names, self.wake)
        self.payloads = Payloads(store, self.host, self.presence, self.transport, self.wake.set,
                                 threaded=threaded, view=view)
        if self.config.signing.trusted_keys:
            from zkdeploy.agent.signatures import ReleaseGuard  # cryptography only where releases are signed

            self.payloads.guard = ReleaseGuard.from_files(store, self.host, list(self.config.signing.trusted_keys))
        self.reports = Reports(store, self.host, self.presence, self.payloads, self.transport.fetch,
                               self.stopping, metrics=self.metrics)
        self.cycle = Cycle(store, self.host, self.presence, self.payloads, self.reports, self.wake,
                           self.stopping, deferred_recovery=self._deferred_recovery, metrics=self.metrics)
        store.on_session_change(self._session_changed)
        self.metrics.session_changed(store.state)
        return self.cycle

    def open_host(self) -> None:
        """Lock the data directory, open the journal and settle what a crash left (before ZooKeeper)."""
        self.host.lock()
        for releases in self.host.releases.values():
            releases.sweep()  # what a crash left half-removed or half-unpacked (the directory is ours now)
        self.host.open_journal()
        self._deferred_recovery = settle_at_start(self.host, self.metrics)

    def _session_changed(self, state: str) -> None:
        self.metrics.session_changed(state)
        self.wake.set()
        self.tell_status()

    # -- systemd ------------------------------------------------------------------
    def status_line(self) -> str:
        """One line for ``systemctl status``: the session, then this node's services."""
        store = self.store
        if store is None:
            return f"connecting to ZooKeeper {self.config.zookeeper.hosts}"
        if not store.connected:
            return f"ZooKeeper session {store.state}: no new step; services keep running"
        if not self.presence.registered:
            if self.host.catalog is None:
                return "connected; waiting for the service catalog (zkdeploy services apply)"
            return "connected; registering"
        services = " ".join(f"{s}={r.version or '-'}:{r.state}" for s, r in sorted(self.presence.local.items()))
        return f"registered; {services}" if services else "registered"

    def _notify(self, send: Callable[[Notifier], bool]) -> None:
        """Send to systemd; a failure is logged, never fatal (systemd's own timeouts judge the agent)."""
        notifier = self.notifier
        if notifier is None or not notifier.enabled:
            return
        try:
            send(notifier)
        except (OSError, ValueError) as exc:
            log.warning("cannot notify systemd at %s: %s", notifier.socket, exc)

    def tell_status(self) -> None:
        """``STATUS=`` when the line changed; ``READY=1`` with it the first time the agent is connected
        and registered."""
        line = self.status_line().replace("\n", " ")
        with self._status_lock:
            # Ready: connected, and registered, or told by a first cycle that there is no catalog yet to
            # register against (an agent installed before `services apply` must not hold its start job).
            become_ready = not self.ready and self.store is not None and self.store.connected \
                and (self.presence.registered or (self._cycled and self.host.catalog is None))
            if line == self._status and not become_ready:
                return
            self._status = line
            if become_ready:
                self.ready = True
                log.info("ready: %s", line)
                self._notify(lambda n: n.ready(line))
            else:
                self._notify(lambda n: n.status(line))

    def serve_metrics(self) -> None:
        """Serve the metrics endpoint when enabled.  An address that cannot be bound is logged and the
        agent goes on without it: deploys must not stop for want of a scrape."""
        settings = self.config.metrics
        if not settings.enabled:
            return
        try:
            host, port = self.metrics.serve(settings.listen)
        except ConfigError as exc:
            log.error("%s; the agent runs without its metrics endpoint", exc)
            return
        log.info("metrics at http://%s:%d/metrics", host, port)

    # -- the process ------------------------------------------------------------
    def run(self) -> None:
        if self.notifier is None:
            self.notifier = Notifier.take_environment()
        settings, why = runner_settings(self.config)
        process.configure(settings)
        log.info("services start %s (%s); their logs rotate at %d bytes, %d kept", settings.launch.describe(),
                 why, settings.log_max_bytes, settings.log_keep)
        done = threading.Event()
        watchdog = Watchdog(self.notifier, self.liveness, lambda: not self.ready or self.stopping.is_set())
        threading.Thread(target=watchdog.run, args=(done,), name="watchdog", daemon=True).start()
        try:
            self._run()
        finally:
            done.set()

    def _run(self) -> None:
        with self.liveness.step():  # settling what a crash left may stop and start services: a step
            self.open_host()
            self.transport.start()
        zk = self.config.zookeeper
        store: Store | None = None
        self.tell_status()
        while not self.stopping.is_set() and store is None:
            try:
                with self.liveness.step():
                    store = Store.connect(zk.hosts, zk.root, zk.security(), session_timeout=zk.session_timeout,
                                          connect_timeout=zk.connect_timeout,
                                          operation_timeout=zk.operation_timeout)
            except CoordinationError as exc:
                log.error("%s; retrying in %gs", exc, CONNECT_RETRY)
                self.stopping.wait(CONNECT_RETRY)
        if store is None:
            self._notify(lambda n: n.stopping("stopping before ZooKeeper answered"))
            self.transport.close()
            self.host.close()
            return
        cycle = self.attach(store)
        self.serve_metrics()
        assert self.reports is not None and self.payloads is not None
        threading.Thread(target=self.monitor.run, name="health-monitor", daemon=True).start()
        threading.Thread(target=self.reports.run, args=(REPORTS_REFRESH,), name="reports",
                         daemon=True).start()
        log.info("agent %s started (zkdeploy %s), services: %s", self.node, __version__,
                 ", ".join(self.config.services))
        try:
            while not self.stopping.is_set():
                self.wake.clear()  # before the cycle: a watch firing during it wakes the next one
                with self.liveness.step():
                    run_cycle(cycle)
                self._cycled = True
                if store.connected:
                    self.metrics.contacted()
                self.tell_status()
                self.wake.wait(self.config.cycle_interval)
        finally:
            log.info("agent %s stopping", self.node)
            self._notify(lambda n: n.stopping(f"stopping: {self.status_line()}"))
            with self.liveness.step():
                try:
                    cycle.cancel_all("agent is stopping")
                except ZkdeployError as exc:
                    log.warning("leaving the restart queues: %s", exc)
                self.payloads.close()
                self.transport.close()
                store.close()
                self.metrics.close()
                self.host.close()


def run_cycle(cycle: Cycle) -> None:
    """One cycle; its failure is logged (with the traceback when unexpected) and never ends the agent."""
    try:
        cycle.run_once()
    except CoordinationError as exc:
        log.warning("cycle interrupted: %s", exc)
    except (ZkdeployError, OSError) as exc:
        log.error("cycle failed: %s", exc)
    except Exception:
        log.exception("cycle failed unexpectedly")
