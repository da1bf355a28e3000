"""A fetched payload is on disk before its name says 'verified payload': a power loss right after a
fetch leaves either no payload or the whole verified one, never a verified name over garbage.

The disk cannot be unplugged from a unit test, so the tests watch the system
calls: the payload's bytes (its inode) must be fsynced before the rename that
gives it its final name, and the directory holding that name after it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from zkdeploy.config.schema import AgentConfig
from zkdeploy.model import Release
from zkdeploy.transfer.fetch import copy_verified, fetch
from zkdeploy.transfer.transport import Transport

PAYLOAD = b"verified payload bytes\n" * 2048


class SyscallLog:
    """Records fsyncs (inode and path of the descriptor) and renames, in order."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.events: list[tuple[str, Any, str]] = []
        real_fsync, real_replace, real_rename = os.fsync, os.replace, os.rename

        def fsync(fd: int) -> None:
            self.events.append(("fsync", os.fstat(fd).st_ino, os.readlink(f"/proc/self/fd/{fd}")))
            real_fsync(fd)

        def replace(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
            self.events.append(("rename", os.stat(src).st_ino, os.fspath(dst)))
            real_replace(src, dst, *args, **kwargs)

        def rename(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
            self.events.append(("rename", os.stat(src).st_ino, os.fspath(dst)))
            real_rename(src, dst, *args, **kwargs)

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "replace", replace)
        monkeypatch.setattr(os, "rename", rename)

    def assert_durable(self, dest: Path) -> None:
        """``dest`` got its name by a rename, its inode fsynced before it, its directory after."""
        renames = [i for i, e in enumerate(self.events) if e[0] == "rename" and e[2] == str(dest)]
        assert renames, f"{dest} never got its name by a rename: {self.events}"
        at = renames[-1]
        inode = self.events[at][1]
        assert any(kind == "fsync" and ino == inode for kind, ino, _ in self.events[:at]), (
            f"the bytes of {dest} were not fsynced before its rename: {self.events}")
        assert any(kind == "fsync" and path == str(dest.parent) for kind, _, path in self.events[at:]), (
            f"the directory of {dest} was not fsynced after the rename: {self.events}")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- the origin


def test_a_payload_fetched_from_its_origin_is_durable_before_it_is_named(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    origin = tmp_path / "origin.tgz"
    origin.write_bytes(PAYLOAD)
    dest = tmp_path / "payloads" / "web" / "1.0.payload"
    calls = SyscallLog(monkeypatch)
    fetch(str(origin), dest, _sha(PAYLOAD), len(PAYLOAD))
    calls.assert_durable(dest)
    assert dest.read_bytes() == PAYLOAD


def test_copy_verified_is_durable_before_it_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "downloaded"
    src.write_bytes(PAYLOAD)
    dest = tmp_path / "payloads" / "1.0.payload"
    calls = SyscallLog(monkeypatch)
    copy_verified(src, dest, _sha(PAYLOAD))
    calls.assert_durable(dest)
    assert sorted(os.listdir(dest.parent)) == ["1.0.payload"]


# --------------------------------------------------------------------------- the swarm


class FakeSwarm:
    """Stands for libtorrent: 'downloads' a verified file into the staging directory."""

    listen_endpoint = ("127.0.0.1", 6881)
    running = True  # a started worker

    def download(self, meta: Any, staging: str, sha256: str, peers: Any, *, stall_timeout: float,
                 on_progress: Any) -> str:
        path = Path(staging) / meta.name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(PAYLOAD)
        return str(path)


class FakeTracker:
    def __init__(self) -> None:
        self.announced: list[dict[str, Any]] = []

    def register_peer(self, info_hash: str, node: str, peer: dict[str, Any]) -> None:
        self.announced.append(peer)

    def peers(self, info_hash: str, watch: Any = None) -> dict[str, Any]:
        return {}

    def sibling(self) -> FakeTracker:
        return self  # the tracker's own session: the same fake

    generation = 1

    def on_session_change(self, fn: Any) -> None:
        pass

    def close(self) -> None:
        pass


@pytest.fixture
def transport(tmp_path: Path) -> Transport:
    config = AgentConfig.model_validate({
        "node": "n1", "data_dir": str(tmp_path / "n1"), "services": ["web"],
        "zookeeper": {"hosts": "127.0.0.1:1", "root": "/dc"}, "swarm": {"enabled": True},
    })
    t = Transport(config)
    t.session = FakeSwarm()  # type: ignore[assignment]
    t.store = FakeTracker()  # type: ignore[assignment]
    return t


def test_a_payload_from_the_swarm_is_durable_before_it_is_named(transport: Transport, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    release = Release(service="web", version="1.0", sha256=_sha(PAYLOAD), size=len(PAYLOAD), info_hash="ab" * 20)
    meta = SimpleNamespace(info_hash=release.info_hash, size=len(PAYLOAD), name="web-1.0.tgz")
    dest = tmp_path / "n1" / "payloads" / "web" / "1.0.payload"
    calls = SyscallLog(monkeypatch)
    assert transport._swarm_fetch(release, meta, dest) == dest  # type: ignore[arg-type]
    calls.assert_durable(dest)
    assert dest.read_bytes() == PAYLOAD
    assert transport.store.announced[-1]["complete"] is True  # type: ignore[union-attr]
