"""Who is up: presence, /current with its online tokens, membership, and the restart queues and
slots (the records the quorum decision reads and writes; part of ``Store``)."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from zkdeploy.coordination.lock import QueueLock, sequence_of
from zkdeploy.coordination.records import StoreCore
from zkdeploy.coordination.session import (
    Create,
    Delete,
    Op,
    SetData,
    Stat,
    Watcher,
)
from zkdeploy.errors import (
    AccessDeniedError,
    BadVersionError,
    ConflictError,
    CoordinationError,
    LockLostError,
    NodeExistsError,
    NoNodeError,
    NotAdmittedError,
    SessionLostError,
)
from zkdeploy.model import ONLINE, CurrentEntry, Member, NodeRecord

log = logging.getLogger("zkdeploy.coordination.store")


@dataclass(frozen=True)
class QuorumView:
    """What one quorum decision counts (``Store.quorum_view``): the names of the nodes present and
    of the members, how many other nodes hold an online token, the availability epoch the slot
    transaction is conditional on, and this node's entry."""

    present: frozenset[str]
    members: frozenset[str]
    others_online: int
    epoch: int | None
    me: CurrentEntry | None


class Availability(StoreCore):
    """Presence, current state, membership, restart queues and slots."""

    # -- presence and current state ------------------------------------------
    def nodes(self) -> dict[str, NodeRecord]:
        out = {}
        for name, got in self._get_children(self._layout.nodes):
            if (node := self._record(NodeRecord, self._layout.node(name), got)) is not None:
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
        for name, got in self._get_children(base, fire):
            if (entry := self._record(CurrentEntry, base + "/" + name, got)) is not None:
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

    def publish_current(self, service: str, entry: CurrentEntry, *, give_back_slot: bool = False) -> None:
        """Write this node's entry and keep its online token in step: the token is there exactly
        while the entry is online (what ``quorum_view`` counts), and every flip of it bumps the
        service's availability epoch (what wakes a waiting head, and what the slot transaction is
        conditional on).

        When the entry's online-ness flips and this session knows both nodes' versions, the entry,
        the token and the epoch change in one transaction (one request); otherwise the entry is
        written first and the token after, which only ever errs on the safe side for a voluntary
        stop (a stop is taken by ``take_slot``, whose transaction removes the token with the entry).
        With ``give_back_slot`` (the end of a restart) the node's slot is given back too: in that
        transaction when this session's slot transaction made it, so the waiting head is woken once,
        by one change that counts the node back and frees its slot; otherwise first, on its own.
        ConflictError when an older session's token is still there: the caller writes again;
        NotAdmittedError when, under ACL roles, this node may not have a token (yet).
        """
        path = self._layout.current_entry(service, entry.node)
        token = self._layout.online_token(service, entry.node)
        slot = self._layout.slot(service, entry.node)
        online = entry.state == ONLINE
        generation = self._session.generation
        known, tokened = self._written.get(path), self._online.get(token)
        made = self._written.get(slot) if give_back_slot else None
        flips = tokened != (generation, online)
        fast = (flips and known is not None and known[0] == generation
                and tokened is not None and tokened[0] == generation)
        if give_back_slot and not (fast and made is not None and made[0] == generation):
            self.release_slot(service, entry.node)  # not in the transaction: on its own, first
            made = None
        if not flips:
            self._put_ephemeral(path, entry.to_bytes())
            return
        if fast:
            assert known is not None
            ops: list[Op] = [SetData(path, entry.to_bytes(), known[1]),
                             Create(token, ephemeral=True) if online else Delete(token),
                             SetData(self._layout.up_service(service), b"")]
            if made is not None:
                ops.append(Delete(slot))
            try:
                results = self._session.commit(ops)
            except (ConflictError, NoNodeError, SessionLostError, AccessDeniedError):
                self._written.pop(path, None)  # look again below (a lost reply: the slow path is idempotent)
                self._online.pop(token, None)
                if made is not None:
                    self.release_slot(service, entry.node)  # the slot first, as above
            else:
                if isinstance(results[0], Stat):
                    self._written[path] = (generation, results[0].version)
                self._online[token] = (generation, online)
                if made is not None:
                    self._written.pop(slot, None)
                    self._given_back[slot] = generation
                return
        self._put_ephemeral(path, entry.to_bytes())
        self._set_online(service, entry.node, online)

    def _set_online(self, service: str, node: str, online: bool) -> None:
        """Make this node's online token of ``service`` exist (``online``) or not, idempotently,
        bumping the availability epoch when it changes."""
        token = self._layout.online_token(service, node)
        epoch = self._layout.up_service(service)
        generation = self._session.generation
        self._online.pop(token, None)
        if online:
            for attempt in range(2):
                try:
                    self._session.commit([Create(token, ephemeral=True), SetData(epoch, b"")])
                except NodeExistsError:
                    if self._owner_of(token) != self._session.session_id:
                        raise ConflictError(f"{token} still belongs to an older session (it expires within the "
                                            "session timeout)") from None
                except (NoNodeError, AccessDeniedError) as exc:
                    if attempt == 0 and isinstance(exc, NoNodeError):
                        with contextlib.suppress(AccessDeniedError):  # under roles: made by admission only
                            self._ensure_own_parents(service, node)
                            continue
                    raise NotAdmittedError(
                        f"{service}: this node counts as down: it may not make its online token {token} ({exc}); "
                        "under ACL roles an operator admits it with 'zkdeploy acl apply'") from None
                break
        else:
            with contextlib.suppress(NoNodeError):  # no token: nothing to take back
                self._session.commit([Delete(token), SetData(epoch, b"")])  # an older session's token too
        self._online[token] = (generation, online)

    def _ensure_own_parents(self, service: str, node: str) -> None:
        """Make this node's availability and slot parents of ``service``, where it may (without
        ACL roles; under roles ``zkdeploy acl apply`` makes them for admitted nodes):
        AccessDeniedError otherwise."""
        self._ensure(self._layout.up_node(service, node))
        self._ensure(self._layout.slot_parent(service, node))

    def quorum_view(self, service: str, node: str, changed: threading.Event | None = None) -> QuorumView:
        """What the quorum decision counts, in one round trip whatever the fleet's size
        (``Session.read_decision``): the nodes present under /current/<service> and the members
        (names); how many nodes hold an online token (all nodes below /up/<service> minus its
        per-node parents) and the availability epoch, of one state (``Session.tally``); this
        node's entry and token.  With ``changed``, one-shot watches set the event when a node
        comes or goes, a member is added or forgotten, or any node's online-ness changes (the
        epoch), each waking the waiting head once."""
        fire: Watcher | None = (lambda *_: changed.set()) if changed is not None else None
        path = self._layout.current_entry(service, node)
        (present, members), (below, stat), (got, mine) = self._session.read_decision(
            [self._layout.current_service(service), self._layout.service_members(service)],
            self._layout.up_service(service), [path, self._layout.online_token(service, node)], fire)
        tokens = below - stat.children if stat is not None else 0
        return QuorumView(present=frozenset(present), members=frozenset(members),
                          others_online=max(0, tokens - (mine is not None)),
                          epoch=stat.version if stat is not None else None,
                          me=self._record(CurrentEntry, path, got) if got else None)

    def owns_current(self, service: str, node: str) -> bool:
        """True only if this session owns the /current entry of ``node`` for ``service``."""
        return self._owns(self._layout.current_entry(service, node))

    # -- membership ----------------------------------------------------------
    def members(self, service: str) -> dict[str, Member]:
        """Every member of ``service`` (a node that registered it and was not forgotten), present or not."""
        base = self._layout.service_members(service)
        out = {}
        for name, got in self._get_children(base):
            if (member := self._record(Member, base + "/" + name, got)) is not None:
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

    def prepare_service(self, service: str, node: str) -> None:
        """Make the persistent parents a restart of ``service`` writes under (its restart queue,
        this node's availability and slot parents) exist now, at registration, rather than in the
        burst of every node joining the queue of a service's first rollout at once.  Under ACL
        roles the node's own parents are made by ``zkdeploy acl apply`` (admission): until then
        this node counts as down, which is logged, not raised."""
        self._ensure(self._layout.lock_queue(service))
        try:
            self._ensure_own_parents(service, node)
        except AccessDeniedError:
            log.warning("%s: %s is not admitted yet (it counts as down and cannot restart until an operator "
                        "runs 'zkdeploy acl apply')", service, node)

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

    # -- restart queues and slots ----------------------------------------------
    def restart_queue(self, service: str, node: str) -> QueueLock:
        """A new (not yet joined) place in the FIFO restart queue of ``service`` for ``node``.  Under
        ACL roles the place lives in a session of its own, closed to leave (agents may not delete
        under the queue); without them, in this one (``QueueLock``)."""
        return QueueLock(self._session, self._layout.lock_queue(service), service, node,
                         own_session=self._session.guarded)

    def queue(self, service: str) -> list[str]:
        """The nodes waiting in the restart queue of ``service``, first (lock holder) first."""
        got = self._get_children(self._layout.lock_queue(service))
        return [data.decode(errors="replace") for _, (data, _stat) in sorted(got, key=lambda g: sequence_of(g[0]))]

    def queue_length(self, service: str) -> int:
        """How many nodes wait in the restart queue of ``service`` (one read)."""
        return len(self._children(self._layout.lock_queue(service)))

    def watch_current_nodes(self, service: str, fn: Callable[..., Any]) -> None:
        """``fn(children)`` now and whenever a node joins or leaves /current/<service>."""
        self._session.watch_children(self._layout.current_service(service), fn)

    def slots(self, service: str) -> list[str]:
        """The nodes holding a restart slot of ``service`` (two round trips: the slot parents, then
        whether each holds its slot)."""
        parents = self._children(self._layout.slots(service))
        held = self._session.get_all([self._layout.slot(service, p) for p in parents])
        return [p for p, got in zip(parents, held, strict=True) if got is not None]

    def last_change(self, service: str) -> float | None:
        """When a node of ``service`` last went down or came back (the last bump of its availability
        epoch, by the server's clock: one read at any fleet size); None before the first."""
        stat = self._session.exists(self._layout.up_service(service))
        return stat.modified if stat is not None and stat.version > 0 else None

    def slot_count(self, service: str) -> int:
        """How many restart slots of ``service`` are held (one round trip at any fleet size)."""
        below, stat = self._session.tally(self._layout.slots(service))
        return below - stat.children if stat is not None else 0

    def take_slot(self, service: str, entry: CurrentEntry, epoch: int | None = None,
                  leave: Sequence[Op] = ()) -> None:
        """Mark this node restarting, remove its online token and create its slot, atomically, and
        with ``leave`` (``QueueLock.leave_ops``: the delete of this node's place in the restart
        queue) leave the queue in the same transaction, so the next waiter is woken by the take
        itself and decides with this node counted down.

        Conditional on our /current entry not having changed since it was read, so a decision is
        never made on stale data, and with ``epoch`` on the service's availability epoch read by
        that decision: of two nodes deciding on the same count (a queue entry deleted under the
        head, a credential misused), only one takes a slot, and the other decides again.  When
        the reply is lost (the connection dropped, the session lives), the slot is found again by
        its owner: the transaction either applied whole (our session owns the slot: taken) or not
        at all (SessionLostError).  NotAdmittedError when, under ACL roles, this node has no slot
        parent (yet).
        """
        slot = self._layout.slot(service, entry.node)
        try:
            self._ensure_own_parents(service, entry.node)
        except AccessDeniedError as exc:
            raise NotAdmittedError(f"{service}: this node may not take a restart slot ({exc}); under ACL roles "
                                   "an operator admits it with 'zkdeploy acl apply'") from None
        generation = self._session.generation
        current = self._layout.current_entry(service, entry.node)
        token = self._layout.online_token(service, entry.node)
        up = self._layout.up_service(service)
        self._written.pop(current, None)
        self._given_back.pop(slot, None)
        for _ in range(2):
            tokened = self._online.get(token) != (generation, False)  # unless we know it is not there
            ops: list[Op] = [SetData(current, entry.to_bytes(), entry.zversion),
                             Create(slot, entry.to_bytes(), ephemeral=True)]
            if tokened:
                ops.append(Delete(token))  # the count says so in the same transaction
            if epoch is not None:
                ops.append(SetData(up, b"", epoch))
            elif tokened:
                ops.append(SetData(up, b""))
            ops += leave
            try:
                results = self._session.commit(ops)
            except NoNodeError:
                if not tokened or self._session.exists(token) is not None:
                    raise
                self._online[token] = (generation, False)  # no token: once more without it
                continue
            except SessionLostError:
                if self.await_session(generation) and self._owns(slot):
                    log.warning("%s: the reply to taking the slot was lost; the slot is ours", service)
                    self._online[token] = (generation, False)
                    self._written[slot] = (generation, 0)
                    return
                raise
            if isinstance(results[0], Stat):
                self._written[current] = (generation, results[0].version)
            self._online[token] = (generation, False)
            self._written[slot] = (generation, 0)
            return

    def holds_slot(self, service: str, node: str) -> bool:
        """True only if this session owns ``node``'s slot of ``service`` (one read)."""
        return self._owns(self._layout.slot(service, node))

    def require_slot(self, service: str, node: str) -> None:
        """LockLostError unless the session is connected and owns ``node``'s slot of ``service``.

        The first check of a slot reads it (one request) and leaves a watch on it.  Later checks
        make no request while that watch has not fired and the connection's state has not changed
        since the read: with the session connected, the slot (ephemeral, this session's) can only
        go by being deleted, which fires the watch, and the session can only end after the client
        has seen its connection fail, which changes the state (a client suspends its session before
        the server can expire it).  Either makes the next check read the slot again."""
        slot = self._layout.slot(service, node)
        self._session.require_connected()
        mark = (self._session.generation, self._connection)
        if self._watched.get(slot) == mark:
            return
        self._watched[slot] = mark  # before the read: a watch firing from now on drops it
        try:
            stat = self._session.exists(slot, self._slot_watch)
        except BaseException:
            self._watched.pop(slot, None)
            raise
        sid = self._session.session_id
        if stat is None or sid is None or stat.owner != sid:
            self._watched.pop(slot, None)
            raise LockLostError(f"{slot} is no longer held by this agent's ZooKeeper session")

    def _slot_watch(self, _kind: str = "", path: str = "") -> None:
        """The watch ``require_slot`` leaves: the slot changed (or went), read it again next time."""
        self._watched.pop(path, None)

    def release_slot(self, service: str, node: str) -> None:
        """Remove this node's slot (retrying through connection losses while the session lives).
        One request when this session's slot transaction made it: while that session lives,
        nothing else can be at that path; otherwise its owner is checked first."""
        slot = self._layout.slot(service, node)
        if self._given_back.pop(slot, None) == self._session.generation:
            return  # given back in the transaction that counted the node back (``publish_current``)
        made = self._written.pop(slot, None)
        if made is not None and made[0] == self._session.generation:
            self._delete_own(slot, f"restart slot of {service}")
            return
        if self._owner_of_quiet(slot) not in (None, self._session.session_id):
            return  # another session's slot of the same node (a previous life): not ours to remove
        self._delete_own(slot, f"restart slot of {service}")

    def _owner_of_quiet(self, path: str) -> int | None:
        try:
            return self._owner_of(path)
        except CoordinationError:
            return self._session.session_id  # unknown: try the delete, which is conditional on presence
