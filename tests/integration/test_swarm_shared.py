"""One artifact serving two services: the same payload (one info-hash) fetched for both, in one session."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from zkdeploy.transfer.swarm import SwarmSession
from zkdeploy.transfer.swarm_config import SwarmConfig
from zkdeploy.transfer.torrent import make_torrent

pytestmark = pytest.mark.integration


@pytest.fixture
def session():
    ses = SwarmSession(SwarmConfig(listen_ip="127.0.0.1", listen_port=0, allow_multiple_connections_per_ip=True))
    ses.start()
    yield ses
    ses.close()


def payload(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "origin" / "app.tar"
    path.parent.mkdir()
    path.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_payload_held_for_one_service_is_shared_with_another(session: SwarmSession, tmp_path: Path) -> None:
    path, sha = payload(tmp_path)
    meta = make_torrent(path)
    session.seed(meta, str(path))  # held for service a (its payload is seeding)
    got = session.download(meta, str(tmp_path / "b-staging"), sha, lambda: [], stall_timeout=5)
    assert Path(got).read_bytes() == path.read_bytes()
    assert Path(got).parent == tmp_path / "b-staging"
