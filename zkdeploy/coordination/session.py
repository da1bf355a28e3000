"""The seam under the coordination store: one client session of a ZooKeeper-like tree.

``Store`` (zkdeploy.coordination.store) builds every record and recipe of
zkdeploy out of the few primitives below.  Two implementations exist:

- ``ZooKeeperSession`` (zkdeploy.coordination.zookeeper), the only code that
  imports kazoo; it translates every kazoo error into zkdeploy's own;
- ``MemorySession`` (zkdeploy.testing.memory), for unit and model-based tests
  only: it models what matters for safety (sessions, ephemeral nodes that go
  with their session, sequential nodes, conditional writes, one-shot and
  persistent watches, session expiry on demand, and a write that is applied
  while its reply is lost).

Keeping the seam at the level of znodes, not of zkdeploy's records, means the
model-based tests exercise the very code that runs against ZooKeeper: the
queue recipe, the slot transaction, the ownership checks.

The contract every implementation keeps:

- Reads of an absent node return ``None`` (``get``, ``exists``) or ``[]``
  (``children``); they never raise for absence.
- Writes raise ``NodeExistsError``, ``NoNodeError``, ``BadVersionError`` or
  ``NotEmptyError`` (all ``ConflictError``) for the expected outcomes of a
  race, ``SessionLostError`` when the connection or session went away during
  the call (the write may or may not have been applied: the caller must find
  out), and ``CoordinationError`` for everything else, including a call that
  ran past the operation timeout.
- Watches are called on another thread than the caller's; a callback must be
  quick and must not call back into the session while holding a lock the
  caller may hold.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

#: session states, as reported by ``Session.state``
CONNECTED = "connected"
SUSPENDED = "suspended"  # the connection dropped; the session may still live (ephemeral nodes stay)
LOST = "lost"            # the session expired or the client closed: its ephemeral nodes are gone

#: a one-shot watch: called once with the event (kind, path) when the node or its children change
Watcher = Callable[[str, str], Any]

# event kinds passed to watchers
CHANGED = "changed"
CHILD = "child"
CREATED = "created"
DELETED = "deleted"
SESSION = "session"


@dataclass(frozen=True)
class Stat:
    """What zkdeploy reads of a znode's stat."""

    version: int
    owner: int  # the session id of an ephemeral node's owner, 0 for a persistent node
    created: int = 0  # the zxid that created it (orders nodes across sequences)
    children: int = 0
    modified: float = 0.0  # when its data was last written (seconds since the epoch, the server's clock)


#: what ``Session.read_decision`` returns: the children of each name path, the tally (count, stat)
#: and each record (data and stat, None if absent)
Decision = tuple[list[list[str]], tuple[int, Stat | None], list[tuple[bytes, Stat] | None]]


@dataclass(frozen=True)
class Acl:
    """One access control entry: ``perms`` (a sum of the PERM_* flags) for ``id`` under ``scheme``
    (``digest`` with ``user:base64(sha1(user:password))``, ``x509`` with a subject DN, ``world``)."""

    scheme: str
    id: str
    perms: int


# ZooKeeper's permission bits (DELETE and CREATE are permissions on the parent of the node concerned)
PERM_READ, PERM_WRITE, PERM_CREATE, PERM_DELETE, PERM_ADMIN = 1, 2, 4, 8, 16
PERM_ALL = 31
OPEN_ACL: tuple[Acl, ...] = (Acl("world", "anyone", PERM_ALL),)


@dataclass(frozen=True)
class Create:
    """A create inside a transaction (``acl`` None: open to everyone)."""

    path: str
    data: bytes = b""
    ephemeral: bool = False
    sequence: bool = False
    acl: tuple[Acl, ...] | None = None


@dataclass(frozen=True)
class SetData:
    """A conditional write inside a transaction (``version`` -1: unconditional)."""

    path: str
    data: bytes
    version: int = -1


@dataclass(frozen=True)
class Delete:
    """A conditional delete inside a transaction."""

    path: str
    version: int = -1


@dataclass(frozen=True)
class Check:
    """A version check inside a transaction (fails the whole transaction when it does not hold)."""

    path: str
    version: int


Op = Create | SetData | Delete | Check


class Session(ABC):
    """One client session of the coordination tree.

    ``generation`` increases whenever a new session replaces the old one (every
    ephemeral node of the old one is then gone); ``session_id`` is the owner
    id that ``Stat.owner`` names for ephemeral nodes of this session.
    """

    hosts: str = ""

    # -- lifecycle and session state ------------------------------------------
    @abstractmethod
    def start(self) -> Session:
        """Connect within the connect timeout; CoordinationError if that is not possible."""

    @abstractmethod
    def close(self) -> None:
        """Close the session (its ephemeral nodes go at once).  Safe to call twice."""

    def close_later(self) -> None:
        """Close without making the caller wait for it, once the session is connected again if it
        is not (up to its timeout: a session closed while disconnected keeps its ephemeral nodes
        until the server expires it).  Here: at once; ZooKeeper's closes in a thread of its own."""
        self.close()

    @abstractmethod
    def sibling(self) -> Session:
        """A new session (not started) to the same ensemble, with the same credentials and timeouts:
        for nodes that must go together when it closes (the swarm's tracker entries, a place in a
        restart queue under ACL roles)."""

    @property
    def guarded(self) -> bool:
        """Whether ACL roles guard the fleet this session works on (the nodes it creates get the
        policy's ACLs, and an agent may delete only under parents of its own)."""
        return False

    @property
    def stewards(self) -> bool:
        """Whether this client may write the progress of deploy entries (record a halt, a wave, a
        completion): any client without ACL roles; under roles, one holding the steward or the
        operator role."""
        return True

    @property
    @abstractmethod
    def state(self) -> str:
        """CONNECTED, SUSPENDED or LOST."""

    @property
    @abstractmethod
    def generation(self) -> int:
        """How many sessions this client has had; changes when a new one replaced the old."""

    @property
    @abstractmethod
    def session_id(self) -> int | None:
        """The id of the live session, None when there is none."""

    @property
    @abstractmethod
    def negotiated_timeout(self) -> float:
        """The session timeout the server granted, in seconds (may differ from the one asked for)."""

    @property
    @abstractmethod
    def operation_timeout(self) -> float:
        """The bound on every call, in seconds."""

    @abstractmethod
    def add_listener(self, fn: Callable[[str], None]) -> None:
        """Call ``fn(state)`` on every session state change (from another thread: keep it short)."""

    def require_connected(self) -> int:
        """Return the generation, or raise SessionLostError when no new step may start."""
        from zkdeploy.errors import SessionLostError

        if self.state != CONNECTED:
            raise SessionLostError(f"ZooKeeper session is {self.state}: no new step may start")
        return self.generation

    # -- reads -------------------------------------------------------------------
    @abstractmethod
    def get(self, path: str, watch: Watcher | None = None) -> tuple[bytes, Stat] | None:
        """Data and stat of ``path``, None if absent; ``watch`` fires once on change or deletion
        (or on creation, when the node was absent)."""

    @abstractmethod
    def children(self, path: str, watch: Watcher | None = None) -> list[str]:
        """Names of the children of ``path`` (unsorted), [] if absent; ``watch`` fires once when
        a child is added or removed or ``path`` is deleted."""

    @abstractmethod
    def exists(self, path: str, watch: Watcher | None = None) -> Stat | None:
        """Stat of ``path`` or None; ``watch`` fires once when it is created, changed or deleted."""

    def children_all(self, paths: Sequence[str], watch: Watcher | None = None) -> list[list[str]]:
        """``children`` of each of ``paths``, in order, with the same ``watch`` on each.  The
        server answers a session's requests in the order they were sent, so the result is what
        reading them one after the other gives; an implementation may send them together (one
        round trip instead of one per path)."""
        return [self.children(path, watch) for path in paths]

    def get_all(self, paths: Sequence[str], watch: Watcher | None = None) -> list[tuple[bytes, Stat] | None]:
        """``get`` of each of ``paths``, in order, with the same ``watch`` on each (None for an
        absent node, which may or may not leave a watch for its creation: read the children of its
        parent with a watch to see it come); an implementation may send them together (one round
        trip instead of one per path)."""
        return [self.get(path, watch) for path in paths]

    def read_decision(self, names: Sequence[str], counted: str, records: Sequence[str],
                      watch: Watcher | None = None) -> Decision:
        """What a quorum decision reads: ``children_all(names, watch)``, ``tally(counted, watch)``
        and ``get_all(records)`` (no watch), in that order; an implementation may send them all
        together (one round trip instead of three)."""
        return self.children_all(names, watch), self.tally(counted, watch), self.get_all(records)

    @abstractmethod
    def tally(self, path: str, watch: Watcher | None = None) -> tuple[int, Stat | None]:
        """How many nodes there are below ``path`` (all descendants: ZooKeeper's
        ``getAllChildrenNumber``) and ``path``'s stat, leaving ``watch`` on its data, both of one
        state: no write to ``path``'s data and no child added or removed between them (the count
        of tokens and the epoch a slot transaction is conditional on must agree); ``(0, None)``
        when ``path`` is absent.  ConflictError if ``path`` kept changing while it was read."""

    # -- writes ------------------------------------------------------------------
    @abstractmethod
    def create(self, path: str, data: bytes = b"", *, ephemeral: bool = False, sequence: bool = False,
               makepath: bool = False, acl: Sequence[Acl] | None = None) -> str:
        """Create ``path`` with ``acl`` (None: open); returns the path created (with the sequence
        suffix, if any).  Parents made by ``makepath`` get the same ACL."""

    def create_and_list(self, path: str, data: bytes = b"", *, ephemeral: bool = False, sequence: bool = False,
                        acl: Sequence[Acl] | None = None) -> tuple[str, list[str]]:
        """``create`` then the ``children`` of its parent, read after the create (the server
        answers a session's requests in order): the path created and the listing, which has it.
        The create's error is raised as ``create`` raises it.  An implementation may send both
        together (one round trip instead of two)."""
        created = self.create(path, data, ephemeral=ephemeral, sequence=sequence, acl=acl)
        return created, self.children(path.rsplit("/", 1)[0])

    @abstractmethod
    def set(self, path: str, data: bytes, version: int = -1) -> Stat:
        """Write ``data`` if the node's version is ``version`` (-1: any)."""

    @abstractmethod
    def delete(self, path: str, version: int = -1) -> None:
        """Delete ``path`` if its version is ``version`` (-1: any)."""

    @abstractmethod
    def ensure_path(self, path: str) -> None:
        """Create ``path`` and its parents as persistent nodes where absent."""

    # -- access control (ZooKeeper only; the in-memory model keeps no ACLs) ---------------------
    def get_acl(self, path: str) -> tuple[list[Acl], Stat] | None:
        """The ACL of ``path`` and its stat, None if absent."""
        from zkdeploy.errors import CoordinationError

        raise CoordinationError(f"{type(self).__name__} keeps no ACLs")

    def set_acl(self, path: str, acl: Sequence[Acl], version: int = -1) -> None:
        """Replace the ACL of ``path`` (needs ADMIN on it)."""
        from zkdeploy.errors import CoordinationError

        raise CoordinationError(f"{type(self).__name__} keeps no ACLs")

    @abstractmethod
    def commit(self, ops: Sequence[Op]) -> list[str | Stat | None]:
        """Apply ``ops`` atomically (all or none).  Returns one result per op: the path for a
        Create, the Stat for a SetData, None for the others.  When any op fails, raises the
        ConflictError of the first failing op and nothing is applied."""

    # -- persistent watches --------------------------------------------------------
    @abstractmethod
    def watch_children(self, path: str, callback: Callable[[list[str]], Any]) -> None:
        """Call ``callback(children)`` now and after every change of ``path``'s children, for as
        long as the client lives (across sessions).  ``path`` is created when absent."""

    @abstractmethod
    def watch_data(self, path: str, callback: Callable[[bytes | None], bool | None]) -> None:
        """Call ``callback(data)`` now and after every change of ``path`` (None when absent), for
        as long as the client lives, until the callback returns False."""


def await_session(session: Session, generation: int, deadline: float) -> bool:
    """Wait (until ``time.monotonic()`` reaches ``deadline``) for the session ``generation`` to be
    connected again; False when a new session replaced it or it did not come back in time."""
    import time

    while time.monotonic() < deadline:
        if session.generation != generation:
            return False
        if session.state == CONNECTED:
            return True
        time.sleep(0.05)
    return False


def delete_own(session: Session, path: str, generation: int, what: str, log: Any) -> None:
    """Delete an ephemeral node made by the session ``generation``, retrying through connection losses.

    A delete whose reply is lost may have been applied: the retry then finds
    nothing.  Only a new session (the old one, with the node, is gone) or the
    session timeout ends the attempts early: a session that never comes back
    is expired by the server, which removes the node with it.
    """
    import time

    from zkdeploy.errors import CoordinationError, NoNodeError

    deadline = time.monotonic() + max(session.negotiated_timeout, 1.0)
    while True:
        try:
            session.delete(path)
            return
        except NoNodeError:
            return
        except CoordinationError as exc:
            if not await_session(session, generation, deadline):
                log.info("%s: not removed (%s); it goes with the session, which has ended or will be "
                         "expired by the server", what, exc)
                return
            log.warning("%s: delete interrupted (%s); retrying in the same session", what, exc)
            time.sleep(0.05)


class ForwardingSession(Session):
    """A session that passes every call to ``inner``; a subclass overrides the calls it changes
    (the ACL layer gives every create its ACL; a test's counting layer counts requests).  What
    the inner session has besides the seam (``expire`` for tests) is reached through it too."""

    def __init__(self, inner: Session) -> None:
        self.inner = inner
        self.hosts = inner.hosts

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def start(self) -> Session:
        self.inner.start()
        return self

    def close(self) -> None:
        self.inner.close()

    def close_later(self) -> None:
        self.inner.close_later()

    def sibling(self) -> Session:
        return self.inner.sibling()

    @property
    def guarded(self) -> bool:
        return self.inner.guarded

    @property
    def stewards(self) -> bool:
        return self.inner.stewards

    @property
    def state(self) -> str:
        return self.inner.state

    @property
    def generation(self) -> int:
        return self.inner.generation

    @property
    def session_id(self) -> int | None:
        return self.inner.session_id

    @property
    def negotiated_timeout(self) -> float:
        return self.inner.negotiated_timeout

    @property
    def operation_timeout(self) -> float:
        return self.inner.operation_timeout

    def add_listener(self, fn: Callable[[str], None]) -> None:
        self.inner.add_listener(fn)

    def require_connected(self) -> int:
        return self.inner.require_connected()

    def get(self, path: str, watch: Watcher | None = None) -> tuple[bytes, Stat] | None:
        return self.inner.get(path, watch)

    def children(self, path: str, watch: Watcher | None = None) -> list[str]:
        return self.inner.children(path, watch)

    def exists(self, path: str, watch: Watcher | None = None) -> Stat | None:
        return self.inner.exists(path, watch)

    def children_all(self, paths: Sequence[str], watch: Watcher | None = None) -> list[list[str]]:
        return self.inner.children_all(paths, watch)

    def get_all(self, paths: Sequence[str], watch: Watcher | None = None) -> list[tuple[bytes, Stat] | None]:
        return self.inner.get_all(paths, watch)

    def tally(self, path: str, watch: Watcher | None = None) -> tuple[int, Stat | None]:
        return self.inner.tally(path, watch)

    def read_decision(self, names: Sequence[str], counted: str, records: Sequence[str],
                      watch: Watcher | None = None) -> Decision:
        return self.inner.read_decision(names, counted, records, watch)

    def create(self, path: str, data: bytes = b"", *, ephemeral: bool = False, sequence: bool = False,
               makepath: bool = False, acl: Sequence[Acl] | None = None) -> str:
        return self.inner.create(path, data, ephemeral=ephemeral, sequence=sequence, makepath=makepath, acl=acl)

    def create_and_list(self, path: str, data: bytes = b"", *, ephemeral: bool = False, sequence: bool = False,
                        acl: Sequence[Acl] | None = None) -> tuple[str, list[str]]:
        return self.inner.create_and_list(path, data, ephemeral=ephemeral, sequence=sequence, acl=acl)

    def set(self, path: str, data: bytes, version: int = -1) -> Stat:
        return self.inner.set(path, data, version)

    def delete(self, path: str, version: int = -1) -> None:
        self.inner.delete(path, version)

    def ensure_path(self, path: str) -> None:
        self.inner.ensure_path(path)

    def get_acl(self, path: str) -> tuple[list[Acl], Stat] | None:
        return self.inner.get_acl(path)

    def set_acl(self, path: str, acl: Sequence[Acl], version: int = -1) -> None:
        self.inner.set_acl(path, acl, version)

    def commit(self, ops: Sequence[Op]) -> list[str | Stat | None]:
        return self.inner.commit(ops)

    def watch_children(self, path: str, callback: Callable[[list[str]], Any]) -> None:
        self.inner.watch_children(path, callback)

    def watch_data(self, path: str, callback: Callable[[bytes | None], bool | None]) -> None:
        self.inner.watch_data(path, callback)
