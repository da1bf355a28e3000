#!/usr/bin/env python3
"""Benchmark: what one idle agent costs its host, with the payload swarm enabled and disabled.

Two real agent daemons (``python -m zkdeploy agent``) on a private ZooKeeper,
side by side in the same run: node01 with the swarm enabled (the default),
node02 with ``swarm: {enabled: false}``.  Both run the demo service, which
is deployed once (so each holds a release, and node01's swarm worker seeds
it).  Right after the deploy node01's agent and its swarm worker process are
measured while the worker still runs; then both agents sit idle (``--settle``
covers the default ``swarm.idle_stop`` of 60 s, after which node01's worker
stops) and are measured over the same ``--seconds``: resident memory (VmRSS
of the agent process plus its swarm worker if one runs, its service not
included) at the end, and CPU (user + system time of the same processes)
over the window as a share of one core.  For scale, the resident memory of a
bare interpreter and of the agent's imports is printed beside them.

Last line: agent_rss_mb=<m> agent_cpu_pct=<c> (the swarm-enabled agent, the default)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zkdeploy.coordination import Store
from zkdeploy.demo.fleet import DemoService, LocalFleet
from zkdeploy.demo.scenario import wait_deploys
from zkdeploy.testing.zkserver import ZkCluster

TICKS = os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def swarm_workers(pid: int) -> list[int]:
    """The swarm worker processes among ``pid``'s children (not its services)."""
    out = []
    children = {c for task in Path(f"/proc/{pid}/task").iterdir()  # each thread's children (any may spawn)
                for c in (task / "children").read_text().split()}
    for child in sorted(children):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except FileNotFoundError:
            continue
        if b"zkdeploy.transfer.worker" in cmdline:
            out.append(int(child))
    return out


def agent_processes(pid: int) -> list[int]:
    """The agent and its swarm worker, if one runs."""
    return [pid, *swarm_workers(pid)]


def import_rss(code: str) -> float:
    """Resident memory of a fresh interpreter after running ``code``."""
    proc = subprocess.Popen([sys.executable, "-c", code + "\nimport sys, time\nprint('ready', flush=True)\n"
                             "time.sleep(30)"], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        proc.stdout.readline()
        return rss_mb(proc.pid)
    finally:
        proc.kill()
        proc.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0, help="idle window measured")
    parser.add_argument("--settle", type=float, default=75.0,
                        help="idle seconds before the window (the default swarm.idle_stop is 60 s)")
    args = parser.parse_args()
    services = [DemoService("app", quorum=1)]
    with tempfile.TemporaryDirectory(prefix="zkdeploy-footprint-") as tmp, ZkCluster() as zk:
        fleet = LocalFleet(Path(tmp), zk.hosts, services, size=2, root="/footprint", session_timeout=10)
        fleet.hosts[1].swarm_settings = {"enabled": False}
        store = Store.connect(zk.hosts, "/footprint")
        try:
            fleet.write_configs()
            for host in fleet.hosts:  # the daemon's default intervals, not the demo fleet's 1 s
                config = yaml.safe_load(host.config.read_text())
                config.pop("cycle_interval", None)
                config.pop("monitor_interval", None)
                host.config.write_text(yaml.safe_dump(config, sort_keys=False))
            fleet.cli("services", "apply", str(fleet.catalog_file))
            for host in fleet.hosts:
                fleet.start_agent(host)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and len(store.current("app")) < 2:
                time.sleep(0.2)
            fleet.cli("stage", "app", "1", str(fleet.payload("app", "1")))
            out = fleet.cli("deploy", "app@1", "--json").stdout
            wait_deploys(store, [q["name"] for q in json.loads(out)["queued"]], 300)
            pids = {h.name: h.process.pid for h in fleet.hosts if h.process is not None}
            busy = {"agent": rss_mb(pids["node01"]),
                    "workers": sum(rss_mb(w) for w in swarm_workers(pids["node01"])),
                    "count": len(swarm_workers(pids["node01"]))}
            time.sleep(args.settle)
            procs = {n: agent_processes(p) for n, p in pids.items()}
            before = {n: sum(cpu_seconds(p) for p in ps) for n, ps in procs.items()}
            started = time.monotonic()
            time.sleep(args.seconds)
            elapsed = time.monotonic() - started
            procs = {n: [p for p in ps if Path(f"/proc/{p}").exists()] for n, ps in procs.items()}
            cpu = {n: (sum(cpu_seconds(p) for p in ps) - before[n]) / elapsed * 100 for n, ps in procs.items()}
            rss = {n: sum(rss_mb(p) for p in agent_processes(pids[n])) for n in pids}
            workers = {n: len(swarm_workers(pids[n])) for n in pids}
            nthreads = {n: threads(p) for n, p in pids.items()}
        finally:
            fleet.stop()
            store.close()
    bare = import_rss("pass")
    imports = {
        "kazoo": import_rss("import kazoo.client"),
        "pydantic": import_rss("import pydantic"),
        "the config models (zkdeploy.config.schema)": import_rss("import zkdeploy.config.schema"),
        "the agent's modules (zkdeploy.agent.daemon; libtorrent only with the swarm)": import_rss(
            "import zkdeploy.agent.daemon"),
        "libtorrent (only in the swarm worker)": import_rss("import libtorrent"),
        "the swarm worker (zkdeploy.transfer.worker)": import_rss("import zkdeploy.transfer.worker"),
        "the CLI entry point (zkdeploy.cli.main)": import_rss("import zkdeploy.cli.main"),
    }
    print(f"idle window {args.seconds:g}s after a deploy and {args.settle:g}s settling; the daemon's default "
          "cycle_interval and monitor_interval")
    print(f"right after the deploy, node01 (swarm enabled) {busy['agent']:.1f} MB RSS plus "
          f"{busy['count']} running swarm worker(s) {busy['workers']:.1f} MB")
    print(f"{'agent (idle)':<34}{'RSS MB':>10}{'CPU % of a core':>18}{'threads':>10}{'swarm workers':>15}")
    for name, label in (("node01", "swarm enabled (default)"), ("node02", "swarm disabled")):
        print(f"{label:<34}{rss[name]:>10.1f}{cpu[name]:>18.2f}{nthreads[name]:>10}{workers[name]:>15}")
    print(f"bare interpreter: {bare:.1f} MB RSS; after importing (each alone):")
    for what, mb in imports.items():
        print(f"  {mb:6.1f} MB  {what}")
    print(f"agent_rss_mb={rss['node01']:.1f} agent_cpu_pct={cpu['node01']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
