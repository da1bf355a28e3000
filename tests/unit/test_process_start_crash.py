"""An agent killed while it starts a service never leaves an untracked service behind.

Between spawning the service and writing its pid file there is an instant
where a killed agent would leave a process nobody knows about: the next start
would start a second copy beside it, and no stop would ever reach it.  The
crash point ``process:spawned`` sits in that instant.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from zkdeploy import crash
from zkdeploy.crash import SimulatedCrash
from zkdeploy.runner.process import ManagedProcess


def _carrying(token: str) -> list[int]:
    """Pids of live (non-zombie) processes whose environment holds ``token``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if token.encode() in (entry / "environ").read_bytes():
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


def _settled(token: str, seconds: float = 3.0) -> list[int]:
    """The processes carrying ``token`` once those that are going away have gone."""
    deadline = time.monotonic() + seconds
    while (left := _carrying(token)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


@pytest.fixture
def token() -> Iterator[str]:
    value = f"ZKDEPLOY_TEST_{uuid.uuid4().hex}"
    yield value
    for pid in _carrying(value):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture
def managed(tmp_path: Path) -> Iterator[ManagedProcess]:
    proc = ManagedProcess(pidfile=tmp_path / "run" / "web.pid", logfile=tmp_path / "log" / "web.log")
    yield proc
    pid = proc.pid()
    if pid is not None:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _service(marker: Path) -> str:
    return f"sh -c 'echo ran >> {marker}; exec sleep 30'"


def test_a_start_killed_before_the_pid_file_leaves_no_service_running(managed: ManagedProcess, tmp_path: Path,
                                                                      token: str) -> None:
    marker = tmp_path / "ran"
    with crash.installed(crash.raise_at("process:spawned")), pytest.raises(SimulatedCrash):
        managed.start(_service(marker), cwd=str(tmp_path), env={"TOKEN": token})
    assert _settled(token) == [], "an untracked copy of the service runs"
    assert not marker.exists(), "the service's command ran although its pid was never recorded"
    assert not managed.running()
    # the next start starts exactly one copy, and stop finds it
    pid = managed.start(_service(marker), cwd=str(tmp_path), env={"TOKEN": token})
    deadline = time.monotonic() + 3
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert marker.read_text() == "ran\n"
    assert _carrying(token) == [pid]
    assert managed.stop(timeout=5) is True
    assert _settled(token) == []


def test_an_agent_sigkilled_between_spawn_and_pid_file_leaves_no_service(tmp_path: Path, token: str) -> None:
    """The same with a real SIGKILL of the process that starts the service (ZKDEPLOY_CRASH_AT)."""
    marker = tmp_path / "ran"
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from zkdeploy.runner.process import ManagedProcess\n"
        "p = ManagedProcess(Path(sys.argv[1]) / 'run' / 'web.pid', Path(sys.argv[1]) / 'web.log')\n"
        "p.start(sys.argv[2], cwd=sys.argv[1], env={'TOKEN': sys.argv[3]})\n"
    )
    env = {**os.environ, crash.CRASH_ENV: "process:spawned"}
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path), _service(marker), token], env=env,
                            timeout=30, capture_output=True, text=True)
    assert result.returncode == -signal.SIGKILL, result.stderr
    assert _settled(token) == [], "an untracked copy of the service runs"
    assert not marker.exists()
    managed = ManagedProcess(tmp_path / "run" / "web.pid", tmp_path / "web.log")
    assert not managed.running()
    assert managed.stop(timeout=1) is False


def test_the_pid_file_is_durable_before_the_service_runs(managed: ManagedProcess, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The pid file gets its name by an atomic rename of fsynced content, its directory fsynced after."""
    events: list[tuple[str, int, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.fstat(fd).st_ino, os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst, *args, **kwargs) -> None:
        events.append(("rename", os.stat(src).st_ino, os.fspath(dst)))
        real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    managed.start("sleep 30", cwd=str(tmp_path), env={})
    at = next(i for i, e in enumerate(events) if e[0] == "rename" and e[2] == str(managed.pidfile))
    assert ("fsync", events[at][1]) in [(k, ino) for k, ino, _ in events[:at]]
    assert ("fsync", str(managed.pidfile.parent)) in [(k, p) for k, _, p in events[at:]]
