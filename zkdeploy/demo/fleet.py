"""A fleet of agents on one machine, each in its own directory standing for a host.

Used by ``zkdeploy demo``, the end-to-end tests and the benchmark.  Agents
run as separate processes (``python -m zkdeploy agent``); their services are
the tiny HTTP server of ``payload_server.py``, shipped inside real payload
archives.  ``stop()`` ends the agents and the services they started.

With ``lb=FleetLb(socket)`` every host's agent answers HAProxy's agent-check
on a port of its own and every service sits behind the balancer
(``load_balancer:`` in the catalog); ``lb_backends()`` gives the backends to
start zkdeploy.testing.haproxy.HAProxy with.  Agents and the CLI run from
the fleet's own directories: ``python -m`` puts the working directory ahead
of PYTHONPATH, so a copy of the code on PYTHONPATH is what runs.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from zkdeploy.testing.haproxy import Backend, Server
from zkdeploy.testing.zkserver import free_port

SERVER_SOURCE = Path(__file__).with_name("payload_server.py")


@dataclass
class ServiceTiming:
    """Fixed step times of a demo service (seconds)."""

    start_delay: float = 0.3
    stop_delay: float = 0.2


@dataclass
class DemoService:
    name: str
    quorum: int | str
    depends_on: tuple[str, ...] = ()
    timing: ServiceTiming = field(default_factory=ServiceTiming)
    health_interval: float = 0.1
    health_retries: int = 100
    on_failure: str = "pause"
    progress_deadline: float = 600.0
    response_delay: tuple[float, float] = (0.0, 0.0)  # each GET / answers after a random delay in this range


@dataclass(frozen=True)
class FleetLb:
    """The fleet behind HAProxy: the runtime API ``socket`` the agents read the balancer's view from,
    and the catalog's load_balancer timings.  ``drain_state: none`` leaves the key out of the catalog
    (the services are behind the balancer, but nothing drains them: the benchmark's control run)."""

    socket: str
    agent_interval: float = 0.3
    drain_timeout: float = 10.0
    ready_timeout: float = 10.0
    drain_state: str = "drain"


def build_payload(path: Path, service: str, version: str, *, fail_health: bool = False,
                  fail_health_on: tuple[str, ...] = ()) -> Path:
    """Write a tar.gz release of the demo service: its server, a VERSION file, and with
    ``fail_health`` (everywhere) or ``fail_health_on`` (those nodes) a FLAGS file that makes
    the server answer 500 on /health."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        tar.add(SERVER_SOURCE, arcname="server.py")
        files = [("VERSION", version + "\n"),
                 ("release.json", json.dumps({"service": service, "version": version}))]
        flags = (["--fail-health"] if fail_health else []) + [f"--fail-health-on {n}" for n in fail_health_on]
        if flags:
            files.append(("FLAGS", " ".join(flags) + "\n"))
        for name, text in files:
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = int(time.time())
            tar.addfile(info, io.BytesIO(data))
    return path


def catalog_for(services: list[DemoService], lb: FleetLb | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"services": {}}
    for svc in services:
        port = "{" + svc.name + "_port}"
        delay = (f" --response-delay {svc.response_delay[0]} {svc.response_delay[1]}"
                 if svc.response_delay != (0.0, 0.0) else "")
        out["services"][svc.name] = {
            "quorum": svc.quorum,
            "depends_on": list(svc.depends_on),
            "start": ("{python} {release}/server.py --service {service} --version {version} --node {node} "
                      f"--port {port} --start-delay {svc.timing.start_delay} --stop-delay {svc.timing.stop_delay}"
                      # absent unless a test breaks /health on purpose (health_fault_file)
                      " --fault-file {data}/faults/{service}.health"
                      f"{delay} $(cat {{release}}/FLAGS 2>/dev/null)"),
            # stand-ins for taking the node out of a load balancer and back
            "pre_stop": ["echo drain {service} {version} >> {data}/logs/lb.log"],
            "post_start": ["echo undrain {service} {version} >> {data}/logs/lb.log"],
            "health_checks": [{"http": f"http://127.0.0.1:{port}/health", "timeout": 1,
                               "interval": svc.health_interval, "retries": svc.health_retries}],
            "on_failure": svc.on_failure,
            "progress_deadline": svc.progress_deadline,
            "keep_releases": 3,
            "stop_timeout": 10 + svc.timing.stop_delay,
        }
        if lb is not None and lb.drain_state != "none":
            out["services"][svc.name]["load_balancer"] = {
                "backend": svc.name, "server": "{node}", "socket": lb.socket, "drain_state": lb.drain_state,
                "agent_interval": lb.agent_interval, "drain_timeout": lb.drain_timeout,
                "ready_timeout": lb.ready_timeout}
    return out


def health_fault_file(host_root: Path, service: str) -> Path:
    """The switch file the demo service of ``service`` on the host under ``host_root`` reads on
    every /health request (see payload_server.py); it does not exist unless a test writes it."""
    return host_root / "data" / "faults" / f"{service}.health"


@dataclass
class Host:
    name: str
    root: Path
    ports: dict[str, int]
    swarm_port: int = 0
    lb_port: int = 0  # where its agent answers HAProxy's agent-check (with the fleet's ``lb``)
    process: subprocess.Popen[bytes] | None = None
    metrics_port: int = 0  # where its agent serves Prometheus metrics (each host a port of its own)
    swarm_settings: dict[str, Any] = field(default_factory=dict)  # overrides for this host's agent file

    @property
    def config(self) -> Path:
        return self.root / "agent.yaml"

    @property
    def log(self) -> Path:
        return self.root / "agent.log"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"


class LocalFleet:
    """``size`` hosts under ``workdir``, agents connected to ``zk_hosts``."""

    def __init__(self, workdir: Path, zk_hosts: str, services: list[DemoService], size: int = 6,
                 root: str = "/dc", session_timeout: float = 4.0, env: dict[str, str] | None = None,
                 lb: FleetLb | None = None) -> None:
        self.workdir = Path(workdir)
        self.zk_hosts = zk_hosts
        self.zk_root = root
        self.services = services
        self.session_timeout = session_timeout
        self.env = dict(env or {})
        self.lb = lb
        self.hosts = [
            Host(f"node{i + 1:02d}", self.workdir / f"node{i + 1:02d}",
                 {svc.name: free_port() for svc in services}, free_port(), free_port() if lb else 0,
                 metrics_port=free_port())
            for i in range(size)
        ]
        self.catalog_file = self.workdir / "services.yaml"
        self.payload_dir = self.workdir / "payloads"

    def write_configs(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.catalog_file.write_text(yaml.safe_dump(catalog_for(self.services, self.lb), sort_keys=False))
        for host in self.hosts:
            host.root.mkdir(parents=True, exist_ok=True)
            config = {
                "node": host.name,
                "data_dir": str(host.root / "data"),
                "services": [s.name for s in self.services],
                "zookeeper": {"hosts": self.zk_hosts, "root": self.zk_root,
                              "session_timeout": self.session_timeout, "connect_timeout": 15},
                "labels": {"rack": f"r{(self.hosts.index(host) % 3) + 1}", "dc": "local", "env": "demo"},
                "vars": {"python": sys.executable, **{f"{s}_port": p for s, p in host.ports.items()}},
                "cycle_interval": 1.0,
                "monitor_interval": 1.0,
                # every host shares 127.0.0.1 here, so each needs its own port and several
                # connections per address
                "swarm": {"listen_port": host.swarm_port, "allow_multiple_connections_per_ip": True,
                          "stall_timeout": 10, **host.swarm_settings},
            }
            config["metrics"] = {"listen": f"127.0.0.1:{host.metrics_port}"}
            if self.lb is not None:
                config["lb_agent"] = {"listen": "127.0.0.1", "port": host.lb_port}
            host.config.write_text(yaml.safe_dump(config, sort_keys=False))

    def payload(self, service: str, version: str, *, fail_health: bool = False,
                fail_health_on: tuple[str, ...] = ()) -> Path:
        path = self.payload_dir / f"{service}-{version}.tar.gz"
        build_payload(path, service, version, fail_health=fail_health, fail_health_on=fail_health_on)
        return path

    def lb_backends(self, deaf: tuple[str, ...] = ()) -> list[Backend]:
        """One HAProxy backend per service, a server per host (named for it) with an agent-check on its
        agent's port; the hosts in ``deaf`` get no agent-check (the balancer never hears their drain)."""
        return [Backend(svc.name, [Server(h.name, h.ports[svc.name], None if h.name in deaf else h.lb_port,
                                          service=svc.name) for h in self.hosts])
                for svc in self.services]

    # -- processes ------------------------------------------------------------
    def start_agent(self, host: Host, extra_env: dict[str, str] | None = None) -> None:
        with open(host.log, "ab") as log:
            host.process = subprocess.Popen(
                [sys.executable, "-m", "zkdeploy", "agent", "--config", str(host.config)],
                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **self.env, **(extra_env or {})},
                start_new_session=True, cwd=host.root,
            )

    def start(self) -> None:
        self.write_configs()
        for host in self.hosts:
            self.start_agent(host)

    def kill_agent(self, host: Host, sig: int = signal.SIGKILL) -> None:
        if host.process and host.process.poll() is None:
            host.process.send_signal(sig)
            host.process.wait(timeout=30)

    def service_pids(self, host: Host) -> list[int]:
        pids = []
        for pidfile in (host.root / "data" / "run").glob("*.pid"):
            try:
                pids.append(int(json.loads(pidfile.read_text())["pid"]))
            except (OSError, ValueError, KeyError):
                continue
        return pids

    def stop(self) -> None:
        """Stop every agent (SIGTERM, then SIGKILL) and every service process they started."""
        for host in self.hosts:
            if host.process and host.process.poll() is None:
                host.process.terminate()
        for host in self.hosts:
            if host.process:
                try:
                    host.process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    host.process.kill()
                    host.process.wait()
            for pid in self.service_pids(host):
                try:
                    os.killpg(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass

    # -- the operator's side (through the real CLI) ------------------------------
    def cli(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "zkdeploy", "--zk", self.zk_hosts, "--root", self.zk_root, *args]
        self.workdir.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **self.env},
                              cwd=self.workdir)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc
