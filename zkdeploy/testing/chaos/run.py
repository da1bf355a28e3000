"""Chaos runs: a real rollout under injected faults, judged against DESIGN.md's invariants.

Each run (seed S) starts a 3-server ZooKeeper ensemble on loopback and a LocalFleet of agents
as processes (services ``db``, and ``web`` depending on ``db``), installs version 1, starts an
Observer that probes every service's HTTP port, stages version 2 (in some seeds a ``db`` 2
whose health check fails), deploys ``db@2 web@2`` and, while the rollout runs, injects the
faults planned from ``random.Random(S)`` (:mod:`.plan`, carried out by :mod:`.injector`).
Then it waits (bounded) for the rollout to end and for returned nodes to converge, and checks
safety, order, liveness/convergence and the journals (:mod:`.invariants`; docs/chaos.md says
how each is judged).  One line per run; the last line is ``chaos_runs=N violations=V``; the
exit code is 0 only when V == 0.  ``scripts/chaos.py`` calls :func:`main`.
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
from zkdeploy.model import DONE, HALTED, ONLINE, OPEN_DEPLOY_STATES
from zkdeploy.testing.chaos.artifacts import RunLog, snapshot_code, write_timeline
from zkdeploy.testing.chaos.injector import Injector
from zkdeploy.testing.chaos.invariants import (
    check_agents_alive,
    check_final,
    check_journals,
    check_order,
    check_safety,
    registered_now,
)
from zkdeploy.testing.chaos.plan import FAULT_WINDOW, plan_run
from zkdeploy.testing.chaos.registrations import Registrations
from zkdeploy.testing.chaos.result import RunResult, Violation, summary
from zkdeploy.testing.chaos.scenario import MIN_NODES, NEW, OLD, ROOT, SESSION_TIMEOUT, services
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


def run_once(seed: int, nodes: int = 6, keep: bool = False, verbose: bool = False,
             rollout_timeout: float = 180.0, converge_timeout: float = 90.0,
             base_dir: str | None = None, code: Path | None = None) -> RunResult:
    """One chaos run; everything it starts is stopped before it returns (or raises).

    A failure of the run itself (an exception) becomes a ``run`` violation, except
    KeyboardInterrupt/SystemExit, which propagate after the teardown.  The work directory is
    removed unless ``keep`` and the run has violations (then ``result.workdir`` names it).
    """
    plan = plan_run(seed, nodes)
    result = RunResult(seed=seed, fail_health=plan.fail_health)
    workdir = Path(tempfile.mkdtemp(prefix=f"zkdeploy-chaos-{seed}-", dir=base_dir))
    log = RunLog(workdir / "chaos.log", verbose)
    log.say(f"seed {seed}: plan {plan.to_json()}")
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
        _install_old_version(fleet, store, nodes, log)

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
        by_service = dict(zip(("db", "web"), deploy_names, strict=False))

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
                    + "; ".join(f"{n}: {e.message if (e := store.deploy(n)) else 'gone'}" for n in by_service.values()))
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
        db_entry = deploys.get("db")
        db_finished = db_entry.finished if db_entry is not None else None
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
            print(plan_run(seed, args.nodes).to_json())
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
