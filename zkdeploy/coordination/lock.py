"""The FIFO restart queue of a service: waiters watch only their predecessor.

Shaped after kazoo's Lock recipe, with what zkdeploy needs besides:

- every queue node's name carries a prefix unique to this waiter
  (``q-<uuid>__<seq>``), so when a create is applied but its reply is lost
  (a connection loss inside a live session) the waiter finds its own node
  again instead of leaving a ghost at the head of the queue that every other
  waiter would wait behind for ever;
- waiting is a step (``poll``) that never blocks: the agent's decision cycle
  asks whether it is first and otherwise sleeps until the predecessor's watch
  (or anything else) wakes it, so a long wait never stops it answering plans
  and undo requests; ``acquire`` is the blocking form built on it;
- under ACL roles (``own_session``) each place lives in a ZooKeeper session
  of its own, opened to join (``Session.sibling``) and closed to leave:
  closing it removes the node, so an agent needs no DELETE on the queue's
  parent and cannot delete another node's place (docs/security.md); the
  place then holds only while the agent's own session is the one that
  queued, too.  Without roles there is no boundary to keep, and the place
  lives in the agent's session, deleted to leave: no connection per restart
  (docs/benchmarks.md measures what one costs);
- ownership is checked against the session rather than trusted from a flag,
  and leaving retries through connection losses while the place's session
  lives (a node of a live session does not go by itself).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable

from zkdeploy.coordination.layout import QUEUE_PREFIX
from zkdeploy.coordination.session import DELETED, Delete, Op, Session, await_session, delete_own
from zkdeploy.errors import LockLostError, NoNodeError, RolloutAborted, SessionLostError

log = logging.getLogger(__name__)

_SEQUENCE_DIGITS = 10


def sequence_of(name: str) -> str:
    """The sequence suffix that orders a queue node (ZooKeeper's 10 zero-padded digits)."""
    return name[-_SEQUENCE_DIGITS:]


class QueueLock:
    """A mutex whose waiters form a FIFO queue under ``path``."""

    def __init__(self, session: Session, path: str, service: str, identifier: str, *,
                 own_session: bool = False) -> None:
        self._session = session  # the agent's own session
        self.own_session = own_session  # whether the place lives in a session of its own
        self._place: Session | None = None  # the session the place lives in, while queued
        self.path = path
        self.service = service
        self.identifier = identifier
        self.prefix = f"{QUEUE_PREFIX}{uuid.uuid4().hex}__"
        self.node: str | None = None
        self._generation: int | None = None  # the agent's session that queued
        self._place_generation: int | None = None
        # whether the predecessor's watch is armed, and the place read when it was: until that watch
        # fires, being first cannot have changed, so a poll answers without a read (N waiters woken
        # by other things would otherwise list an N-long queue on every wake-up)
        self._armed = False
        self._index = 0
        self._moved = threading.Event()
        self._gone = False  # what the predecessor's watch said: it was deleted
        # first in the queue, known: it stays first until it leaves (every later place is behind
        # it), so a head woken by every change of the count does not list the queue each time
        self._first = False
        self._wake: threading.Event | None = None
        self._listed: list[str] | None = None  # the queue listed with the join, for the first poll

    def _reader(self) -> Session:
        """The place's session when queued (it reads its own write, whatever server it is on)."""
        return self._place if self._place is not None else self._session

    def _contenders(self) -> list[str]:
        """The places in the queue, in order: the listing made with the join the first time (the
        queue as it was right after this waiter's place was made), read afresh after that."""
        listed, self._listed = self._listed, None
        names = listed if listed is not None else self._reader().children(self.path)
        return sorted((c for c in names if c.startswith(QUEUE_PREFIX)), key=sequence_of)

    def _find_own(self) -> str | None:
        return next((c for c in self._contenders() if c.startswith(self.prefix)), None)

    # -- joining -------------------------------------------------------------
    def join(self) -> None:
        """Take a place at the end of the queue, once.  Idempotent.

        A create interrupted by a connection loss is resolved by looking for
        this waiter's prefix once the same session is back: either the node
        is there (the reply was lost) or it was never made (it is made now).
        """
        if self.node is not None:
            return
        generation = self._session.require_connected()
        place = self._place = self._session.sibling().start() if self.own_session else self._session
        try:
            self._create(place)
        except BaseException:
            self._leave(None)
            raise
        self._generation = generation

    def _create(self, place: Session) -> None:
        placed = place.generation
        deadline = time.monotonic() + max(place.negotiated_timeout, 1.0)
        while True:
            try:
                created, listed = place.create_and_list(self.path + "/" + self.prefix, self.identifier.encode(),
                                                        ephemeral=True, sequence=True)
                self.node = created.rsplit("/", 1)[1]
                self._listed = listed  # the first poll's listing, read in the create's round trip
                break
            except NoNodeError:
                self._session.ensure_path(self.path)  # the first waiter ever: make the queue, then join it
            except SessionLostError:
                if not await_session(place, placed, deadline):
                    raise
                found = self._find_own()
                if found is not None:
                    log.warning("%s: the reply to joining the restart queue was lost; found %s", self.service, found)
                    self.node = found
                    break
        self._place_generation = placed

    # -- waiting ---------------------------------------------------------------
    def poll(self, wake: threading.Event | None = None) -> int:
        """This waiter's place: 0 when first.  Otherwise, with ``wake``, leaves a one-shot watch
        on the predecessor that sets it when the predecessor goes.  LockLostError when our
        node is gone (the session that owned it ended).

        The read of the queue is also the check that our node is still there: its name carries
        this waiter's own prefix, and a node of an ended session is caught by the generation.

        While the predecessor's watch is armed and has not fired, the answer is the place read
        when it was armed, with no request (only the predecessor's going can make this waiter
        first; the places of those further ahead moving up only change the number, which is
        logged, not acted on).  When the predecessor was first and its watch says it was
        deleted, this waiter is first, also without a read; and once first it stays first until
        it leaves (its session is still checked on every poll).  A place deleted under a head
        by another client is then not noticed until it leaves; the slot transaction, conditional
        on the availability epoch, keeps two heads from both taking a slot on one count."""
        self._require_same_session()
        if self._first:
            return 0
        if wake is not None and self._armed:
            if not self._moved.is_set():
                self._wake = wake
                return self._index
            if self._gone and self._index == 1:
                self._armed, self._first = False, True
                return 0
        self._armed = False
        contenders = self._contenders()
        if self.node not in contenders:
            lost = self.node
            self._drop()
            raise LockLostError(f"restart queue node {lost} of {self.service} disappeared")
        index = contenders.index(self.node)
        self._first = index == 0
        if index == 0 or wake is None:
            return index
        predecessor = self.path + "/" + contenders[index - 1]
        self._moved.clear()
        self._gone = False
        self._wake = wake
        if self._reader().exists(predecessor, self._predecessor_changed) is None:
            wake.set()  # it went between the two reads: look again at once
        else:
            self._armed, self._index = True, index
        return index

    def _predecessor_changed(self, kind: str = "", _path: str = "") -> None:
        """The predecessor's watch: the next poll reads the queue again (unless the predecessor
        was first and went), and the waiter wakes."""
        self._gone = kind == DELETED
        self._moved.set()
        wake = self._wake
        if wake is not None:
            wake.set()

    def acquire(self, should_abort: Callable[[], str | None], poll: float = 1.0) -> None:
        """Join (once) and block until first in the queue.

        ``should_abort`` is asked at least every ``poll`` seconds; when it
        returns a reason the waiter leaves the queue and RolloutAborted is
        raised.  LockLostError if the session loses the queue node.
        """
        self.join()
        while True:
            reason = should_abort()
            if reason:
                self.release()
                raise RolloutAborted(reason)
            moved = threading.Event()
            if self.poll(moved) == 0:
                return
            moved.wait(poll)

    def position(self) -> int | None:
        """This waiter's place in the queue (0 = first), None if not queued."""
        if self.node is None:
            return None
        contenders = self._contenders()
        return contenders.index(self.node) if self.node in contenders else None

    def _require_same_session(self) -> None:
        """LockLostError unless queued, connected, and in the sessions that queued (the agent's and
        the place's own)."""
        if self.node is None or self._place is None:
            raise LockLostError(f"not queued for {self.service}")
        self._session.require_connected()
        self._place.require_connected()
        if self._session.generation != self._generation or self._place.generation != self._place_generation:
            self._drop()
            raise LockLostError(f"the session that queued for {self.service} has ended")

    def require_queued(self) -> None:
        """Raise LockLostError unless our queue node still belongs to the place's session."""
        self._require_same_session()
        assert self.node is not None and self._place is not None
        stat = self._place.exists(self.path + "/" + self.node)
        if stat is None or stat.owner != self._place.session_id:
            self._drop()
            raise LockLostError(f"restart queue node of {self.service} is no longer held by this session")

    # -- leaving -----------------------------------------------------------------
    def leave_ops(self) -> list[Op]:
        """The ops that leave the queue inside another transaction (the slot's): the delete of our
        place when it lives in the agent's own session; none when it has a session of its own
        (closing that session is the way out, see ``release``).  Call ``left`` once committed."""
        if self.own_session or self.node is None:
            return []
        return [Delete(self.path + "/" + self.node)]

    def recheck(self) -> None:
        """Read the queue at the next poll: a transaction that should have left it failed, perhaps
        because our place was deleted under us (which a head, knowing it is first, does not read)."""
        self._first = self._armed = False

    def left(self) -> None:
        """The transaction with ``leave_ops`` was committed: the place is gone."""
        self.node, self._armed, self._first, self._place = None, False, False, None

    def release(self) -> None:
        """Leave the queue.  Safe when not queued.  A place in a session of its own: close that
        session, which removes the node, without waiting for it (``Session.close_later``: the
        caller goes on to its restart meanwhile).  Otherwise: delete the node, retrying through
        connection losses while the session that made it lives."""
        node, self.node, self._armed, self._first = self.node, None, False, False
        self._leave(node)

    def _drop(self) -> None:
        """The place is lost (a session that held it ended): forget it, and close its own session."""
        self.node, self._armed, self._first, self._listed = None, False, False, None
        self._leave(None)

    def _leave(self, node: str | None) -> None:
        place, self._place = self._place, None
        if place is None:
            return
        if self.own_session:
            place.close_later()
        elif node is not None:
            generation = place.generation if self._place_generation is None else self._place_generation
            delete_own(place, self.path + "/" + node, generation, f"{self.service}: restart queue node {node}", log)
