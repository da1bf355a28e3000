"""A real agent process under a stand-in for systemd's notify socket (Type=notify, WatchdogSec).

systemd is not PID 1 here, so the test plays its part: it binds the unix
datagram socket, hands its name to the agent in $NOTIFY_SOCKET with a
watchdog of 1 s in $WATCHDOG_USEC, and reads what the agent says, against
the real ZooKeeper of the test session.
"""

from __future__ import annotations

import signal
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import FAST, wait_for
from zkdeploy.demo.fleet import DemoService, LocalFleet

pytestmark = pytest.mark.e2e


class FakeSystemd:
    """The notify socket, and every datagram received on it."""

    def __init__(self) -> None:
        self.name = f"@zkdeploy-e2e-{uuid.uuid4().hex}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(b"\0" + self.name[1:].encode())
        self.messages: list[list[str]] = []

    def read_until(self, predicate, timeout: float, what: str) -> list[str]:
        """Receive until a message satisfies ``predicate``; that message."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                message = self.sock.recv(65536).decode().split("\n")
            except TimeoutError:
                break
            self.messages.append(message)
            if predicate(message):
                return message
        raise AssertionError(f"timed out after {timeout:g}s waiting for {what}; received {self.messages[-10:]}")


@pytest.fixture
def systemd() -> Iterator[FakeSystemd]:
    fake = FakeSystemd()
    yield fake
    fake.sock.close()


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


@pytest.mark.timeout(180)
def test_ready_status_watchdog_and_stopping_from_a_real_agent(make_fleet, systemd: FakeSystemd) -> None:
    harness = make_fleet([DemoService("db", quorum=1, timing=FAST)], size=2, start=False)
    fleet = harness.fleet
    watched, other = fleet.hosts
    fleet.start_agent(watched, {"NOTIFY_SOCKET": systemd.name, "WATCHDOG_USEC": "1000000"})
    fleet.start_agent(other)

    # While it starts, each watchdog ping extends systemd's start timeout; it is ready once registered.
    systemd.read_until(lambda m: "WATCHDOG=1" in m and "EXTEND_TIMEOUT_USEC=1000000" in m, 30,
                       "a ping that extends the start timeout")
    ready = systemd.read_until(lambda m: "READY=1" in m, 60, "READY=1")
    status = next(f for f in ready if f.startswith("STATUS="))
    assert status.startswith("STATUS=registered; db=")
    assert watched.name in harness.store.nodes()
    # Ready: plain pings from now on, about every 0.5 s.
    for _ in range(3):
        ping = systemd.read_until(lambda m: "WATCHDOG=1" in m, 10, "a watchdog ping after READY")
        assert ping == ["WATCHDOG=1"]

    # A release rolls out: the status follows, and the service never inherited the notify socket.
    harness.install("1")
    systemd.read_until(lambda m: "STATUS=registered; db=1:online" in m, 30, "the status line to show db=1")
    pids = wait_for(lambda: fleet.service_pids(watched), 30, "the service's pid file")
    env = environ_of(pids[0])
    assert env["ZKDEPLOY_SERVICE"] == "db"
    assert not {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"} & set(env)

    # SIGTERM: STOPPING=1 with the last status, and a clean exit; the service keeps running.
    assert watched.process is not None
    watched.process.send_signal(signal.SIGTERM)
    stopping = systemd.read_until(lambda m: "STOPPING=1" in m, 30, "STOPPING=1")
    assert any(f.startswith("STATUS=stopping: registered; db=1:online") for f in stopping)
    assert watched.process.wait(timeout=60) == 0
    assert Path(f"/proc/{pids[0]}").exists()



@pytest.mark.timeout(120)
def test_an_agent_started_before_any_catalog_is_ready_and_says_what_it_waits_for(
        tmp_path: Path, zk_hosts: str, zk_root: str, systemd: FakeSystemd) -> None:
    """`systemctl start` of a freshly installed agent must not wait for an operator's `services apply`."""
    fleet = LocalFleet(tmp_path / "fleet", zk_hosts, [DemoService("db", quorum=1, timing=FAST)], size=1,
                       root=zk_root, session_timeout=4.0)
    fleet.write_configs()   # no `services apply`: ZooKeeper has no catalog under this root
    (host,) = fleet.hosts
    try:
        fleet.start_agent(host, {"NOTIFY_SOCKET": systemd.name, "WATCHDOG_USEC": "1000000"})
        ready = systemd.read_until(lambda m: "READY=1" in m, 60, "READY=1")
        assert "STATUS=connected; waiting for the service catalog (zkdeploy services apply)" in ready
        # still alive and watched while it waits
        assert systemd.read_until(lambda m: "WATCHDOG=1" in m, 10, "a ping") == ["WATCHDOG=1"]
    finally:
        fleet.stop()
