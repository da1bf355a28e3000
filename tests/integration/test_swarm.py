"""The payload swarm with real libtorrent sessions, each peer its own process on 127.0.0.1.

Peers listen on port 0 (a free port the OS picks) and report it; the test plays
ZooKeeper's part by writing the peer list to a file the peers re-read, and
poking them with SIGUSR1 as a watch would.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from zkdeploy.errors import IntegrityError, PayloadError
from zkdeploy.transfer.swarm import SwarmSession
from zkdeploy.transfer.swarm_config import SwarmConfig, SwarmStalled
from zkdeploy.transfer.torrent import make_torrent

REPO = Path(__file__).resolve().parents[2]
SIZE = 32 * 1024 * 1024


class Peer:
    """A ``peer_main`` process whose JSON events are read in the background."""

    def __init__(self, name: str, args: list[str], workdir: Path) -> None:
        self.name = name
        env = dict(os.environ, PYTHONPATH=str(REPO))
        self.stderr_path = workdir / f"{name}.err"
        self._stderr = open(self.stderr_path, "wb")  # noqa: SIM115 - the peer's stderr for its whole life
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "zkdeploy.transfer.peer_main", "--allow-multi",
             "--log-level", "INFO", *args],
            stdout=subprocess.PIPE, stderr=self._stderr, cwd=REPO, env=env, text=True)
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.endpoint: str | None = None

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.events.put(json.loads(line))
        self.events.put({"event": "exit"})

    def wait_for(self, *names: str, timeout: float = 60) -> dict[str, Any]:
        """The next event named one of ``names`` (also returns on error/exit)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{self.name}: no {names} within {timeout}s; seen "
                                     f"{self.seen[-3:]}; stderr: {self.stderr_tail()}")
            try:
                ev = self.events.get(timeout=left)
            except queue.Empty:
                continue
            self.seen.append(ev)
            if ev["event"] in names or ev["event"] in ("error", "exit"):
                if ev["event"] == "listening":
                    self.endpoint = f"{ev['ip']}:{ev['port']}"
                return ev

    def stderr_tail(self) -> str:
        return self.stderr_path.read_text(errors="replace")[-2000:]

    def poke(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGUSR1)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._stderr.close()


class Swarm:
    """Starts peers and keeps the shared peer list (the tracker's view)."""

    def __init__(self, tmp: Path, payload: Path) -> None:
        self.tmp = tmp
        self.payload = payload
        self.meta = make_torrent(payload)
        self.torrent = tmp / "payload.torrent"
        self.torrent.write_bytes(self.meta.metainfo)
        self.peers_file = tmp / "peers.txt"
        self.peers_file.write_text("")
        self.peers: list[Peer] = []

    def _start(self, name: str, args: list[str]) -> Peer:
        peer = Peer(name, ["--torrent", str(self.torrent), "--peers-file",
                           str(self.peers_file), *args], self.tmp)
        self.peers.append(peer)
        ev = peer.wait_for("listening", timeout=30)
        assert ev["event"] == "listening", (ev, peer.stderr_tail())
        with open(self.peers_file, "a") as f:
            f.write(peer.endpoint + "\n")
        for p in self.peers:
            p.poke()
        return peer

    def seeder(self, name: str, path: Path | None = None, *extra: str) -> Peer:
        peer = self._start(name, ["--seed", str(path or self.payload), *extra])
        assert peer.wait_for("seeding")["event"] == "seeding", peer.stderr_tail()
        return peer

    def leecher(self, name: str, *extra: str, sha256: str | None = None) -> Peer:
        return self._start(name, ["--download", str(self.tmp / name), "--sha256",
                                  sha256 or self.meta.sha256, *extra])

    def close(self) -> None:
        for p in self.peers:
            p.stop()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture()
def swarm(tmp_path: Path):
    payload = tmp_path / "release-1.0.tar"
    payload.write_bytes(os.urandom(SIZE))
    s = Swarm(tmp_path, payload)
    yield s
    s.close()


@pytest.mark.timeout(90)
def test_payload_reaches_every_peer_intact(swarm: Swarm) -> None:
    swarm.seeder("seed")
    leechers = [swarm.leecher(f"host{i}") for i in range(4)]
    for peer in leechers:
        ev = peer.wait_for("done", timeout=60)
        assert ev["event"] == "done", (ev, peer.stderr_tail())
        assert _sha256(Path(ev["path"])) == swarm.meta.sha256
        assert Path(ev["path"]).parent == swarm.tmp / peer.name
        assert not (swarm.tmp / peer.name / f".{swarm.meta.info_hash}.resume").exists()


@pytest.mark.timeout(120)
def test_late_joiner_gets_payload_after_first_seeder_stopped(swarm: Swarm) -> None:
    seed = swarm.seeder("seed")
    early = [swarm.leecher(f"early{i}") for i in range(2)]
    for peer in early:
        assert peer.wait_for("done")["event"] == "done", peer.stderr_tail()
    seed.stop()
    assert seed.proc.returncode == 0
    late = swarm.leecher("late")  # its peer list still names the stopped seeder
    ev = late.wait_for("done", timeout=60)
    assert ev["event"] == "done", (ev, late.stderr_tail())
    assert _sha256(Path(ev["path"])) == swarm.meta.sha256
    assert ev["total_download"] >= SIZE


@pytest.mark.timeout(120)
@pytest.mark.parametrize("keep_resume_data", [True, False], ids=["resume-data", "recheck"])
def test_killed_downloader_resumes_without_starting_over(swarm: Swarm,
                                                        keep_resume_data: bool) -> None:
    # 4 MiB/s on loopback: also proves the rate cap applies to local peers.
    swarm.seeder("seed", None, "--upload-rate", str(4 * 1024 * 1024))
    first = swarm.leecher("host", "--resume-interval", "0.5")
    progress = 0.0
    while progress < 0.45:
        ev = first.wait_for("progress", timeout=30)
        assert ev["event"] == "progress", (ev, first.stderr_tail())
        assert ev["progress"] < 0.9, "the upload rate cap was ignored"
        progress = ev["progress"]
    time.sleep(0.6)  # let one more periodic resume save happen
    first.stop(signal.SIGKILL)
    resume = swarm.tmp / "host" / f".{swarm.meta.info_hash}.resume"
    assert resume.exists()
    if not keep_resume_data:
        resume.unlink()
    second = swarm.leecher("host")
    ev = second.wait_for("done", timeout=60)
    assert ev["event"] == "done", (ev, second.stderr_tail())
    assert _sha256(Path(ev["path"])) == swarm.meta.sha256
    assert ev["total_download"] < 0.7 * SIZE, ev


@pytest.mark.timeout(90)
def test_altered_seeder_cannot_inject_bad_data_when_a_good_peer_exists(swarm: Swarm) -> None:
    bad = swarm.tmp / "bad" / swarm.payload.name
    bad.parent.mkdir()
    data = bytearray(swarm.payload.read_bytes())
    data[5_000_000:5_100_000] = os.urandom(100_000)
    bad.write_bytes(data)
    swarm.seeder("bad-seed", bad)
    swarm.seeder("good-seed")
    peer = swarm.leecher("host")
    ev = peer.wait_for("done", timeout=60)
    assert ev["event"] == "done", (ev, peer.stderr_tail())
    assert _sha256(Path(ev["path"])) == swarm.meta.sha256


@pytest.mark.timeout(90)
def test_altered_sole_seeder_stalls_and_never_delivers(swarm: Swarm) -> None:
    bad = swarm.tmp / "bad" / swarm.payload.name
    bad.parent.mkdir()
    data = bytearray(swarm.payload.read_bytes())
    data[20_000_000:20_000_100] = b"\0" * 100
    bad.write_bytes(data)
    swarm.seeder("bad-seed", bad)
    peer = swarm.leecher("host", "--stall-timeout", "4")
    ev = peer.wait_for("done", timeout=60)
    assert ev["event"] == "error", ev
    assert ev["kind"] == "SwarmStalled", ev
    assert peer.proc.wait(10) == PayloadError.exit_code


@pytest.mark.timeout(60)
def test_wrong_expected_sha256_is_integrity_error_and_leaves_nothing(swarm: Swarm) -> None:
    swarm.seeder("seed")
    peer = swarm.leecher("host", sha256="0" * 64)
    ev = peer.wait_for("done", timeout=40)
    assert ev["event"] == "error" and ev["kind"] == "IntegrityError", ev
    assert "SHA-256" in ev["message"]
    assert peer.proc.wait(10) == IntegrityError.exit_code
    assert list((swarm.tmp / "host").iterdir()) == []


# -- the SwarmSession API in this process, against a seeder process ---------------


def _session(**kw: Any) -> SwarmSession:
    s = SwarmSession(SwarmConfig(listen_ip="127.0.0.1", listen_port=0,
                                 allow_multiple_connections_per_ip=True, **kw))
    s.start()
    return s


@pytest.mark.timeout(60)
def test_session_api_download_status_and_stop(swarm: Swarm, tmp_path: Path) -> None:
    seed = swarm.seeder("seed")
    ip, port = seed.endpoint.split(":")
    calls = []

    def provider() -> list[tuple[str, int]]:
        calls.append(time.monotonic())
        return [(ip, int(port))]

    seen = []
    with _session() as s:
        assert s.listen_endpoint[0] == "127.0.0.1" and s.listen_endpoint[1] > 0
        path = s.download(swarm.meta, str(tmp_path / "api"), swarm.meta.sha256, provider,
                          stall_timeout=20, on_progress=seen.append)
        assert _sha256(Path(path)) == swarm.meta.sha256
        st = s.status(swarm.meta.info_hash)
        assert st.is_seeding and st.progress == 1.0 and st.total_download >= SIZE
        assert [t.info_hash for t in s.torrents()] == [swarm.meta.info_hash]
        # a second download of a payload already held returns at once
        assert s.download(swarm.meta, str(tmp_path / "api"), swarm.meta.sha256, provider) == path
        s.stop_seeding(swarm.meta.info_hash)
        assert s.torrents() == []
        with pytest.raises(PayloadError):
            s.status(swarm.meta.info_hash)
    assert calls and seen


@pytest.mark.timeout(60)
def test_not_enough_disk_space_is_refused_up_front(swarm: Swarm, tmp_path: Path) -> None:
    with _session(free_space=lambda _d: 10 * 1024 * 1024) as s:
        with pytest.raises(PayloadError) as e:
            s.download(swarm.meta, str(tmp_path / "dl"), swarm.meta.sha256, lambda: [])
        msg = str(e.value)
        assert "not enough disk space" in msg and str(10 * 1024 * 1024) in msg
        assert str(SIZE) in msg or str(SIZE + 64 * 1024 * 1024) in msg
        assert s.torrents() == []


@pytest.mark.timeout(60)
def test_no_peers_stalls_and_cancel_stops(swarm: Swarm, tmp_path: Path) -> None:
    with _session() as s:
        t0 = time.monotonic()
        with pytest.raises(SwarmStalled, match="stalled"):
            s.download(swarm.meta, str(tmp_path / "dl"), swarm.meta.sha256, lambda: [],
                       stall_timeout=2)
        assert time.monotonic() - t0 < 10
        assert s.torrents() == []
        cancel = threading.Event()
        threading.Timer(1.0, cancel.set).start()
        with pytest.raises(PayloadError, match="cancelled"):
            s.download(swarm.meta, str(tmp_path / "dl"), swarm.meta.sha256, lambda: [],
                       stall_timeout=30, cancel=cancel)


@pytest.mark.timeout(30)
def test_port_in_use_is_a_clear_error() -> None:
    with _session() as first:
        ip, port = first.listen_endpoint
        other = SwarmSession(SwarmConfig(listen_ip=ip, listen_port=port))
        with pytest.raises(PayloadError, match="cannot listen"):
            other.start()
        assert first.listen_endpoint == (ip, port)
