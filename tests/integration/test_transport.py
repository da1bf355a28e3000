"""The agent's transport against a real ZooKeeper and real libtorrent sessions."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from zkdeploy.config.schema import AgentConfig
from zkdeploy.coordination import Store
from zkdeploy.errors import IntegrityError, PayloadError
from zkdeploy.model import Release
from zkdeploy.testing.zkserver import free_port
from zkdeploy.transfer.torrent import make_torrent
from zkdeploy.transfer.transport import TORRENT_BLOB, Transport, peer_order

pytestmark = pytest.mark.integration


def payload(path: Path, size: int = 3 << 20) -> Path:
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("blob")
        info.size = size
        tar.addfile(info, io.BytesIO(bytes(range(256)) * (size // 256)))
    return path


def transport(tmp_path: Path, name: str, zk_hosts: str, zk_root: str, rack: str = "r1") -> Transport:
    config = AgentConfig.model_validate({
        "node": name, "data_dir": str(tmp_path / name), "services": ["db"],
        "zookeeper": {"hosts": zk_hosts, "root": zk_root}, "labels": {"rack": rack, "dc": "d1"},
        "swarm": {"listen_port": free_port(), "allow_multiple_connections_per_ip": True, "stall_timeout": 5},
    })
    t = Transport(config)
    t.start()
    return t


def stage(store: Store, path: Path, version: str = "2", corrupt_blob: bool = False) -> Release:
    meta = make_torrent(path)
    release = Release(service="db", version=version, sha256=meta.sha256, size=meta.size, origin=str(path),
                      info_hash=meta.info_hash)
    blob = meta.metainfo[: len(meta.metainfo) // 2] if corrupt_blob else meta.metainfo
    store.put_release(release, {TORRENT_BLOB: blob})
    return release


def test_first_host_goes_to_source_and_the_next_fetches_from_it(tmp_path, store, zk_hosts, zk_root):
    release = stage(store, payload(tmp_path / "db-2.tar"))
    a = transport(tmp_path, "a", zk_hosts, zk_root)
    b = transport(tmp_path, "b", zk_hosts, zk_root, rack="r2")
    try:
        for t in (a, b):
            t.attach(store)
        got_a = a.fetch(release, tmp_path / "a" / "db-2.payload")  # nobody holds it: a is elected
        assert got_a.read_bytes() == (tmp_path / "db-2.tar").read_bytes()
        (tmp_path / "db-2.tar").unlink()  # the origin is gone: b can only get it from a
        got_b = b.fetch(release, tmp_path / "b" / "db-2.payload")
        assert got_b.read_bytes() == got_a.read_bytes()
        peers = store.peers(release.info_hash)
        assert set(peers) == {"a", "b"} and all(p["complete"] for p in peers.values())
        b.forget(release, got_b)
        assert set(store.peers(release.info_hash)) == {"a"}
    finally:
        a.close()
        b.close()


def test_corrupt_metainfo_in_zookeeper_is_a_clear_error_and_nothing_is_fetched(tmp_path, store, zk_hosts, zk_root):
    release = stage(store, payload(tmp_path / "db-2.tar"), corrupt_blob=True)
    t = transport(tmp_path, "a", zk_hosts, zk_root)
    try:
        t.attach(store)
        dest = tmp_path / "a" / "db-2.payload"
        with pytest.raises(PayloadError, match="corrupt torrent metainfo in ZooKeeper"):
            t.fetch(release, dest)
        assert not dest.exists()
    finally:
        t.close()


def test_origin_fallback_still_verifies_the_hash(tmp_path, store, zk_hosts, zk_root):
    release = stage(store, payload(tmp_path / "db-2.tar"))
    payload(tmp_path / "db-2.tar", size=2 << 20)  # the origin changed after staging
    t = transport(tmp_path, "a", zk_hosts, zk_root)
    try:
        t.attach(store)
        dest = tmp_path / "a" / "db-2.payload"
        with pytest.raises(IntegrityError):
            t.fetch(release, dest)
        assert not dest.exists() and not dest.with_name(dest.name + ".partial").exists()
    finally:
        t.close()


def test_peer_order_prefers_rack_then_datacenter_then_complete():
    peers = {
        "far": {"address": "198.18.0.9", "port": 1, "rack": "r9", "dc": "d9", "complete": True},
        "dc": {"address": "198.18.0.5", "port": 1, "rack": "r5", "dc": "d1", "complete": True},
        "rack-partial": {"address": "198.18.0.3", "port": 1, "rack": "r1", "dc": "d1", "complete": False},
        "rack": {"address": "198.18.0.2", "port": 1, "rack": "r1", "dc": "d1", "complete": True},
        "me": {"address": "198.18.0.1", "port": 1, "rack": "r1", "dc": "d1", "complete": False},
    }
    assert peer_order(peers, "me", "r1", "d1", 10) == [
        ("198.18.0.2", 1), ("198.18.0.3", 1), ("198.18.0.5", 1), ("198.18.0.9", 1)]
    assert peer_order(peers, "me", "r1", "d1", 2) == [("198.18.0.2", 1), ("198.18.0.3", 1)]


def test_stage_seed_until_serves_the_first_copy(tmp_path, store, zk_hosts, zk_root):
    """`zkdeploy stage --seed-until 1` seeds from the operator's side until a host holds the payload."""
    import threading

    from click.testing import CliRunner

    from zkdeploy.cli.main import cli

    (tmp_path / "services.yaml").write_text("services:\n  db: {quorum: 1, start: 'sleep 1'}\n")
    runner = CliRunner()
    base = ["--zk", zk_hosts, "--root", zk_root]
    assert runner.invoke(cli, [*base, "services", "apply", str(tmp_path / "services.yaml")]).exit_code == 0
    path = payload(tmp_path / "db-2.tar")
    agent = transport(tmp_path, "a", zk_hosts, zk_root)
    agent.attach(store)
    got: dict[str, object] = {}

    def fetch_when_staged() -> None:
        import time
        deadline = time.monotonic() + 30
        while store.release("db", "2") is None or not store.peers(store.release("db", "2").info_hash):
            if time.monotonic() > deadline:
                return
            time.sleep(0.1)
        release = store.release("db", "2")
        got["path"] = agent.fetch(release, tmp_path / "a" / "db-2.payload")
        got["from_peers"] = agent.session.status(release.info_hash).total_download
        store.add_holder("db", "2", "a")

    thread = threading.Thread(target=fetch_when_staged)
    thread.start()
    try:
        result = runner.invoke(cli, [*base, "stage", "db", "2", str(path), "--seed-until", "1",
                                     "--listen", f"127.0.0.1:{free_port()}", "--seed-timeout", "60"])
        thread.join(60)
        assert result.exit_code == 0, result.output
        assert "1/1 hosts hold db@2" in result.output
        assert Path(got["path"]).read_bytes() == path.read_bytes()
        assert got["from_peers"] >= path.stat().st_size  # it came from the seeder, not the origin
    finally:
        agent.close()
