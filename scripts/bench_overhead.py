#!/usr/bin/env python3
"""Benchmark: zkdeploy's own cost per restart slot, with a service that costs (almost) nothing.

12 real agents (zkdeploy.testing.simagents: the agent's code with a
simulated service behind the host seam, each agent with its own ZooKeeper
session and its own loop) in a few processes, on a private ZooKeeper; two
services, web depending on db, quorum N-k (k = 2 down at once); stop, start
and health check take ``--step`` seconds in all (default 0: instant).  The
journal is durable (fsynced) as in the daemon.  Payloads are staged and
fetched before the clock starts; the clock runs from queueing the deploy to
both entries done.

Printed side by side from the same run:
- overhead per slot: (wall - the service's own step time) / restarts, and per
  sequential step ((wall - step time) / (services x ceil(N/k)));
- hand-off latency: a node back online -> the next drain of the same service,
  median and p95 (and the hand-off between the two services);
- watch delivery: a write -> the watch it fires arriving at another agent;
- one agent's cycles during the rollout: how many, how long, which requests;
- the rollout efficiency of scripts/bench_rollout.py (unless --no-rollout).

Last line: overhead_ms_per_slot=<o> handoff_p50_ms=<m> handoff_p95_ms=<p> rollout_efficiency=<e>
"""

from __future__ import annotations

import argparse
import math
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zkdeploy.demo.scenario import wait_deploys
from zkdeploy.model import ONLINE
from zkdeploy.testing.simagents import AgentProcesses, GroupSpec, Operator, merge, split
from zkdeploy.testing.zkserver import ZkCluster


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def handoffs(report: dict[str, Any], services: list[str], k: int) -> tuple[list[float], list[float]]:
    """(within a service, between services): a node's /current entry going online -> the next drain
    (pre_stop) of the same service on another node; and the last node of a service online -> the
    first drain of the service after it."""
    drains: dict[str, list[tuple[float, str]]] = defaultdict(list)
    for when, node, service, step in report["timeline"]:
        if step == "pre_stop":
            drains[service].append((when, node))
    onlines: dict[str, list[tuple[float, str]]] = defaultdict(list)
    for when, node, service, state in report["transitions"]:
        if state == ONLINE:
            onlines[service].append((when, node))
    within, between = [], []
    for i, service in enumerate(services):
        ds = sorted(drains[service])
        for when, node in ds[k:]:
            before = [t for t, n in onlines[service] if t <= when and n != node and t >= ds[0][0]]
            if before:
                within.append(when - max(before))
        if i > 0 and ds and onlines[services[i - 1]]:
            between.append(ds[0][0] - max(t for t, _ in onlines[services[i - 1]]))
    return within, between


def in_restart(report: dict[str, Any]) -> list[float]:
    """For each restart, its drain (pre_stop) -> its /current entry online on the same node."""
    out = []
    for when, node, service, step in report["timeline"]:
        if step == "pre_stop":
            after = [t for t, n, s, state in report["transitions"]
                     if n == node and s == service and state == ONLINE and t > when]
            if after:
                out.append(min(after) - when)
    return out


def watch_delivery(report: dict[str, Any]) -> list[float]:
    """For each notification an agent received, the time since the write that caused it began
    (the latest write on that path, or under it for a child watch, by another node's session)."""
    writes = sorted((started, ended, kind, path) for started, ended, _node, kind, path in report["calls"]
                    if kind in ("set", "create", "delete", "commit"))
    out = []
    for when, _node, kind, path in report["notes"]:
        best = None
        for started, _ended, _wkind, wpath in reversed(writes):
            if started > when:
                continue
            if wpath == path or (kind == "child" and wpath.rsplit("/", 1)[0] == path):
                best = started
                break
            if when - started > 2.0:
                break
        if best is not None:
            out.append(when - best)
    return out


def run_rollout_bench() -> float | None:
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("bench_rollout.py"))],
                          capture_output=True, text=True, timeout=1200)
    match = re.search(r"rollout_efficiency=([0-9.]+)", proc.stdout)
    if proc.returncode != 0 or match is None:
        print(f"bench_rollout.py failed ({proc.returncode}): {proc.stdout[-500:]} {proc.stderr[-1500:]}")
        return None
    return float(match.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=12)
    parser.add_argument("--down", type=int, default=2, help="nodes the quorum allows down at once")
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--step", type=float, default=0.0, help="seconds of stop+start+health per restart")
    parser.add_argument("--cycle-interval", type=float, default=2.0, help="the agents' cycle_interval")
    parser.add_argument("--profile-out", metavar="FILE", help="write the profiled agent's cProfile table here")
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of idle fleet measured afterwards")
    parser.add_argument("--no-rollout", action="store_true", help="do not run scripts/bench_rollout.py beside")
    args = parser.parse_args()

    services = ["db", "web"]
    k = args.down
    quorum = args.nodes - k
    catalog = {"services": {"db": {"quorum": quorum, "start": "run db"},
                            "web": {"quorum": quorum, "start": "run web", "depends_on": ["db"]}}}
    nodes = [f"n{i:02d}" for i in range(1, args.nodes + 1)]
    profiled = nodes[len(nodes) // 2]
    durations = {"stop": args.step * 0.3, "start": args.step * 0.5, "health": args.step * 0.2} if args.step else {}
    root = "/bench"
    with tempfile.TemporaryDirectory(prefix="zkdeploy-overhead-") as tmp, ZkCluster() as zk:
        operator = Operator(zk.hosts, root)
        operator.put_catalog(catalog)
        for service in services:
            operator.stage(service, "1", at=1.0)
        specs = [GroupSpec(zk.hosts, root, group, services, tmp, {s: "1" for s in services}, durations,
                           cycle_interval=args.cycle_interval, monitor_interval=args.cycle_interval,
                           durable_journal=True, profile=profiled if profiled in group else None, trace=True)
                 for group in split(nodes, args.processes)]
        fleet = AgentProcesses(specs)
        try:
            fleet.call("start")
            operator.wait(lambda: all(sum(e.state == ONLINE for e in operator.store.current(s).values())
                                      == args.nodes for s in services), 120, why="every node online")
            for service in services:
                operator.stage(service, "2")
            operator.wait(lambda: all(len(operator.store.holders(s, "2")) == args.nodes for s in services), 120,
                          why="every node holding version 2")
            time.sleep(1.0)  # let the fleet settle after the fetches
            fleet.call("mark")
            started = time.time()
            names = operator.deploy(*((s, "2") for s in services))
            finished = wait_deploys(operator.store, names, 600)
            time.sleep(0.5)
            report = merge(fleet.call("report"))
            fleet.call("mark")
            time.sleep(args.idle)
            idle = merge(fleet.call("report"))
        finally:
            fleet.stop()
            operator.close()
    wall = finished - started
    restarts = args.nodes * len(services)
    steps = len(services) * math.ceil(args.nodes / k)
    step_time = sum(durations.values())
    ideal = steps * step_time
    within, between = handoffs(report, services, k)
    delivery = watch_delivery(report)
    restart_times = in_restart(report)
    polls = [p[2] for p in report["polls"]]
    granted = [p[2] for p in report["polls"] if p[3]]

    # the profiled agent's cycles during the rollout
    log = report["cycle_log"]
    per_cycle: Counter[str] = Counter()
    for c in log:
        per_cycle.update(c["requests"])
    counts = report["counts"]
    per_node_requests = statistics.mean(sum(c["requests"].values()) for c in counts.values())
    per_node_notes = statistics.mean(c["notifications"] for c in counts.values())
    zk_seconds = statistics.mean(sum(c["seconds"].values()) for c in counts.values())
    paths = Counter(report["paths"][profiled])

    overhead_slot = (wall - ideal) / restarts
    overhead_step = (wall - ideal) / steps
    print(f"nodes={args.nodes} services={len(services)} down_at_once={k} restarts={restarts} "
          f"sequential_steps={steps} processes={args.processes} cycle_interval={args.cycle_interval}")
    print(f"wall_seconds={wall:.3f} service_step_seconds={step_time:.3f} ideal_seconds={ideal:.3f}")
    print(f"overhead_ms_per_slot={overhead_slot * 1000:.1f} (per restart)  "
          f"overhead_ms_per_step={overhead_step * 1000:.1f} (per sequential step of k restarts)")
    print(f"handoff_ms median={statistics.median(within) * 1000:.1f} p95={pct(within, 0.95) * 1000:.1f} "
          f"max={max(within) * 1000:.1f} n={len(within)}; between services: "
          + ", ".join(f"{b * 1000:.1f}" for b in between))
    print(f"restart_ms (drain -> online on the same node) median={statistics.median(restart_times) * 1000:.1f} "
          f"p95={pct(restart_times, 0.95) * 1000:.1f} (service steps {step_time * 1000:.0f} ms)")
    if delivery:
        print(f"watch_delivery_ms median={statistics.median(delivery) * 1000:.1f} "
              f"p95={pct(delivery, 0.95) * 1000:.1f} n={len(delivery)}")
    print(f"slot_poll_ms median={statistics.median(polls) * 1000:.1f} p95={pct(polls, 0.95) * 1000:.1f} "
          f"n={len(polls)}; granted polls median={statistics.median(granted) * 1000:.1f} ms")
    print(f"per node per rollout: zk_requests={per_node_requests:.0f} notifications={per_node_notes:.0f} "
          f"seconds_waiting_on_zk={zk_seconds:.2f}")
    if log:
        secs = [c["seconds"] for c in log]
        print(f"agent {profiled}: cycles={len(log)} cycle_ms median={statistics.median(secs) * 1000:.1f} "
              f"p95={pct(secs, 0.95) * 1000:.1f}; requests per cycle (mean): "
              + " ".join(f"{k}={v / len(log):.1f}" for k, v in per_cycle.most_common()))
        for c in log:
            print(f"  cycle at +{(c['at'] - c['seconds'] - started) * 1000:7.1f} ms: {c['seconds'] * 1000:6.1f} ms, "
                  f"{c['zk_seconds'] * 1000:6.1f} ms waiting on ZooKeeper, "
                  + " ".join(f"{k}={v}" for k, v in sorted(c["requests"].items())))
    breakdown = report["breakdown"]
    if "total" in breakdown:
        total = breakdown["total"][0]
        print(f"agent {profiled}: where its cycles' {total * 1000:.0f} ms went (cProfile, wall clock):")
        for share, (seconds, calls) in breakdown.items():
            if share != "total":
                print(f"  {seconds * 1000:7.1f} ms  {seconds / total:5.1%}  {share} ({calls} calls)")
    print(f"agent {profiled}: requests during the rollout by kind and path:")
    for key, n in paths.most_common(25):
        print(f"  {n:5d}  {key}")
    idle_requests = statistics.mean(sum(c["requests"].values()) for c in idle["counts"].values())
    idle_cycles = statistics.mean(len(c) for c in idle["cycles"].values())
    print(f"idle fleet for {args.idle:g}s: per node {idle_requests / args.idle:.2f} requests/s, "
          f"{idle_cycles / args.idle:.2f} cycles/s, "
          f"{idle_requests / max(1.0, sum(len(c) for c in idle['cycles'].values()) / len(idle['cycles'])):.1f} "
          f"requests per idle cycle (monitor and reports threads included); by kind: "
          + " ".join(f"{k}={v}" for k, v in Counter(idle["paths"][profiled]).most_common(12)))
    if args.profile_out:
        Path(args.profile_out).write_text(report["profile"])
        print(f"profile of {profiled}'s cycle thread written to {args.profile_out}")
    efficiency = None if args.no_rollout else run_rollout_bench()
    eff = f"{efficiency:.3f}" if efficiency is not None else "nan"
    print(f"bench_rollout rollout_efficiency={eff} (3 s steps, agents as processes, real HTTP service)")
    print(f"overhead_ms_per_slot={overhead_slot * 1000:.1f} handoff_p50_ms={statistics.median(within) * 1000:.1f} "
          f"handoff_p95_ms={pct(within, 0.95) * 1000:.1f} rollout_efficiency={eff}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
