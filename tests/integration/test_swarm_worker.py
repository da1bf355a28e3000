"""The swarm in a worker process: started on demand, stopped when idle, woken by fetchers.

Real ZooKeeper, real libtorrent in real worker processes (``python -m zkdeploy.transfer.worker``).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from unittest import mock

import pytest
import yaml
from click.testing import CliRunner
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.test_transport import payload, stage
from zkdeploy.agent.metrics import Metrics
from zkdeploy.cli.main import cli
from zkdeploy.config.schema import AgentConfig
from zkdeploy.errors import PayloadError
from zkdeploy.testing.zkserver import free_port
from zkdeploy.transfer import transport as transport_module
from zkdeploy.transfer.swarm_config import SwarmConfig, SwarmLost
from zkdeploy.transfer.swarm_process import SwarmProcess
from zkdeploy.transfer.torrent import make_torrent
from zkdeploy.transfer.transport import Transport, wake_order

pytestmark = pytest.mark.integration


def transport(tmp_path: Path, name: str, zk_hosts: str, zk_root: str, idle_stop: float) -> Transport:
    config = AgentConfig.model_validate({
        "node": name, "data_dir": str(tmp_path / name), "services": ["db"],
        "zookeeper": {"hosts": zk_hosts, "root": zk_root}, "labels": {"rack": "r1", "dc": "d1"},
        "swarm": {"listen_port": free_port(), "allow_multiple_connections_per_ip": True, "stall_timeout": 20,
                  "idle_stop": idle_stop},
    })
    t = Transport(config)
    t.start()
    return t


def wait_for(what, timeout: float = 30.0, why: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, f"timed out waiting for {why or what}"
        time.sleep(0.1)


def gone(pid: int) -> bool:
    """The process exited (a zombie left for its new parent to reap counts as exited)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


def test_an_idle_holder_stops_its_worker_and_a_fetcher_wakes_it_to_fetch_from_it(tmp_path, store, zk_hosts, zk_root):
    origin = payload(tmp_path / "db-2.tar")
    release = stage(store, origin)
    a = transport(tmp_path, "a", zk_hosts, zk_root, idle_stop=2)
    a.metrics = metrics = Metrics("a")
    b = transport(tmp_path, "b", zk_hosts, zk_root, idle_stop=0)

    def worker(name: str, **labels: str) -> float | None:
        for family in text_string_to_metric_families(generate_latest(metrics.registry).decode()):
            for sample in family.samples:
                if sample.name == name and sample.labels == labels:
                    return sample.value
        return None

    try:
        for t in (a, b):
            t.attach(store)
        assert a.session is not None and not a.session.running  # nothing to do yet: no worker
        got_a = a.fetch(release, tmp_path / "a" / "db-2.payload")  # nobody holds it: a goes to the origin
        store.add_holder("db", "2", "a")  # what the agent's payloads do once it is verified
        assert a.session.running and set(store.peers(release.info_hash)) == {"a"}
        pid = a.session.pid
        assert pid is not None

        assert worker("zkdeploy_swarm_worker_running") == 1
        assert worker("zkdeploy_swarm_worker_starts_total", reason="fetch") == 1
        wait_for(lambda: not a.session.running, why="a's idle worker to stop")
        wait_for(lambda: worker("zkdeploy_swarm_worker_running") == 0, why="the gauge once it exited")
        wait_for(lambda: gone(pid), why="a's worker process to exit")
        assert store.peers(release.info_hash) == {}  # no tracker entry while stopped ...
        assert store.holders("db", "2") == ["a"]     # ... but still a holder
        shown = CliRunner().invoke(cli, ["--zk", zk_hosts, "--root", zk_root, "swarm", "db@2", "--json"])
        assert shown.exit_code == 0 and json.loads(shown.output)["asleep"] == ["a"], shown.output
        shown = CliRunner().invoke(cli, ["--zk", zk_hosts, "--root", zk_root, "swarm", "db@2"])
        assert "1 holder(s) asleep" in shown.output and "asleep" in shown.output.split("\n", 3)[-1]

        origin.unlink()  # b can only get it from a, which must be woken for it
        got_b = b.fetch(release, tmp_path / "b" / "db-2.payload")
        assert got_b.read_bytes() == got_a.read_bytes()
        assert a.session.running and a.session.pid != pid
        assert worker("zkdeploy_swarm_worker_running") == 1
        assert worker("zkdeploy_swarm_worker_starts_total", reason="wake") == 1
        assert store.take_wakes("a") == []  # a consumed the request that woke it
        peers = store.peers(release.info_hash)
        assert set(peers) == {"a", "b"} and all(p["complete"] for p in peers.values())
    finally:
        a.close()
        b.close()


def test_a_download_whose_worker_dies_fails_at_once_as_swarm_lost(tmp_path):
    meta = make_torrent(payload(tmp_path / "p.tar"))
    worker = SwarmProcess(SwarmConfig(listen_ip="127.0.0.1", listen_port=0))
    worker.start()
    failed: list[BaseException] = []

    def fetch() -> None:
        try:  # no peer at all: it would wait for its stall timeout
            worker.download(meta, str(tmp_path / "dl"), meta.sha256 or "", lambda: [], stall_timeout=120)
        except PayloadError as exc:
            failed.append(exc)

    thread = threading.Thread(target=fetch)
    thread.start()
    try:
        time.sleep(1.0)
        assert worker.pid is not None
        os.kill(worker.pid, signal.SIGKILL)
        thread.join(20)
        assert not thread.is_alive()
        assert len(failed) == 1 and isinstance(failed[0], SwarmLost), failed
        assert "exited" in str(failed[0]) and not worker.running
    finally:
        worker.close()


def test_the_worker_exits_when_its_agent_is_killed(tmp_path):
    parent = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import time
        from zkdeploy.transfer.swarm_config import SwarmConfig
        from zkdeploy.transfer.swarm_process import SwarmProcess
        w = SwarmProcess(SwarmConfig(listen_ip="127.0.0.1", listen_port=0))
        w.start()
        print(w.pid, flush=True)
        time.sleep(600)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        worker = int(parent.stdout.readline())
        assert not gone(worker)
        parent.kill()  # SIGKILL: the agent cleans nothing up; the worker sees its stdin end
        parent.wait()
        wait_for(lambda: gone(worker), 20, "the orphaned worker to exit")
    finally:
        parent.kill()


def test_a_taken_swarm_port_is_refused_when_the_agent_starts(tmp_path, zk_hosts, zk_root):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config = AgentConfig.model_validate({
            "node": "a", "data_dir": str(tmp_path / "a"), "services": ["db"],
            "zookeeper": {"hosts": zk_hosts, "root": zk_root},
            "swarm": {"listen_port": taken.getsockname()[1]},
        })
        with pytest.raises(PayloadError, match=r"cannot listen on 127\.0\.0\.1:\d+: .*swarm\.listen_port"):
            transport_module._check_port_free("127.0.0.1", taken.getsockname()[1], wait=1.0)
        with pytest.raises(PayloadError, match=r"swarm\.listen_port"), \
                mock.patch.object(transport_module, "PORT_WAIT_SECONDS", 0.5):
            Transport(config).start()


def test_fetchers_wake_different_holders_first():
    holders = [f"h{i:02d}" for i in range(30)]
    firsts = {wake_order(holders, f"f{i:02d}")[0] for i in range(30)}
    assert len(firsts) > 10  # spread, not every fetcher waking the same holder
    assert sorted(wake_order(holders, "f01")) == holders
    assert wake_order(holders, "f01") == wake_order(list(reversed(holders)), "f01")  # a function of the names


class Counter:
    def __init__(self) -> None:
        self.sources: list[str] = []
        self.workers: list[tuple[bool, str]] = []

    def payload_fetched(self, source: str, size: int) -> None:
        self.sources.append(source)

    def swarm_worker_changed(self, running: bool, reason: str = "") -> None:
        self.workers.append((running, reason))


def test_the_long_running_seeder_keeps_its_worker_and_serves_the_first_copy(tmp_path, store, zk_hosts, zk_root):
    """`zkdeploy seed` is no holder (nobody could wake it): its worker runs from the start."""
    release = stage(store, payload(tmp_path / "db-2.tar"))
    config = tmp_path / "seeder.yaml"
    config.write_text(yaml.safe_dump({
        "node": "seeder", "data_dir": str(tmp_path / "seeder"), "services": ["db"],
        "zookeeper": {"hosts": zk_hosts, "root": zk_root},
        "swarm": {"listen_port": free_port(), "allow_multiple_connections_per_ip": True, "idle_stop": 1}}))
    seeder = subprocess.Popen([sys.executable, "-m", "zkdeploy", "seed", "--config", str(config)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    counter = Counter()
    fetcher = transport(tmp_path, "a", zk_hosts, zk_root, idle_stop=0)
    fetcher.metrics = counter
    try:
        fetcher.attach(store)
        wait_for(lambda: store.peers(release.info_hash).get("seeder", {}).get("complete"), 30,
                 "the seeder to announce the payload")
        time.sleep(3)  # longer than its idle_stop: a seeder's worker is not stopped
        assert "seeder" in store.peers(release.info_hash)
        got = fetcher.fetch(release, tmp_path / "a" / "db-2.payload")
        assert got.read_bytes() == (tmp_path / "db-2.tar").read_bytes()
        assert counter.sources == ["swarm"]  # from the seeder, not the origin
    finally:
        fetcher.close()
        seeder.terminate()
        out, _ = seeder.communicate(timeout=30)
    assert seeder.returncode == 0, out


def test_a_worker_that_cannot_start_is_a_clear_error(tmp_path):
    broken = tmp_path / "python"
    broken.write_text("#!/bin/sh\necho 'ImportError: libtorrent' >&2\nexit 3\n")
    broken.chmod(0o755)
    worker = SwarmProcess(SwarmConfig(listen_ip="127.0.0.1", listen_port=0), python=str(broken))
    with pytest.raises(PayloadError, match="did not start: it exited with status 3"):
        worker.start()
    assert not worker.running
    with socket.socket() as taken:  # a port taken by someone else: the worker says so
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        worker = SwarmProcess(SwarmConfig(listen_ip="127.0.0.1", listen_port=taken.getsockname()[1], start_timeout=3))
        with pytest.raises(PayloadError, match="did not start: swarm session"):
            worker.start()
