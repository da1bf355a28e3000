"""Service runners on this host: templated commands, managed processes, health checks."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from zkdeploy.errors import HealthCheckError, ServiceError, StepTimeoutError
from zkdeploy.runner.commands import render, run
from zkdeploy.runner.health import Check, probe, probe_all, wait_healthy
from zkdeploy.runner.process import ManagedProcess

from .escapee import call_within, escaping_command


def _alive(pid: int) -> bool:
    """True while ``pid`` is a live process (a zombie counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _wait_gone(pid: int, seconds: float = 3.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.02)
    return not _alive(pid)


def _read_pid(path: Path, seconds: float = 3.0) -> int:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        text = path.read_text().strip() if path.exists() else ""
        if text:
            return int(text)
        time.sleep(0.01)
    raise AssertionError(f"{path} was never written")


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------- render


def test_render_quotes_values_for_the_shell() -> None:
    fields = {"release": "/data/releases/web/1.0", "name": "it's; rm -rf /", "port": 8080}
    assert render("{release}/bin/web --name {name} --port {port}", fields, quote=True) == \
        "/data/releases/web/1.0/bin/web --name 'it'\"'\"'s; rm -rf /' --port 8080"


def test_render_without_quoting_for_urls() -> None:
    assert render("http://127.0.0.1:{port}/health?v={version}", {"port": 80, "version": "1.0 rc"}, quote=False) == \
        "http://127.0.0.1:80/health?v=1.0 rc"


def test_render_leaves_literal_braces_alone() -> None:
    assert render("awk '{{print $1}}' {file}", {"file": "a b"}, quote=True) == "awk '{print $1}' 'a b'"


def test_render_unknown_field_names_the_field() -> None:
    with pytest.raises(ServiceError) as info:
        render("run --port {port}", {"release": "/x"}, quote=True)
    assert "template field {port} is not defined" in str(info.value)
    assert "'vars'" in str(info.value)
    assert info.value.exit_code == 6


@pytest.mark.parametrize("template", ["run {release", "run {}", "run {0}"])
def test_render_bad_template(template: str) -> None:
    with pytest.raises(ServiceError) as info:
        render(template, {"release": "/x"}, quote=True)
    assert "bad template" in str(info.value)


# --------------------------------------------------------------------------- run


def test_run_returns_output_with_stderr_merged(tmp_path: Path) -> None:
    out = run("echo hello; echo oops >&2; echo $ZK_TEST_VAR; pwd", timeout=5, what="hook",
              env={"ZK_TEST_VAR": "from-env"}, cwd=str(tmp_path))
    assert out.splitlines() == ["hello", "oops", "from-env", str(tmp_path)]


def test_run_non_zero_exit_raises_with_the_output_tail() -> None:
    with pytest.raises(ServiceError) as info:
        run("echo starting; echo 'port already in use' >&2; exit 3", timeout=5, what="web start")
    message = str(info.value)
    assert message.startswith("web start: `echo starting;")
    assert "exited 3: starting\nport already in use" in message
    assert not isinstance(info.value, StepTimeoutError)


def test_run_keeps_only_the_tail_of_long_output() -> None:
    with pytest.raises(ServiceError) as info:
        run("echo FIRSTLINE; i=0; while [ $i -lt 200 ]; do echo line$i; i=$((i+1)); done; echo LASTLINE; exit 1",
            timeout=5, what="hook")
    tail = str(info.value).split("exited 1: ", 1)[1]
    assert tail.endswith("line199\nLASTLINE")
    assert "FIRSTLINE" not in tail
    assert len(tail) == 500


def test_run_silent_failure() -> None:
    with pytest.raises(ServiceError) as info:
        run("exit 7", timeout=5, what="stop")
    assert str(info.value) == "stop: `exit 7` exited 7"


def test_run_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    started = time.monotonic()
    with pytest.raises(StepTimeoutError) as info:
        run(f"sleep 30 & echo $! > {pidfile}; wait", timeout=0.5, what="pre_stop")
    assert time.monotonic() - started < 5
    assert "pre_stop: `sleep 30 &" in str(info.value)
    assert "ran past 0.5s and was killed" in str(info.value)
    assert info.value.exit_code == 4
    child = _read_pid(pidfile)
    try:
        assert _wait_gone(child), "the child sleep survived the timeout"
    finally:
        _kill(child)


def test_run_timeout_returns_even_when_a_grandchild_keeps_the_output_open(tmp_path: Path) -> None:
    # the grandchild escaped the process group (setsid): the kill does not reach it, and it
    # keeps the pipe open; the caller (the agent, holding a restart slot) must not wait for it
    with escaping_command(tmp_path) as command:
        started = time.monotonic()
        error = call_within(10, lambda: run(command, timeout=0.5, what="pre_stop"))
        assert isinstance(error, StepTimeoutError), error
        assert "ran past 0.5s and was killed" in str(error)
        assert time.monotonic() - started < 5


# --------------------------------------------------------------------------- ManagedProcess


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
        getattr(proc, "_child", None) and proc._child.wait(5)  # type: ignore[attr-defined]


def test_start_records_a_pid_file_and_runs(managed: ManagedProcess, tmp_path: Path) -> None:
    import json
    pid = managed.start("sleep 30", cwd=str(tmp_path), env={})
    data = json.loads(managed.pidfile.read_text())
    assert data["pid"] == pid
    assert data["command"] == "sleep 30"
    assert isinstance(data["start"], int)
    assert managed.running()
    assert managed.pid() == pid
    assert _alive(pid)
    # detached: a session (and process group) of its own
    assert os.getsid(pid) == pid
    assert os.getpgid(pid) == pid


def test_start_writes_output_to_the_log_file_with_env_and_cwd(managed: ManagedProcess, tmp_path: Path) -> None:
    managed.start("sh -c 'echo started $GREETING in $(pwd); exec sleep 30'", cwd=str(tmp_path),
                  env={"GREETING": "hello"})
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and not managed.logfile.read_text():
        time.sleep(0.02)
    assert managed.logfile.read_text().strip() == f"started hello in {tmp_path}"


def test_start_twice_is_refused(managed: ManagedProcess, tmp_path: Path) -> None:
    pid = managed.start("sleep 30", cwd=str(tmp_path), env={})
    with pytest.raises(ServiceError) as info:
        managed.start("sleep 30", cwd=str(tmp_path), env={})
    assert f"web is already running (pid {pid})" in str(info.value)


def test_not_running_without_a_pid_file(managed: ManagedProcess) -> None:
    assert not managed.running()
    assert managed.pid() is None
    assert managed.stop(timeout=1) is False


@pytest.mark.parametrize("content", ["", "not json", '{"pid": "x"}', '{"start": 1}'])
def test_unreadable_pid_file_is_not_running(managed: ManagedProcess, content: str) -> None:
    managed.pidfile.parent.mkdir(parents=True)
    managed.pidfile.write_text(content)
    assert not managed.running()


def test_stale_pid_file_with_another_start_time_is_not_running(managed: ManagedProcess) -> None:
    # a recycled pid: the process exists (it is this test) but started at another time
    import json
    managed.pidfile.parent.mkdir(parents=True)
    managed.pidfile.write_text(json.dumps({"pid": os.getpid(), "start": 1, "command": "sleep 30"}))
    assert not managed.running()
    assert managed.pid() is None
    # stopping must not signal the unrelated process; the stale file is cleaned up
    assert managed.stop(timeout=1) is False
    assert not managed.pidfile.exists()


def test_stop_with_sigterm(managed: ManagedProcess, tmp_path: Path) -> None:
    pid = managed.start("sleep 30", cwd=str(tmp_path), env={})
    started = time.monotonic()
    assert managed.stop(timeout=5) is True
    assert time.monotonic() - started < 2
    assert not managed.running()
    assert not managed.pidfile.exists()
    assert _wait_gone(pid)
    assert managed.stop(timeout=1) is False


def test_stop_escalates_to_sigkill_for_a_process_that_ignores_term(managed: ManagedProcess,
                                                                     tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    pid = managed.start(f"sh -c \"trap '' TERM; sleep 30 & echo \\$! > {pidfile}; wait\"", cwd=str(tmp_path),
                        env={})
    child = _read_pid(pidfile)
    time.sleep(0.1)  # let the shell settle in `wait`
    started = time.monotonic()
    assert managed.stop(timeout=0.5) is True
    elapsed = time.monotonic() - started
    assert 0.5 <= elapsed < 5
    assert not managed.running()
    assert not managed.pidfile.exists()
    assert _wait_gone(pid)
    try:
        assert _wait_gone(child), "the service's child survived: the whole process group must be killed"
    finally:
        _kill(child)


def test_start_of_a_command_that_cannot_run(managed: ManagedProcess, tmp_path: Path) -> None:
    # the shell may still be alive at the first look; either way it is never reported running afterwards
    try:
        managed.start("/nonexistent/binary --serve", cwd=str(tmp_path), env={})
    except ServiceError as exc:
        assert "exited at once (code 127)" in str(exc)
    time.sleep(0.2)
    assert not managed.running()
    assert "/nonexistent/binary" in managed.logfile.read_text()


# --------------------------------------------------------------------------- health


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        code = 200 if self.path == "/ok" else 500 if self.path == "/fail" else 404
        body = b"status\n"
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def http_port() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join(5)


def _check(kind: str, target: str, timeout: float = 2.0, interval: float = 0.01, retries: int = 1) -> Check:
    return Check(kind=kind, target=target, timeout=timeout, interval=interval, retries=retries)


def test_http_probe_200(http_port: int) -> None:
    assert probe(_check("http", f"http://127.0.0.1:{http_port}/ok")) is None


def test_http_probe_500(http_port: int) -> None:
    assert probe(_check("http", f"http://127.0.0.1:{http_port}/fail")) == "HTTP 500"
    assert probe(_check("http", f"http://127.0.0.1:{http_port}/missing")) == "HTTP 404"


def test_http_probe_refused() -> None:
    reason = probe(_check("http", f"http://127.0.0.1:{_free_port()}/ok"))
    assert reason is not None and "refused" in reason.lower()


def test_http_probe_bad_url() -> None:
    assert probe(_check("http", "not a url")) is not None


class _RawServer:
    """A loopback TCP server that treats every connection with ``answer(conn)`` in its own thread."""

    def __init__(self, answer) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.answer = answer
        self.conns: list[socket.socket] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            conn.settimeout(None)
            self.conns.append(conn)
            threading.Thread(target=self.answer, args=(conn,), daemon=True).start()

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(5)
        self.sock.close()
        for conn in self.conns:
            conn.close()


def _answer_garbage(conn: socket.socket) -> None:
    conn.recv(65536)
    conn.sendall(b"garbage\r\n")
    conn.close()


def _never_answer(conn: socket.socket) -> None:
    conn.recv(65536)  # and then say nothing until the test closes it


def _close_at_once(conn: socket.socket) -> None:
    conn.close()


@pytest.fixture(params=[_answer_garbage, _never_answer, _close_at_once],
                ids=["answers-garbage", "never-answers", "closes-at-once"])
def broken_endpoint(request: pytest.FixtureRequest) -> Iterator[str]:
    server = _RawServer(request.param)
    yield f"http://127.0.0.1:{server.port}/health"
    server.close()


def test_http_probe_of_an_endpoint_that_does_not_speak_http_is_a_failed_check(broken_endpoint: str) -> None:
    reasons: list[str | None] = []
    started = time.monotonic()
    error = call_within(10, lambda: reasons.append(probe(_check("http", broken_endpoint, timeout=0.5))))
    assert error is None, f"probe raised {error!r} instead of returning a reason"
    assert isinstance(reasons[0], str) and reasons[0]
    assert time.monotonic() - started < 5


def test_wait_healthy_on_an_endpoint_that_does_not_speak_http_raises_health_check_error(
        broken_endpoint: str) -> None:
    error = call_within(10, lambda: wait_healthy([_check("http", broken_endpoint, timeout=0.5, retries=2)]))
    assert isinstance(error, HealthCheckError), repr(error)
    assert str(error).startswith(f"http {broken_endpoint} failed 2 times: ")


def test_tcp_probe_open_port(http_port: int) -> None:
    assert probe(_check("tcp", f"127.0.0.1:{http_port}")) is None
    assert probe(_check("tcp", f":{http_port}")) is None  # host defaults to 127.0.0.1


def test_tcp_probe_closed_port() -> None:
    reason = probe(_check("tcp", f"127.0.0.1:{_free_port()}"))
    assert reason is not None and "refused" in reason.lower()


def test_tcp_probe_bad_port() -> None:
    assert probe(_check("tcp", "127.0.0.1:http-ish")) is not None


@pytest.mark.parametrize("command, reason", [("true", None), ("exit 0", None), ("exit 3", "exit 3"),
                                             ("false", "exit 1")])
def test_command_probe_exit_codes(command: str, reason: str | None) -> None:
    assert probe(_check("command", command)) == reason


def test_command_probe_timeout() -> None:
    started = time.monotonic()
    assert probe(_check("command", "sleep 5", timeout=0.2)) == "timed out after 0.2s"
    assert time.monotonic() - started < 3


def test_command_probe_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    assert probe(_check("command", f"sleep 30 & echo $! > {pidfile}; wait", timeout=0.3)) == \
        "timed out after 0.3s"
    child = _read_pid(pidfile)
    try:
        assert _wait_gone(child, 1.0), "a timed-out health check left its child running"
    finally:
        _kill(child)


def test_probe_all_reports_the_first_failure(http_port: int) -> None:
    checks = [_check("command", "true"), _check("http", f"http://127.0.0.1:{http_port}/fail"),
              _check("command", "exit 2")]
    assert probe_all(checks) == f"http http://127.0.0.1:{http_port}/fail: HTTP 500"
    assert probe_all(checks[:1]) is None
    assert probe_all([]) is None


def test_wait_healthy_retries_until_the_check_passes(tmp_path: Path) -> None:
    counter = tmp_path / "attempts"
    script = f"n=$(cat {counter} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {counter}; [ $n -ge 3 ]"
    wait_healthy([_check("command", script, retries=5)])
    assert counter.read_text().strip() == "3"


def test_wait_healthy_raises_after_all_retries(tmp_path: Path) -> None:
    counter = tmp_path / "attempts"
    script = f"echo x >> {counter}; exit 1"
    with pytest.raises(HealthCheckError) as info:
        wait_healthy([_check("command", "true"), _check("command", script, retries=3)])
    assert str(info.value) == f"command {script} failed 3 times: exit 1"
    assert info.value.exit_code == 6
    assert len(counter.read_text().splitlines()) == 3


def test_wait_healthy_waits_the_interval_between_attempts(http_port: int) -> None:
    started = time.monotonic()
    with pytest.raises(HealthCheckError) as info:
        wait_healthy([_check("http", f"http://127.0.0.1:{http_port}/fail", interval=0.1, retries=3)])
    assert 0.2 <= time.monotonic() - started < 3
    assert str(info.value).endswith("failed 3 times: HTTP 500")


def test_wait_healthy_abandons_when_asked_to_stop(tmp_path: Path) -> None:
    counter = tmp_path / "attempts"
    script = f"echo x >> {counter}; exit 1"
    with pytest.raises(HealthCheckError) as info:
        wait_healthy([_check("command", script, retries=100, interval=0.01)], should_stop=lambda: True)
    assert "abandoned (agent stopping): exit 1" in str(info.value)
    assert len(counter.read_text().splitlines()) == 1


def test_wait_healthy_passes_with_no_checks() -> None:
    wait_healthy([])
