"""Payloads through the swarm, seen through whole agents: a download resumes after a SIGKILL; a new
node wakes idle holders to fetch from them."""

from __future__ import annotations

import io
import os
import re
import signal
import tarfile
import time

import pytest

from tests.e2e.conftest import FAST, wait_for
from zkdeploy.demo.fleet import SERVER_SOURCE, DemoService
from zkdeploy.demo.scenario import wait_deploys

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


@pytest.mark.timeout(180)
def test_a_new_node_wakes_idle_holders_and_gets_the_most_popular_release_from_them(make_fleet, tmp_path):
    """Agents stop their swarm worker when idle; a node that joins later (or returns) wakes some of
    the holders and fetches from them, not from the origin, which is gone."""
    harness = make_fleet([DemoService("db", quorum=1, timing=FAST)], size=4, start=False)
    fleet, store = harness.fleet, harness.store
    for host in fleet.hosts:
        host.swarm_settings = {"idle_stop": 2}
    fleet.write_configs()
    early, late = fleet.hosts[:3], fleet.hosts[3]
    for host in early:
        fleet.start_agent(host)
    wait_for(lambda: {h.name for h in early} <= set(store.current("db")), 60, "three agents to register")
    origin = harness.stage("db", "2")
    wait_deploys(store, harness.deploy("db@2"), 90)
    info_hash = store.release("db", "2").info_hash
    wait_for(lambda: len(store.holders("db", "2")) == 3 and not store.peers(info_hash), 60,
             "the three holders' swarm workers to stop when idle")
    origin.unlink()  # only the sleeping holders have it now

    fleet.start_agent(late)  # it starts the most popular release, 2, which it must fetch
    wait_for(lambda: (e := store.current("db").get(late.name)) is not None and e.version == "2"
             and e.state == "online", 90, "the new node to run db 2")
    log = late.log.read_text()
    assert re.search(r"db@2: waking \d of 3 holders to seed it", log), log[-3000:]
    assert "db@2: " in log and "bytes from the swarm, sha256 verified" in log
    assert "from origin" not in log
