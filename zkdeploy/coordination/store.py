"""zkdeploy's records in the coordination tree: the one interface the agent and the CLI use.

``Store`` is grouped by purpose, in the spirit of Patroni's ``AbstractDCS``:
the session; the catalog; presence and current state; membership; staging and holders;
the swarm tracker; the deploy queue; restart queues and slots; control
records; reports.  It is built only on the primitives of
``zkdeploy.coordination.session.Session``, so the same code runs against
ZooKeeper (``Store.connect``) and against the in-memory model the tests use
(``Store(MemorySession(...))``).

Reads return immutable records that carry their znode version; writes that
may race are conditional on that version and raise ConflictError when they
lose.  Ephemeral writes check that the node belongs to this session, so a
record left by a dead agent is never mistaken for ours.  No path, kazoo type
or session object leaves this package.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, TypedDict, TypeVar, Unpack

from zkdeploy.coordination.credentials import Security
from zkdeploy.coordination.layout import DEPLOY_PREFIX, HISTORY_PREFIX, MARK_PREFIX, PLAN_PREFIX, UNDO_PREFIX, Layout
from zkdeploy.coordination.lock import QueueLock, sequence_of
from zkdeploy.coordination.session import (
    CONNECTED,
    Create,
    Delete,
    Op,
    Session,
    SetData,
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
    SessionLostError,
)
from zkdeploy.model import ONLINE, CurrentEntry, DeployEntry, Killswitch, Mark, Member, NodeRecord, Pin, Record, Release

log = logging.getLogger(__name__)

R = TypeVar("R", bound=Record)


class Timeouts(TypedDict, total=False):
    """The ZooKeeper session's timeouts in seconds (``Store.connect``); a missing one has its default."""

    session_timeout: float
    connect_timeout: float
    operation_timeout: float


@dataclass(frozen=True)
class QuorumView:
    """What one quorum decision counts (``Store.quorum_view``): names only, and this node's entry."""

    present: frozenset[str]
    down: frozenset[str]
    members: frozenset[str]
    me: CurrentEntry | None

    def online_except(self, node: str) -> int:
        """The present nodes other than ``node`` whose entry is online (not in the down index)."""
        return len(self.present - self.down - {node})


class Store:
    """zkdeploy's records under one root of one coordination tree."""

    def __init__(self, session: Session, root: str = "/dc") -> None:
        self._session = session
        self._layout = Layout(root)
        #: this session's own ephemeral records: path -> (session generation, znode version it last wrote)
        self._written: dict[str, tuple[int, int]] = {}
        #: this session's down markers: path -> (session generation, whether this session's marker is there)
        self._down: dict[str, tuple[int, bool]] = {}
        self._ensured: set[str] = set()

    @classmethod
    def connect(cls, hosts: str, root: str = "/dc", security: Security | None = None,
                **timeouts: Unpack[Timeouts]) -> Store:
        """Connect to ZooKeeper (bounded by ``connect_timeout``) and make sure the base paths exist.

        With ``security``, the client authenticates (credentials, TLS) and, when the fleet has an
        ACL policy (``zkdeploy acl apply``), every node it creates gets its role's ACL."""
        from zkdeploy.coordination.acls import open_session

        store = cls(open_session(hosts, root, security, **timeouts), root)
        try:
            store.bootstrap()
        except Exception:
            store.close()
            raise
        return store

    def close(self) -> None:
        self._session.close()

    def bootstrap(self) -> None:
        for path in self._layout.base_paths():
            self._session.ensure_path(path)

    @property
    def root(self) -> str:
        return self._layout.root

    # -- the session -----------------------------------------------------
    @property
    def state(self) -> str:
        """The session's state: connected, suspended or lost."""
        return self._session.state

    @property
    def connected(self) -> bool:
        return self._session.state == CONNECTED

    @property
    def generation(self) -> int:
        """Changes whenever a new session replaced the old one (whose ephemeral nodes are gone)."""
        return self._session.generation

    @property
    def session_timeout(self) -> float:
        """The session timeout the server negotiated, in seconds."""
        return self._session.negotiated_timeout

    def require_connected(self) -> int:
        """The session's generation; SessionLostError when no new step may start."""
        return self._session.require_connected()

    def on_session_change(self, fn: Callable[[str], None]) -> None:
        """Call ``fn(state)`` on every change of the session's state (from another thread)."""
        self._session.add_listener(fn)

    def await_session(self, generation: int, timeout: float | None = None) -> bool:
        """Wait (bounded by the session timeout) until the session ``generation`` is connected
        again; False when it was replaced by a new one or did not come back in time."""
        wait = self.session_timeout if timeout is None else timeout
        return await_session(self._session, generation, time.monotonic() + wait)

    # -- generic helpers -----------------------------------------------
    def _get(self, path: str, watch: Watcher | None = None) -> tuple[bytes, Stat] | None:
        return self._session.get(path, watch)

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
                pass
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

    # -- watches (each calls ``fn`` now and after every change, for the client's life) ----------
    def watch_deploy_queue(self, fn: Callable[..., Any]) -> None:
        self._session.watch_children(self._layout.deploy, fn)

    def watch_deploy(self, name: str, fn: Callable[[bytes | None], bool | None]) -> None:
        """``fn(data)`` on every change of one deploy entry, until it returns False."""
        self._session.watch_data(self._layout.deploy_entry(name), fn)

    def watch_killswitch(self, fn: Callable[..., Any]) -> None:
        self._session.watch_data(self._layout.killswitch, fn)

    def watch_catalog(self, fn: Callable[..., Any]) -> None:
        self._session.watch_data(self._layout.catalog, fn)

    def watch_plan_requests(self, fn: Callable[..., Any]) -> None:
        self._session.watch_children(self._layout.plans, fn)

    def watch_undo_requests(self, node: str, fn: Callable[..., Any]) -> None:
        self._session.watch_children(self._layout.undo_requests(node), fn)

    def watch_releases(self, service: str, fn: Callable[..., Any]) -> None:
        self._session.watch_children(self._layout.releases(service), fn)

    def watch_staging(self, fn: Callable[..., Any]) -> None:
        self._session.watch_children(self._layout.staging, fn)

    # -- catalog --------------------------------------------------------
    def catalog(self) -> tuple[dict[str, Any] | None, int]:
        """The stored catalog as plain data, and its znode version (-1 if none is stored)."""
        got = self._get(self._layout.catalog)
        if got is None or not got[0]:
            return None, -1
        try:
            return json.loads(got[0].decode()), got[1].version
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CoordinationError(f"{self._layout.catalog} holds a corrupt catalog: {exc}") from None

    def put_catalog(self, data: dict[str, Any], expected_version: int) -> int:
        """Store the catalog, conditional on the version read before (-1: must not exist)."""
        raw = json.dumps(data, sort_keys=True).encode()
        try:
            if expected_version < 0:
                self._session.create(self._layout.catalog, raw)
                return 0
            return self._session.set(self._layout.catalog, raw, expected_version).version
        except (NodeExistsError, BadVersionError):
            raise ConflictError("the catalog was changed by someone else meanwhile; apply again") from None

    # -- presence and current state ------------------------------------------
    def nodes(self) -> dict[str, NodeRecord]:
        out = {}
        for name in self._children(self._layout.nodes):
            got = self._get(self._layout.node(name))
            if got and (node := self._record(NodeRecord, self._layout.node(name), got)) is not None:
                out[name] = node
        return out

    def register_node(self, record: NodeRecord) -> None:
        self._put_ephemeral(self._layout.node(record.node), record.to_bytes())

    def current(self, service: str, changed: threading.Event | None = None) -> dict[str, CurrentEntry]:
        """Every node's entry for ``service``.

        With ``changed``, the read also leaves one-shot watches that set the
        event when a node joins, leaves or changes its entry: the snapshot
        and the watches come from the same reads, so no change between
        deciding and waiting is missed.
        """
        base = self._layout.current_service(service)
        fire: Watcher | None = (lambda *_: changed.set()) if changed is not None else None
        out = {}
        for name in self._children(base, fire):
            got = self._get(base + "/" + name, fire)
            if got and (entry := self._record(CurrentEntry, base + "/" + name, got)) is not None:
                out[name] = entry
        return out

    def current_entry(self, service: str, node: str) -> CurrentEntry | None:
        """One node's entry for ``service`` (one read), None if absent or unreadable."""
        path = self._layout.current_entry(service, node)
        got = self._get(path)
        return self._record(CurrentEntry, path, got) if got else None

    def current_nodes(self, service: str) -> list[str]:
        """The nodes present under /current/<service> (names only: one read)."""
        return self._children(self._layout.current_service(service))

    def current_services(self) -> list[str]:
        return self._children(self._layout.current)

    def publish_current(self, service: str, entry: CurrentEntry) -> None:
        """Write this node's entry and keep its down marker in step: the marker is there exactly
        while the entry is not online (the index ``quorum_view`` counts).

        When the entry's online-ness flips and this session knows both nodes' versions, the entry
        and the marker change in one transaction (one request); otherwise the entry is written
        first and the marker after, which only ever errs on the safe side for a voluntary stop
        (a stop is taken by ``take_slot``, whose transaction makes the marker with the entry).
        ConflictError when an older session's marker is still there: the caller writes again.
        """
        path = self._layout.current_entry(service, entry.node)
        marker = self._layout.down_marker(service, entry.node)
        down = entry.state != ONLINE
        generation = self._session.generation
        known, marked = self._written.get(path), self._down.get(marker)
        if marked == (generation, down):
            self._put_ephemeral(path, entry.to_bytes())
            return
        if known is not None and known[0] == generation and marked is not None and marked[0] == generation:
            flip: Op = Create(marker, ephemeral=True) if down else Delete(marker)
            try:
                results = self._session.commit([SetData(path, entry.to_bytes(), known[1]), flip])
            except (ConflictError, SessionLostError):
                self._written.pop(path, None)  # look again below (a lost reply: the slow path is idempotent)
                self._down.pop(marker, None)
            else:
                if isinstance(results[0], Stat):
                    self._written[path] = (generation, results[0].version)
                self._down[marker] = (generation, down)
                return
        self._put_ephemeral(path, entry.to_bytes())
        self._mark_down(service, entry.node, down)

    def _mark_down(self, service: str, node: str, down: bool) -> None:
        """Make this node's down marker of ``service`` exist (``down``) or not, idempotently."""
        marker = self._layout.down_marker(service, node)
        generation = self._session.generation
        self._down.pop(marker, None)
        if down:
            try:
                self._session.create(marker, b"", ephemeral=True, makepath=True)
            except NodeExistsError:
                if self._owner_of(marker) != self._session.session_id:
                    raise ConflictError(f"{marker} still belongs to an older session (it expires within the "
                                        "session timeout)") from None
        else:
            self._delete(marker)  # an older session's marker too: this node is online now
        self._down[marker] = (generation, down)

    def quorum_view(self, service: str, node: str, changed: threading.Event | None = None) -> QuorumView:
        """What the quorum decision counts, in four reads whatever the fleet's size: the nodes
        present under /current/<service>, the down index (nodes whose entry is not online), the
        members, and this node's own entry.  With ``changed``, one-shot watches on the three
        children lists set the event when a node comes, goes, goes down or comes back up, or a
        member is added or forgotten (each such change wakes the waiting head once)."""
        fire: Watcher | None = (lambda *_: changed.set()) if changed is not None else None
        down_dir = self._layout.down_service(service)
        if down_dir not in self._ensured:
            self._session.ensure_path(down_dir)  # a child watch needs the parent to exist
            self._ensured.add(down_dir)
        present = frozenset(self._children(self._layout.current_service(service), fire))
        down = frozenset(self._children(down_dir, fire))
        members = frozenset(self._children(self._layout.service_members(service), fire))
        return QuorumView(present, down, members, self.current_entry(service, node))

    def owns_current(self, service: str, node: str) -> bool:
        """True only if this session owns the /current entry of ``node`` for ``service``."""
        return self._owns(self._layout.current_entry(service, node))

    # -- membership ----------------------------------------------------------
    def members(self, service: str) -> dict[str, Member]:
        """Every member of ``service`` (a node that registered it and was not forgotten), present or not."""
        base = self._layout.service_members(service)
        out = {}
        for name in self._children(base):
            got = self._get(base + "/" + name)
            if got and (member := self._record(Member, base + "/" + name, got)) is not None:
                out[name] = member
        return out

    def member_nodes(self, service: str, changed: threading.Event | None = None) -> list[str]:
        """The names of the members of ``service`` (one read).  With ``changed``, a one-shot watch
        sets the event when a member is added or forgotten."""
        fire: Watcher | None = (lambda *_: changed.set()) if changed is not None else None
        return self._children(self._layout.service_members(service), fire)

    def member_services(self) -> list[str]:
        """The services that have members."""
        return self._children(self._layout.members)

    def add_member(self, service: str, node: str, now: float | None = None) -> Member:
        """Record ``node`` as a member of ``service``, or refresh its ``last_seen``; the stored record.

        Every call rewrites the record (its znode version changes), which is
        what makes a concurrent ``forget_member`` fail rather than forget a
        node that has just registered.  ConflictError if the record kept
        changing under it.
        """
        path = self._layout.member(service, node)
        seen = time.time() if now is None else now
        for _ in range(5):
            got = self._get(path)
            if got is None:
                member = Member(node=node, first_seen=seen, last_seen=seen)
                try:
                    self._session.create(path, member.to_bytes(), makepath=True)
                    return member.evolve(zversion=0)
                except NodeExistsError:
                    continue
            old = Member.from_bytes(got[0], got[1].version)
            member = old.evolve(node=node, last_seen=max(seen, old.last_seen))
            try:
                stat = self._session.set(path, member.to_bytes(), old.zversion)
                return member.evolve(zversion=stat.version)
            except (BadVersionError, NoNodeError):
                continue
        raise ConflictError(f"{path} kept changing while it was being written")

    def forget_member(self, service: str, node: str) -> bool:
        """Remove ``node`` from the members of ``service``; False if it was not one.

        ConflictError while the node is present (registered in /nodes), and
        when it registers while this runs: the delete is conditional on the
        member record read before the presence check, and registration
        rewrites that record after creating the presence node, so a node that
        is (or becomes) present stays a member.
        """
        path = self._layout.member(service, node)
        got = self._get(path)
        if got is None:
            return False
        if self._session.exists(self._layout.node(node)) is not None:
            raise ConflictError(f"{node} is present (its agent is registered): only an absent member can be forgotten")
        try:
            self._session.delete(path, got[1].version)
        except NoNodeError:
            return False
        except BadVersionError:
            raise ConflictError(f"{node} registered {service} again meanwhile: it stays a member") from None
        return True

    # -- staging and holders ---------------------------------------------------
    def releases(self, service: str) -> dict[str, Release]:
        out = {}
        base = self._layout.releases(service)
        for version in self._children(base):
            got = self._get(base + "/" + version)
            if got and (release := self._record(Release, base + "/" + version, got)) is not None:
                out[version] = release
        return out

    def staged_versions(self, service: str) -> list[str]:
        return self._children(self._layout.releases(service))

    def staged_services(self) -> list[str]:
        return self._children(self._layout.staging)

    def release(self, service: str, version: str) -> Release | None:
        got = self._get(self._layout.release(service, version))
        return Release.from_bytes(got[0], got[1].version) if got else None

    def put_release(self, release: Release, extra_nodes: dict[str, bytes] | None = None) -> None:
        """Record a staged release; refuses to overwrite a different payload for the same version."""
        path = self._layout.release(release.service, release.version)
        existing = self.release(release.service, release.version)
        if existing is not None:
            if existing.sha256 == release.sha256:
                return
            raise ConflictError(
                f"{release.service}@{release.version} is already staged with a different payload "
                f"(sha256 {existing.sha256[:12]}...); stage a new version instead"
            )
        self._session.ensure_path(self._layout.releases(release.service))
        ops = [Create(path, release.to_bytes()), Create(self._layout.holders(release.service, release.version))]
        ops += [Create(path + "/" + name, data) for name, data in (extra_nodes or {}).items()]
        self._session.commit(ops)

    def release_blob(self, service: str, version: str, name: str) -> bytes | None:
        got = self._get(self._layout.release(service, version) + "/" + name)
        return got[0] if got else None

    def put_release_blob(self, service: str, version: str, name: str, data: bytes) -> None:
        """Create or replace one blob beside a staged release (its signature, signed again for a rollback)."""
        path = self._layout.release(service, version) + "/" + name
        try:
            self._session.create(path, data)
        except NodeExistsError:
            self._session.set(path, data)

    def holders(self, service: str, version: str) -> list[str]:
        return self._children(self._layout.holders(service, version))

    def add_holder(self, service: str, version: str, node: str) -> None:
        self._put_ephemeral(self._layout.holder(service, version, node), b"")

    # -- the swarm tracker -----------------------------------------------------
    def register_peer(self, info_hash: str, node: str, peer: dict[str, Any]) -> None:
        """Announce (or update) this node as a peer of ``info_hash`` (ephemeral)."""
        self._put_ephemeral(self._layout.swarm_peer(info_hash, node), json.dumps(peer).encode())

    def unregister_peer(self, info_hash: str, node: str) -> None:
        self._delete(self._layout.swarm_peer(info_hash, node))

    def peers(self, info_hash: str, watch: Callable[..., Any] | None = None) -> dict[str, dict[str, Any]]:
        """Every announced peer of ``info_hash``; ``watch`` fires once when the membership changes."""
        base = self._layout.swarm(info_hash)
        out = {}
        for node in self._children(base, watch):
            peer = self._json_quiet(base + "/" + node)
            if isinstance(peer, dict):
                out[node] = peer
        return out

    # -- deploy queue --------------------------------------------------------
    def deploys(self, skip: Collection[str] = ()) -> list[DeployEntry]:
        """Every deploy entry, oldest first, except those named in ``skip`` (not even read)."""
        out = []
        for name in self._children(self._layout.deploy):
            if not name.startswith(DEPLOY_PREFIX) or name in skip:
                continue
            got = self._get(self._layout.deploy_entry(name))
            deploy = self._record(DeployEntry, self._layout.deploy_entry(name), got, name=name) if got else None
            if deploy is not None:
                out.append(deploy)
        return sorted(out, key=lambda e: e.name)

    def deploy(self, name: str) -> DeployEntry | None:
        got = self._get(self._layout.deploy_entry(name))
        return DeployEntry.from_bytes(got[0], got[1].version, name=name) if got else None

    def enqueue(self, entries: list[DeployEntry]) -> list[str]:
        """Append deploy entries in one transaction (all or none); returns their names."""
        results = self._session.commit([Create(self._layout.deploy + "/" + DEPLOY_PREFIX, e.to_bytes(),
                                               sequence=True) for e in entries])
        return [str(r).rsplit("/", 1)[1] for r in results]

    def update_deploy(self, entry: DeployEntry) -> DeployEntry:
        """Write ``entry`` if nobody changed it since it was read; returns the stored entry."""
        try:
            stat = self._session.set(self._layout.deploy_entry(entry.name), entry.to_bytes(), entry.zversion)
        except (BadVersionError, NoNodeError):
            raise ConflictError(f"deploy {entry.name} changed since it was read") from None
        return entry.evolve(zversion=stat.version)

    def replace_with_rollback(self, failed: DeployEntry, rollback: DeployEntry,
                              abort: list[DeployEntry]) -> str:
        """In one transaction: close ``failed``, abort ``abort`` (its dependants), queue ``rollback``.

        Conditional on every entry's znode version, so exactly one agent wins.
        """
        ops: list[Any] = [SetData(self._layout.deploy_entry(failed.name), failed.to_bytes(), failed.zversion)]
        ops += [SetData(self._layout.deploy_entry(e.name), e.to_bytes(), e.zversion) for e in abort]
        ops.append(Create(self._layout.deploy + "/" + DEPLOY_PREFIX, rollback.to_bytes(), sequence=True))
        results = self._session.commit(ops)
        return str(results[-1]).rsplit("/", 1)[1]

    def prune_deploys(self, keep: int = 200) -> int:
        """Delete the oldest finished entries beyond ``keep``; returns how many went."""
        finished = [e for e in self.deploys() if not e.is_open]
        doomed = finished[: max(0, len(finished) - keep)]
        for entry in doomed:
            try:
                self._delete(self._layout.deploy_entry(entry.name), entry.zversion)
            except ConflictError:
                continue
        return len(doomed)

    # -- restart queues and slots ----------------------------------------------
    def restart_queue(self, service: str, node: str) -> QueueLock:
        """A new (not yet joined) place in the FIFO restart queue of ``service`` for ``node``."""
        return QueueLock(self._session, self._layout.lock_queue(service), service, node)

    def queue(self, service: str) -> list[str]:
        """The nodes waiting in the restart queue of ``service``, first (lock holder) first."""
        base = self._layout.lock_queue(service)
        out = []
        for name in sorted(self._children(base), key=sequence_of):
            got = self._get(base + "/" + name)
            if got:
                out.append(got[0].decode(errors="replace"))
        return out

    def queue_length(self, service: str) -> int:
        """How many nodes wait in the restart queue of ``service`` (one read)."""
        return len(self._children(self._layout.lock_queue(service)))

    def watch_current_nodes(self, service: str, fn: Callable[..., Any]) -> None:
        """``fn(children)`` now and whenever a node joins or leaves /current/<service>."""
        self._session.watch_children(self._layout.current_service(service), fn)

    def slots(self, service: str) -> list[str]:
        return self._children(self._layout.slots(service))

    def take_slot(self, service: str, entry: CurrentEntry) -> None:
        """Mark this node restarting and create its slot, atomically.

        Conditional on our /current entry not having changed since it was
        read, so a decision is never made on stale data.  When the reply is
        lost (the connection dropped, the session lives), the slot is found
        again by its owner: the transaction either applied whole (our session
        owns the slot: taken) or not at all (SessionLostError).
        """
        slots = self._layout.slots(service)
        slot = self._layout.slot(service, entry.node)
        for parent in (slots, self._layout.down_service(service)):
            if parent not in self._ensured:
                self._session.ensure_path(parent)
                self._ensured.add(parent)
        generation = self._session.generation
        current = self._layout.current_entry(service, entry.node)
        marker = self._layout.down_marker(service, entry.node)
        self._written.pop(current, None)
        for _ in range(2):
            marked = self._down.get(marker) == (generation, True)
            ops: list[Op] = [SetData(current, entry.to_bytes(), entry.zversion),
                             Create(slot, entry.to_bytes(), ephemeral=True)]
            if not marked:
                ops.append(Create(marker, ephemeral=True))  # the down index says so in the same transaction
            try:
                results = self._session.commit(ops)
            except NodeExistsError:
                if marked or self._owner_of(marker) != self._session.session_id:
                    raise
                self._down[marker] = (generation, True)  # our marker was there already: once more without it
                continue
            except SessionLostError:
                if self.await_session(generation) and self._owns(slot):
                    log.warning("%s: the reply to taking the slot was lost; the slot is ours", service)
                    self._down[marker] = (generation, True)
                    return
                raise
            if isinstance(results[0], Stat):
                self._written[current] = (generation, results[0].version)
            self._down[marker] = (generation, True)
            return

    def holds_slot(self, service: str, node: str) -> bool:
        """True only if this session owns ``node``'s slot of ``service`` (one read)."""
        return self._owns(self._layout.slot(service, node))

    def require_slot(self, service: str, node: str) -> None:
        """LockLostError unless the session is connected and owns ``node``'s slot of ``service``."""
        self._require_owned(self._layout.slot(service, node))

    def release_slot(self, service: str, node: str) -> None:
        """Remove this node's slot (retrying through connection losses while the session lives)."""
        slot = self._layout.slot(service, node)
        if self._owner_of_quiet(slot) not in (None, self._session.session_id):
            return  # another session's slot of the same node (a previous life): not ours to remove
        self._delete_own(slot, f"restart slot of {service}")

    def _owner_of_quiet(self, path: str) -> int | None:
        try:
            return self._owner_of(path)
        except CoordinationError:
            return self._session.session_id  # unknown: try the delete, which is conditional on presence

    # -- reports: plans and history ---------------------------------------------
    def request_plan(self, request: dict[str, Any]) -> str:
        return self._create_sequential(self._layout.plans, PLAN_PREFIX, json.dumps(request).encode())

    def plan_requests(self) -> list[str]:
        return [c for c in self._children(self._layout.plans) if c.startswith(PLAN_PREFIX)]

    def plan_request(self, name: str) -> dict[str, Any] | None:
        request: dict[str, Any] | None = self._json_quiet(self._layout.plan(name))
        return request

    def plan_answers(self, name: str) -> dict[str, Any]:
        return {node: self._json_quiet(self._layout.plan_answer(name, node))
                for node in self._children(self._layout.plan(name))}

    def prune_plans(self, older_than: float) -> None:
        """Remove plan requests (with their answers) created more than ``older_than`` seconds ago."""
        now = time.time()
        for name in self.plan_requests():
            request = self.plan_request(name)
            if isinstance(request, dict) and now - float(request.get("created", now)) > older_than:
                self.delete_tree(self._layout.plan(name))

    def answer_plan(self, name: str, node: str, answer: dict[str, Any]) -> None:
        try:
            self._session.create(self._layout.plan_answer(name, node), json.dumps(answer).encode())
        except NodeExistsError:
            pass  # answered already (by this node before a restart)
        except NoNodeError:
            pass  # the request was withdrawn

    def has_answered(self, name: str, node: str) -> bool:
        return self._owner_of(self._layout.plan_answer(name, node)) is not None

    def record_history(self, record: dict[str, Any], keep: int = 2000) -> None:
        """Append one change report; the oldest beyond ``keep`` are pruned."""
        self._create_sequential(self._layout.history, HISTORY_PREFIX, json.dumps(record).encode())
        names = [c for c in self._children(self._layout.history) if c.startswith(HISTORY_PREFIX)]
        for name in names[: max(0, len(names) - keep)]:
            self._delete(self._layout.history + "/" + name)

    def history(self) -> list[dict[str, Any]]:
        out = []
        for name in self._children(self._layout.history):
            record = self._json_quiet(self._layout.history + "/" + name)
            if isinstance(record, dict):
                out.append({"id": name, **record})
        return out

    # -- release marks and pins ------------------------------------------------------------
    def add_mark(self, mark: Mark) -> str:
        """Append a mark of a release (marks are never rewritten; the latest per version counts)."""
        self._session.ensure_path(self._layout.marks(mark.service))
        return self._create_sequential(self._layout.marks(mark.service), MARK_PREFIX, mark.to_bytes())

    def marks(self, service: str, skip: Collection[str] = ()) -> dict[str, Mark]:
        """The marks of ``service`` by record name, oldest first, except those named in ``skip``."""
        base = self._layout.marks(service)
        out: dict[str, Mark] = {}
        for name in self._children(base):
            if name in skip or not name.startswith(MARK_PREFIX):
                continue
            got = self._get(base + "/" + name)
            if got and (mark := self._record(Mark, base + "/" + name, got)) is not None:
                out[name] = mark
        return out

    def watch_marks(self, service: str, fn: Callable[..., Any]) -> None:
        self._session.watch_children(self._layout.marks(service), fn)

    def pin(self, node: str, service: str) -> Pin | None:
        """``node``'s pin record of ``service``: a pin, or a signed removal (``kind: unpin``, never
        active) that keeps the pin's sequence number; None when there is neither."""
        got = self._get(self._layout.pin(node, service))
        return self._record(Pin, self._layout.pin(node, service), got) if got else None

    def pins(self) -> list[Pin]:
        """Every pin of every node (signed removals left out)."""
        out = []
        for node in self._children(self._layout.pins):
            for service in self._children(self._layout.node_pins(node)):
                if (pin := self.pin(node, service)) is not None and pin.kind == "pin":
                    out.append(pin)
        return out

    def set_pin(self, pin: Pin) -> None:
        path = self._layout.pin(pin.node, pin.service)
        try:
            self._session.create(path, pin.to_bytes(), makepath=True)
        except NodeExistsError:
            self._session.set(path, pin.to_bytes())

    def remove_pin(self, node: str, service: str) -> bool:
        return self._delete(self._layout.pin(node, service))

    def watch_pin(self, node: str, service: str, fn: Callable[..., Any]) -> None:
        """``fn(data)`` now and whenever ``node``'s pin of ``service`` is set, changed or removed."""
        self._session.watch_data(self._layout.pin(node, service), fn)

    # -- control: undo requests and the killswitch ------------------------------------
    def request_undo(self, node: str, request: dict[str, Any]) -> str:
        self._session.ensure_path(self._layout.undo_requests(node))
        return self._create_sequential(self._layout.undo_requests(node), UNDO_PREFIX, json.dumps(request).encode())

    def undo_requests(self, node: str) -> dict[str, dict[str, Any]]:
        base = self._layout.undo_requests(node)
        return {name: self._json_quiet(base + "/" + name) for name in self._children(base)}

    def update_undo_request(self, node: str, name: str, request: dict[str, Any]) -> None:
        self._session.set(self._layout.undo_request(node, name), json.dumps(request).encode())

    def killswitch(self) -> Killswitch | None:
        got = self._get(self._layout.killswitch)
        if got is None:
            return None
        try:
            return Killswitch.from_bytes(got[0], got[1].version)
        except CoordinationError as exc:  # present is what counts: a corrupt switch is still on
            return Killswitch(message=f"(unreadable killswitch record: {exc})")

    def set_killswitch(self, switch: Killswitch | None) -> None:
        if switch is None:
            self._delete(self._layout.killswitch)
            return
        try:
            self._session.create(self._layout.killswitch, switch.to_bytes())
        except NodeExistsError:
            self._session.set(self._layout.killswitch, switch.to_bytes())

    # -- faults on purpose (tests and chaos runs) ---------------------------------------
    def expire_session(self) -> None:
        """Make the server expire this store's session now, as a long partition would."""
        expire = getattr(self._session, "expire", None)
        if expire is None:
            raise CoordinationError(f"{type(self._session).__name__} cannot expire its session on demand")
        expire()
