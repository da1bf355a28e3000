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
