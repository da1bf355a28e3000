"""Removing and unpacking releases survives a crash at any instant: a release is complete or absent.

A crash is simulated in-process: the tree removal (or the archive extraction)
does part of its work and then raises SimulatedCrash, which nothing in the
code under test may swallow, exactly where a SIGKILL or a power loss would
stop the real thing.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
import time
from pathlib import Path

import pytest

from zkdeploy.agent.releases import ReleaseDir
from zkdeploy.crash import SimulatedCrash
from zkdeploy.model import Release

FILES = ("VERSION", "bin/serve", "lib/a.py", "lib/b.py", "static/index.html")


def _archive(path: Path, version: str) -> Path:
    """A payload of several files, so that a half-done removal or unpack is visible."""
    with tarfile.open(path, "w:gz") as tar:
        for name in FILES:
            data = f"{name} of {version}\n".encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = int(time.time())
            tar.addfile(info, io.BytesIO(data))
    return path


class CopyFetcher:
    """Fetches a release by copying its payload from a local 'origin' directory."""

    def __init__(self, origin: Path) -> None:
        self.origin = origin
        self.calls: list[str] = []

    def __call__(self, release: Release, dest: Path) -> Path:
        self.calls.append(release.version)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.origin / f"{release.version}.tgz", dest)
        return dest


def _release(origin: Path, version: str) -> Release:
    data = (origin / f"{version}.tgz").read_bytes()
    return Release(service="web", version=version, sha256=hashlib.sha256(data).hexdigest(), size=len(data),
                   origin=str(origin / f"{version}.tgz"))


@pytest.fixture
def origin(tmp_path: Path) -> Path:
    path = tmp_path / "origin"
    path.mkdir()
    for version in ("1.0", "2.0", "3.0"):
        _archive(path / f"{version}.tgz", version)
    return path


@pytest.fixture
def rel(tmp_path: Path) -> ReleaseDir:
    return ReleaseDir(tmp_path / "data", "web")


def _install(rel: ReleaseDir, origin: Path, versions: list[str]) -> None:
    base = time.time() - 1000
    for i, version in enumerate(versions):
        rel.install(_release(origin, version), CopyFetcher(origin))
        os.utime(rel.path(version), (base + i, base + i))


def _point(rel: ReleaseDir, version: str) -> None:
    rel.link.parent.mkdir(parents=True, exist_ok=True)
    rel.link.unlink(missing_ok=True)
    os.symlink(rel.link_target(version), rel.link)


def _complete(rel: ReleaseDir, version: str) -> bool:
    return all((rel.path(version) / name).read_text() == f"{name} of {version}\n" for name in FILES)


def _half_rmtree(real_rmtree):
    """An rmtree that deletes a couple of files, then 'dies' (SIGKILL stand-in)."""
    def rmtree(path, *args, **kwargs):
        files = sorted(p for p in Path(path).rglob("*") if p.is_file())
        for victim in files[:2]:
            victim.unlink()
        raise SimulatedCrash("rmtree")
    return rmtree


# --------------------------------------------------------------------------- removal


def test_a_crash_in_the_middle_of_pruning_never_leaves_a_half_deleted_release(
        rel: ReleaseDir, origin: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _install(rel, origin, ["1.0", "2.0", "3.0"])
    _point(rel, "3.0")
    real_rmtree = shutil.rmtree
    monkeypatch.setattr(shutil, "rmtree", _half_rmtree(real_rmtree))
    with pytest.raises(SimulatedCrash):
        rel.prune(keep=2, protect=set())
    monkeypatch.setattr(shutil, "rmtree", real_rmtree)
    # what a restarted agent sees: 1.0 is gone as a whole, the others are whole
    assert not rel.has("1.0")
    assert rel.installed() == ["2.0", "3.0"]
    assert _complete(rel, "2.0") and _complete(rel, "3.0")
    leftovers = [p.name for p in rel.root.iterdir() if p.name.startswith(".")]
    assert len(leftovers) == 1 and leftovers[0].startswith(".trash-1.0-")
    # the next prune clears the leftover and removes nothing that must stay
    assert rel.prune(keep=2, protect=set()) == []
    assert sorted(p.name for p in rel.root.iterdir()) == ["2.0", "3.0"]


def test_leftover_trash_is_cleared_by_the_next_install(rel: ReleaseDir, origin: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    _install(rel, origin, ["1.0", "2.0"])
    real_rmtree = shutil.rmtree
    monkeypatch.setattr(shutil, "rmtree", _half_rmtree(real_rmtree))
    with pytest.raises(SimulatedCrash):
        rel.remove("1.0")
    monkeypatch.setattr(shutil, "rmtree", real_rmtree)
    rel.install(_release(origin, "3.0"), CopyFetcher(origin))
    assert sorted(p.name for p in rel.root.iterdir()) == ["2.0", "3.0"]


def test_remove_takes_the_release_and_its_payload_and_is_idempotent(rel: ReleaseDir, origin: Path) -> None:
    _install(rel, origin, ["1.0", "2.0"])
    assert rel.remove("1.0") is True
    assert not rel.has("1.0")
    assert not rel.payload_path("1.0").exists()
    assert rel.remove("1.0") is False
    assert rel.installed() == ["2.0"]
    assert rel.payload_path("2.0").exists()
    assert [p.name for p in rel.root.iterdir()] == ["2.0"]


def test_remove_refuses_the_live_release(rel: ReleaseDir, origin: Path) -> None:
    from zkdeploy.errors import PayloadError

    _install(rel, origin, ["1.0"])
    _point(rel, "1.0")
    with pytest.raises(PayloadError, match="live release"):
        rel.remove("1.0")
    assert _complete(rel, "1.0")


# --------------------------------------------------------------------------- unpacking


def test_a_crash_in_the_middle_of_unpacking_leaves_no_release(rel: ReleaseDir, origin: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    real_extractall = tarfile.TarFile.extractall

    def half_extract(self: tarfile.TarFile, path: str, *args, **kwargs) -> None:
        self.extract(self.getmembers()[0], path, filter="data")
        raise SimulatedCrash("extract")

    monkeypatch.setattr(tarfile.TarFile, "extractall", half_extract)
    with pytest.raises(SimulatedCrash):
        rel.install(_release(origin, "1.0"), CopyFetcher(origin))
    monkeypatch.setattr(tarfile.TarFile, "extractall", real_extractall)
    assert not rel.has("1.0")
    assert rel.installed() == []
    # the retry reuses the verified payload and lands a complete release, with no leftovers
    fetcher = CopyFetcher(origin)
    rel.install(_release(origin, "1.0"), fetcher)
    assert fetcher.calls == []
    assert _complete(rel, "1.0")
    assert [p.name for p in rel.root.iterdir()] == ["1.0"]


def test_an_unpacked_release_is_on_disk_before_it_appears(rel: ReleaseDir, origin: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Every file and directory of the tree is fsynced before the rename, the parent after it."""
    events: list[tuple[str, str]] = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def rename(src, dst, *args, **kwargs) -> None:
        events.append(("rename", os.fspath(dst)))
        real_rename(src, dst, *args, **kwargs)

    rel.payloads.mkdir(parents=True)
    shutil.copyfile(origin / "1.0.tgz", rel.payload_path("1.0"))
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    rel.install(_release(origin, "1.0"), CopyFetcher(origin))
    target = str(rel.path("1.0"))
    at = events.index(("rename", target))
    synced_before = {Path(p).name for kind, p in events[:at] if kind == "fsync"}
    assert {Path(name).name for name in FILES} <= synced_before
    assert {"bin", "lib", "static"} <= synced_before
    assert ("fsync", str(rel.root)) in events[at:]
