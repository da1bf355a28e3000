"""systemd readiness and watchdog notifications (sd_notify(3)), without libsystemd.

Under a unit with ``Type=notify`` systemd sets ``$NOTIFY_SOCKET`` to a unix
datagram socket; a daemon writes ``READY=1`` once it serves, ``WATCHDOG=1``
at least every ``WatchdogSec`` (systemd kills and restarts it otherwise),
``STATUS=...`` for ``systemctl status`` and ``STOPPING=1`` on its way out.

Guarantees:
- with ``$NOTIFY_SOCKET`` unset (not under systemd, or ``Type=simple``)
  every function does nothing and returns False;
- with it set, a message is sent as one datagram or the OSError is raised:
  a watchdog ping that silently fails would end in a kill, so the caller
  should know;
- no call blocks longer than ``SEND_TIMEOUT`` seconds.

Not wired into the agent yet; conf/zkdeploy-agent.service says how to turn
it on once it is.
"""

from __future__ import annotations

import os
import socket

#: seconds a send may take before it raises (a full socket buffer)
SEND_TIMEOUT = 1.0


def _address(raw: str) -> str | bytes:
    """The socket address of ``$NOTIFY_SOCKET``: a path, or ``@name`` for Linux's abstract namespace."""
    if raw.startswith("@"):
        return b"\0" + raw[1:].encode()
    return raw


def notify(*fields: str) -> bool:
    """Send ``fields`` (``KEY=value`` lines) to systemd; False when not under a notify unit."""
    raw = os.environ.get("NOTIFY_SOCKET")
    if not raw:
        return False
    for field in fields:
        if "=" not in field or "\n" in field:
            raise ValueError(f"not a KEY=value notification field: {field!r}")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.settimeout(SEND_TIMEOUT)
        sock.connect(_address(raw))
        sock.sendall("\n".join(fields).encode())
    return True


def ready(status: str | None = None) -> bool:
    """Tell systemd the agent serves (``READY=1``), optionally with a status line."""
    return notify("READY=1", *([f"STATUS={status}"] if status is not None else []))


def watchdog() -> bool:
    """Ping the watchdog (``WATCHDOG=1``); call more often than ``watchdog_interval()``."""
    return notify("WATCHDOG=1")


def status(text: str) -> bool:
    """Set the one-line status ``systemctl status`` shows."""
    return notify(f"STATUS={text}")


def stopping() -> bool:
    """Tell systemd the agent is shutting down (``STOPPING=1``)."""
    return notify("STOPPING=1")


def watchdog_interval() -> float | None:
    """Seconds between watchdog pings: half of ``WatchdogSec``, or None when no watchdog applies to this process."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 2_000_000 if value > 0 else None
