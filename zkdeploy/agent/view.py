"""What the decision cycle reads of the coordination store, cached until a watch says it changed.

An idle agent used to re-read the catalog, the killswitch, every open deploy
entry, each service's staged releases, marks and pin on every cycle: a few
requests per agent per cycle, which at datacenter size is a steady load on
the ensemble for nothing.  ``View`` reads each of those once and again only
after its watch fired (the watch also wakes the cycle).  A new session marks
everything stale (watches may have been missed while the link was down), and
so does ``REFRESH`` seconds passing, as a safety net.  Each View starts that
period at a random phase: a fleet whose agents started together would
otherwise re-read everything together, a burst of N x 9 requests every period.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Collection
from typing import Any

from zkdeploy.coordination import Store
from zkdeploy.model import DeployEntry, Killswitch, Mark, Pin

#: seconds after which every cached read is made again even if no watch fired.  Only a safety
#: net: a watch is kept across reconnections within a session, and a new session marks
#: everything stale at once; at 500 agents a 30 s period was a fifth of their requests.
REFRESH = 120.0


class View:
    """Cached reads of the catalog, killswitch, deploy queue, and each service's releases, marks and pin."""

    def __init__(self, store: Store, node: str, services: Collection[str], wake: threading.Event) -> None:
        self.store = store
        self.node = node
        self.services = tuple(services)
        self.wake = wake
        self._lock = threading.Lock()
        self._stale: set[str] = set()
        self._cache: dict[str, Any] = {}
        self._refreshed = time.monotonic() - random.uniform(0.0, REFRESH)  # a random phase (above)
        self._registered: set[str] = set()  # keys whose watch is registered
        self._watchers: dict[str, Callable[..., None]] = {}
        self._started = False

    # -- invalidation ----------------------------------------------------------
    def start(self) -> None:
        """Leave the watches, each once; each marks its part stale and wakes the cycle.  A watch
        whose registration failed (a connection loss) is registered at the next call, and what it
        covers is read afresh until then."""
        if self._started:
            return
        plan: list[tuple[str, Callable[[], None]]] = [
            ("catalog", lambda: self.store.watch_catalog(self._on("catalog"))),
            ("killswitch", lambda: self.store.watch_killswitch(self._on("killswitch"))),
        ]
        for service in self.services:
            plan += [(f"staged:{service}", self._registrar(self.store.watch_releases, service, "staged")),
                     (f"marks:{service}", self._registrar(self.store.watch_marks, service, "marks")),
                     (f"pin:{service}", self._registrar(
                         lambda s, fn: self.store.watch_pin(self.node, s, fn), service, "pin")),
                     (f"present:{service}", self._registrar(self.store.watch_current_nodes, service, "present"))]
        if "session" not in self._registered:
            self.store.on_session_change(lambda _state: self.invalidate(None))
            self._registered.add("session")
        for key, register in plan:
            if key not in self._registered:
                register()  # may raise: the keys registered so far stay registered
                self._registered.add(key)
        self._started = True

    def _registrar(self, watch: Callable[[str, Callable[..., None]], None], service: str,
                   kind: str) -> Callable[[], None]:
        def register() -> None:
            watch(service, self._on(f"{kind}:{service}"))
        return register

    def _watched_key(self, key: str) -> bool:
        return self._started or key in self._registered

    def _on(self, key: str) -> Callable[..., None]:
        """The watch of ``key``: one callable per key, so that reading a node again while its
        watch is still armed adds no second watch on it (the client keeps each callable once)."""
        changed = self._watchers.get(key)
        if changed is None:
            def changed(*_: Any) -> None:
                with self._lock:
                    self._stale.add(key)
                self.wake.set()
            self._watchers[key] = changed
        return changed

    def invalidate(self, key: str | None = None) -> None:
        """Mark ``key`` (None: everything read so far) stale and wake the cycle."""
        with self._lock:
            if key is None:
                self._stale.update(self._cache)
            else:
                self._stale.add(key)
        self.wake.set()

    def _take(self, key: str) -> bool:
        """Whether ``key`` must be read again; clears its stale mark first, so a watch that fires
        during the read marks it stale again and the next cycle reads it once more."""
        with self._lock:
            if time.monotonic() - self._refreshed > REFRESH:
                self._stale.update(self._cache)
                self._refreshed = time.monotonic()
            stale = key in self._stale or key not in self._cache or not self._watched_key(key)
            self._stale.discard(key)
        return stale

    def _fresh(self, key: str, read: Callable[[], Any]) -> Any:
        if self._take(key):
            try:
                self._cache[key] = read()
            except BaseException:
                self._cache.pop(key, None)
                raise
        return self._cache[key]

    # -- the reads ---------------------------------------------------------------
    def catalog(self) -> tuple[dict[str, Any] | None, int]:
        result: tuple[dict[str, Any] | None, int] = self._fresh("catalog", self.store.catalog)
        return result

    def killswitch(self) -> Killswitch | None:
        result: Killswitch | None = self._fresh("killswitch", self.store.killswitch)
        return result

    def deploys(self, skip: Collection[str]) -> list[DeployEntry]:
        """The deploy entries but those in ``skip`` (closed ones, never read again).  The reads leave
        one-shot watches on the queue and on each entry read, so a new entry, or a change of an open
        one's state (paused, halted, done), is seen at once: two requests per node for a new
        deploy, where standing watches on the queue and on each entry took four."""
        entries: list[DeployEntry] = self._fresh(
            "deploys", lambda: self.store.deploys(skip=skip, changed=self._on("deploys")))
        return entries

    def failures(self, entry: DeployEntry) -> dict[str, dict[str, Any]]:
        """The failures nodes reported on ``entry`` but not yet folded into it (node -> report),
        re-read when one more is reported: each read leaves a one-shot watch on the entry's failures
        parent (one request per new deploy per node, where a standing watch took three)."""
        key = f"failures:{entry.failures_key}"
        folded = {str(f.get("node")) for f in entry.failures}
        reports: dict[str, dict[str, Any]] = self._fresh(
            key, lambda: self.store.failure_reports(entry, changed=self._on(key)))
        return {n: r for n, r in reports.items() if n not in folded}

    def staged_versions(self, service: str) -> list[str]:
        result: list[str] = self._fresh(f"staged:{service}", lambda: self.store.staged_versions(service))
        return result

    def marks(self, service: str, skip: Collection[str]) -> dict[str, Mark]:
        """New mark records of ``service`` (not in ``skip``) when its marks changed, else {}."""
        key = f"marks:{service}"
        if not self._take(key):
            return {}
        try:
            marks = self.store.marks(service, skip=skip)
        except BaseException:
            self._cache.pop(key, None)
            raise
        self._cache[key] = True
        return marks

    def current_nodes(self, service: str) -> list[str]:
        """The nodes present in /current/<service> (names only), re-read when one joins or leaves."""
        result: list[str] = self._fresh(f"present:{service}", lambda: self.store.current_nodes(service))
        return result

    def pin(self, service: str) -> Pin | None:
        result: Pin | None = self._fresh(f"pin:{service}", lambda: self.store.pin(self.node, service))
        return result
