"""The fence before a destructive step: a read of the slot the first time, a watch after it, and
a read again whenever the connection's state has changed since."""

from __future__ import annotations

import pytest

from zkdeploy.coordination import Store
from zkdeploy.errors import LockLostError, SessionLostError
from zkdeploy.model import ONLINE, RESTARTING, CurrentEntry
from zkdeploy.testing.counting import CountingSession, Counts
from zkdeploy.testing.memory import MemoryEnsemble, MemorySession


def holding() -> tuple[Store, MemorySession, Counts]:
    """A store whose session holds n1's slot of db, with its requests counted."""
    session = MemorySession(MemoryEnsemble(tick=1.0)).start()
    counts = Counts()
    store = Store(CountingSession(session, counts).start(), "/dc")
    store.bootstrap()
    store.publish_current("db", CurrentEntry(node="n1", version="1", state=ONLINE))
    store.take_slot("db", store.current("db")["n1"].evolve(state=RESTARTING))
    return store, session, counts


def reads(counts: Counts, check) -> int:
    before = counts.snapshot()
    check()
    return Counts.total(Counts.delta(counts.snapshot(), before))


def test_a_connection_that_dropped_and_came_back_makes_the_next_fence_read_the_slot() -> None:
    store, session, counts = holding()
    assert reads(counts, lambda: store.require_slot("db", "n1")) == 1
    assert reads(counts, lambda: store.require_slot("db", "n1")) == 0
    session.disconnect()
    with pytest.raises(SessionLostError):
        store.require_slot("db", "n1")
    session.reconnect()  # the same session: the slot is still its own, but that is read, not assumed
    assert reads(counts, lambda: store.require_slot("db", "n1")) == 1
    assert reads(counts, lambda: store.require_slot("db", "n1")) == 0


def test_an_expired_session_fails_the_fence_and_its_successor_holds_no_slot() -> None:
    store, session, _ = holding()
    store.require_slot("db", "n1")
    session.expire()  # the slot goes with it; the client opens a new session
    with pytest.raises((LockLostError, SessionLostError)):
        store.require_slot("db", "n1")


def test_a_slot_given_back_and_taken_again_is_read_again() -> None:
    store, _, counts = holding()
    store.require_slot("db", "n1")
    store.publish_current("db", CurrentEntry(node="n1", version="2", state=ONLINE), give_back_slot=True)
    with pytest.raises(LockLostError):
        store.require_slot("db", "n1")
    store.take_slot("db", store.current("db")["n1"].evolve(state=RESTARTING))
    assert reads(counts, lambda: store.require_slot("db", "n1")) == 1
