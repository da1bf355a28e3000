"""A ``Session`` that counts what goes through it: requests, watch notifications, bytes read, time.

``CountingSession`` wraps any other session (a ``ZooKeeperSession`` in the
scale benchmark) and passes every call through unchanged (a
``ForwardingSession`` that overrides the calls it counts); the ``Store``
above it cannot tell the difference.  What it counts, per operation kind:

- a request for every primitive call (get, children, exists, create, set,
  delete, ensure_path, commit, ACL calls), with the wall time it took;
- for a persistent watch (``watch_children``, ``watch_data``): setting it is
  one request (its initial read); every later call of its callback is one
  notification plus the one read that the client library makes to re-arm
  it (a request of kind ``rewatch``);
- a notification for every one-shot watch that fires;
- bytes read: the data of every ``get``, the names of every ``children``.

``ensure_path`` and ``commit`` count as one request each (kazoo may need
more round trips for an ``ensure_path`` of a missing path).  ``on_call`` and
``on_notify`` let a benchmark keep a timeline (e.g. when a /current entry
went online, how long a watch took to arrive after the write).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from zkdeploy.coordination.session import Acl, Decision, ForwardingSession, Op, Session, Stat, Watcher

#: ``on_call(kind, path, data, started, ended)`` after each request (data: what was written, or b"")
CallHook = Callable[[str, str, bytes, float, float], None]
#: ``on_notify(kind, path, when)`` when a watch is delivered
NotifyHook = Callable[[str, str, float], None]


class Counts:
    """Thread-safe counters: requests and seconds by kind, notifications, bytes read."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[str] = Counter()
        self.seconds: dict[str, float] = defaultdict(float)
        self.notifications = 0
        self.bytes_read = 0

    def request(self, kind: str, seconds: float, read: int = 0) -> None:
        with self._lock:
            self.requests[kind] += 1
            self.seconds[kind] += seconds
            self.bytes_read += read

    def read(self, size: int) -> None:
        with self._lock:
            self.bytes_read += size

    def notify(self, read: int = 0) -> None:
        with self._lock:
            self.notifications += 1
            self.bytes_read += read

    def snapshot(self) -> dict[str, Any]:
        """A copy as plain data (picklable)."""
        with self._lock:
            return {"requests": dict(self.requests), "seconds": dict(self.seconds),
                    "notifications": self.notifications, "bytes_read": self.bytes_read}

    @staticmethod
    def delta(after: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
        """What happened between two snapshots."""
        return {"requests": {k: v - before["requests"].get(k, 0) for k, v in after["requests"].items()},
                "seconds": {k: v - before["seconds"].get(k, 0.0) for k, v in after["seconds"].items()},
                "notifications": after["notifications"] - before["notifications"],
                "bytes_read": after["bytes_read"] - before["bytes_read"]}

    @staticmethod
    def total(snapshot: dict[str, Any]) -> int:
        return int(sum(snapshot["requests"].values()))


class CountingSession(ForwardingSession):
    """Every call of ``inner``, counted in ``counts`` (shared between sessions if given)."""

    def __init__(self, inner: Session, counts: Counts | None = None, *, on_call: CallHook | None = None,
                 on_notify: NotifyHook | None = None) -> None:
        super().__init__(inner)
        self.counts = counts or Counts()
        self.on_call = on_call
        self.on_notify = on_notify

    # -- bookkeeping -----------------------------------------------------------
    def _timed(self, kind: str, path: str, fn: Callable[[], Any], data: bytes = b"",
               read: Callable[[Any], int] = lambda _r: 0) -> Any:
        started = time.monotonic()
        wall = time.time()
        try:
            result = fn()
        finally:
            elapsed = time.monotonic() - started
            self.counts.request(kind, elapsed)
        self.counts.read(read(result))
        if self.on_call is not None:
            self.on_call(kind, path, data, wall, wall + elapsed)
        return result

    def _watcher(self, watch: Watcher | None) -> Watcher | None:
        """``watch``, counted: one wrapper per watch function and session (kept on the function), so
        that a node read again with the same watch is watched, and counted, once."""
        if watch is None:
            return None
        kept = getattr(watch, "_counted", None)
        if kept is not None and kept[0] is self:
            return kept[1]  # type: ignore[no-any-return]

        def fire(kind: str, path: str) -> Any:
            self.counts.notify()
            if self.on_notify is not None:
                self.on_notify(kind, path, time.time())
            return watch(kind, path)
        with contextlib.suppress(AttributeError):  # a bound method cannot keep it: a wrapper per call
            watch._counted = (self, fire)  # type: ignore[attr-defined]
        return fire

    def start(self) -> CountingSession:
        self.inner.start()
        return self

    def sibling(self) -> CountingSession:
        """A session of its own (a place in a restart queue), counted in the same ``counts``."""
        return CountingSession(self.inner.sibling(), self.counts, on_call=self.on_call, on_notify=self.on_notify)

    # -- reads ---------------------------------------------------------------------------
    def get(self, path: str, watch: Watcher | None = None) -> tuple[bytes, Stat] | None:
        return self._timed("get", path, lambda: self.inner.get(path, self._watcher(watch)),  # type: ignore[no-any-return]
                           read=lambda r: len(r[0]) if r else 0)

    def children(self, path: str, watch: Watcher | None = None) -> list[str]:
        return self._timed("children", path,  # type: ignore[no-any-return]
                           lambda: self.inner.children(path, self._watcher(watch)),
                           read=lambda r: sum(len(c) for c in r))

    def get_all(self, paths: Sequence[str], watch: Watcher | None = None) -> list[tuple[bytes, Stat] | None]:
        """Counted as one ``get`` request per path (they are sent together: one round trip)."""
        if not paths:
            return []

        def size(results: list[tuple[bytes, Stat] | None]) -> int:
            return sum(len(r[0]) for r in results if r)

        results: list[tuple[bytes, Stat] | None] = self._timed("get", paths[0],
                                                               lambda: self.inner.get_all(paths, self._watcher(watch)),
                                                               read=size)
        for path in paths[1:]:
            self._timed("get", path, lambda: None)  # answered by the same round trip
        return results

    def children_all(self, paths: Sequence[str], watch: Watcher | None = None) -> list[list[str]]:
        """Counted as one ``children`` request per path (they are sent together: one round trip)."""
        if not paths:
            return []

        def size(results: list[list[str]]) -> int:
            return sum(len(name) for names in results for name in names)

        results: list[list[str]] = self._timed("children", paths[0],
                                               lambda: self.inner.children_all(paths, self._watcher(watch)), read=size)
        for path in paths[1:]:
            self._timed("children", path, lambda: None)  # answered by the same round trip
        return results

    def read_decision(self, names: Sequence[str], counted: str, records: Sequence[str],
                      watch: Watcher | None = None) -> Decision:
        """Counted as one request per path read (``children`` of each name path, the ``tally``, a
        ``get`` of each record), all answered by the same round trip."""
        def size(result: Decision) -> int:
            children, _tally, read = result
            return sum(len(n) for ns in children for n in ns) + sum(len(r[0]) for r in read if r)

        reads = [("children", p) for p in names] + [("tally", counted)] + [("get", p) for p in records]
        result: Decision = self._timed(reads[0][0], reads[0][1], lambda: self.inner.read_decision(
            names, counted, records, self._watcher(watch)), read=size)
        for kind, path in reads[1:]:
            self._timed(kind, path, lambda: None)  # answered by the same round trip
        return result

    def exists(self, path: str, watch: Watcher | None = None) -> Stat | None:
        return self._timed("exists", path, lambda: self.inner.exists(path, self._watcher(watch)))  # type: ignore[no-any-return]

    # -- writes ------------------------------------------------------------------------
    def create(self, path: str, data: bytes = b"", *, ephemeral: bool = False, sequence: bool = False,
               makepath: bool = False, acl: Sequence[Acl] | None = None) -> str:
        return self._timed("create", path, lambda: self.inner.create(  # type: ignore[no-any-return]
            path, data, ephemeral=ephemeral, sequence=sequence, makepath=makepath, acl=acl), data)

    def create_and_list(self, path: str, data: bytes = b"", *, ephemeral: bool = False, sequence: bool = False,
                        acl: Sequence[Acl] | None = None) -> tuple[str, list[str]]:
        """Counted as a ``create`` and a ``children`` request, answered by the same round trip."""
        result: tuple[str, list[str]] = self._timed("create", path, lambda: self.inner.create_and_list(
            path, data, ephemeral=ephemeral, sequence=sequence, acl=acl), data,
            read=lambda r: sum(len(n) for n in r[1]))
        self._timed("children", path.rsplit("/", 1)[0], lambda: None)  # answered by the same round trip
        return result

    def set(self, path: str, data: bytes, version: int = -1) -> Stat:
        return self._timed("set", path, lambda: self.inner.set(path, data, version), data)  # type: ignore[no-any-return]

    def delete(self, path: str, version: int = -1) -> None:
        self._timed("delete", path, lambda: self.inner.delete(path, version))

    def ensure_path(self, path: str) -> None:
        self._timed("ensure_path", path, lambda: self.inner.ensure_path(path))

    def get_acl(self, path: str) -> tuple[list[Acl], Stat] | None:
        return self._timed("get_acl", path, lambda: self.inner.get_acl(path))  # type: ignore[no-any-return]

    def set_acl(self, path: str, acl: Sequence[Acl], version: int = -1) -> None:
        self._timed("set_acl", path, lambda: self.inner.set_acl(path, acl, version))

    def commit(self, ops: Sequence[Op]) -> list[str | Stat | None]:
        data = b"".join(getattr(op, "data", b"") for op in ops)
        return self._timed("commit", ops[0].path if ops else "",  # type: ignore[no-any-return]
                           lambda: self.inner.commit(ops), data)

    # -- persistent watches ------------------------------------------------------------------
    def watch_children(self, path: str, callback: Callable[[list[str]], Any]) -> None:
        first = [True]

        def relay(children: list[str]) -> Any:
            size = sum(len(c) for c in children)
            if first[0]:  # the initial read, counted with the call that set the watch
                first[0] = False
                self.counts.read(size)
            else:
                self.counts.notify()
                self.counts.request("rewatch", 0.0, size)
                if self.on_notify is not None:
                    self.on_notify("child", path, time.time())
            return callback(children)

        self._timed("watch_children", path, lambda: self.inner.watch_children(path, relay))

    def watch_data(self, path: str, callback: Callable[[bytes | None], bool | None]) -> None:
        first = [True]

        def relay(data: bytes | None) -> bool | None:
            size = len(data or b"")
            if first[0]:  # the initial read, counted with the call that set the watch
                first[0] = False
                self.counts.read(size)
            else:
                self.counts.notify()
                self.counts.request("rewatch", 0.0, size)
                if self.on_notify is not None:
                    self.on_notify("changed", path, time.time())
            return callback(data)

        self._timed("watch_data", path, lambda: self.inner.watch_data(path, relay))
