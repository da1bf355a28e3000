"""Small file-system primitives shared by the journal, the release directory and the swarm.

Only plain ``OSError`` comes out of here: each caller turns it into the
error kind of its own domain (a corrupt journal backup, an unreadable
payload), because only the caller knows which one it is.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import NamedTuple

#: Read size for hashing: large enough to keep the loop cheap, small enough for memory.
CHUNK = 1 << 20


class FileDigest(NamedTuple):
    """A file's SHA-256 (lowercase hex) and the number of bytes that were hashed."""

    sha256: str
    size: int


def sha256_file(path: str | os.PathLike[str]) -> FileDigest:
    """Hash the whole file at ``path`` in one pass; raises OSError when it cannot be read.

    ``size`` is the count of bytes hashed, so digest and size always describe
    the same content even if the file changes while it is read.
    """
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return FileDigest(digest.hexdigest(), size)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Flush a directory's entries (a rename, create or unlink in it) to disk.

    Once this returns, the changes made to ``path``'s entries survive a power
    loss.  Raises OSError (e.g. NotADirectoryError) when ``path`` is not a
    readable directory.
    """
    fd = os.open(Path(path), os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
