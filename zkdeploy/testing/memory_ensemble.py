"""The server side of the in-memory ZooKeeper (zkdeploy.testing.memory): one tree of znodes, a
zxid counter, the sessions and their watches, and a manual clock.  ``MemorySession`` is its client;
the guarantees both keep are listed in zkdeploy.testing.memory."""

from __future__ import annotations

import itertools
import logging
import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, TypeVar

from zkdeploy.coordination.session import (
    CHANGED,
    CHILD,
    CREATED,
    DELETED,
    SESSION,
    Check,
    Create,
    Delete,
    Op,
    SetData,
    Stat,
    Watcher,
)
from zkdeploy.errors import (
    BadVersionError,
    CoordinationError,
    NodeExistsError,
    NoNodeError,
    NotEmptyError,
)

if TYPE_CHECKING:
    from zkdeploy.testing.memory import MemorySession

log = logging.getLogger("zkdeploy.testing.memory")

_T = TypeVar("_T")

WRITES = ("create", "set", "delete", "commit")
MAX_DATA = 1024 * 1024  # ZooKeeper's default jute.maxbuffer
_Call = tuple[Callable[..., Any], tuple[Any, ...]]


@dataclass
class _Znode:
    data: bytes
    owner: int = 0
    czxid: int = 0
    version: int = 0
    seq: int = 0  # child creations so far: the next sequential suffix
    children: dict[str, None] = field(default_factory=dict)  # an insertion-ordered set
    modified: float = field(default_factory=time.time)  # last data write (wall clock, as mtime)

    def copy(self) -> _Znode:
        return replace(self, children=dict(self.children))

    def stat(self) -> Stat:
        return Stat(version=self.version, owner=self.owner, created=self.czxid, children=len(self.children),
                    modified=self.modified)


@dataclass
class _ServerSession:
    client: MemorySession
    timeout: float
    alive: bool = True
    held: list[tuple[Watcher, str, str]] = field(default_factory=list)  # (fn, kind, path) due while unlinked


def _parent(path: str) -> str:
    return path.rsplit("/", 1)[0] or "/"


def _check_path(path: str) -> None:
    if not path.startswith("/") or "//" in path or "\x00" in path or (path != "/" and path.endswith("/")):
        raise CoordinationError(f"invalid znode path {path!r}")


class MemoryEnsemble:
    """The server side: a znode tree, sessions, watches and a manual clock.  Thread-safe (one lock)."""

    def __init__(self, *, tick: float = 2.0, min_session_timeout: float | None = None,
                 max_session_timeout: float | None = None, deliver: str = "sync") -> None:
        if deliver not in ("sync", "thread"):
            raise ValueError(f"deliver must be 'sync' or 'thread', not {deliver!r}")
        self.min_session_timeout = 2 * tick if min_session_timeout is None else min_session_timeout
        self.max_session_timeout = 20 * tick if max_session_timeout is None else max_session_timeout
        self.lock = threading.Lock()
        self.callback_errors: list[BaseException] = []
        self._tree: dict[str, _Znode] = {"/": _Znode(b"")}
        self._zxid = 0
        self._clock = 0.0
        self._ids = itertools.count(0x1001)
        self._sessions: dict[int, _ServerSession] = {}
        self._clients: list[MemorySession] = []
        self._dwatch: dict[str, list[tuple[int, Watcher]]] = {}  # data and existence watches
        self._cwatch: dict[str, list[tuple[int, Watcher]]] = {}  # child watches
        self._local = threading.local()
        self._queue: queue.Queue[list[_Call] | None] | None = None
        self._thread: threading.Thread | None = None
        if deliver == "thread":
            self._queue = queue.Queue()
            self._thread = threading.Thread(target=self._dispatch, name="memory-zk-events", daemon=True)
            self._thread.start()

    # -- for assertions and for driving time -----------------------------------------
    def now(self) -> float:
        return self._clock

    def advance(self, dt: float) -> None:
        """Move the clock: sessions unlinked for longer than their timeout expire; scheduled reconnects happen."""
        out: list[_Call] = []
        with self.lock:
            self._clock += dt
            for client in list(self._clients):
                if client._linked:
                    continue
                sid = client._sid
                rec = self._sessions.get(sid) if sid is not None else None
                back = client._reconnect_at if client._reconnect_at is not None else math.inf
                expired = rec is not None and rec.alive and client._down_since + rec.timeout <= min(self._clock, back)
                if sid is not None and expired:
                    self._expire(sid, out)
                if back <= self._clock:
                    client._relink(out)
        self._deliver(out)

    def dump(self) -> dict[str, tuple[bytes, int]]:
        """Every znode but the root, sorted by path: path -> (data, owner session id or 0)."""
        with self.lock:
            return {p: (n.data, n.owner) for p, n in sorted(self._tree.items()) if p != "/"}

    def ephemerals(self, session_id: int) -> list[str]:
        with self.lock:
            return sorted(p for p, n in self._tree.items() if n.owner == session_id)

    def sessions_alive(self) -> list[int]:
        with self.lock:
            return sorted(sid for sid, rec in self._sessions.items() if rec.alive)

    def settle(self, timeout: float = 5.0) -> None:
        """Wait until the dispatcher thread has delivered every queued event (no-op when synchronous)."""
        if self._queue is not None:
            done = threading.Event()
            self._queue.put([(done.set, ())])
            if not done.wait(timeout):
                raise CoordinationError(f"watch callbacks still running after {timeout}s")

    def close(self) -> None:
        """Stop the dispatcher thread, if any."""
        if self._queue is not None and self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=5.0)

    # -- delivery (always called without the lock) ----------------------------------
    def _deliver(self, calls: list[_Call], inline: bool = False) -> None:
        if not calls:
            return
        if self._queue is not None and not inline:
            self._queue.put(list(calls))
            return
        pending: deque[_Call] | None = getattr(self._local, "pending", None)
        if pending is not None:  # this thread is already delivering: queue behind, never re-enter
            pending.extend(calls)
            return
        self._local.pending = pending = deque(calls)
        try:
            while pending:
                self._run(*pending.popleft())
        finally:
            self._local.pending = None

    def _dispatch(self) -> None:
        assert self._queue is not None
        while (batch := self._queue.get()) is not None:
            for fn, args in batch:
                self._run(fn, args)

    def _run(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        try:
            fn(*args)
        except Exception as exc:  # an event loop's boundary: kazoo logs callback errors too
            log.exception("watch or listener callback %r failed", fn)
            self.callback_errors.append(exc)

    # -- server primitives (called with the lock held) ---------------------------------
    def _open(self, client: MemorySession, asked: float) -> tuple[int, float]:
        sid = next(self._ids)
        timeout = min(max(asked, self.min_session_timeout), self.max_session_timeout)
        self._sessions[sid] = _ServerSession(client, timeout)
        return sid, timeout

    def _node(self, path: str) -> _Znode | None:
        _check_path(path)
        return self._tree.get(path)

    def _watch(self, table: dict[str, list[tuple[int, Watcher]]], path: str, sid: int, fn: Watcher) -> None:
        entries = table.setdefault(path, [])
        if (sid, fn) not in entries:  # ZooKeeper keeps one registration per watcher and path
            entries.append((sid, fn))

    def _missing(self, path: str, *, include_self: bool) -> list[str]:
        parts = path.split("/")[1:] if include_self else path.split("/")[1:-1]
        prefixes = ["/" + "/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        return [p for p in prefixes if p not in self._tree]

    def _commit(self, sid: int, ops: Sequence[Op], out: list[_Call]) -> list[str | Stat | None]:
        """Apply ``ops`` all or none under one zxid, then fire the watches they trigger."""
        undo: dict[str, _Znode | None] = {}
        events: list[tuple[str, str]] = []
        zxid = self._zxid + 1
        try:
            results = [self._op(sid, op, zxid, undo, events) for op in ops]
        except CoordinationError:
            for path, old in undo.items():
                if old is None:
                    self._tree.pop(path, None)
                else:
                    self._tree[path] = old
            raise
        self._zxid = zxid
        for path, kind in events:
            self._fire(path, kind, out)
        return results

    def _op(self, sid: int, op: Op, zxid: int, undo: dict[str, _Znode | None],
            events: list[tuple[str, str]]) -> str | Stat | None:
        def save(p: str) -> None:
            if p not in undo:
                node = self._tree.get(p)
                undo[p] = None if node is None else node.copy()

        if isinstance(op, Create):
            _check_path(op.path + "0" if op.sequence else op.path)
            _check_data(op.data)
            parent_path = _parent(op.path)
            parent = self._tree.get(parent_path)
            if parent is None:
                raise NoNodeError(f"{op.path}: parent {parent_path} does not exist")
            path = op.path + f"{parent.seq:010d}" if op.sequence else op.path
            if path in self._tree:
                raise NodeExistsError(f"{path} already exists")
            if parent.owner:
                raise CoordinationError(f"{parent_path} is ephemeral: it may not have children")
            save(parent_path)
            save(path)
            self._tree[path] = _Znode(op.data, owner=sid if op.ephemeral else 0, czxid=zxid)
            parent.children[path.rsplit("/", 1)[1]] = None
            parent.seq += 1
            events += [(path, CREATED), (parent_path, CHILD)]
            return path
        node = self._node(op.path)
        if node is None:
            raise NoNodeError(f"{op.path} does not exist")
        if op.version not in (-1, node.version):
            raise BadVersionError(f"{op.path} is at version {node.version}, not {op.version}")
        if isinstance(op, Check):
            return None
        if isinstance(op, SetData):
            _check_data(op.data)
            save(op.path)
            node.data, node.version, node.modified = op.data, node.version + 1, time.time()
            events.append((op.path, CHANGED))
            return node.stat()
        if op.path == "/":
            raise CoordinationError("the root znode cannot be deleted")
        if node.children:
            raise NotEmptyError(f"{op.path} has children")
        parent_path = _parent(op.path)
        save(op.path)
        save(parent_path)
        del self._tree[op.path]
        del self._tree[parent_path].children[op.path.rsplit("/", 1)[1]]
        events += [(op.path, DELETED), (parent_path, CHILD)]
        return None

    def _fire(self, path: str, kind: str, out: list[_Call]) -> None:
        tables = {CREATED: (self._dwatch,), CHANGED: (self._dwatch,), CHILD: (self._cwatch,),
                  DELETED: (self._dwatch, self._cwatch)}[kind]
        targets: list[tuple[int, Watcher]] = []
        for table in tables:
            targets += [t for t in table.pop(path, []) if t not in targets]
        for sid, fn in targets:
            rec = self._sessions.get(sid)
            if rec is None or not rec.alive:
                continue
            if rec.client._linked:
                out.append((fn, (kind, path)))
            else:
                rec.held.append((fn, kind, path))

    def _expire(self, sid: int, out: list[_Call]) -> None:
        """End session ``sid`` on the server: its ephemeral nodes go (one transaction, firing watches)."""
        rec = self._sessions[sid]
        if not rec.alive:
            return
        rec.alive = False
        orphans = [(fn, SESSION, path) for fn, _kind, path in rec.held]
        for table in (self._dwatch, self._cwatch):
            for path, entries in list(table.items()):
                orphans += [(fn, SESSION, path) for s, fn in entries if s == sid]
                table[path] = [e for e in entries if e[0] != sid]
                if not table[path]:
                    del table[path]
        rec.held = orphans  # told to the client when it learns of the expiry
        doomed = [Delete(p) for p, n in self._tree.items() if n.owner == sid]
        if doomed:
            self._commit(0, doomed, out)


def _check_data(data: bytes) -> None:
    if not isinstance(data, bytes):
        raise TypeError(f"znode data must be bytes, not {type(data).__name__}")
    if len(data) > MAX_DATA:
        raise CoordinationError(f"znode data of {len(data)} bytes exceeds ZooKeeper's {MAX_DATA}")
