"""Release directories of one service on this host.

::

    <data>/payloads/<service>/<version>.payload   verified payload (kept for seeding)
    <data>/releases/<service>/<version>/          unpacked release
    <data>/current/<service> -> ../releases/<service>/<version>   the live release (atomic symlink)
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from zkdeploy.errors import PayloadError
from zkdeploy.model import Release
from zkdeploy.names import check_name
from zkdeploy.transfer.unpack import unpack

log = logging.getLogger(__name__)

Fetcher = Callable[[Release, Path], Path]


class ReleaseDir:
    """The releases of one service under an agent's data directory."""

    def __init__(self, data_dir: Path, service: str) -> None:
        self.service = check_name("service", service)
        self.data_dir = Path(data_dir)
        self.root = self.data_dir / "releases" / service
        self.payloads = self.data_dir / "payloads" / service
        self.link = self.data_dir / "current" / service

    def path(self, version: str) -> Path:
        return self.root / check_name("version", version)

    def payload_path(self, version: str) -> Path:
        return self.payloads / (check_name("version", version) + ".payload")

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
        """Make ``release`` ready to switch to: fetched, verified, unpacked.  Idempotent."""
        target = self.path(release.version)
        if target.is_dir():
            return target
        payload = self.payload_path(release.version)
        if not payload.exists():
            fetcher(release, payload)
        try:
            return unpack(payload, target)
        except PayloadError:
            payload.unlink(missing_ok=True)
            raise

    def link_target(self, version: str) -> str:
        """The relative target ``current`` gets for ``version``."""
        return os.path.relpath(self.path(version), self.link.parent)

    def switch(self, version: str) -> str | None:
        """Point ``current`` at ``version`` atomically; returns the version it pointed at before."""
        if not self.has(version):
            raise PayloadError(f"{self.service}@{version} is not unpacked; cannot switch to it")
        previous = self.current_version()
        self.link.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.link.with_name(f".{self.service}.swap")
        tmp.unlink(missing_ok=True)
        os.symlink(self.link_target(version), tmp)
        os.replace(tmp, self.link)
        _fsync_dir(self.link.parent)
        return previous

    def installed(self) -> list[str]:
        """Unpacked versions, oldest first (by unpack time)."""
        if not self.root.is_dir():
            return []
        dirs = [p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")]
        return [p.name for p in sorted(dirs, key=lambda p: p.stat().st_mtime)]

    def prune(self, keep: int, protect: set[str],
              before_remove: Callable[[str], None] = lambda version: None) -> list[str]:
        """Remove the oldest releases beyond ``keep`` (never ``protect`` or the live one).

        ``before_remove(version)`` runs before each removal (the agent stops
        seeding the payload there).
        """
        protect = set(protect) | {v for v in [self.current_version()] if v}
        versions = self.installed()
        removable = [v for v in versions if v not in protect]
        doomed = removable[: max(0, len(versions) - keep)]
        for version in doomed:
            before_remove(version)
            shutil.rmtree(self.path(version), ignore_errors=True)
            self.payload_path(version).unlink(missing_ok=True)
            log.info("%s: removed old release %s", self.service, version)
        return doomed


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
