"""The core under ``Store``: the session, this client's own bookkeeping, and the generic reads
and writes every group of records is built on (zkdeploy.coordination.store)."""

from __future__ import annotations

import json
import logging
import time
from typing import Any, TypeVar

from zkdeploy.coordination.layout import Layout
from zkdeploy.coordination.session import (
    Session,
    Stat,
    Watcher,
    await_session,
    delete_own,
)
from zkdeploy.errors import (
    BadVersionError,
    ConflictError,
    CoordinationError,
    LockLostError,
    NodeExistsError,
    NoNodeError,
)
from zkdeploy.model import Record

log = logging.getLogger("zkdeploy.coordination.store")

R = TypeVar("R", bound=Record)


class StoreCore:
    """The session and layout of one ``Store``, and its generic helpers."""

    def __init__(self, session: Session, root: str = "/dc") -> None:
        self._session = session
        self._layout = Layout(root)
        #: this session's own ephemeral records: path -> (session generation, znode version it last wrote)
        self._written: dict[str, tuple[int, int]] = {}
        #: this session's online tokens: path -> (session generation, whether this session's token is there)
        self._online: dict[str, tuple[int, bool]] = {}
        #: slots this session gave back inside another transaction: path -> session generation
        self._given_back: dict[str, int] = {}
        #: slots read as this session's and watched since: path -> (session generation, connection)
        #: of that read; the watch drops the entry on any change of the slot (``Availability.require_slot``)
        self._watched: dict[str, tuple[int, int]] = {}
        #: how many times the connection's state has changed (SUSPENDED, LOST, CONNECTED again)
        self._connection = 0
        session.add_listener(self._connection_changed)
        self._ensured: set[str] = set()

    def _connection_changed(self, _state: str) -> None:
        """A session listener (on the client's thread): whatever a watch said before is not relied on."""
        self._connection += 1

    def await_session(self, generation: int, timeout: float | None = None) -> bool:
        """Wait (bounded by the session timeout) until the session ``generation`` is connected
        again; False when it was replaced by a new one or did not come back in time."""
        wait = self._session.negotiated_timeout if timeout is None else timeout
        return await_session(self._session, generation, time.monotonic() + wait)

    def _ensure(self, path: str) -> None:
        """Make the persistent ``path`` exist, once per Store (a parent a child watch or a create needs)."""
        if path not in self._ensured:
            self._session.ensure_path(path)
            self._ensured.add(path)

    # -- generic helpers -----------------------------------------------
    def _get(self, path: str, watch: Watcher | None = None) -> tuple[bytes, Stat] | None:
        return self._session.get(path, watch)

    def _get_children(self, base: str, watch: Watcher | None = None) -> list[tuple[str, tuple[bytes, Stat]]]:
        """The children of ``base`` that are still there when read, with their data, in name
        order: one read of the names, then every child's data in one round trip; ``watch`` on the
        names and on each child's data."""
        names = self._children(base, watch)
        got = self._session.get_all([base + "/" + name for name in names], watch)
        return [(name, data) for name, data in zip(names, got, strict=True) if data is not None]

    def _children(self, path: str, watch: Watcher | None = None) -> list[str]:
        return sorted(self._session.children(path, watch))

    def _delete(self, path: str, version: int = -1) -> bool:
        try:
            self._session.delete(path, version)
            return True
        except NoNodeError:
            return False
        except BadVersionError:
            raise ConflictError(f"{path} changed since it was read") from None

    def _delete_own(self, path: str, what: str) -> None:
        """Delete an ephemeral node of this session, retrying through connection losses (see
        zkdeploy.coordination.session.delete_own)."""
        delete_own(self._session, path, self._session.generation, what, log)

    def delete_tree(self, path: str) -> None:
        """Remove ``path`` and everything below it (for tests and cleanup tools)."""
        for child in self._children(path):
            self.delete_tree(path + "/" + child)
        self._delete(path)

    def _owner_of(self, path: str) -> int | None:
        """The session id owning an ephemeral node, 0 for a persistent one, None if absent."""
        stat = self._session.exists(path)
        return None if stat is None else stat.owner

    def _owns(self, path: str) -> bool:
        sid = self._session.session_id
        return sid is not None and self._owner_of(path) == sid

    def _require_owned(self, path: str) -> None:
        self._session.require_connected()
        if not self._owns(path):
            raise LockLostError(f"{path} is no longer held by this agent's ZooKeeper session")

    def _put_ephemeral(self, path: str, data: bytes) -> None:
        """Create or overwrite an ephemeral node owned by this session.

        A node of the same path owned by another (dead) session is left alone
        and reported as a ConflictError: it disappears when that session expires.

        One request when this session wrote the node last: a write conditional on
        the version it left (only the writer of that version can match it, and a
        new session forgets what the old one wrote); three otherwise (create,
        then the owner's check, then a conditional write).
        """
        generation = self._session.generation
        known = self._written.get(path)
        if known is not None and known[0] == generation:
            try:
                self._written[path] = (generation, self._session.set(path, data, known[1]).version)
                return
            except (BadVersionError, NoNodeError):
                self._written.pop(path, None)  # written meanwhile (the slot transaction) or gone: look again
        for _ in range(3):
            try:
                self._session.create(path, data, ephemeral=True, makepath=True)
                self._written[path] = (generation, 0)
                return
            except NodeExistsError:
                pass  # there already: whose is it?
            stat = self._session.exists(path)
            if stat is None:
                continue
            if stat.owner != self._session.session_id:
                raise ConflictError(f"{path} still belongs to an older session (it expires within the session timeout)")
            try:
                self._written[path] = (generation, self._session.set(path, data, stat.version).version)
                return
            except (BadVersionError, NoNodeError):
                raise ConflictError(f"{path} changed while it was being written") from None
        raise ConflictError(f"{path} kept appearing and vanishing while it was being written")

    def _json(self, path: str) -> Any:
        got = self._get(path)
        if got is None:
            return None
        try:
            return json.loads(got[0].decode() or "null")
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CoordinationError(f"{path} holds corrupt JSON: {exc}") from None

    def _record(self, cls: type[R], path: str, got: tuple[bytes, Stat], **extra: Any) -> R | None:
        """One record of a listing, or None (logged) when it is corrupt: one bad record written by
        hand or by a broken tool must not stop every agent's cycle."""
        try:
            return cls.from_bytes(got[0], got[1].version, **extra)
        except CoordinationError as exc:
            log.error("%s: skipped: %s", path, exc)
            return None

    def _json_quiet(self, path: str) -> Any:
        """``_json`` for listings: a corrupt record is logged and read as None."""
        try:
            return self._json(path)
        except CoordinationError as exc:
            log.error("%s: skipped: %s", path, exc)
            return None

    def _create_sequential(self, base: str, prefix: str, data: bytes) -> str:
        return self._session.create(base + "/" + prefix, data, sequence=True).rsplit("/", 1)[1]
