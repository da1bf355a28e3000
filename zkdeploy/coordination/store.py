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
import uuid
from collections.abc import Callable, Collection
from typing import Any, TypedDict, Unpack

from zkdeploy.coordination.availability import Availability, QuorumView
from zkdeploy.coordination.credentials import Security
from zkdeploy.coordination.layout import (
    DEPLOY_PREFIX,
    HISTORY_PREFIX,
    MARK_PREFIX,
    PLAN_PREFIX,
    UNDO_PREFIX,
    WAKE_PREFIX,
)
from zkdeploy.coordination.lock import sequence_of
from zkdeploy.coordination.session import (
    CONNECTED,
    Create,
    Op,
    SetData,
    Watcher,
)
from zkdeploy.errors import (
    AccessDeniedError,
    BadVersionError,
    ConflictError,
    CoordinationError,
    NodeExistsError,
    NoNodeError,
)
from zkdeploy.model import DeployEntry, Killswitch, Mark, Pin, Release
from zkdeploy.names import is_safe_name

log = logging.getLogger(__name__)

#: a node's history is pruned to ``keep`` reports when a report's sequence number is a multiple of this
HISTORY_PRUNE_EVERY = 50

__all__ = ["QuorumView", "Store", "Timeouts"]

class Timeouts(TypedDict, total=False):
    """The ZooKeeper session's timeouts in seconds (``Store.connect``); a missing one has its default."""

    session_timeout: float
    connect_timeout: float
    operation_timeout: float


#: the creates that queue one deploy entry: the entry, its seal, its failures parent
SEALED_CREATES = 3


class Store(Availability):
    """zkdeploy's records under one root of one coordination tree."""

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

    def sibling(self) -> Store:
        """A Store on a session of its own (same ensemble, credentials and root): what it creates
        goes when it closes, with no delete (the swarm's tracker entries)."""
        return Store(self._session.sibling().start(), self.root)

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
    def guarded(self) -> bool:
        """Whether ACL roles guard this fleet (``Session.guarded``)."""
        return self._session.guarded

    @property
    def stewards(self) -> bool:
        """Whether this client writes the progress of deploy entries (``Session.stewards``)."""
        return self._session.stewards

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

    # -- watches (each calls ``fn`` now and after every change, for the client's life) ----------
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

    def wake_seeder(self, node: str, info_hash: str) -> None:
        """Ask the holder ``node`` to start its swarm worker and seed ``info_hash`` (ephemeral: the
        request goes with the asking session)."""
        base = self._layout.wake(node)
        self._ensure(base)
        self._session.create(base + "/" + WAKE_PREFIX, info_hash.encode(), ephemeral=True, sequence=True)

    def watch_wakes(self, node: str, fn: Callable[[list[str]], Any]) -> None:
        """``fn(names)`` now and whenever the requests that ask ``node`` to seed change.  Under ACL
        roles, a node not admitted yet has no parent to be asked under: the watch begins when
        ``zkdeploy acl apply`` makes it."""
        base = self._layout.wake(node)
        try:
            self._session.watch_children(base, fn)
        except AccessDeniedError:
            log.warning("%s is not admitted yet: it is not asked to seed until 'zkdeploy acl apply' admits it", node)

            def admitted(data: bytes | None) -> bool:
                if data is None:
                    return True  # not yet: keep watching
                threading.Thread(target=self._session.watch_children, args=(base, fn), daemon=True,
                                 name=f"wake-{node}").start()  # not from the watch's own thread
                return False
            self._session.watch_data(base, admitted)

    def take_wakes(self, node: str) -> list[str]:
        """The info-hashes ``node`` is asked to seed, each request removed once read."""
        base = self._layout.wake(node)
        hashes = []
        for name, (data, _stat) in self._get_children(base):
            hashes.append(data.decode(errors="replace"))
            self._delete(base + "/" + name)
        return hashes

    # -- deploy queue --------------------------------------------------------
    def deploys(self, skip: Collection[str] = (), changed: Watcher | None = None) -> list[DeployEntry]:
        """Every deploy entry, oldest first, except those named in ``skip`` (not even read): the
        names, then every entry read together (two round trips at any length of the queue).  With
        ``changed``, the same reads leave one-shot watches that call it when an entry is queued or
        removed, or one that was read changes."""
        names = [n for n in self._children(self._layout.deploy, changed)
                 if n.startswith(DEPLOY_PREFIX) and n not in skip]
        paths = [self._layout.deploy_entry(n) for n in names]
        out = []
        for name, path, got in zip(names, paths, self._session.get_all(paths, changed) if paths else [], strict=True):
            deploy = self._record(DeployEntry, path, got, name=name) if got else None
            if deploy is not None:
                out.append(deploy)
        return sorted(out, key=lambda e: e.name)

    def deploy(self, name: str) -> DeployEntry | None:
        got = self._get(self._layout.deploy_entry(name))
        return DeployEntry.from_bytes(got[0], got[1].version, name=name) if got else None

    def enqueue(self, entries: list[DeployEntry]) -> list[str]:
        """Append deploy entries in one transaction (all or none), each with its seal; returns
        their names."""
        ops: list[Op] = []
        for entry in entries:
            ops += self._sealed_create(entry)
        results = self._session.commit(ops)
        return [str(r).rsplit("/", 1)[1] for r in results[::SEALED_CREATES]]

    def _sealed_create(self, entry: DeployEntry) -> list[Op]:
        """The creates of ``entry``, of its seal (``DeployEntry.seal``) and of the parent where nodes
        report their failures on it, for one transaction (``SEALED_CREATES`` ops, the entry's first)."""
        self._ensure(self._layout.seals)
        self._ensure(self._layout.failures)
        sealed = entry.evolve(seal=entry.seal or uuid.uuid4().hex)
        return [Create(self._layout.deploy + "/" + DEPLOY_PREFIX, sealed.to_bytes(), sequence=True),
                Create(self._layout.seal(sealed.seal), sealed.spec_digest().encode()),
                Create(self._layout.deploy_failures(sealed.failures_key))]

    def seal_digest(self, seal: str) -> str | None:
        """The digest a deploy entry's seal holds, None if there is no such seal."""
        got = self._get(self._layout.seal(seal))
        return got[0].decode(errors="replace") if got else None

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
        ops += self._sealed_create(rollback)
        results = self._session.commit(ops)
        return str(results[-SEALED_CREATES]).rsplit("/", 1)[1]

    # -- what nodes report on a deploy ---------------------------------------------
    def report_failure(self, entry: DeployEntry, node: str, report: dict[str, Any]) -> bool:
        """Record ``node``'s failed restart on ``entry``: its report under its own parent (under ACL
        roles, only ``node``'s identity creates there), then a pointer to it under the entry's
        failures parent, where a steward looks.  False when it was reported already (a node's
        failure on a deploy counts once)."""
        try:
            self._session.create(self._layout.failure_report(node, entry.failures_key),
                                 json.dumps(report, sort_keys=True).encode(), makepath=not self._session.guarded)
            reported = True
        except NodeExistsError:
            reported = False  # reported before (a restart after a crash): the pointer may still be missing
        try:  # under roles the pointer's parent came with the entry
            self._session.create(self._layout.deploy_failure(entry.failures_key, node),
                                 makepath=not self._session.guarded)
        except NodeExistsError:
            pass  # made before (or by another agent: a pointer only says where to look)
        return reported

    def failure_reports(self, entry: DeployEntry, skip: Collection[str] = (),
                        changed: Watcher | None = None) -> dict[str, dict[str, Any]]:
        """The failures nodes reported on ``entry`` (node -> report), but those of the nodes in
        ``skip`` (not read): the pointers under the entry's failures parent, each followed to its
        node's own report (a pointer whose node reported nothing is ignored).  With ``changed``, a
        one-shot watch on the pointers' parent, left by the same read, calls it when one more is
        reported (none on an entry queued before reports, which has no parent)."""
        nodes = [n for n in self._children(self._layout.deploy_failures(entry.failures_key), changed)
                 if n not in skip and is_safe_name(n)]  # none for an entry queued before reports
        paths = [self._layout.failure_report(n, entry.failures_key) for n in nodes]
        out: dict[str, dict[str, Any]] = {}
        for node, path, got in zip(nodes, paths, self._session.get_all(paths) if paths else [], strict=True):
            if got is None:
                continue  # a pointer without its report: nothing to take
            try:
                report = json.loads(got[0].decode())
            except (UnicodeDecodeError, json.JSONDecodeError):
                report = None
            if not isinstance(report, dict):
                log.error("%s: skipped: not a failure report", path)
                continue
            out[node] = {**report, "node": node}
        return out

    def prune_deploys(self, keep: int = 200) -> int:
        """Delete the oldest finished entries beyond ``keep``; returns how many went."""
        finished = [e for e in self.deploys() if not e.is_open]
        doomed = finished[: max(0, len(finished) - keep)]
        for entry in doomed:
            try:
                self._delete(self._layout.deploy_entry(entry.name), entry.zversion)
            except ConflictError:
                continue
            for node in self._children(self._layout.deploy_failures(entry.failures_key)):
                if is_safe_name(node):  # the node's report that the pointer names
                    self._delete(self._layout.failure_report(node, entry.failures_key))
            self.delete_tree(self._layout.deploy_failures(entry.failures_key))
        return len(doomed)

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

    def record_history(self, record: dict[str, Any], keep: int = 500) -> None:
        """Append one change report of ``record["node"]`` under that node's own parent, with one
        request; its oldest beyond ``keep`` are pruned (a node prunes only its own) when the new
        report's sequence number is a multiple of ``HISTORY_PRUNE_EVERY``, so a node keeps at most
        that many more and does not list its own reports on every restart.  Under ACL roles the
        parent is made by admission (AccessDeniedError until then)."""
        base = self._layout.node_history(str(record.get("node")))
        self._ensure(base)
        name = self._create_sequential(base, HISTORY_PREFIX, json.dumps(record).encode())
        if int(sequence_of(name)) % HISTORY_PRUNE_EVERY:
            return
        names = [c for c in self._children(base) if c.startswith(HISTORY_PREFIX)]
        for name in names[: max(0, len(names) - keep)]:
            self._delete(base + "/" + name)

    def history(self) -> list[dict[str, Any]]:
        """Every node's change reports, oldest first (by the order ZooKeeper made them), each with
        its ``id`` (``<node>/h-<seq>``); three round trips at any fleet size."""
        nodes = [n for n in self._children(self._layout.history) if is_safe_name(n)]
        bases = [self._layout.node_history(n) for n in nodes]
        paths = [(node, base + "/" + name) for node, base, names in
                 zip(nodes, bases, self._session.children_all(bases), strict=True)
                 for name in sorted(names) if name.startswith(HISTORY_PREFIX)]
        found = []
        for (node, path), got in zip(paths, self._session.get_all([p for _, p in paths]), strict=True):
            if got is None:
                continue
            try:
                record = json.loads(got[0])
            except (UnicodeDecodeError, json.JSONDecodeError):
                log.warning("%s: not a history record; skipped", path)
                continue
            if isinstance(record, dict):
                found.append((got[1].created, {"id": f"{node}/{path.rsplit('/', 1)[1]}", **record}))
        return [record for _, record in sorted(found, key=lambda f: f[0])]

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
