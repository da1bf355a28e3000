"""One long-lived libtorrent session per agent: seed payloads, fetch payloads.

The swarm is closed: no DHT, LSD, UPnP, NAT-PMP, PEX or trackers.  Peers come
from the caller (ZooKeeper acts as the tracker) through a ``peers_provider``
callable, so this module never imports kazoo.  See docs/swarm.md for why each
setting is there.  What concerns one torrent and not the session (how it is
added, its state, the waits on its handle, its alerts) is in
``zkdeploy.transfer.swarm_torrent``.

Guarantees of ``SwarmSession.download``:
- it returns a path only after libtorrent's disk cache was flushed and the
  whole file's SHA-256 matched the expected one;
- on a SHA-256 mismatch it raises IntegrityError and leaves no payload file
  (and no resume data) behind;
- when no payload byte arrives for ``stall_timeout`` seconds it raises
  SwarmStalled, keeping the partial file and resume data for a later retry.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import libtorrent as lt

from zkdeploy.errors import IntegrityError, PayloadError
from zkdeploy.transfer.metainfo import MiB, TorrentMeta, normalize_sha256
from zkdeploy.transfer.striping import stripe_priorities
from zkdeploy.transfer.swarm_config import (
    DownloadCancelled,
    Endpoint,
    PeersProvider,
    SwarmConfig,
    SwarmStalled,
    TransferStatus,
    closed_swarm_settings,
    format_endpoint,
)
from zkdeploy.transfer.swarm_torrent import SwarmTorrent, check_disk, fetch_params, seed_params

log = logging.getLogger(__name__)

PROGRESS_LOG_INTERVAL = 5.0
_STOP_RESUME_TIMEOUT = 5.0
_CHECKING_STATES = frozenset({"checking_files", "checking_resume_data", "queued_for_checking",
                              "allocating"})


class SwarmSession:
    """One libtorrent session for the whole agent process.

    Thread-safe: ``download`` may run in several threads at once (one per
    payload); an internal thread drains libtorrent's alerts.
    """

    def __init__(self, config: SwarmConfig | None = None) -> None:
        self.config = config or SwarmConfig()
        self._ses: Any = None
        self._lock = threading.Lock()
        self._torrents: dict[str, SwarmTorrent] = {}
        self._stopping = threading.Event()
        self._listening = threading.Event()
        self._listen_error: str | None = None
        self._endpoint: Endpoint | None = None
        self._pump_thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> Endpoint:
        """Open the session and wait until it listens; return (ip, port).

        Raises PayloadError if the port is taken or the address is not local.
        Register the endpoint in the tracker only after this returns.
        """
        if self._ses is not None:
            raise PayloadError("swarm session already started")
        # The binding takes any dict of setting names; its stubs call that the settings_pack TypedDict,
        # which a dict merged with the agent file's extra_settings cannot be declared as.
        self._ses = lt.session(lt.session_params(cast("lt.settings_pack", closed_swarm_settings(self.config))))
        flt = lt.ip_filter()
        # Without this, RFC1918 and loopback peers fall into libtorrent's
        # "local" peer class, which ignores the rate limits.
        flt.add_rule("0.0.0.0", "255.255.255.255", 1 << lt.session.global_peer_class_id)
        flt.add_rule("::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
                     1 << lt.session.global_peer_class_id)
        self._ses.set_peer_class_filter(flt)
        self._pump_thread = threading.Thread(target=self._pump, name="swarm-alerts", daemon=True)
        self._pump_thread.start()
        if not self._listening.wait(self.config.start_timeout):
            self.close()
            raise PayloadError(f"swarm session did not start listening on "
                               f"{format_endpoint(self.config.listen_ip, self.config.listen_port)}"
                               f" within {self.config.start_timeout:.0f}s")
        if self._listen_error is not None:
            err = self._listen_error
            self.close()
            raise PayloadError(f"swarm session cannot listen: {err}")
        assert self._endpoint is not None
        log.info("swarm listening on %s", format_endpoint(*self._endpoint))
        return self._endpoint

    @property
    def listen_endpoint(self) -> Endpoint:
        """The (ip, port) other peers connect to; valid after ``start``."""
        if self._endpoint is None:
            raise PayloadError("swarm session is not started")
        return self._endpoint

    def close(self) -> None:
        """Save resume data of unfinished downloads, then shut the session down."""
        if self._ses is None:
            return
        with self._lock:
            states = list(self._torrents.values())
        for t in states:
            if t.handle is not None and not t.finished and t.resume_path:
                self._save_resume(t, wait=_STOP_RESUME_TIMEOUT)
        self._stopping.set()
        if self._pump_thread is not None:
            self._pump_thread.join(timeout=5)
        ses, self._ses = self._ses, None
        ses.pause()
        with self._lock:
            self._torrents.clear()
        del ses

    def __enter__(self) -> SwarmSession:
        if self._ses is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def notify_peers_changed(self) -> None:
        """Ask running downloads to call their peers_provider now (e.g. from a watch)."""
        with self._lock:
            states = list(self._torrents.values())
        for t in states:
            t.peers_changed.set()
            t.notify()

    # -- seeding -------------------------------------------------------------

    def seed(self, meta: TorrentMeta, payload_path: str) -> None:
        """Serve ``payload_path`` as ``meta``'s content until ``stop_seeding``.

        Added in seed mode: no hash check now, each piece is verified the first
        time a peer asks for it, so a file altered on disk is detected and no
        peer ever accepts its bad pieces.  Idempotent.
        """
        ses = self._require_started()
        path = os.path.abspath(payload_path)
        if not os.path.isfile(path):
            raise PayloadError(f"cannot seed {meta.name}: {path} is not a file")
        size = os.path.getsize(path)
        if size != meta.size:
            raise PayloadError(f"cannot seed {meta.name}: {path} has {size} bytes, the torrent "
                               f"describes {meta.size}")
        with self._lock:
            if meta.info_hash in self._torrents:
                return
            t = SwarmTorrent(meta, os.path.dirname(path), None)
            t.finished = True
            self._torrents[meta.info_hash] = t
        atp = seed_params(meta, path, self.config)
        try:
            t.handle = ses.add_torrent(atp)
        except RuntimeError as e:
            with self._lock:
                self._torrents.pop(meta.info_hash, None)
            raise PayloadError(f"cannot seed {meta.name}: {e}") from e
        log.info("seeding %s (%s, %d bytes) from %s", meta.name, meta.info_hash, meta.size, path)

    def stop_seeding(self, info_hash: str) -> None:
        """Remove a torrent from the session, keeping its file.  Idempotent."""
        with self._lock:
            t = self._torrents.pop(info_hash, None)
        if t is not None and t.handle is not None and self._ses is not None:
            self._ses.remove_torrent(t.handle)
            t.notify(error="removed from the session")
            log.info("stopped seeding %s (%s)", t.meta.name, info_hash)

    # -- downloading ---------------------------------------------------------

    def download(self, meta: TorrentMeta, staging_dir: str, expected_sha256: str,
                 peers_provider: PeersProvider, *, stall_timeout: float = 60.0,
                 on_progress: Callable[[TransferStatus], None] | None = None,
                 cancel: threading.Event | None = None) -> str:
        """Fetch ``meta`` into ``staging_dir`` and return the verified file's path.

        Resumes from resume data (or from a recheck of a partial file) left in
        ``staging_dir`` by an earlier, interrupted run.  The payload keeps
        seeding afterwards.  Raises PayloadError (not enough disk, libtorrent
        error, cancelled as DownloadCancelled), SwarmStalled, IntegrityError.
        """
        ses = self._require_started()
        expected = normalize_sha256(expected_sha256)
        staging_dir = os.path.abspath(staging_dir)
        os.makedirs(staging_dir, exist_ok=True)
        target = os.path.join(staging_dir, meta.name)
        resume_path = os.path.join(staging_dir, f".{meta.info_hash}.resume")
        with self._lock:
            existing = self._torrents.get(meta.info_hash)
        if existing is not None:
            if os.path.abspath(existing.path) != target:
                # One artifact staged for two services: one info-hash, one torrent in the session.
                return self._share(existing, target, expected, stall_timeout, cancel)
            if existing.finished:
                existing.verify(expected)
                return target
            raise PayloadError(f"{meta.name} ({meta.info_hash}) is already being fetched into {existing.path}")
        check_disk(meta, staging_dir, target, self.config)
        atp, resumed = fetch_params(meta, staging_dir, resume_path)
        t = SwarmTorrent(meta, staging_dir, resume_path)
        with self._lock:
            self._torrents[meta.info_hash] = t
        try:
            t.handle = ses.add_torrent(atp)
        except RuntimeError as e:
            with self._lock:
                self._torrents.pop(meta.info_hash, None)
            raise PayloadError(f"cannot add {meta.name} to the swarm: {e}") from e
        log.info("fetching %s (%s, %d bytes) into %s%s", meta.name, meta.info_hash, meta.size,
                 staging_dir, " from resume data" if resumed else "")
        ok = False
        try:
            rechecked = False
            while True:
                self._run_until_finished(t, peers_provider, stall_timeout, on_progress, cancel)
                t.flush()
                try:
                    t.verify(expected)
                except IntegrityError:
                    if not resumed or rechecked:
                        raise
                    # Resume data is only a hint: a piece it lists may not have
                    # reached the disk before a crash.  Recheck once.
                    log.warning("%s: SHA-256 mismatch after resuming; rechecking the file",
                                meta.name)
                    rechecked = True
                    t.notify(finished=False)
                    t.handle.force_recheck()
                    continue
                break
            ok = True
        except IntegrityError:
            self._discard(t, remove_file=True)
            raise
        finally:
            if not ok and meta.info_hash in self._torrents:
                self._save_resume(t, wait=_STOP_RESUME_TIMEOUT)
                self._discard(t, remove_file=False)
        Path(resume_path).unlink(missing_ok=True)
        st = self.status(meta.info_hash)
        log.info("fetched %s: %d bytes downloaded, %d hash failures, verified SHA-256 %s",
                 meta.name, st.total_download, t.hash_failures, expected)
        return target

    def _share(self, t: SwarmTorrent, target: str, expected: str, stall_timeout: float,
               cancel: threading.Event | None) -> str:
        """The payload of ``t`` (held or being fetched for another service) at ``target`` too: wait
        for it to finish (SwarmStalled when it makes no progress for ``stall_timeout``), check its
        SHA-256, then hard-link it (or copy it across file systems) into place."""
        last, moved = -1, time.monotonic()
        while True:
            with t.cond:
                if not t.finished and t.error is None:
                    t.cond.wait(0.5)
            if t.error is not None:
                raise PayloadError(f"{t.meta.name}: the shared download failed: {t.error}")
            if cancel is not None and cancel.is_set():
                raise DownloadCancelled(f"fetching {t.meta.name} was cancelled")
            if t.finished:
                try:
                    t.verify(expected)
                    break
                except (IntegrityError, PayloadError):
                    pass  # finished but not flushed, or being checked by its own download: look again
            with self._lock:
                if self._torrents.get(t.meta.info_hash) is not t:
                    raise PayloadError(f"{t.meta.name}: the shared download was removed from the session")
            done = self.status(t.meta.info_hash).total_download if t.handle is not None else 0
            if done != last:
                last, moved = done, time.monotonic()
            elif time.monotonic() - moved > stall_timeout:
                raise SwarmStalled(f"fetching {t.meta.name} (shared with another service) stalled: "
                                   f"no payload byte for {stall_timeout:.0f}s")
        os.makedirs(os.path.dirname(target), exist_ok=True)
        tmp = target + ".shared"
        Path(tmp).unlink(missing_ok=True)
        try:
            os.link(t.path, tmp)
        except OSError:
            shutil.copyfile(t.path, tmp)
        os.replace(tmp, target)
        log.info("%s: shared the payload held at %s (same info-hash %s)", t.meta.name, t.path, t.meta.info_hash)
        return target

    def _run_until_finished(self, t: SwarmTorrent, peers_provider: PeersProvider,
                            stall_timeout: float, on_progress: Callable[[TransferStatus], None]
                            | None, cancel: threading.Event | None) -> None:
        meta = t.meta
        last_bytes = -1
        last_byte_time = time.monotonic()
        next_peers = 0.0
        next_resume = time.monotonic() + self.config.resume_save_interval
        next_log = time.monotonic() + PROGRESS_LOG_INTERVAL
        known_peers: frozenset[Endpoint] = frozenset()
        striped_for: tuple[frozenset[Endpoint], frozenset[Endpoint]] | None = None
        while True:
            now = time.monotonic()
            if cancel is not None and cancel.is_set():
                raise DownloadCancelled(f"fetching {meta.name} was cancelled")
            if t.error is not None:
                raise PayloadError(f"fetching {meta.name} failed: {t.error}")
            if now >= next_peers or t.peers_changed.is_set():
                t.peers_changed.clear()
                known_peers = self._connect_peers(t, peers_provider, known_peers)
                next_peers = now + self.config.peer_refresh_interval
            if self.config.stripe_pieces:
                striping = (known_peers, t.connected_seeds())
                if striping != striped_for:
                    self._stripe(t, *striping)
                    striped_for = striping
            st = self.status(meta.info_hash)
            if t.finished or st.is_seeding or st.state == "finished":
                return
            if st.state in _CHECKING_STATES or st.total_download != last_bytes:
                last_bytes = st.total_download
                last_byte_time = now
            elif now - last_byte_time > stall_timeout:
                raise SwarmStalled(
                    f"fetching {meta.name} stalled: no payload byte for {stall_timeout:.0f}s at "
                    f"{st.progress:.1%} with {st.num_peers} peers connected; use the HTTP origin")
            if now >= next_resume:
                self._save_resume(t, wait=0)
                next_resume = now + self.config.resume_save_interval
            if now >= next_log:
                log.info("fetching %s: %.1f%% of %.1f MiB, down %.1f MiB/s, up %.1f MiB/s, "
                         "%d peers, %d hash failures", meta.name, st.progress * 100,
                         meta.size / MiB, st.download_rate / MiB, st.upload_rate / MiB,
                         st.num_peers, t.hash_failures)
                next_log = now + PROGRESS_LOG_INTERVAL
            if on_progress is not None:
                on_progress(st)
            with t.cond:
                if not t.finished and t.error is None and not t.peers_changed.is_set():
                    t.cond.wait(0.25)

    def _connect_peers(self, t: SwarmTorrent, peers_provider: PeersProvider,
                       previous: frozenset[Endpoint]) -> frozenset[Endpoint]:
        try:
            peers = frozenset((str(ip), int(port)) for ip, port in peers_provider())
        except Exception:  # a tracker hiccup must not kill the download; the watchdog decides
            log.warning("peers_provider failed for %s; keeping current peers", t.meta.name,
                        exc_info=True)
            return previous
        me = self._endpoint
        for ep in peers:
            if ep != me:
                t.handle.connect_peer(ep)
        return peers

    def _stripe(self, t: SwarmTorrent, peers: frozenset[Endpoint],
                seeds: frozenset[Endpoint]) -> None:
        """Give this host's own slice of the pieces the highest priority (transfer/striping.py)."""
        assert self._endpoint is not None
        priorities, mine = stripe_priorities(self._endpoint, peers, seeds, t.meta.num_pieces)
        t.handle.prioritize_pieces(priorities)
        if mine is not None:
            log.debug("%s: striping, this host's slice is pieces %d-%d", t.meta.name, mine.start, mine.stop - 1)

    def _save_resume(self, t: SwarmTorrent, wait: float) -> None:
        if self._ses is not None:
            t.save_resume(wait)

    def _discard(self, t: SwarmTorrent, remove_file: bool) -> None:
        with self._lock:
            self._torrents.pop(t.meta.info_hash, None)
        if self._ses is not None and t.handle is not None:
            self._ses.remove_torrent(t.handle)
        if remove_file:
            t.remove_files()

    # -- status --------------------------------------------------------------

    def status(self, info_hash: str) -> TransferStatus:
        """Progress, rates and totals of one torrent; PayloadError if unknown."""
        with self._lock:
            t = self._torrents.get(info_hash)
        if t is None or t.handle is None:
            raise PayloadError(f"torrent {info_hash} is not in the swarm session")
        st = t.handle.status()
        return TransferStatus(
            info_hash=info_hash, name=t.meta.name, state=str(st.state), progress=st.progress,
            download_rate=st.download_payload_rate, upload_rate=st.upload_payload_rate,
            num_peers=st.num_peers, is_seeding=st.is_seeding,
            total_download=st.total_payload_download, total_upload=st.total_payload_upload,
            hash_failures=t.hash_failures)

    def torrents(self) -> list[TransferStatus]:
        """A status line for every torrent in the session."""
        with self._lock:
            hashes = [h for h, t in self._torrents.items() if t.handle is not None]
        out = []
        for h in hashes:
            try:
                out.append(self.status(h))
            except PayloadError:
                continue  # removed meanwhile
        return out

    # -- alerts --------------------------------------------------------------

    def _require_started(self) -> Any:
        if self._ses is None:
            raise PayloadError("swarm session is not started")
        return self._ses

    def _pump(self) -> None:
        ses = self._ses
        while not self._stopping.is_set():
            ses.wait_for_alert(250)
            for a in ses.pop_alerts():
                try:
                    self._dispatch(a)
                except Exception:  # one bad alert must not stop the pump
                    log.exception("error handling libtorrent alert %s", type(a).__name__)

    def _dispatch(self, a: Any) -> None:
        if isinstance(a, lt.listen_succeeded_alert):
            if a.socket_type == lt.socket_type_t.tcp and self._endpoint is None:
                self._endpoint = (str(a.address), int(a.port))
                self._listening.set()
            return
        if isinstance(a, lt.listen_failed_alert):
            if a.socket_type == lt.socket_type_t.tcp or self._endpoint is None:
                self._listen_error = a.message()
                self._listening.set()
            return
        if isinstance(a, lt.alerts_dropped_alert):
            log.warning("libtorrent dropped alerts: %s", a.message())
            return
        if not isinstance(a, lt.torrent_alert):
            if a.category() & lt.alert_category.error:
                log.error("libtorrent: %s", a.message())
            return
        t = self._state_for(a)
        if t is None:
            return
        t.on_alert(a)

    def _state_for(self, a: Any) -> SwarmTorrent | None:
        try:
            key = str(a.handle.info_hashes().v1)
        except RuntimeError:
            return None  # handle already removed
        with self._lock:
            return self._torrents.get(key)
