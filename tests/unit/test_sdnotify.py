"""zkdeploy.sdnotify speaks systemd's notify protocol over a real unix datagram socket."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from zkdeploy import sdnotify


@pytest.fixture
def systemd(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[socket.socket]:
    """A socket standing in for systemd's, named by $NOTIFY_SOCKET."""
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()


def received(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().split("\n")


def test_ready_with_status_is_one_datagram(systemd: socket.socket) -> None:
    assert sdnotify.ready("serving 2 services") is True
    assert received(systemd) == ["READY=1", "STATUS=serving 2 services"]


def test_watchdog_status_and_stopping(systemd: socket.socket) -> None:
    assert sdnotify.watchdog() and sdnotify.status("waiting for a slot") and sdnotify.stopping()
    assert received(systemd) == ["WATCHDOG=1"]
    assert received(systemd) == ["STATUS=waiting for a slot"]
    assert received(systemd) == ["STOPPING=1"]


def test_abstract_socket_names(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"zkdeploy-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sdnotify.ready() is True
        assert received(sock) == ["READY=1"]


def test_nothing_happens_outside_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.ready() is False and sdnotify.watchdog() is False


def test_a_socket_that_is_gone_is_an_error_not_silence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    with pytest.raises(OSError):
        sdnotify.watchdog()


def test_a_field_with_a_newline_is_refused(systemd: socket.socket) -> None:
    with pytest.raises(ValueError):
        sdnotify.status("two\nlines")


def test_watchdog_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert sdnotify.watchdog_interval() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))   # meant for another process
    assert sdnotify.watchdog_interval() is None
    monkeypatch.delenv("WATCHDOG_USEC")
    assert sdnotify.watchdog_interval() is None


# --------------------------------------------------------------------------- the agent's notifier


def test_the_agent_takes_the_variables_so_its_children_never_inherit_them(monkeypatch: pytest.MonkeyPatch,
                                                                         systemd: socket.socket) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "20000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    notifier = sdnotify.Notifier.take_environment()
    assert not {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"} & set(os.environ)
    assert notifier.watchdog_timeout == 20.0 and notifier.watchdog_interval == 10.0
    # the module-level calls see nothing now; the notifier still reaches systemd
    assert sdnotify.status("x") is False
    assert notifier.ready("registered") is True
    assert received(systemd) == ["READY=1", "STATUS=registered"]


def test_a_watchdog_ping_can_extend_the_start_timeout(systemd: socket.socket) -> None:
    notifier = sdnotify.Notifier.from_environment()
    assert notifier.watchdog(sdnotify.extend_timeout_field(30)) is True
    assert received(systemd) == ["WATCHDOG=1", "EXTEND_TIMEOUT_USEC=30000000"]
    assert notifier.stopping("stopping: web=2:online") is True
    assert received(systemd) == ["STOPPING=1", "STATUS=stopping: web=2:online"]


def test_without_a_socket_the_notifier_is_silent_but_still_checks_its_fields() -> None:
    notifier = sdnotify.Notifier()
    assert not notifier.enabled and notifier.ready() is False and notifier.watchdog_interval is None
    with pytest.raises(ValueError):
        notifier.status("two\nlines")


# --------------------------------------------------------------------------- the agent's watchdog


class ManualClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def pending(sock: socket.socket) -> list[list[str]]:
    """Every datagram waiting on ``sock`` now (none waited for)."""
    out = []
    sock.setblocking(False)
    try:
        while True:
            out.append(sock.recv(4096).decode().split("\n"))
    except BlockingIOError:
        return out
    finally:
        sock.settimeout(5)


def test_the_watchdog_pings_while_the_cycle_is_alive_and_stops_when_it_is_wedged(systemd: socket.socket) -> None:
    from zkdeploy.agent.daemon import Liveness, Watchdog

    clock = ManualClock()
    liveness = Liveness(step_limit=60, idle_limit=10, clock=clock)
    ready = {"yes": False}
    dog = Watchdog(sdnotify.Notifier(str(systemd.getsockname()), watchdog_timeout=30), liveness,
                   in_transition=lambda: not ready["yes"])
    # starting: each ping also extends the start timeout by WatchdogSec
    assert dog.tick() is True
    assert pending(systemd) == [["WATCHDOG=1", "EXTEND_TIMEOUT_USEC=30000000"]]
    ready["yes"] = True
    with liveness.step():                      # a long cycle (a restart) that makes progress
        clock.now += 59
        assert dog.tick() is True
        clock.now += 2                         # past the cycle limit: wedged
        assert dog.tick() is False and dog.tick() is False
        assert pending(systemd) == [["WATCHDOG=1"]], "a wedged cycle must stop the pings"
    # the cycle came back: alive again
    assert dog.tick() is True
    assert pending(systemd) == [["WATCHDOG=1"]]
    # a main loop that no longer starts cycles is wedged too
    clock.now += 11
    assert dog.tick() is False
    assert pending(systemd) == []


def test_a_failed_ping_is_logged_not_raised(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from zkdeploy.agent.daemon import Liveness, Watchdog

    dog = Watchdog(sdnotify.Notifier(str(tmp_path / "gone"), watchdog_timeout=30), Liveness(60, 10),
                   in_transition=lambda: False)
    assert dog.tick() is False
    assert "watchdog ping" in caplog.text and "failed" in caplog.text
