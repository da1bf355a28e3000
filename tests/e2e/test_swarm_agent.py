"""Payloads through the swarm, seen through whole agents: a download resumes after a SIGKILL."""

from __future__ import annotations

import io
import os
import re
import signal
import tarfile
import time

import pytest

from zkdeploy.demo.fleet import SERVER_SOURCE, DemoService
from tests.e2e.conftest import FAST, wait_for

pytestmark = pytest.mark.e2e

SIZE = 24 << 20


def big_payload(path, version: str):
    """A demo release with a 24 MiB blob, so that a rate-capped download takes seconds."""
    with tarfile.open(path, "w") as tar:
        tar.add(SERVER_SOURCE, arcname="server.py")
        for name, data in (("VERSION", f"{version}\n".encode()), ("blob", os.urandom(SIZE))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.timeout(180)
def test_agent_killed_mid_download_resumes_where_it_stopped(make_fleet, tmp_path):
    harness = make_fleet([DemoService("db", quorum=1, timing=FAST)], size=2, start=False)
    fleet, store = harness.fleet, harness.store
    slow = fleet.hosts[1]  # node02: node01 is elected to fetch from the origin, node02 gets it from node01
    slow.swarm_settings = {"download_rate_limit": 4 << 20}  # bytes/s: about 6 s for the payload
    fleet.start()
    harness.wait_registered()
    path = big_payload(tmp_path / "db-2.tar", "2")
    fleet.cli("stage", "db", "2", str(path))
    info_hash = store.release("db", "2").info_hash

    def halfway() -> bool:
        peer = store.peers(info_hash).get(slow.name) or {}
        return 0.2 <= float(peer.get("progress", 0)) < 0.9

    wait_for(halfway, 60, "node02 to be part-way through the download", interval=0.05)
    fleet.kill_agent(slow, signal.SIGKILL)
    partial = slow.root / "data" / "payloads" / "db" / ".swarm-2"
    assert partial.is_dir() and not (slow.root / "data" / "payloads" / "db" / "2.payload").exists()
    time.sleep(1)
    fleet.start_agent(slow)
    wait_for(lambda: slow.name in store.holders("db", "2"), 90, "node02 to hold the payload")
    fetched = [int(m) for m in re.findall(r"fetched db-2\.tar: (\d+) bytes downloaded", slow.log.read_text())]
    assert len(fetched) == 1  # only the resumed run finished
    assert fetched[0] < 0.85 * SIZE  # it did not start over
    assert (slow.root / "data" / "releases" / "db" / "2" / "blob").stat().st_size == SIZE
