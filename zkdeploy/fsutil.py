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


def fsync_file(path: str | os.PathLike[str]) -> None:
    """Flush a file's content to disk; once this returns its bytes survive a power loss.

    Its name is only durable after ``fsync_dir`` of the directory holding it.
    """
    fd = os.open(Path(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: str | os.PathLike[str]) -> None:
    """Flush every regular file and directory under ``root`` (``root`` included) to disk.

    Symlinks are not followed.  Meant for a tree about to be renamed into
    place: after this and a rename plus ``fsync_dir`` of the new parent, a
    power loss cannot leave the tree present with files missing or empty.
    """
    for dirpath, _dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames:
            path = os.path.join(dirpath, name)
            if os.path.isfile(path) and not os.path.islink(path):
                fsync_file(path)
        fsync_dir(dirpath)


def replace_durably(src: str | os.PathLike[str], dest: str | os.PathLike[str]) -> None:
    """Rename the file ``src`` over ``dest`` so that after a power loss ``dest`` is either
    what it was before or ``src``'s complete content: ``src`` is fsynced, renamed, then the
    directory entry is fsynced."""
    fsync_file(src)
    os.replace(src, dest)
    fsync_dir(Path(dest).parent)


def write_durably(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary name beside it, so that after a power loss
    ``path`` holds either what it held before or the whole of ``data``."""
    tmp = Path(str(path) + ".tmp")
    tmp.write_bytes(data)
    replace_durably(tmp, path)
