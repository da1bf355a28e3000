"""Many real agents on simulated hosts against a real ZooKeeper, each driven by its own loop.

For the benchmarks (scripts/bench_overhead.py, scripts/bench_scale.py).  Each
agent is the agent's real code (``Agent.attach``: presence, payloads, cycle,
health monitor, reports, journal), with a ``SimHost`` behind the host seam
and its own ZooKeeper session (a ``ZooKeeperSession`` wrapped in a
``CountingSession``).  What differs from the daemon is only the process
around it: the agents of a ``AgentGroup`` share one Python process, each
with the threads ``Agent.run`` starts (the cycle loop, the health monitor,
the reports thread), and ``AgentProcesses`` spreads groups over a few
processes so that hundreds of agents fit on a small machine.

The cycle loop is the daemon's: clear the wake flag, ``run_cycle``, wait for
a wake-up or ``cycle_interval``.  What a benchmark needs to see is recorded
on the side: the requests, notifications and bytes of each node's session;
when each /current entry went online or restarting (read from the writes
themselves); when each simulated step began (``SimWorld.timeline``); how
long each ``SlotRequest.poll`` took; and, for one chosen node, a profile of
its cycle thread with the requests of every cycle.
"""

from __future__ import annotations

import cProfile
import io
import json
import multiprocessing
import os
import pstats
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from zkdeploy.agent import slots
from zkdeploy.agent.daemon import REPORTS_REFRESH, Agent, run_cycle
from zkdeploy.config.schema import AgentConfig
from zkdeploy.coordination import Store
from zkdeploy.coordination.zookeeper import ZooKeeperSession
from zkdeploy.errors import ZkdeployError
from zkdeploy.testing.counting import CountingSession, Counts
from zkdeploy.testing.simhost import SimHost, SimTransport, SimWorld


@dataclass
class GroupSpec:
    """The agents of one process (plain data: it crosses a process boundary)."""

    zk_hosts: str
    root: str
    nodes: list[str]
    services: list[str]
    workdir: str
    installed: dict[str, str]  # service -> the version every node runs at the start
    durations: dict[str, float] = field(default_factory=dict)
    session_timeout: float = 10.0
    cycle_interval: float = 2.0
    monitor_interval: float = 2.0
    durable_journal: bool = False
    profile: str | None = None  # the node whose cycle thread is profiled
    trace: bool = False         # keep every request (with its node), notification and cycle with its time
    #: the process's nice value: above 0, the agents yield the CPU to the ZooKeeper server beside
    #: them, as on a fleet where the ensemble has machines of its own (a benchmark says which it ran)
    nice: int = 0
    #: the process's interpreter switch interval (None: Python's 5 ms).  N agents share one
    #: interpreter here, where each would have a machine of its own: when most of their threads
    #: want the interpreter at once (the start of a rollout), every waiting thread wakes each
    #: interval to ask for it, and the machine goes to those wake-ups (scripts/bench_scale.py)
    switch_interval: float | None = None


def path_kind(root: str, path: str) -> str:
    """A path with its node-specific tail folded: ``/dc/current/db/n01`` -> ``current/db/*``."""
    parts = path[len(root):].strip("/").split("/") if path.startswith(root) else [path]
    if len(parts) <= 1:
        return parts[0]
    if parts[0] in ("current", "up", "slots", "members", "locks", "staging", "marks"):
        return "/".join(parts[:2]) + ("/*" if len(parts) > 2 else "")
    return parts[0] + "/*"


class _Polls:
    """Durations of every ``SlotRequest.poll`` in this process (the quorum decision's step)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.records: list[tuple[str, str, float, bool]] = []  # node, service, seconds, granted
        self.installed = False

    def install(self) -> None:
        """Time ``SlotRequest.poll`` from now on in this process (a benchmark's instrument)."""
        if self.installed:
            return
        original = slots.SlotRequest.poll

        def timed(request: slots.SlotRequest, wake: threading.Event | None = None) -> bool:
            started = time.monotonic()
            granted = False
            try:
                granted = original(request, wake)
                return granted
            finally:
                with self.lock:
                    self.records.append((request.node, request.service, time.monotonic() - started, granted))

        slots.SlotRequest.poll = timed  # type: ignore[method-assign,assignment]
        self.installed = True


POLLS = _Polls()


#: where a cycle's time goes: (file suffix, function) whose cumulative time is one share
_SHARES = {
    "zookeeper round trips": ("zkdeploy/testing/counting.py", "_timed"),
    "journal writes (SQLite transactions)": ("zkdeploy/journal/store.py", "_tx"),
    "fsync of files and directories": ("~", "<built-in method posix.fsync>"),
    "simulated service steps": ("zkdeploy/testing/simhost.py", "begin"),
}


def profile_breakdown(stats: pstats.Stats) -> dict[str, Any]:
    """Seconds (and calls) of the profiled cycles by share; "total" is every cycle's time."""
    table = stats.stats  # type: ignore[attr-defined]
    out: dict[str, Any] = {}
    for (filename, _line, func), (_cc, calls, _tt, cumulative, _callers) in table.items():
        if func == "run_cycle" and filename.endswith("zkdeploy/agent/daemon.py"):
            out["total"] = (cumulative, calls)
        for share, (suffix, name) in _SHARES.items():
            if func == name and filename.endswith(suffix):
                seconds, n = out.get(share, (0.0, 0))
                out[share] = (seconds + cumulative, n + calls)
    return out


def install_release(data_dir: Path, service: str, version: str, world: SimWorld, node: str) -> None:
    """Put ``version`` of ``service`` on a simulated host as if rolled out before (unpacked, current, up)."""
    release = data_dir / "releases" / service / version
    release.mkdir(parents=True, exist_ok=True)
    (release / "VERSION").write_text(f"{service} {version}\n")
    link = data_dir / "current" / service
    link.parent.mkdir(parents=True, exist_ok=True)
    link.unlink(missing_ok=True)
    link.symlink_to(Path("..") / "releases" / service / version)
    world.running[(node, service)] = version


class AgentGroup:
    """``spec.nodes`` agents in this process, each with its own session and threads."""

    def __init__(self, spec: GroupSpec) -> None:
        self.spec = spec
        self.world = SimWorld(durations=dict(spec.durations))
        self.agents: dict[str, Agent] = {}
        self.counts: dict[str, Counts] = {n: Counts() for n in spec.nodes}
        self.paths: dict[str, Counter[str]] = {n: Counter() for n in spec.nodes}
        self.threads: list[threading.Thread] = []
        self.lock = threading.Lock()
        self.states: dict[tuple[str, str], str] = {}
        self.transitions: list[tuple[float, str, str, str]] = []  # when, node, service, new state
        self.notes: list[tuple[float, str, str, str]] = []        # when, node, kind, path (trace)
        self.calls: list[tuple[float, float, str, str, str]] = []  # started, ended, node, kind, path (trace)
        self.cycles: dict[str, list[float]] = {n: [] for n in spec.nodes}
        self.cycle_log: list[dict[str, Any]] = []  # the profiled node's cycles
        self.profiler: cProfile.Profile | None = None
        POLLS.install()

    # -- what the sessions see ------------------------------------------------------
    def _on_call(self, node: str) -> Any:
        root = self.spec.root
        paths = self.paths[node]

        def on_call(kind: str, path: str, data: bytes, started: float, ended: float) -> None:
            paths[f"{kind} {path_kind(root, path)}"] += 1
            if kind in ("set", "create", "commit") and path.startswith(f"{root}/current/") and data:
                # a transaction's data is its ops' data end to end: the entry's record comes first
                try:
                    state = json.JSONDecoder().raw_decode(data.decode())[0].get("state", "")
                except ValueError:
                    state = ""
                service = path.split("/")[-2]
                with self.lock:
                    if self.states.get((node, service)) != state:
                        self.states[(node, service)] = state
                        self.transitions.append((ended, node, service, state))
            if self.spec.trace:
                with self.lock:
                    self.calls.append((started, ended, node, kind, path))
        return on_call

    def _on_notify(self, node: str) -> Any:
        def on_notify(kind: str, path: str, when: float) -> None:
            if self.spec.trace:
                with self.lock:
                    self.notes.append((when, node, kind, path))
        return on_notify

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        """Set up every host, connect every agent and start its threads."""
        spec = self.spec
        for node in spec.nodes:
            data = Path(spec.workdir) / node
            for service, version in spec.installed.items():
                install_release(data, service, version, self.world, node)
            config = AgentConfig(node=node, address="127.0.0.1", data_dir=str(data), services=tuple(spec.services),
                                 zookeeper={"hosts": spec.zk_hosts, "root": spec.root,
                                            "session_timeout": spec.session_timeout},
                                 swarm={"enabled": False}, cycle_interval=spec.cycle_interval,
                                 monitor_interval=spec.monitor_interval)
            agent = Agent(config, host=SimHost(config, self.world, durable_journal=spec.durable_journal),
                          transport=SimTransport())  # type: ignore[arg-type]
            agent.open_host()
            inner = ZooKeeperSession(spec.zk_hosts, session_timeout=spec.session_timeout, connect_timeout=60,
                                     operation_timeout=30)
            session = CountingSession(inner, self.counts[node], on_call=self._on_call(node),
                                      on_notify=self._on_notify(node)).start()
            store = Store(session, spec.root)
            store.bootstrap()
            agent.attach(store, threaded=True)
            self.agents[node] = agent
        for node, agent in self.agents.items():
            assert agent.reports is not None
            for target, name, args in ((self._loop, "cycle", (node, agent)),
                                       (agent.monitor.run, "monitor", ()),
                                       (agent.reports.run, "reports", (REPORTS_REFRESH,))):
                thread = threading.Thread(target=target, args=args, name=f"{node}-{name}", daemon=True)
                thread.start()
                self.threads.append(thread)

    def _loop(self, node: str, agent: Agent) -> None:
        """The daemon's loop (Agent.run): clear the wake flag, one cycle, wait for a wake-up."""
        cycle = agent.cycle
        assert cycle is not None
        profiled = node == self.spec.profile
        if profiled:
            self.profiler = cProfile.Profile()
        counts = self.counts[node]
        while not agent.stopping.is_set():
            agent.wake.clear()
            before = counts.snapshot() if profiled else None
            started = time.monotonic()
            if self.profiler is not None and profiled:
                self.profiler.enable()
                run_cycle(cycle)
                self.profiler.disable()
            else:
                run_cycle(cycle)
            elapsed = time.monotonic() - started
            self.cycles[node].append(elapsed)
            if self.spec.trace:
                ended = time.time()
                with self.lock:
                    self.calls.append((ended - elapsed, ended, node, "cycle", ""))
            if before is not None:
                delta = Counts.delta(counts.snapshot(), before)
                self.cycle_log.append({"at": time.time(), "seconds": elapsed,
                                       "requests": {k: v for k, v in delta["requests"].items() if v},
                                       "zk_seconds": sum(delta["seconds"].values())})
            agent.wake.wait(agent.config.cycle_interval)

    def stop(self) -> None:
        """Stop every agent as the daemon does on its way out (leave the queues, close the session)."""
        for agent in self.agents.values():
            agent.stop()
        for thread in self.threads:
            thread.join(15)
        for agent in self.agents.values():
            try:
                if agent.cycle is not None:
                    agent.cycle.cancel_all("agent is stopping")
            except ZkdeployError:
                pass
            if agent.payloads is not None:
                agent.payloads.close()
            if agent.store is not None:
                agent.store.close()
            agent.host.close()

    # -- what a benchmark reads -------------------------------------------------------------
    def mark(self) -> None:
        """Start a measurement: counters, timelines and logs are reported relative to now."""
        with self.lock:
            self._marked = {n: c.snapshot() for n, c in self.counts.items()}
            self._paths_marked = {n: Counter(p) for n, p in self.paths.items()}
            self.transitions.clear()
            self.notes.clear()
            self.calls.clear()
            self.world.timeline.clear()
            self.cycle_log.clear()
            for cycles in self.cycles.values():
                cycles.clear()
        with POLLS.lock:
            POLLS.records.clear()
        if self.profiler is not None:
            self.profiler.disable()
            self.profiler = cProfile.Profile()

    def report(self) -> dict[str, Any]:
        """Everything measured since ``mark`` (plain data)."""
        marked = getattr(self, "_marked", {n: Counts().snapshot() for n in self.counts})
        paths_marked = getattr(self, "_paths_marked", {n: Counter() for n in self.paths})
        profile, breakdown = "", {}
        if self.profiler is not None and self.profiler.getstats():
            out = io.StringIO()
            stats = pstats.Stats(self.profiler, stream=out)
            stats.sort_stats("cumulative").print_stats(60)
            profile = out.getvalue()
            breakdown = profile_breakdown(stats)
        with self.lock, POLLS.lock:
            return {
                "counts": {n: Counts.delta(c.snapshot(), marked[n]) for n, c in self.counts.items()},
                "paths": {n: dict(p - paths_marked[n]) for n, p in self.paths.items()},
                "transitions": list(self.transitions),
                "timeline": list(self.world.timeline),
                "notes": list(self.notes),
                "calls": list(self.calls),
                "polls": list(POLLS.records),
                "cycles": {n: list(c) for n, c in self.cycles.items()},
                "cycle_log": list(self.cycle_log),
                "profile": profile,
                "breakdown": breakdown,
                "versions": {f"{n}/{s}": v for (n, s), v in self.world.running.items()},
            }


def _serve(conn: Connection, spec: GroupSpec) -> None:
    """A worker process: one group, driven by commands on ``conn``."""
    import logging

    logging.basicConfig(level=logging.WARNING, format=f"%(asctime)s {spec.nodes[0]}+ %(name)s %(message)s")
    if spec.nice:
        os.nice(spec.nice)
    if spec.switch_interval is not None:
        sys.setswitchinterval(spec.switch_interval)
    group = AgentGroup(spec)
    try:
        while True:
            command = conn.recv()
            if command == "start":
                group.start()
                conn.send("ok")
            elif command == "mark":
                group.mark()
                conn.send("ok")
            elif command == "report":
                conn.send(group.report())
            elif command == "stop":
                group.stop()
                conn.send("ok")
                return
    finally:
        conn.close()


class AgentProcesses:
    """``specs`` groups, each in a process of its own (spawned: no threads inherited)."""

    def __init__(self, specs: list[GroupSpec]) -> None:
        context = multiprocessing.get_context("spawn")
        self.pipes: list[Connection] = []
        self.procs = []
        for spec in specs:
            parent, child = context.Pipe()
            proc = context.Process(target=_serve, args=(child, spec), daemon=True)
            proc.start()
            child.close()
            self.pipes.append(parent)
            self.procs.append(proc)

    def call(self, command: str, timeout: float = 300.0) -> list[Any]:
        """Send ``command`` to every process at once and gather their answers."""
        for pipe in self.pipes:
            pipe.send(command)
        out = []
        for pipe in self.pipes:
            if not pipe.poll(timeout):
                raise ZkdeployError(f"an agent process did not answer {command!r} within {timeout:g}s")
            out.append(pipe.recv())
        return out

    def stop(self) -> None:
        try:
            self.call("stop", timeout=120)
        finally:
            for proc in self.procs:
                proc.join(10)
                if proc.is_alive():
                    proc.kill()


def merge(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """The reports of several processes as one (per-node maps joined, lists concatenated)."""
    out: dict[str, Any] = {"profile": "".join(r["profile"] for r in reports),
                           "breakdown": next((r["breakdown"] for r in reports if r["breakdown"]), {})}
    for key in ("counts", "paths", "cycles", "versions"):
        out[key] = {k: v for r in reports for k, v in r[key].items()}
    for key in ("transitions", "timeline", "notes", "calls", "polls", "cycle_log"):
        out[key] = sorted((x for r in reports for x in r[key]), key=lambda x: x["at"] if isinstance(x, dict) else x[0])
    return out


def split(nodes: list[str], processes: int) -> list[list[str]]:
    """``nodes`` in ``processes`` nearly equal groups (round robin)."""
    return [nodes[i::processes] for i in range(processes) if nodes[i::processes]]


class Operator:
    """The operator's side, as the CLI writes it: catalog, staged releases, deploy entries.

    Its session is counted too (``counts``), apart from the agents'."""

    def __init__(self, zk_hosts: str, root: str) -> None:
        self.counts = Counts()
        session = CountingSession(ZooKeeperSession(zk_hosts, session_timeout=30, connect_timeout=60,
                                                   operation_timeout=60), self.counts).start()
        self.store = Store(session, root)
        self.store.bootstrap()

    def put_catalog(self, catalog: dict[str, Any]) -> None:
        _data, version = self.store.catalog()
        self.store.put_catalog(catalog, version)

    def stage(self, service: str, version: str, at: float | None = None) -> None:
        import hashlib

        from zkdeploy.model import Release
        from zkdeploy.testing.simhost import tiny_payload

        payload = tiny_payload(service, version)
        self.store.put_release(Release(service=service, version=version, sha256=hashlib.sha256(payload).hexdigest(),
                                       size=len(payload), origin=f"sim://{service}/{version}", staged_by="bench",
                                       staged_at=time.time() if at is None else at))

    def deploy(self, *targets: tuple[str, str]) -> list[str]:
        """Queue one deploy per (service, version), in one request (no waves), as ``zkdeploy deploy --no-waves``."""
        from zkdeploy.model import DeployEntry

        group = f"bench-{time.time():.0f}"
        return self.store.enqueue([DeployEntry(service=s, version=v, group=group, requested_by="bench",
                                               created=time.time()) for s, v in targets])

    def wait(self, what: Any, timeout: float, interval: float = 0.2, why: str = "") -> None:
        """Poll ``what()`` until it is true; ZkdeployError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not what():
            if time.monotonic() > deadline:
                raise ZkdeployError(f"timed out after {timeout:g}s waiting for {why or what}")
            time.sleep(interval)

    def close(self) -> None:
        self.store.close()
