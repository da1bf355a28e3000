"""Fetching a payload from its origin (path or http) and unpacking it safely."""

from __future__ import annotations

import functools
import hashlib
import io
import os
import tarfile
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from zkdeploy.errors import IntegrityError, PayloadError
from zkdeploy.transfer.fetch import copy_verified, fetch
from zkdeploy.transfer.metainfo import payload_digest
from zkdeploy.transfer.unpack import check_archive, unpack

PAYLOAD = b"release payload\n" * 4096


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A directory served over http on 127.0.0.1 (a free port), and its base URL."""
    root = tmp_path / "www"
    root.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


# --------------------------------------------------------------------------- payload_digest


def test_payload_digest_gives_digest_and_size(tmp_path: Path) -> None:
    path = tmp_path / "p"
    path.write_bytes(PAYLOAD)
    assert payload_digest(path) == (_sha(PAYLOAD), len(PAYLOAD))


def test_payload_digest_of_an_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty"
    path.write_bytes(b"")
    assert payload_digest(path) == (_sha(b""), 0)


def test_payload_digest_missing(tmp_path: Path) -> None:
    with pytest.raises(PayloadError) as info:
        payload_digest(tmp_path / "missing")
    assert "cannot read payload" in str(info.value) and "No such file or directory" in str(info.value)
    assert info.value.exit_code == 5


# --------------------------------------------------------------------------- fetch


def test_fetch_from_a_local_path_verifies_and_renames(tmp_path: Path) -> None:
    origin = tmp_path / "origin.tgz"
    origin.write_bytes(PAYLOAD)
    dest = tmp_path / "payloads" / "web" / "1.0.payload"
    assert fetch(str(origin), dest, _sha(PAYLOAD), len(PAYLOAD)) == dest
    assert dest.read_bytes() == PAYLOAD
    assert sorted(os.listdir(dest.parent)) == ["1.0.payload"]


def test_fetch_with_a_wrong_sha256_leaves_nothing(tmp_path: Path) -> None:
    origin = tmp_path / "origin.tgz"
    origin.write_bytes(PAYLOAD)
    dest = tmp_path / "payloads" / "1.0.payload"
    with pytest.raises(IntegrityError) as info:
        fetch(str(origin), dest, "0" * 64)
    assert "does not match its release" in str(info.value)
    assert "nothing was unpacked" in str(info.value)
    assert info.value.exit_code == 5
    assert os.listdir(dest.parent) == []


def test_fetch_with_a_wrong_size_leaves_nothing(tmp_path: Path) -> None:
    origin = tmp_path / "origin.tgz"
    origin.write_bytes(PAYLOAD)
    dest = tmp_path / "out" / "1.0.payload"
    with pytest.raises(IntegrityError):
        fetch(str(origin), dest, _sha(PAYLOAD), len(PAYLOAD) + 1)
    assert os.listdir(dest.parent) == []


def test_fetch_from_a_missing_origin(tmp_path: Path) -> None:
    dest = tmp_path / "out" / "1.0.payload"
    with pytest.raises(PayloadError) as info:
        fetch(str(tmp_path / "nowhere.tgz"), dest, _sha(PAYLOAD))
    assert not isinstance(info.value, IntegrityError)
    assert f"cannot fetch payload from {tmp_path / 'nowhere.tgz'}" in str(info.value)
    assert os.listdir(dest.parent) == []


def test_fetch_over_http(http_root: tuple[Path, str], tmp_path: Path) -> None:
    root, base = http_root
    (root / "web-1.0.tgz").write_bytes(PAYLOAD)
    dest = tmp_path / "out" / "1.0.payload"
    fetch(f"{base}/web-1.0.tgz", dest, _sha(PAYLOAD), len(PAYLOAD), timeout=5)
    assert dest.read_bytes() == PAYLOAD
    assert os.listdir(dest.parent) == ["1.0.payload"]


def test_fetch_over_http_with_a_wrong_sha256(http_root: tuple[Path, str], tmp_path: Path) -> None:
    root, base = http_root
    (root / "web-1.0.tgz").write_bytes(PAYLOAD + b"tampered")
    dest = tmp_path / "out" / "1.0.payload"
    with pytest.raises(IntegrityError):
        fetch(f"{base}/web-1.0.tgz", dest, _sha(PAYLOAD), timeout=5)
    assert os.listdir(dest.parent) == []


def test_fetch_over_http_404(http_root: tuple[Path, str], tmp_path: Path) -> None:
    _, base = http_root
    dest = tmp_path / "out" / "1.0.payload"
    with pytest.raises(PayloadError) as info:
        fetch(f"{base}/missing.tgz", dest, _sha(PAYLOAD), timeout=5)
    assert f"cannot fetch payload from {base}/missing.tgz" in str(info.value)
    assert os.listdir(dest.parent) == []


def test_fetch_over_http_connection_refused(tmp_path: Path) -> None:
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dest = tmp_path / "out" / "1.0.payload"
    with pytest.raises(PayloadError) as info:
        fetch(f"http://127.0.0.1:{port}/p.tgz", dest, _sha(PAYLOAD), timeout=5)
    assert "refused" in str(info.value).lower()
    assert os.listdir(dest.parent) == []


def test_copy_verified(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.write_bytes(PAYLOAD)
    dest = tmp_path / "a" / "b"
    assert copy_verified(src, dest, _sha(PAYLOAD)) == dest
    assert dest.read_bytes() == PAYLOAD
    with pytest.raises(IntegrityError):
        copy_verified(src, tmp_path / "c", "f" * 64)
    assert not (tmp_path / "c").exists()


# --------------------------------------------------------------------------- unpack


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return path


def _file(name: str, data: bytes = b"x", mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.mode = mode
    return info, data


def _special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    return info, None


def _good_archive(path: Path) -> Path:
    return _tar(path, [
        _special("bin", tarfile.DIRTYPE),
        _file("bin/run", b"#!/bin/sh\necho hi\n", 0o755),
        _file("VERSION", b"1.0\n"),
        _special("current-version", tarfile.SYMTYPE, "VERSION"),
    ])


@pytest.fixture
def release_parent(tmp_path: Path) -> Path:
    """The releases directory of a service, holding one earlier release."""
    parent = tmp_path / "releases" / "web"
    (parent / "0.9").mkdir(parents=True)
    (parent / "0.9" / "VERSION").write_text("0.9\n")
    return parent


def test_unpack_a_good_archive(tmp_path: Path, release_parent: Path) -> None:
    archive = _good_archive(tmp_path / "p.tgz")
    assert check_archive(archive) == 4
    target = release_parent / "1.0"
    assert unpack(archive, target) == target
    assert (target / "VERSION").read_text() == "1.0\n"
    assert os.access(target / "bin" / "run", os.X_OK)
    assert os.readlink(target / "current-version") == "VERSION"
    assert (target.stat().st_mode & 0o777) == 0o755
    # atomic: no temporary directory left behind
    assert sorted(os.listdir(release_parent)) == ["0.9", "1.0"]


def test_unpack_creates_missing_parents(tmp_path: Path) -> None:
    archive = _good_archive(tmp_path / "p.tgz")
    target = tmp_path / "data" / "releases" / "web" / "1.0"
    unpack(archive, target)
    assert (target / "VERSION").read_text() == "1.0\n"


def test_unpack_is_idempotent(tmp_path: Path, release_parent: Path) -> None:
    target = release_parent / "1.0"
    unpack(_good_archive(tmp_path / "p.tgz"), target)
    other = _tar(tmp_path / "other.tgz", [_file("VERSION", b"other\n")])
    assert unpack(other, target) == target
    assert (target / "VERSION").read_text() == "1.0\n"
    assert sorted(os.listdir(release_parent)) == ["0.9", "1.0"]


@pytest.mark.parametrize("mode", ["w", "w:gz", "w:bz2", "w:xz"])
def test_unpack_plain_and_compressed_tars(tmp_path: Path, mode: str) -> None:
    archive = _tar(tmp_path / "p.tar", [_file("a.txt", b"a")], mode)
    unpack(archive, tmp_path / "r" / "1.0")
    assert (tmp_path / "r" / "1.0" / "a.txt").read_bytes() == b"a"


UNSAFE = {
    "parent-dir": [_file("ok.txt"), _file("../evil", b"pwned")],
    "nested-parent-dir": [_file("a/../../evil", b"pwned")],
    "absolute-path-with-parent-dir": [_file("/../evil", b"pwned")],
    "symlink-outside": [_special("link", tarfile.SYMTYPE, "../../evil")],
    "absolute-symlink": [_special("link", tarfile.SYMTYPE, "/etc/passwd")],
    "symlink-then-write-through": [_special("d", tarfile.SYMTYPE, ".."), _file("d/evil", b"pwned")],
    "hardlink-outside": [_special("link", tarfile.LNKTYPE, "../evil")],
    "char-device": [_special("null", tarfile.CHRTYPE)],
    "block-device": [_special("sda", tarfile.BLKTYPE)],
    "fifo": [_special("pipe", tarfile.FIFOTYPE)],
}


@pytest.mark.parametrize("case", sorted(UNSAFE))
def test_unsafe_archives_are_refused_and_nothing_is_created(tmp_path: Path, release_parent: Path,
                                                            case: str) -> None:
    archive = _tar(tmp_path / "p.tgz", UNSAFE[case])
    before_tmp = sorted(os.listdir(tmp_path))
    with pytest.raises(PayloadError) as info:
        check_archive(archive)
    assert "unsafe member" in str(info.value)
    with pytest.raises(PayloadError):
        unpack(archive, release_parent / "1.0")
    assert os.listdir(release_parent) == ["0.9"]
    assert sorted(os.listdir(tmp_path)) == before_tmp
    assert not (tmp_path / "releases" / "evil").exists()


def test_an_absolute_member_path_never_lands_outside(tmp_path: Path, release_parent: Path) -> None:
    outside = tmp_path / "outside-evil"
    archive = _tar(tmp_path / "p.tgz", [_file(str(outside), b"pwned")])
    try:
        unpack(archive, release_parent / "1.0")
    except PayloadError:
        pass
    assert not outside.exists()
    assert sorted(os.listdir(tmp_path)) == ["p.tgz", "releases"]


def test_an_absolute_member_path_is_refused(tmp_path: Path, release_parent: Path) -> None:
    # unpack.py's docstring: absolute paths "make the whole payload refused"
    archive = _tar(tmp_path / "p.tgz", [_file("VERSION", b"1.0\n"), _file("/etc/zkdeploy-evil", b"pwned")])
    with pytest.raises(PayloadError) as info:
        check_archive(archive)
    assert "unsafe member" in str(info.value)
    with pytest.raises(PayloadError):
        unpack(archive, release_parent / "1.0")
    assert os.listdir(release_parent) == ["0.9"]


def test_unsafe_archive_does_not_create_a_missing_parent(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "p.tgz", [_file("../evil")])
    with pytest.raises(PayloadError):
        unpack(archive, tmp_path / "releases" / "web" / "1.0")
    assert sorted(os.listdir(tmp_path)) == ["p.tgz"]


def test_not_a_tar_is_refused(tmp_path: Path, release_parent: Path) -> None:
    archive = tmp_path / "p.tgz"
    archive.write_bytes(b"this is not an archive\n" * 100)
    with pytest.raises(PayloadError) as info:
        unpack(archive, release_parent / "1.0")
    assert "is not a readable tar archive" in str(info.value)
    assert os.listdir(release_parent) == ["0.9"]


def test_a_zero_byte_file_is_refused(tmp_path: Path, release_parent: Path) -> None:
    archive = tmp_path / "p.tgz"
    archive.write_bytes(b"")
    with pytest.raises(PayloadError):
        unpack(archive, release_parent / "1.0")
    assert os.listdir(release_parent) == ["0.9"]


def test_an_archive_without_members_is_refused(tmp_path: Path, release_parent: Path) -> None:
    archive = _tar(tmp_path / "p.tgz", [])
    with pytest.raises(PayloadError) as info:
        unpack(archive, release_parent / "1.0")
    assert "is an empty archive" in str(info.value)
    assert os.listdir(release_parent) == ["0.9"]


def test_a_truncated_archive_is_refused(tmp_path: Path, release_parent: Path) -> None:
    full = _tar(tmp_path / "full.tgz", [_file(f"f{i}", os.urandom(20000)) for i in range(5)])
    archive = tmp_path / "p.tgz"
    archive.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(PayloadError):
        unpack(archive, release_parent / "1.0")
    assert os.listdir(release_parent) == ["0.9"]


def test_check_archive_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PayloadError) as info:
        check_archive(tmp_path / "missing.tgz")
    assert info.value.exit_code == 5
