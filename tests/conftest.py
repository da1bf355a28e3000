"""Fixtures shared by every tier: a real ZooKeeper server and an isolated fleet root per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from zkdeploy.coordination import Store
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
