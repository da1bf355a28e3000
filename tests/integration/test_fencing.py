"""Fencing: a restart whose session is lost takes no further destructive step."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from zkdeploy.agent.releases import ReleaseDir
from zkdeploy.agent.rollout import Restart
from zkdeploy.agent.states import Phase, ServiceMachine
from zkdeploy.config.schema import ServiceSpec
from zkdeploy.coordination import Store
from zkdeploy.coordination.faults import expire_session
from zkdeploy.errors import LockLostError, RolloutAborted
from zkdeploy.model import ONLINE, CurrentEntry
from zkdeploy.runner.service import HostService

pytestmark = pytest.mark.integration


def make_restart(store: Store, tmp_path: Path, node: str = "n1", abort=lambda: None) -> Restart:
    spec = ServiceSpec(quorum=1, start="sleep 30")
    svc = HostService("db", spec, node, tmp_path, {})
    machine = ServiceMachine("db", lambda old, new, detail: None)
    published: list[dict] = []
    return Restart(store, node, svc, ReleaseDir(tmp_path, "db"), machine,
                   lambda **kw: published.append(kw), abort, quorum=1, target="2", session_timeout=4.0)


def test_a_lost_session_fences_the_restart(store: Store, zk_hosts: str, zk_root: str, tmp_path: Path) -> None:
    store.publish_current("db", CurrentEntry(node="n1", version="1", state=ONLINE))
    other = Store.connect(zk_hosts, zk_root, session_timeout=4.0)
    try:
        other.publish_current("db", CurrentEntry(node="n2", version="1", state=ONLINE))
        restart = make_restart(store, tmp_path)
        restart.acquire_slot()
        assert restart.machine.phase == Phase.WAITING
        restart.fence()  # holds its slot: may go on
        assert store.slots("db") == ["n1"]
        expire_session(store.conn)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and other.slots("db"):
            time.sleep(0.1)
        assert other.slots("db") == []  # the slot went with the session
        with pytest.raises(LockLostError):
            restart.fence()  # and no further destructive step starts
    finally:
        other.close()


def test_quorum_wait_gives_up_when_told(store: Store, zk_hosts: str, zk_root: str, tmp_path: Path) -> None:
    other = Store.connect(zk_hosts, zk_root, session_timeout=4.0)
    try:
        store.publish_current("db", CurrentEntry(node="n1", version="1", state=ONLINE))
        other.publish_current("db", CurrentEntry(node="n2", version="1", state="failed"))
        deadline = time.monotonic() + 1.5
        restart = make_restart(store, tmp_path,
                               abort=lambda: "deploy d-1 is paused" if time.monotonic() > deadline else None)
        # quorum 1 of 2 with the other node failed: this node may not go down, and waits
        with pytest.raises(RolloutAborted, match="paused"):
            restart.acquire_slot()
        assert store.slots("db") == [] and store.queue("db") == []
        assert store.current("db")["n1"].state == ONLINE
    finally:
        other.close()
