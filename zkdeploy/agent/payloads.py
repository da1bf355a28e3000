"""Payloads on this host: fetched, verified, unpacked and pruned beside the decision cycle.

The cycle says which releases each service will need, most important first
(``want``); one worker per service works through that list.  So a slow or
stalled download of one service never holds back the rollout of another,
and a restart whose release is unpacked (``ready``) never waits for any
download.  A payload that failed to fetch or verify is left alone for
``FETCH_RETRY_SECONDS`` and the reason is published for ``status``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from zkdeploy.agent.host import Host
from zkdeploy.agent.presence import Presence
from zkdeploy.agent.releases import Fetcher
from zkdeploy.agent.states import Phase
from zkdeploy.agent.view import View
from zkdeploy.coordination import Store
from zkdeploy.errors import CoordinationError, PayloadError, SignatureError, ZkdeployError
from zkdeploy.model import Release
from zkdeploy.transfer.transport import Transport

if TYPE_CHECKING:
    from zkdeploy.agent.signatures import ReleaseGuard
    from zkdeploy.signing import ReleaseRecord

log = logging.getLogger(__name__)

#: how long a payload that failed to fetch or verify is left alone before the next try
FETCH_RETRY_SECONDS = 30


class Payloads:
    """The releases this host holds, and the workers that fetch the ones it will need.

    With ``threaded=False`` (unit and model-based tests) ``want`` installs at
    once in the caller's thread.
    """

    #: set by the agent when it has trusted keys: every release is checked before it is fetched,
    #: again before it is unpacked, and before a restart into it (zkdeploy.agent.signatures)
    guard: ReleaseGuard | None = None

    def __init__(self, store: Store, host: Host, presence: Presence, transport: Transport,
                 on_ready: Callable[[], None], *, threaded: bool = True, view: View | None = None) -> None:
        self.store = store
        #: cached reads of what is staged (the decision cycle shares it)
        self.view = view or View(store, host.node, host.names, threading.Event())
        self.host = host
        self.presence = presence
        self.transport = transport
        self.on_ready = on_ready
        self.threaded = threaded
        self._cache: dict[tuple[str, str], Release] = {}
        self._failures: dict[tuple[str, str], float] = {}
        self._wanted: dict[str, list[str]] = {s: [] for s in host.names}
        self._cond = threading.Condition()
        self._workers: dict[str, threading.Thread] = {}
        self._stopping = False

    # -- release metadata --------------------------------------------------------
    def release(self, service: str, version: str) -> Release | None:
        """Release metadata, cached: a staged release never changes."""
        key = (service, version)
        if key not in self._cache:
            release = self.store.release(service, version)
            if release is None:
                return None
            self._cache[key] = release
        return self._cache[key]

    def newest(self, service: str) -> str | None:
        """The most recently staged version of ``service`` if it is newer than the one running here."""
        staged = [r for r in (self.release(service, v) for v in self.view.staged_versions(service)) if r]
        if not staged:
            return None
        newest = max(staged, key=lambda r: r.staged_at)
        version = self.presence.local[service].version
        running = self.release(service, version) if version else None
        if running is not None and running.staged_at >= newest.staged_at:
            return None
        return newest.version

    def ready(self, service: str, version: str) -> bool:
        """True when ``version`` is unpacked here (and, with trusted keys, its signed record is still
        accepted: not replaced by a forgery, not older than what this node installed since): a restart
        into it needs no download."""
        return self.host.releases[service].has(version) and self._accepted(service, version)

    def _accepted(self, service: str, version: str) -> bool:
        if self.guard is None:
            return True
        release = self.release(service, version)
        return release is not None and self.guard.allows(release)

    # -- what the cycle wants ----------------------------------------------------
    def want(self, service: str, versions: list[str]) -> None:
        """Replace the list of releases ``service`` will need (most important first)."""
        versions = [v for v in dict.fromkeys(versions) if v]
        if not self.threaded:
            self._wanted[service] = versions
            for version in versions:
                if not self.ready(service, version):
                    self.install(service, version)
            return
        with self._cond:
            if self._wanted.get(service) == versions and service in self._workers:
                return  # as the cycle before: the worker's own timed wait retries what failed
            self._wanted[service] = versions
            if service not in self._workers and not self._stopping:
                worker = threading.Thread(target=self._work, args=(service,), name=f"payloads-{service}",
                                          daemon=True)
                self._workers[service] = worker
                worker.start()
            self._cond.notify_all()

    def close(self, wait: float = 0.0) -> None:
        """Stop the workers after the install in progress; wait up to ``wait`` seconds for them."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            workers = list(self._workers.values())
        deadline = time.monotonic() + wait
        for worker in workers:
            worker.join(max(0.0, deadline - time.monotonic()))

    def _next(self, service: str) -> str | None:
        now = time.monotonic()
        for version in self._wanted[service]:
            failed = self._failures.get((service, version))
            if self.ready(service, version) or (failed is not None and now - failed < FETCH_RETRY_SECONDS):
                continue
            return version
        return None

    def _work(self, service: str) -> None:
        while True:
            with self._cond:
                version = self._next(service)
                while version is None and not self._stopping:
                    self._cond.wait(FETCH_RETRY_SECONDS / 3)
                    version = self._next(service)
                if self._stopping or version is None:  # the wait above ends with a version or when stopping
                    return
            try:
                if self.install(service, version):
                    self.on_ready()
            except ZkdeployError as exc:  # one bad fetch must not end the worker
                log.error("%s@%s: install failed: %s", service, version, exc)
                self._failures[(service, version)] = time.monotonic()
            except Exception:
                log.exception("%s@%s: install failed unexpectedly", service, version)
                self._failures[(service, version)] = time.monotonic()

    # -- installing and pruning -----------------------------------------------------
    def install(self, service: str, version: str) -> bool:
        """Make sure ``version`` is unpacked here, fetching it if it is staged; False if it cannot be."""
        rel_dir = self.host.releases[service]
        if rel_dir.has(version):
            if self._accepted(service, version):
                return True
            self._failures[(service, version)] = time.monotonic()
            return False
        release = self.release(service, version)
        if release is None:
            return False
        checked: list[ReleaseRecord] = []
        fetch: Fetcher = self.transport.fetch
        if self.guard is not None:
            try:
                checked.append(self.guard.check(release))  # before fetching
            except SignatureError as exc:
                self._failures[(service, version)] = time.monotonic()
                self.presence.publish(service, detail=f"refused {version}: {exc}")
                return False
            fetch = self._fetch_then_check(self.guard, checked)
        machine = self.presence.machines[service]
        machine.to_from({Phase.IDLE, Phase.STAGED}, Phase.FETCHING, f"fetching {version}")
        try:
            rel_dir.install(release, fetch)
        except PayloadError as exc:
            log.error("%s@%s: %s (retrying in %ds)", service, version, exc, FETCH_RETRY_SECONDS)
            self._failures[(service, version)] = time.monotonic()
            why = f"cannot fetch {version}: {exc}"
            if not machine.to_from({Phase.FETCHING}, Phase.IDLE, why):
                self.presence.publish(service, detail=why)
            return False
        self._failures.pop((service, version), None)
        if self.guard is not None and checked:
            self.guard.installed(checked[-1])
        try:
            self.store.add_holder(service, version, self.host.node)
        except CoordinationError as exc:
            log.warning("%s@%s: could not announce the payload as held: %s", service, version, exc)
        machine.to_from({Phase.FETCHING}, Phase.STAGED, f"{version} ready")
        self._prune(service)
        return True

    def _fetch_then_check(self, guard: ReleaseGuard, checked: list[ReleaseRecord]) -> Fetcher:
        """The transport's fetch, then the signature check again on a fresh read, before anything is
        unpacked; a payload whose release is refused by then is deleted."""
        def fetch(release: Release, dest: Path) -> Path:
            got = self.transport.fetch(release, dest)
            try:
                checked.append(guard.check(release))
            except SignatureError:
                dest.unlink(missing_ok=True)
                raise
            return got
        return fetch

    def _prune(self, service: str) -> None:
        """Remove the releases beyond the catalog's ``keep_releases``: one change set in the journal,
        one task per release, each recorded before it is removed.

        Never the running release or one the cycle wants.  A prune that cannot
        run now (another change holds the host for more than a few seconds) or
        fails is logged and tried again after the next install; it never fails
        the install that triggered it.
        """
        catalog = self.host.catalog
        if catalog is None or service not in catalog.services:
            return
        rel_dir = self.host.releases[service]
        keep = catalog.services[service].keep_releases
        rel_dir.sweep()

        def protected() -> set[str]:
            return set(self._wanted.get(service, ())) | {v for v in [self.presence.local[service].version] if v}

        if not rel_dir.doomed(keep, protected()):
            return
        wait = 5.0  # a restart holds the host for its whole length; the next install prunes instead
        if not self.host.changing.acquire(timeout=wait):
            log.info("%s: old releases not pruned now: another change holds the host", service)
            return
        try:
            doomed = rel_dir.doomed(keep, protected())  # again, now that no restart can switch releases
            if not doomed:
                return
            with self.host.executor.change_set(
                    f"{service}: remove old release{'s' if len(doomed) > 1 else ''} {', '.join(doomed)} "
                    f"(keep_releases {keep})") as cs:
                for version in doomed:
                    release = self.release(service, version)
                    if release is not None:
                        self.transport.forget(release, rel_dir.payload_path(version))
                    rel_dir.remove_journaled(cs, version)
        except ZkdeployError as exc:  # recorded as a failed change set; the releases left are whole
            log.error("%s: pruning old releases failed: %s (tried again after the next install)", service, exc)
        finally:
            self.host.changing.release()

    def announce_held(self, first: bool) -> None:
        """After a new session: announce every payload this node holds, and seed it (at start)."""
        for service in self.host.services():
            rel_dir = self.host.releases[service]
            for version in rel_dir.installed():
                payload = rel_dir.payload_path(version)
                if not payload.exists():
                    continue
                self.store.add_holder(service, version, self.host.node)
                release = self.release(service, version)
                if first and release is not None:
                    self.transport.reseed(release, payload)
        if not first:
            self.transport.reannounce()
