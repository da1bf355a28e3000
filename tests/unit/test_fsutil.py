"""The shared file primitives: one SHA-256 of a file, one directory fsync."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from zkdeploy.fsutil import CHUNK, FileDigest, fsync_dir, sha256_file


def test_sha256_file_matches_hashlib_across_chunk_boundaries(tmp_path: Path) -> None:
    data = bytes(range(256)) * (CHUNK // 256) + b"tail"  # one full chunk and a short one
    path = tmp_path / "payload"
    path.write_bytes(data)
    digest = sha256_file(path)
    assert digest == FileDigest(hashlib.sha256(data).hexdigest(), len(data))
    sha, size = digest  # still unpacks like the (hex, size) pair callers used before
    assert (sha, size) == (digest.sha256, digest.size)


def test_sha256_file_of_an_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty"
    path.write_bytes(b"")
    assert sha256_file(str(path)) == (hashlib.sha256(b"").hexdigest(), 0)


def test_sha256_file_missing_raises_oserror(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        sha256_file(tmp_path / "missing")


def test_fsync_dir_accepts_a_directory_and_refuses_a_file(tmp_path: Path) -> None:
    fsync_dir(tmp_path)
    fsync_dir(str(tmp_path))
    (tmp_path / "f").write_text("x")
    with pytest.raises(NotADirectoryError):
        fsync_dir(tmp_path / "f")
