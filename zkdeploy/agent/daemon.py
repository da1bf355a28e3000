"""The agent daemon: observe a ZooKeeper snapshot, decide, act, wait.

One ``Agent`` runs per node.  Its main thread runs the decision cycle; a
monitor thread keeps health-checking the running services so that
``/dc/current`` describes services that really answer; kazoo's watches only
wake the cycle early.  Signal handlers set a flag and nothing else.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from zkdeploy import __version__
from zkdeploy.agent import deploys, recovery
from zkdeploy.agent.host_actions import agent_registry
from zkdeploy.agent.releases import ReleaseDir
from zkdeploy.agent.reports import answer_plans, push_history, serve_undo_requests
from zkdeploy.agent.rollout import Restart
from zkdeploy.agent.states import RESTART_PHASES, Phase, ServiceMachine
from zkdeploy.agent.transport import Transport
from zkdeploy.config.loader import parse_catalog
from zkdeploy.config.schema import AgentConfig, Catalog
from zkdeploy.coordination import CONNECTED, Store
from zkdeploy.journal import Executor, Journal
from zkdeploy.errors import (
    ConfigError,
    ConflictError,
    CoordinationError,
    PayloadError,
    RolloutAborted,
    ServiceError,
    ZkdeployError,
)
from zkdeploy.model import (
    FAILED,
    ONLINE,
    PENDING,
    RESTARTING,
    STOPPED,
    CurrentEntry,
    DeployEntry,
    NodeRecord,
    Release,
)
from zkdeploy.policy.progress import active_deploy
from zkdeploy.policy.versions import most_popular
from zkdeploy.runner.service import HostService

log = logging.getLogger(__name__)


#: how long a payload that failed to fetch or verify is left alone before the next try
FETCH_RETRY_SECONDS = 30


@dataclass
class Local:
    """What this node publishes about one service."""

    version: str | None = None
    state: str = STOPPED
    detail: str = ""
    target: str | None = None


class Agent:
    """The per-node daemon.  ``run()`` blocks until ``stop()`` is called."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.node = config.node
        self.data = Path(config.data_dir)
        self.stopping = threading.Event()
        self.wake = threading.Event()
        self.store: Store | None = None
        self.catalog: Catalog | None = None
        self._catalog_version = -2
        self.local: dict[str, Local] = {s: Local() for s in config.services}
        self.machines = {s: ServiceMachine(s, self._on_phase(s)) for s in config.services}
        self.releases = {s: ReleaseDir(self.data, s) for s in config.services}
        self._publish_lock = threading.RLock()
        self._registered_generation = -1
        self._failed_deploys: set[tuple[str, str]] = set()
        self._release_cache: dict[tuple[str, str], Release] = {}
        self._fetch_failures: dict[tuple[str, str], float] = {}
        self._watched_head: str | None = None
        self._last_summary = ""
        self._lockfile = None
        self.transport = Transport(config)
        self.registry = agent_registry()
        self.journal: Journal | None = None
        self.executor: Executor | None = None
        self._converge: dict[str, str] = {}
        self._deferred_recovery = False
        self._answered_plans: set[str] = set()
        self._closed_deploys: set[str] = set()

    # -- lifecycle ---------------------------------------------------------
    def stop(self) -> None:
        """Ask the agent to stop after the current step (safe from a signal handler)."""
        self.stopping.set()
        self.wake.set()

    def run(self) -> None:
        self._lock_data_dir()
        self._open_journal()
        self.transport.start()
        zk = self.config.zookeeper
        while not self.stopping.is_set():
            try:
                self.store = Store.connect(zk.hosts, zk.root, session_timeout=zk.session_timeout,
                                           connect_timeout=zk.connect_timeout,
                                           operation_timeout=zk.operation_timeout)
                break
            except CoordinationError as exc:
                log.error("%s; retrying in 2s", exc)
                self.stopping.wait(2.0)
        if self.store is None:
            self.transport.close()
            return
        self.transport.attach(self.store)
        self.store.conn.add_listener(lambda _state: self.wake.set())
        monitor = threading.Thread(target=self._monitor, name="health-monitor", daemon=True)
        monitor.start()
        log.info("agent %s started (zkdeploy %s), services: %s", self.node, __version__,
                 ", ".join(self.config.services))
        try:
            while not self.stopping.is_set():
                self.wake.clear()  # before the cycle: a watch firing during it wakes the next one
                try:
                    self.cycle()
                except CoordinationError as exc:
                    log.warning("cycle interrupted: %s", exc)
                except (ZkdeployError, OSError) as exc:
                    log.error("cycle failed: %s", exc)
                self.wake.wait(self.config.cycle_interval)
        finally:
            log.info("agent %s stopping", self.node)
            self.transport.close()
            self.store.close()

    def _open_journal(self) -> None:
        self.journal = Journal.open(self.data / "state" / "journal.db")
        self.executor = Executor(self.journal, registry=self.registry)
        self._deferred_recovery = recovery.settle_at_start(self)

    def _lock_data_dir(self) -> None:
        state = self.data / "state"
        state.mkdir(parents=True, exist_ok=True)
        self._lockfile = open(state / "agent.lock", "w")
        try:
            fcntl.flock(self._lockfile, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"another agent already runs on {self.data}") from None
        self._lockfile.write(str(os.getpid()))
        self._lockfile.flush()

    # -- publishing ---------------------------------------------------------
    def _on_phase(self, service: str):
        def changed(old: Phase, new: Phase, detail: str) -> None:
            log.info("%s: %s -> %s%s", service, old.value, new.value, f" ({detail})" if detail else "")
            state = RESTARTING if new in RESTART_PHASES else None
            self.publish(service, state=state, detail=detail)
        return changed

    def publish(self, service: str, *, state: str | None = None, version: str | None = None,
                detail: str | None = None, target: str | None = None, write: bool = True) -> None:
        """Update this node's /current entry of ``service`` (local record first, then ZooKeeper)."""
        with self._publish_lock:
            rec = self.local[service]
            if state is not None:
                rec.state = state
            if version is not None:
                rec.version = version
            if detail is not None:
                rec.detail = detail
            if target is not None:
                rec.target = target or None
            if not write or self.store is None or self._registered_generation < 0:
                return
            try:
                self.store.publish_current(service, self._entry(service))
            except CoordinationError as exc:
                log.warning("%s: could not publish state: %s", service, exc)

    def _entry(self, service: str) -> CurrentEntry:
        rec = self.local[service]
        return CurrentEntry(node=self.node, version=rec.version, state=rec.state,
                            phase=self.machines[service].phase.value, target=rec.target,
                            since=time.time(), detail=rec.detail[:500])

    def _services(self) -> dict[str, HostService]:
        assert self.catalog is not None
        return {s: HostService(s, self.catalog.services[s], self.node, self.data, dict(self.config.vars))
                for s in self.config.services if s in self.catalog.services}

    # -- registration ---------------------------------------------------------
    def _register(self) -> bool:
        """(Re-)create this node's ephemeral records after a new session; False if not yet possible."""
        store = self.store
        generation = store.conn.require_connected()
        if generation == self._registered_generation:
            return True
        record = NodeRecord(node=self.node, address=self.config.address, services=self.config.services,
                            labels=self.config.labels.model_dump(exclude_none=True),
                            agent_version=__version__, pid=os.getpid(), started=time.time())
        try:
            store.register_node(record)
        except ConflictError as exc:
            log.warning("not registered yet: %s", exc)
            return False
        first = self._registered_generation < 0
        for service, svc in self._services().items():
            self._observe_local(service, svc)
            try:
                store.publish_current(service, self._entry(service))
            except ConflictError as exc:
                log.warning("not registered yet: %s", exc)
                return False
        self._registered_generation = generation
        for service in self._services():
            for version in self.releases[service].installed():
                payload = self.releases[service].payload_path(version)
                if payload.exists():
                    store.add_holder(service, version, self.node)
                    release = self._release(service, version)
                    if first and release is not None:
                        self.transport.reseed(release, payload)
        if not first:
            self.transport.reannounce()
        log.info("registered node %s (session generation %d)", self.node, generation)
        self._converge_on_return()
        return True

    def _observe_local(self, service: str, svc: HostService) -> None:
        version = self.releases[service].current_version()
        if version is None or not svc.running():
            self.publish(service, version=version or "", state=STOPPED, detail="not running", write=False)
            return
        reason = svc.probe(version)
        self.publish(service, version=version, state=FAILED if reason else ONLINE,
                     detail=reason or "", write=False)

    def _converge_on_return(self) -> None:
        """After (re)joining, note which services should move to the most popular version.

        A service that is down, or runs another version than the most popular
        one among the other online nodes, is restarted into it by the cycle,
        through the restart queue like any restart (a service that is down
        costs no quorum), unless a rollout of that service is under way.
        Ties go to the most recently staged version (see policy.versions).
        """
        store = self.store
        for service in self._services():
            rec = self.local[service]
            others = [e for n, e in store.current(service).items() if n != self.node and e.state == ONLINE]
            releases = {v: r for v in store.staged_versions(service) if (r := self._release(service, v))}
            target = most_popular([e.version for e in others], {v: r.staged_at for v, r in releases.items()})
            target = target or rec.version
            if not target or (target == rec.version and rec.state != STOPPED):
                continue
            if target not in releases and not self.releases[service].has(target):
                log.warning("%s: most popular version %s is neither staged nor installed here", service, target)
                continue
            log.info("%s: %s at %s; the most popular version is %s: converging", service, rec.state,
                     rec.version or "-", target)
            self._converge[service] = target

    # -- the cycle -------------------------------------------------------------
    def _load_catalog(self) -> bool:
        data, version = self.store.catalog()
        if version == self._catalog_version:
            return self.catalog is not None
        self._catalog_version = version
        if data is None:
            log.warning("no catalog stored yet (zkdeploy services apply FILE)")
            self.catalog = None
            return False
        try:
            self.catalog = parse_catalog(data, "catalog in ZooKeeper")
        except ConfigError as exc:
            log.error("%s", exc)
            self.catalog = None
            return False
        missing = [s for s in self.config.services if s not in self.catalog.services]
        if missing:
            log.warning("services not in the catalog (ignored): %s", ", ".join(missing))
        return True

    def cycle(self) -> None:
        """One decision cycle: snapshot, decide, act."""
        store = self.store
        if store.conn.state != CONNECTED:
            log.warning("ZooKeeper session %s: no new step", store.conn.state)
            return
        self._ensure_watches()
        if not self._load_catalog() or not self._register():
            return
        if self._deferred_recovery:
            recovery.settle_registered(self)
            self._deferred_recovery = False
        answer_plans(self, self._answered_plans)  # a dry run changes nothing: allowed even now
        switch = store.killswitch()
        if switch is not None:
            self._summary(f"killswitch on: {switch.message}")
            return
        serve_undo_requests(self)
        deploys = self._open_deploys()
        head = active_deploy(deploys)
        self._watch_head(head)
        services = self._services()
        self._prefetch(deploys, head, services)
        for service, target in list(self._converge.items()):
            if head is not None and head.service == service:
                self._converge.pop(service)  # the rollout brings this node to its target
                continue
            if self._install(service, target):
                self._converge.pop(service)
                self._restart(services[service], target, None)
        restarted = False
        if head is not None and head.state == PENDING and head.service in services:
            restarted = self._maybe_restart(head, services[head.service])
            head = store.deploy(head.name)
        # Completion and stalls are judged by the node that just restarted, and each cycle by
        # one steward per service (the first present node by name), not by every node: a
        # fleet-wide read of /current per node per cycle would grow with the square of the fleet.
        if head is not None and head.state == PENDING and (restarted or self._is_steward(head.service)):
            self._maybe_complete(head)
            head = store.deploy(head.name)
            if head is not None and head.state == PENDING:
                self._watch_progress(head)
        self._summary(self._describe(head))

    @contextlib.contextmanager
    def holding_slots(self, services: list[str], why: str) -> Iterator[None]:
        """Take a restart slot of each service under the quorum rules, for work other than a restart
        that may take them down (an undo, a crash recovery); afterwards release the slots and
        publish what each service now runs.  RolloutAborted if the agent is told to stop meanwhile."""
        svcs = self._services()
        held: list[Restart] = []
        try:
            for service in services:
                svc = svcs[service]
                restart = Restart(self.store, self.node, svc, self.releases[service], self.machines[service],
                                  lambda service=service, **kw: self.publish(service, **kw),
                                  lambda: "agent is stopping" if self.stopping.is_set() else None,
                                  quorum=svc.spec.quorum, target=why,
                                  session_timeout=self.config.zookeeper.session_timeout)
                try:
                    restart.acquire_slot()
                except ZkdeployError as exc:
                    self.machines[service].reset(str(exc))
                    raise
                held.append(restart)
            for restart in held:
                restart.fence()
            yield
        finally:
            for restart in held:
                try:
                    self.store.release_slot(restart.service, self.node)
                except CoordinationError as exc:
                    log.warning("%s: could not release the slot (it goes with the session): %s",
                                restart.service, exc)
                self.machines[restart.service].to(Phase.IDLE, f"{why} finished")
                self._observe_local(restart.service, restart.svc)
                self.publish(restart.service)

    def _is_steward(self, service: str) -> bool:
        nodes = self.store.current_nodes(service)
        return bool(nodes) and min(nodes) == self.node

    def _open_deploys(self) -> list[DeployEntry]:
        """The open deploy entries.  A closed entry never opens again, so once seen closed it is
        not read again: a cycle costs one read per open entry, not one per entry kept."""
        entries = self.store.deploys(skip=self._closed_deploys)
        self._closed_deploys.update(e.name for e in entries if not e.is_open)
        return [e for e in entries if e.is_open]

    def _describe(self, head: DeployEntry | None) -> str:
        parts = [f"{s}={r.version or '-'}:{r.state}" for s, r in sorted(self.local.items())]
        deploy = f"deploy {head.name} {head.service}@{head.version} {head.state}" if head else "no deploy"
        return f"{' '.join(parts)}; {deploy}"

    def _summary(self, text: str) -> None:
        level = logging.INFO if text != self._last_summary else logging.DEBUG
        log.log(level, "cycle: %s", text)
        self._last_summary = text

    def _ensure_watches(self) -> None:
        if getattr(self, "_watching", False):
            return
        store, fire = self.store, (lambda *_: self.wake.set())
        store.watch_children(store.layout.deploy, fire)
        store.watch_data(store.layout.killswitch, fire)
        store.watch_data(store.layout.catalog, fire)
        store.watch_children(store.layout.plans, fire)
        store.watch_children(store.layout.undo_requests(self.node), fire)
        for service in self.config.services:
            store.watch_children(store.layout.releases(service), fire)
        self._watching = True

    def _watch_head(self, head: DeployEntry | None) -> None:
        if head is None or head.name == self._watched_head:
            return
        self._watched_head = name = head.name

        def on_change(data: bytes | None) -> bool | None:
            self.wake.set()
            return False if self._watched_head != name or data is None else None

        self.store.watch_data(self.store.layout.deploy_entry(name), on_change)

    def _prefetch(self, deploys: list[DeployEntry], head: DeployEntry | None,
                  services: dict[str, HostService]) -> None:
        """Fetch and unpack the releases this node will need: the active deploy's first."""
        wanted: list[tuple[str, str]] = []
        if head is not None and head.service in services:
            wanted.append((head.service, head.version))
        wanted += [(d.service, d.version) for d in deploys if d.is_open and d.service in services]
        for service in services:
            newest = self._newest_release(service)
            if newest is not None:
                wanted.append((service, newest))
        for service, version in dict.fromkeys(wanted):
            rel_dir = self.releases[service]
            if rel_dir.has(version) or self.local[service].version == version:
                continue
            if self._install(service, version):
                rel_dir.prune(self.catalog.services[service].keep_releases,
                              protect={v for s, v in wanted if s == service},
                              before_remove=lambda gone, service=service, rel_dir=rel_dir:
                              self._forget(service, rel_dir, gone))

    def _forget(self, service: str, rel_dir: ReleaseDir, version: str) -> None:
        release = self._release(service, version)
        if release is not None:
            self.transport.forget(release, rel_dir.payload_path(version))

    def _release(self, service: str, version: str) -> Release | None:
        """Release metadata, cached: a staged release never changes."""
        key = (service, version)
        if key not in self._release_cache:
            release = self.store.release(service, version)
            if release is None:
                return None
            self._release_cache[key] = release
        return self._release_cache[key]

    def _newest_release(self, service: str) -> str | None:
        """The most recently staged version of ``service`` if it is newer than the one running here."""
        staged = [r for r in (self._release(service, v) for v in self.store.staged_versions(service)) if r]
        if not staged:
            return None
        newest = max(staged, key=lambda r: r.staged_at)
        running = self._release(service, self.local[service].version) if self.local[service].version else None
        if running is not None and running.staged_at >= newest.staged_at:
            return None
        return newest.version

    # -- restarts ------------------------------------------------------------------
    def _abort_reason(self, service: str, deploy: DeployEntry | None):
        """Why a queued restart should give up, asked while it waits."""
        def reason() -> str | None:
            if self.stopping.is_set():
                return "agent is stopping"
            if self.store.conn.state != CONNECTED:
                return f"ZooKeeper session {self.store.conn.state}"
            if self.store.killswitch() is not None:
                return "killswitch is on"
            if deploy is None:
                head = active_deploy(self._open_deploys())
                return f"a rollout of {service} started" if head and head.service == service else None
            entry = self.store.deploy(deploy.name)
            if entry is None or entry.state != PENDING:
                return f"deploy {deploy.name} is {entry.state if entry else 'gone'}"
            return None
        return reason

    def _install(self, service: str, version: str) -> bool:
        """Make sure ``version`` is unpacked here, fetching it if it is staged; False if it cannot be.

        A payload that failed to fetch or verify is left alone for
        FETCH_RETRY_SECONDS, and the reason is published for ``status``.
        """
        rel_dir = self.releases[service]
        if rel_dir.has(version):
            return True
        release = self._release(service, version)
        if release is None:
            return False
        failed_at = self._fetch_failures.get((service, version))
        if failed_at is not None and time.monotonic() - failed_at < FETCH_RETRY_SECONDS:
            return False
        machine = self.machines[service]
        machine.to(Phase.FETCHING, f"fetching {version}")
        try:
            rel_dir.install(release, self.transport.fetch)
        except PayloadError as exc:
            log.error("%s@%s: %s (retrying in %ds)", service, version, exc, FETCH_RETRY_SECONDS)
            self._fetch_failures[(service, version)] = time.monotonic()
            machine.reset(f"cannot fetch {version}: {exc}")
            return False
        self._fetch_failures.pop((service, version), None)
        self.store.add_holder(service, version, self.node)
        machine.to(Phase.STAGED, f"{version} ready")
        return True

    def _maybe_restart(self, head: DeployEntry, svc: HostService) -> bool:
        """Restart into the head's version if this node does not run it; True if a restart ran."""
        service, target = head.service, head.version
        rec = self.local[service]
        if rec.version == target and rec.state == ONLINE:
            self.machines[service].reset()
            return False
        if (head.name, service) in self._failed_deploys:
            return False
        if not self.releases[service].has(target):
            return False  # not fetched (yet): _prefetch reports why
        self._restart(svc, target, head)
        return True

    def _restart(self, svc: HostService, target: str, deploy: DeployEntry | None) -> None:
        """Restart ``svc`` into ``target`` under the quorum rules, for ``deploy`` or to converge."""
        service = svc.name
        machine = self.machines[service]
        if machine.phase == Phase.IDLE:
            machine.to(Phase.STAGED, f"{target} ready")
        old = self.releases[service].current_version()
        restart = Restart(self.store, self.node, svc, self.releases[service], machine,
                          lambda **kw: self.publish(service, **kw), self._abort_reason(service, deploy),
                          quorum=svc.spec.quorum, target=target, executor=self.executor,
                          deploy_id=deploy.name if deploy else None,
                          on_failure=(lambda error: self._report_failure(deploy, error)) if deploy else None,
                          on_quorum_wait=(lambda: self._watch_progress_of(deploy.name)) if deploy else None,
                          session_timeout=self.config.zookeeper.session_timeout)
        was_running = svc.running()
        try:
            outcome = restart.run(old, was_running)
            if outcome.change_id is not None:
                push_history(self, outcome.change_id)
        except RolloutAborted as exc:
            log.info("%s: not restarting: %s", service, exc)
            machine.reset(str(exc))
            self.publish(service, detail=str(exc))
            return
        except CoordinationError as exc:
            log.warning("%s: gave up waiting for a slot: %s", service, exc)
            machine.reset(str(exc))
            return
        if outcome.ok:
            self.publish(service, version=target, state=ONLINE, detail=f"online at {target}", target="")
            log.info("%s: online at %s", service, target)
            return
        current = self.releases[service].current_version()
        state = ONLINE if outcome.healthy and svc.probe(current) is None else FAILED
        self.publish(service, version=current or "", state=state, detail=outcome.error, target="")
        if deploy is not None and not outcome.fenced:
            self._failed_deploys.add((deploy.name, service))  # a lost slot is retried; a bad release is not

    def _report_failure(self, head: DeployEntry, error: str) -> None:
        deploys.report_failure(self.store, self.node, head.name, error)

    def _watch_progress_of(self, name: str) -> None:
        entry = self.store.deploy(name)
        if entry is not None and entry.state == PENDING:
            self._watch_progress(entry)

    def _watch_progress(self, head: DeployEntry) -> None:
        spec = self.catalog.services.get(head.service) if self.catalog else None
        deploys.watch_progress(self.store, head, spec.quorum if spec else None)

    def _maybe_complete(self, head: DeployEntry) -> None:
        deploys.maybe_complete(self.store, head)

    # -- health monitor ---------------------------------------------------------------
    def _monitor(self) -> None:
        """Keep /current truthful: flip online <-> failed as the running services answer."""
        while not self.stopping.wait(self.config.monitor_interval):
            if self.catalog is None or self._registered_generation < 0:
                continue
            try:
                services = self._services()
            except KeyError:
                continue
            for service, svc in services.items():
                rec = self.local[service]
                if self.machines[service].restarting or rec.state not in (ONLINE, FAILED):
                    continue
                version = rec.version
                try:
                    reason = svc.probe(version)
                except ServiceError as exc:
                    reason = str(exc)
                new = FAILED if reason else ONLINE
                with self._publish_lock:
                    # re-check: a restart may have begun while the probe ran
                    if (self.machines[service].restarting or rec.version != version
                            or rec.state not in (ONLINE, FAILED) or new == rec.state):
                        continue
                    log.warning("%s: health monitor: %s -> %s %s", service, rec.state, new, reason or "")
                    self.publish(service, state=new, detail=reason or "healthy again")
