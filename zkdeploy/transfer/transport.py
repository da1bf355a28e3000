"""How the agent gets a release's payload onto this host.

A release staged with a torrent comes from the swarm: every agent is a peer,
ZooKeeper is the tracker (``/dc/swarm/<info-hash>/<node>``), and peers in the
same rack, then the same datacenter, are preferred.  When no peer served a
byte for ``stall_timeout`` seconds (or the release has no torrent) the
payload comes from its origin, the path or URL recorded at staging, and the
agent says so.  Either way the caller receives a file whose SHA-256 matched
the release and whose bytes are on disk (fsynced before it got its name, its
directory after), and the agent keeps seeding what it holds.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from zkdeploy.config.schema import AgentConfig
from zkdeploy.coordination import CONNECTED, Store
from zkdeploy.errors import CoordinationError, PayloadError
from zkdeploy.fsutil import fsync_dir, fsync_file
from zkdeploy.model import Release
from zkdeploy.transfer.fetch import fetch
from zkdeploy.transfer.metainfo import TorrentMeta, load_metainfo
from zkdeploy.transfer.swarm_config import SwarmConfig, SwarmStalled, TransferStatus
from zkdeploy.transfer.swarm_process import SwarmProcess

log = logging.getLogger(__name__)

TORRENT_BLOB = "torrent"
PORT_WAIT_SECONDS = 15.0  # for the port of a previous life's worker, still closing, to be free
WAKE_HOLDERS = 3  # holders a fetcher wakes when none is seeding: enough to share the upload, not a herd


class PayloadCounter(Protocol):
    """Counts verified payload bytes by source (``swarm``, ``origin``), and the swarm worker's starts
    and stops: zkdeploy.agent.metrics.Metrics."""

    def payload_fetched(self, source: str, size: int) -> None: ...

    def swarm_worker_changed(self, running: bool, reason: str = "") -> None: ...


def peer_order(peers: dict[str, dict[str, Any]], me: str, rack: str | None, dc: str | None,
               limit: int) -> list[tuple[str, int]]:
    """The endpoints to connect to: same rack first, then same datacenter, then the rest;
    complete peers before incomplete ones within each group; at most ``limit``."""
    def rank(item: tuple[str, dict[str, Any]]) -> tuple[int, int, str]:
        node, peer = item
        near = 0 if rack and peer.get("rack") == rack else 1 if dc and peer.get("dc") == dc else 2
        return (near, 0 if peer.get("complete") else 1, node)

    ordered = sorted(((n, p) for n, p in peers.items() if n != me and p.get("port")), key=rank)
    return [(p["address"], int(p["port"])) for _, p in ordered[:limit]]


def wake_order(holders: list[str], me: str) -> list[str]:
    """The holders a fetcher wakes first: a rendezvous hash of (fetcher, holder), so fetchers that
    arrive together wake different holders and each holder is woken by few of them."""
    return sorted(holders, key=lambda h: hashlib.sha256(f"{me}/{h}".encode()).digest())


def _check_port_free(address: str, port: int, wait: float | None = None) -> None:
    """PayloadError if the swarm's ``port`` cannot be bound on ``address`` (checked at start, so a
    misconfigured agent says so then, not at its first fetch).  Tried for ``wait`` seconds: the
    worker of this agent's previous life may still be closing its session."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    deadline = time.monotonic() + (PORT_WAIT_SECONDS if wait is None else wait)
    while True:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((address, port))
                return
            except OSError as exc:
                if time.monotonic() >= deadline:
                    raise PayloadError(f"the swarm cannot listen on {address}:{port}: {exc.strerror or exc} "
                                       "(swarm.listen_port)") from None
        time.sleep(0.5)


class Transport:
    """Fetches and seeds payloads for one agent.

    The swarm session runs in a worker process (``SwarmProcess``) that is started when this node
    fetches a payload or a fetcher wakes it, and stopped when the worker has been idle for
    ``swarm.idle_stop`` seconds.  While it runs, every payload this node holds is seeded and
    announced in the tracker; while it is stopped, the node is still a holder
    (``staging/<s>/<v>/holders``) but has no tracker entry, and a fetcher that finds no complete
    peer wakes a few holders (``Store.wake_seeder``) instead of going to the origin.
    """

    def __init__(self, config: AgentConfig, origin_timeout: float = 30.0,
                 metrics: PayloadCounter | None = None, idle_stop: float | None = None) -> None:
        self.config = config
        self.metrics = metrics  # payload bytes by source, when the agent counts them
        self.node = config.node
        self.data_dir = Path(config.data_dir)
        self.origin_timeout = origin_timeout
        self.idle_stop = config.swarm.idle_stop if idle_stop is None else idle_stop
        self.store: Store | None = None
        self.session: SwarmProcess | None = None
        self._seeding: dict[str, tuple[TorrentMeta, Path]] = {}
        self._fetching = 0
        self._lock = threading.RLock()
        #: the ZooKeeper session the tracker entries live in, open while the worker runs: they go
        #: when it closes, so no agent needs to delete under a swarm's shared parent
        self._tracker: Store | None = None
        self._tracker_generation = -1

    # -- lifecycle ----------------------------------------------------------
    def start(self) -> None:
        """Get the swarm ready (if enabled): the worker starts when first needed.  PayloadError now
        if its port is taken, rather than at the first fetch."""
        settings = self.config.swarm
        if not settings.enabled:
            return
        if settings.listen_port:
            _check_port_free(self.config.address, settings.listen_port)
        self.session = SwarmProcess(SwarmConfig(
            listen_ip=self.config.address, listen_port=settings.listen_port,
            upload_rate_limit=settings.upload_rate_limit, download_rate_limit=settings.download_rate_limit,
            allow_multiple_connections_per_ip=settings.allow_multiple_connections_per_ip),
            idle_stop=self.idle_stop, node=self.node, on_idle=self._idle, on_exit=self._worker_exited)

    def close(self) -> None:
        if self.session is not None:
            self.session.close()
            self.session = None
            if self.metrics is not None:
                self.metrics.swarm_worker_changed(False)
        self._close_tracker()

    def attach(self, store: Store) -> None:
        """Use ``store`` as the tracker.  With ``idle_stop`` 0 the worker never stops, so it starts now
        (PayloadError if it cannot); otherwise it starts when first needed."""
        self.store = store
        if self.session is not None:
            store.watch_wakes(self.node, self._woken)
            if self.idle_stop <= 0:
                self._live("always")

    # -- the swarm worker -----------------------------------------------------------
    def _live(self, reason: str = "fetch") -> SwarmProcess:
        """The running worker, started now if it is not (then seeding all this node holds and
        announcing it); PayloadError if it cannot start.  ``reason``: what starts it (metrics)."""
        with self._lock:
            if self.session is None:
                raise PayloadError("the swarm is closed or disabled")
            if self.session.running:
                return self.session
            self.session.start()
            if self.metrics is not None:
                self.metrics.swarm_worker_changed(True, reason)
            for meta, path in list(self._seeding.values()):
                self._seed_in_worker(meta, path)
            return self.session

    def _seed_in_worker(self, meta: TorrentMeta, path: Path) -> None:
        assert self.session is not None
        try:
            self.session.seed(meta, str(path))
        except PayloadError as exc:
            log.warning("cannot seed %s: %s", path, exc)
            self._seeding.pop(meta.info_hash, None)
            return
        self._announce(meta, complete=True)

    def _woken(self, requests: list[str]) -> None:
        """A fetcher asked this holder to seed: start the worker if it holds what is asked."""
        if not requests or self.store is None:
            return
        threading.Thread(target=self._answer_wakes, name="swarm-wake", daemon=True).start()

    def _answer_wakes(self) -> None:
        store = self.store
        if store is None:
            return
        try:
            asked = store.take_wakes(self.node)
        except CoordinationError as exc:
            log.warning("reading the requests to seed: %s", exc)
            return
        with self._lock:
            held = [h for h in asked if h in self._seeding]
            if not held or self.session is None or self.session.running:
                return
            log.info("a fetcher asked for %s: starting the swarm worker to seed", ", ".join(sorted(set(held))))
            try:
                self._live("wake")
            except PayloadError as exc:
                log.error("cannot start the swarm worker to seed: %s", exc)

    def _idle(self) -> None:
        """The worker has had no download and no peer for ``idle_stop`` seconds: stop it (holders
        stay; their tracker entries go, so a fetcher knows to wake them)."""
        with self._lock:
            if self._fetching or self.session is None or not self.session.running:
                return
            log.info("swarm idle for %gs: stopping its worker (%d payloads held, seeded again on request)",
                     self.idle_stop, len(self._seeding))
            self._withdraw()  # before it stops: no fetcher is sent to a worker that is closing
            self.session.close()

    def _worker_exited(self, code: int | None) -> None:
        """The worker died on its own: this node no longer listens, so it must not say it does."""
        with self._lock:
            self._withdraw()

    def _withdraw(self) -> None:
        """The worker stops or stopped: its tracker entries go with their session (the holders
        stay), and the metrics say so."""
        self._close_tracker()
        if self.metrics is not None:
            self.metrics.swarm_worker_changed(False)

    def _close_tracker(self) -> None:
        tracker, self._tracker = self._tracker, None
        if tracker is not None:
            tracker.close()

    def _tracker_store(self) -> Store | None:
        """The tracker's session, opened on first use while the worker runs; None if it cannot be."""
        if self._tracker is None and self.store is not None:
            try:
                self._tracker = self.store.sibling()
            except CoordinationError as exc:
                log.warning("cannot open the tracker's ZooKeeper session: %s", exc)
                return None
            self._tracker_generation = self._tracker.generation
            self._tracker.on_session_change(self._tracker_changed)
        return self._tracker

    def _tracker_changed(self, state: str) -> None:
        """A new tracker session replaced an expired one (its entries went with it): announce again."""
        tracker = self._tracker
        if tracker is not None and state == CONNECTED and tracker.generation != self._tracker_generation:
            self._tracker_generation = tracker.generation
            threading.Thread(target=self.reannounce, name="swarm-reannounce", daemon=True).start()

    # -- the tracker -----------------------------------------------------------
    def _announce(self, meta: TorrentMeta, complete: bool, status: TransferStatus | None = None) -> None:
        if self.store is None or self.session is None or not self.session.running:
            return
        address, port = self.session.listen_endpoint
        labels = self.config.labels
        peer = {"address": address, "port": port, "rack": labels.rack, "dc": labels.dc, "complete": complete}
        if status is not None:
            peer.update(progress=round(status.progress, 4), download_rate=status.download_rate,
                        upload_rate=status.upload_rate)
        tracker = self._tracker_store()
        if tracker is None:
            return
        try:
            tracker.register_peer(meta.info_hash, self.node, peer)
        except CoordinationError as exc:
            log.warning("could not announce %s in the tracker: %s", meta.info_hash, exc)

    def reseed(self, release: Release, payload: Path) -> None:
        """At start: seed a payload this host already holds (when the worker runs, or is woken), and
        drop its finished download area."""
        if self.session is None:
            return  # the swarm is disabled: nothing to seed
        try:
            meta = self.metainfo(release)
        except PayloadError as exc:
            log.warning("not seeding %s: %s", payload, exc)
            return
        if meta is not None and payload.exists():
            self.seed(meta, payload)
            shutil.rmtree(self.staging_dir(payload), ignore_errors=True)

    def reannounce(self) -> None:
        """After a new ZooKeeper session: announce every payload this node seeds again (when its
        worker runs; a stopped worker's payloads are found through the holders)."""
        with self._lock:
            for meta, _ in list(self._seeding.values()):
                self._announce(meta, complete=True)

    def _swarm(self) -> tuple[Store, SwarmProcess]:
        """The store and running worker a swarm fetch uses; PayloadError once the transport is
        closed or the worker cannot start."""
        if self.store is None or self.session is None:
            raise PayloadError("the swarm is closed or not attached to ZooKeeper")
        return self.store, self._live()

    def _peers_provider(self, meta: TorrentMeta) -> Callable[[], list[tuple[str, int]]]:
        """Peers for libtorrent, re-read from ZooKeeper only after the membership watch fired."""
        labels, limit = self.config.labels, self.config.swarm.max_peers
        store, _ = self._swarm()
        stale = True
        known: list[tuple[str, int]] = []

        def changed(*_: Any) -> None:
            nonlocal stale
            stale = True
            if self.session is not None:
                self.session.notify_peers_changed()

        def provide() -> list[tuple[str, int]]:
            nonlocal stale, known
            if stale:
                stale = False
                try:
                    peers = store.peers(meta.info_hash, changed)
                except CoordinationError:
                    stale = True
                    return known
                known = peer_order(peers, self.node, labels.rack, labels.dc, limit)
            return known
        return provide

    def _goes_to_source(self, release: Release, meta: TorrentMeta) -> bool:
        """True when no node holds the whole payload and this node is the one elected to fetch it
        from the origin (the first announced peer by name); the others wait for it in the swarm,
        so the origin serves one copy instead of one per host.  When holders exist but none is
        seeding (their workers stopped while idle), a few of them are woken instead."""
        store, _ = self._swarm()
        time.sleep(0.5)  # let the nodes that saw the release at the same moment announce themselves
        try:
            peers = store.peers(meta.info_hash)
            if any(p.get("complete") for p in peers.values()):
                return False
            dormant = [h for h in store.holders(release.service, release.version) if h != self.node]
        except CoordinationError:
            return False
        if dormant:
            for holder in wake_order(dormant, self.node)[:WAKE_HOLDERS]:
                try:
                    store.wake_seeder(holder, meta.info_hash)
                except CoordinationError as exc:
                    log.warning("could not wake %s to seed %s: %s", holder, meta.info_hash, exc)
            log.info("%s@%s: waking %d of %d holders to seed it", release.service, release.version,
                     min(WAKE_HOLDERS, len(dormant)), len(dormant))
            return False
        return min(peers, default=self.node) == self.node

    # -- fetching ------------------------------------------------------------------
    def metainfo(self, release: Release) -> TorrentMeta | None:
        """The release's torrent from ZooKeeper, validated; None if it was staged without one."""
        if not release.info_hash or self.store is None:
            return None
        blob = self.store.release_blob(release.service, release.version, TORRENT_BLOB)
        if blob is None:
            raise PayloadError(f"{release.service}@{release.version}: the torrent metainfo is missing from ZooKeeper")
        try:
            meta = load_metainfo(blob, release.sha256)
        except PayloadError as exc:
            raise PayloadError(
                f"{release.service}@{release.version}: corrupt torrent metainfo in ZooKeeper: {exc}") from None
        if meta.info_hash != release.info_hash or meta.size != release.size:
            raise PayloadError(f"{release.service}@{release.version}: the torrent in ZooKeeper does not describe "
                               f"the staged payload (info-hash or size differs)")
        return meta

    def fetch(self, release: Release, dest: Path) -> Path:
        """Put the verified payload of ``release`` at ``dest``: from the swarm, else from the origin."""
        meta = self.metainfo(release) if self.session is not None else None
        with self._lock:
            self._fetching += 1
        try:
            if meta is not None:
                got = self._fetch_from_swarm(release, meta, Path(dest))
                if got is not None:
                    return got
            log.info("%s@%s: fetching %d bytes from origin %s", release.service, release.version,
                     release.size, release.origin)
            path = fetch(release.origin, dest, release.sha256, release.size, timeout=self.origin_timeout)
            if self.metrics is not None:
                self.metrics.payload_fetched("origin", release.size)
            if meta is not None:
                self.seed(meta, path)
            return path
        finally:
            with self._lock:
                self._fetching -= 1

    def _fetch_from_swarm(self, release: Release, meta: TorrentMeta, dest: Path) -> Path | None:
        """The payload from the swarm; None when this node should go to the origin (elected, the
        swarm stalled, or its worker could not run)."""
        try:
            self._live()
        except PayloadError as exc:
            log.error("%s@%s: the swarm is unavailable (%s); fetching from the origin", release.service,
                      release.version, exc)
            return None
        self._announce(meta, complete=False)
        if self._goes_to_source(release, meta):
            log.info("%s@%s: no peer holds the payload yet; this node fetches it from the origin for the swarm",
                     release.service, release.version)
            return None
        try:
            got = self._swarm_fetch(release, meta, dest)
        except SwarmStalled as exc:
            log.warning("%s@%s: %s; falling back to the origin %s", release.service, release.version,
                        exc, release.origin)
            return None
        if self.metrics is not None:
            self.metrics.payload_fetched("swarm", meta.size)
        return got
    def staging_dir(self, dest: Path) -> Path:
        return dest.parent / f".swarm-{dest.stem}"

    def _swarm_fetch(self, release: Release, meta: TorrentMeta, dest: Path) -> Path:
        staging = self.staging_dir(dest)
        last = {"at": 0.0}

        def progress(status: TransferStatus) -> None:
            if time.monotonic() - last["at"] >= 5.0:
                last["at"] = time.monotonic()
                self._announce(meta, complete=False, status=status)

        _, session = self._swarm()
        path = Path(session.download(meta, str(staging), release.sha256, self._peers_provider(meta),
                                     stall_timeout=self.config.swarm.stall_timeout, on_progress=progress))
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".partial")
        try:
            tmp.unlink(missing_ok=True)
            try:
                os.link(path, tmp)  # the swarm keeps seeding from its own path; same inode, no copy
            except OSError:
                shutil.copyfile(path, tmp)
            # libtorrent wrote the pieces without fsync: flush them before the name says "verified"
            fsync_file(tmp)
            os.replace(tmp, dest)
            fsync_dir(dest.parent)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise PayloadError(f"{release.service}@{release.version}: cannot put the downloaded payload at "
                               f"{dest}: {exc.strerror or exc}") from None
        with self._lock:
            self._seeding[meta.info_hash] = (meta, dest)
        self._announce(meta, complete=True)
        log.info("%s@%s: %d bytes from the swarm, sha256 verified", release.service, release.version, meta.size)
        return dest

    # -- seeding -----------------------------------------------------------------------
    def seed(self, meta: TorrentMeta, path: Path) -> None:
        """Seed a payload this host holds (after an origin fetch, or at agent start): now if the
        worker runs, else when it next starts."""
        if self.session is None:
            return
        with self._lock:
            self._seeding[meta.info_hash] = (meta, Path(path))
            if self.session.running:
                self._seed_in_worker(meta, Path(path))

    def forget(self, release: Release, dest: Path) -> None:
        """Stop seeding a removed release and drop its swarm staging area."""
        if release.info_hash and self.session is not None:
            with self._lock:
                self._seeding.pop(release.info_hash, None)
                try:
                    self.session.stop_seeding(release.info_hash)
                except PayloadError as exc:
                    log.warning("could not stop seeding %s: %s", release.info_hash, exc)
                self._close_tracker()  # its entry goes with the session; the others are announced again
                self.reannounce()
        shutil.rmtree(self.staging_dir(dest), ignore_errors=True)
