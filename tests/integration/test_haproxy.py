"""The drain against a real HAProxy on loopback: the agent's agent-check answer takes a server out of
load balancing, the drain waits for its sessions to end, and the balancer's own view says so."""

from __future__ import annotations

import http.server
import shutil
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from zkdeploy.agent.lbcheck import AgentCheckServer, apply, read_state
from zkdeploy.agent.restart import restart_tasks
from zkdeploy.config.schema import ServiceSpec
from zkdeploy.lb.runtime import servers_state, show_stat
from zkdeploy.runner.service import HostService
from zkdeploy.testing.haproxy import Backend, HAProxy, Server

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _haproxy_installed() -> None:
    """These tests need a real HAProxy: a missing one is a failure that says how to get it, not a skip."""
    if shutil.which("haproxy") is None and not Path("/usr/sbin/haproxy").exists():
        pytest.fail("Debian's haproxy is not installed: run scripts/setup (or apt-get install -y haproxy)")


class _Named(http.server.ThreadingHTTPServer):
    daemon_threads = True
    name = ""


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path.startswith("/slow"):
            time.sleep(1.5)
        body = self.server.name.encode()  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def _serve(name: str) -> _Named:
    server = _Named(("127.0.0.1", 0), _Handler)
    server.name = name
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def lb(tmp_path: Path) -> Iterator[tuple[HAProxy, AgentCheckServer, Path]]:
    s1, s2 = _serve("s1"), _serve("s2")
    state = tmp_path / "lb"
    agent = AgentCheckServer(state).start()
    proxy = HAProxy(tmp_path / "haproxy", [Backend("web", [
        Server("s1", s1.server_address[1], agent.port, service="web"),
        Server("s2", s2.server_address[1])])]).start()
    try:
        proxy.wait("web", "s1", lambda v: v.serving and v.agent_status == "CHECKED")
        proxy.wait("web", "s2", lambda v: v.serving)
        yield proxy, agent, state
    finally:
        proxy.stop()
        agent.close()
        for s in (s1, s2):
            s.shutdown()


def _get(port: int, path: str = "/") -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
        return answer.read().decode()


def _params(proxy: HAProxy, state: Path, word: str, timeout: float = 10.0) -> dict:
    return {"service": "web", "state": word, "dir": str(state), "backend": "web", "server": "s1",
            "socket": proxy.socket, "agent_interval": 0.3, "timeout": timeout}


def test_runtime_api_parsing(lb) -> None:
    proxy, _, _ = lb
    rows = show_stat(proxy.socket)
    assert {(r["pxname"], r["svname"]) for r in rows} >= {("web", "s1"), ("web", "s2"), ("web", "BACKEND")}
    states = servers_state(proxy.socket, "web")
    assert {s["srv_name"] for s in states} == {"s1", "s2"} and all(s["srv_op_state"] == "2" for s in states)
    assert proxy.view("web", "s1").agent_status == "CHECKED"  # the agent answered


def test_drain_waits_for_sessions_then_the_balancer_sends_nothing_and_ready_brings_it_back(lb) -> None:
    proxy, agent, state = lb
    port = proxy.port("web")
    answers: list[str] = []
    slow = [threading.Thread(target=lambda: answers.append(_get(port, "/slow"))) for _ in range(2)]
    for t in slow:
        t.start()
    proxy.wait("web", "s1", lambda v: v.sessions == 1, timeout=5)  # a long request is in flight on s1
    started = time.monotonic()
    said = apply(_params(proxy, state, "drain"))
    waited = time.monotonic() - started
    for t in slow:
        t.join()
    assert sorted(answers) == ["s1", "s2"]  # the session in flight was not cut
    view = proxy.view("web", "s1")
    assert view.drained and view.sessions == 0 and view.status.startswith("DRAIN"), view
    assert waited > 0.5, "the drain did not wait for the session in flight"
    assert said.startswith("drain: balancer reports web/s1 DRAIN")
    assert read_state(state, "web") == "drain" and agent.polls > 0
    assert {_get(port) for _ in range(20)} == {"s2"}  # nothing goes to the drained server
    said = apply(_params(proxy, state, "ready"))
    assert proxy.view("web", "s1").serving and said.startswith("ready: balancer reports web/s1 UP")
    assert {_get(port) for _ in range(20)} == {"s1", "s2"}


def test_maint_from_the_agent_and_a_reload_does_not_undo_the_drain(lb) -> None:
    proxy, _, state = lb
    apply(_params(proxy, state, "maint"))
    assert proxy.view("web", "s1").status.startswith("MAINT")
    # the balancer restarts (a reload loses runtime state): the agent answers maint again at once
    proxy.stop()
    proxy.start()
    proxy.wait("web", "s1", lambda v: v.status.startswith("MAINT"), timeout=5)
    assert {_get(proxy.port("web")) for _ in range(10)} == {"s2"}


def test_a_drain_that_the_balancer_never_confirms_ends_at_its_timeout(lb) -> None:
    proxy, agent, state = lb
    agent.close()  # the balancer can no longer hear the agent: the drain cannot be confirmed
    started = time.monotonic()
    said = apply(_params(proxy, state, "drain", timeout=1.0))
    assert time.monotonic() - started >= 1.0 and "not confirmed after 1s" in said


def test_a_load_balanced_restart_drains_first_and_undrains_last(tmp_path: Path) -> None:
    spec = ServiceSpec(quorum=1, start="run", pre_stop=("pre",), post_start=("post",),
                       load_balancer={"backend": "be_{service}", "socket": "/run/haproxy.sock"})
    svc = HostService("web", spec, "n1", tmp_path, {})
    kinds: list[tuple[str, str]] = []

    class Recorder:
        def task(self, kind: str, params: dict, undo: object = None) -> None:
            kinds.append((kind, params.get("state") or params.get("hook") or ""))

        def swap_symlink(self, *args: object) -> None:
            kinds.append(("swap", ""))

    class Releases:
        link = tmp_path / "current" / "web"

        def link_target(self, version: str) -> Path:
            return tmp_path / version

    restart_tasks(Recorder(), svc, Releases(), "1", "2", True)  # type: ignore[arg-type]
    assert kinds == [("zkdeploy.lb_drain", "drain"), ("zkdeploy.hooks", "pre_stop"),
                     ("zkdeploy.service_stop", ""), ("swap", ""), ("zkdeploy.service_start", ""),
                     ("zkdeploy.hooks", "post_start"), ("zkdeploy.lb_ready", "ready")]


def test_scenario_checks_read_the_balancers_own_view(lb) -> None:
    from zkdeploy.agent.scenario_checks import ScenarioCheckError, run_check

    proxy, _agent, state = lb
    check = {"step": "block", "socket": proxy.socket, "backend": "web", "server": "s1",
             "timeout": 2, "retries": 2, "interval": 0.2}
    with pytest.raises(ScenarioCheckError, match=r"step 'block': check traffic_blocked failed after 2 .*web/s1 UP"):
        run_check({**check, "check": "traffic_blocked"})  # nothing drained it: the balancer still sends traffic
    assert "web/s1 UP" in run_check({**check, "check": "traffic_flows"})
    apply(_params(proxy, state, "drain"))
    assert "DRAIN" in run_check({**check, "check": "traffic_blocked"})
    with pytest.raises(ScenarioCheckError, match="traffic_flows failed"):
        run_check({**check, "check": "traffic_flows"})
    assert run_check({**check, "check": "version_answers", "url": f"http://127.0.0.1:{proxy.port('web')}/",
                      "version": "s2"}).endswith("answered 's2'")
    with pytest.raises(ScenarioCheckError, match="exit 3"):
        run_check({**check, "check": "command", "check_command": "exit 3", "retries": 1})
