"""One torrent in the swarm session: how it is added, its state, and what is done to its handle.

``zkdeploy.transfer.swarm`` keeps one ``SwarmTorrent`` per info-hash in its session; this module
owns what concerns that one torrent and not the session: the add_torrent_params that seed a file
or fetch one (from resume data when it is valid), the disk-space check before a fetch, the state
the session's alert pump sets from the torrent's alerts, and the waits on its handle (disk-cache
flush, resume-data save), the whole file's SHA-256 check and the removal of its files.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import libtorrent as lt

from zkdeploy.errors import IntegrityError, PayloadError
from zkdeploy.fsutil import write_durably
from zkdeploy.transfer.metainfo import TorrentMeta, payload_digest
from zkdeploy.transfer.swarm_config import Endpoint, SwarmConfig

log = logging.getLogger("zkdeploy.transfer.swarm")  # the session's: its records keep their logger

_FLUSH_TIMEOUT = 60.0


class SwarmTorrent:
    """Per-torrent bookkeeping shared by the alert pump and the caller's thread."""

    def __init__(self, meta: TorrentMeta, save_path: str, resume_path: str | None) -> None:
        self.meta = meta
        self.save_path = save_path
        self.resume_path = resume_path
        self.handle: Any = None
        self.cond = threading.Condition()
        self.finished = False
        self.flushes = 0
        self.resume_saves = 0
        self.hash_failures = 0
        self.error: str | None = None
        self.peers_changed = threading.Event()

    @property
    def path(self) -> str:
        return os.path.join(self.save_path, self.meta.name)

    def notify(self, **changes: Any) -> None:
        with self.cond:
            for k, v in changes.items():
                setattr(self, k, v)
            self.cond.notify_all()

    # -- its handle ------------------------------------------------------------

    def connected_seeds(self) -> frozenset[Endpoint]:
        """Endpoints of connected peers that hold the whole payload."""
        seeds = set()
        for pi in self.handle.get_peer_info():
            if pi.flags & lt.peer_info.seed:
                seeds.add((str(pi.ip[0]), int(pi.ip[1])))
        return frozenset(seeds)

    def flush(self) -> None:
        """Flush libtorrent's disk cache and wait for its ``cache_flushed_alert``."""
        with self.cond:
            before = self.flushes
        self.handle.flush_cache()
        deadline = time.monotonic() + _FLUSH_TIMEOUT
        with self.cond:
            while self.flushes == before and self.error is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise PayloadError(f"{self.meta.name}: libtorrent did not flush its disk cache "
                                       f"within {_FLUSH_TIMEOUT:.0f}s")
                self.cond.wait(left)
        if self.error is not None:
            raise PayloadError(f"fetching {self.meta.name} failed: {self.error}")

    def verify(self, expected: str) -> None:
        """IntegrityError unless the whole file's SHA-256 is ``expected``."""
        got = payload_digest(self.path).sha256
        if got != expected:
            raise IntegrityError(f"{self.meta.name}: SHA-256 is {got}, release metadata says "
                                 f"{expected}; the file was removed")

    def save_resume(self, wait: float) -> None:
        """Ask for resume data (written by ``on_alert``) and wait up to ``wait`` seconds for it."""
        if self.handle is None or not self.resume_path:
            return
        with self.cond:
            before = self.resume_saves
        try:
            self.handle.save_resume_data(lt.torrent_handle.flush_disk_cache)
        except RuntimeError as e:
            log.warning("cannot save resume data for %s: %s", self.meta.name, e)
            return
        deadline = time.monotonic() + wait
        with self.cond:
            while self.resume_saves == before:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.cond.wait(left)

    def remove_files(self) -> None:
        """Remove the payload file and its resume data, once removed from the session."""
        # remove_torrent is asynchronous: the file may still be mapped.
        deadline = time.monotonic() + 5
        while True:
            Path(self.path).unlink(missing_ok=True)
            if not os.path.exists(self.path) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        if self.resume_path:
            Path(self.resume_path).unlink(missing_ok=True)

    # -- its alerts --------------------------------------------------------------

    def on_alert(self, a: Any) -> None:
        """Apply one of this torrent's alerts (from the session's alert pump)."""
        if isinstance(a, lt.torrent_finished_alert):
            self.notify(finished=True)
        elif isinstance(a, lt.cache_flushed_alert):
            self.notify(flushes=self.flushes + 1)
        elif isinstance(a, lt.hash_failed_alert):
            self.notify(hash_failures=self.hash_failures + 1)
            log.warning("%s: piece %d failed its hash check (%d so far); the sending peer is "
                        "distrusted", self.meta.name, a.piece_index, self.hash_failures)
        elif isinstance(a, lt.save_resume_data_alert):
            if self.resume_path:
                write_durably(self.resume_path, lt.write_resume_data_buf(a.params))
            self.notify(resume_saves=self.resume_saves + 1)
        elif isinstance(a, lt.save_resume_data_failed_alert):
            self.notify(resume_saves=self.resume_saves + 1)
        elif isinstance(a, lt.fastresume_rejected_alert):
            log.warning("%s: resume data rejected (%s); libtorrent rechecks the file",
                        self.meta.name, a.message())
        elif isinstance(a, (lt.torrent_error_alert, lt.file_error_alert)):
            log.error("%s: %s", self.meta.name, a.message())
            self.notify(error=a.message())


# -- adding a torrent to the session -----------------------------------------------


def seed_params(meta: TorrentMeta, path: str, config: SwarmConfig) -> Any:
    """The add_torrent_params that serve the file ``path`` as ``meta``'s content, in seed mode."""
    atp = lt.add_torrent_params()
    atp.ti = lt.torrent_info(meta.metainfo)
    atp.save_path = os.path.dirname(path)
    if os.path.basename(path) != meta.name:
        atp.renamed_files = {0: os.path.basename(path)}
    atp.flags = (atp.flags & ~(lt.torrent_flags.auto_managed | lt.torrent_flags.paused)
                 ) | lt.torrent_flags.seed_mode
    if config.seed_max_uploads > 0:
        atp.max_uploads = config.seed_max_uploads
    return atp


def fetch_params(meta: TorrentMeta, staging_dir: str, resume_path: str) -> tuple[Any, bool]:
    """The add_torrent_params that fetch ``meta`` into ``staging_dir``, and whether they come from
    the resume data at ``resume_path`` (removed when it is unreadable or another torrent's)."""
    atp = None
    resumed = False
    if os.path.exists(resume_path):
        try:
            with open(resume_path, "rb") as f:
                atp = lt.read_resume_data(f.read())
            if str(atp.info_hashes.v1) != meta.info_hash:
                raise ValueError("resume data belongs to another torrent")
            resumed = True
        except (OSError, RuntimeError, ValueError) as e:
            log.warning("ignoring resume data %s (%s); libtorrent will recheck any partial "
                        "file", resume_path, e)
            Path(resume_path).unlink(missing_ok=True)
            atp = None
    if atp is None:
        atp = lt.add_torrent_params()
    atp.ti = lt.torrent_info(meta.metainfo)
    atp.save_path = staging_dir
    atp.flags &= ~(lt.torrent_flags.auto_managed | lt.torrent_flags.paused
                   | lt.torrent_flags.seed_mode)
    return atp, resumed


def check_disk(meta: TorrentMeta, staging_dir: str, target: str, config: SwarmConfig) -> None:
    """PayloadError unless ``staging_dir`` has room for what ``target`` still lacks of ``meta``,
    plus the configured margin."""
    have = 0
    try:
        have = min(os.stat(target).st_blocks * 512, meta.size)
    except FileNotFoundError:
        pass
    free_fn = config.free_space or (lambda d: shutil.disk_usage(d).free)
    free = free_fn(staging_dir)
    need = meta.size - have + config.disk_margin_bytes
    if free < need:
        raise PayloadError(
            f"not enough disk space in {staging_dir} for {meta.name}: need {need} bytes "
            f"({meta.size - have} payload still to write + {config.disk_margin_bytes} "
            f"margin), {free} free")
