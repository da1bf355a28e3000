"""Fixtures shared by every tier: a real ZooKeeper server and an isolated fleet root per test; a
process-group reaper; ``wait_for``."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from zkdeploy.coordination import Store
from zkdeploy.runner.process import ManagedProcess
from zkdeploy.testing.zkserver import ZkCluster, available


@pytest.fixture(scope="session")
def zk_cluster() -> Iterator[ZkCluster]:
    """One real ZooKeeper server (Debian's package) on a free loopback port for the whole run."""
    reason = available()
    if reason:
        pytest.fail(f"integration tests need a ZooKeeper server: {reason}")
    cluster = ZkCluster(size=1).start()
    yield cluster
    cluster.stop()


@pytest.fixture
def zk_hosts(zk_cluster: ZkCluster) -> str:
    return zk_cluster.hosts


@pytest.fixture
def zk_root() -> str:
    """A fresh fleet root, so tests sharing the server never see each other's nodes."""
    return f"/t-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def store(zk_hosts: str, zk_root: str) -> Iterator[Store]:
    s = Store.connect(zk_hosts, zk_root, session_timeout=4.0)
    yield s
    s.close()


def wait_for(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.1) -> object:
    """``predicate()``'s first true value, polled every ``interval`` seconds; AssertionError naming
    ``what`` after ``timeout`` (a bound, never a measurement)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


@pytest.fixture
def kill_after() -> Iterator[list[ManagedProcess]]:
    """Services a test started: their process groups are SIGKILLed when it ends, whatever happened."""
    made: list[ManagedProcess] = []
    yield made
    for managed in made:
        pid = managed.pid()
        if pid is not None:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass  # gone already
