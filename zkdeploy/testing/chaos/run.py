"""Chaos runs: a real rollout under injected faults, judged against DESIGN.md's invariants.

Each run (seed S) starts a 3-server ZooKeeper ensemble on loopback and a fleet of agents as
processes, each reaching ZooKeeper through its own proxies (:mod:`.links`), with the services of
its scenario (``basic``: ``db``, and ``web`` depending on ``db``; ``chain``: ``db`` <- ``app`` <-
``web`` with percentage quorums), installs version 1, starts an Observer that probes every
service's HTTP port and a watch of the lock tree, stages version 2 (in some seeds a ``db`` 2
whose health check fails), deploys every service at 2 and, while the rollout runs, injects the
faults planned from ``random.Random(S)`` (:mod:`.plan`, carried out by :mod:`.injector`).
Then it waits (bounded) for the faults to stop, the deploys to settle and the nodes to converge,
and checks safety, order, liveness/convergence, failed releases, locks and the journals
(:mod:`.invariants`; docs/chaos.md says how each is judged).  One line per run; the last line
is ``chaos_runs=N violations=V``; the exit code is 0 only when V == 0.  ``scripts/chaos.py`` calls :func:`main`.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path
from typing import Any

from zkdeploy.coordination import Store
from zkdeploy.demo.fleet import LocalFleet
from zkdeploy.demo.observer import Observer
from zkdeploy.errors import ZkdeployError
from zkdeploy.model import DONE, HALTED, ONLINE, DeployEntry
from zkdeploy.testing.chaos.artifacts import RunLog, snapshot_code, write_timeline
from zkdeploy.testing.chaos.injector import Injector
from zkdeploy.testing.chaos.invariants import (
    ANY,
    check_agents_alive,
    check_failed_releases,
    check_final,
    check_journals,
    check_locks,
    check_order,
    check_safety,
    expectations,
    registered_now,
    settled,
)
from zkdeploy.testing.chaos.links import ProxiedFleet
from zkdeploy.testing.chaos.locks import LocksWatch
from zkdeploy.testing.chaos.plan import FAULT_WINDOW, plan_run
from zkdeploy.testing.chaos.registrations import Registrations
from zkdeploy.testing.chaos.result import RunResult, Violation, summary
from zkdeploy.testing.chaos.scenario import (
    DEFAULT_SCENARIO,
    FAILING_SERVICE,
    MIN_NODES,
    NEW,
    OLD,
    ROOT,
    SCENARIOS,
    SESSION_TIMEOUT,
    Scenario,
)
from zkdeploy.testing.zkserver import ZkCluster


def _wait(predicate: Callable[[], bool], timeout: float, interval: float = 0.2) -> bool:
    """Poll ``predicate`` until it holds (True) or ``timeout`` passes (False); a ZkdeployError
    raised by it counts as "not yet"."""
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


def _deploy_state(store: Store, name: str) -> str:
    """The state of deploy ``name``, or "gone" when its entry no longer exists."""
    entry = store.deploy(name)
    return entry.state if entry is not None else "gone"


def _stop_fleet(fleet: LocalFleet) -> None:
    """Continue every stopped agent (a stopped agent cannot handle SIGTERM), then stop the fleet."""
    for host in fleet.hosts:
        if host.process and host.process.poll() is None:
            try:
                host.process.send_signal(signal.SIGCONT)
            except ProcessLookupError:
                pass
    fleet.stop()


def _install_old_version(fleet: LocalFleet, store: Store, nodes: int, log: RunLog) -> None:
    """Wait for every agent to register, then stage and deploy version OLD of every service."""
    names = {h.name for h in fleet.hosts}
    if not _wait(lambda: all(names <= set(store.current(s.name)) for s in fleet.services), 60):
        dead = [f"{h.name} (code {code})" for h in fleet.hosts
                if h.process is not None and (code := h.process.poll()) is not None]
        raise RuntimeError("the agents did not register within 60s"
                           + (f"; exited: {', '.join(dead)}" if dead else ""))
    for svc in fleet.services:
        fleet.cli("stage", svc.name, OLD, str(fleet.payload(svc.name, OLD)))
    install = _deploy(fleet, *(f"{s.name}@{OLD}" for s in fleet.services))
    if not _wait(lambda: all(_deploy_state(store, n) == DONE for n in install), 120):
        raise RuntimeError(f"installing version {OLD} did not finish: "
                           + ", ".join(f"{n}={_deploy_state(store, n)}" for n in install))
    log.say(f"version {OLD} installed on {nodes} nodes")


def _run_entries(store: Store, first: str) -> dict[str, list[DeployEntry]]:
    """The deploy entries queued since the run's deploy command (``first`` on), by service, in
    queue order: the rollout's own, and the rollbacks queued during the run."""
    out: dict[str, list[DeployEntry]] = {}
    for entry in sorted(store.deploys(), key=lambda e: e.name):
        if entry.name >= first:
            out.setdefault(entry.service, []).append(entry)
    return out


def run_once(seed: int, nodes: int = 6, keep: bool = False, verbose: bool = False,
             rollout_timeout: float = 180.0, converge_timeout: float = 90.0,
             base_dir: str | None = None, code: Path | None = None,
             scenario: str = DEFAULT_SCENARIO) -> RunResult:
    """One chaos run; everything it starts is stopped before it returns (or raises).

    A failure of the run itself (an exception) becomes a ``run`` violation, except
    KeyboardInterrupt/SystemExit, which propagate after the teardown.  The work directory is
    removed unless ``keep`` and the run has violations (then ``result.workdir`` names it).
    """
    plan = plan_run(seed, nodes, scenario=scenario)
    chosen: Scenario = SCENARIOS[scenario]
    result = RunResult(seed=seed, fail_health=plan.fail_health, scenario=scenario)
    workdir = Path(tempfile.mkdtemp(prefix=f"zkdeploy-chaos-{seed}-", dir=base_dir))
    log = RunLog(workdir / "chaos.log", verbose)
    log.say(f"seed {seed}: plan {plan.to_json()}")
    cluster: ZkCluster | None = None
    fleet: LocalFleet | None = None
    store: Store | None = None
    observer: Observer | None = None
    regs: Registrations | None = None
    locks: LocksWatch | None = None
    injector: Injector | None = None
    try:
        (workdir / "zk").mkdir()
        cluster = ZkCluster(size=3, workdir=str(workdir / "zk"))
        cluster.start()
        log.say(f"ZooKeeper ensemble at {cluster.hosts}")
        fleet = ProxiedFleet(workdir / "fleet", cluster.hosts, chosen.services(), size=nodes, root=ROOT,
                             session_timeout=SESSION_TIMEOUT,
                             env={"PYTHONPATH": str(code)} if code is not None else None)
        fleet.write_configs()
        fleet.cli("services", "apply", str(fleet.catalog_file))
        fleet.start()
        store = Store.connect(cluster.hosts, ROOT, session_timeout=10.0)
        _install_old_version(fleet, store, nodes, log)

        observer = Observer({(s.name, h.name): h.ports[s.name] for s in fleet.services for h in fleet.hosts})
        observer.start()
        regs = Registrations(store).start()
        locks = LocksWatch(store, chosen.names).start()
        _wait(lambda: len(observer.samples) > 5, 10, 0.05)
        for svc in fleet.services:
            bad = plan.fail_health and svc.name == FAILING_SERVICE
            fleet.cli("stage", svc.name, NEW, str(fleet.payload(svc.name, NEW, fail_health=bad)))
        injector = Injector(plan, fleet, cluster, store, log, links=fleet.links)
        t0 = time.time()
        result.t0 = t0
        deploy_names = _deploy(fleet, *(f"{name}@{NEW}" for name in chosen.names))
        injector.start(t0)
        log.say(f"deployed {' '.join(f'{n}@{NEW}' for n in chosen.names)}: {deploy_names}")
        first = min(deploy_names)

        # over when no deploy of the run can move by itself: every entry closed, or halted (it waits
        # for an operator's resume or abort), or queued behind a halted one
        over = _wait(lambda: settled([e for es in _run_entries(store, first).values() for e in es]),
                     rollout_timeout, 0.1)
        injector.join(max(0.0, t0 + FAULT_WINDOW[1] + 90.0 - time.time()))
        # a fault may have queued a rollback or resumed a deploy: settle again once the faults stopped
        over = _wait(lambda: settled([e for es in _run_entries(store, first).values() for e in es]),
                     max(10.0, t0 + rollout_timeout - time.time()), 0.1)
        if over:
            result.rollout_seconds = time.time() - t0
            log.say(f"rollout over after {result.rollout_seconds:.1f}s")
        else:
            log.say(f"rollout not over after {rollout_timeout:g}s")

        hosts = [h.name for h in fleet.hosts]
        run_entries = _run_entries(store, first)
        expected = expectations(chosen, run_entries, injector.records, hosts, plan.fail_health)

        def converged() -> bool:
            if not injector.done() or not observer.samples:
                return False
            last = observer.samples[-1]
            for (s, h), versions in expected.items():
                if versions is not ANY and last.answers.get((s, h)) not in versions:
                    return False
            for s in chosen.names:
                entries = store.current(s)
                if set(entries) != set(hosts):
                    return False
                if any(expected[(s, n)] is not ANY and (e.version != last.answers.get((s, n)) or e.state != ONLINE)
                       for n, e in entries.items()):
                    return False
                if store.slots(s) or store.queue(s):
                    return False
            return registered_now(store, fleet) == []

        halted = [e for es in run_entries.values() for e in es if e.state == HALTED]
        if halted and not plan.fail_health:
            log.say("halted: " + "; ".join(f"{e.name} {e.service}@{e.version}: {e.message}" for e in halted))
            converge_timeout = min(converge_timeout, 20.0)  # the halted rollout waits for an operator
        since: list[float] = []

        def steadily_converged() -> bool:
            """Converged, and still so 3 s later: a node that just came back may start converging
            (its own restart) an instant after the fleet first looks settled."""
            if not converged():
                since.clear()
                return False
            if not since:
                since.append(time.monotonic())
            return time.monotonic() - since[0] >= 3.0

        if over and _wait(steadily_converged, converge_timeout, 0.25):
            result.converge_seconds = time.time() - t0
            log.say(f"converged {result.converge_seconds:.1f}s after the deploy command")
        elif over:
            log.say(f"not converged {converge_timeout:g}s after the rollout")
        time.sleep(1.0)  # a few more samples of the final state
        observer.stop()
        regs.stop()
        locks.stop()
        result.faults = sorted(injector.records, key=lambda f: f.started)
        result.samples = len(observer.samples)
        run_entries = _run_entries(store, first)
        result.deploy_states = {e.name: f"{e.service}@{e.version} {e.state}"
                                for es in run_entries.values() for e in es}
        if not over:
            result.violations.append(Violation(
                "liveness", f"rollout not settled within {rollout_timeout:g}s: "
                + ", ".join(f"{n}={st}" for n, st in result.deploy_states.items())))
        samples = list(observer.samples)
        write_timeline(samples, fleet, t0, workdir / "timeline.txt")
        expected = expectations(chosen, run_entries, result.faults, hosts, plan.fail_health)
        check_safety(samples, result.faults, fleet, result)
        check_order(samples, result.faults, regs, fleet, chosen, run_entries, result)
        check_final(observer, store, fleet, result.faults, expected, run_entries, plan.fail_health, result)
        check_failed_releases(samples, run_entries, fleet, plan.fail_health, result)
        check_locks(locks.polls, result.faults, hosts, SESSION_TIMEOUT, result)
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
        # callbacks run last-in first-out, each even when one before it raised: faults first,
        # then the watchers, the agents and their services, the client, ZooKeeper, the work dir
        with ExitStack() as teardown:
            teardown.callback(_keep_or_remove, workdir, result, keep)
            if cluster is not None:
                teardown.callback(cluster.stop)
            if store is not None:
                teardown.callback(store.close)
            if fleet is not None:
                teardown.callback(_stop_fleet, fleet)
            if regs is not None:
                teardown.callback(regs.stop)
            if locks is not None:
                teardown.callback(locks.stop)
            if observer is not None:
                teardown.callback(observer.stop)
            if injector is not None:
                teardown.callback(injector.cancel)
    return result


def _keep_or_remove(workdir: Path, result: RunResult, keep: bool) -> None:
    """Keep a failing run's work dir (with result.json) when asked to; remove it otherwise."""
    if result.violations and keep:
        (workdir / "result.json").write_text(json.dumps(
            {**asdict(result), "line": result.line()}, indent=2, default=str))
        result.workdir = str(workdir)
    else:
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """The chaos CLI (``scripts/chaos.py``): run seeds S, S+1, ... and print one line each, then
    ``chaos_runs=N violations=V``; returns the exit code (0 only without violations)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="number of runs (seeds S, S+1, ...)")
    parser.add_argument("--seed", type=int, default=1, help="base seed")
    parser.add_argument("--nodes", type=int, default=6, help="agents in the fleet (at least 6)")
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), default=DEFAULT_SCENARIO,
                        help="basic: db <- web; chain: db <- app <- web, percentage quorums")
    parser.add_argument("--keep", action="store_true", help="keep the work dirs of failing runs")
    parser.add_argument("--verbose", action="store_true", help="progress of each run on stderr")
    parser.add_argument("--plan", action="store_true", help="print the fault plans and exit")
    parser.add_argument("--snapshot", action="store_true",
                        help="run the agents and the CLI on a copy of zkdeploy/ taken at the start")
    args = parser.parse_args(argv)
    if args.nodes < MIN_NODES:
        parser.error(f"--nodes must be at least {MIN_NODES} (db's quorum is 4)")
    seeds = [args.seed + i for i in range(args.runs)]
    if args.plan:
        for seed in seeds:
            print(plan_run(seed, args.nodes, scenario=args.scenario).to_json())
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
            result = run_once(seed, nodes=args.nodes, keep=args.keep, verbose=args.verbose, code=code,
                              scenario=args.scenario)
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
