"""This node's side of things: its data directory, journal, releases and services.

``Host`` is the seam between the agent's decisions and the machine it runs
on.  Everything that touches a service goes through the journal (its actions
are registered in ``registry``) or through the three queries below
(``running``, ``probe``, ``wait_healthy``), so a test can put a simulated
host behind the real decision code (zkdeploy.testing.simhost).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from zkdeploy.agent.host_actions import agent_registry
from zkdeploy.agent.releases import ReleaseDir
from zkdeploy.agent.scenario_checks import run_check
from zkdeploy.config.schema import AgentConfig, Catalog
from zkdeploy.errors import ConfigError, JournalError, ServiceError
from zkdeploy.fsutil import fsync_dir, write_durably
from zkdeploy.hostlayout import HostLayout
from zkdeploy.journal import ChangeSet, Executor, Journal, Registry
from zkdeploy.model import FAILED, ONLINE, STOPPED
from zkdeploy.runner.process import ManagedProcess
from zkdeploy.runner.service import HostService

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Hold:
    """Why a service is held out, and the change set that left it so (``<data>/state/held``)."""

    detail: str
    change_id: int | None


class Host:
    """The data directory of one agent, its journal, and the services it runs.

    ``catalog`` is set by the decision cycle whenever a new catalog is read;
    other threads only read the reference.
    """

    def __init__(self, config: AgentConfig, registry: Registry | None = None) -> None:
        self.node = config.node
        self.layout = HostLayout(Path(config.data_dir))
        self.data = self.layout.data_dir
        self.names = tuple(config.services)
        self.vars = dict(config.vars)
        self.releases = {s: ReleaseDir(self.data, s) for s in self.names}
        self.registry = registry or agent_registry()
        self.catalog: Catalog | None = None
        self._journal: Journal | None = None
        self._executor: Executor | None = None
        self._lockfile: IO[str] | None = None
        self._busy = {s: threading.Lock() for s in self.names}
        #: held around every journaled change on this host (a restart's steps, an undo, a recovery):
        #: the journal's writer lock is per process, so changes of two services take turns
        self.changing = threading.Lock()

    # -- lifecycle -----------------------------------------------------------
    def lock(self) -> None:
        """Take the data directory (one agent per directory); ConfigError if another agent has it."""
        try:
            self.layout.state.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"data_dir {self.data}: cannot create {self.layout.state}: {exc.strerror}") from None
        self._lockfile = open(self.layout.lockfile, "w")  # noqa: SIM115 (open while the agent runs: it holds the flock)
        try:
            fcntl.flock(self._lockfile, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"another agent already runs on {self.data}") from None
        self._lockfile.write(str(os.getpid()))
        self._lockfile.flush()

    #: fsync every journal commit (a simulated host turns it off: its journal need not outlive a power loss)
    durable_journal = True

    def open_journal(self) -> None:
        self._journal = Journal.open(self.layout.journal, durable=self.durable_journal)
        self._executor = Executor(self._journal, registry=self.registry)

    @property
    def journal(self) -> Journal:
        if self._journal is None:
            raise JournalError("the journal is not open")
        return self._journal

    @property
    def executor(self) -> Executor:
        if self._executor is None:
            raise JournalError("the journal is not open")
        return self._executor

    def close(self) -> None:
        if self._journal is not None:
            self._journal.close()
        if self._lockfile is not None:
            self._lockfile.close()
            self._lockfile = None

    # -- services -----------------------------------------------------------------
    def services(self) -> dict[str, HostService]:
        """This node's services that the catalog knows, bound to this node."""
        catalog = self.catalog
        if catalog is None:
            return {}
        return {s: HostService(s, catalog.services[s], self.node, self.data, self.vars)
                for s in self.names if s in catalog.services}

    def service(self, name: str) -> HostService:
        svc = self.services().get(name)
        if svc is None:
            raise ConfigError(f"service {name} is not in the catalog or not run by node {self.node}")
        return svc

    def busy(self, service: str) -> threading.Lock:
        """Held while anything changes ``service`` on this host: a restart, an undo, a recovery."""
        return self._busy[service]

    def running(self, svc: HostService) -> bool:
        return svc.running()

    def probe(self, svc: HostService, version: str | None) -> str | None:
        """One quick health probe: None when healthy, else why not.  Never raises for a failed check."""
        try:
            return svc.probe(version)
        except ServiceError as exc:
            return str(exc)

    def answers(self, svc: HostService) -> bool:
        """Whether the release ``current`` points at passes one quick probe now (a slot granted at no
        cost because the service did not answer is given back when this turns true)."""
        return self.probe(svc, self.releases[svc.name].current_version()) is None

    def wait_healthy(self, svc: HostService, version: str | None) -> None:
        """HealthCheckError (or ServiceError) unless ``svc`` passes its checks within their retries."""
        svc.wait_healthy(version)

    def scenario_check(self, params: dict[str, Any]) -> str:
        """One scenario step's check with its retries (zkdeploy.agent.scenario_checks): what the
        passing attempt saw; ScenarioCheckError when it does not pass."""
        return run_check(params)

    def change_left_running(self, change: ChangeSet) -> bool:
        """Whether a service that an interrupted change set started or stopped runs now.

        Read from the tasks' own parameters (the pid file), since at start the
        catalog is not known yet.  A one-shot service cannot be seen from
        here: it is assumed to run."""
        for task in change.tasks:
            params = task.execute.params
            if params.get("managed") is False:
                return True
            if params.get("pidfile") and ManagedProcess(Path(params["pidfile"]), Path(params["logfile"])).running():
                return True
        return False

    # -- holds ----------------------------------------------------------------------
    def hold(self, service: str, detail: str, change_id: int | None) -> None:
        """Record durably that ``service`` is held out by change set ``change_id`` (``detail`` says
        why), so that a restarted agent keeps it held: failed, out of the load balancer, counted
        as down, until its next restart or an undo of that change set."""
        path = self.layout.held(service)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_durably(path, json.dumps({"detail": detail, "change_id": change_id, "at": time.time()}).encode())

    def hold_of(self, service: str) -> Hold | None:
        """Why ``service`` is held, None if it is not.  An unreadable record still holds it."""
        path = self.layout.held(service)
        try:
            record = json.loads(path.read_bytes())
            change = record.get("change_id")
            return Hold(str(record["detail"]), int(change) if change is not None else None)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            return Hold(f"held: the hold record {path} is unreadable ({exc}); an undo or a restart lifts it", None)

    def release_hold(self, service: str) -> None:
        """The hold of ``service`` is over (its next restart, an undo)."""
        path = self.layout.held(service)
        if path.exists():
            path.unlink()
            fsync_dir(path.parent)
            log.info("%s: no longer held", service)

    def observe(self, service: str) -> tuple[str, str, str]:
        """What runs here now: (version, availability, detail); a held service is failed whatever it
        answers."""
        svc = self.service(service)
        version = self.releases[service].current_version()
        held = self.hold_of(service)
        if held is not None:
            return version or "", FAILED, held.detail
        if version is None or not self.running(svc):
            return version or "", STOPPED, "not running"
        reason = self.probe(svc, version)
        return version, FAILED if reason else ONLINE, reason or ""
