"""Unpack a verified payload (a tar archive, optionally compressed) safely.

Members that would escape the release directory (absolute paths, ``..``,
links pointing outside, device files) make the whole payload refused before
anything lands in the release directory; the archive is unpacked into a
temporary sibling directory (named ``UNPACK_PREFIX...``, a dot-name that
release listings skip), flushed to disk, and renamed into place only when
complete.
"""

from __future__ import annotations

import lzma
import os
import shutil
import tarfile
import tempfile
import zlib
from pathlib import Path

from zkdeploy.errors import PayloadError
from zkdeploy.fsutil import fsync_dir, fsync_tree

#: prefix of the temporary directory an archive is unpacked into (a crash may leave one behind)
UNPACK_PREFIX = ".unpack-"


def check_archive(path: str | Path) -> int:
    """Raise PayloadError unless ``path`` is a tar archive whose members are all safe; returns the member count."""
    try:
        with tarfile.open(path, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                if member.name.startswith("/") or os.path.isabs(member.name):
                    raise PayloadError(f"payload {path}: unsafe member {member.name!r}: absolute path")
                try:
                    tarfile.data_filter(member, "/nonexistent-release-root")
                except tarfile.FilterError as exc:
                    raise PayloadError(f"payload {path}: unsafe member {member.name!r}: {exc}") from None
    except (tarfile.TarError, EOFError, lzma.LZMAError, zlib.error) as exc:
        raise PayloadError(f"payload {path} is not a readable tar archive: {exc or type(exc).__name__}") from None
    except OSError as exc:
        raise PayloadError(f"cannot read payload {path}: {exc.strerror or exc}") from None
    if not members:
        raise PayloadError(f"payload {path} is an empty archive")
    return len(members)


def unpack(archive: str | Path, target: str | Path) -> Path:
    """Unpack ``archive`` so that ``target`` appears complete or not at all.

    Whatever instant a crash or a power loss strikes, ``target`` afterwards is
    either absent or the whole tree with every file's content on disk: the
    tree is fsynced before the rename, the parent directory after it.  A
    crash can leave a ``UNPACK_PREFIX`` directory beside ``target``; the
    caller sweeps those.  An existing ``target`` is left untouched and
    returned (unpacking is idempotent per version).
    """
    target = Path(target)
    if target.is_dir():
        return target
    check_archive(archive)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{UNPACK_PREFIX}{target.name}-", dir=target.parent))
    try:
        with tarfile.open(archive, "r:*") as tar:
            tar.extractall(tmp, filter="data")
        os.chmod(tmp, 0o755)
        os.utime(tmp)  # the directory's mtime is the install time (the archive may carry its own)
        fsync_tree(tmp)
        os.rename(tmp, target)
        fsync_dir(target.parent)
    except (tarfile.TarError, OSError, EOFError, lzma.LZMAError, zlib.error) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise PayloadError(f"cannot unpack {archive} into {target}: {exc}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
