"""The ZooKeeper implementation of the coordination seam: the only code that imports kazoo.

Every call is bounded by the operation timeout, and every kazoo error is
translated into zkdeploy's hierarchy (see zkdeploy.coordination.session for
the contract), so nothing above this module ever sees a kazoo exception.
"""

from __future__ import annotations

import contextlib
import logging
import select
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import (
    AuthFailedError,
    BadVersionError as KazooBadVersion,
    ConnectionClosedError,
    ConnectionLoss,
    KazooException,
    NoAuthError,
    NodeExistsError as KazooNodeExists,
    NoNodeError as KazooNoNode,
    NotEmptyError as KazooNotEmpty,
    QuotaExceededError,
    RolledBackError,
    SessionExpiredError,
)
from kazoo.handlers.threading import KazooTimeoutError, SequentialThreadingHandler
from kazoo.handlers.utils import selector_select
from kazoo.protocol.serialization import int_struct, write_string
from kazoo.protocol.states import WatchedEvent, ZnodeStat
from kazoo.recipe.watchers import ChildrenWatch, DataWatch
from kazoo.retry import KazooRetry
from kazoo.security import ACL as KazooACL, Id as KazooId

from zkdeploy.coordination.credentials import TlsOptions
from zkdeploy.coordination.session import (
    CHANGED,
    CHILD,
    CONNECTED,
    CREATED,
    DELETED,
    LOST,
    SESSION,
    SUSPENDED,
    Acl,
    Check,
    Create,
    Decision,
    Delete,
    Op,
    Session,
    SetData,
    Stat,
    Watcher,
    await_session,
)
from zkdeploy.errors import (
    AccessDeniedError,
    BadVersionError,
    ConflictError,
    CoordinationError,
    NodeExistsError,
    NoNodeError,
    NotEmptyError,
    SessionLostError,
)

log = logging.getLogger(__name__)

#: how many times ``tally`` reads again when its path changed between its reads
_TALLY_ATTEMPTS = 5

_EVENTS = {"CHANGED": CHANGED, "CHILD": CHILD, "CREATED": CREATED, "DELETED": DELETED, "NONE": SESSION}


class _AllChildrenNumber:
    """ZooKeeper 3.6's ``getAllChildrenNumber`` (opcode 104), which kazoo does not have: the
    number of nodes below a path, all depths.  It needs READ on the path."""

    type = 104

    def __init__(self, path: str) -> None:
        self.path = path

    def serialize(self) -> bytearray:
        out = bytearray()
        out.extend(write_string(self.path))
        return out

    @classmethod
    def deserialize(cls, raw: bytes, offset: int) -> int:
        return int(int_struct.unpack_from(raw, offset)[0])


class Handler(SequentialThreadingHandler):  # type: ignore[misc]
    """kazoo's threading handler with a cheaper wait in its connection loop.

    kazoo waits on its socket and its wake-up pipe through a selector made, registered and closed
    on every call (five system calls and some Python each time, a few times per request), so
    that a descriptor above ``FD_SETSIZE`` works.  ``select(2)`` on the same two descriptors is
    one call: it halves the client's CPU per request (docs/benchmarks.md).  A descriptor it
    cannot take (1024 and above) goes kazoo's way."""

    def select(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return select.select(*args, **kwargs)
        except ValueError:  # "filedescriptor out of range in select()"
            return selector_select(*args, **kwargs)


def translate(exc: BaseException, what: str) -> Exception:
    """Map a kazoo (or timeout) exception onto zkdeploy's hierarchy."""
    for kazoo_kind, ours in ((KazooNoNode, NoNodeError), (KazooNodeExists, NodeExistsError),
                             (KazooBadVersion, BadVersionError), (KazooNotEmpty, NotEmptyError)):
        if isinstance(exc, kazoo_kind):
            return ours(f"{what}: {ours.__name__.removesuffix('Error')}")
    if isinstance(exc, NoAuthError):
        return AccessDeniedError(f"ZooKeeper refused {what}: not allowed with this client's credentials")
    if isinstance(exc, AuthFailedError):
        return AccessDeniedError(f"ZooKeeper rejected this client's credentials ({what})")
    if isinstance(exc, QuotaExceededError):
        return AccessDeniedError(f"ZooKeeper's hard quota refused {what}: the parent holds all the children "
                                 "it may")
    if isinstance(exc, KazooTimeoutError):
        return CoordinationError(f"ZooKeeper did not answer in time: {what}")
    if isinstance(exc, (SessionExpiredError, ConnectionLoss, ConnectionClosedError)):
        return SessionLostError(f"ZooKeeper connection lost during {what}: {type(exc).__name__}")
    if isinstance(exc, KazooException):
        return CoordinationError(f"ZooKeeper error during {what}: {type(exc).__name__} {exc}")
    if isinstance(exc, (CoordinationError, TypeError, ValueError)):
        return exc  # already ours, or a programming error that must surface as it is
    return CoordinationError(f"ZooKeeper error during {what}: {type(exc).__name__} {exc}")


def _stat(stat: ZnodeStat) -> Stat:
    return Stat(version=stat.version, owner=stat.ephemeralOwner, created=stat.czxid,
                children=stat.numChildren, modified=stat.mtime / 1000)


def _acl(acl: Sequence[Acl] | None) -> list[KazooACL] | None:
    return None if acl is None else [KazooACL(a.perms, KazooId(a.scheme, a.id)) for a in acl]


def _relay(watch: Watcher | None) -> Callable[[WatchedEvent], None] | None:
    """kazoo's form of ``watch``: one per watch function (kept on it), so that a node read again
    with the same watch while it is armed is watched once, as kazoo keeps each callable once."""
    if watch is None:
        return None
    kept: Callable[[WatchedEvent], None] | None = getattr(watch, "_kazoo_relay", None)
    if kept is not None:
        return kept

    def fire(event: WatchedEvent) -> None:
        watch(_EVENTS.get(event.type, SESSION), event.path or "")
    with contextlib.suppress(AttributeError):  # a bound method cannot keep it: a relay per call
        watch._kazoo_relay = fire  # type: ignore[attr-defined]
    return fire


class _LastError(logging.LoggerAdapter):  # type: ignore[type-arg]
    """kazoo's logger, remembering the last connection error kazoo reported (it raises only a
    time-out; the reason, such as a certificate that names another host, is only logged)."""

    last: str = ""

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        if level >= logging.WARNING and "Connection dropped" in str(msg):
            try:
                self.last = str(msg) % args if args else str(msg)
            except (TypeError, ValueError):
                self.last = str(msg)
        super().log(level, msg, *args, **kwargs)


class ZooKeeperSession(Session):
    """A kazoo client with session bookkeeping.

    ``generation`` increases every time a new session is established, so a
    caller can tell that the session under it changed (every ephemeral node
    and lock of the old one is gone).
    """

    def __init__(self, hosts: str, *, session_timeout: float = 10.0, connect_timeout: float = 15.0,
                 operation_timeout: float = 10.0, read_only: bool = False,
                 auth: Sequence[tuple[str, str]] = (), tls: TlsOptions | None = None) -> None:
        self.hosts = hosts
        self._auth = list(auth)
        self._kazoo_log = _LastError(logging.getLogger("kazoo.client"), {})
        self._tls = tls
        secure: dict[str, Any] = {}
        if tls is not None:  # verification and host name checks always on: kazoo's check_hostname defaults off
            secure = dict(use_ssl=True, ca=tls.ca, certfile=tls.cert, keyfile=tls.key,
                          keyfile_password=tls.key_password(), verify_certs=True, check_hostname=True)
        self._secure = secure
        self.connect_timeout = connect_timeout
        self._operation_timeout = operation_timeout
        self._asked_timeout = session_timeout
        self.client = KazooClient(
            hosts=hosts,
            timeout=session_timeout,
            connection_retry=KazooRetry(max_tries=-1, delay=0.1, backoff=1.5, max_delay=2.0),
            read_only=read_only,
            auth_data=self._auth or None,
            logger=self._kazoo_log,
            handler=Handler(),
            **secure,
        )
        self._lock = threading.Lock()
        self._state = LOST
        self._session_id: int | None = None
        self._generation = 0
        self._listeners: list[Callable[[str], None]] = []
        self._closing = False
        self.client.add_listener(self._on_state)

    # -- lifecycle -----------------------------------------------------
    def sibling(self) -> ZooKeeperSession:
        return ZooKeeperSession(self.hosts, session_timeout=self._asked_timeout, connect_timeout=self.connect_timeout,
                                operation_timeout=self._operation_timeout, auth=self._auth, tls=self._tls)

    def start(self) -> ZooKeeperSession:
        try:
            self.client.start(timeout=self.connect_timeout)
        except (KazooTimeoutError, KazooException, OSError) as exc:
            self.client.stop()
            self.client.close()
            if isinstance(exc, AuthFailedError):
                raise AccessDeniedError(f"ZooKeeper at {self.hosts} rejected this client's credentials") from None
            hint = (" (TLS: is this the secure port, and does its certificate name this host and chain to "
                    f"{self._tls.ca}?)") if self._tls is not None else ""
            if self._kazoo_log.last:
                hint += f"; last error: {self._kazoo_log.last.removeprefix('Connection dropped: ')}"
            raise CoordinationError(
                f"cannot reach ZooKeeper at {self.hosts} within {self.connect_timeout:g}s "
                f"({exc or type(exc).__name__}){hint}"
            ) from None
        self._note_session()
        return self

    def close_later(self) -> None:
        generation = self.generation

        def close() -> None:
            if self.state != CONNECTED and not await_session(self, generation,
                                                             time.monotonic() + max(self.negotiated_timeout, 1.0)):
                log.info("closing a ZooKeeper session that did not come back: its ephemeral nodes go when the "
                         "server expires it")
            self.close()
        threading.Thread(target=close, name="zk-close", daemon=True).start()

    def close(self) -> None:
        self._closing = True
        try:
            self.client.stop()
            self.client.close()
        except KazooException:  # closing a dead client must not mask the real error
            log.debug("error while closing the ZooKeeper client", exc_info=True)

    # -- session state -------------------------------------------------
    def _on_state(self, state: str) -> None:
        # Called on kazoo's thread: record, never block.
        new = {KazooState.CONNECTED: CONNECTED, KazooState.SUSPENDED: SUSPENDED}.get(state, LOST)
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
                self._generation += 1

    def add_listener(self, fn: Callable[[str], None]) -> None:
        self._listeners.append(fn)

    @property
    def state(self) -> str:
        with self._lock:
            return self._state

    @property
    def generation(self) -> int:
        return self._generation

    @property
    def session_id(self) -> int | None:
        cid = self.client.client_id
        return cid[0] if cid else None

    @property
    def negotiated_timeout(self) -> float:
        """The timeout asked for: kazoo logs the server's answer but does not keep it, and the server
        may only lower it (maxSessionTimeout).  Nothing in zkdeploy's safety rests on this value: the
        fence confirms with the server that the slot is still this session's before every step."""
        return self._asked_timeout

    @property
    def operation_timeout(self) -> float:
        return self._operation_timeout

    def require_connected(self) -> int:
        self._note_session()
        if self.state != CONNECTED or not self.client.connected:
            raise SessionLostError(f"ZooKeeper session is {self.state}: no new step may start")
        return self._generation

    # -- calls ---------------------------------------------------------
    def _failed(self, exc: Exception, what: str) -> Exception:
        """The zkdeploy error for a failed request; KeyboardInterrupt when the failure is a Ctrl-C
        that kazoo swallowed: kazoo wakes its connection thread with a write guarded by a bare
        ``except``, so a KeyboardInterrupt raised during that write comes back as
        ConnectionClosedError while the connection is open (``zkdeploy status --watch`` then
        exited 3, ZooKeeper unreachable, instead of stopping quietly)."""
        if isinstance(exc, ConnectionClosedError) and self.client.connected:
            sock = getattr(self.client._connection, "_write_sock", None)
            if sock is not None and sock.fileno() != -1:
                # the request stayed queued without its wake-up byte, and kazoo sends one request per
                # byte: send it now, or every later request would wait for the next one's byte
                with contextlib.suppress(OSError):
                    sock.send(b"\0")
                raise KeyboardInterrupt
        return translate(exc, what)

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        fn = getattr(self.client, method + "_async")
        try:
            return fn(*args, **kwargs).get(timeout=self._operation_timeout)
        except Exception as exc:  # translated below; nothing is swallowed
            raise self._failed(exc, f"{method} {args[0] if args else ''}") from None

    def get(self, path: str, watch: Watcher | None = None) -> tuple[bytes, Stat] | None:
        try:
            data, stat = self._call("get", path, _relay(watch))
        except NoNodeError:
            if watch is not None:
                self.exists(path, watch)  # fire on creation, as the contract says
            return None
        return data, _stat(stat)

    def children(self, path: str, watch: Watcher | None = None) -> list[str]:
        try:
            return list(self._call("get_children", path, _relay(watch)))
        except NoNodeError:
            return []

    def children_all(self, paths: Sequence[str], watch: Watcher | None = None) -> list[list[str]]:
        """Every request sent before the first answer is awaited: one round trip."""
        return self._children_answers(self._send_children(paths, watch))

    def _send_children(self, paths: Sequence[str], watch: Watcher | None) -> list[tuple[str, Any]]:
        relay = _relay(watch)
        return [(path, self.client.get_children_async(path, relay)) for path in paths]

    def _children_answers(self, pending: list[tuple[str, Any]]) -> list[list[str]]:
        out: list[list[str]] = []
        for path, answer in pending:
            try:
                out.append(list(answer.get(timeout=self._operation_timeout)))
            except Exception as exc:  # translated below; nothing is swallowed
                error = self._failed(exc, f"get_children {path}")
                if not isinstance(error, NoNodeError):
                    raise error from None
                out.append([])
        return out

    def get_all(self, paths: Sequence[str], watch: Watcher | None = None) -> list[tuple[bytes, Stat] | None]:
        """Every request sent before the first answer is awaited: one round trip."""
        return self._get_answers(self._send_gets(paths, watch))

    def _send_gets(self, paths: Sequence[str], watch: Watcher | None) -> list[tuple[str, Any]]:
        relay = _relay(watch)
        return [(path, self.client.get_async(path, relay)) for path in paths]

    def _get_answers(self, pending: list[tuple[str, Any]]) -> list[tuple[bytes, Stat] | None]:
        out: list[tuple[bytes, Stat] | None] = []
        for path, answer in pending:
            try:
                data, stat = answer.get(timeout=self._operation_timeout)
            except Exception as exc:  # translated below; nothing is swallowed
                error = self._failed(exc, f"get {path}")
                if not isinstance(error, NoNodeError):
                    raise error from None
                out.append(None)
                continue
            out.append((data, _stat(stat)))
        return out

    def exists(self, path: str, watch: Watcher | None = None) -> Stat | None:
        try:
            stat = self._call("exists", path, _relay(watch))
        except NoNodeError:
            return None
        return None if stat is None else _stat(stat)

    def tally(self, path: str, watch: Watcher | None = None) -> tuple[int, Stat | None]:
        """``path``'s stat (leaving ``watch``), the count below it, and its stat again, all three sent
        before the first answer is awaited (one round trip, answered in order).  Another session's
        write may land between any two of them: the count is returned only when both stats agree
        (no change of ``path``'s data or children between them), else read again."""
        for _ in range(_TALLY_ATTEMPTS):
            tallied = self._tally_answer(path, self._send_tally(path, watch))
            if tallied is not None:
                return tallied
        raise ConflictError(f"{path} changed during each of {_TALLY_ATTEMPTS} counts: decide again")

    def _send_tally(self, path: str, watch: Watcher | None) -> tuple[Any, Any, Any]:
        before = self.client.exists_async(path, _relay(watch))
        counted = self.client.handler.async_result()
        self.client._call(_AllChildrenNumber(path), counted)  # kazoo's own request path (no public one)
        return before, counted, self.client.exists_async(path)

    def _tally_answer(self, path: str, pending: tuple[Any, Any, Any]) -> tuple[int, Stat | None] | None:
        """The count and the stat, or None when ``path`` changed between the reads."""
        before, counted, after = pending
        first, second = self._answer(before, f"exists {path}"), self._answer(after, f"exists {path}")
        try:
            below = int(counted.get(timeout=self._operation_timeout))
        except Exception as exc:  # translated below; nothing is swallowed
            error = self._failed(exc, f"getAllChildrenNumber {path}")
            if not isinstance(error, NoNodeError):
                raise error from None
            below = 0
        if first is None or second is None:
            return (0, None) if first is None and second is None else None  # made or removed between
        if (first.version, first.numChildren) == (second.version, second.numChildren):
            return below, _stat(first)
        return None

    def read_decision(self, names: Sequence[str], counted: str, records: Sequence[str],
                      watch: Watcher | None = None) -> Decision:
        """All of it sent before the first answer is awaited: one round trip (a count that changed
        while it was read is read again, as ``tally`` does)."""
        kids, tally, gets = (self._send_children(names, watch), self._send_tally(counted, watch),
                             self._send_gets(records, None))
        children, tallied = self._children_answers(kids), self._tally_answer(counted, tally)
        read = self._get_answers(gets)
        return children, tallied if tallied is not None else self.tally(counted, watch), read

    def _answer(self, pending: Any, what: str) -> Any:
        try:
            return pending.get(timeout=self._operation_timeout)
        except Exception as exc:  # translated below; nothing is swallowed
            raise self._failed(exc, what) from None

    def create(self, path: str, data: bytes = b"", *, ephemeral: bool = False, sequence: bool = False,
               makepath: bool = False, acl: Sequence[Acl] | None = None) -> str:
        return str(self._call("create", path, data, _acl(acl), ephemeral, sequence, makepath))

    def create_and_list(self, path: str, data: bytes = b"", *, ephemeral: bool = False, sequence: bool = False,
                        acl: Sequence[Acl] | None = None) -> tuple[str, list[str]]:
        """Both sent before the first answer is awaited: one round trip."""
        made = self.client.create_async(path, data, _acl(acl), ephemeral, sequence, False)
        listing = self._send_children([path.rsplit("/", 1)[0]], None)
        created = str(self._answer(made, f"create {path}"))
        return created, self._children_answers(listing)[0]

    def set(self, path: str, data: bytes, version: int = -1) -> Stat:
        return _stat(self._call("set", path, data, version))

    def delete(self, path: str, version: int = -1) -> None:
        self._call("delete", path, version)

    def ensure_path(self, path: str) -> None:
        self._call("ensure_path", path)

    def get_acl(self, path: str) -> tuple[list[Acl], Stat] | None:
        try:
            acls, stat = self._call("get_acls", path)
        except NoNodeError:
            return None
        return [Acl(a.id.scheme, a.id.id, a.perms) for a in acls], _stat(stat)

    def set_acl(self, path: str, acl: Sequence[Acl], version: int = -1) -> None:
        self._call("set_acls", path, _acl(acl), version)

    def commit(self, ops: Sequence[Op]) -> list[str | Stat | None]:
        txn = self.client.transaction()
        for op in ops:
            if isinstance(op, Create):
                txn.create(op.path, op.data, acl=_acl(op.acl), ephemeral=op.ephemeral, sequence=op.sequence)
            elif isinstance(op, SetData):
                txn.set_data(op.path, op.data, op.version)
            elif isinstance(op, Delete):
                txn.delete(op.path, op.version)
            elif isinstance(op, Check):
                txn.check(op.path, op.version)
        what = "transaction on " + ", ".join(op.path for op in ops)
        try:
            results = txn.commit_async().get(timeout=self._operation_timeout)
        except Exception as exc:
            raise self._failed(exc, what) from None
        failures = [r for r in results if isinstance(r, Exception) and not isinstance(r, RolledBackError)]
        if failures:
            error = translate(failures[0], what)
            raise error if isinstance(error, (ConflictError, AccessDeniedError)) else ConflictError(f"{what}: {error}")
        out: list[str | Stat | None] = []
        for op, result in zip(ops, results, strict=True):  # one result per op
            if isinstance(op, Create):
                out.append(str(result))
            elif isinstance(op, SetData):
                out.append(_stat(result))
            else:
                out.append(None)
        return out

    # -- persistent watches ------------------------------------------------
    def watch_children(self, path: str, callback: Callable[[list[str]], Any]) -> None:
        self.ensure_path(path)
        ChildrenWatch(self.client, path, callback)

    def watch_data(self, path: str, callback: Callable[[bytes | None], bool | None]) -> None:
        def relay(data: bytes | None, stat: Any, event: Any = None) -> bool | None:
            return callback(data)

        DataWatch(self.client, path, relay)

    # -- faults on purpose (tests and chaos runs) ---------------------------------
    def expire(self, timeout: float = 10.0) -> None:
        """Make ZooKeeper expire this session now, as a partition longer than its timeout would.

        Done as kazoo's test harness does: a second client joins the same
        session and closes it.  This client then sees its session lost and
        reconnects with a new one.
        """
        client_id = self.client.client_id
        if client_id is None:
            return
        twin = KazooClient(hosts=self.hosts, client_id=client_id, timeout=self.negotiated_timeout,
                           handler=Handler(), **self._secure)
        twin.start(timeout=timeout)
        twin.stop()
        twin.close()
