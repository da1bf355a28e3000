"""The in-memory ZooKeeper: the semantics the model-based tests rely on."""

from __future__ import annotations

import threading

import pytest

from zkdeploy.coordination.session import (
    CHANGED,
    CHILD,
    CONNECTED,
    CREATED,
    DELETED,
    LOST,
    SESSION,
    SUSPENDED,
    Check,
    Create,
    Delete,
    SetData,
)
from zkdeploy.errors import (
    BadVersionError,
    CoordinationError,
    NodeExistsError,
    NoNodeError,
    NotEmptyError,
    SessionLostError,
)
from zkdeploy.testing.memory import MemoryEnsemble, MemorySession


@pytest.fixture
def ens() -> MemoryEnsemble:
    return MemoryEnsemble(tick=1.0)  # session timeouts clamp to 2..20 s


def client(ens: MemoryEnsemble, **kw) -> MemorySession:
    return MemorySession(ens, session_timeout=kw.pop("session_timeout", 10.0), **kw).start()


class Events(list):
    """A watcher or listener that records what it was called with."""

    def __call__(self, *args):
        self.append(args if len(args) > 1 else args[0])


# -- reads, writes and their errors -------------------------------------------------------

def test_reads_of_absent_nodes_return_nothing_and_writes_raise_the_contract_errors(ens):
    a = client(ens)
    assert a.get("/x") is None and a.exists("/x") is None and a.children("/x") == []
    with pytest.raises(NoNodeError):
        a.create("/x/y")  # no parent, no makepath
    assert a.create("/x/y", b"1", makepath=True) == "/x/y"
    with pytest.raises(NodeExistsError):
        a.create("/x/y")
    with pytest.raises(NoNodeError):
        a.set("/nope", b"")
    with pytest.raises(NoNodeError):
        a.delete("/nope")
    with pytest.raises(NotEmptyError):
        a.delete("/x")
    with pytest.raises(TypeError):
        a.set("/x/y", "text")  # type: ignore[arg-type]
    with pytest.raises(CoordinationError):
        a.get("relative/path")
    assert ens.dump() == {"/x": (b"", 0), "/x/y": (b"1", 0)}


def test_tally_counts_every_node_below_then_reads_the_parent_with_a_data_watch(ens):
    a, b = client(ens), client(ens)
    assert a.tally("/up/web") == (0, None)
    a.create("/up/web/n1", makepath=True)
    a.create("/up/web/n2")
    a.create("/up/web/n1/on", ephemeral=True)
    seen = Events()
    below, stat = a.tally("/up/web", seen)
    assert below == 3 and stat is not None and stat.children == 2  # two parents, one token
    b.set("/up/web", b"")  # an epoch bump
    ens.settle()
    assert seen == [(CHANGED, "/up/web")]
    a.close()  # its token goes with its session
    assert b.tally("/up/web")[0] == 2


def test_conditional_set_and_delete_compare_versions(ens):
    a = client(ens)
    a.create("/n", b"v0")
    data, stat = a.get("/n")
    assert (data, stat.version, stat.owner) == (b"v0", 0, 0)
    assert a.set("/n", b"v1", version=0).version == 1
    with pytest.raises(BadVersionError):
        a.set("/n", b"stale", version=0)
    with pytest.raises(BadVersionError):
        a.delete("/n", version=0)
    assert a.get("/n")[0] == b"v1"
    a.delete("/n", version=1)
    assert a.exists("/n") is None


def test_sequence_numbers_count_child_creations_per_parent(ens):
    a = client(ens)
    a.ensure_path("/q")
    a.ensure_path("/r")
    first = a.create("/q/q-", sequence=True)
    second = a.create("/q/q-", ephemeral=True, sequence=True)
    assert (first, second) == ("/q/q-0000000000", "/q/q-0000000001")
    a.delete(second)
    assert a.create("/q/q-", sequence=True) == "/q/q-0000000002"  # a delete does not advance it
    a.create("/q/plain")
    assert a.create("/q/q-", sequence=True) == "/q/q-0000000004"  # a plain create does
    assert a.create("/r/q-", sequence=True) == "/r/q-0000000000"  # each parent has its own counter
    assert a.children("/q") == ["q-0000000004", "plain", "q-0000000002", "q-0000000000"]  # not sorted


def test_ephemeral_nodes_belong_to_their_session_and_may_not_have_children(ens):
    a = client(ens)
    a.create("/e", b"me", ephemeral=True)
    assert a.exists("/e").owner == a.session_id
    assert ens.ephemerals(a.session_id) == ["/e"]
    with pytest.raises(NodeExistsError):  # ZooKeeper checks existence before the ephemeral parent
        a.create("/e")
    with pytest.raises(CoordinationError) as err:
        a.create("/e/child")
    assert not isinstance(err.value, NoNodeError)
    assert ens.dump() == {"/e": (b"me", a.session_id)}


def test_commit_is_all_or_none_and_raises_the_first_failing_op(ens):
    a = client(ens)
    a.create("/slots", b"0")
    a.ensure_path("/q")
    with pytest.raises(BadVersionError):
        a.commit([Create("/q/a"), Create("/q/s-", ephemeral=True, sequence=True), Check("/slots", 7),
                  Create("/q/b")])
    assert ens.dump() == {"/q": (b"", 0), "/slots": (b"0", 0)}
    # the rolled-back creates left no trace: the sequence counter did not advance either
    results = a.commit([Create("/q/s-", ephemeral=True, sequence=True), SetData("/slots", b"1", version=0),
                        Check("/slots", 1), Delete("/slots", version=1)])
    assert results[0] == "/q/s-0000000000"
    assert results[1].version == 1 and results[2:] == [None, None]
    assert ens.dump() == {"/q": (b"", 0), "/q/s-0000000000": (b"", a.session_id)}
    with pytest.raises(NoNodeError):
        a.commit([Check("/q", -1), Delete("/gone")])
    created = a.commit([Create("/t1"), Create("/t2")])
    assert a.exists(created[0]).created == a.exists(created[1]).created  # one transaction, one zxid


def test_negotiated_timeout_is_clamped_by_the_ensemble(ens):
    assert client(ens, session_timeout=60.0).negotiated_timeout == 20.0
    assert client(ens, session_timeout=0.5).negotiated_timeout == 2.0
    assert client(MemoryEnsemble(max_session_timeout=6.0), session_timeout=30.0).negotiated_timeout == 6.0


# -- watches -------------------------------------------------------------------------------

def test_one_shot_watches_fire_once(ens):
    a, b = client(ens), client(ens)
    a.ensure_path("/w")
    seen = Events()
    b.get("/w", watch=seen)
    b.children("/w", watch=seen)
    b.exists("/w/x", watch=seen)
    a.set("/w", b"1")
    a.set("/w", b"2")
    a.create("/w/x")
    a.create("/w/y")
    assert seen == [(CHANGED, "/w"), (CREATED, "/w/x"), (CHILD, "/w")]
    b.get("/w/x", watch=seen)
    b.children("/w/x", watch=seen)
    a.delete("/w/x")
    assert seen[3:] == [(DELETED, "/w/x")]  # one call, though both a data and a child watch were set


def test_children_of_an_absent_node_leave_no_watch(ens):
    a = client(ens)
    seen = Events()
    assert a.children("/later", watch=seen) == []
    a.create("/later")
    a.create("/later/kid")
    assert seen == []


def test_ephemerals_vanish_on_expiry_and_their_watches_fire(ens):
    a, b = client(ens), client(ens)
    a.ensure_path("/nodes")
    a.create("/nodes/a", ephemeral=True)
    a.create("/persistent", b"stays")
    states, seen, own = Events(), Events(), Events()
    a.add_listener(states)
    b.exists("/nodes/a", watch=seen)
    b.children("/nodes", watch=seen)
    a.exists("/persistent", watch=own)
    old_id = a.session_id

    a.expire()

    assert seen == [(DELETED, "/nodes/a"), (CHILD, "/nodes")]
    assert own == [(SESSION, "/persistent")]  # the expired session's one-shot watches are told so
    assert states == [LOST, CONNECTED]
    assert a.state == CONNECTED and a.generation == 2 and a.session_id not in (None, old_id)
    assert ens.ephemerals(old_id) == [] and old_id not in ens.sessions_alive()
    assert ens.dump() == {"/nodes": (b"", 0), "/persistent": (b"stays", 0)}
    a.set("/persistent", b"x")
    assert own == [(SESSION, "/persistent")]  # that watch is gone for good


def test_without_auto_reconnect_an_expired_client_stays_lost_until_started(ens):
    a = client(ens, auto_reconnect=False)
    a.expire()
    assert (a.state, a.session_id) == (LOST, None)
    with pytest.raises(SessionLostError):
        a.exists("/")
    a.start()
    assert a.state == CONNECTED and a.generation == 2


def test_persistent_watches_refire_with_current_data_across_an_expiry(ens):
    a, b = client(ens), client(ens)
    kids, data = Events(), Events()
    a.watch_children("/members", kids)
    a.watch_data("/config", data)
    assert kids == [[]] and data == [None]
    a.create("/members/a", ephemeral=True)
    b.create("/members/b", ephemeral=True)
    b.create("/config", b"1")
    assert kids == [[], ["a"], ["b", "a"]] and data == [None, b"1"]

    a.expire()
    # re-fired with what is there now, even where nothing changed: the new session must re-read
    assert kids[-1] == ["b"] and data == [None, b"1", b"1"]
    b.set("/config", b"2")
    b.create("/members/c")
    assert kids[-1] == ["c", "b"] and data[-1] == b"2"  # and still watching


def test_watch_data_stops_when_its_callback_returns_false(ens):
    a = client(ens)
    seen: list = []
    a.watch_data("/flag", lambda d: seen.append(d) or d != b"stop")
    a.create("/flag", b"go")
    a.set("/flag", b"stop")
    a.set("/flag", b"again")
    assert seen == [None, b"go", b"stop"]


def test_a_callback_that_writes_is_not_reentered(ens):
    a = client(ens)
    calls: list = []

    def grow(children):
        calls.append(sorted(children))
        if len(children) < 3:
            a.create(f"/grow/n{len(children)}")

    a.watch_children("/grow", grow)
    assert calls == [[], ["n0"], ["n0", "n1"], ["n0", "n1", "n2"]]
    assert ens.callback_errors == []


# -- connection faults ------------------------------------------------------------------------

def test_calls_while_suspended_raise_session_lost_and_ephemerals_stay(ens):
    a = client(ens)
    a.create("/e", ephemeral=True)
    sid, states = a.session_id, Events()
    a.add_listener(states)
    a.disconnect()
    assert a.state == SUSPENDED
    for call in (lambda: a.get("/e"), lambda: a.create("/x"), lambda: a.commit([]), a.require_connected):
        with pytest.raises(SessionLostError):
            call()
    assert ens.ephemerals(sid) == ["/e"]
    a.reconnect()
    assert states == [SUSPENDED, CONNECTED]
    assert (a.session_id, a.generation) == (sid, 1)
    assert a.exists("/e").owner == sid


def test_events_due_while_suspended_are_delivered_on_reconnection(ens):
    a, b = client(ens), client(ens)
    b.create("/n")
    seen = Events()
    a.get("/n", watch=seen)
    a.disconnect()
    b.set("/n", b"1")
    assert seen == []
    a.reconnect()
    assert seen == [(CHANGED, "/n")]


def test_lost_reply_is_applied_and_the_session_survives(ens):
    a = client(ens)
    a.ensure_path("/locks")
    sid, states = a.session_id, Events()
    a.add_listener(states)
    a.lose_next_reply()
    with pytest.raises(SessionLostError):
        a.create("/locks/lock-", ephemeral=True, sequence=True)
    assert states == [SUSPENDED, CONNECTED]
    assert (a.state, a.session_id, a.generation) == (CONNECTED, sid, 1)
    assert ens.ephemerals(sid) == ["/locks/lock-0000000000"]  # applied, owned by the same session
    assert a.create("/locks/lock-", ephemeral=True, sequence=True) == "/locks/lock-0000000001"  # next call works


def test_lost_reply_filtered_by_op_and_of_a_failing_write(ens):
    a = client(ens)
    a.create("/n", b"0")
    a.lose_next_reply(2, op="set")
    a.create("/other")  # not a set: answered normally
    with pytest.raises(SessionLostError):
        a.set("/n", b"1", version=0)
    with pytest.raises(SessionLostError):  # would be BadVersionError, but the reply is lost
        a.set("/n", b"2", version=0)
    assert a.get("/n")[0] == b"1"
    assert a.set("/n", b"3", version=1).version == 2


def test_lost_reply_can_leave_the_session_suspended_until_the_clock_moves(ens):
    a = client(ens)
    a.lose_next_reply(suspended_for=1.0)
    with pytest.raises(SessionLostError):
        a.create("/n", ephemeral=True)
    assert a.state == SUSPENDED
    ens.advance(1.0)
    assert a.state == CONNECTED and a.generation == 1 and a.exists("/n").owner == a.session_id


def test_lost_reply_suspended_past_the_timeout_means_a_new_session(ens):
    a = client(ens, session_timeout=4.0)
    old = a.session_id
    a.lose_next_reply(op="create", suspended_for=None)
    with pytest.raises(SessionLostError):
        a.create("/n", ephemeral=True)
    ens.advance(4.0)
    assert ens.dump() == {} and a.state == SUSPENDED  # the client does not know yet
    a.reconnect()
    assert a.state == CONNECTED and a.generation == 2 and a.session_id != old


def test_fail_next_raises_without_applying(ens):
    a = client(ens)
    a.fail_next(1, CoordinationError("operation timed out"), op="create")
    a.get("/")  # not a create
    with pytest.raises(CoordinationError, match="timed out"):
        a.create("/n")
    assert a.exists("/n") is None
    a.create("/n")
    assert a.state == CONNECTED


def test_partition_past_the_session_timeout_expires_the_session(ens):
    a, b = client(ens, session_timeout=5.0), client(ens)
    a.create("/a", ephemeral=True)
    seen, states = Events(), Events()
    b.exists("/a", watch=seen)
    a.add_listener(states)
    old = a.session_id
    a.partition()
    ens.advance(4.9)
    assert ens.ephemerals(old) == ["/a"] and old in ens.sessions_alive()
    ens.advance(0.1)
    assert ens.ephemerals(old) == [] and old not in ens.sessions_alive()
    assert seen == [(DELETED, "/a")]
    assert a.state == SUSPENDED and a.session_id == old
    a.heal()
    assert states == [SUSPENDED, LOST, CONNECTED]
    assert a.generation == 2 and a.session_id != old and a.session_id in ens.sessions_alive()


def test_a_connected_session_never_expires_by_the_clock(ens):
    a = client(ens, session_timeout=2.0)
    a.create("/a", ephemeral=True)
    ens.advance(3600)
    assert a.state == CONNECTED and ens.ephemerals(a.session_id) == ["/a"]


def test_close_removes_ephemerals_and_start_opens_a_new_session(ens):
    a = client(ens)
    a.create("/a", ephemeral=True)
    a.close()
    a.close()
    assert a.state == LOST and ens.dump() == {}
    with pytest.raises(SessionLostError):
        a.create("/b")
    a.start()
    assert a.state == CONNECTED and a.generation == 2


def test_thread_delivery_calls_watches_from_one_dispatcher_thread():
    ens = MemoryEnsemble(deliver="thread")
    try:
        a = client(ens)
        threads: list = []
        a.watch_children("/m", lambda kids: threads.append((threading.current_thread().name, sorted(kids))))
        a.create("/m/x")
        ens.settle()
        assert threads[0] == (threading.current_thread().name, [])  # the first call is made at once
        assert threads[1:] == [("memory-zk-events", ["x"])]
    finally:
        ens.close()


def test_a_lost_commit_reply_was_applied_whole(ens):
    a = client(ens)
    a.create("/slots", b"0")
    a.lose_next_reply(op="commit")
    with pytest.raises(SessionLostError):
        a.commit([Create("/slot", ephemeral=True), SetData("/slots", b"1", version=0)])
    assert ens.dump() == {"/slot": (b"", a.session_id), "/slots": (b"1", 0)}
    with pytest.raises(NodeExistsError):  # a blind retry finds its own write
        a.commit([Create("/slot", ephemeral=True), SetData("/slots", b"1", version=0)])


def test_concurrent_clients_get_distinct_sequence_numbers(ens):
    clients = [client(ens) for _ in range(4)]
    clients[0].ensure_path("/q")
    made: list[str] = []

    def work(c: MemorySession) -> None:
        made.extend(c.create("/q/n-", ephemeral=True, sequence=True) for _ in range(200))

    threads = [threading.Thread(target=work, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(made) == [f"/q/n-{i:010d}" for i in range(800)]
