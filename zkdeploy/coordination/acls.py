"""Who may do what in the coordination tree: the ACL of every znode, decided in one place.

Four roles (see docs/security.md):

- ``operator``: everything (the catalog, staging, the deploy queue, control records, ACLs);
- ``agent``: reads everything; creates and writes its own presence, current,
  member, holder, queue, slot, swarm-peer nodes, plan answers, history
  records and its own failure reports on deploys; sets data on the undo
  requests addressed to it (their results); never writes, creates or
  deletes a deploy entry, a release, the catalog or a control record;
- ``steward``: what an agent may do, and writes the progress of deploy
  entries (a halt, a wave opened or verified, a stall, completion) from the
  nodes' own reports: the agents that hold it (two or three per fleet) are
  the only ones that move a deploy on, so one agent credential cannot halt,
  finish or rewrite a rollout;
- ``viewer``: reads everything, writes nothing.

The policy (which identities hold each role) lives in ``<root>/acl``, written
by ``zkdeploy acl apply``; every client reads it when it connects and gives
every node it creates the ACL ``acl_for`` decides from the node's path (the
layout of zkdeploy.coordination.layout).  A node an agent creates for itself
also names the agent's own identity (its node credential or client
certificate) with READ and WRITE, so another agent cannot rewrite it.

ZooKeeper checks CREATE and DELETE on the *parent*, and cannot tie a child's
name to its creator.  So what the quorum counts (online tokens) and the
restart slots live under per-node parents that only ``apply`` makes, for
members whose record is owned by the identity of the node's own name
(admission), and on which only that identity may create and delete.  What
an agent removes under a shared parent goes with a session instead (a place
in a restart queue lives in a session of its own, closed to leave):
``AGENT_DELETES``, the shared parents an agent may delete under, is empty.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from zkdeploy.coordination.credentials import ROLES, Security
from zkdeploy.coordination.layout import Layout
from zkdeploy.coordination.session import (
    PERM_ALL,
    PERM_CREATE,
    PERM_DELETE,
    PERM_READ,
    PERM_WRITE,
    Acl,
    Create,
    ForwardingSession,
    Op,
    Session,
    Stat,
)
from zkdeploy.errors import AccessDeniedError, ConfigError, NodeExistsError, NoNodeError

R, RW, RC, RCD = PERM_READ, PERM_READ | PERM_WRITE, PERM_READ | PERM_CREATE, PERM_READ | PERM_CREATE | PERM_DELETE
POLICY_NODE = "acl"


@dataclass(frozen=True)
class Rule:
    """What the agent role may do on one kind of node; ``owned`` nodes also name their owner, who
    gets ``owner`` (READ and WRITE: its own record).  An ``admitted`` node is a per-node parent
    that ``apply`` makes for an admitted node: its owner, decided by admission and never by who
    made it, gets READ, CREATE and DELETE on it (its own children only)."""

    agent: int
    #: what the steward role may do besides what the agent role may (write deploy entries' progress)
    steward: int = 0
    owned: bool = False
    owner: int = RW
    admitted: bool = False
    #: the path segment (below the root) that names the node a node is addressed to: the identities
    #: of that name get ``owner`` (an undo request: only its node writes its result)
    addressed: int | None = None


OWNED = Rule(R, owned=True)
ADMITTED = Rule(R, owned=True, owner=RCD, admitted=True)

# path shapes relative to the root ("*" = any one name), most specific first; anything else: Rule(R)
_RULES: list[tuple[tuple[str, ...], Rule]] = [
    # presence and entries are ephemeral: they go with their session, so no agent deletes them
    (("nodes",), Rule(RC)), (("nodes", "*"), OWNED),
    (("current",), Rule(RC)), (("current", "*"), Rule(RC)), (("current", "*", "*"), OWNED),
    # online tokens and slots live under per-node parents made by admission: only their owner
    # creates or deletes under them (a hard quota of one child on the availability parents)
    (("up", "*"), Rule(RW)),  # the availability epoch: every flip of a token bumps it
    (("up", "*", "*"), ADMITTED), (("up", "*", "*", "*"), OWNED),
    (("slots", "*", "*"), ADMITTED), (("slots", "*", "*", "*"), OWNED),
    (("members",), Rule(RC)), (("members", "*"), Rule(RC)), (("members", "*", "*"), OWNED),
    (("staging",), Rule(RC)),  # an agent watching a service not staged yet creates its (empty) parent
    # holders are ephemeral and go with their session: nobody deletes them
    (("staging", "*", "*", "holders"), Rule(RC)), (("staging", "*", "*", "holders", "*"), OWNED),
    # the deploy queue is the operator's; a deploy's progress is the stewards' (from the nodes' reports)
    (("deploy", "*"), Rule(R, steward=RW)),
    # the parent is made with its deploy entry; a pointer there counts only if its node's report is there
    (("failures", "*"), Rule(RC)), (("failures", "*", "*"), OWNED),
    # a failed gate marks the release bad by the service's policy (on_failure: mark_bad): marks are append-only
    (("marks",), Rule(RC)), (("marks", "*"), Rule(RC)), (("marks", "*", "*"), OWNED),
    # a place in a restart queue lives in a session of its own, closed to leave: no deletes
    (("locks",), Rule(RC)), (("locks", "*"), Rule(RC)),
    (("locks", "*", "queue"), Rule(RC)), (("locks", "*", "queue", "*"), OWNED),
    # tracker entries go with the tracker's own session (open while the swarm worker runs): no deletes
    (("swarm",), Rule(RC)), (("swarm", "*"), Rule(RC)), (("swarm", "*", "*"), OWNED),
    # a fetcher asks a holder to seed under the holder's own parent (made by admission); only the
    # holder removes what it read
    (("wake", "*"), Rule(RC, owned=True, owner=RCD, admitted=True)), (("wake", "*", "*"), OWNED),
    # an undo request is the operator's; only the node it is addressed to writes its result
    (("control", "undo"), Rule(RC)), (("control", "undo", "*", "*"), Rule(R, addressed=2)),
    (("reports", "plans", "*"), Rule(RC)), (("reports", "plans", "*", "*"), OWNED),
    # each node's history under its own parent (made by admission): it prunes its own records only
    (("reports", "history", "*"), ADMITTED), (("reports", "history", "*", "*"), OWNED),
    # each node reports its failures on deploys under its own parent (made by admission): its own only
    (("reports", "failed", "*"), ADMITTED), (("reports", "failed", "*", "*"), OWNED),
]

#: parents under which an agent may delete any child (ZooKeeper checks DELETE on the parent)
AGENT_DELETES = [shape for shape, rule in _RULES if rule.agent & PERM_DELETE]


def parse_id(text: str) -> tuple[str, str]:
    """``digest:user:hash`` or ``x509:CN=...`` → (scheme, id); ConfigError otherwise."""
    scheme, _, ident = text.partition(":")
    if scheme not in ("digest", "x509") or not ident or (scheme == "digest" and ident.count(":") != 1):
        raise ConfigError(f"'{text}': an identity is 'digest:USER:HASH' (see zkdeploy acl id) or 'x509:SUBJECT-DN'")
    return scheme, ident


@dataclass(frozen=True)
class RoleIds:
    """The identities that hold each role (the content of ``<root>/acl``)."""

    operator: tuple[tuple[str, str], ...]
    steward: tuple[tuple[str, str], ...] = ()
    agent: tuple[tuple[str, str], ...] = ()
    viewer: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_data(cls, data: Any, source: str) -> RoleIds:
        if not isinstance(data, dict) or set(data) - set(ROLES):
            raise ConfigError(f"{source}: expected a mapping of {', '.join(ROLES)} to lists of identities")
        out: dict[str, tuple[tuple[str, str], ...]] = {}
        for role in ROLES:
            ids = data.get(role) or []
            if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
                raise ConfigError(f"{source}: {role}: a list of identities")
            try:
                out[role] = tuple(parse_id(i) for i in ids)
            except ConfigError as exc:
                raise ConfigError(f"{source}: {role}: {exc}") from None
        if not out["operator"]:
            raise ConfigError(f"{source}: operator: at least one identity (or nobody could ever change the tree)")
        return cls(**out)

    @classmethod
    def from_bytes(cls, raw: bytes, source: str) -> RoleIds:
        try:
            return cls.from_data(json.loads(raw.decode()), source)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{source}: corrupt ACL policy: {exc}") from None

    def to_bytes(self) -> bytes:
        return json.dumps({role: [f"{s}:{i}" for s, i in getattr(self, role)] for role in ROLES},
                          sort_keys=True).encode()

    def role_entries(self) -> set[tuple[str, str]]:
        return set(self.operator) | set(self.steward) | set(self.agent) | set(self.viewer)


def _parts(root: str, path: str) -> tuple[str, ...]:
    rel = path[len(root.rstrip("/")):].strip("/")
    return tuple(rel.split("/")) if rel else ()


def rule_for(root: str, path: str) -> Rule:
    """The rule for ``path`` (a node at or under ``root``)."""
    parts = _parts(root, path)
    for shape, rule in _RULES:
        if len(shape) == len(parts) and all(s in ("*", p) for s, p in zip(shape, parts, strict=True)):
            return rule
    return Rule(R)


@dataclass(frozen=True)
class AclPolicy:
    """The ACLs a client gives the nodes it creates: the roles, and the client's own identity."""

    root: str
    roles: RoleIds
    owner: tuple[str, str] | None = None
    #: every identity this client authenticates as (what decides the roles it holds)
    ids: frozenset[tuple[str, str]] = frozenset()
    _cache: dict[str, tuple[Acl, ...]] = field(default_factory=dict, compare=False, repr=False)

    def acl_for(self, path: str, owners: tuple[tuple[str, str], ...] | None = None) -> tuple[Acl, ...]:
        """The ACL ``path`` must have.  For a node a client owns, ``owners`` (default: this client)
        get READ and WRITE; an owned node whose owner is unknown (``owners`` empty, a node made
        before roles were in place) is writable by the whole agent role instead."""
        rule = rule_for(self.root, path)
        entries: dict[tuple[str, str], int] = {}

        def grant(ids: tuple[tuple[str, str], ...], perms: int) -> None:
            for ident in ids:
                entries[ident] = entries.get(ident, 0) | perms

        grant(self.roles.viewer, R)
        agent = rule.agent
        if rule.owned:
            mine = (self.owner,) if owners is None and self.owner is not None else (owners or ())
            if not mine and not rule.admitted:
                agent |= PERM_WRITE
            grant(tuple(mine), rule.owner)
        if rule.addressed is not None:  # ``owners``: the identities admitted for the node it is addressed to
            grant(owners or (), rule.owner)
        grant(self.roles.agent, agent)
        grant(self.roles.steward, agent | rule.steward)
        grant(self.roles.operator, PERM_ALL)
        return tuple(Acl(s, i, p) for (s, i), p in sorted(entries.items()))

    def operators_only(self) -> tuple[Acl, ...]:
        """Changed by operators only, read by every role (the ACL of a node no rule names)."""
        return self.acl_for(self.root.rstrip("/") + "/" + POLICY_NODE)

    def owners_in(self, acl: list[Acl], perm: int = PERM_WRITE) -> tuple[tuple[str, str], ...]:
        """The entries of an existing ACL that are neither a role nor ``world`` and hold ``perm``:
        the node's owners (WRITE: its own record; CREATE: a per-node parent's admitted owner)."""
        roles = self.roles.role_entries()
        return tuple(sorted({(a.scheme, a.id) for a in acl
                             if (a.scheme, a.id) not in roles and a.scheme != "world" and a.perms & perm}))


class AclSession(ForwardingSession):
    """A session that gives every node it creates the ACL its path calls for (``AclPolicy``).

    Wraps the session that talks to ZooKeeper, so the Store, the restart
    queue and every recipe above get the right ACL on every create without
    knowing about roles: creates (parents made on the way included) and the
    creates inside transactions are the only calls it changes.
    """

    def __init__(self, inner: Session, policy: AclPolicy) -> None:
        super().__init__(inner)
        self.policy = policy

    @property
    def guarded(self) -> bool:
        return True

    @property
    def stewards(self) -> bool:
        return bool(self.policy.ids & (set(self.policy.roles.steward) | set(self.policy.roles.operator)))


    def start(self) -> AclSession:
        self.inner.start()
        return self

    def sibling(self) -> AclSession:
        return AclSession(self.inner.sibling(), self.policy)

    # writes: every create gets its ACL
    def create(self, path: str, data: bytes = b"", *, ephemeral: bool = False, sequence: bool = False,
               makepath: bool = False, acl: Sequence[Acl] | None = None) -> str:
        if makepath:
            self.ensure_path(path.rsplit("/", 1)[0])
        return self.inner.create(path, data, ephemeral=ephemeral, sequence=sequence,
                                 acl=self._acl(path) if acl is None else acl)

    def create_and_list(self, path: str, data: bytes = b"", *, ephemeral: bool = False, sequence: bool = False,
                        acl: Sequence[Acl] | None = None) -> tuple[str, list[str]]:
        return self.inner.create_and_list(path, data, ephemeral=ephemeral, sequence=sequence,
                                          acl=self._acl(path) if acl is None else acl)

    def _acl(self, path: str) -> tuple[Acl, ...]:
        """The ACL of a node this client creates; for a node addressed to another node (an undo
        request), that node's identity is the one admission gave its per-node parents."""
        rule = rule_for(self.policy.root, path)
        if rule.addressed is None:
            return self.policy.acl_for(path)
        node = _parts(self.policy.root, path)[rule.addressed]
        got = self.inner.get_acl(Layout(self.policy.root).wake(node))  # a per-node parent admission made
        owners = self.policy.owners_in(got[0], PERM_CREATE) if got is not None else ()  # not admitted: none
        return self.policy.acl_for(path, owners=owners)

    def ensure_path(self, path: str) -> None:
        """Create the missing nodes of ``path`` top down, each with its own ACL."""
        if not path or path == "/" or self.inner.exists(path) is not None:
            return
        current = ""
        for part in path.strip("/").split("/"):
            current += "/" + part
            if self.inner.exists(current) is None:
                try:
                    self.inner.create(current, acl=self._acl(current))
                except NodeExistsError:
                    pass  # made meanwhile by someone else

    def commit(self, ops: Sequence[Op]) -> list[str | Stat | None]:
        return self.inner.commit([replace(op, acl=self._acl(op.path))
                                  if isinstance(op, Create) and op.acl is None else op for op in ops])

    # persistent watches: the watched path is made (with its ACL) here, not by the inner session
    def watch_children(self, path: str, callback: Callable[[list[str]], Any]) -> None:
        self.ensure_path(path)
        self.inner.watch_children(path, callback)


def load_roles(session: Session, root: str) -> RoleIds | None:
    """The policy stored under ``root`` (None when roles are not in place)."""
    path = root.rstrip("/") + "/" + POLICY_NODE
    got = session.get(path)
    return None if got is None else RoleIds.from_bytes(got[0], path)


def secure(session: Session, root: str, owner: tuple[str, str] | None,
           ids: frozenset[tuple[str, str]] = frozenset()) -> Session:
    """``session`` wrapped to give the ACLs of the policy stored under ``root`` (``owner`` owns what
    it creates; ``ids``, every identity it authenticates as, decide its roles); the session itself
    when no policy is stored (roles not in place: nodes are created open, as before)."""
    roles = load_roles(session, root)
    if roles is None:
        return session
    return AclSession(session, AclPolicy(root, roles, owner, ids))


@dataclass
class ApplyReport:
    """What ``apply`` did."""

    checked: int = 0
    repaired: list[str] = field(default_factory=list)
    unknown_owner: list[str] = field(default_factory=list)
    gone: int = 0
    #: members admitted (``service/node``): each has availability and slot parents of its own
    admitted: list[str] = field(default_factory=list)
    #: members refused admission, with the reason (their member record's owner is not the node)
    refused: list[str] = field(default_factory=list)
    #: whether ZooKeeper refused a second child under a parent with a hard quota of one (None: not probed)
    quota_enforced: bool | None = None


QUOTA_ROOT = "/zookeeper/quota"
#: ZooKeeper's quota counts the node itself: the parent and one child
_ONE_CHILD = b"count=-1,bytes=-1,countHardLimit=2,byteHardLimit=-1"


def identity_name(ident: tuple[str, str]) -> str | None:
    """The name an identity gives: a digest user, or the CN of a certificate's subject DN."""
    scheme, value = ident
    if scheme == "digest":
        return value.split(":", 1)[0]
    if scheme == "x509":
        for part in value.split(","):
            key, _, name = part.strip().partition("=")
            if key.strip().upper() == "CN":
                return name.strip()
    return None


def admissions(session: Session, root: str, policy: AclPolicy) -> tuple[dict[tuple[str, str], tuple[str, str]],
                                                                         list[str]]:
    """Which members may count themselves online: ``(service, node) -> owner identity`` for each
    member record owned by the identity of the same name (digest user or certificate CN = the
    node's name), and the others, each with the reason it is refused."""
    layout = Layout(root)
    admitted: dict[tuple[str, str], tuple[str, str]] = {}
    refused: list[str] = []
    for service in sorted(session.children(layout.members)):
        for node in sorted(session.children(layout.service_members(service))):
            got = session.get_acl(layout.member(service, node))
            if got is None:
                continue
            owners = policy.owners_in(got[0])
            match = [o for o in owners if identity_name(o) == node]
            if match:
                admitted[(service, node)] = match[0]
            else:
                names = ", ".join(f"{s}:{identity_name((s, i)) or i}" for s, i in owners) or "no node identity"
                refused.append(f"{service}/{node}: its member record is owned by {names}, not by an identity "
                               f"named {node}")
    return admitted, refused


def _admit(session: Session, secured: Session, root: str, policy: AclPolicy,
           admitted: dict[tuple[str, str], tuple[str, str]]) -> None:
    """Make each admitted node's parents: per service its availability and slot parents (with a
    hard quota of one child on the availability parent), and per node where it is asked to seed
    and its history and failure reports.  Its owner may create and delete under them; nobody else may delete."""
    layout = Layout(root)
    quota_acl = policy.operators_only()
    parents = [(p, owner) for (service, node), owner in sorted(admitted.items())
               for p in (layout.up_node(service, node), layout.slot_parent(service, node))]
    parents += [(p, owner) for node, owner in sorted(_by_node(admitted).items())
                for p in (layout.wake(node), layout.node_history(node), layout.node_failed(node))]
    for parent, owner in parents:
        secured.ensure_path(parent.rsplit("/", 1)[0])
        try:
            session.create(parent, acl=policy.acl_for(parent, owners=(owner,)))
        except NodeExistsError:
            pass  # its ACL is set by the walk that follows
    for service, node in sorted(admitted):
        limits = QUOTA_ROOT + layout.up_node(service, node) + "/zookeeper_limits"
        if session.exists(limits) is None:
            _ensure_with(session, limits.rsplit("/", 1)[0], quota_acl)
            session.create(limits, _ONE_CHILD, acl=quota_acl)
            with contextlib.suppress(NodeExistsError):  # the server counts what is there when it is made
                session.create(limits.rsplit("/", 1)[0] + "/zookeeper_stats", b"count=0,bytes=0", acl=quota_acl)


def _by_node(admitted: dict[tuple[str, str], tuple[str, str]]) -> dict[str, tuple[str, str]]:
    """Each admitted node's identity (a node admitted for any service is admitted as a node)."""
    return {node: owner for (_service, node), owner in sorted(admitted.items())}


def _admitted_owner(parts: list[str], admitted: dict[tuple[str, str], tuple[str, str]]) -> tuple[str, str] | None:
    """The owner admission names for a per-node parent (its path below the root, split)."""
    if parts[0] in ("up", "slots"):
        return admitted.get((parts[1], parts[2]))
    node = parts[1] if parts[0] == "wake" else parts[2]  # wake/<n>, reports/history/<n>, reports/failed/<n>
    return _by_node(admitted).get(node)


def _ensure_with(session: Session, path: str, acl: tuple[Acl, ...]) -> None:
    current = ""
    for part in path.strip("/").split("/"):
        current += "/" + part
        if session.exists(current) is None:
            with contextlib.suppress(NodeExistsError):
                session.create(current, acl=acl)


def probe_quota(session: Session, root: str, acl: tuple[Acl, ...]) -> bool:
    """Whether ZooKeeper enforces hard quotas (``zookeeper.enforceQuota=true`` on every server):
    a scratch parent with a quota of one child is given two, and everything is removed after."""
    parent = root.rstrip("/") + "/quota-probe"
    quota = QUOTA_ROOT + parent
    for path in (parent + "/b", parent + "/a", parent, quota + "/zookeeper_stats", quota + "/zookeeper_limits", quota):
        with contextlib.suppress(NoNodeError):
            session.delete(path)  # a probe an interrupted run left
    session.create(parent, acl=acl)
    try:
        _ensure_with(session, quota, acl)
        session.create(quota + "/zookeeper_limits", _ONE_CHILD, acl=acl)
        session.create(quota + "/zookeeper_stats", b"count=0,bytes=0", acl=acl)
        session.create(parent + "/a", acl=acl)
        try:
            session.create(parent + "/b", acl=acl)
        except AccessDeniedError:
            return True
        return False
    finally:
        for path in (parent + "/b", parent + "/a", parent, quota + "/zookeeper_stats", quota + "/zookeeper_limits",
                     quota):
            with contextlib.suppress(NoNodeError):
                session.delete(path)


def apply(session: Session, root: str, roles: RoleIds, owner: tuple[str, str] | None = None,
          dry_run: bool = False) -> ApplyReport:
    """Store ``roles`` as the policy under ``root`` and set the ACL of every node of the tree.

    Idempotent: a node whose ACL is right is left alone.  The owner of a
    node an agent owns is kept (the entries of its ACL that are not roles);
    an owned node with no owner (made before roles were in place) becomes
    writable by the agent role, and is listed in ``unknown_owner``.
    """
    policy = AclPolicy(root, roles, owner)
    secured = AclSession(session, policy)
    report = ApplyReport()
    path = root.rstrip("/") + "/" + POLICY_NODE
    admitted, report.refused = admissions(session, root, policy)
    report.admitted = [f"{s}/{n}" for s, n in sorted(admitted)]
    if not dry_run:
        secured.ensure_path(root)
        try:
            secured.create(path, roles.to_bytes())
        except NodeExistsError:
            session.set(path, roles.to_bytes())
        for base in Layout(root).base_paths():
            secured.ensure_path(base)
        operators_only = policy.operators_only()
        if session.exists(QUOTA_ROOT) is not None:
            session.set_acl(QUOTA_ROOT, operators_only)  # ZooKeeper makes it open to everyone
        report.quota_enforced = probe_quota(session, root, operators_only)
        _admit(session, secured, root, policy, admitted)

    def visit(node: str) -> None:
        got = session.get_acl(node)
        if got is None:
            report.gone += 1
            return
        acl, _ = got
        report.checked += 1
        owners: tuple[tuple[str, str], ...] | None = None
        rule = rule_for(root, node)
        if rule.admitted:  # whoever made it: the owner is the one admission names, or nobody
            found = _admitted_owner(node[len(root.rstrip("/")):].strip("/").split("/"), admitted)
            owners = (found,) if found is not None else ()
        elif rule.owned:
            owners = policy.owners_in(acl)
            if not owners:
                report.unknown_owner.append(node)
        elif rule.addressed is not None:  # the identity admission names for the node it is addressed to
            found = _by_node(admitted).get(_parts(root, node)[rule.addressed])
            owners = (found,) if found is not None else ()
        want = policy.acl_for(node, owners=owners)
        if sorted(acl, key=_key) != sorted(want, key=_key):
            report.repaired.append(node)
            if not dry_run:
                try:
                    session.set_acl(node, want)
                except NoNodeError:
                    report.gone += 1  # an ephemeral node that went meanwhile
        for child in sorted(session.children(node)):
            visit(node.rstrip("/") + "/" + child)

    visit(root)
    return report


def _key(a: Acl) -> tuple[str, str, int]:
    return a.scheme, a.id, a.perms


def open_session(hosts: str, root: str, security: Security | None = None, *, wrap: bool = True,
                 **timeouts: Any) -> Session:
    """A connected ZooKeeper session that authenticates with ``security``; with ``wrap``, it gives the
    nodes it creates the ACLs of the fleet's policy (when one is stored under ``root``)."""
    from zkdeploy.coordination.zookeeper import ZooKeeperSession

    security = security or Security()
    if security.tls is not None:
        security.tls.check()
    auth = security.credentials.auth_data() if security.credentials is not None else []
    session: Session = ZooKeeperSession(hosts, auth=auth, tls=security.tls, **timeouts).start()
    if not wrap:
        return session
    try:
        return secure(session, root, security.owner_id, security.identities)
    except Exception:
        session.close()
        raise
