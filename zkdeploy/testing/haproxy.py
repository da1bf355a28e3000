"""A real HAProxy (Debian's ``haproxy``) on loopback for tests, the benchmark and ``demo --lb``.

The configuration is generated at test time: one HTTP frontend per backend,
each server with an agent-check on the zkdeploy agent's port (sending the
service's name, see conf/haproxy.cfg), and the runtime API on a UNIX socket
at admin level.  ``HAProxy.view`` and ``HAProxy.backend`` read the balancer's
own view through zkdeploy.lb.runtime.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from zkdeploy.lb.runtime import LoadBalancerError, ServerView, backend_views, command, server_view
from zkdeploy.testing.zkserver import free_port


@dataclass(frozen=True)
class Server:
    """One backend server: where it answers and where its agent answers agent-checks (None: no agent)."""

    name: str
    port: int
    agent_port: int | None = None
    service: str = ""
    address: str = "127.0.0.1"


@dataclass
class Backend:
    name: str
    servers: list[Server]
    port: int = 0            # the frontend's port (0: a free one is picked)
    health: str | None = "/health"  # HTTP health check path (None: TCP checks only)


@dataclass
class HAProxy:
    """Start with ``start()``; ``stop()`` ends it.  ``socket`` is the runtime API."""

    workdir: Path
    backends: list[Backend]
    check_inter_ms: int = 300
    agent_inter_ms: int = 300
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def socket(self) -> str:
        return str(self.workdir / "haproxy.sock")

    @property
    def config_path(self) -> Path:
        return self.workdir / "haproxy.cfg"

    def config(self) -> str:
        lines = [
            "global",
            f"    stats socket {self.socket} mode 600 level admin",
            "    stats timeout 30s",
            "    maxconn 4096",
            "defaults",
            "    mode http",
            "    timeout connect 2s",
            "    timeout client 30s",
            "    timeout server 30s",
            "    retries 0",
        ]
        for be in self.backends:
            lines += [f"frontend fe_{be.name}", f"    bind 127.0.0.1:{be.port}", f"    default_backend {be.name}",
                      f"backend {be.name}", "    balance roundrobin"]
            if be.health:
                lines.append(f"    option httpchk GET {be.health}")
            for s in be.servers:
                line = f"    server {s.name} {s.address}:{s.port} check inter {self.check_inter_ms} fall 1 rise 1"
                if s.agent_port is not None:
                    line += (f" agent-check agent-port {s.agent_port} agent-inter {self.agent_inter_ms}"
                             f" agent-send \"{s.service or be.name}\\n\"")
                lines.append(line)
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 10.0) -> HAProxy:
        binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
        for be in self.backends:
            if not be.port:
                be.port = free_port()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config())
        subprocess.run([binary, "-c", "-q", "-f", str(self.config_path)], check=True, timeout=timeout,
                       capture_output=True)
        log = (self.workdir / "haproxy.log").open("ab")
        self.process = subprocess.Popen([binary, "-db", "-f", str(self.config_path)], stdout=log, stderr=log,
                                        start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"haproxy exited {self.process.returncode}: "
                                   f"{(self.workdir / 'haproxy.log').read_text()[-2000:]}")
            try:
                command(self.socket, "show info", timeout=1.0)
                return self
            except LoadBalancerError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("haproxy did not open its runtime socket in time")

    def port(self, backend: str) -> int:
        return next(be.port for be in self.backends if be.name == backend)

    def view(self, backend: str, server: str) -> ServerView:
        return server_view(self.socket, backend, server)

    def backend(self, backend: str) -> dict[str, ServerView]:
        return backend_views(self.socket, backend)

    def wait(self, backend: str, server: str, predicate, timeout: float = 10.0) -> ServerView:  # type: ignore[no-untyped-def]
        """Poll the balancer's view until ``predicate(view)``; AssertionError with the last view otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            view = self.view(backend, server)
            if predicate(view):
                return view
            if time.monotonic() > deadline:
                raise AssertionError(f"HAProxy never got there: {view}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None
