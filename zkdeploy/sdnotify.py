"""systemd readiness and watchdog notifications (sd_notify(3)), without libsystemd.

Under a unit with ``Type=notify`` systemd sets ``$NOTIFY_SOCKET`` to a unix
datagram socket; a daemon writes ``READY=1`` once it serves, ``WATCHDOG=1``
at least every ``WatchdogSec`` (systemd kills and restarts it otherwise),
``STATUS=...`` for ``systemctl status``, ``EXTEND_TIMEOUT_USEC=...`` while a
slow start or stop still makes progress, and ``STOPPING=1`` on its way out.

Guarantees:
- with no socket (not under systemd, or ``Type=simple``) every call does
  nothing and returns False;
- with one, a message is sent as one datagram or the OSError is raised:
  a watchdog ping that silently fails would end in a kill, so the caller
  should know;
- no call blocks longer than ``SEND_TIMEOUT`` seconds.

The agent takes the variables out of its environment when it starts
(``Notifier.take_environment``, like sd_notify's ``unset_environment``), so
the services and commands it starts never talk to the agent's socket.
The module-level functions read the environment at each call and leave it.
"""

from __future__ import annotations

import os
import socket
from collections.abc import MutableMapping
from dataclasses import dataclass

#: seconds a send may take before it raises (a full socket buffer)
SEND_TIMEOUT = 1.0

#: the variables systemd sets for a notify unit
ENVIRONMENT = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def _address(raw: str) -> str | bytes:
    """The socket address of ``$NOTIFY_SOCKET``: a path, or ``@name`` for Linux's abstract namespace."""
    if raw.startswith("@"):
        return b"\0" + raw[1:].encode()
    return raw


def _watchdog_seconds(usec: str | None, pid: str | None, own_pid: int) -> float | None:
    if not usec or (pid and pid != str(own_pid)):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 1_000_000 if value > 0 else None


@dataclass(frozen=True)
class Notifier:
    """Where notifications go (``socket`` None: nowhere) and the watchdog timeout that applies."""

    socket: str | None = None
    #: WatchdogSec in seconds, when systemd watches this process
    watchdog_timeout: float | None = None

    @classmethod
    def from_environment(cls, environ: MutableMapping[str, str] | None = None, *,
                         unset: bool = False) -> Notifier:
        """The notifier systemd's variables describe; with ``unset`` they are removed from ``environ``."""
        env = os.environ if environ is None else environ
        values = {key: env.get(key) for key in ENVIRONMENT}
        if unset:
            for key in ENVIRONMENT:
                env.pop(key, None)
        return cls(values["NOTIFY_SOCKET"] or None,
                   _watchdog_seconds(values["WATCHDOG_USEC"], values["WATCHDOG_PID"], os.getpid()))

    @classmethod
    def take_environment(cls) -> Notifier:
        """The notifier of this process, its variables taken out of ``os.environ`` (children inherit none)."""
        return cls.from_environment(unset=True)

    @property
    def enabled(self) -> bool:
        return self.socket is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between watchdog pings: half of ``WatchdogSec``, or None when no watchdog applies."""
        return self.watchdog_timeout / 2 if self.watchdog_timeout else None

    def notify(self, *fields: str) -> bool:
        """Send ``fields`` (``KEY=value`` lines) as one datagram; False when there is no socket."""
        for field in fields:
            if "=" not in field or "\n" in field:
                raise ValueError(f"not a KEY=value notification field: {field!r}")
        if self.socket is None:
            return False
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.settimeout(SEND_TIMEOUT)
            sock.connect(_address(self.socket))
            sock.sendall("\n".join(fields).encode())
        return True

    def ready(self, status: str | None = None) -> bool:
        """``READY=1``, optionally with a status line."""
        return self.notify("READY=1", *([f"STATUS={status}"] if status is not None else []))

    def watchdog(self, *extra: str) -> bool:
        """``WATCHDOG=1`` (with ``extra`` fields in the same datagram)."""
        return self.notify("WATCHDOG=1", *extra)

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def stopping(self, status: str | None = None) -> bool:
        return self.notify("STOPPING=1", *([f"STATUS={status}"] if status is not None else []))


def extend_timeout_field(seconds: float) -> str:
    """``EXTEND_TIMEOUT_USEC=``: the start (or stop) may take ``seconds`` more from now."""
    return f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}"


def notify(*fields: str) -> bool:
    """Send ``fields`` (``KEY=value`` lines) to systemd; False when not under a notify unit."""
    return Notifier.from_environment().notify(*fields)


def ready(status: str | None = None) -> bool:
    """Tell systemd the agent serves (``READY=1``), optionally with a status line."""
    return Notifier.from_environment().ready(status)


def watchdog() -> bool:
    """Ping the watchdog (``WATCHDOG=1``); call more often than ``watchdog_interval()``."""
    return Notifier.from_environment().watchdog()


def status(text: str) -> bool:
    """Set the one-line status ``systemctl status`` shows."""
    return Notifier.from_environment().status(text)


def stopping() -> bool:
    """Tell systemd the agent is shutting down (``STOPPING=1``)."""
    return Notifier.from_environment().stopping()


def watchdog_interval() -> float | None:
    """Seconds between watchdog pings: half of ``WatchdogSec``, or None when no watchdog applies to this process."""
    return Notifier.from_environment().watchdog_interval
