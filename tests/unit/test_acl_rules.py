"""The ACL rules (zkdeploy/coordination/acls.py): who may delete what, decided in one table."""

from __future__ import annotations

from zkdeploy.coordination.acls import AGENT_DELETES, AclPolicy, RoleIds, identity_name
from zkdeploy.coordination.session import PERM_ALL, PERM_CREATE, PERM_DELETE, PERM_READ

ROLES = RoleIds.from_data({"operator": ["digest:op:x"], "agent": ["digest:agent:y"], "viewer": ["digest:view:z"]},
                          "test")


def test_an_agent_deletes_under_no_shared_parent() -> None:
    # every node an agent removes lives under a parent of its own (admission), or goes with a session
    # (its presence and entries, holders, tracker entries, and a place in a restart queue: each in a
    # session of its own, closed to leave)
    assert AGENT_DELETES == []


def test_a_per_node_parent_gives_create_and_delete_to_the_admitted_owner_only() -> None:
    policy = AclPolicy("/dc", ROLES)
    for path in ("/dc/up/web/n1", "/dc/slots/web/n1", "/dc/wake/n1", "/dc/reports/history/n1"):
        acl = {(a.id, a.perms) for a in policy.acl_for(path, owners=(("digest", "n1:h"),))}
        assert ("n1:h", PERM_READ | PERM_CREATE | PERM_DELETE) in acl, path
        assert ("op:x", PERM_ALL) in acl and not any(p & PERM_DELETE for i, p in acl if i in ("agent:y", "view:z"))
        unowned = {(a.id, a.perms) for a in policy.acl_for(path, owners=())}  # not admitted: nobody deletes
        assert not any(p & PERM_DELETE for i, p in unowned if i != "op:x"), path


def test_identity_names_are_the_digest_user_or_the_certificate_cn() -> None:
    assert identity_name(("digest", "web-17:abc=")) == "web-17"
    assert identity_name(("x509", "CN=web-17,OU=hosts,O=example")) == "web-17"
    assert identity_name(("x509", "O=example")) is None
