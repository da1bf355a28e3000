"""How the agent gets a release's payload onto this host.

The origin (a path or URL recorded at staging) is the transport of last
resort; the torrent swarm, when a release carries a torrent, comes first.
Either way the caller receives a file whose SHA-256 matched the release.
"""

from __future__ import annotations

import logging
from pathlib import Path

from zkdeploy.model import Release
from zkdeploy.transfer.fetch import fetch

log = logging.getLogger(__name__)


class Transport:
    """Fetches payloads for one agent."""

    def __init__(self, data_dir: Path, timeout: float = 30.0) -> None:
        self.data_dir = Path(data_dir)
        self.timeout = timeout

    def fetch(self, release: Release, dest: Path) -> Path:
        """Put the verified payload of ``release`` at ``dest``."""
        log.info("%s@%s: fetching %d bytes from origin %s", release.service, release.version,
                 release.size, release.origin)
        return fetch(release.origin, dest, release.sha256, release.size, timeout=self.timeout)
