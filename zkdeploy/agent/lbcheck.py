"""The agent's answer to HAProxy's agent-check, and the journaled steps that change it.

HAProxy connects to the agent's own port every ``agent-inter`` and reads one
line: ``ready``, ``drain`` or ``maint``.  The server line sends the service's
name first (``agent-send "web\\n"``); the answer is that service's state,
read from a small file under ``<data>/lb/<service>`` that the journal actions
``zkdeploy.lb_drain`` / ``zkdeploy.lb_ready`` write.  Keeping the state in a
file (not in the agent's memory) means a restarted agent, or a reload of
HAProxy, never undoes a drain: the balancer re-reads it at every poll.
Without a service name the answer is the most restrictive state of all.

A drain is done when the balancer itself reports the server drained with
no current session (its runtime API socket, zkdeploy.lb.runtime), or when
``drain_timeout`` passed (logged).  Putting the server back waits until the
balancer reports it serving, up to ``ready_timeout``.
"""

from __future__ import annotations

import logging
import os
import socket
import socketserver
import threading
import time
from pathlib import Path
from typing import Any

from zkdeploy.config.schema import AgentConfig
from zkdeploy.errors import ConfigError
from zkdeploy.lb.runtime import LoadBalancerError, server_view
from zkdeploy.runner import commands
from zkdeploy.runner.service import HostService

log = logging.getLogger(__name__)

STATES = ("ready", "drain", "maint")
_SEVERITY = {"ready": 0, "drain": 1, "maint": 2}


def state_dir(data_dir: Path) -> Path:
    return data_dir / "lb"


def write_state(directory: Path, service: str, state: str) -> None:
    """Set what the agent answers for ``service`` (atomically: a poll reads the old or the new word)."""
    if state not in STATES:
        raise ValueError(f"load balancer state {state!r}: one of {', '.join(STATES)}")
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{service}.tmp"
    tmp.write_text(state + "\n")
    os.replace(tmp, directory / service)


def read_state(directory: Path, service: str | None) -> str:
    """The word for ``service`` (``ready`` when never set); for None, the most restrictive of all."""
    if service:
        try:
            word = (directory / service).read_text().strip()
        except OSError:
            return "ready"
        return word if word in STATES else "maint"  # an unreadable state keeps traffic away
    words = [read_state(directory, p.name) for p in directory.glob("*") if not p.name.startswith(".")] \
        if directory.is_dir() else []
    return max(words, key=_SEVERITY.__getitem__, default="ready")


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        server: AgentCheckServer = self.server  # type: ignore[assignment]
        sock: socket.socket = self.request
        sock.settimeout(0.2)  # agent-send arrives at once; HAProxy without it sends nothing
        service = None
        try:
            data = sock.recv(256)
            name = data.decode(errors="replace").strip().split("/")[-1]
            service = name or None
        except (TimeoutError, OSError):
            pass
        word = read_state(server.directory, service)
        server.polls += 1
        try:
            sock.sendall(f"{word}\n".encode())
        except OSError as exc:
            log.debug("agent-check reply to %s failed: %s", self.client_address, exc)


class AgentCheckServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    """A small threaded TCP server answering HAProxy's agent-check from ``directory``'s state files.

    ``start()`` serves in a daemon thread; ``close()`` stops it.  ``port`` is
    the bound port (useful when 0 was asked for).
    """

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, directory: Path, listen: str = "127.0.0.1", port: int = 0) -> None:
        self.directory = directory
        self.polls = 0
        super().__init__((listen, port), _Handler)
        self.port = self.server_address[1]
        self._thread: threading.Thread | None = None

    def start(self) -> AgentCheckServer:
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="lb-agent-check", daemon=True)
        self._thread.start()
        log.info("answering HAProxy agent-checks on %s:%d", *self.server_address[:2])
        return self

    def close(self) -> None:
        self.shutdown()
        self.server_close()


def serve_agent_checks(config: AgentConfig) -> AgentCheckServer | None:
    """Start answering agent-checks when the agent file has ``lb_agent``; ConfigError when the port
    cannot be bound."""
    if config.lb_agent is None:
        return None
    try:
        return AgentCheckServer(state_dir(Path(config.data_dir)), config.lb_agent.listen,
                                config.lb_agent.port).start()
    except OSError as exc:
        raise ConfigError(f"lb_agent: cannot listen on {config.lb_agent.listen}:{config.lb_agent.port}: "
                          f"{exc}") from None


# -- the journal actions' work --------------------------------------------------------------
def lb_params(svc: HostService, state: str) -> dict[str, Any] | None:
    """The params of a ``zkdeploy.lb_drain``/``lb_ready`` action for ``svc`` (None: no load balancer)."""
    spec = svc.spec.load_balancer
    if spec is None:
        return None
    return {
        "service": svc.name, "state": state, "dir": str(state_dir(svc.data_dir)),
        "backend": commands.render(spec.backend, svc.fields(None), quote=False),
        "server": commands.render(spec.server, svc.fields(None), quote=False),
        "socket": spec.socket, "agent_interval": spec.agent_interval,
        "timeout": spec.drain_timeout if state != "ready" else spec.ready_timeout,
    }


def apply(params: dict[str, Any]) -> str:
    """Set the state, then wait for the balancer to agree (or the timeout); what was seen, in words."""
    directory, service, state = Path(params["dir"]), params["service"], params["state"]
    write_state(directory, service, state)
    where = f"{params['backend']}/{params['server']}"
    if not params.get("socket"):
        time.sleep(2 * params["agent_interval"])  # two polls: the balancer has read the new word
        return f"{where} set {state} (no runtime socket to confirm)"
    deadline = time.monotonic() + params["timeout"]
    last = "no answer"
    while True:
        try:
            view = server_view(params["socket"], params["backend"], params["server"],
                               timeout=min(5.0, params["timeout"]))
            last = str(view)
            done = view.serving if state == "ready" else (view.drained and view.sessions == 0)
            if done:
                return f"{state}: balancer reports {last}"
        except LoadBalancerError as exc:
            last = str(exc)
        if time.monotonic() >= deadline:
            log.warning("%s: %s not confirmed after %gs (going on): %s", service, state, params["timeout"], last)
            return f"{state}: not confirmed after {params['timeout']:g}s: {last}"
        time.sleep(0.2)
