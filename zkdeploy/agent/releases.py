"""Release directories of one service on this host (paths from zkdeploy.hostlayout).

The live release is switched by the restart's journaled symlink swap, never
from here, so every switch has its undo recorded first.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from zkdeploy.errors import PayloadError
from zkdeploy.hostlayout import HostLayout
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

