#!/usr/bin/env python3
"""Benchmark: requests that fail through a real HAProxy during a rolling deploy, with and without drain.

Three services (web depends on app, app on db) of N demo nodes each (12 by
default), every server behind Debian's HAProxy on loopback (an agent-check
on each agent's port, HTTP health checks), answering GET / after 20-50 ms.
Several clients send bounded load (each one request at a time, spread over
the three frontends) for the whole rolling deploy of all three services
from version 1 to 2.  The same run is made twice, side by side on the same
machine: with the catalog's ``load_balancer:`` (the agent drains each
server and waits for the balancer to report it drained with no session
before stopping it, and puts it back after its health checks), and without
it (the control: the balancer learns of a stopped server only from its
health checks), to show that the measure can fail.

A failed request is any that is refused, reset, timed out or answered with
anything but 200 (HAProxy runs with ``retries 0``).  Target: 0 failed of at
least 50,000 requests with draining; the undrained run shows failures.

Measured with the defaults (12 nodes of each, 2 down at once, 32 clients) on a
2-core machine: with drain 0 of 62,146 requests failed (rollout 79 s), without
131 of 52,727 (112 answered 503, 19 answered 502; rollout 66 s).

Last line: failed_requests=<with drain> total_requests=<n> failed_without_drain=<m>
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zkdeploy.coordination import Store
from zkdeploy.demo.fleet import DemoService, FleetLb, LocalFleet, ServiceTiming
from zkdeploy.demo.load import Load
from zkdeploy.demo.scenario import wait_deploys
from zkdeploy.testing.haproxy import HAProxy
from zkdeploy.testing.zkserver import ZkCluster

SERVICES = ("db", "app", "web")


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.2)


def one_run(zk: str, drain: bool, args: argparse.Namespace) -> dict[str, Any]:
    """Build a fleet behind a fresh HAProxy, install 1, roll to 2 under load; the load's figures."""
    timing = ServiceTiming(start_delay=args.start, stop_delay=args.stop)
    services = [DemoService(name, quorum=args.nodes - args.down, depends_on=(SERVICES[i - 1],) if i else (),
                            timing=timing, health_interval=0.05, response_delay=(0.02, 0.05))
                for i, name in enumerate(SERVICES)]
    root = f"/zero-downtime-{'drain' if drain else 'nodrain'}-{int(time.time())}"
    workdir = Path(tempfile.mkdtemp(prefix="zkdeploy-zd-"))
    lbdir = Path(tempfile.mkdtemp(prefix="zkh-"))  # short: a UNIX socket path holds at most 107 bytes
    proxy = HAProxy(lbdir, [])
    fleet = LocalFleet(workdir, zk, services, size=args.nodes, root=root, session_timeout=6,
                       lb=FleetLb(proxy.socket, agent_interval=0.3, drain_timeout=15, ready_timeout=15,
                                  drain_state="drain" if drain else "none"))
    proxy.backends = fleet.lb_backends()
    store = Store.connect(zk, root)
    try:
        proxy.start()
        fleet.write_configs()
        fleet.cli("services", "apply", str(fleet.catalog_file))
        fleet.start()
        wait_until(lambda: all(len(store.current(s)) == args.nodes for s in SERVICES), 180, "the agents")
        for version in ("1", "2"):
            for name in SERVICES:
                fleet.cli("stage", name, version, str(fleet.payload(name, version)))
            if version == "1":
                out = fleet.cli("deploy", *(f"{s}@1" for s in SERVICES), "--json").stdout
                wait_deploys(store, [q["name"] for q in json.loads(out)["queued"]], 600)
        wait_until(lambda: all(len(store.holders(s, "2")) == args.nodes for s in SERVICES), 300,
                   "every agent to hold version 2")
        wait_until(lambda: all(v.serving for s in SERVICES for v in proxy.backend(s).values()), 60,
                   "HAProxy to send traffic to every server")
        with Load([proxy.port(s) for s in SERVICES], clients=args.clients) as load:
            time.sleep(1.0)
            started = time.monotonic()
            out = fleet.cli("deploy", *(f"{s}@2" for s in SERVICES), "--json").stdout
            wait_deploys(store, [q["name"] for q in json.loads(out)["queued"]], args.timeout)
            seconds = time.monotonic() - started
            time.sleep(1.0)
        at_2 = sum(1 for s in SERVICES for e in store.current(s).values() if e.version == "2")
        return {"drain": drain, "ok": load.ok, "failed": load.failed, "total": load.total,
                "rollout_seconds": round(seconds, 1), "nodes_at_2": at_2, "errors": load.errors()}
    finally:
        fleet.stop()
        proxy.stop()
        try:
            store.delete_tree(root)
        finally:
            store.close()
        shutil.rmtree(lbdir, ignore_errors=True)
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=12, help="nodes per service")
    parser.add_argument("--down", type=int, default=2, help="nodes of a service down at once (quorum = nodes - down)")
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients, one request at a time each")
    parser.add_argument("--start", type=float, default=2.0, help="seconds a service takes to start")
    parser.add_argument("--stop", type=float, default=1.0, help="seconds a service takes to stop")
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds the rollout may take")
    args = parser.parse_args()
    with ZkCluster() as zk:
        runs = [one_run(zk.hosts, drain, args) for drain in (True, False)]
    for run in runs:
        print(f"drain={'on' if run['drain'] else 'off'} rollout_seconds={run['rollout_seconds']} "
              f"requests={run['total']} failed={run['failed']} nodes_at_2={run['nodes_at_2']}/"
              f"{len(SERVICES) * args.nodes}" + (f" errors={run['errors']}" if run["errors"] else ""))
    with_drain, without = runs
    print(f"failed_requests={with_drain['failed']} total_requests={with_drain['total']} "
          f"failed_without_drain={without['failed']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
