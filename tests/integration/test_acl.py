"""Roles enforced by ZooKeeper ACLs, against a real ZooKeeper server (issue 13)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import wait_for
from zkdeploy.coordination import Store
from zkdeploy.coordination.acls import AclSession, ApplyReport, RoleIds, apply, open_session
from zkdeploy.coordination.credentials import Credentials, Security, digest_id
from zkdeploy.coordination.session import PERM_ALL, PERM_CREATE, PERM_DELETE, PERM_READ, PERM_WRITE
from zkdeploy.errors import AccessDeniedError, ConfigError, ConflictError, LockLostError, NotAdmittedError
from zkdeploy.model import ONLINE, RESTARTING, CurrentEntry, DeployEntry, Killswitch, NodeRecord, Release

pytestmark = pytest.mark.integration

PASSWORDS = {"zkdeploy-operator": "op-secret", "zkdeploy-agent": "agent-secret", "zkdeploy-viewer": "view-secret",
             "zkdeploy-steward": "steward-secret", "a": "a-secret", "b": "b-secret", "s": "s-secret"}
ROLE_NAMES = ("operator", "steward", "agent", "viewer")


def _creds(tmp_path: Path, role: str, node: str | None = None) -> Path:
    user = f"zkdeploy-{role}"
    data = {"role": role, "user": user, "password": PASSWORDS[user]}
    if node:
        data |= {"node_user": node, "node_password": PASSWORDS[node]}  # a node identity is named after its node
    path = tmp_path / f"{role}-{node or 'x'}.yaml"
    path.write_text(yaml.safe_dump(data))
    path.chmod(0o600)
    return path


def _roles() -> RoleIds:
    return RoleIds.from_data({role: [f"digest:{digest_id(f'zkdeploy-{role}', PASSWORDS[f'zkdeploy-{role}'])}"]
                              for role in ROLE_NAMES}, "test")


def _apply(zk_hosts: str, zk_root: str, operator: Security) -> ApplyReport:
    raw = open_session(zk_hosts, zk_root, operator, wrap=False)
    try:
        return apply(raw, zk_root, _roles(), operator.owner_id)
    finally:
        raw.close()


@pytest.fixture
def fleet(zk_hosts: str, zk_root: str, tmp_path: Path) -> Iterator[dict[str, Store]]:
    """An operator, two agents, a steward (an agent holding the steward role) and a viewer on a
    fleet root whose ACL policy was applied."""
    files = {"operator": _creds(tmp_path, "operator"), "a": _creds(tmp_path, "agent", "a"),
             "b": _creds(tmp_path, "agent", "b"), "s": _creds(tmp_path, "steward", "s"),
             "viewer": _creds(tmp_path, "viewer")}
    security = {k: Security(Credentials.load(p)) for k, p in files.items()}
    _apply(zk_hosts, zk_root, security["operator"])
    stores = {k: Store.connect(zk_hosts, zk_root, s, session_timeout=4.0) for k, s in security.items()}
    for node in ("a", "b"):
        stores[node].add_member("web", node)
    _apply(zk_hosts, zk_root, security["operator"])  # again: admits a and b
    yield stores
    for s in stores.values():
        s.close()


def test_agents_run_their_whole_protocol_under_the_agent_role(fleet: dict[str, Store]) -> None:
    op, a = fleet["operator"], fleet["a"]
    op.put_catalog({"services": {}}, -1)
    op.put_release(Release(service="web", version="2", sha256="a" * 64, size=1, origin="/x"))
    [name] = op.enqueue([DeployEntry(service="web", version="2")])
    a.register_node(NodeRecord(node="a", address="127.0.0.1"))
    a.publish_current("web", CurrentEntry(node="a", version="1", state=ONLINE))
    a.add_member("web", "a")
    a.add_member("web", "a")  # rewriting its own member record
    a.add_holder("web", "2", "a")
    a.register_peer("f" * 40, "a", {"address": "127.0.0.1", "port": 6881})
    woken: list[list[str]] = []
    a.watch_wakes("a", woken.append)  # each agent watches its own requests to seed
    fleet["b"].wake_seeder("a", "f" * 40)  # a fetcher asks holder a to seed
    assert a.take_wakes("a") == ["f" * 40] and a.take_wakes("a") == []
    with pytest.raises(AccessDeniedError):
        fleet["viewer"].wake_seeder("a", "f" * 40)
    queue = a.restart_queue("web", "a")
    queue.join()
    view = a.quorum_view("web", "a")  # what the head reads before taking a slot
    assert view.present == {"a"} and op.quorum_view("web", "x").others_online == 1  # a's online token
    a.take_slot("web", a.current("web")["a"].evolve(state=RESTARTING), view.epoch)
    assert op.quorum_view("web", "x").others_online == 0 and op.slots("web") == ["a"]  # token gone with the slot
    a.release_slot("web", "a")
    a.publish_current("web", CurrentEntry(node="a", version="2", state=ONLINE))
    assert op.quorum_view("web", "x").others_online == 1 and op.slot_count("web") == 0
    queue.release()
    entry = a.deploy(name)
    assert entry is not None
    assert a.report_failure(entry, "a", {"error": "boom", "at": 1.0})  # its own failure on a deploy
    assert not a.report_failure(entry, "a", {"error": "again", "at": 2.0})  # counted once
    assert op.failure_reports(entry) == {"a": {"node": "a", "error": "boom", "at": 1.0}}
    fleet["s"].update_deploy(entry.evolve(message="stalled: test"))  # a steward records on deploy entries
    plan = op.request_plan({"targets": []})
    a.answer_plan(plan, "a", {"changes": []})
    a.record_history({"node": "a", "change": "x"})
    a.watch_releases("api", lambda *_: None)  # a service not staged yet: its parent is made
    assert a.plan_answers(plan) == {"a": {"changes": []}}
    assert op.deploy(name).message == "stalled: test"


@pytest.mark.parametrize("attempt", ["enqueue", "progress", "catalog", "killswitch", "stage", "forget", "prune"])
def test_an_agent_cannot_change_what_operators_own(fleet: dict[str, Store], attempt: str) -> None:
    op, a = fleet["operator"], fleet["a"]
    op.put_catalog({"services": {}}, -1)
    [name] = op.enqueue([DeployEntry(service="web", version="2", state="done")])
    fleet["b"].add_member("web", "b")
    fleet["b"].close()  # b is absent: only its membership stays
    actions = {
        "enqueue": lambda: a.enqueue([DeployEntry(service="web", version="666")]),
        "progress": lambda: a.update_deploy(op.deploy(name).evolve(message="halted by a")),
        "catalog": lambda: a.put_catalog({"services": {"evil": {}}}, 0),
        "killswitch": lambda: a.set_killswitch(Killswitch(message="stop", by="a")),
        "stage": lambda: a.put_release(Release(service="web", version="666", sha256="b" * 64, size=1, origin="/x")),
        "forget": lambda: a.forget_member("web", "b"),
        "prune": lambda: a.delete_tree(a._layout.deploy_entry(name)),
    }
    with pytest.raises(AccessDeniedError, match="not allowed with this client's credentials"):
        actions[attempt]()
    assert [d.version for d in op.deploys()] == ["2"]
    assert op.killswitch() is None
    assert op.catalog()[0] == {"services": {}}
    assert op.member_nodes("web") == ["a", "b"]


def test_an_agent_cannot_rewrite_another_nodes_records(fleet: dict[str, Store]) -> None:
    a, b = fleet["a"], fleet["b"]
    b.register_node(NodeRecord(node="b", address="10.0.0.2"))
    b.publish_current("web", CurrentEntry(node="b", version="1", state=ONLINE))
    b.add_member("web", "b")
    b.quorum_view("web", "b")
    b.take_slot("web", b.current("web")["b"].evolve(state=RESTARTING))
    for path in (a._layout.node("b"), a._layout.current_entry("web", "b"), a._layout.member("web", "b"),
                 a._layout.slot("web", "b")):
        with pytest.raises(AccessDeniedError):
            a._session.set(path, b'{"node": "b", "state": "online"}')
    assert fleet["operator"].current("web")["b"].state == RESTARTING
    assert fleet["operator"].nodes()["b"].address == "10.0.0.2"


def test_an_agent_cannot_delete_another_nodes_slot_token_or_queue_place_nor_count_a_node_twice(
        fleet: dict[str, Store]) -> None:
    op, a, b = fleet["operator"], fleet["a"], fleet["b"]
    layout = a._layout
    b.register_node(NodeRecord(node="b", address="10.0.0.2"))
    b.publish_current("web", CurrentEntry(node="b", version="1", state=ONLINE))
    a.publish_current("web", CurrentEntry(node="a", version="1", state=ONLINE))
    assert op.quorum_view("web", "x").others_online == 2
    # b's online token and presence: a can neither delete them nor make a token in b's name
    for path in (layout.online_token("web", "b"), layout.node("b"), layout.current_entry("web", "b")):
        with pytest.raises(AccessDeniedError):
            a._session.delete(path)
    with pytest.raises(AccessDeniedError):
        a._session.create(layout.up_node("web", "b") + "/forged", ephemeral=True)
    # nor a node of its own making: an availability parent, or a second token under its own parent
    with pytest.raises(AccessDeniedError):
        a._session.create(layout.up_node("web", "ghost"))
    with pytest.raises(AccessDeniedError, match="quota"):
        a._session.create(layout.up_node("web", "a") + "/again", ephemeral=True)
    # an entry forged for a node that is not there may be created, but it is not counted online
    a._session.create(layout.current_entry("web", "ghost"), CurrentEntry(node="ghost", version="1",
                                                                         state=ONLINE).to_bytes(), ephemeral=True)
    assert op.quorum_view("web", "x").others_online == 2
    # nor b's holder, b's history, a request to b to seed (only b removes those), nor ask a host not admitted
    op.put_release(Release(service="web", version="2", sha256="a" * 64, size=1, origin="/x"))
    b.add_holder("web", "2", "b")
    b.record_history({"node": "b", "change": "x"})
    a.wake_seeder("b", "f" * 40)
    [request] = op._session.children(layout.wake("b"))
    [record] = op._session.children(layout.node_history("b"))
    for path in (layout.holder("web", "2", "b"), layout.node_history("b") + "/" + record,
                 layout.wake("b") + "/" + request):
        with pytest.raises(AccessDeniedError):
            a._session.delete(path)
    with pytest.raises(AccessDeniedError):
        a.wake_seeder("ghost", "f" * 40)
    assert b.take_wakes("b") == ["f" * 40]
    assert [r["id"] for r in op.history()] == [f"b/{record}"]
    # nor b's place in the restart queue (it lives in a session of b's own, closed to leave)
    place = b.restart_queue("web", "b")
    place.join()
    with pytest.raises(AccessDeniedError):
        a._session.delete(layout.lock_queue("web") + "/" + str(place.node))
    assert op.queue("web") == ["b"] and place.poll() == 0
    # b takes its slot: a cannot delete it
    view = b.quorum_view("web", "b")
    b.take_slot("web", b.current("web")["b"].evolve(state=RESTARTING), view.epoch)
    place.release()
    wait_for(lambda: op.queue("web") == [], 10, "b's place to go with its session")
    with pytest.raises(AccessDeniedError):
        a._session.delete(layout.slot("web", "b"))
    assert op.slots("web") == ["b"] and op.quorum_view("web", "x").others_online == 1


def test_under_roles_a_place_in_the_queue_has_a_session_of_its_own_and_holds_only_with_the_agents(
        fleet: dict[str, Store]) -> None:
    op, b = fleet["operator"], fleet["b"]
    place = b.restart_queue("web", "b")
    place.join()
    path = op._layout.lock_queue("web") + "/" + str(place.node)
    stat = op._session.exists(path)
    assert place.own_session and stat is not None and stat.owner not in (0, b._session.session_id)
    acl, _ = op._session.get_acl(path)  # made with the create that lists the queue: its ACL is the policy's
    assert isinstance(b._session, AclSession) and set(acl) == set(b._session.policy.acl_for(path))
    generation = b.generation
    b.expire_session()  # the agent's own session ends; the place's session lives on
    wait_for(lambda: b.generation > generation and b.connected, 20, "b's new session")
    assert op.queue("web") == ["b"]
    with pytest.raises(LockLostError, match="has ended"):
        place.poll(threading.Event())  # the agent's next look gives the place up
    wait_for(lambda: op.queue("web") == [], 10, "b's place to go with its session")


def test_of_two_nodes_deciding_on_the_same_count_only_one_takes_a_slot(fleet: dict[str, Store]) -> None:
    """A head whose queue entry was deleted under it decides beside the next one: the slot
    transaction is conditional on the availability epoch, so the second one decides again."""
    op, a, b = fleet["operator"], fleet["a"], fleet["b"]
    for store, node in ((a, "a"), (b, "b")):
        store.publish_current("web", CurrentEntry(node=node, version="1", state=ONLINE))
    seen_a, seen_b = a.quorum_view("web", "a"), b.quorum_view("web", "b")
    assert seen_a.epoch == seen_b.epoch and seen_a.others_online == seen_b.others_online == 1
    a.take_slot("web", a.current("web")["a"].evolve(state=RESTARTING), seen_a.epoch)
    with pytest.raises(ConflictError):
        b.take_slot("web", b.current("web")["b"].evolve(state=RESTARTING), seen_b.epoch)
    assert op.slots("web") == ["a"] and b.current("web")["b"].state == ONLINE
    assert b.quorum_view("web", "b").others_online == 0  # deciding again, b sees a down


def test_acl_apply_admits_only_members_owned_by_the_identity_of_their_name(
        fleet: dict[str, Store], zk_hosts: str, zk_root: str, tmp_path: Path) -> None:
    a = fleet["a"]
    a.add_member("web", "c")  # a member record in another node's name, made with a's identity
    report = _apply(zk_hosts, zk_root, Security(Credentials.load(_creds(tmp_path, "operator"))))
    assert report.admitted == ["web/a", "web/b"] and report.quota_enforced is True
    for path in (a._layout.wake("a"), a._layout.node_history("a")):  # per node: asked to seed, its history
        acl, _ = fleet["operator"]._session.get_acl(path)
        assert ("a", PERM_READ | PERM_CREATE | PERM_DELETE) in {(x.id.split(":")[0], x.perms) for x in acl}
    assert report.refused == ["web/c: its member record is owned by digest:a, not by an identity named c"]
    assert fleet["operator"]._session.exists(a._layout.up_node("web", "c")) is None
    a_acl, _ = fleet["operator"]._session.get_acl(a._layout.up_node("web", "a"))
    assert {(x.id.split(":")[0], x.perms) for x in a_acl} == {
        ("zkdeploy-operator", PERM_ALL), ("zkdeploy-agent", PERM_READ), ("zkdeploy-viewer", PERM_READ),
            ("zkdeploy-steward", PERM_READ),
        ("a", PERM_READ | PERM_CREATE | PERM_DELETE)}


def test_a_node_not_admitted_counts_as_down_until_it_is(zk_hosts: str, zk_root: str, tmp_path: Path) -> None:
    operator = Security(Credentials.load(_creds(tmp_path, "operator")))
    _apply(zk_hosts, zk_root, operator)
    a = Store.connect(zk_hosts, zk_root, Security(Credentials.load(_creds(tmp_path, "agent", "a"))))
    op = Store.connect(zk_hosts, zk_root, operator)
    try:
        a.add_member("web", "a")
        a.prepare_service("web", "a")  # logged, not raised: it is not admitted
        with pytest.raises(NotAdmittedError, match="zkdeploy acl apply"):
            a.publish_current("web", CurrentEntry(node="a", version="1", state=ONLINE))
        assert op.current("web")["a"].state == ONLINE and op.quorum_view("web", "x").others_online == 0
        with pytest.raises(NotAdmittedError):
            a.take_slot("web", a.current("web")["a"].evolve(state=RESTARTING))
        asked: list[list[str]] = []
        a.watch_wakes("a", asked.append)  # no parent to be asked under yet: the watch waits for it
        with pytest.raises(AccessDeniedError):
            a.record_history({"node": "a", "change": "x"})
        _apply(zk_hosts, zk_root, operator)
        a.publish_current("web", CurrentEntry(node="a", version="1", state=ONLINE))
        assert op.quorum_view("web", "x").others_online == 1
        wait_for(lambda: asked == [[]], 10, "the watch on a's requests to seed to begin")
        op.wake_seeder("a", "f" * 40)
        wait_for(lambda: len(asked) == 2 and len(asked[1]) == 1, 10, "a to be asked to seed")
        a.record_history({"node": "a", "change": "x"})
    finally:
        a.close()
        op.close()


def test_a_viewer_reads_everything_and_writes_nothing(fleet: dict[str, Store]) -> None:
    op, v = fleet["operator"], fleet["viewer"]
    op.put_catalog({"services": {}}, -1)
    [name] = op.enqueue([DeployEntry(service="web", version="2")])
    fleet["a"].publish_current("web", CurrentEntry(node="a", version="1", state=ONLINE))
    assert v.catalog()[0] == {"services": {}}
    assert [d.name for d in v.deploys()] == [name]
    assert v.current("web")["a"].version == "1"
    entry = v.deploy(name)
    assert entry is not None
    for attempt in (lambda: v.update_deploy(entry.evolve(state="aborted")),
                    lambda: v.enqueue([DeployEntry(service="web", version="3")]),
                    lambda: v.register_node(NodeRecord(node="v")),
                    lambda: v.publish_current("web", CurrentEntry(node="v", version="1", state=ONLINE)),
                    lambda: v.set_killswitch(Killswitch(message="x")),
                    lambda: v.record_history({"x": 1})):
        with pytest.raises(AccessDeniedError):
            attempt()
    assert op.deploy(name).state == "pending"


def test_the_operator_can_do_everything(fleet: dict[str, Store]) -> None:
    op = fleet["operator"]
    fleet["a"].add_member("web", "a")
    fleet["a"].close()
    [name] = op.enqueue([DeployEntry(service="web", version="2")])
    op.update_deploy(op.deploy(name).evolve(state="aborted"))
    op.set_killswitch(Killswitch(message="maintenance", by="ops"))
    op.set_killswitch(None)
    assert op.forget_member("web", "a")
    op.put_catalog({"services": {}}, -1)


def test_acl_apply_repairs_nodes_made_before_roles_and_keeps_owners(zk_hosts: str, zk_root: str,
                                                                    tmp_path: Path) -> None:
    open_store = Store.connect(zk_hosts, zk_root)  # no roles yet: everything is made open
    open_store.put_catalog({"services": {}}, -1)
    open_store.add_member("web", "old")
    open_store.close()
    operator = Security(Credentials.load(_creds(tmp_path, "operator")))
    raw = open_session(zk_hosts, zk_root, operator, wrap=False)
    try:
        report = apply(raw, zk_root, _roles(), operator.owner_id)
        catalog_acl, _ = raw.get_acl(zk_root + "/catalog")
        assert {(a.id.split(":")[0], a.perms) for a in catalog_acl} == {
            ("zkdeploy-operator", PERM_ALL), ("zkdeploy-agent", PERM_READ), ("zkdeploy-viewer", PERM_READ),
            ("zkdeploy-steward", PERM_READ)}
        assert zk_root + "/members/web/old" in report.unknown_owner  # writable by the agent role, reported
        again = apply(raw, zk_root, _roles(), operator.owner_id)
        assert again.repaired == []  # idempotent
        agent = Store.connect(zk_hosts, zk_root, Security(Credentials.load(_creds(tmp_path, "agent", "a"))))
        agent.add_member("web", "a")
        agent.close()
        apply(raw, zk_root, _roles(), operator.owner_id)  # a repair keeps the owner of a's record
        member_acl, _ = raw.get_acl(zk_root + "/members/web/a")
        assert ("a", PERM_READ | PERM_WRITE) in {(a.id.split(":")[0], a.perms) for a in member_acl}
    finally:
        raw.close()


def test_without_credentials_nothing_can_be_read_or_written(fleet: dict[str, Store], zk_hosts: str,
                                                           zk_root: str) -> None:
    with pytest.raises(AccessDeniedError):
        Store.connect(zk_hosts, zk_root, session_timeout=4.0)  # cannot even read the policy


def test_a_credentials_file_others_can_read_is_refused(tmp_path: Path) -> None:
    path = _creds(tmp_path, "agent", "a")
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match=r"accessible to other users.*chmod 600"):
        Credentials.load(path)
    assert "agent-secret" not in repr(Credentials.load(_fix(path)))


def _fix(path: Path) -> Path:
    os.chmod(path, 0o600)
    return path


def test_an_automatic_rollback_under_roles_halts_and_says_the_operator_must_queue_it(
        fleet: dict[str, Store]) -> None:
    from zkdeploy.agent.deploys import judge, report_failure

    op, a = fleet["operator"], fleet["a"]
    [name] = op.enqueue([DeployEntry(service="web", version="2", previous="1", on_failure="rollback")])
    report_failure(a, "a", name, "health checks failed")
    assert op.deploy(name).state == "pending"  # a reported its failure; only a steward writes the entry
    judge(fleet["s"], name)
    entry = op.deploy(name)
    assert entry is not None and entry.state == "halted"
    assert "an operator must queue it (zkdeploy rollback web)" in entry.message
    assert [d.name for d in op.deploys()] == [name]  # nothing was queued


def test_the_cli_applies_the_policy_and_an_agent_credential_is_refused_with_exit_2(
        zk_hosts: str, zk_root: str, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from zkdeploy.cli.main import cli

    def run(*args: str) -> tuple[int, str]:
        result = CliRunner().invoke(cli, ["--zk", zk_hosts, "--root", zk_root, "--zk-timeout", "5", *args])
        return result.exit_code, result.output

    op, agent = _creds(tmp_path, "operator"), _creds(tmp_path, "agent", "a")
    code, out = run("acl", "id", "--auth-file", str(agent), "--json")
    assert code == 0 and "agent-secret" not in out and "a-secret" not in out
    policy = tmp_path / "acl.yaml"
    policy.write_text(yaml.safe_dump({role: [f"{scheme}:{ident}" for scheme, ident in getattr(_roles(), role)]
                                      for role in ("operator", "agent", "viewer")}))
    code, out = run("--zk-auth-file", str(op), "acl", "apply", str(policy))
    assert code == 0, out
    assert "the policy names no steward" in out  # no deploy would ever be recorded done
    code, out = run("--zk-auth-file", str(agent), "killswitch", "on", "-m", "pwned")
    assert code == 2 and "not allowed with this client's credentials" in out
    code, out = run("--zk-auth-file", str(op), "killswitch", "on", "-m", "maintenance")
    assert code == 0, out
    code, out = run("--zk-auth-file", str(op), "acl", "apply", str(policy), "--json")
    assert code == 0 and '"repaired": []' in out and '"stewards": 0' in out


def test_an_agent_cannot_make_a_deploy_entry_ask_for_what_the_operator_did_not_queue(
        fleet: dict[str, Store]) -> None:
    """A steward records progress on a deploy entry, so a steward credential can rewrite the entry:
    the seal the operator made with it (which neither role can write or make) says so, and agents
    refuse it."""
    from zkdeploy.agent.deploys import seal_refusal

    op, a, b = fleet["operator"], fleet["s"], fleet["b"]
    [name] = op.enqueue([DeployEntry(service="web", version="2")])
    entry = a.deploy(name)
    assert entry is not None and entry.seal and seal_refusal(b, entry, {}) is None
    with pytest.raises(AccessDeniedError):  # an agent cannot write it at all
        b.update_deploy(entry.evolve(version="666"))
    a.update_deploy(entry.evolve(steps=({"name": "x", "do": "command", "command": "id", "check": "none"},)))
    rewritten = b.deploy(name)
    assert rewritten is not None and "rewritten after it was queued" in str(seal_refusal(b, rewritten, {}))
    forged = rewritten.evolve(seal="f" * 32)
    with pytest.raises(AccessDeniedError):  # nor make a seal for its rewrite
        a._session.create(a._layout.seal(forged.seal), forged.spec_digest().encode())
    with pytest.raises(AccessDeniedError):
        a._session.set(a._layout.seal(entry.seal), rewritten.spec_digest().encode())
    # an entry without a seal (not queued by zkdeploy) is refused under roles
    raw = op._session.create(op._layout.deploy + "/d-", DeployEntry(service="web", version="3").to_bytes(),
                             sequence=True)
    unsealed = b.deploy(raw.rsplit("/", 1)[1])
    assert unsealed is not None and "no seal" in str(seal_refusal(b, unsealed, {}))


def test_only_the_node_an_undo_request_is_addressed_to_writes_its_result(fleet: dict[str, Store]) -> None:
    op, a, b = fleet["operator"], fleet["a"], fleet["b"]
    name = op.request_undo("b", {"state": "pending", "last": 1})
    with pytest.raises(AccessDeniedError):  # another node cannot rewrite what b is asked to undo
        a.update_undo_request("b", name, {"state": "pending", "change_ids": [1, 2, 3]})
    with pytest.raises(AccessDeniedError):
        a.request_undo("b", {"state": "pending", "last": 5})  # nor ask for one
    b.update_undo_request("b", name, {"state": "done", "last": 1, "result": []})
    assert op.undo_requests("b")[name]["state"] == "done"


def test_a_node_reports_only_its_own_failure_and_only_a_steward_moves_the_deploy(fleet: dict[str, Store]) -> None:
    """One agent credential cannot halt or finish a rollout: it reports its own failure, a report in
    another node's name is not taken, and the entry is written by stewards only."""
    from zkdeploy.agent.deploys import as_judged, judge, report_failure

    op, a, b, s = fleet["operator"], fleet["a"], fleet["b"], fleet["s"]
    [name] = op.enqueue([DeployEntry(service="web", version="2", max_failures=1)])
    entry = op.deploy(name)
    assert entry is not None
    with pytest.raises(AccessDeniedError):  # a report in b's name: only b creates under its own parent
        a.report_failure(entry, "b", {"error": "b is broken", "at": 1.0, "halt": True})
    a._session.create(a._layout.deploy_failure(entry.failures_key, "b"))  # a pointer to b: nothing behind it
    report_failure(a, "a", name, "health checks failed")
    assert set(s.failure_reports(entry)) == {"a"}  # b reported nothing: a pointer alone is not taken
    assert as_judged(b, entry, b.failure_reports(entry)).state == "pending"  # a's one failure is in budget
    judge(s, name)
    entry = op.deploy(name)
    assert entry is not None and entry.state == "pending" and [f["node"] for f in entry.failures] == ["a"]
    with pytest.raises(AccessDeniedError):
        a.update_deploy(entry.evolve(state="done", message="done early"))
    with pytest.raises(AccessDeniedError):  # nor delete a report (its own neither: a failure counts)
        a.delete_tree(a._layout.deploy_failures(entry.failures_key))
    report_failure(b, "b", name, "timed out")  # b's own: two failures, past the budget of one
    judge(s, name)
    entry = op.deploy(name)
    assert entry is not None and entry.state == "halted" and [f["node"] for f in entry.failures] == ["a", "b"]
