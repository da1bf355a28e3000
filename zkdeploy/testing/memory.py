"""An in-memory ZooKeeper behind the ``Session`` seam, for unit and model-based tests.

``MemoryEnsemble`` is the server: one tree of znodes, a zxid counter, the
sessions and their watches, and a manual clock.  ``MemorySession`` is one
client of it, with fault controls a test calls on purpose (``expire``,
``disconnect``/``reconnect``, ``partition``/``heal``, ``lose_next_reply``,
``fail_next``).

What it guarantees, matching ZooKeeper (3.9, checked against the real server):

- the errors of the ``Session`` contract, in ZooKeeper's order of checks
  (create: no parent, then node exists, then ephemeral parent; delete and set:
  no node, then bad version, then not empty); a commit is all or none and
  raises the first failing op's error; the ops of a commit share one zxid;
- a sequential name takes the parent's count of child creations so far
  (10 digits: ``q-0000000007``); deletes do not advance it, plain creates do;
- ``children`` lists names in reverse creation order, deterministically, so
  code that forgets to sort sequence nodes fails here too;
- a session that lost its link (SUSPENDED) keeps its ephemeral nodes until
  the clock passes its negotiated timeout (``advance``); only then does the
  server expire it.  The client learns of the expiry when its link comes back:
  it goes LOST, every one-shot watch it had fires with kind SESSION, and (with
  ``auto_reconnect``) it starts a new session at once;
- one-shot watches fire once; events due while the link is down are held and
  delivered on reconnection within the same session.  ``children`` on an
  absent node leaves no watch (ZooKeeper answers NoNode there);
- ``watch_children``/``watch_data`` are re-armed after every reconnection,
  and called with the current value whenever it changed or a new session
  replaced the old one (kazoo's recipes call on change only; this is at least
  as often).  ``watch_children`` stops when its node is deleted, as kazoo's does.

Watch callbacks and state listeners run after the lock is released: by default
synchronously in the thread that caused them, queued behind any callback that
thread is already running (never re-entrant), which keeps tests deterministic;
``MemoryEnsemble(deliver="thread")`` runs them on one dispatcher thread, like
kazoo.  A callback that raises is logged and kept in ``callback_errors``.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Sequence
from typing import Any, cast

from zkdeploy.coordination.session import (
    CONNECTED,
    LOST,
    SESSION,
    SUSPENDED,
    Acl,
    Create,
    Delete,
    Op,
    Session,
    SetData,
    Stat,
    Watcher,
)
from zkdeploy.errors import (
    CoordinationError,
    SessionLostError,
)
from zkdeploy.testing.memory_ensemble import (
    _T,
    WRITES,
    MemoryEnsemble,
    _Call,
    _check_path,
    _Znode,
)

__all__ = ["MemoryEnsemble", "MemorySession"]

log = logging.getLogger(__name__)


class MemorySession(Session):
    """One client of a ``MemoryEnsemble``, with fault controls for tests."""

    hosts = "memory"

    def __init__(self, ensemble: MemoryEnsemble, *, session_timeout: float = 10.0, operation_timeout: float = 10.0,
                 auto_reconnect: bool = True) -> None:
        self.ensemble = ensemble
        self.session_timeout = session_timeout  # the one asked for
        self.auto_reconnect = auto_reconnect
        self._lock = ensemble.lock
        self._op_timeout = operation_timeout
        self._state = LOST
        self._sid: int | None = None
        self._gen = 0
        self._timeout = 0.0
        self._linked = True
        self._down_since = 0.0
        self._reconnect_at: float | None = None
        self._listeners: list[Callable[[str], None]] = []
        self._persistent: list[_PersistentWatch] = []
        self._fail: list[list[Any]] = []  # [remaining, op or None, exception]
        self._lose: list[list[Any]] = []  # [remaining, op or None, seconds suspended (inf: until reconnect)]
        self._twins: list[MemorySession] = []  # sessions opened by ``sibling``: same host, same link
        with self._lock:
            ensemble._clients.append(self)

    # -- lifecycle and state -------------------------------------------------------------
    def sibling(self) -> MemorySession:
        """A session of the same client host: it shares this one's link (a partition or a crash
        cuts both, a heal restores both) and its fault controls (a lost reply or a failure asked
        for applies to whichever of them makes the next matching call)."""
        twin = MemorySession(self.ensemble, session_timeout=self.session_timeout, operation_timeout=self._op_timeout,
                             auto_reconnect=self.auto_reconnect)
        twin._fail, twin._lose = self._fail, self._lose
        with self._lock:
            self._twins = [t for t in self._twins if t._sid is not None]  # closed or expired ones go
            self._twins.append(twin)
            twin._linked = self._linked
        return twin

    @property
    def twins(self) -> list[MemorySession]:
        """The sessions opened by ``sibling`` that are not closed."""
        return [t for t in self._twins if t._sid is not None]

    def start(self) -> MemorySession:
        out: list[_Call] = []
        with self._lock:
            if self._state == LOST:
                if not self._linked:
                    raise CoordinationError("cannot reach the ensemble: the link is cut")
                self._new_session(out)
        self.ensemble._deliver(out)
        return self

    def close(self) -> None:
        out: list[_Call] = []
        with self._lock:
            self._persistent.clear()
            if self._sid is not None:
                self.ensemble._expire(self._sid, out)
                self._learn_expired(out, reconnect=False)
        self.ensemble._deliver(out)

    @property
    def state(self) -> str:
        return self._state

    @property
    def generation(self) -> int:
        return self._gen

    @property
    def session_id(self) -> int | None:
        return self._sid

    @property
    def negotiated_timeout(self) -> float:
        return self._timeout

    @property
    def operation_timeout(self) -> float:
        return self._op_timeout

    def add_listener(self, fn: Callable[[str], None]) -> None:
        with self._lock:
            self._listeners.append(fn)

    # -- fault controls ------------------------------------------------------------------
    def expire(self) -> None:
        """The server expires this session now; a linked client learns at once (LOST, then a new session)."""
        def step(out: list[_Call]) -> None:
            if self._sid is not None:
                self.ensemble._expire(self._sid, out)
                if self._linked:
                    self._learn_expired(out, reconnect=self.auto_reconnect)
        self._control(step)

    def disconnect(self) -> None:
        """Cut the link (SUSPENDED; calls raise SessionLostError).  The session expires if the clock
        passes its timeout before ``reconnect``."""
        def step(out: list[_Call]) -> None:
            for session in (self, *self.twins):
                session._cut(out, math.inf)
        self._control(step)

    def reconnect(self) -> None:
        """Restore the link: the same session if it is still alive, else LOST and a new one."""
        def step(out: list[_Call]) -> None:
            for session in (self, *self.twins):
                session._relink(out)
        self._control(step)

    partition = disconnect
    heal = reconnect

    def lose_next_reply(self, n: int = 1, op: str | None = None, suspended_for: float | None = 0.0) -> None:
        """The next ``n`` writes (of kind ``op``: create, set, delete, commit) are applied but answer
        SessionLostError: the link drops after the request left.  The client reconnects to the same
        session at once (``suspended_for`` 0), after that many seconds of ``ensemble.advance``, or on
        ``reconnect()`` (None)."""
        if op not in (None, *WRITES):
            raise ValueError(f"op must be one of {WRITES}, not {op!r}")
        with self._lock:
            self._lose.append([n, op, math.inf if suspended_for is None else suspended_for])

    def fail_next(self, n: int, exc: BaseException, op: str | None = None) -> None:
        """The next ``n`` calls (of kind ``op``, e.g. 'get', 'children', 'create') raise ``exc`` unapplied."""
        with self._lock:
            self._fail.append([n, op, exc])

    # -- reads -----------------------------------------------------------------------------
    def get(self, path: str, watch: Watcher | None = None) -> tuple[bytes, Stat] | None:
        node = self._call("get", lambda out: self._read(path, watch))
        return None if node is None else (node.data, node.stat())

    def exists(self, path: str, watch: Watcher | None = None) -> Stat | None:
        node = self._call("exists", lambda out: self._read(path, watch))
        return None if node is None else node.stat()

    def _read(self, path: str, watch: Watcher | None) -> _Znode | None:
        node = self.ensemble._node(path)
        if watch is not None:
            self.ensemble._watch(self.ensemble._dwatch, path, self._current_sid(), watch)
        return None if node is None else node.copy()

    def children(self, path: str, watch: Watcher | None = None) -> list[str]:
        return self._children_or_none(path, watch) or []

    def _children_or_none(self, path: str, watch: Watcher | None) -> list[str] | None:
        def body(out: list[_Call]) -> list[str] | None:
            node = self.ensemble._node(path)
            if node is None:
                return None
            if watch is not None:
                self.ensemble._watch(self.ensemble._cwatch, path, self._current_sid(), watch)
            return list(reversed(node.children))
        return self._call("children", body)

    def tally(self, path: str, watch: Watcher | None = None) -> tuple[int, Stat | None]:
        def body(out: list[_Call]) -> tuple[int, Stat | None]:
            prefix = path.rstrip("/") + "/"
            below = sum(1 for p in self.ensemble._tree if p.startswith(prefix))
            node = self._read(path, watch)
            return (below, node.stat()) if node is not None else (0, None)
        return self._call("tally", body)

    # -- writes ----------------------------------------------------------------------------
    def create(self, path: str, data: bytes = b"", *, ephemeral: bool = False, sequence: bool = False,
               makepath: bool = False, acl: Sequence[Acl] | None = None) -> str:  # ACLs: not modelled
        def body(out: list[_Call]) -> str:
            ops: list[Op] = [Create(p) for p in self.ensemble._missing(path, include_self=False)] if makepath else []
            ops.append(Create(path, data, ephemeral, sequence))
            return cast(str, self.ensemble._commit(self._current_sid(), ops, out)[-1])  # a Create's result: its path
        return self._call("create", body)

    def set(self, path: str, data: bytes, version: int = -1) -> Stat:
        def body(out: list[_Call]) -> Stat:
            return cast(Stat, self.ensemble._commit(self._current_sid(), [SetData(path, data, version)], out)[0])
        return self._call("set", body)

    def delete(self, path: str, version: int = -1) -> None:
        self._call("delete", lambda out: self.ensemble._commit(self._current_sid(), [Delete(path, version)], out))

    def ensure_path(self, path: str) -> None:
        def body(out: list[_Call]) -> None:
            _check_path(path)
            ops: list[Op] = [Create(p) for p in self.ensemble._missing(path, include_self=True)]
            self.ensemble._commit(self._current_sid(), ops, out)
        self._call("create", body)

    def commit(self, ops: Sequence[Op]) -> list[str | Stat | None]:
        return self._call("commit", lambda out: self.ensemble._commit(self._current_sid(), list(ops), out))

    # -- persistent watches ------------------------------------------------------------------
    def watch_children(self, path: str, callback: Callable[[list[str]], Any]) -> None:
        self.ensure_path(path)
        self._add_persistent(_PersistentWatch(self, path, callback, children=True))

    def watch_data(self, path: str, callback: Callable[[bytes | None], bool | None]) -> None:
        self._add_persistent(_PersistentWatch(self, path, callback, children=False))

    def _add_persistent(self, watch: _PersistentWatch) -> None:
        with self._lock:
            self._persistent.append(watch)
        self.ensemble._deliver([(watch.refresh, ())], inline=True)  # "now", in this thread

    # -- internals (the ``out`` lists collect callbacks to run once the lock is released) ---------
    def _current_sid(self) -> int:
        """This client's session id.  A ``_call`` body runs only while CONNECTED, which always has one;
        SessionLostError if a closed or lost session is used anyway."""
        if self._sid is None:
            raise SessionLostError("ZooKeeper session is closed")
        return self._sid

    def _call(self, op: str, body: Callable[[list[_Call]], _T]) -> _T:
        out: list[_Call] = []
        try:
            with self._lock:
                if self._state != CONNECTED:
                    raise SessionLostError(f"ZooKeeper session is {self._state}")
                failure = _take(self._fail, op)
                if failure is not None:
                    raise failure
                suspended_for = _take(self._lose, op) if op in WRITES else None
                if suspended_for is None:
                    return body(out)
                self._cut(out, suspended_for)  # the link drops after the request left
                try:
                    body(out)
                except CoordinationError:
                    pass  # its outcome was in the lost reply
                if suspended_for == 0:
                    self._relink(out)
                raise SessionLostError(f"connection lost before the reply to {op} (it may have been applied)")
        finally:
            self.ensemble._deliver(out)

    def _control(self, step: Callable[[list[_Call]], Any]) -> None:
        out: list[_Call] = []
        with self._lock:
            step(out)
        self.ensemble._deliver(out)

    def _set_state(self, state: str, out: list[_Call]) -> None:
        if state != self._state:
            self._state = state
            out += [(fn, (state,)) for fn in self._listeners]

    def _new_session(self, out: list[_Call]) -> None:
        self._sid, self._timeout = self.ensemble._open(self, self.session_timeout)
        self._gen += 1
        self._set_state(CONNECTED, out)
        out += [(w.refresh, ()) for w in self._persistent]

    def _cut(self, out: list[_Call], suspended_for: float) -> None:
        if self._linked:
            self._linked = False
            self._down_since = self.ensemble.now()
            self._reconnect_at = None if math.isinf(suspended_for) else self._down_since + suspended_for
            if self._sid is not None:
                self._set_state(SUSPENDED, out)

    def _relink(self, out: list[_Call]) -> None:
        if self._linked:
            return
        self._linked, self._reconnect_at = True, None
        if self._sid is None:
            return  # closed, or lost without auto_reconnect: start() makes a new session
        rec = self.ensemble._sessions[self._sid]
        if not rec.alive:
            self._learn_expired(out, reconnect=self.auto_reconnect)
            return
        self._set_state(CONNECTED, out)
        out += [(fn, (kind, path)) for fn, kind, path in rec.held]
        rec.held = []
        out += [(w.refresh, ()) for w in self._persistent]

    def _learn_expired(self, out: list[_Call], *, reconnect: bool) -> None:
        rec = self.ensemble._sessions[self._current_sid()]
        out += [(fn, (SESSION, path)) for fn, _kind, path in rec.held]
        rec.held = []
        self._sid = None
        self._set_state(LOST, out)
        if reconnect:
            self._new_session(out)


def _take(faults: list[list[Any]], op: str) -> Any:
    """Consume one matching fault and return its payload, or None."""
    for fault in faults:
        if fault[1] in (None, op):
            fault[0] -= 1
            if fault[0] <= 0:
                faults.remove(fault)
            return fault[2]
    return None


_UNSET = object()


class _PersistentWatch:
    """A ``watch_children``/``watch_data`` registration: one-shot watches re-armed after each event and
    each reconnection; the callback runs on a changed value or a new session, one call at a time."""

    def __init__(self, session: MemorySession, path: str, callback: Callable[[Any], Any], *, children: bool) -> None:
        self.session, self.path, self.callback, self.children = session, path, callback, children
        self.stopped = False
        self.last: Any = _UNSET
        self.lock = threading.Lock()

    def event(self, kind: str, path: str) -> None:
        if kind != SESSION:  # after an expiry, the new session re-arms it
            self.refresh()

    def refresh(self) -> None:
        with self.lock:
            if self.stopped:
                return
            value: list[str] | bytes | None
            try:
                if self.children:
                    value = self.session._children_or_none(self.path, self.event)
                    if value is None:
                        self.stopped = True  # as kazoo's ChildrenWatch: its node was deleted
                        return
                    key: Any = tuple(value)
                else:
                    got = self.session.get(self.path, self.event)
                    value = None if got is None else got[0]
                    key = None if got is None else (got[1].created, got[1].version)
            except SessionLostError:
                return  # re-armed on reconnection
            key = (self.session.generation, key)
            if key == self.last:
                return
            self.last = key
            if self.callback(value) is False and not self.children:
                self.stopped = True
