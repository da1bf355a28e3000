"""The FIFO restart queue of a service: waiters watch only their predecessor.

Shaped after kazoo's Lock recipe, with two differences zkdeploy needs: a
waiter can be told to give up (the deploy changed, the agent is stopping, the
killswitch came on) without a thread of its own, and ownership is checked
against the session rather than trusted from a flag.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from kazoo.exceptions import NoNodeError

from zkdeploy.coordination.layout import QUEUE_PREFIX
from zkdeploy.coordination.store import Store
from zkdeploy.errors import LockLostError, RolloutAborted

log = logging.getLogger(__name__)


class QueueLock:
    """A mutex whose waiters form a FIFO queue under ``<root>/locks/<service>/queue``."""

    def __init__(self, store: Store, service: str, identifier: str) -> None:
        self.store = store
        self.service = service
        self.identifier = identifier
        self.path = store.layout.lock_queue(service)
        self.node: str | None = None

    def _contenders(self) -> list[str]:
        return sorted(
            (c for c in self.store._children(self.path) if c.startswith(QUEUE_PREFIX)),
            key=lambda c: c[len(QUEUE_PREFIX):],
        )

    def position(self) -> int | None:
        """This waiter's place in the queue (0 = holds the lock), None if not queued."""
        if self.node is None:
            return None
        contenders = self._contenders()
        return contenders.index(self.node) if self.node in contenders else None

    def acquire(self, should_abort: Callable[[], str | None], poll: float = 1.0) -> None:
        """Join the queue (once) and block until first in it.

        ``should_abort`` is asked at least every ``poll`` seconds; when it
        returns a reason the waiter leaves the queue and RolloutAborted is
        raised.  LockLostError if the session loses the queue node.
        """
        conn = self.store.conn
        conn.require_connected()
        if self.node is None:
            conn.call("ensure_path", self.path)
            created = conn.call("create", self.path + "/" + QUEUE_PREFIX, self.identifier.encode(),
                                None, True, True)
            self.node = created.rsplit("/", 1)[1]
        while True:
            reason = should_abort()
            if reason:
                self.release()
                raise RolloutAborted(reason)
            self.require_held_or_queued()
            contenders = self._contenders()
            if self.node not in contenders:
                lost = self.node
                self.node = None
                raise LockLostError(f"restart queue node {lost} of {self.service} disappeared")
            index = contenders.index(self.node)
            if index == 0:
                return
            predecessor = self.path + "/" + contenders[index - 1]
            moved = threading.Event()
            try:
                if conn.call("exists", predecessor, lambda _event: moved.set()) is None:
                    continue
            except NoNodeError:
                continue
            moved.wait(poll)

    def require_held_or_queued(self) -> None:
        """Raise LockLostError unless our queue node still belongs to this session."""
        if self.node is None:
            raise LockLostError(f"not queued for {self.service}")
        self.store.require_owned(self.path + "/" + self.node)

    def release(self) -> None:
        """Leave the queue; safe to call when not queued or after the session was lost."""
        node, self.node = self.node, None
        if node is None:
            return
        try:
            self.store._delete(self.path + "/" + node)
        except Exception as exc:  # the node dies with the session anyway
            log.warning("could not remove restart queue node %s/%s: %s", self.path, node, exc)
