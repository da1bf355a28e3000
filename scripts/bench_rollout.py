#!/usr/bin/env python3
"""Benchmark: how close a real rollout comes to the ideal set by its own step times.

12 agents as processes on a private ZooKeeper, two services (web depends on
db), quorums that allow 2 nodes down at once, and a service whose stop and
start take fixed, known times.  The ideal is ceil(N/k) steps per service,
services in sequence.  A step's time is measured side by side in the same
run: k copies of the same service are stopped, started and health-checked
(at the same interval) by this script alone, with no zkdeploy involved, and
the slowest of the k is one step.  That makes the ideal what a perfect
coordinator could reach with this very service on this very machine; the
nominal ideal (configured stop + start delays only) is printed too.  The
measured time runs from the deploy command to the moment the last deploy
entry is done.  Payloads are staged and prefetched first, as an operator
would do.

Last line: rollout_efficiency=<ideal/measured>
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zkdeploy.coordination import Store
from zkdeploy.demo.fleet import SERVER_SOURCE, DemoService, LocalFleet, ServiceTiming
from zkdeploy.demo.scenario import wait_deploys
from zkdeploy.testing.zkserver import ZkCluster, free_port


def measure_step(server: Path, timing: ServiceTiming, health_interval: float, k: int, rounds: int = 3) -> float:
    """Mean over ``rounds`` of the slowest of ``k`` concurrent stop+start+health steps, in seconds."""
    ports = [free_port() for _ in range(k)]

    def launch(port: int) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, str(server), "--service", "bench", "--version", "1",
                                 "--port", str(port), "--start-delay", str(timing.start_delay),
                                 "--stop-delay", str(timing.stop_delay)], start_new_session=True)

    def healthy(port: int) -> None:
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                    return
            except OSError:
                time.sleep(health_interval)

    def step(i: int) -> float:
        t0 = time.monotonic()
        procs[i].terminate()
        procs[i].wait()
        procs[i] = launch(ports[i])
        healthy(ports[i])
        return time.monotonic() - t0

    procs = [launch(p) for p in ports]
    try:
        for p in ports:
            healthy(p)
        with ThreadPoolExecutor(k) as pool:
            worst = [max(pool.map(step, range(k))) for _ in range(rounds)]
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    return statistics.mean(worst)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=12)
    parser.add_argument("--down", type=int, default=2, help="nodes the quorum allows down at once")
    parser.add_argument("--start", type=float, default=2.0, help="seconds a start takes")
    parser.add_argument("--stop", type=float, default=1.0, help="seconds a stop takes")
    parser.add_argument("--health-interval", type=float, default=0.05)
    parser.add_argument("--keep-logs", metavar="DIR", help="copy the agents' logs here afterwards")
    args = parser.parse_args()

    timing = ServiceTiming(start_delay=args.start, stop_delay=args.stop)
    quorum = args.nodes - args.down
    services = [DemoService("db", quorum=quorum, timing=timing, health_interval=args.health_interval),
                DemoService("web", quorum=quorum, depends_on=("db",), timing=timing,
                            health_interval=args.health_interval)]
    with tempfile.TemporaryDirectory(prefix="zkdeploy-bench-") as tmp, ZkCluster() as zk:
        fleet = LocalFleet(Path(tmp), zk.hosts, services, size=args.nodes, root="/bench", session_timeout=6)
        store = Store.connect(zk.hosts, "/bench")
        try:
            fleet.write_configs()
            fleet.cli("services", "apply", str(fleet.catalog_file))
            fleet.start()
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not all(
                    len(store.current(s.name)) == args.nodes for s in services):
                time.sleep(0.2)
            for version in ("1", "2"):
                for svc in services:
                    fleet.cli("stage", svc.name, version, str(fleet.payload(svc.name, version)))
                if version == "1":
                    out = fleet.cli("deploy", "db@1", "web@1", "--json").stdout
                    wait_deploys(store, [q["name"] for q in json.loads(out)["queued"]], 300)
            # wait until every agent holds the verified, unpacked payloads of version 2
            while time.monotonic() < deadline + 120 and not all(
                    len(store.holders(s.name, "2")) == args.nodes for s in services):
                time.sleep(0.2)
            # the same service, stepped by hand, with the fleet idle around it as in the rollout
            step = measure_step(SERVER_SOURCE, timing, args.health_interval, args.down)
            started = time.time()
            out = fleet.cli("deploy", "db@2", "web@2", "--json").stdout
            finished = wait_deploys(store, [q["name"] for q in json.loads(out)["queued"]], 600)
        finally:
            fleet.stop()
            store.close()
            if args.keep_logs:
                for host in fleet.hosts:
                    dest = Path(args.keep_logs) / f"{host.name}.log"
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    dest.write_bytes(host.log.read_bytes())
    measured = finished - started
    steps = math.ceil(args.nodes / args.down)
    nominal_step = args.stop + args.start
    nominal = len(services) * steps * nominal_step
    ideal = len(services) * steps * step
    print(f"nodes={args.nodes} down_at_once={args.down} steps_per_service={steps} services={len(services)}")
    print(f"step_seconds_nominal={nominal_step:.3f} step_seconds_measured={step:.3f}")
    print(f"ideal_seconds={ideal:.2f} nominal_ideal_seconds={nominal:.2f} measured_seconds={measured:.2f}")
    print(f"nominal_efficiency={nominal / measured:.3f}")
    print(f"rollout_efficiency={ideal / measured:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
