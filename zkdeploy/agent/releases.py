"""Release directories of one service on this host (paths from zkdeploy.hostlayout).

The live release is switched by the restart's journaled symlink swap, never
from here, so every switch has its undo recorded first.

A release directory is complete or absent, whatever instant a crash or a
power loss strikes: it appears by the rename of a fully unpacked, fsynced
tree (zkdeploy.transfer.unpack) and disappears by a rename to a hidden
``.trash-`` name before its tree is deleted.  Hidden leftovers of either are
swept by the next install or prune.  ``install`` and ``prune`` of one service
run one at a time (the service's payload worker), and only the agent that
holds the data directory runs them.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from zkdeploy.errors import PayloadError
from zkdeploy.fsutil import fsync_dir
from zkdeploy.hostlayout import HostLayout
from zkdeploy.journal import NOOP, Action
from zkdeploy.model import Release
from zkdeploy.names import check_name
from zkdeploy.transfer.metainfo import payload_digest
from zkdeploy.transfer.unpack import UNPACK_PREFIX, unpack

log = logging.getLogger(__name__)

#: puts a release's payload at the given path, verified against the release (zkdeploy.transfer.transport)
Fetcher = Callable[[Release, Path], Path]

if TYPE_CHECKING:
    from zkdeploy.journal import ChangeSetBuilder

#: prefix of a release directory being deleted (renamed out of sight first)
TRASH_PREFIX = ".trash-"

#: the journal's python action that removes a release (replayable: ``remove`` is idempotent)
REMOVE_ACTION = f"{__name__}:remove_release"

#: The undo of a removal.  Not NO_UNDO: that would make recovery after a crash mid-prune, and any
#: "undo the last N changes" that spans a prune, refuse to proceed.  Nothing is lost: a release
#: that is needed again is fetched and unpacked again.
REMOVAL_UNDO = Action(NOOP, {"reason": "the payload can be fetched again"},
                      "cannot be restored from here: the payload is fetched again when the release is needed")


def remove_release(data_dir: str, service: str, version: str) -> bool:
    """The journal's python action for one removal: ``ReleaseDir(data_dir, service).remove(version)``."""
    return ReleaseDir(Path(data_dir), service).remove(version)


class ReleaseDir:
    """The releases of one service under an agent's data directory."""

    def __init__(self, data_dir: Path, service: str) -> None:
        self.service = check_name("service", service)
        self.data_dir = Path(data_dir)
        self._layout = HostLayout(self.data_dir)
        self.root = self._layout.releases(service)
        self.payloads = self._layout.payloads(service)
        self.link = self._layout.current(service)

    def path(self, version: str) -> Path:
        return self._layout.release(self.service, version)

    def payload_path(self, version: str) -> Path:
        return self._layout.payload(self.service, version)

    def has(self, version: str) -> bool:
        return self.path(version).is_dir()

    def current_version(self) -> str | None:
        """The version the ``current`` symlink points at, or None."""
        try:
            target = os.readlink(self.link)
        except OSError:
            return None
        return Path(target).name

    def install(self, release: Release, fetcher: Fetcher) -> Path:
        """Make ``release`` ready to switch to: fetched, verified, unpacked.  Idempotent.

        A payload already on disk (kept for seeding, or left by a crash) is
        unpacked only if its size and SHA-256 match the release; otherwise it
        is deleted and fetched again.  So no unverified byte is ever unpacked.
        """
        target = self.path(release.version)
        if target.is_dir():
            return target
        self.sweep()
        payload = self.payload_path(release.version)
        if payload.exists():
            self._drop_unless_verified(release, payload)
        if not payload.exists():
            fetcher(release, payload)
        try:
            return unpack(payload, target)
        except PayloadError:
            payload.unlink(missing_ok=True)
            raise

    def _drop_unless_verified(self, release: Release, payload: Path) -> None:
        """Delete ``payload`` unless its size and SHA-256 are the release's; PayloadError if it cannot be read."""
        try:
            size = payload.stat().st_size
        except OSError as exc:
            raise PayloadError(f"cannot read payload {payload}: {exc.strerror or exc}") from None
        if release.size and size != release.size:
            why = f"{size} bytes, the release has {release.size}"
        else:
            digest = payload_digest(payload)
            if digest.sha256 == release.sha256:
                return
            why = f"sha256 {digest.sha256[:16]}..., the release has {release.sha256[:16]}..."
        log.warning("%s@%s: the payload on disk does not match its release (%s); fetching it again",
                    self.service, release.version, why)
        try:
            payload.unlink()
        except OSError as exc:
            raise PayloadError(f"{self.service}@{release.version}: cannot remove the mismatching payload "
                               f"{payload}: {exc.strerror or exc}") from None

    def link_target(self, version: str) -> str:
        """The relative target ``current`` gets for ``version``."""
        return os.path.relpath(self.path(version), self.link.parent)

    def installed(self) -> list[str]:
        """Unpacked versions, oldest first (by unpack time)."""
        if not self.root.is_dir():
            return []
        dirs = [p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")]
        return [p.name for p in sorted(dirs, key=lambda p: p.stat().st_mtime)]

    def doomed(self, keep: int, protect: set[str]) -> list[str]:
        """The releases a prune would remove: the oldest beyond ``keep``, never ``protect`` or the live one."""
        protect = set(protect) | {v for v in [self.current_version()] if v}
        versions = self.installed()
        removable = [v for v in versions if v not in protect]
        return removable[: max(0, len(versions) - keep)]

    def prune(self, keep: int, protect: set[str],
              before_remove: Callable[[str], None] = lambda version: None) -> list[str]:
        """Remove the oldest releases beyond ``keep`` (never ``protect`` or the live one); see ``remove``.

        ``before_remove(version)`` runs before each removal (the agent stops
        seeding the payload there).
        """
        self.sweep()
        doomed = self.doomed(keep, protect)
        for version in doomed:
            before_remove(version)
            self.remove(version)
        return doomed

    def remove(self, version: str) -> bool:
        """Remove release ``version`` and its payload; False if there was no release to remove.

        Guarantees: after a crash at any instant, ``has(version)`` is False or
        the release is whole; never a half-deleted tree.  The payload goes
        first, so an interrupted removal leaves at worst a whole release
        without its payload, which the next prune removes again.  Refuses the
        live release (PayloadError), and raises PayloadError when the disk
        refuses.  Idempotent: the journal may replay it after a crash.
        """
        if self.current_version() == version:
            raise PayloadError(f"{self.service}: {version} is the live release; it is not removed")
        target = self.path(version)
        payload = self.payload_path(version)
        trash = self.root / f"{TRASH_PREFIX}{version}-{secrets.token_hex(4)}"
        try:
            if payload.exists():
                payload.unlink()
                fsync_dir(payload.parent)
            if not target.is_dir():
                return False
            os.replace(target, trash)
            fsync_dir(self.root)
        except OSError as exc:
            raise PayloadError(f"{self.service}: cannot remove release {version}: {exc.strerror or exc}") from None
        self._delete(trash)
        log.info("%s: removed old release %s", self.service, version)
        return True

    def remove_journaled(self, cs: ChangeSetBuilder, version: str) -> None:
        """Remove ``version`` (see ``remove``) as a task of the open change set ``cs``, recorded before it runs."""
        args = {"data_dir": str(self.data_dir.absolute()), "service": self.service, "version": version}
        cs.call(REMOVE_ACTION, args, undo=REMOVAL_UNDO,
                description=f"remove release {self.service} {version} and its payload")

    def sweep(self) -> None:
        """Delete what an interrupted removal or unpack left: hidden ``.trash-`` and ``.unpack-`` directories."""
        if not self.root.is_dir():
            return
        for leftover in self.root.iterdir():
            if leftover.name.startswith((TRASH_PREFIX, UNPACK_PREFIX)) and leftover.is_dir():
                self._delete(leftover)

    def _delete(self, hidden: Path) -> None:
        """Delete a tree already renamed out of sight; what cannot be deleted now waits for the next sweep."""
        shutil.rmtree(hidden, ignore_errors=True)
        if hidden.exists():
            log.warning("%s: could not delete all of %s; retried at the next install or prune",
                        self.service, hidden)
