"""A fleet of real agents over an in-memory ZooKeeper and simulated machines, driven step by step.

Each ``SimAgent`` is the agent's real code (``Agent.attach`` builds its
presence, payloads, cycle, monitor and reports) with a ``SimHost`` behind the
host seam and a ``MemorySession`` behind the coordination seam.  Nothing runs
on its own: a test calls ``cycle(node)``, ``monitor(node)``, ``crash(node)``
and the session's fault controls in whatever order it wants, so every
interleaving is reproducible.  An operator's ``Store`` of its own writes
intent the way the CLI does.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zkdeploy.agent.daemon import Agent, run_cycle
from zkdeploy.config.schema import AgentConfig
from zkdeploy.coordination import Store
from zkdeploy.crash import SimulatedCrash
from zkdeploy.model import ONLINE, DeployEntry, Release
from zkdeploy.policy.waves import resolve
from zkdeploy.testing.memory import MemoryEnsemble, MemorySession
from zkdeploy.testing.simhost import SimHost, SimTransport, SimWorld, tiny_payload


@dataclass
class SimAgent:
    """One node: its agent (None while crashed), its session and its data directory."""

    node: str
    config: AgentConfig
    agent: Agent | None = None
    session: MemorySession | None = None
    old_sessions: list[MemorySession] = field(default_factory=list)

    @property
    def store(self) -> Store:
        assert self.agent is not None and self.agent.store is not None
        return self.agent.store


class SimFleet:
    """``nodes`` agents running ``services`` (a catalog dict) over one in-memory ensemble."""

    def __init__(self, nodes: list[str], catalog: dict[str, Any], *, root: str = "/dc",
                 workdir: Path | None = None, session_timeout: float = 10.0,
                 labels: dict[str, dict[str, str]] | None = None) -> None:
        self.ensemble = MemoryEnsemble(tick=session_timeout / 10)
        self.world = SimWorld()
        self.root = root
        self.session_timeout = session_timeout
        self._tmp = None if workdir is not None else tempfile.TemporaryDirectory(prefix="zkdeploy-sim-")
        self.workdir = workdir or Path(self._tmp.name)  # type: ignore[union-attr]
        self.catalog = catalog
        self.operator = Store(MemorySession(self.ensemble).start(), root)
        self.operator.bootstrap()
        self.operator.put_catalog(catalog, -1)
        self.agents: dict[str, SimAgent] = {}
        for node in nodes:
            config = AgentConfig(node=node, address="127.0.0.1", data_dir=str(self.workdir / node),
                                 services=sorted(catalog["services"]), zookeeper={"hosts": "memory", "root": root},
                                 swarm={"enabled": False}, labels=(labels or {}).get(node, {}))
            self.agents[node] = SimAgent(node, config)

    # -- releases -----------------------------------------------------------------
    def stage(self, service: str, version: str, at: float | None = None) -> Release:
        payload = tiny_payload(service, version)
        release = Release(service=service, version=version, sha256=hashlib.sha256(payload).hexdigest(),
                          size=len(payload), origin=f"sim://{service}/{version}", staged_by="test",
                          staged_at=time.time() if at is None else at)
        self.operator.put_release(release)
        return release

    def install_release(self, node: str, service: str, version: str) -> Path:
        """Unpack ``version`` of ``service`` on ``node`` (its payload fetched before the test)."""
        data = Path(self.agents[node].config.data_dir)
        release = data / "releases" / service / version
        release.mkdir(parents=True, exist_ok=True)
        (release / "VERSION").write_text(f"{service} {version}\n")
        return data

    def install(self, node: str, service: str, version: str) -> None:
        """Put ``version`` of ``service`` on ``node`` as if it had been rolled out before the test."""
        data = self.install_release(node, service, version)
        link = data / "current" / service
        link.parent.mkdir(parents=True, exist_ok=True)
        link.unlink(missing_ok=True)
        link.symlink_to(Path("..") / "releases" / service / version)
        self.world.running[(node, service)] = version

    # -- agents ---------------------------------------------------------------------
    def start(self, node: str, *, transport: SimTransport | None = None, threaded: bool = False) -> Agent:
        """Start (or restart after a crash) the agent of ``node``: recovery, a new session, registration.
        ``threaded`` payloads are fetched by background workers, as in the daemon."""
        sim = self.agents[node]
        agent = Agent(sim.config, host=SimHost(sim.config, self.world),
                      transport=transport or SimTransport())  # type: ignore[arg-type]
        agent.open_host()
        sim.session = MemorySession(self.ensemble, session_timeout=self.session_timeout).start()
        agent.attach(Store(sim.session, self.root), threaded=threaded)
        sim.agent = agent
        return agent

    def start_all(self) -> None:
        for node in self.agents:
            self.start(node)

    def cycle(self, node: str) -> None:
        """One decision cycle of ``node`` (nothing if it is crashed).  A simulated crash inside it
        takes the agent down, its session left to expire like a killed process's."""
        sim = self.agents[node]
        if sim.agent is None or sim.agent.cycle is None:
            return
        try:
            run_cycle(sim.agent.cycle)
        except SimulatedCrash:
            self.crash(node)

    def monitor(self, node: str) -> None:
        sim = self.agents[node]
        if sim.agent is not None:
            try:
                sim.agent.monitor.check_once()
            except SimulatedCrash:
                self.crash(node)

    def crash(self, node: str) -> None:
        """The agent process dies: nothing more runs; its session lives until the server expires it."""
        sim = self.agents[node]
        if sim.agent is None:
            return
        sim.agent.host.close()
        if sim.session is not None:
            sim.old_sessions.append(sim.session)
            sim.session.auto_reconnect = False
            sim.session.disconnect()  # no client to keep it alive: it expires after its timeout
        sim.agent = None
        sim.session = None

    def expire_dead_sessions(self) -> None:
        """The server expires the sessions of crashed agents (time passes beyond their timeout)."""
        self.ensemble.advance(self.session_timeout * 2)

    def rounds(self, n: int = 1) -> None:
        for _ in range(n):
            for node in self.agents:
                self.cycle(node)

    # -- what the operator sees --------------------------------------------------------------
    def deploy(self, *targets: tuple[str, str], max_failures: int | str = 0, on_failure: str = "pause",
               previous: dict[str, str] | None = None, kind: str = "deploy", waves: bool = False,
               steps: tuple[dict[str, Any], ...] = ()) -> list[str]:
        """Queue deploys as the CLI does; ``waves``: with each service's wave plan from the catalog,
        resolved against the nodes' labels now."""
        group = f"g-{len(self.operator.deploys())}"
        labels = {n: dict(sim.config.labels.model_dump(exclude_none=True)) for n, sim in self.agents.items()}
        entries = [DeployEntry(service=s, version=v, group=group, requested_by="test", created=time.time(),
                               max_failures=max_failures, on_failure=on_failure, kind=kind,
                               previous=(previous or {}).get(s), steps=steps, scenario="test" if steps else "",
                               waves=tuple(resolve(self.catalog["services"][s].get("waves", ()), labels))
                               if waves else ()) for s, v in targets]
        return self.operator.enqueue(entries)

    def versions(self, service: str) -> dict[str, str | None]:
        return {node: self.world.running.get((node, service)) for node in self.agents}

    def online(self, service: str) -> list[str]:
        return sorted(n for n, e in self.operator.current(service).items() if e.state == ONLINE)

    def close(self) -> None:
        for sim in self.agents.values():
            if sim.agent is not None:
                if sim.agent.payloads is not None:
                    sim.agent.payloads.close(wait=10)
                sim.agent.host.close()
        if self._tmp is not None:
            self._tmp.cleanup()
