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

import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from zkdeploy.config.schema import AgentConfig
from zkdeploy.coordination import Store
from zkdeploy.errors import CoordinationError, PayloadError
from zkdeploy.fsutil import fsync_dir, fsync_file
from zkdeploy.model import Release
from zkdeploy.transfer.fetch import fetch
from zkdeploy.transfer.swarm_config import SwarmConfig, SwarmStalled, TransferStatus

if TYPE_CHECKING:  # libtorrent (about 10 MB) is imported only by an agent whose swarm is enabled
    from zkdeploy.transfer.swarm import SwarmSession
    from zkdeploy.transfer.torrent import TorrentMeta

log = logging.getLogger(__name__)

TORRENT_BLOB = "torrent"


class PayloadCounter(Protocol):
    """Counts verified payload bytes by source (``swarm``, ``origin``): zkdeploy.agent.metrics.Metrics."""

    def payload_fetched(self, source: str, size: int) -> None: ...


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


class Transport:
    """Fetches and seeds payloads for one agent."""

    def __init__(self, config: AgentConfig, origin_timeout: float = 30.0,
                 metrics: PayloadCounter | None = None) -> None:
        self.config = config
        self.metrics = metrics  # payload bytes by source, when the agent counts them
        self.node = config.node
        self.data_dir = Path(config.data_dir)
        self.origin_timeout = origin_timeout
        self.store: Store | None = None
        self.session: SwarmSession | None = None
        self._seeding: dict[str, TorrentMeta] = {}
        self._lock = threading.Lock()

    # -- lifecycle ----------------------------------------------------------
    def start(self) -> None:
        """Start the swarm session (if enabled); PayloadError if it cannot listen."""
        settings = self.config.swarm
        if not settings.enabled:
            return
        from zkdeploy.transfer.swarm import SwarmSession

        self.session = SwarmSession(SwarmConfig(
            listen_ip=self.config.address, listen_port=settings.listen_port,
            upload_rate_limit=settings.upload_rate_limit, download_rate_limit=settings.download_rate_limit,
            allow_multiple_connections_per_ip=settings.allow_multiple_connections_per_ip))
        self.session.start()

    def close(self) -> None:
        if self.session is not None:
            self.session.close()
            self.session = None

    def attach(self, store: Store) -> None:
        self.store = store

    # -- the tracker -----------------------------------------------------------
    def _announce(self, meta: TorrentMeta, complete: bool, status: TransferStatus | None = None) -> None:
        if self.store is None or self.session is None:
            return
        address, port = self.session.listen_endpoint
        labels = self.config.labels
        peer = {"address": address, "port": port, "rack": labels.rack, "dc": labels.dc, "complete": complete}
        if status is not None:
            peer.update(progress=round(status.progress, 4), download_rate=status.download_rate,
                        upload_rate=status.upload_rate)
        try:
            self.store.register_peer(meta.info_hash, self.node, peer)
        except CoordinationError as exc:
            log.warning("could not announce %s in the tracker: %s", meta.info_hash, exc)

    def reseed(self, release: Release, payload: Path) -> None:
        """At start: seed a payload this host already holds, and drop its finished download area."""
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
        """After a new ZooKeeper session: announce every payload this node seeds again."""
        for meta in list(self._seeding.values()):
            self._announce(meta, complete=True)

    def _swarm(self) -> tuple[Store, SwarmSession]:
        """The store and session a swarm fetch uses (both set whenever a release has metainfo here);
        PayloadError once the transport is closed."""
        if self.store is None or self.session is None:
            raise PayloadError("the swarm is closed or not attached to ZooKeeper")
        return self.store, self.session

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
                threading.Thread(target=self.session.notify_peers_changed, daemon=True).start()

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

    def _goes_to_source(self, meta: TorrentMeta) -> bool:
        """True when no peer holds the whole payload and this node is the one elected to fetch
        it from the origin (the first announced peer by name); the others wait for it in the swarm,
        so the origin serves one copy instead of one per host."""
        store, _ = self._swarm()
        time.sleep(0.5)  # let the nodes that saw the release at the same moment announce themselves
        try:
            peers = store.peers(meta.info_hash)
        except CoordinationError:
            return False
        if any(p.get("complete") for p in peers.values()):
            return False
        return min(peers, default=self.node) == self.node

    # -- fetching ------------------------------------------------------------------
    def metainfo(self, release: Release) -> TorrentMeta | None:
        """The release's torrent from ZooKeeper, validated; None if it was staged without one."""
        if not release.info_hash or self.store is None:
            return None
        from zkdeploy.transfer.torrent import load_metainfo

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
        if meta is not None:
            self._announce(meta, complete=False)
            if self._goes_to_source(meta):
                log.info("%s@%s: no peer holds the payload yet; this node fetches it from the origin for the swarm",
                         release.service, release.version)
            else:
                try:
                    got = self._swarm_fetch(release, meta, Path(dest))
                    if self.metrics is not None:
                        self.metrics.payload_fetched("swarm", meta.size)
                    return got
                except SwarmStalled as exc:
                    log.warning("%s@%s: %s; falling back to the origin %s", release.service, release.version,
                                exc, release.origin)
        log.info("%s@%s: fetching %d bytes from origin %s", release.service, release.version,
                 release.size, release.origin)
        path = fetch(release.origin, dest, release.sha256, release.size, timeout=self.origin_timeout)
        if self.metrics is not None:
            self.metrics.payload_fetched("origin", release.size)
        if meta is not None:
            self.seed(meta, path)
        return path

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
            self._seeding[meta.info_hash] = meta
        self._announce(meta, complete=True)
        log.info("%s@%s: %d bytes from the swarm, sha256 verified", release.service, release.version, meta.size)
        return dest

    # -- seeding -----------------------------------------------------------------------
    def seed(self, meta: TorrentMeta, path: Path) -> None:
        """Seed a payload this host holds (after an origin fetch, or at agent start)."""
        if self.session is None:
            return
        try:
            self.session.seed(meta, str(path))
        except PayloadError as exc:
            log.warning("cannot seed %s: %s", path, exc)
            return
        with self._lock:
            self._seeding[meta.info_hash] = meta
        self._announce(meta, complete=True)

    def forget(self, release: Release, dest: Path) -> None:
        """Stop seeding a removed release and drop its swarm staging area."""
        if release.info_hash and self.session is not None:
            self.session.stop_seeding(release.info_hash)
            with self._lock:
                self._seeding.pop(release.info_hash, None)
            if self.store is not None:
                try:
                    self.store.unregister_peer(release.info_hash, self.node)
                except CoordinationError:
                    pass
        shutil.rmtree(self.staging_dir(dest), ignore_errors=True)
