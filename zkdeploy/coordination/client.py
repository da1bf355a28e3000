"""The ZooKeeper connection: one kazoo client, its session state, and timeouts.

This module and its siblings in zkdeploy.coordination are the only code that
imports kazoo.  Every call goes through ``Connection.call``, which bounds it
with the operation timeout and turns kazoo's exceptions into zkdeploy's.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import (
    BadVersionError,
    ConnectionClosedError,
    ConnectionLoss,
    KazooException,
    NodeExistsError,
    NoNodeError,
    NotEmptyError,
    SessionExpiredError,
)
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.retry import KazooRetry

from zkdeploy.errors import ConflictError, CoordinationError, SessionLostError

log = logging.getLogger(__name__)

CONNECTED = "connected"
SUSPENDED = "suspended"
LOST = "lost"


class Connection:
    """A kazoo client with session bookkeeping.

    ``generation`` increases every time a new session is established, so a
    caller can tell that the session under it changed (every ephemeral node
    and lock of the old one is gone).
    """

    def __init__(self, hosts: str, *, session_timeout: float = 10.0, connect_timeout: float = 15.0,
                 operation_timeout: float = 10.0, read_only: bool = False) -> None:
        self.hosts = hosts
        self.connect_timeout = connect_timeout
        self.operation_timeout = operation_timeout
        self.client = KazooClient(
            hosts=hosts,
            timeout=session_timeout,
            connection_retry=KazooRetry(max_tries=-1, delay=0.1, backoff=1.5, max_delay=2.0),
            read_only=read_only,
        )
        self._lock = threading.Lock()
        self._state = LOST
        self._session_id: int | None = None
        self.generation = 0
        self._listeners: list[Callable[[str], None]] = []
        self._closing = False
        self.client.add_listener(self._on_state)

    # -- lifecycle -----------------------------------------------------
    def start(self) -> "Connection":
        try:
            self.client.start(timeout=self.connect_timeout)
        except (KazooTimeoutError, KazooException, OSError) as exc:
            self.client.stop()
            self.client.close()
            raise CoordinationError(
                f"cannot reach ZooKeeper at {self.hosts} within {self.connect_timeout:g}s ({exc or type(exc).__name__})"
            ) from None
        self._note_session()
        return self

    def stop(self) -> None:
        self._closing = True
        try:
            self.client.stop()
            self.client.close()
        except KazooException:  # closing a dead client must not mask the real error
            log.debug("error while closing the ZooKeeper client", exc_info=True)

    # -- session state -------------------------------------------------
    def _on_state(self, state: str) -> None:
        # Called on kazoo's thread: record, never block.
        if state == KazooState.CONNECTED:
            new = CONNECTED
        elif state == KazooState.SUSPENDED:
            new = SUSPENDED
        else:
            new = LOST
        with self._lock:
            self._state = new
        if new == CONNECTED:
            # client_id is only updated after the listener returns; read it later.
            threading.Thread(target=self._note_session, daemon=True).start()
        if not self._closing:
            log.log(logging.WARNING if new != CONNECTED else logging.INFO, "ZooKeeper session %s", new)
        for listener in list(self._listeners):
            try:
                listener(new)
            except Exception:  # a listener bug must not kill kazoo's thread
                log.exception("ZooKeeper state listener failed")

    def _note_session(self) -> None:
        with self._lock:
            if self.client.connected:
                self._state = CONNECTED
            sid = self.client.client_id[0] if self.client.client_id else None
            if sid is not None and sid != self._session_id:
                self._session_id = sid
                self.generation += 1

    def add_listener(self, fn: Callable[[str], None]) -> None:
        """Call ``fn(state)`` on every session state change (from kazoo's thread: keep it short)."""
        self._listeners.append(fn)

    @property
    def state(self) -> str:
        with self._lock:
            return self._state

    @property
    def session_id(self) -> int | None:
        cid = self.client.client_id
        return cid[0] if cid else None

    def require_connected(self) -> int:
        """Return the current generation, or raise SessionLostError if the session is not usable."""
        self._note_session()
        if self.state != CONNECTED or not self.client.connected:
            raise SessionLostError(f"ZooKeeper session is {self.state}: no new step may start")
        return self.generation

    # -- calls ---------------------------------------------------------
    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Run ``client.<method>_async(*args)`` bounded by the operation timeout."""
        fn = getattr(self.client, method + "_async")
        try:
            return fn(*args, **kwargs).get(timeout=self.operation_timeout)
        except Exception as exc:  # translated below; nothing is swallowed
            raise translate(exc, f"{method} {args[0] if args else ''}") from None

    def commit(self, transaction: Any, what: str) -> list[Any]:
        """Commit a kazoo transaction; raise ConflictError if any operation failed."""
        try:
            results = transaction.commit_async().get(timeout=self.operation_timeout)
        except Exception as exc:
            raise translate(exc, what) from None
        failures = [r for r in results if isinstance(r, Exception)]
        if failures:
            real = [f for f in failures if type(f).__name__ != "RolledBackError"]
            raise ConflictError(f"{what}: {type((real or failures)[0]).__name__}")
        return results


def translate(exc: BaseException, what: str) -> Exception:
    """Map a kazoo (or timeout) exception onto zkdeploy's hierarchy."""
    if isinstance(exc, (NoNodeError, NodeExistsError, BadVersionError, NotEmptyError)):
        return exc  # callers decide; these are expected outcomes, not failures
    if isinstance(exc, KazooTimeoutError):
        return CoordinationError(f"ZooKeeper did not answer in time: {what}")
    if isinstance(exc, (SessionExpiredError, ConnectionLoss, ConnectionClosedError)):
        return SessionLostError(f"ZooKeeper connection lost during {what}: {type(exc).__name__}")
    if isinstance(exc, KazooException):
        return CoordinationError(f"ZooKeeper error during {what}: {type(exc).__name__} {exc}")
    if isinstance(exc, Exception):
        return exc
    return CoordinationError(str(exc))
