"""HAProxy's runtime API over its UNIX socket: one command per connection, with a timeout.

The balancer's own view of a server is what ``server_view`` returns, read
from ``show stat`` (``status``, ``scur``, ``weight``, ``check_status``) and
``show servers state`` (``srv_admin_state``, ``srv_op_state``).  A drain is
confirmed from it, never from what zkdeploy asked for.
"""

from __future__ import annotations

import csv
import io
import socket
import time
from dataclasses import dataclass

from zkdeploy.errors import ServiceError

#: srv_admin_state bits (doc/management.txt, "show servers state")
FMAINT, IMAINT, CMAINT, FDRAIN, IDRAIN, RMAINT, HMAINT = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40


class LoadBalancerError(ServiceError):
    """The balancer's runtime API could not be reached or did not answer as expected."""


def command(path: str, text: str, timeout: float = 5.0) -> str:
    """Send one runtime API command to the socket at ``path``; its whole answer."""
    deadline = time.monotonic() + timeout
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(path)
            sock.sendall(text.strip().encode() + b"\n")
            chunks = []
            while True:
                sock.settimeout(max(0.05, deadline - time.monotonic()))
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
    except OSError as exc:
        raise LoadBalancerError(f"HAProxy runtime API {path}: {text.split()[0:2]}: {exc}") from None
    return b"".join(chunks).decode(errors="replace")


def show_stat(path: str, timeout: float = 5.0) -> list[dict[str, str]]:
    """``show stat``: one row per frontend, backend and server (CSV with its ``# `` header)."""
    text = command(path, "show stat", timeout)
    if not text.startswith("# "):
        raise LoadBalancerError(f"HAProxy runtime API {path}: show stat answered {text[:200]!r}")
    return list(csv.DictReader(io.StringIO(text[2:])))


def servers_state(path: str, backend: str | None = None, timeout: float = 5.0) -> list[dict[str, str]]:
    """``show servers state [backend]`` (format version 1) as one mapping per server."""
    text = command(path, f"show servers state {backend or ''}".strip(), timeout)
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines or lines[0].strip() != "1":
        raise LoadBalancerError(f"HAProxy runtime API {path}: show servers state answered {text[:200]!r}")
    header = next((line for line in lines if line.startswith("#")), None)
    if header is None:
        return []
    names = header.lstrip("# ").split()
    return [dict(zip(names, line.split(), strict=False)) for line in lines[1:] if not line.startswith("#")]


@dataclass(frozen=True)
class ServerView:
    """One server as the balancer sees it."""

    backend: str
    server: str
    status: str          # show stat's status: UP, DOWN, DRAIN, MAINT, "MAINT (resolution)", "UP 1/3"...
    sessions: int        # scur: current sessions
    total: int           # stot: sessions so far
    weight: int
    admin_state: int     # srv_admin_state bits
    agent_status: str    # show stat's agent_status (L7OK, L4CON, ...)

    @property
    def drained(self) -> bool:
        """Out of load balancing: drained (by the admin or the agent, weight 0) or in maintenance."""
        return (self.status.startswith(("DRAIN", "MAINT", "DOWN")) or self.weight == 0
                or bool(self.admin_state & (FMAINT | IMAINT | CMAINT | FDRAIN | IDRAIN | RMAINT | HMAINT)))

    @property
    def serving(self) -> bool:
        """Taking new traffic: up, not drained, weight above zero."""
        return self.status.startswith("UP") and not self.drained

    def __str__(self) -> str:
        return f"{self.backend}/{self.server} {self.status} weight {self.weight}, {self.sessions} session(s)"


def server_view(path: str, backend: str, server: str, timeout: float = 5.0) -> ServerView:
    """The balancer's view of ``backend``/``server``; LoadBalancerError when it has no such server."""
    row = next((r for r in show_stat(path, timeout) if r.get("pxname") == backend and r.get("svname") == server),
               None)
    if row is None:
        raise LoadBalancerError(f"HAProxy {path} has no server {backend}/{server}")
    state = next((s for s in servers_state(path, backend, timeout) if s.get("srv_name") == server), {})
    return ServerView(backend=backend, server=server, status=row.get("status", ""),
                      sessions=_int(row.get("scur")), total=_int(row.get("stot")), weight=_int(row.get("weight")),
                      admin_state=_int(state.get("srv_admin_state")), agent_status=row.get("agent_status", ""))


def backend_views(path: str, backend: str, timeout: float = 5.0) -> dict[str, ServerView]:
    """Every server of ``backend`` as the balancer sees it, by name."""
    rows = [r for r in show_stat(path, timeout) if r.get("pxname") == backend
            and r.get("svname") not in ("FRONTEND", "BACKEND")]
    states = {s.get("srv_name"): s for s in servers_state(path, backend, timeout)}
    return {r["svname"]: ServerView(backend=backend, server=r["svname"], status=r.get("status", ""),
                                    sessions=_int(r.get("scur")), total=_int(r.get("stot")),
                                    weight=_int(r.get("weight")),
                                    admin_state=_int(states.get(r["svname"], {}).get("srv_admin_state")),
                                    agent_status=r.get("agent_status", "")) for r in rows}


def _int(value: str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0
