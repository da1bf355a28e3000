"""A payload already on disk is checked against its release before it is unpacked (integrity invariant).

It may be a leftover of a crash, of a power loss that kept a name but not its
bytes, or of someone's hand: whatever it is, no byte that does not match the
release's SHA-256 and size is ever unpacked.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from zkdeploy.agent.releases import ReleaseDir
from zkdeploy.errors import PayloadError
from zkdeploy.model import Release

from .test_release_removal import CopyFetcher, _archive, _complete, _release


@pytest.fixture
def origin(tmp_path: Path) -> Path:
    path = tmp_path / "origin"
    path.mkdir()
    for version in ("1.0", "2.0"):
        _archive(path / f"{version}.tgz", version)
    return path


@pytest.fixture
def rel(tmp_path: Path) -> ReleaseDir:
    return ReleaseDir(tmp_path / "data", "web")


def _leave_payload(rel: ReleaseDir, version: str, data: bytes) -> None:
    rel.payloads.mkdir(parents=True, exist_ok=True)
    rel.payload_path(version).write_bytes(data)


def test_a_payload_on_disk_that_matches_is_reused(rel: ReleaseDir, origin: Path) -> None:
    _leave_payload(rel, "1.0", (origin / "1.0.tgz").read_bytes())
    fetcher = CopyFetcher(origin)
    rel.install(_release(origin, "1.0"), fetcher)
    assert fetcher.calls == []
    assert _complete(rel, "1.0")


def test_a_payload_on_disk_of_another_release_is_fetched_again_not_unpacked(rel: ReleaseDir, origin: Path) -> None:
    # a valid archive, but of 2.0: unpacking it as 1.0 would run the wrong code
    _leave_payload(rel, "1.0", (origin / "2.0.tgz").read_bytes())
    fetcher = CopyFetcher(origin)
    rel.install(_release(origin, "1.0"), fetcher)
    assert fetcher.calls == ["1.0"]
    assert _complete(rel, "1.0")
    assert rel.payload_path("1.0").read_bytes() == (origin / "1.0.tgz").read_bytes()


def test_a_truncated_payload_on_disk_is_fetched_again(rel: ReleaseDir, origin: Path) -> None:
    good = (origin / "1.0.tgz").read_bytes()
    _leave_payload(rel, "1.0", good[: len(good) // 2])
    fetcher = CopyFetcher(origin)
    rel.install(_release(origin, "1.0"), fetcher)
    assert fetcher.calls == ["1.0"]
    assert _complete(rel, "1.0")


def test_same_size_other_bytes_is_caught_by_the_hash(rel: ReleaseDir, origin: Path) -> None:
    good = bytearray((origin / "1.0.tgz").read_bytes())
    good[-1] ^= 0xFF  # the gzip trailer: tar may still read it, the hash must not match
    _leave_payload(rel, "1.0", bytes(good))
    fetcher = CopyFetcher(origin)
    rel.install(_release(origin, "1.0"), fetcher)
    assert fetcher.calls == ["1.0"]
    assert rel.payload_path("1.0").read_bytes() == (origin / "1.0.tgz").read_bytes()


def test_a_bad_payload_on_disk_is_never_unpacked_even_when_the_fetch_fails(rel: ReleaseDir, origin: Path) -> None:
    _leave_payload(rel, "1.0", (origin / "2.0.tgz").read_bytes())

    def failing(release: Release, dest: Path) -> Path:
        raise PayloadError(f"cannot fetch {release.version}: origin down")

    with pytest.raises(PayloadError, match="origin down"):
        rel.install(_release(origin, "1.0"), failing)
    assert not rel.has("1.0")
    assert not rel.payload_path("1.0").exists()  # the mismatching bytes are gone, not kept for seeding


def test_the_sizes_of_release_and_payload_must_agree(rel: ReleaseDir, origin: Path) -> None:
    data = (origin / "1.0.tgz").read_bytes()
    _leave_payload(rel, "1.0", data)
    release = _release(origin, "1.0")
    wrong_size = Release(service=release.service, version=release.version, sha256=release.sha256,
                         size=release.size + 1, origin=release.origin)
    fetched: list[str] = []

    def fetcher(release: Release, dest: Path) -> Path:
        fetched.append(release.version)
        shutil.copyfile(origin / "1.0.tgz", dest)
        return dest

    rel.install(wrong_size, fetcher)
    assert fetched == ["1.0"]
