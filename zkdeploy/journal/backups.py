"""Durable file primitives and the journal's content-addressed backup area.

Backups (previous file contents, new file contents, tar archives of removed
trees) live as plain files next to the journal database, named by their
SHA-256: ``<journal>.backups/<aa>/<sha256>``.  Plain files, so an operator in
an emergency can ``cp`` or ``tar -x`` them by hand (see ``backout-steps``).
Every blob is written to a temporary name, fsynced, renamed into place and
its directory fsynced before the journal row that refers to it is committed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

from zkdeploy.errors import JournalError
from zkdeploy.fsutil import CHUNK, fsync_dir, sha256_file


def _tmp_name(target: Path, tag: str) -> Path:
    return target.with_name(f".{target.name}.{tag}-{os.getpid()}-{os.urandom(4).hex()}")


def atomic_write(path: Path, data: bytes, mode: int, owner: tuple[int, int] | None = None) -> None:
    """Replace ``path`` with ``data``: readers see the old file or the new one, never a mix.

    The file is written to a temporary sibling, its mode (and owner, when
    given) set, fsynced, renamed over ``path``, and the directory fsynced.
    """
    tmp = _tmp_name(path, "zkw")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            if owner is not None:
                os.fchown(fh.fileno(), owner[0], owner[1])
            os.fchmod(fh.fileno(), mode)
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_symlink(link: Path, target: str) -> None:
    """Point ``link`` at ``target`` atomically (temp symlink renamed over ``link``)."""
    tmp = _tmp_name(link, "zkl")
    os.symlink(target, tmp)
    try:
        os.replace(tmp, link)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(link.parent)


def remove_path(path: Path) -> None:
    """Remove a file, symlink or directory tree if present (idempotent)."""
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.is_dir():
        shutil.rmtree(path)
    else:
        return
    fsync_dir(path.parent)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class BackupStore:
    """The content-addressed blob area of one journal.

    ``path_for`` is pure (it never touches the disk), so NoAction runs can
    name the blob a live run would write.  The ``put_*`` methods guarantee
    that when they return the blob is durably on disk under its hash.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path_for(self, sha256: str) -> Path:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise JournalError(f"not a sha256 digest: {sha256!r}")
        return self.root / sha256[:2] / sha256

    def _ensure_dir(self, sha256: str) -> Path:
        target = self.path_for(sha256)
        if not target.parent.is_dir():
            target.parent.mkdir(parents=True, exist_ok=True)
            fsync_dir(target.parent.parent)
            fsync_dir(self.root.parent)
        return target

    def _install(self, tmp: Path, sha256: str) -> Path:
        target = self._ensure_dir(sha256)
        if target.exists():
            tmp.unlink(missing_ok=True)
        else:
            os.replace(tmp, target)
            fsync_dir(target.parent)
        return target

    def put_bytes(self, data: bytes) -> str:
        """Store ``data`` durably; return its sha256 (idempotent)."""
        sha = sha256_bytes(data)
        if self.path_for(sha).exists():
            return sha
        self.root.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".blob-", dir=self.root)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        self._install(Path(name), sha)
        return sha

    def put_file(self, source: Path) -> str:
        """Store a copy of the regular file ``source``; return its sha256."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".blob-", dir=self.root)
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
            for chunk in iter(lambda: src.read(CHUNK), b""):
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        sha = digest.hexdigest()
        self._install(Path(name), sha)
        return sha

    def put_tree(self, source: Path) -> str:
        """Store a tar archive of the directory ``source`` (member name = its basename).

        The archive keeps contents, modes, owners and symlinks, so extracting
        it in the parent directory recreates the tree.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".tree-", dir=self.root)
        with os.fdopen(fd, "wb") as out:
            with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
                tar.add(str(source), arcname=source.name, recursive=True)
            out.flush()
            os.fsync(out.fileno())
        sha = sha256_file(name).sha256
        self._install(Path(name), sha)
        return sha

    def verify(self, sha256: str) -> Path:
        """Return the blob's path after checking it exists and matches its hash."""
        path = self.path_for(sha256)
        return verify_blob(path, sha256)


def verify_blob(path: Path, sha256: str) -> Path:
    """Check that ``path`` holds content hashing to ``sha256``; return the path.

    Raises JournalError naming the file when it is missing or altered.
    """
    if not path.is_file():
        raise JournalError(f"journal backup {path} is missing")
    actual = sha256_file(path).sha256
    if actual != sha256:
        raise JournalError(f"journal backup {path} is corrupt (sha256 {actual}, expected {sha256})")
    return path


def read_blob(path: Path, sha256: str) -> bytes:
    """Return the verified content of a blob."""
    verify_blob(path, sha256)
    return path.read_bytes()


def extract_tree(archive: Path, dest: Path) -> None:
    """Recreate directory ``dest`` from a ``put_tree`` archive, replacing what is there.

    The archive is unpacked into a temporary sibling first, then whatever is
    left at ``dest`` (a partial removal) is removed and the new tree renamed
    into place, so re-running this after a crash is safe.
    """
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.restore-", dir=dest.parent))
    try:
        with tarfile.open(archive, mode="r") as tar:
            members = tar.getmembers()
            for member in members:
                top = member.name.split("/", 1)[0]
                if top != dest.name or member.name.startswith("/") or ".." in member.name.split("/"):
                    raise JournalError(f"journal backup {archive} has unexpected member {member.name!r}")
            tar.extractall(staging, members=members, filter="fully_trusted")
        remove_path(dest)
        os.replace(staging / dest.name, dest)
        fsync_dir(dest.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
