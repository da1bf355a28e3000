"""Fencing against a real ZooKeeper: a restart whose session is lost takes no further destructive step."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from tests.conftest import wait_for
from zkdeploy.agent.host import Host
from zkdeploy.agent.presence import Presence
from zkdeploy.agent.slots import SlotRequest, fence
from zkdeploy.agent.states import Phase
from zkdeploy.config.schema import AgentConfig
from zkdeploy.coordination import Store
from zkdeploy.errors import LockLostError
from zkdeploy.model import FAILED, ONLINE, CurrentEntry
from zkdeploy.testing.counting import CountingSession, Counts

pytestmark = pytest.mark.integration


def make_request(store: Store, tmp_path: Path, node: str = "n1") -> SlotRequest:
    config = AgentConfig(node=node, address="127.0.0.1", data_dir=str(tmp_path / node), services=["db"],
                         zookeeper={"hosts": "unused:1"})
    presence = Presence(config, Host(config), store)
    presence.registered_generation = store.generation
    presence.publish("db", version="1", state=ONLINE)
    return SlotRequest(store, presence, "db", 1, "into 2")


def test_a_lost_session_fences_the_restart(store: Store, zk_hosts: str, zk_root: str, tmp_path: Path) -> None:
    other = Store.connect(zk_hosts, zk_root, session_timeout=4.0)
    try:
        other.publish_current("db", CurrentEntry(node="n2", version="1", state=ONLINE))
        request = make_request(store, tmp_path)
        request.join()
        assert request.poll() and request.presence.machines["db"].phase == Phase.WAITING
        fence(store, "db", "n1")  # holds its slot: may go on
        assert store.slots("db") == ["n1"] and store.queue("db") == []
        store.expire_session()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and other.slots("db"):
            time.sleep(0.1)
        assert other.slots("db") == []  # the slot went with the session
        with pytest.raises(LockLostError):
            fence(store, "db", "n1")  # and no further destructive step starts
    finally:
        other.close()


def fenced(store: Store) -> bool:
    """Whether the next destructive step of n1's db would be stopped."""
    try:
        fence(store, "db", "n1")
    except LockLostError:
        return True
    return False


def test_a_slot_taken_from_under_a_restart_stops_its_next_step_and_fences_between_make_no_request(
        store: Store, zk_hosts: str, zk_root: str, tmp_path: Path) -> None:
    """The first fence reads the slot and watches it; while the connection stays up, the fences
    after it ask the watch, not the server: only the session's loss (caught by its state) or the
    slot's deletion (the watch) can take it, and either stops the next step."""
    other = Store.connect(zk_hosts, zk_root, session_timeout=4.0)
    try:
        other.publish_current("db", CurrentEntry(node="n2", version="1", state=ONLINE))
        request = make_request(store, tmp_path)
        request.join()
        assert request.poll()
        counts = Counts()
        store._session = CountingSession(store._session, counts)
        fence(store, "db", "n1")
        assert counts.snapshot()["requests"] == {"exists": 1}
        before = counts.snapshot()
        for _ in range(3):
            fence(store, "db", "n1")
        assert Counts.total(Counts.delta(counts.snapshot(), before)) == 0
        other._session.delete(store._layout.slot("db", "n1"))  # an operator takes the slot away
        wait_for(lambda: fenced(store), 10, "the slot's deletion to stop the next step")
        assert fenced(store), "and every step after it"
    finally:
        other.close()


def test_quorum_wait_polls_and_is_woken_by_a_change(store: Store, zk_hosts: str, zk_root: str,
                                                    tmp_path: Path) -> None:
    other = Store.connect(zk_hosts, zk_root, session_timeout=4.0)
    try:
        other.publish_current("db", CurrentEntry(node="n2", version="1", state=FAILED))
        request = make_request(store, tmp_path)
        request.join()
        wake = threading.Event()
        # quorum 1 of 2 with the other node failed: this node may not go down; the poll returns at once
        assert not request.poll(wake)
        assert request.reason.startswith("waiting for quorum") and store.slots("db") == []
        other.publish_current("db", CurrentEntry(node="n2", version="1", state=ONLINE))
        assert wake.wait(5)  # the watch left by the poll fires on the change
        assert request.poll(wake) and store.slots("db") == ["n1"]
        request.release()
        assert store.slots("db") == []
        wait_for(lambda: store.queue("db") == [], 10, "the place in the queue to go with its session")
    finally:
        other.close()


def test_a_cancelled_request_leaves_the_queue(store: Store, tmp_path: Path) -> None:
    blocker = make_request(store, tmp_path, "n0")
    blocker.join()
    request = make_request(store, tmp_path)
    request.join()
    assert not request.poll() and request.reason.startswith("queued behind 1")
    request.cancel("deploy d-1 is paused")
    assert store.queue("db") == ["n0"]
    assert request.presence.machines["db"].phase == Phase.IDLE
    assert request.presence.local["db"].detail == "deploy d-1 is paused"
