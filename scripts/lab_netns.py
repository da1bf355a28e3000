#!/usr/bin/env python3
"""Lab: the demo across network namespaces, every host with an address of its own.

Run as root from the repository, after scripts/setup:  sudo .venv/bin/python scripts/lab_netns.py [--agents 4]

Host 1 is a namespace with a ZooKeeper server on 198.18.0.1:2181, the
payloads' HTTP origin on 198.18.0.1:8000, and the operator's CLI; hosts
2..N+1 are namespaces each running one agent (address 198.18.0.<i>, its
BitTorrent swarm listening there, its services on its own loopback).  The
namespaces share one Linux bridge and nothing else: 198.18.0.0/24 (from the
benchmarking range 198.18.0.0/15), no default route, no address in the root
namespace (zkdeploy/testing/netns.py).

The lab applies the demo catalog (db, then web, which depends on db), rolls
out version 1, then rolls both services from 1 to 2 with the real CLI
(`deploy`, then `rollout status` per deploy) and checks that every node runs
2.  The last line printed is:

    lab_netns: agents=<n> rolled=db,web 1->2 in <s>s nodes_at_2=<k>/<n> swarm_fetches=<f>/<t> cleanup=<ok|...>

Everything it made (namespaces, links, processes, files) is removed on exit,
on failure, on Ctrl-C and on SIGTERM; leftovers of an earlier run are
removed at start.  Exit 0 when the rollout and the cleanup both succeeded.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from zkdeploy.demo.fleet import DemoService, Host, LocalFleet, ServiceTiming  # noqa: E402
from zkdeploy.testing.netns import NetLab  # noqa: E402
from zkdeploy.testing.zkserver import CLASSPATH, MAIN, available  # noqa: E402

PREFIX = "zknl"           # every namespace, link and temp dir of this lab starts with it
ZK = 1                    # host 1: ZooKeeper, the HTTP origin, the operator
ZK_PORT = 2181
HTTP_PORT = 8000
ROOT = "/lab"
SERVICES = [DemoService("db", quorum="75%", timing=ServiceTiming(0.3, 0.2)),
            DemoService("web", quorum="50%", depends_on=("db",), timing=ServiceTiming(0.3, 0.2))]

SRVR = r"""
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1) as s:
    s.sendall(b"srvr")
    sys.exit(0 if b"Mode:" in s.recv(4096) else 1)
"""


class NamespaceFleet(LocalFleet):
    """The demo fleet, each agent in a namespace of the lab and the CLI in host ``ZK``'s."""

    def __init__(self, lab: NetLab, workdir: Path, agents: int) -> None:
        super().__init__(workdir, f"{lab.ip(ZK)}:{ZK_PORT}", SERVICES, size=agents, root=ROOT,
                         session_timeout=6.0, env={"PYTHONPATH": str(REPO)})
        self.lab = lab

    def index(self, host: Host) -> int:
        return self.hosts.index(host) + 2

    def write_configs(self) -> None:
        super().write_configs()
        for host in self.hosts:
            config = yaml.safe_load(host.config.read_text())
            config["address"] = self.lab.ip(self.index(host))    # what its peers dial
            config["swarm"]["allow_multiple_connections_per_ip"] = False  # one address per host here
            config["service_launch"] = {"mode": "direct"}
            host.config.write_text(yaml.safe_dump(config, sort_keys=False))

    def start_agent(self, host: Host, extra_env: dict[str, str] | None = None) -> None:
        argv = self.lab.exec_argv(self.index(host), [sys.executable, "-m", "zkdeploy", "agent",
                                                     "--config", str(host.config)])
        with open(host.log, "ab") as log:
            host.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=host.root,
                                            env={**os.environ, **self.env, **(extra_env or {})},
                                            start_new_session=True)

    def cli(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        argv = self.lab.exec_argv(ZK, [sys.executable, "-m", "zkdeploy", "--zk", self.zk_hosts,
                                       "--root", self.zk_root, *args])
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **self.env}, cwd=self.workdir)
        if check and proc.returncode != 0:
            raise RuntimeError(f"zkdeploy {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc


class Background:
    """A long-running process inside a namespace (ZooKeeper, the HTTP origin)."""

    def __init__(self, lab: NetLab, i: int, argv: list[str], log: Path) -> None:
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(lab.exec_argv(i, argv), stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


def start_zookeeper(lab: NetLab, work: Path) -> Background:
    data = work / "zk" / "data"
    data.mkdir(parents=True)
    config = work / "zk" / "zoo.cfg"
    config.write_text("\n".join([
        "tickTime=500", "initLimit=20", "syncLimit=10", f"dataDir={data}", f"clientPort={ZK_PORT}",
        f"clientPortAddress={lab.ip(ZK)}", "maxClientCnxns=0", "admin.enableServer=false",
        "4lw.commands.whitelist=*", "minSessionTimeout=1000", "maxSessionTimeout=60000"]) + "\n")
    server = Background(lab, ZK, ["java", "-Xmx256m", "-Dzookeeper.admin.enableServer=false",
                                  "-Dzookeeper.4lw.commands.whitelist=*", "-cp", CLASSPATH, MAIN, str(config)],
                        work / "zk" / "server.log")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        probe = subprocess.run(lab.exec_argv(ZK, [sys.executable, "-c", SRVR, lab.ip(ZK), str(ZK_PORT)]),
                               capture_output=True, timeout=10)
        if probe.returncode == 0:
            return server
        if server.proc.poll() is not None:
            break
        time.sleep(0.5)
    server.stop()
    raise RuntimeError("ZooKeeper did not start:\n" + (work / "zk" / "server.log").read_text()[-2000:])


def wait_registered(fleet: NamespaceFleet, timeout: float) -> dict[str, str]:
    """Wait until every agent is registered; the address each registered with."""
    deadline = time.monotonic() + timeout
    names = {h.name for h in fleet.hosts}
    seen: set[str] = set()
    while time.monotonic() < deadline:
        out = fleet.cli("nodes", "--json", check=False)
        if out.returncode == 0:
            rows = {row["node"]: row["address"] for row in json.loads(out.stdout) if row["present"]}
            seen = set(rows)
            if names <= seen:
                return rows
        for host in fleet.hosts:
            if host.process is not None and host.process.poll() is not None:
                raise RuntimeError(f"the agent of {host.name} exited {host.process.returncode}; "
                                   f"see {host.log}:\n{host.log.read_text()[-2000:]}")
        time.sleep(0.5)
    raise RuntimeError(f"agents not registered after {timeout:g}s: {sorted(names - seen)}")


def roll(fleet: NamespaceFleet, version: str, timeout: float) -> float:
    """Stage ``version`` of every service from the HTTP origin, deploy it, and follow each deploy to
    its end; the seconds from the deploy to the last one done."""
    for svc in SERVICES:
        path = fleet.payload(svc.name, version)
        fleet.cli("stage", svc.name, version, f"http://{fleet.lab.ip(ZK)}:{HTTP_PORT}/{path.name}")
    started = time.monotonic()
    queued = json.loads(fleet.cli("deploy", *(f"{s.name}@{version}" for s in SERVICES), "--json").stdout)
    for entry in queued["queued"]:
        fleet.cli("rollout", "status", entry["name"], "--timeout", str(int(timeout)), timeout=timeout + 60)
    return time.monotonic() - started


def run(args: argparse.Namespace, lab: NetLab, work: Path, stoppers: list[Any]) -> dict[str, Any]:
    lab.build(1 + args.agents)
    print(f"lab: {len(lab.hosts)} namespaces {lab.ns(1)}..{lab.ns(len(lab.hosts))} on bridge {lab.bridge}, "
          f"{lab.ip(1)}..{lab.ip(len(lab.hosts))}/24, no default route", flush=True)
    zk = start_zookeeper(lab, work)
    stoppers.append(zk.stop)
    print(f"ZooKeeper on {lab.ip(ZK)}:{ZK_PORT} in {lab.ns(ZK)}", flush=True)
    fleet = NamespaceFleet(lab, work / "fleet", args.agents)
    stoppers.append(fleet.stop)
    fleet.payload_dir.mkdir(parents=True, exist_ok=True)
    origin = Background(lab, ZK, [sys.executable, "-m", "http.server", str(HTTP_PORT), "--bind", lab.ip(ZK),
                                  "--directory", str(fleet.payload_dir)], work / "http.log")
    stoppers.append(origin.stop)
    fleet.write_configs()
    fleet.cli("services", "apply", str(fleet.catalog_file))
    fleet.start()
    registered = wait_registered(fleet, 90)
    print(f"{args.agents} agents registered in ZooKeeper: " + ", ".join(
        f"{name}@{address}" for name, address in sorted(registered.items())), flush=True)
    roll(fleet, "1", args.timeout)
    print("version 1 rolled out", flush=True)
    seconds = roll(fleet, "2", args.timeout)
    at_2 = sum(all((h.root / "data" / "current" / s.name).resolve().name == "2" for s in SERVICES)
               for h in fleet.hosts)
    logs = [h.log.read_text(errors="replace") for h in fleet.hosts]
    swarm = sum(text.count("from the swarm, sha256 verified") for text in logs)
    fetches = swarm + sum(text.count("from origin, sha256 verified") for text in logs)
    print(f"rolled db and web 1 -> 2 in {seconds:.1f}s; {at_2}/{args.agents} nodes run 2 of both", flush=True)
    return {"agents": args.agents, "seconds": seconds, "at_2": at_2, "swarm": swarm, "fetches": fetches}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--agents", type=int, default=4, help="agent hosts (besides the ZooKeeper host)")
    p.add_argument("--timeout", type=float, default=300, help="seconds each rollout may take")
    p.add_argument("--keep-on-failure", action="store_true", help="leave the work directory for a look")
    args = p.parse_args()
    if os.geteuid() != 0:
        print("lab_netns.py needs root (network namespaces)", file=sys.stderr)
        return 2
    if not 2 <= args.agents <= 200:
        print("--agents must be between 2 and 200", file=sys.stderr)
        return 2
    reason = available()
    if reason:
        print(f"cannot start ZooKeeper: {reason}", file=sys.stderr)
        return 2

    def on_signal(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    lab = NetLab(PREFIX)
    for old in Path(tempfile.gettempdir()).glob(f"{PREFIX}-*"):
        shutil.rmtree(old, ignore_errors=True)
    lab.cleanup()
    work = Path(tempfile.mkdtemp(prefix=f"{PREFIX}-"))
    stoppers: list[Any] = []
    result: dict[str, Any] | None = None
    code = 1
    try:
        result = run(args, lab, work, stoppers)
        code = 0 if result["at_2"] == args.agents else 1
    except KeyboardInterrupt:
        print("interrupted; tearing the lab down", file=sys.stderr)
        code = 130
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        print(f"lab failed: {exc}", file=sys.stderr)
        code = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for stop in reversed(stoppers):
            try:
                stop()
            except Exception as exc:  # keep tearing down the rest, and say what failed
                print(f"teardown: {exc}", file=sys.stderr)
        left = lab.cleanup()
        if code != 0 and args.keep_on_failure:
            print(f"work directory kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    cleanup = "ok" if not left else "left:" + ",".join(left)
    if left:
        code = code or 1
    if result is not None:
        print(f"lab_netns: agents={result['agents']} rolled=db,web 1->2 in {result['seconds']:.1f}s "
              f"nodes_at_2={result['at_2']}/{result['agents']} swarm_fetches={result['swarm']}/{result['fetches']} "
              f"cleanup={cleanup}")
    else:
        print(f"lab_netns: failed (exit {code}) cleanup={cleanup}")
    return code


if __name__ == "__main__":
    sys.exit(main())
