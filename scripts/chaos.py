#!/usr/bin/env python3
"""Chaos runs: a real rollout under injected faults, judged against DESIGN.md's invariants.

Each run (seed S) starts a 3-server ZooKeeper ensemble on loopback and a
LocalFleet of agents as processes (services ``db``, and ``web`` depending on
``db``), installs version 1, starts an Observer that probes every service's
HTTP port, stages version 2 (in some seeds a ``db`` 2 whose health check
fails), deploys ``db@2 web@2`` and, while the rollout runs, injects faults at
moments drawn from ``random.Random(S)``:

* ``kill``        SIGKILL of an agent, restarted a few seconds later;
* ``stop-long``   SIGSTOP of an agent for longer than the session timeout, then SIGCONT;
* ``stop-short``  SIGSTOP of an agent for less than the session timeout, then SIGCONT;
* ``zk-leader``   SIGKILL of the ZooKeeper leader, restarted a few seconds later.

Then it waits (bounded) for the rollout to end and for returned nodes to
converge, and checks safety, order, liveness/convergence and the journals
(see docs/chaos.md for how each is judged).  One line per run; the last line
is ``chaos_runs=N violations=V``; the exit code is 0 only when V == 0.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zkdeploy.coordination import Store  # noqa: E402
from zkdeploy.demo.fleet import DemoService, Host, LocalFleet, ServiceTiming  # noqa: E402
from zkdeploy.demo.observer import Observer, Sample  # noqa: E402
from zkdeploy.errors import ZkdeployError  # noqa: E402
from zkdeploy.journal import Journal  # noqa: E402
from zkdeploy.model import DONE, HALTED, ONLINE, OPEN_DEPLOY_STATES  # noqa: E402
from zkdeploy.policy.quorum import required_online  # noqa: E402
from zkdeploy.testing.zkserver import ZkCluster, ZkServer  # noqa: E402

KILL, STOP_LONG, STOP_SHORT, ZK_LEADER = "kill", "stop-long", "stop-short", "zk-leader"
KINDS = (KILL, STOP_LONG, STOP_SHORT, ZK_LEADER)
HOST_KINDS = (KILL, STOP_LONG, STOP_SHORT)

SESSION_TIMEOUT = 4.0
TIMING = ServiceTiming(start_delay=1.0, stop_delay=0.5)
ROOT = "/chaos"
OLD, NEW = "1", "2"

#: faults are planned at offsets (seconds after the deploy command) within this window
FAULT_WINDOW = (0.5, 18.0)
#: at most this many hosts are under a fault at once (db's quorum 4 of 6 then still holds)
MAX_HOSTS_FAULTED = 2
#: a host is left alone this long after its fault ended, before it may be hit again
HOST_SETTLE = 4.0


def services() -> list[DemoService]:
    return [DemoService("db", quorum=4, timing=TIMING),
            DemoService("web", quorum="67%", depends_on=("db",), timing=TIMING)]


# ---------------------------------------------------------------------------------------------
# the plan: everything random is drawn here, from random.Random(seed)
# ---------------------------------------------------------------------------------------------
@dataclass
class PlannedFault:
    kind: str
    offset: float          # seconds after the deploy command
    hold: float            # seconds until the agent (or server) is restarted / continued
    pick: int              # which eligible host (index, modulo the candidates)
    prefer_restarting: bool  # aim at a host that holds a restart slot at that moment, if any


@dataclass
class Plan:
    seed: int
    nodes: int
    fail_health: bool
    faults: list[PlannedFault]


def plan_run(seed: int, nodes: int = 6, session_timeout: float = SESSION_TIMEOUT) -> Plan:
    """The reproducible part of a run: the faults (kind, moment, duration, target choice)."""
    rng = random.Random(seed)
    fail_health = rng.random() < 0.25
    count = rng.randint(3, 5)
    kinds = [rng.choice(KINDS) for _ in range(count)]
    offsets = sorted(round(rng.uniform(*FAULT_WINDOW), 2) for _ in range(count))
    faults = []
    last_leader_kill = -1e9
    for kind, offset in zip(kinds, offsets):
        if kind == KILL:
            hold = rng.uniform(1.5, 5.0)
        elif kind == STOP_LONG:
            hold = session_timeout + rng.uniform(1.5, 4.0)
        elif kind == STOP_SHORT:
            hold = rng.uniform(0.5, session_timeout / 2)
        else:
            hold = rng.uniform(2.0, 6.0)
            # one ZooKeeper server down at a time: the ensemble of 3 keeps its majority
            if offset < last_leader_kill + 15.0:
                offset = round(last_leader_kill + 15.0, 2)
            last_leader_kill = offset
        faults.append(PlannedFault(kind, offset, round(hold, 2), rng.randrange(1 << 16), rng.random() < 0.6))
    faults.sort(key=lambda f: f.offset)
    return Plan(seed, nodes, fail_health, faults)


# ---------------------------------------------------------------------------------------------
# what happened
# ---------------------------------------------------------------------------------------------
@dataclass
class FaultRecord:
    kind: str
    target: str             # host name, or "zk:<port>" for a ZooKeeper server
    started: float          # wall time of the signal
    resumed: float | None = None  # wall time of the restart / SIGCONT (None: never)
    hold: float = 0.0
    detail: str = ""

    @property
    def host_fault(self) -> bool:
        return self.kind in HOST_KINDS

    def short(self, t0: float) -> str:
        held = f"{self.resumed - self.started:.1f}s" if self.resumed else "never resumed"
        extra = f" ({self.detail})" if self.detail else ""
        return f"{self.kind}:{self.target}@+{self.started - t0:.1f}s/{held}{extra}"


@dataclass
class Violation:
    invariant: str
    reason: str

    def __str__(self) -> str:
        return f"{self.invariant}: {self.reason}"


@dataclass
class RunResult:
    seed: int
    fail_health: bool
    faults: list[FaultRecord] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)
    rollout_seconds: float | None = None
    converge_seconds: float | None = None
    samples: int = 0
    min_margin: dict[str, int] = field(default_factory=dict)
    max_down: dict[str, int] = field(default_factory=dict)
    deploy_states: dict[str, str] = field(default_factory=dict)
    workdir: str | None = None
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    t0: float = 0.0

    def line(self) -> str:
        faults = ", ".join(f.short(self.t0) for f in self.faults) or "none"
        rollout = f"{self.rollout_seconds:.1f}s" if self.rollout_seconds is not None else "unfinished"
        margins = " ".join(f"{s}={m:+d}" for s, m in sorted(self.min_margin.items()))
        converge = f"{self.converge_seconds:.1f}s" if self.converge_seconds is not None else "no"
        out = (f"seed={self.seed} db2={'failing-health' if self.fail_health else 'healthy'} "
               f"faults={len(self.faults)} [{faults}] rollout={rollout} converged={converge} samples={self.samples} "
               f"min_quorum_margin[{margins}] violations={len(self.violations)}")
        if self.violations:
            out += " :: " + "; ".join(str(v) for v in self.violations)
        if self.workdir:
            out += f" (kept {self.workdir})"
        return out


# ---------------------------------------------------------------------------------------------
# watching ZooKeeper from outside: when did each node (re-)register?
# ---------------------------------------------------------------------------------------------
class Registrations:
    """Polls /nodes and keeps, per node, the (poll time, started) of its registrations."""

    def __init__(self, store: Store, interval: float = 0.25) -> None:
        self.store = store
        self.interval = interval
        self.polls: list[tuple[float, dict[str, tuple[int, float]]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="registrations", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                nodes = self.store.nodes()
                self.polls.append((time.time(), {n: (r.pid, r.started) for n, r in nodes.items()}))
            except Exception:  # an ensemble electing a leader, a connection being re-established
                pass
            self._stop.wait(self.interval)

    def start(self) -> "Registrations":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=15)

    def back_at(self, node: str, fault: FaultRecord) -> float | None:
        """When ``node`` was registered again after ``fault``: at its SIGCONT if its session survived
        (the record from before the fault is still there), else at its new registration."""
        if fault.resumed is None:
            return None
        for at, nodes in self.polls:
            if at < fault.resumed or node not in nodes:
                continue
            _pid, started = nodes[node]
            if started >= fault.started:
                return at  # registered again, by a new process or after a new session
            if fault.kind != KILL:
                return fault.resumed  # the stopped agent's session survived
            # a killed agent's record lingers until its session expires: wait for the new one
        return None


# ---------------------------------------------------------------------------------------------
# the fault injector
# ---------------------------------------------------------------------------------------------
class Injector:
    """Runs the planned faults in threads, one per fault; ``cancel()`` stops them all."""

    def __init__(self, plan: Plan, fleet: LocalFleet, cluster: ZkCluster, store: Store,
                 log: "RunLog") -> None:
        self.plan = plan
        self.fleet = fleet
        self.cluster = cluster
        self.store = store
        self.log = log
        self.records: list[FaultRecord] = []
        self._cancel = threading.Event()
        self._lock = threading.Lock()      # every signal and every restart happens under it
        self._busy: dict[str, float] = {}  # host -> busy until (inf while its fault lasts)
        self._threads: list[threading.Thread] = []
        self.t0 = 0.0

    def start(self, t0: float) -> None:
        self.t0 = t0
        for i, fault in enumerate(self.plan.faults):
            th = threading.Thread(target=self._run_fault, args=(i, fault), name=f"fault-{i}", daemon=True)
            th.start()
            self._threads.append(th)

    def done(self) -> bool:
        return all(not th.is_alive() for th in self._threads)

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for th in self._threads:
            th.join(max(0.0, deadline - time.monotonic()))

    def cancel(self) -> None:
        self._cancel.set()
        self.join(75)

    # -- choosing a host --------------------------------------------------
    def _restarting_hosts(self) -> list[str]:
        try:
            return sorted({n for s in self.fleet.services for n in self.store.slots(s.name)})
        except Exception:  # the ensemble may be electing a leader
            return []

    def _choose_host(self, fault: PlannedFault) -> Host | None:
        """Reserve a host for ``fault``: waits (up to 20 s) while too many hosts are faulted."""
        deadline = time.monotonic() + 20.0
        while not self._cancel.is_set() and time.monotonic() < deadline:
            restarting = self._restarting_hosts() if fault.prefer_restarting else []
            with self._lock:
                now = time.monotonic()
                busy = {h for h, until in self._busy.items() if until > now}
                if len(busy) < MAX_HOSTS_FAULTED:
                    free = [h for h in self.fleet.hosts if h.name not in busy
                            and h.process is not None and h.process.poll() is None]
                    preferred = [h for h in free if h.name in restarting]
                    pool = preferred or free
                    if pool:
                        host = pool[fault.pick % len(pool)]
                        self._busy[host.name] = float("inf")
                        return host
            self._cancel.wait(0.2)
        return None

    # -- one fault ------------------------------------------------------------
    def _run_fault(self, index: int, fault: PlannedFault) -> None:
        try:
            if self._cancel.wait(max(0.0, self.t0 + fault.offset - time.time())):
                return
            if fault.kind == ZK_LEADER:
                self._leader_kill(fault)
            else:
                self._host_fault(fault)
        except Exception as exc:  # a failing injector must be reported, not hide the run
            self.log.say(f"fault {index} ({fault.kind}) failed: {type(exc).__name__}: {exc}")
            with self._lock:
                self.records.append(FaultRecord(fault.kind, "?", time.time(), None, fault.hold,
                                                f"injector error: {exc}"))

    def _host_fault(self, fault: PlannedFault) -> None:
        host = self._choose_host(fault)
        if host is None:
            return
        record = FaultRecord(fault.kind, host.name, 0.0, None, fault.hold)
        try:
            with self._lock:
                if self._cancel.is_set() or host.process is None or host.process.poll() is not None:
                    return
                phases = self._phases(host.name)
                pid = host.process.pid
                record.started = time.time()
                if fault.kind == KILL:
                    host.process.send_signal(signal.SIGKILL)
                    host.process.wait(timeout=30)
                else:
                    os.kill(pid, signal.SIGSTOP)
                record.detail = phases
                self.records.append(record)
            self.log.say(f"{fault.kind} {host.name} (pid {pid}; {phases})")
            self._cancel.wait(fault.hold)
            with self._lock:
                # on cancel, a stopped agent is still continued (so that it can be stopped cleanly);
                # a killed one is not restarted
                if fault.kind == KILL:
                    if self._cancel.is_set():
                        return
                    self.fleet.start_agent(host)
                else:
                    os.kill(pid, signal.SIGCONT)
                record.resumed = time.time()
            self.log.say(f"{fault.kind} {host.name}: {'restarted' if fault.kind == KILL else 'continued'}")
        finally:
            with self._lock:
                self._busy[host.name] = time.monotonic() + HOST_SETTLE

    def _phases(self, node: str) -> str:
        """What the host was doing when hit, from /current (for the report only)."""
        try:
            parts = []
            for svc in self.fleet.services:
                entry = self.store.current(svc.name).get(node)
                if entry is not None:
                    parts.append(f"{svc.name} {entry.version or '-'} {entry.state}/{entry.phase}")
            return ", ".join(parts)
        except Exception:
            return "state unknown"

    def _leader_kill(self, fault: PlannedFault) -> None:
        leader: ZkServer | None = None
        deadline = time.monotonic() + 10.0
        while leader is None and time.monotonic() < deadline and not self._cancel.is_set():
            leader = self.cluster.leader()
            if leader is None:
                self._cancel.wait(0.2)
        if leader is None:
            return
        with self._lock:
            if self._cancel.is_set():
                return
            record = FaultRecord(ZK_LEADER, f"zk:{leader.client_port}", time.time(), None, fault.hold)
            leader.kill(signal.SIGKILL)
            self.records.append(record)
        self.log.say(f"zk-leader: killed server {leader.myid} (port {leader.client_port})")
        if self._cancel.wait(fault.hold):
            return
        with self._lock:
            if self._cancel.is_set():
                return
            self.cluster.restart(leader, timeout=60)
            record.resumed = time.time()
        self.log.say(f"zk-leader: server {leader.myid} restarted")


# ---------------------------------------------------------------------------------------------
# judging
# ---------------------------------------------------------------------------------------------
def grace_windows(samples: list[Sample], faults: list[FaultRecord], service: str,
                  hosts: list[str]) -> dict[str, list[tuple[float, float]]]:
    """Per host, the intervals during which its ``service`` counts as down through no action of
    zkdeploy: from the fault until the first sample, at or after the agent was restarted or
    continued, in which the service answers again (open-ended if it never does)."""
    out: dict[str, list[tuple[float, float]]] = {h: [] for h in hosts}
    for f in faults:
        if not f.host_fault or f.target not in out:
            continue
        end = float("inf")
        if f.resumed is not None:
            for s in samples:
                if s.at >= f.resumed and s.answers.get((service, f.target)):
                    end = s.at
                    break
        out[f.target].append((f.started, end))
    return out


def _within(windows: list[tuple[float, float]], t: float) -> bool:
    return any(a <= t <= b for a, b in windows)


def check_safety(samples: list[Sample], faults: list[FaultRecord], fleet: LocalFleet,
                 result: RunResult) -> None:
    """At every sample: answering >= quorum - (faulted nodes in their grace that do not answer)."""
    hosts = [h.name for h in fleet.hosts]
    for svc in fleet.services:
        quorum = required_online(svc.quorum, len(hosts))
        grace = grace_windows(samples, faults, svc.name, hosts)
        worst: tuple[int, Sample | None, int, int] = (10**9, None, 0, 0)
        bad = 0
        first_bad: tuple[Sample, int, int] | None = None
        max_down = 0
        for s in samples:
            answering = sum(1 for h in hosts if s.answers.get((svc.name, h)))
            excused = sum(1 for h in hosts if not s.answers.get((svc.name, h)) and _within(grace[h], s.at))
            margin = answering - (quorum - excused)
            max_down = max(max_down, len(hosts) - answering)
            if margin < worst[0]:
                worst = (margin, s, answering, excused)
            if margin < 0:
                bad += 1
                if first_bad is None:
                    first_bad = (s, answering, excused)
        result.min_margin[svc.name] = worst[0] if worst[1] is not None else 0
        result.max_down[svc.name] = max_down
        if first_bad is not None:
            s, answering, excused = first_bad
            down = sorted(h for h in hosts if not s.answers.get((svc.name, h)))
            result.violations.append(Violation(
                "safety", f"{svc.name} at +{s.at - result.t0:.2f}s: {answering} answering, quorum {quorum}, "
                          f"{excused} down by fault (down: {', '.join(down)}; {bad} sample(s) below)"))


def check_order(samples: list[Sample], faults: list[FaultRecord], regs: Registrations, fleet: LocalFleet,
                db_finished: float | None, result: RunResult) -> None:
    """No web node restarted (stopped answering 1 outside a fault of its own host) before every
    reachable db node answered 2.  A db node is unreachable when its host was under a fault
    (from the signal until it was registered again) at some moment between the db deploy's
    completion and that web restart."""
    hosts = [h.name for h in fleet.hosts]
    web_grace = grace_windows(samples, faults, "web", hosts)
    absent: dict[str, list[tuple[float, float]]] = {h: [] for h in hosts}
    for f in faults:
        if f.host_fault and f.target in absent:
            back = regs.back_at(f.target, f)
            absent[f.target].append((f.started, back if back is not None else float("inf")))
    db_v2: dict[str, float] = {}
    for s in samples:
        for h in hosts:
            if h not in db_v2 and s.answers.get(("db", h)) == NEW:
                db_v2[h] = s.at
    problems = []
    for w in hosts:
        t_w = next((s.at for s in samples if s.answers.get(("web", w)) != OLD
                    and not _within(web_grace[w], s.at)), None)
        if t_w is None:
            continue
        since = min(db_finished, t_w) if db_finished is not None else t_w
        for d in hosts:
            if d in db_v2 and db_v2[d] <= t_w:
                continue
            if any(a <= t_w and b >= since for a, b in absent[d]):
                continue  # unreachable when db completed: skipped, converges when it returns
            now = next((s.answers.get(("db", d)) for s in samples if s.at >= t_w), None)
            problems.append(f"web on {w} changed at +{t_w - result.t0:.2f}s while db on {d} answered {now!r}")
    if problems:
        result.violations.append(Violation("order", f"{problems[0]} ({len(problems)} case(s))"))


def most_popular(versions: list[str | None]) -> str | None:
    counted = Counter(v for v in versions if v)
    if not counted:
        return None
    top = max(counted.values())
    return max(v for v, c in counted.items() if c == top)


def check_final(observer: Observer, store: Store, fleet: LocalFleet, faults: list[FaultRecord],
                expected: dict[str, str], deploys: dict[str, Any], fail_health: bool,
                result: RunResult) -> None:
    """Liveness/convergence: every node ends where it should, as probed and as published."""
    hosts = [h.name for h in fleet.hosts]
    for svc in fleet.services:
        final = observer.final(svc.name)
        wrong = {h: v for h, v in final.items() if v != expected[svc.name]}
        if wrong:
            result.violations.append(Violation(
                "liveness", f"{svc.name} should end at {expected[svc.name]} everywhere; probed: "
                            + ", ".join(f"{h}={v}" for h, v in sorted(wrong.items()))))
        try:
            entries = store.current(svc.name)
        except ZkdeployError as exc:
            result.violations.append(Violation("liveness", f"cannot read /current/{svc.name}: {exc}"))
            continue
        missing = sorted(set(hosts) - set(entries))
        off = {n: f"{e.version}/{e.state}" for n, e in entries.items()
               if e.version != expected[svc.name] or e.state != ONLINE}
        if missing or off:
            result.violations.append(Violation(
                "liveness", f"/current/{svc.name}: " + ", ".join(
                    [f"{n} absent" for n in missing] + [f"{n}={v}" for n, v in sorted(off.items())])))
        # a node that was down and came back runs the most popular version
        for h in sorted({f.target for f in faults if f.host_fault}):
            others = most_popular([v for n, v in final.items() if n != h])
            if final.get(h) != others:
                result.violations.append(Violation(
                    "convergence", f"{svc.name} on {h} (faulted) answers {final.get(h)!r}, "
                                   f"most popular elsewhere {others!r}"))
    try:
        stale = registered_now(store, fleet)
    except ZkdeployError as exc:
        stale = [f"? ({exc})"]
    if stale:
        result.violations.append(Violation(
            "liveness", "agents not registered (again) with their own session: " + ", ".join(stale)))
    db, web = deploys.get("db"), deploys.get("web")
    if fail_health:
        if db is None or db.state != HALTED:
            result.violations.append(Violation("liveness", f"db@{NEW} (failing health) should be halted, "
                                               f"is {db.state if db else 'gone'}"))
        if web is not None and web.state == DONE:
            result.violations.append(Violation("order", "web@2 completed although db@2 halted"))
    else:
        for name, entry in (("db", db), ("web", web)):
            if entry is None or entry.state != DONE:
                result.violations.append(Violation(
                    "liveness", f"{name}@{NEW} ended {entry.state if entry else 'gone'}"
                                f"{': ' + entry.message if entry and entry.message else ''}"))


def check_agents_alive(fleet: LocalFleet, result: RunResult) -> None:
    """Every agent process the run started last is still running (none exited by itself)."""
    for host in fleet.hosts:
        code = host.process.poll() if host.process is not None else "never started"
        if code is not None:
            try:
                tail = host.log.read_text(errors="replace").strip().splitlines()[-1][:200]
            except (OSError, IndexError):
                tail = ""
            result.violations.append(Violation("agent", f"the agent of {host.name} exited by itself "
                                                        f"(code {code}): {tail}"))


def registered_now(store: Store, fleet: LocalFleet) -> list[str]:
    """Hosts whose running agent is not the one registered in /nodes (not yet back, or stale)."""
    nodes = store.nodes()
    return [h.name for h in fleet.hosts
            if h.name not in nodes or h.process is None or nodes[h.name].pid != h.process.pid]


def check_journals(fleet: LocalFleet, result: RunResult) -> None:
    """No open/in-flight change set; each current/<service> link is what its last done change set
    for that service switched to (journal.blame(link) against os.readlink(link))."""
    for host in fleet.hosts:
        path = host.root / "data" / "state" / "journal.db"
        try:
            journal = Journal.open(path, create=False)
        except ZkdeployError as exc:
            result.violations.append(Violation("journal", f"{host.name}: {exc}"))
            continue
        with journal:
            changes = journal.list_changes()
            for c in changes:
                if c.status in ("open", "undoing"):
                    result.violations.append(Violation(
                        "journal", f"{host.name}: change set {c.id} ({c.description}) left {c.status}"))
                elif c.status in ("failed", "partially-undone"):
                    result.notes.append(f"{host.name}: change set {c.id} ({c.description}) is {c.status}")
            for task in journal.in_flight():
                result.violations.append(Violation(
                    "journal", f"{host.name}: task {task.change_id}.{task.position} ({task.execute.kind}) in flight"))
            for svc in fleet.services:
                link = host.root / "data" / "current" / svc.name
                try:
                    actual = os.readlink(link)
                except OSError as exc:
                    result.violations.append(Violation("journal", f"{host.name}: {link}: {exc}"))
                    continue
                task = journal.blame(link)
                if task is None or task.execute.kind != "symlink_swap":
                    result.violations.append(Violation(
                        "journal", f"{host.name}: no change in effect wrote current/{svc.name} (-> {actual})"))
                    continue
                if task.execute.params.get("target") != actual:
                    result.violations.append(Violation(
                        "journal", f"{host.name}: current/{svc.name} -> {actual}, but change set "
                                   f"{task.change_id} switched it to {task.execute.params.get('target')}"))
                # the newest change set whose swap of this link is in effect: done, or interrupted by a
                # crash and kept by recovery (its tasks done, the set closed as failed with a note)
                last_done = next((c for c in changes if c.status in ("done", "failed")
                                  and c.description.startswith(svc.name + " ")
                                  and any(t.execute.kind == "symlink_swap" and t.status == "done"
                                          and t.execute.params.get("link") == os.path.abspath(link)
                                          for t in c.tasks)), None)
                if last_done is None or last_done.id != task.change_id:
                    result.violations.append(Violation(
                        "journal", f"{host.name}: current/{svc.name} was last switched by change set "
                                   f"{task.change_id}, but the last done change set for {svc.name} is "
                                   f"{last_done.id if last_done else None}"))


# ---------------------------------------------------------------------------------------------
# one run
# ---------------------------------------------------------------------------------------------
class RunLog:
    """Timestamped progress lines, to the run's log file (and to stderr with --verbose)."""

    def __init__(self, path: Path, verbose: bool) -> None:
        self.path = path
        self.verbose = verbose
        self.t0 = time.time()
        self._lock = threading.Lock()

    def say(self, text: str) -> None:
        line = f"[{time.time() - self.t0:7.2f}] {text}"
        with self._lock:
            with open(self.path, "a") as fh:
                fh.write(line + "\n")
        if self.verbose:
            print(line, file=sys.stderr, flush=True)


def write_timeline(samples: list[Sample], fleet: LocalFleet, t0: float, path: Path) -> None:
    """The probed state at every sample where something changed ('-' = not answering)."""
    hosts = [h.name for h in fleet.hosts]
    lines, previous = [], None
    for s in samples:
        row = tuple(s.answers.get((svc.name, h)) or "-" for svc in fleet.services for h in hosts)
        if row != previous:
            parts = [f"{svc.name}[" + " ".join(s.answers.get((svc.name, h)) or "-" for h in hosts) + "]"
                     for svc in fleet.services]
            lines.append(f"{s.at - t0:+8.2f}s {' '.join(parts)}")
            previous = row
    header = f"# hosts: {' '.join(hosts)}; time relative to the deploy command\n"
    path.write_text(header + "\n".join(lines) + "\n")


def _wait(predicate, timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return True
        except ZkdeployError:
            pass
        time.sleep(interval)
    return False


def _deploy(fleet: LocalFleet, *targets: str) -> list[str]:
    out = fleet.cli("deploy", *targets, "--json", timeout=120).stdout
    return [q["name"] for q in json.loads(out)["queued"]]


def snapshot_code(dest: Path) -> Path:
    """Copy the zkdeploy package under ``dest`` and return the directory to put on PYTHONPATH:
    agents started later (after a kill) then run the same code as the first ones, even while
    the working tree is being edited."""
    package = Path(__file__).resolve().parents[1] / "zkdeploy"
    shutil.copytree(package, dest / "zkdeploy", ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def run_once(seed: int, nodes: int = 6, keep: bool = False, verbose: bool = False,
             rollout_timeout: float = 180.0, converge_timeout: float = 90.0,
             base_dir: str | None = None, code: Path | None = None) -> RunResult:
    """One chaos run; everything it starts is stopped before it returns (or raises)."""
    plan = plan_run(seed, nodes)
    result = RunResult(seed=seed, fail_health=plan.fail_health)
    workdir = Path(tempfile.mkdtemp(prefix=f"zkdeploy-chaos-{seed}-", dir=base_dir))
    log = RunLog(workdir / "chaos.log", verbose)
    log.say(f"seed {seed}: plan {json.dumps(asdict(plan))}")
    cluster: ZkCluster | None = None
    fleet: LocalFleet | None = None
    store: Store | None = None
    observer: Observer | None = None
    regs: Registrations | None = None
    injector: Injector | None = None
    try:
        (workdir / "zk").mkdir()
        cluster = ZkCluster(size=3, workdir=str(workdir / "zk"))
        cluster.start()
        log.say(f"ZooKeeper ensemble at {cluster.hosts}")
        fleet = LocalFleet(workdir / "fleet", cluster.hosts, services(), size=nodes, root=ROOT,
                           session_timeout=SESSION_TIMEOUT,
                           env={"PYTHONPATH": str(code)} if code is not None else None)
        fleet.write_configs()
        fleet.cli("services", "apply", str(fleet.catalog_file))
        fleet.start()
        store = Store.connect(cluster.hosts, ROOT, session_timeout=10.0)
        names = {h.name for h in fleet.hosts}
        if not _wait(lambda: all(names <= set(store.current(s.name)) for s in fleet.services), 60):
            dead = [f"{h.name} (code {h.process.poll()})" for h in fleet.hosts if h.process.poll() is not None]
            raise RuntimeError("the agents did not register within 60s"
                               + (f"; exited: {', '.join(dead)}" if dead else ""))
        for svc in fleet.services:
            fleet.cli("stage", svc.name, OLD, str(fleet.payload(svc.name, OLD)))
        install = _deploy(fleet, *(f"{s.name}@{OLD}" for s in fleet.services))
        if not _wait(lambda: all(store.deploy(n).state == DONE for n in install), 120):
            raise RuntimeError(f"installing version {OLD} did not finish: "
                               + ", ".join(f"{n}={store.deploy(n).state}" for n in install))
        log.say(f"version {OLD} installed on {nodes} nodes")

        observer = Observer({(s.name, h.name): h.ports[s.name] for s in fleet.services for h in fleet.hosts})
        observer.start()
        regs = Registrations(store).start()
        _wait(lambda: len(observer.samples) > 5, 10, 0.05)
        for svc in fleet.services:
            bad = plan.fail_health and svc.name == "db"
            fleet.cli("stage", svc.name, NEW, str(fleet.payload(svc.name, NEW, fail_health=bad)))
        injector = Injector(plan, fleet, cluster, store, log)
        t0 = time.time()
        result.t0 = t0
        deploy_names = _deploy(fleet, f"db@{NEW}", f"web@{NEW}")
        injector.start(t0)
        log.say(f"deployed db@{NEW} web@{NEW}: {deploy_names}")
        by_service = dict(zip(("db", "web"), deploy_names))

        def rollout_over() -> bool:
            # over when every entry is closed, or when one is halted: a halted deploy waits for an
            # operator (resume/abort), so nothing more happens by itself
            entries = [store.deploy(n) for n in by_service.values()]
            return (all(e is not None and e.state not in OPEN_DEPLOY_STATES for e in entries)
                    or any(e is not None and e.state == HALTED for e in entries))

        over = _wait(rollout_over, rollout_timeout, 0.1)
        if over:
            result.rollout_seconds = time.time() - t0
            log.say(f"rollout over after {result.rollout_seconds:.1f}s")
        else:
            log.say(f"rollout not over after {rollout_timeout:g}s")
        injector.join(max(0.0, t0 + FAULT_WINDOW[1] + 60.0 - time.time()))

        expected = {"db": OLD if plan.fail_health else NEW, "web": OLD if plan.fail_health else NEW}
        hosts = [h.name for h in fleet.hosts]

        def converged() -> bool:
            if not injector.done() or not observer.samples:
                return False
            last = observer.samples[-1]
            if any(last.answers.get((s, h)) != v for s, v in expected.items() for h in hosts):
                return False
            for s, v in expected.items():
                entries = store.current(s)
                if set(entries) != set(hosts) or any(e.version != v or e.state != ONLINE for e in entries.values()):
                    return False
                if store.slots(s):
                    return False
            return registered_now(store, fleet) == []

        halted_unexpectedly = not plan.fail_health and any(
            (e := store.deploy(n)) is not None and e.state == HALTED for n in by_service.values())
        if halted_unexpectedly:
            log.say("a deploy of a healthy release halted: "
                    + "; ".join(f"{n}: {store.deploy(n).message}" for n in by_service.values()))
            converge_timeout = min(converge_timeout, 10.0)  # the rollout will not finish by itself
        if over and _wait(converged, converge_timeout, 0.25):
            result.converge_seconds = time.time() - t0
            log.say(f"converged {result.converge_seconds:.1f}s after the deploy command")
        elif over:
            log.say(f"not converged {converge_timeout:g}s after the rollout")
        time.sleep(1.0)  # a few more samples of the final state
        observer.stop()
        regs.stop()
        result.faults = sorted(injector.records, key=lambda f: f.started)
        result.samples = len(observer.samples)
        deploys = {s: store.deploy(n) for s, n in by_service.items()}
        result.deploy_states = {s: (e.state if e else "gone") for s, e in deploys.items()}
        if not over:
            result.violations.append(Violation(
                "liveness", f"rollout not over within {rollout_timeout:g}s: "
                + ", ".join(f"{s}={st}" for s, st in result.deploy_states.items())))
        samples = list(observer.samples)
        write_timeline(samples, fleet, t0, workdir / "timeline.txt")
        check_safety(samples, result.faults, fleet, result)
        db_finished = deploys["db"].finished if deploys.get("db") is not None else None
        check_order(samples, result.faults, regs, fleet, db_finished, result)
        check_final(observer, store, fleet, result.faults, expected, deploys, plan.fail_health, result)
        check_journals(fleet, result)
        check_agents_alive(fleet, result)
    except BaseException as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        result.violations.append(Violation("run", f"the run could not complete: {result.error}"))
        if injector is not None:
            result.faults = sorted(injector.records, key=lambda f: f.started)
    finally:
        log.say(f"result: {result.line()}")
        if injector is not None:
            injector.cancel()
        if observer is not None:
            observer.stop()
        if regs is not None:
            regs.stop()
        if fleet is not None:
            for host in fleet.hosts:  # a stopped agent cannot handle SIGTERM
                if host.process and host.process.poll() is None:
                    try:
                        os.kill(host.process.pid, signal.SIGCONT)
                    except ProcessLookupError:
                        pass
            fleet.stop()
        if store is not None:
            store.close()
        if cluster is not None:
            cluster.stop()
        if result.violations and keep:
            (workdir / "result.json").write_text(json.dumps(
                {**asdict(result), "line": result.line()}, indent=2, default=str))
            result.workdir = str(workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return result


def summary(results: list[RunResult]) -> str:
    return f"chaos_runs={len(results)} violations={sum(len(r.violations) for r in results)}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="number of runs (seeds S, S+1, ...)")
    parser.add_argument("--seed", type=int, default=1, help="base seed")
    parser.add_argument("--nodes", type=int, default=6, help="agents in the fleet (at least 6)")
    parser.add_argument("--keep", action="store_true", help="keep the work dirs of failing runs")
    parser.add_argument("--verbose", action="store_true", help="progress of each run on stderr")
    parser.add_argument("--plan", action="store_true", help="print the fault plans and exit")
    parser.add_argument("--snapshot", action="store_true",
                        help="run the agents and the CLI on a copy of zkdeploy/ taken at the start")
    args = parser.parse_args(argv)
    if args.nodes < 6:
        parser.error("--nodes must be at least 6 (db's quorum is 4)")
    seeds = [args.seed + i for i in range(args.runs)]
    if args.plan:
        for seed in seeds:
            print(json.dumps(asdict(plan_run(seed, args.nodes))))
        return 0

    def on_term(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    # the runner's own ZooKeeper client sees the leader kills too; its warnings are noise here
    for name in ("kazoo", "zkdeploy"):
        logging.getLogger(name).setLevel(logging.ERROR)
    results: list[RunResult] = []
    code_dir = Path(tempfile.mkdtemp(prefix="zkdeploy-chaos-code-")) if args.snapshot else None
    try:
        code = snapshot_code(code_dir) if code_dir is not None else None
        for seed in seeds:
            result = run_once(seed, nodes=args.nodes, keep=args.keep, verbose=args.verbose, code=code)
            print(result.line(), flush=True)
            results.append(result)
    except KeyboardInterrupt:
        print(f"interrupted after {len(results)} run(s); everything started was stopped", file=sys.stderr)
        print(summary(results))
        return 1
    finally:
        if code_dir is not None:
            shutil.rmtree(code_dir, ignore_errors=True)
    print(summary(results))
    return 0 if all(not r.violations for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
