"""The ZooKeeper store and the restart queue against a real ZooKeeper server."""

from __future__ import annotations

import threading
import time

import pytest

from zkdeploy.coordination import Store
from zkdeploy.coordination.lock import QueueLock
from zkdeploy.errors import (
    ConflictError,
    CoordinationError,
    LockLostError,
    NoNodeError,
    RolloutAborted,
    SessionLostError,
)
from zkdeploy.model import ONLINE, RESTARTING, CurrentEntry, DeployEntry, Release
from zkdeploy.testing.counting import CountingSession, Counts

pytestmark = pytest.mark.integration


def test_current_entries_are_ephemeral_and_owned(store: Store, zk_hosts: str, zk_root: str) -> None:
    store.publish_current("web", CurrentEntry(node="n1", version="1", state=ONLINE))
    assert store.owns_current("web", "n1")
    other = Store.connect(zk_hosts, zk_root, session_timeout=4.0)
    try:
        assert not other.owns_current("web", "n1")
        with pytest.raises(ConflictError, match="older session"):
            other.publish_current("web", CurrentEntry(node="n1", version="2", state=ONLINE))
    finally:
        other.close()
    store.close()
    watcher = Store.connect(zk_hosts, zk_root)
    try:
        assert watcher.current("web") == {}  # a clean close removes the session's entries at once
    finally:
        watcher.close()


def test_deploy_queue_order_and_conditional_updates(store: Store) -> None:
    names = store.enqueue([DeployEntry(service="db", version="2"), DeployEntry(service="web", version="2")])
    assert names == sorted(names)
    entries = store.deploys()
    assert [(e.service, e.version) for e in entries] == [("db", "2"), ("web", "2")]
    first = entries[0]
    store.update_deploy(first.evolve(state="done"))
    with pytest.raises(ConflictError):
        store.update_deploy(first.evolve(state="aborted"))  # stale znode version
    assert store.deploy(first.name).state == "done"


def test_a_staged_version_cannot_change_its_payload(store: Store) -> None:
    release = Release(service="web", version="2", sha256="a" * 64, size=1, origin="/x")
    store.put_release(release)
    store.put_release(release)  # the same payload again is fine
    with pytest.raises(ConflictError, match="different payload"):
        store.put_release(release.evolve(sha256="b" * 64))


def test_take_slot_is_conditional_on_the_entry_read(store: Store) -> None:
    store.publish_current("db", CurrentEntry(node="n1", version="1", state=ONLINE))
    stale = store.current("db")["n1"]
    store.publish_current("db", CurrentEntry(node="n1", version="1", state="failed"))
    with pytest.raises(ConflictError):
        store.take_slot("db", stale.evolve(state=RESTARTING))
    assert store.slots("db") == []
    fresh = store.current("db")["n1"]
    store.take_slot("db", fresh.evolve(state=RESTARTING))
    assert store.slots("db") == ["n1"] and store.current("db")["n1"].state == RESTARTING


def test_the_write_that_counts_a_node_back_gives_its_slot_back_in_the_same_transaction(
        store: Store, zk_hosts: str, zk_root: str) -> None:
    """The end of a restart is one request: entry online, its token, the epoch and the slot's
    release; the waiting head is woken once, by a state that counts the node back with its slot
    free.  A slot removed under it meanwhile (an operator) does not stop the node counting back."""
    store.publish_current("db", CurrentEntry(node="n1", version="1", state=ONLINE))
    store.take_slot("db", store.current("db")["n1"].evolve(state=RESTARTING))
    up = store._layout.up_service("db")
    epoch = store._session.exists(up).version
    counts = Counts()
    store._session = CountingSession(store._session, counts)
    store.publish_current("db", CurrentEntry(node="n1", version="2", state=ONLINE), give_back_slot=True)
    store.release_slot("db", "n1")  # given back already: no request
    assert counts.snapshot()["requests"] == {"commit": 1}
    observer = Store.connect(zk_hosts, zk_root)
    try:
        assert observer.slots("db") == [] and observer.current("db")["n1"].state == ONLINE
        assert observer._session.exists(store._layout.online_token("db", "n1")) is not None
        assert observer._session.exists(up).version == epoch + 1
        store.take_slot("db", store.current("db")["n1"].evolve(state=RESTARTING))
        observer._session.delete(store._layout.slot("db", "n1"))  # removed under the restarting node
        store.publish_current("db", CurrentEntry(node="n1", version="3", state=ONLINE), give_back_slot=True)
        store.release_slot("db", "n1")
        assert observer.slots("db") == [] and observer.current("db")["n1"].version == "3"
        assert observer._session.exists(store._layout.online_token("db", "n1")) is not None
    finally:
        observer.close()


def test_current_read_with_watch_sees_the_next_change(store: Store, zk_hosts: str, zk_root: str) -> None:
    store.publish_current("db", CurrentEntry(node="n1", version="1", state=ONLINE))
    changed = threading.Event()
    store.current("db", changed)
    other = Store.connect(zk_hosts, zk_root)
    try:
        other.publish_current("db", CurrentEntry(node="n2", version="1", state=ONLINE))
        assert changed.wait(5)
    finally:
        other.close()


def _stores(zk_hosts: str, zk_root: str, n: int) -> list[Store]:
    return [Store.connect(zk_hosts, zk_root, session_timeout=4.0) for _ in range(n)]


def test_queue_lock_is_fifo_and_wakes_only_the_next(zk_hosts: str, zk_root: str) -> None:
    stores = _stores(zk_hosts, zk_root, 3)
    try:
        locks = [s.restart_queue("db", f"n{i}") for i, s in enumerate(stores)]
        locks[0].acquire(lambda: None)
        order: list[int] = []

        def wait(i: int) -> None:
            locks[i].acquire(lambda: None)
            order.append(i)
            time.sleep(0.2)
            locks[i].release()

        threads = []
        for i in (1, 2):
            threads.append(threading.Thread(target=wait, args=(i,)))
            threads[-1].start()
            time.sleep(0.3)  # join the queue in order
        assert locks[1].position() == 1 and locks[2].position() == 2
        locks[0].release()
        for t in threads:
            t.join(10)
        assert order == [1, 2]
    finally:
        for s in stores:
            s.close()


def test_a_waiter_reads_the_queue_again_only_when_its_predecessor_goes(zk_hosts: str, zk_root: str) -> None:
    a, b = _stores(zk_hosts, zk_root, 2)
    try:
        first = a.restart_queue("db", "a")
        first.join()
        counts = Counts()
        waiter = QueueLock(CountingSession(b._session, counts), b._layout.lock_queue("db"), "db", "b")
        waiter.join()
        assert waiter.poll(threading.Event()) == 1
        made = Counts.total(counts.snapshot())
        wake = threading.Event()  # the cycle's wake-up event, set by anything (a deploy, /current)
        for _ in range(20):
            assert waiter.poll(wake) == 1
        assert Counts.total(counts.snapshot()) == made  # twenty wake-ups, no read of the queue
        assert not wake.is_set()
        first.release()
        assert wake.wait(5), "the predecessor's going did not wake the latest event"
        # its predecessor was first and went: nobody is ahead (a later place is always behind), so
        # it is first without listing the queue, and stays first without reading it again (a head
        # woken by every change of the count used to list a queue of up to N places each time)
        for _ in range(5):
            assert waiter.poll(wake) == 0
        assert Counts.total(counts.snapshot()) == made
        b.expire_session()  # the place goes with the session: the first poll in the new one says so
        deadline = time.monotonic() + 20
        while True:
            try:
                waiter.poll(wake)
            except SessionLostError:
                pass  # not connected again yet
            except LockLostError:
                break
            assert time.monotonic() < deadline, "a head whose session ended still polled as first"
            time.sleep(0.05)
    finally:
        a.close()
        b.close()


def test_joining_the_queue_lists_it_in_the_same_round_trip(zk_hosts: str, zk_root: str) -> None:
    a, b = _stores(zk_hosts, zk_root, 2)
    try:
        first = a.restart_queue("db", "a")
        first.join()
        name, listed = b._session.create_and_list(b._layout.lock_queue("db") + "/probe-", b"", ephemeral=True,
                                                  sequence=True)
        assert name.rsplit("/", 1)[1] in listed and f"{first.prefix}" in "".join(listed)  # the listing sees it
        with pytest.raises(NoNodeError):
            b._session.create_and_list(b._layout.lock_queue("nosuch") + "/x", b"")
        counts = Counts()
        waiter = QueueLock(CountingSession(b._session, counts), b._layout.lock_queue("db"), "db", "b")
        waiter.join()
        joined = counts.snapshot()
        assert waiter.poll(threading.Event()) == 1
        polled = Counts.delta(counts.snapshot(), joined)["requests"]
        assert polled.get("children", 0) == 0, "the first poll uses the listing made with the join"
        assert polled.get("exists") == 1  # the predecessor's watch
    finally:
        a.close()
        b.close()


def test_queue_lock_waiter_gives_up_when_told(zk_hosts: str, zk_root: str) -> None:
    a, b = _stores(zk_hosts, zk_root, 2)
    try:
        a.restart_queue("db", "a").acquire(lambda: None)
        waiter = b.restart_queue("db", "b")
        deadline = time.monotonic() + 0.5
        with pytest.raises(RolloutAborted, match="deploy aborted"):
            waiter.acquire(lambda: "deploy aborted" if time.monotonic() > deadline else None, poll=0.1)
        assert waiter.node is None
        assert b.queue("db") == ["a"]  # only a's node is left
    finally:
        a.close()
        b.close()


def test_an_expired_session_releases_locks_and_slots(zk_hosts: str, zk_root: str) -> None:
    holder, observer = _stores(zk_hosts, zk_root, 2)
    try:
        holder.publish_current("db", CurrentEntry(node="n1", version="1", state=ONLINE))
        lock = holder.restart_queue("db", "n1")
        lock.acquire(lambda: None)
        holder.take_slot("db", holder.current("db")["n1"].evolve(state=RESTARTING))
        generation = holder.generation
        holder.expire_session()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (observer.slots("db") or observer.current("db")):
            time.sleep(0.1)
        assert observer.slots("db") == [] and observer.current("db") == {}
        assert observer.queue("db") == []  # without roles the place lives in the agent's session
        # the holder notices: its ownership checks fail, and a new session has a new generation
        with pytest.raises((LockLostError, CoordinationError)):
            holder.require_slot("db", "n1")
        while time.monotonic() < deadline and holder.generation == generation:
            time.sleep(0.1)
        assert holder.generation > generation
        with pytest.raises(LockLostError, match="has ended"):
            lock.poll(threading.Event())
    finally:
        holder.close()
        observer.close()


def test_unreachable_zookeeper_is_a_clear_error() -> None:
    with pytest.raises(CoordinationError, match=r"cannot reach ZooKeeper at 127\.0\.0\.1:1 within 1\.5s"):
        Store.connect("127.0.0.1:1", "/dc", connect_timeout=1.5)


def test_children_of_several_paths_in_one_round_trip_read_as_one_after_the_other(store: Store, zk_hosts: str,
                                                                                  zk_root: str) -> None:
    session = store._session
    for node in ("a", "b"):
        session.create(f"{zk_root}/p1/{node}", makepath=True)
    session.create(f"{zk_root}/p2/c", makepath=True)
    fired: list[str] = []
    changed = threading.Event()

    def watch(_kind: str, path: str) -> None:
        fired.append(path)
        changed.set()

    paths = [f"{zk_root}/p1", f"{zk_root}/missing", f"{zk_root}/p2"]
    got = session.children_all(paths, watch)
    assert [sorted(c) for c in got] == [["a", "b"], [], ["c"]] == [sorted(session.children(p)) for p in paths]
    other = Store.connect(zk_hosts, zk_root)
    try:
        other._session.create(f"{zk_root}/p2/d")
        assert changed.wait(5) and fired == [f"{zk_root}/p2"]  # each path got the watch
    finally:
        other.close()


def test_entries_read_together_are_those_read_one_by_one_and_a_vanished_one_is_left_out(
        store: Store, zk_hosts: str, zk_root: str) -> None:
    for node in ("n1", "n2", "n3"):
        store.add_member("web", node)
    session = store._session
    paths = [store._layout.member("web", n) for n in ("n1", "gone", "n3")]
    changed = threading.Event()
    got = session.get_all(paths, lambda *_: changed.set())
    assert [g is not None for g in got] == [True, False, True]
    assert [g[0] if g else None for g in got] == [(r[0] if (r := session.get(p)) else None) for p in paths]
    counts = Counts()
    counting = Store.connect(zk_hosts, zk_root)
    counting._session = CountingSession(counting._session, counts)
    try:
        assert sorted(counting.members("web")) == ["n1", "n2", "n3"]
        assert counts.snapshot()["requests"] == {"children": 1, "get": 3}
        assert not changed.is_set()
        counting.add_member("web", "n3")  # rewrites n3's record: the watch left by the read fires
        assert changed.wait(5)
    finally:
        counting.close()


@pytest.mark.parametrize("flip_before", [1, 2])
def test_a_token_taken_between_the_reads_of_a_count_never_pairs_a_stale_count_with_the_new_epoch(
        zk_hosts: str, zk_root: str, flip_before: int) -> None:
    """The count and the epoch a quorum decision uses must describe one state: a head whose slot
    transaction removes a token (and bumps the epoch) between the count's reads must not leave
    another head with the old count and the new epoch, which its own slot transaction would pass
    (two heads at once: a queue node deleted under the head).  The flip is made, through another
    session, after the tally's request ``flip_before - 1`` was answered and before the next is sent."""
    from zkdeploy.coordination.session import Create, Delete, SetData
    from zkdeploy.coordination.zookeeper import ZooKeeperSession

    other = ZooKeeperSession(zk_hosts, session_timeout=10).start()
    reader = ZooKeeperSession(zk_hosts, session_timeout=10).start()
    try:
        up = f"{zk_root}/up/app"
        for node in ("a", "b", "c"):
            other.create(f"{up}/{node}", makepath=True)
            other.commit([Create(f"{up}/{node}/on", ephemeral=True), SetData(up, b"")])
        sent: list = []
        real_call = reader.client._call

        def stepping_call(request, async_object):  # type: ignore[no-untyped-def]
            if sent:
                sent[-1].wait(10)  # the previous request answered first
            if len(sent) == flip_before:
                other.commit([Delete(f"{up}/b/on"), SetData(up, b"")])  # head b takes its slot
            sent.append(async_object)
            return real_call(request, async_object)

        reader.client._call = stepping_call  # type: ignore[method-assign]
        try:
            below, stat = reader.tally(up)
        finally:
            reader.client._call = real_call  # type: ignore[method-assign]
        assert len(sent) > flip_before, "the flip was made between two of the tally's requests"
        assert stat is not None
        epoch_now = other.exists(up)
        assert epoch_now is not None
        if stat.version == epoch_now.version:  # a slot transaction conditional on this epoch would pass
            assert below - stat.children == 2, "the count read with the current epoch is the current count"
    finally:
        reader.close()
        other.close()


def test_without_roles_a_place_in_the_queue_lives_in_the_agents_own_session(zk_hosts: str, zk_root: str) -> None:
    """No ACL roles, no boundary to keep: the place is made in the agent's session and deleted to
    leave (no connection per restart); under roles it has a session of its own (test_acl)."""
    a, observer = _stores(zk_hosts, zk_root, 2)
    try:
        place = a.restart_queue("db", "a")
        place.join()
        stat = observer._session.exists(observer._layout.lock_queue("db") + "/" + str(place.node))
        assert stat is not None and stat.owner == a._session.session_id and not place.own_session
        place.release()
        assert observer.queue("db") == []
    finally:
        a.close()
        observer.close()


def test_the_last_change_of_a_services_availability_is_one_read_of_its_epoch(zk_hosts: str, zk_root: str) -> None:
    """What the steward's stall check reads instead of every entry of the service."""
    (store,) = _stores(zk_hosts, zk_root, 1)
    try:
        assert store.last_change("db") is None  # nothing yet
        before = time.time()
        store.publish_current("db", CurrentEntry(node="n1", version="1", state=ONLINE))  # n1 comes up: a flip
        first = store.last_change("db")
        assert first is not None and before - 5 < first < time.time() + 5  # the server's clock, in seconds
        time.sleep(0.05)
        store.publish_current("db", CurrentEntry(node="n1", version="1", state=ONLINE, detail="still up"))
        assert store.last_change("db") == first  # a write that leaves availability as it was is no change
        store.publish_current("db", CurrentEntry(node="n1", version="1", state=RESTARTING))
        last = store.last_change("db")
        assert last is not None and last > first
    finally:
        store.close()


def test_a_ctrl_c_that_kazoo_swallows_is_given_back_as_keyboard_interrupt(zk_hosts: str, zk_root: str) -> None:
    """kazoo wakes its connection thread with a write inside a bare ``except``: a Ctrl-C landing in
    that write came back as "connection closed" (``status --watch`` exited 3 instead of 0)."""
    (store,) = _stores(zk_hosts, zk_root, 1)
    connection = store._session.client._connection  # type: ignore[attr-defined]
    sock = connection._write_sock

    class Interrupted:
        """The wake-up socket, with a Ctrl-C arriving during its next write."""

        def __init__(self) -> None:
            self.armed = True

        def send(self, data: bytes) -> int:
            if self.armed:
                self.armed = False
                raise KeyboardInterrupt
            return sock.send(data)

        def __getattr__(self, name: str) -> object:
            return getattr(sock, name)

    connection._write_sock = Interrupted()
    try:
        with pytest.raises(KeyboardInterrupt):
            store.killswitch()
    finally:
        connection._write_sock = sock
    try:
        assert store.killswitch() is None  # the session still works: no request is left without its turn
    finally:
        store.close()
