"""Managed services' logs rotate by size, through a log pump that outlives the agent, losing no line."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

from tests.conftest import wait_for
from zkdeploy.runner.logpump import RotatingWriter
from zkdeploy.runner.process import ManagedProcess, RunnerSettings


def log_set(logfile: Path) -> list[Path]:
    """The files of a rotated log, oldest first."""
    rotated = sorted(logfile.parent.glob(logfile.name + ".*"), key=lambda p: -int(p.suffix[1:]))
    return [*rotated, logfile] if logfile.exists() else rotated


def all_lines(logfile: Path) -> list[str]:
    return b"".join(p.read_bytes() for p in log_set(logfile)).decode().splitlines()


# --------------------------------------------------------------------------- the writer


def test_the_writer_rotates_between_lines_and_keeps_at_most_keep_files(tmp_path: Path) -> None:
    log = tmp_path / "web.log"
    writer = RotatingWriter(log, max_bytes=100, keep=3)
    lines = [f"line {i:03d} ".ljust(19, "x") + "\n" for i in range(40)]  # 20 bytes each: 5 per file
    for line in lines:
        writer.write(line.encode())
    writer.close()
    files = log_set(log)
    assert [p.name for p in files] == ["web.log.3", "web.log.2", "web.log.1", "web.log"]
    assert all(p.stat().st_size <= 100 for p in files)
    assert all(p.read_bytes().endswith(b"\n") for p in files)
    # the newest 4 files' worth is kept, in order, nothing torn
    assert all_lines(log) == [line.rstrip("\n") for line in lines[-20:]]


def test_a_chunk_is_cut_at_its_last_newline_that_fits_and_a_line_in_progress_is_finished(tmp_path: Path) -> None:
    log = tmp_path / "web.log"
    writer = RotatingWriter(log, max_bytes=10, keep=5)
    writer.write(b"aaaa\nbbbb\ncccc\n")      # two lines fit, the third goes to the next file
    writer.write(b"dd")                        # a line in progress...
    writer.write(b"dddddd\neeee\n")            # ...is finished in its file even past the limit
    writer.close()
    assert [p.read_bytes() for p in log_set(log)] == [b"aaaa\nbbbb\n", b"cccc\ndddddddd\n", b"eeee\n"]


def test_a_line_longer_than_a_file_is_cut_and_nothing_is_lost(tmp_path: Path) -> None:
    log = tmp_path / "web.log"
    writer = RotatingWriter(log, max_bytes=8, keep=10)
    writer.write(b"0123456789abcdefghij\nok\n")
    writer.close()
    assert b"".join(p.read_bytes() for p in log_set(log)) == b"0123456789abcdefghij\nok\n"
    assert all(p.stat().st_size <= 8 for p in log_set(log))


def test_the_writer_appends_to_what_an_earlier_pump_left(tmp_path: Path) -> None:
    log = tmp_path / "web.log"
    log.write_bytes(b"old line\n")
    writer = RotatingWriter(log, max_bytes=20, keep=2)
    writer.write(b"new line\n")
    writer.write(b"third line\n")
    writer.close()
    assert all_lines(log) == ["old line", "new line", "third line"]
    assert len(log_set(log)) == 2


# --------------------------------------------------------------------------- a real service



def chatty(lines: int, then: str = "exec sleep 30") -> str:
    """A service that prints ``lines`` numbered lines of 40 bytes, then ``then``."""
    script = (f"i=0; while [ $i -lt {lines} ]; do printf 'service line %06d %s\\n' $i "
              f"'................'; i=$((i+1)); done; {then}")
    return "sh -c " + shlex.quote(script)


def test_a_service_writing_past_the_limit_has_its_log_rotated_and_loses_no_line(
        tmp_path: Path, kill_after: list[ManagedProcess]) -> None:
    managed = ManagedProcess(tmp_path / "run" / "web.pid", tmp_path / "logs" / "web.log",
                             RunnerSettings(log_max_bytes=4096, log_keep=100))
    kill_after.append(managed)
    managed.start(chatty(2000), cwd=str(tmp_path), env={})   # 80 kB: about 20 files
    expected = [f"service line {i:06d} ................" for i in range(2000)]
    wait_for(lambda: all_lines(managed.logfile)[-1:] == expected[-1:], 30, "the last line in the log")
    assert managed.running(), "the service runs on while its log rotates"
    files = log_set(managed.logfile)
    assert len(files) >= 19
    assert all(p.stat().st_size <= 4096 for p in files)
    assert all_lines(managed.logfile) == expected
    assert managed.stop(timeout=5) is True


def test_old_files_beyond_keep_are_dropped(tmp_path: Path, kill_after: list[ManagedProcess]) -> None:
    managed = ManagedProcess(tmp_path / "run" / "web.pid", tmp_path / "logs" / "web.log",
                             RunnerSettings(log_max_bytes=4096, log_keep=2))
    kill_after.append(managed)
    managed.start(chatty(2000), cwd=str(tmp_path), env={})
    last = "service line 001999 ................"
    wait_for(lambda: all_lines(managed.logfile)[-1:] == [last], 30, "the last line in the log")
    assert [p.name for p in log_set(managed.logfile)] == ["web.log.2", "web.log.1", "web.log"]
    kept = all_lines(managed.logfile)
    first = int(kept[0].split()[2])
    assert kept == [f"service line {i:06d} ................" for i in range(first, 2000)]


def test_without_rotation_the_service_writes_its_file_itself(tmp_path: Path,
                                                             kill_after: list[ManagedProcess]) -> None:
    managed = ManagedProcess(tmp_path / "run" / "web.pid", tmp_path / "logs" / "web.log",
                             RunnerSettings(log_max_bytes=0))
    kill_after.append(managed)
    pid = managed.start(chatty(200), cwd=str(tmp_path), env={})
    wait_for(lambda: len(all_lines(managed.logfile)) == 200, 10, "200 lines")
    assert log_set(managed.logfile) == [managed.logfile]
    out = os.readlink(f"/proc/{pid}/fd/1")
    assert out == str(managed.logfile)


def test_the_log_pump_outlives_the_agent_that_started_the_service(tmp_path: Path,
                                                                  kill_after: list[ManagedProcess]) -> None:
    """SIGKILL the process that started the service (the agent): the service goes on writing, and
    its output goes on arriving in the log, rotated."""
    ticker = "sh -c " + shlex.quote("i=0; while :; do printf 'tick %06d\\n' $i; i=$((i+1)); "
                                    "if [ -e stop-ticking ]; then exec sleep 30; fi; sleep 0.005; done")
    code = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from zkdeploy.runner.process import ManagedProcess, RunnerSettings\n"
        "root = Path(sys.argv[1])\n"
        "m = ManagedProcess(root / 'run' / 'web.pid', root / 'logs' / 'web.log', RunnerSettings(log_max_bytes=2048,"
        " log_keep=1000))\n"
        "m.start(sys.argv[2], cwd=sys.argv[1], env={})\n"
        "print('started', flush=True)\n"
        "time.sleep(60)\n"
    )
    agent = subprocess.Popen([sys.executable, "-c", code, str(tmp_path), ticker], stdout=subprocess.PIPE)
    managed = ManagedProcess(tmp_path / "run" / "web.pid", tmp_path / "logs" / "web.log")
    kill_after.append(managed)
    try:
        assert agent.stdout is not None and agent.stdout.readline() == b"started\n"
        wait_for(lambda: len(all_lines(managed.logfile)) > 20, 10, "the first ticks")
    finally:
        agent.kill()
        agent.wait(10)
    files = len(log_set(managed.logfile))
    wait_for(lambda: len(log_set(managed.logfile)) > files + 1, 30, "the log to rotate after the agent died")
    (tmp_path / "stop-ticking").touch()
    assert managed.running()
    lines = all_lines(managed.logfile)
    assert lines == [f"tick {i:06d}" for i in range(len(lines))], "a line was lost or torn"
    assert managed.stop(timeout=5) is True
