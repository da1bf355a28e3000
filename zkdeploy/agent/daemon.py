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
"""

from __future__ import annotations

import logging
import threading

from zkdeploy import __version__
from zkdeploy.agent.cycle import Cycle
from zkdeploy.agent.host import Host
from zkdeploy.agent.metrics import Metrics
from zkdeploy.agent.monitor import HealthMonitor
from zkdeploy.agent.payloads import Payloads
from zkdeploy.agent.presence import Presence
from zkdeploy.agent.recovery import settle_at_start
from zkdeploy.agent.reports import Reports
from zkdeploy.agent.signatures import ReleaseGuard
from zkdeploy.agent.view import View
from zkdeploy.config.schema import AgentConfig
from zkdeploy.coordination import Store
from zkdeploy.errors import ConfigError, CoordinationError, ZkdeployError
from zkdeploy.transfer.transport import Transport

log = logging.getLogger(__name__)


class Agent:
    """The per-node daemon.  ``run()`` blocks until ``stop()`` is called."""

    def __init__(self, config: AgentConfig, host: Host | None = None, transport: Transport | None = None,
                 metrics: Metrics | None = None) -> None:
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
        self.presence.attach(store)
        self.transport.attach(store)
        view = View(store, self.node, self.host.names, self.wake)
        self.payloads = Payloads(store, self.host, self.presence, self.transport, self.wake.set,
                                 threaded=threaded, view=view)
        if self.config.signing.trusted_keys:
            self.payloads.guard = ReleaseGuard.from_files(store, self.host, list(self.config.signing.trusted_keys))
        self.reports = Reports(store, self.host, self.presence, self.payloads, self.transport.fetch,
                               self.stopping)
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
        self._deferred_recovery = settle_at_start(self.host)

    def _session_changed(self, state: str) -> None:
        self.metrics.session_changed(state)
        self.wake.set()

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
        self.open_host()
        self.transport.start()
        zk = self.config.zookeeper
        store: Store | None = None
        while not self.stopping.is_set() and store is None:
            try:
                store = Store.connect(zk.hosts, zk.root, zk.security(), session_timeout=zk.session_timeout,
                                      connect_timeout=zk.connect_timeout, operation_timeout=zk.operation_timeout)
            except CoordinationError as exc:
                log.error("%s; retrying in 2s", exc)
                self.stopping.wait(2.0)
        if store is None:
            self.transport.close()
            self.host.close()
            return
        cycle = self.attach(store)
        self.serve_metrics()
        assert self.reports is not None and self.payloads is not None
        threading.Thread(target=self.monitor.run, name="health-monitor", daemon=True).start()
        # plans and undo requests are watched: the reports thread's own look is a safety net, once a minute
        threading.Thread(target=self.reports.run, args=(60.0,), name="reports",
                         daemon=True).start()
        log.info("agent %s started (zkdeploy %s), services: %s", self.node, __version__,
                 ", ".join(self.config.services))
        try:
            while not self.stopping.is_set():
                self.wake.clear()  # before the cycle: a watch firing during it wakes the next one
                run_cycle(cycle)
                if store.connected:
                    self.metrics.contacted()
                self.wake.wait(self.config.cycle_interval)
        finally:
            log.info("agent %s stopping", self.node)
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
