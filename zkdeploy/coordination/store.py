"""Reads and writes of zkdeploy's records in ZooKeeper.

``Store`` is the one interface the agent and the CLI use to talk to
ZooKeeper.  Reads return immutable records that carry their znode version;
writes that may race are conditional on that version and raise ConflictError
when they lose.  Ephemeral writes check that the node belongs to this
session, so a record left by a dead agent is never mistaken for ours.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Collection
from typing import Any

from kazoo.exceptions import BadVersionError, NodeExistsError, NoNodeError, NotEmptyError
from kazoo.recipe.watchers import ChildrenWatch, DataWatch

from zkdeploy.coordination.client import Connection
from zkdeploy.coordination.layout import DEPLOY_PREFIX, HISTORY_PREFIX, PLAN_PREFIX, UNDO_PREFIX, Layout
from zkdeploy.errors import ConflictError, CoordinationError, LockLostError
from zkdeploy.model import CurrentEntry, DeployEntry, Killswitch, NodeRecord, Release

log = logging.getLogger(__name__)


class Store:
    """zkdeploy's records under one root of one ZooKeeper ensemble."""

    def __init__(self, conn: Connection, root: str = "/dc") -> None:
        self.conn = conn
        self.layout = Layout(root)
        self._bootstrapped = False

    @classmethod
    def connect(cls, hosts: str, root: str = "/dc", **timeouts: float) -> "Store":
        """Connect (bounded by ``connect_timeout``) and make sure the base paths exist."""
        store = cls(Connection(hosts, **timeouts).start(), root)
        try:
            store.bootstrap()
        except Exception:
            store.close()
            raise
        return store

    def close(self) -> None:
        self.conn.stop()

    def bootstrap(self) -> None:
        for path in self.layout.base_paths():
            self.conn.call("ensure_path", path)
        self._bootstrapped = True

    # -- generic helpers -----------------------------------------------
    def _get(self, path: str, watch: Callable[..., Any] | None = None) -> tuple[bytes, Any] | None:
        try:
            return self.conn.call("get", path, watch)
        except NoNodeError:
            return None

    def _children(self, path: str, watch: Callable[..., Any] | None = None) -> list[str]:
        try:
            return sorted(self.conn.call("get_children", path, watch))
        except NoNodeError:
            return []

    def _delete(self, path: str, version: int = -1) -> bool:
        try:
            self.conn.call("delete", path, version)
            return True
        except NoNodeError:
            return False
        except BadVersionError:
            raise ConflictError(f"{path} changed since it was read") from None
        except NotEmptyError:
            raise CoordinationError(f"{path} is not empty") from None

    def delete_tree(self, path: str) -> None:
        """Remove ``path`` and everything below it (for tests and cleanup tools)."""
        for child in self._children(path):
            self.delete_tree(path + "/" + child)
        self._delete(path)

    def owner_of(self, path: str) -> int | None:
        """The session id owning an ephemeral node, 0 for a persistent one, None if absent."""
        try:
            stat = self.conn.call("exists", path)
        except NoNodeError:
            return None
        return None if stat is None else stat.ephemeralOwner

    def owns(self, path: str) -> bool:
        """True only if ``path`` exists and is an ephemeral node of this very session."""
        sid = self.conn.session_id
        return sid is not None and self.owner_of(path) == sid

    def require_owned(self, path: str) -> None:
        """Raise LockLostError unless the session is connected and owns ``path``."""
        self.conn.require_connected()
        if not self.owns(path):
            raise LockLostError(f"{path} is no longer held by this agent's ZooKeeper session")

    def put_ephemeral(self, path: str, data: bytes) -> None:
        """Create or overwrite an ephemeral node owned by this session.

        A node of the same path owned by another (dead) session is left alone
        and reported as a ConflictError: it disappears when that session expires.
        """
        try:
            self.conn.call("create", path, data, None, True, False, True)
            return
        except NodeExistsError:
            pass
        stat = self.conn.call("exists", path)
        if stat is None:
            return self.put_ephemeral(path, data)
        if stat.ephemeralOwner != self.conn.session_id:
            raise ConflictError(f"{path} still belongs to an older session (it expires within the session timeout)")
        try:
            self.conn.call("set", path, data, stat.version)
        except (BadVersionError, NoNodeError):
            raise ConflictError(f"{path} changed while it was being written") from None

    # -- watches --------------------------------------------------------
    def watch_children(self, path: str, callback: Callable[[list[str]], Any]) -> None:
        """Call ``callback(children)`` now and whenever the children of ``path`` change."""
        self.conn.call("ensure_path", path)
        ChildrenWatch(self.conn.client, path, callback)

    def watch_data(self, path: str, callback: Callable[[bytes | None], Any]) -> None:
        """Call ``callback(data)`` now and whenever ``path`` changes (None when it is absent)."""

        def relay(data: bytes | None, stat: Any, event: Any = None) -> None:
            callback(data)

        DataWatch(self.conn.client, path, relay)

    # -- catalog --------------------------------------------------------
    def catalog(self) -> tuple[dict[str, Any] | None, int]:
        """The stored catalog as plain data, and its znode version (-1 if none is stored)."""
        got = self._get(self.layout.catalog)
        if got is None or not got[0]:
            return None, -1
        try:
            return json.loads(got[0].decode()), got[1].version
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CoordinationError(f"{self.layout.catalog} holds a corrupt catalog: {exc}") from None

    def put_catalog(self, data: dict[str, Any], expected_version: int) -> int:
        """Store the catalog, conditional on the version read before (-1: must not exist)."""
        raw = json.dumps(data, sort_keys=True).encode()
        try:
            if expected_version < 0:
                self.conn.call("create", self.layout.catalog, raw)
                return 0
            stat = self.conn.call("set", self.layout.catalog, raw, expected_version)
            return stat.version
        except (NodeExistsError, BadVersionError):
            raise ConflictError("the catalog was changed by someone else meanwhile; apply again") from None

    # -- nodes ------------------------------------------------------------
    def nodes(self) -> dict[str, NodeRecord]:
        out = {}
        for name in self._children(self.layout.nodes):
            got = self._get(self.layout.node(name))
            if got:
                out[name] = NodeRecord.from_bytes(got[0], got[1].version)
        return out

    def register_node(self, record: NodeRecord) -> None:
        self.put_ephemeral(self.layout.node(record.node), record.to_bytes())

    # -- /current ---------------------------------------------------------
    def current(self, service: str, changed: threading.Event | None = None) -> dict[str, CurrentEntry]:
        """Every node's entry for ``service``.

        With ``changed``, the read also leaves one-shot watches that set the
        event when a node joins, leaves or changes its entry: the snapshot
        and the watches come from the same reads, so no change between
        deciding and waiting is missed.
        """
        base = self.layout.current_service(service)
        fire = (lambda *_: changed.set()) if changed is not None else None
        out = {}
        for name in self._children(base, fire):
            got = self._get(base + "/" + name, fire)
            if got:
                out[name] = CurrentEntry.from_bytes(got[0], got[1].version)
        return out

    def current_nodes(self, service: str) -> list[str]:
        """The nodes present under /current/<service> (names only: one read)."""
        return self._children(self.layout.current_service(service))

    def current_services(self) -> list[str]:
        return self._children(self.layout.current)

    def publish_current(self, service: str, entry: CurrentEntry) -> None:
        self.conn.call("ensure_path", self.layout.current_service(service))
        self.put_ephemeral(self.layout.current_entry(service, entry.node), entry.to_bytes())

    # -- releases -----------------------------------------------------------
    def releases(self, service: str) -> dict[str, Release]:
        out = {}
        base = self.layout.releases(service)
        for version in self._children(base):
            got = self._get(base + "/" + version)
            if got:
                out[version] = Release.from_bytes(got[0], got[1].version)
        return out

    def staged_versions(self, service: str) -> list[str]:
        return self._children(self.layout.releases(service))

    def staged_services(self) -> list[str]:
        return self._children(self.layout.staging)

    def release(self, service: str, version: str) -> Release | None:
        got = self._get(self.layout.release(service, version))
        return Release.from_bytes(got[0], got[1].version) if got else None

    def put_release(self, release: Release, extra_nodes: dict[str, bytes] | None = None) -> None:
        """Record a staged release; refuses to overwrite a different payload for the same version."""
        path = self.layout.release(release.service, release.version)
        existing = self.release(release.service, release.version)
        if existing is not None:
            if existing.sha256 == release.sha256:
                return
            raise ConflictError(
                f"{release.service}@{release.version} is already staged with a different payload "
                f"(sha256 {existing.sha256[:12]}...); stage a new version instead"
            )
        self.conn.call("ensure_path", self.layout.releases(release.service))
        txn = self.conn.client.transaction()
        txn.create(path, release.to_bytes())
        txn.create(self.layout.holders(release.service, release.version), b"")
        for name, data in (extra_nodes or {}).items():
            txn.create(path + "/" + name, data)
        self.conn.commit(txn, f"stage {release.service}@{release.version}")

    def release_blob(self, service: str, version: str, name: str) -> bytes | None:
        got = self._get(self.layout.release(service, version) + "/" + name)
        return got[0] if got else None

    def holders(self, service: str, version: str) -> list[str]:
        return self._children(self.layout.holders(service, version))

    def add_holder(self, service: str, version: str, node: str) -> None:
        self.put_ephemeral(self.layout.holder(service, version, node), b"")

    # -- the swarm tracker -----------------------------------------------------
    def register_peer(self, info_hash: str, node: str, peer: dict[str, Any]) -> None:
        """Announce (or update) this node as a peer of ``info_hash`` (ephemeral)."""
        self.conn.call("ensure_path", self.layout.swarm(info_hash))
        self.put_ephemeral(self.layout.swarm_peer(info_hash, node), json.dumps(peer).encode())

    def unregister_peer(self, info_hash: str, node: str) -> None:
        self._delete(self.layout.swarm_peer(info_hash, node))

    def peers(self, info_hash: str, watch: Callable[..., Any] | None = None) -> dict[str, dict[str, Any]]:
        """Every announced peer of ``info_hash``; ``watch`` fires once when the membership changes."""
        base = self.layout.swarm(info_hash)
        out = {}
        for node in self._children(base, watch):
            peer = self._json(base + "/" + node)
            if isinstance(peer, dict):
                out[node] = peer
        return out

    # -- deploy queue --------------------------------------------------------
    def deploys(self, skip: Collection[str] = ()) -> list[DeployEntry]:
        """Every deploy entry, oldest first, except those named in ``skip`` (not even read)."""
        out = []
        for name in self._children(self.layout.deploy):
            if not name.startswith(DEPLOY_PREFIX) or name in skip:
                continue
            got = self._get(self.layout.deploy_entry(name))
            if got:
                out.append(DeployEntry.from_bytes(got[0], got[1].version, name=name))
        return sorted(out, key=lambda e: e.name)

    def deploy(self, name: str) -> DeployEntry | None:
        got = self._get(self.layout.deploy_entry(name))
        return DeployEntry.from_bytes(got[0], got[1].version, name=name) if got else None

    def enqueue(self, entries: list[DeployEntry]) -> list[str]:
        """Append deploy entries in one transaction (all or none); returns their names."""
        txn = self.conn.client.transaction()
        for entry in entries:
            txn.create(self.layout.deploy + "/" + DEPLOY_PREFIX, entry.to_bytes(), sequence=True)
        results = self.conn.commit(txn, "enqueue deploys")
        return [r.rsplit("/", 1)[1] for r in results]

    def update_deploy(self, entry: DeployEntry) -> DeployEntry:
        """Write ``entry`` if nobody changed it since it was read; returns the stored entry."""
        try:
            stat = self.conn.call("set", self.layout.deploy_entry(entry.name), entry.to_bytes(), entry.zversion)
        except (BadVersionError, NoNodeError):
            raise ConflictError(f"deploy {entry.name} changed since it was read") from None
        return entry.evolve(zversion=stat.version)

    def replace_with_rollback(self, failed: DeployEntry, rollback: DeployEntry,
                              abort: list[DeployEntry]) -> str:
        """In one transaction: close ``failed``, abort ``abort`` (its dependants), queue ``rollback``.

        Conditional on every entry's znode version, so exactly one agent wins.
        """
        txn = self.conn.client.transaction()
        txn.set_data(self.layout.deploy_entry(failed.name), failed.to_bytes(), failed.zversion)
        for entry in abort:
            txn.set_data(self.layout.deploy_entry(entry.name), entry.to_bytes(), entry.zversion)
        txn.create(self.layout.deploy + "/" + DEPLOY_PREFIX, rollback.to_bytes(), sequence=True)
        results = self.conn.commit(txn, f"roll back deploy {failed.name}")
        return results[-1].rsplit("/", 1)[1]

    def prune_deploys(self, keep: int = 200) -> int:
        """Delete the oldest finished entries beyond ``keep``; returns how many went."""
        finished = [e for e in self.deploys() if not e.is_open]
        doomed = finished[: max(0, len(finished) - keep)]
        for entry in doomed:
            try:
                self._delete(self.layout.deploy_entry(entry.name), entry.zversion)
            except ConflictError:
                continue
        return len(doomed)

    # -- locks ---------------------------------------------------------------
    def queue(self, service: str) -> list[str]:
        """The nodes waiting in the restart queue of ``service``, first (lock holder) first."""
        base = self.layout.lock_queue(service)
        names = sorted(self._children(base), key=lambda c: c.rsplit("-", 1)[-1])
        out = []
        for name in names:
            got = self._get(base + "/" + name)
            if got:
                out.append(got[0].decode(errors="replace"))
        return out

    def slots(self, service: str) -> list[str]:
        return self._children(self.layout.slots(service))

    def take_slot(self, service: str, entry: CurrentEntry) -> None:
        """Mark this node restarting and create its slot, atomically.

        Conditional on our /current entry not having changed since it was
        read, so a decision is never made on stale data.
        """
        self.conn.call("ensure_path", self.layout.slots(service))
        txn = self.conn.client.transaction()
        txn.set_data(self.layout.current_entry(service, entry.node), entry.to_bytes(), entry.zversion)
        txn.create(self.layout.slot(service, entry.node), entry.to_bytes(), ephemeral=True)
        self.conn.commit(txn, f"take a restart slot of {service}")

    def release_slot(self, service: str, node: str) -> None:
        self._delete(self.layout.slot(service, node))

    # -- reports: plans and history ---------------------------------------------
    def _json(self, path: str) -> Any:
        got = self._get(path)
        if got is None:
            return None
        try:
            return json.loads(got[0].decode() or "null")
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CoordinationError(f"{path} holds corrupt JSON: {exc}") from None

    def request_plan(self, request: dict[str, Any]) -> str:
        created = self.conn.call("create", self.layout.plans + "/" + PLAN_PREFIX,
                                 json.dumps(request).encode(), None, False, True)
        return created.rsplit("/", 1)[1]

    def plan_requests(self) -> list[str]:
        return [c for c in self._children(self.layout.plans) if c.startswith(PLAN_PREFIX)]

    def plan_request(self, name: str) -> dict[str, Any] | None:
        return self._json(self.layout.plan(name))

    def plan_answers(self, name: str) -> dict[str, Any]:
        return {node: self._json(self.layout.plan_answer(name, node))
                for node in self._children(self.layout.plan(name))}

    def prune_plans(self, older_than: float) -> None:
        """Remove plan requests (with their answers) created more than ``older_than`` seconds ago."""
        now = time.time()
        for name in self.plan_requests():
            request = self.plan_request(name)
            if isinstance(request, dict) and now - float(request.get("created", now)) > older_than:
                self.delete_tree(self.layout.plan(name))

    def answer_plan(self, name: str, node: str, answer: dict[str, Any]) -> None:
        try:
            self.conn.call("create", self.layout.plan_answer(name, node), json.dumps(answer).encode())
        except NodeExistsError:
            pass  # answered already (by this node before a restart)
        except NoNodeError:
            pass  # the request was withdrawn

    def has_answered(self, name: str, node: str) -> bool:
        return self.owner_of(self.layout.plan_answer(name, node)) is not None

    def record_history(self, record: dict[str, Any], keep: int = 2000) -> None:
        """Append one change report; the oldest beyond ``keep`` are pruned."""
        self.conn.call("create", self.layout.history + "/" + HISTORY_PREFIX, json.dumps(record).encode(),
                       None, False, True)
        names = [c for c in self._children(self.layout.history) if c.startswith(HISTORY_PREFIX)]
        for name in names[: max(0, len(names) - keep)]:
            self._delete(self.layout.history + "/" + name)

    def history(self) -> list[dict[str, Any]]:
        out = []
        for name in self._children(self.layout.history):
            record = self._json(self.layout.history + "/" + name)
            if isinstance(record, dict):
                out.append({"id": name, **record})
        return out

    # -- undo requests ------------------------------------------------------------
    def request_undo(self, node: str, request: dict[str, Any]) -> str:
        self.conn.call("ensure_path", self.layout.undo_requests(node))
        created = self.conn.call("create", self.layout.undo_requests(node) + "/" + UNDO_PREFIX,
                                 json.dumps(request).encode(), None, False, True)
        return created.rsplit("/", 1)[1]

    def undo_requests(self, node: str) -> dict[str, dict[str, Any]]:
        base = self.layout.undo_requests(node)
        return {name: self._json(base + "/" + name) for name in self._children(base)}

    def update_undo_request(self, node: str, name: str, request: dict[str, Any]) -> None:
        self.conn.call("set", self.layout.undo_request(node, name), json.dumps(request).encode())

    # -- control --------------------------------------------------------------
    def killswitch(self) -> Killswitch | None:
        got = self._get(self.layout.killswitch)
        return Killswitch.from_bytes(got[0], got[1].version) if got else None

    def set_killswitch(self, switch: Killswitch | None) -> None:
        if switch is None:
            self._delete(self.layout.killswitch)
            return
        try:
            self.conn.call("create", self.layout.killswitch, switch.to_bytes())
        except NodeExistsError:
            self.conn.call("set", self.layout.killswitch, switch.to_bytes())
