"""Fetch a payload from its origin (a path or an http(s) URL) and verify its SHA-256.

This is the transport of last resort ("back to source"): the swarm is tried
first when a release has a torrent.  A payload is only ever handed on after
its whole-file SHA-256 matched; a mismatch removes the download.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO
from urllib.parse import urlparse

from zkdeploy import fsutil
from zkdeploy.errors import IntegrityError, PayloadError
from zkdeploy.fsutil import CHUNK
from zkdeploy.transfer.metainfo import payload_digest

log = logging.getLogger(__name__)


def is_url(origin: str) -> bool:
    return urlparse(origin).scheme in ("http", "https", "file")


def fetch(origin: str, dest: Path, expected_sha256: str, expected_size: int | None = None,
          timeout: float = 30.0) -> Path:
    """Copy ``origin`` to ``dest`` and verify it; returns ``dest``.

    The data is written to ``dest.partial`` first and renamed only after the
    SHA-256 matched, so ``dest`` either is the verified payload or is absent,
    even after a power loss: the bytes are fsynced before the rename, the
    directory after it.
    Raises PayloadError when the origin cannot be read, IntegrityError on a
    hash or size mismatch.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    digest = hashlib.sha256()
    size = 0
    try:
        with open_origin(origin, timeout) as src, open(partial, "wb") as out:
            while chunk := src.read(CHUNK):
                digest.update(chunk)
                size += len(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
    except (OSError, urllib.error.URLError) as exc:
        partial.unlink(missing_ok=True)
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc
        raise PayloadError(f"cannot fetch payload from {origin}: {reason}") from None
    actual = digest.hexdigest()
    if actual != expected_sha256 or (expected_size is not None and size != expected_size):
        partial.unlink(missing_ok=True)
        raise IntegrityError(
            f"payload from {origin} does not match its release: sha256 {actual[:16]}... "
            f"({size} bytes), expected {expected_sha256[:16]}... ({expected_size} bytes); nothing was unpacked"
        )
    os.replace(partial, dest)
    fsutil.fsync_dir(dest.parent)
    log.info("fetched %s (%d bytes) from origin, sha256 verified", dest.name, size)
    return dest


def open_origin(origin: str, timeout: float) -> IO[bytes]:
    """Open ``origin`` (an http, https or file URL, or a local path) for reading its bytes."""
    if is_url(origin):
        response: IO[bytes] = urllib.request.urlopen(origin, timeout=timeout)  # typeshed: urlopen returns Any
        return response
    return open(origin, "rb")


def copy_verified(src: Path, dest: Path, expected_sha256: str) -> Path:
    """Copy a local file that was already verified elsewhere (e.g. a swarm download).

    ``dest`` appears only with the whole content, on disk (see ``fetch``).
    """
    actual = payload_digest(src).sha256
    if actual != expected_sha256:
        raise IntegrityError(f"{src} does not match its release sha256; nothing was unpacked")
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    try:
        shutil.copyfile(src, partial)
        fsutil.replace_durably(partial, dest)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise PayloadError(f"cannot copy payload {src} to {dest}: {exc.strerror or exc}") from None
    return dest
