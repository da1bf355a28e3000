"""Start a private ZooKeeper server (or a 3-server ensemble) on loopback.

Uses Debian's ``zookeeper`` package (``/usr/share/java/zookeeper.jar``) and
the machine's Java.  Each server gets a temporary data directory and free
ports; ``stop()`` kills it and removes the directory.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from zkdeploy.errors import CoordinationError

# netty-codec: Debian's zookeeper.jar does not list it, and the Netty connection factory (TLS) needs it
CLASSPATH = os.environ.get(
    "ZKDEPLOY_ZK_CLASSPATH", "/etc/zookeeper/conf:/usr/share/java/netty-codec.jar:/usr/share/java/zookeeper.jar"
)
MAIN = "org.apache.zookeeper.server.quorum.QuorumPeerMain"


_taken: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A free TCP port below the kernel's ephemeral range.

    A port handed out now is bound a moment later by another process; an
    ephemeral port could be taken in between as the source port of some
    outgoing connection, so ports come from below that range (and are never
    handed out twice by this process).
    """
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    low = max(low, 12000)
    for _ in range(1000):
        port = random.randrange(10000, low)
        if port in _taken:
            continue
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
        _taken.add(port)
        return port
    raise CoordinationError("no free TCP port found below the ephemeral range")


def available() -> str | None:
    """None if a ZooKeeper server can be started here, else the reason it cannot."""
    if not shutil.which("java"):
        return "java is not installed"
    jar = CLASSPATH.split(":")[-1]
    if not Path(jar).exists():
        return f"{jar} is missing (apt-get install zookeeper)"
    return None


def _wait_ruok(host: str, port: int, deadline: float) -> bool:
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5) as sock:
                sock.sendall(b"srvr")
                reply = sock.recv(4096)
                if b"Mode:" in reply:
                    return True
        except OSError:
            pass
        time.sleep(0.2)
    return False


@dataclass
class ZkServer:
    """One ZooKeeper server process."""

    client_port: int
    workdir: Path
    config: Path
    myid: int = 0
    process: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.workdir / "server.log"

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                ["java", "-Xmx256m", "-Dzookeeper.admin.enableServer=false",
                 "-Dzookeeper.4lw.commands.whitelist=*",
                 "-Dzookeeper.enforceQuota=true",  # hard quotas (docs/security.md: admission)
                 "-cp", CLASSPATH, MAIN, str(self.config)],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=30)

    def mode(self) -> str | None:
        """'leader', 'follower' or 'standalone' from the server's srvr answer, None if down."""
        try:
            with socket.create_connection(("127.0.0.1", self.client_port), timeout=1) as sock:
                sock.sendall(b"srvr")
                reply = sock.recv(4096).decode(errors="replace")
        except OSError:
            return None
        for line in reply.splitlines():
            if line.startswith("Mode:"):
                return line.split(":", 1)[1].strip()
        return None


class ZkCluster:
    """A standalone server (size 1) or an ensemble (size 3) on 127.0.0.1."""

    def __init__(self, size: int = 1, tick_ms: int = 500, workdir: str | None = None) -> None:
        if size not in (1, 3, 5):
            raise ValueError("size must be 1, 3 or 5")
        reason = available()
        if reason:
            raise CoordinationError(f"cannot start a ZooKeeper server: {reason}")
        self.tick_ms = tick_ms
        self._owned_dir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="zkdeploy-zk-"))
        self.servers: list[ZkServer] = []
        peers = [(free_port(), free_port()) for _ in range(size)]
        for i in range(size):
            sdir = self.workdir / f"server{i + 1}"
            (sdir / "data").mkdir(parents=True, exist_ok=True)
            port = free_port()
            lines = [
                f"tickTime={tick_ms}", "initLimit=20", "syncLimit=10",
                f"dataDir={sdir / 'data'}", f"clientPort={port}", "clientPortAddress=127.0.0.1",
                "maxClientCnxns=0", "admin.enableServer=false", "4lw.commands.whitelist=*",
                "minSessionTimeout=1000", "maxSessionTimeout=60000",
            ]
            if size > 1:
                (sdir / "data" / "myid").write_text(f"{i + 1}\n")
                lines += [f"server.{j + 1}=127.0.0.1:{p}:{e}" for j, (p, e) in enumerate(peers)]
            config = sdir / "zoo.cfg"
            config.write_text("\n".join(lines) + "\n")
            self.servers.append(ZkServer(port, sdir, config, myid=i + 1))

    @property
    def hosts(self) -> str:
        return ",".join(f"127.0.0.1:{s.client_port}" for s in self.servers)

    def start(self, timeout: float = 60.0) -> ZkCluster:
        for server in self.servers:
            server.start()
        deadline = time.monotonic() + timeout
        for server in self.servers:
            if not _wait_ruok("127.0.0.1", server.client_port, deadline):
                tail = server.log_path.read_text(errors="replace")[-2000:] if server.log_path.exists() else ""
                self.stop()
                raise CoordinationError(f"ZooKeeper on port {server.client_port} did not start:\n{tail}")
        return self

    def leader(self) -> ZkServer | None:
        for server in self.servers:
            if server.mode() in ("leader", "standalone"):
                return server
        return None

    def restart(self, server: ZkServer, timeout: float = 60.0) -> None:
        server.start()
        if not _wait_ruok("127.0.0.1", server.client_port, time.monotonic() + timeout):
            raise CoordinationError(f"ZooKeeper on port {server.client_port} did not restart")

    def stop(self) -> None:
        for server in self.servers:
            try:
                server.kill()
            except (OSError, subprocess.TimeoutExpired):
                pass
        if self._owned_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> ZkCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class TlsZooKeeper:
    """A standalone server with a TLS (Netty) client port, and the test CA made now that signed its
    certificate (zkdeploy.testing.tlsca).  The certificate names ``dns`` and ``ips`` (by default
    ``zk.test.invalid`` and 127.0.0.1, not ``localhost``: dialling ``localhost`` fails the host name
    check).  The plain client port stays open too (mixed mode), as during a migration."""

    def __init__(self, directory: Path, *, dns: tuple[str, ...] = ("zk.test.invalid",),
                 ips: tuple[str, ...] = ("127.0.0.1",), client_auth: str = "want") -> None:
        from zkdeploy.testing.tlsca import TestCA, zookeeper_tls_lines

        self.ca = TestCA(directory / "ca")
        self.server = self.ca.issue("zk-server", dns=dns, ips=ips)
        self.port = free_port()
        self.cluster = ZkCluster(size=1)
        with open(self.cluster.servers[0].config, "a") as cfg:
            cfg.write("\n".join(zookeeper_tls_lines(self.ca, self.server, self.port, client_auth)) + "\n")

    @property
    def hosts(self) -> str:
        """The secure port, as clients dial it."""
        return f"127.0.0.1:{self.port}"

    @property
    def plain_hosts(self) -> str:
        return self.cluster.hosts

    def start(self, timeout: float = 60.0) -> TlsZooKeeper:
        self.cluster.start(timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:  # the secure port opens a moment after the plain one
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise CoordinationError(f"ZooKeeper's TLS port {self.port} did not open")

    def stop(self) -> None:
        self.cluster.stop()
