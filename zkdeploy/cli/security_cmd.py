"""``zkdeploy acl ...`` and ``zkdeploy keys ...``: roles in ZooKeeper and signed releases (docs/security.md)."""

from __future__ import annotations

import getpass
import sys
import time
from pathlib import Path

import click
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from zkdeploy.cli.context import Ctx, handle_errors, json_option, pass_ctx
from zkdeploy.cli.output import emit_json, say, table
from zkdeploy.coordination import Store
from zkdeploy.coordination.acls import RoleIds, apply, open_session
from zkdeploy.coordination.credentials import Credentials, digest_id
from zkdeploy.errors import ConfigError
from zkdeploy.names import check_name
from zkdeploy.signing import SIGNATURE_BLOB, generate, load_private, new_record, seq_of, sign
from zkdeploy.strictyaml import load_yaml


def release_signature(store: Store, key: Ed25519PrivateKey, service: str, version: str, sha256: str, size: int,
                      kind: str = "release") -> bytes:
    """A signed record for ``service@version`` whose sequence number is above every one the service's
    staged releases carry (so an agent accepts it even after newer releases)."""
    seqs = [seq_of(store.release_blob(service, v, SIGNATURE_BLOB)) for v in store.staged_versions(service)]
    seq = max([s for s in seqs if s is not None], default=0) + 1
    return sign(key, new_record(service, version, sha256, size, seq, kind=kind, now=time.time()))


# -- acl ----------------------------------------------------------------------------------
@click.group("acl")
def acl() -> None:
    """ZooKeeper ACL roles: operator, steward, agent, viewer (see docs/security.md)."""


@acl.command("apply")
@click.argument("policy", type=click.Path(exists=True, dir_okay=False))
@click.option("--dry-run", is_flag=True, help="Show what would change; change nothing.")
@json_option
@pass_ctx
@handle_errors
def acl_apply(ctx: Ctx, policy: str, dry_run: bool, as_json: bool) -> None:
    """Store the role POLICY and set (or repair) the ACL of every node of the fleet's tree.

    POLICY is a YAML file mapping each role to its identities, as printed by
    `zkdeploy acl id`:

    \b
      operator: ["digest:zkdeploy-operator:HASH"]
      steward:  ["digest:zkdeploy-steward:HASH"]
      agent:    ["digest:zkdeploy-agent:HASH", "x509:CN=agents,O=example"]
      viewer:   ["digest:zkdeploy-viewer:HASH"]

    A steward is an agent that also writes deploys' progress (it folds the
    nodes' failure reports in, halts a deploy past its budget, records its
    completion): give two or three agents the steward credential.  Without
    one, no deploy is ever recorded done or halted.

    Run it with operator credentials (--zk-auth-file), first on a fresh tree
    and again whenever the policy changes or a new zkdeploy adds paths.
    Idempotent: nodes whose ACL is right are left alone.

    It also admits nodes: a member whose member record is owned by the
    identity of its own name (digest node_user or certificate CN = the node
    name) gets availability and slot parents only it may write under, with a
    hard quota of one online token.  A node not admitted counts as down and
    cannot restart: run this again after new hosts register.
    """
    try:
        roles = RoleIds.from_data(load_yaml(Path(policy).read_text()), policy)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{policy}: {exc}") from None
    security = ctx.security()
    session = open_session(ctx.zk, ctx.root, security, wrap=False, connect_timeout=ctx.timeout,
                           operation_timeout=ctx.timeout)
    try:
        report = apply(session, ctx.root, roles, security.owner_id, dry_run=dry_run)
    finally:
        session.close()
    if as_json:
        emit_json({"checked": report.checked, "repaired": report.repaired, "unknown_owner": report.unknown_owner,
                   "admitted": report.admitted, "refused": report.refused,
                   "quota_enforced": report.quota_enforced, "stewards": len(roles.steward), "dry_run": dry_run})
        return
    verb = "would repair" if dry_run else "repaired"
    say(f"{report.checked} node(s) checked, {verb} {len(report.repaired)}")
    for path in report.repaired:
        say(f"  {path}")
    for member in report.admitted:
        say(f"admitted {member}")
    if report.refused:
        say(f"{len(report.refused)} member(s) not admitted (they count as down and cannot restart):")
        for why in report.refused:
            say(f"  {why}")
    if not roles.steward:
        say("WARNING: the policy names no steward: no agent may record a deploy's progress, so no deploy is "
            "ever recorded done or halted. Give two or three agents the steward credential (docs/security.md).")
    if report.quota_enforced is True:
        say("hard quotas are enforced: an admitted node counts itself online at most once")
    elif report.quota_enforced is False:
        say("WARNING: ZooKeeper does not enforce hard quotas: a stolen agent credential could count its node "
            "online more than once. Start every server with -Dzookeeper.enforceQuota=true (docs/security.md).")
    if report.unknown_owner:
        say(f"{len(report.unknown_owner)} node(s) an agent owns were made before roles were in place and stay "
            "writable by every agent until their agent makes them again:")
        for path in report.unknown_owner:
            say(f"  {path}")


@acl.command("id")
@click.option("--auth-file", type=click.Path(exists=True, dir_okay=False),
              help="A credentials file; without it, USER and a password read from stdin.")
@click.option("--user", help="The digest user (with the password on stdin, never on the command line).")
@json_option
@handle_errors
def acl_id(auth_file: str | None, user: str | None, as_json: bool) -> None:
    """Print the ACL identities of a credentials file (or of a user and a password given on stdin),
    for the policy file of `zkdeploy acl apply`.  The password itself is never printed."""
    rows: list[tuple[str, str]] = []
    if auth_file:
        creds = Credentials.load(auth_file)
        rows.append((f"{creds.role} (role)", "digest:" + creds.role_id[1]))
        if creds.node_id is not None:
            rows.append(("node", "digest:" + creds.node_id[1]))
    elif user:
        password = getpass.getpass("password: ") if sys.stdin.isatty() else sys.stdin.readline().rstrip("\n")
        rows.append((user, "digest:" + digest_id(user, password)))
    else:
        raise ConfigError("give --auth-file FILE, or --user USER with the password on stdin")
    if as_json:
        emit_json([{"what": w, "id": i} for w, i in rows])
    else:
        table(None, ["WHAT", "ID"], rows)


# -- keys -------------------------------------------------------------------------------------
@click.group("keys")
def keys() -> None:
    """Ed25519 keys that sign releases (agents trust their public halves: signing.trusted_keys)."""


@keys.command("generate")
@click.argument("path", type=click.Path(dir_okay=False))
@handle_errors
def keys_generate(path: str) -> None:
    """Make a new signing key at PATH (mode 600; never overwritten) and its public key at PATH.pub.

    Keep PATH offline or on the operators' signing host; copy PATH.pub to the
    agents and list it in their signing.trusted_keys.
    """
    private, public, kid = generate(path)
    say(f"signing key {private} (keep it secret), public key {public}, key id {kid}")


@keys.command("sign")
@click.argument("release", metavar="SERVICE@VERSION")
@click.option("--key", "key_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="The signing key (from `zkdeploy keys generate`).")
@click.option("--rollback", is_flag=True,
              help="Sign an older release again so that agents accept going back to it.")
@pass_ctx
@handle_errors
def keys_sign(ctx: Ctx, release: str, key_path: str, rollback: bool) -> None:
    """Sign a staged release (again), with a sequence number above every release of its service.

    Needed to stage-sign after the fact, and to go back: agents with trusted
    keys refuse a release older than one they installed unless an operator
    signs it again (--rollback).  Then queue the deploy (zkdeploy rollback or
    zkdeploy deploy SERVICE@VERSION).
    """
    service, sep, version = release.partition("@")
    if not sep:
        raise ConfigError(f"{release!r}: expected SERVICE@VERSION")
    check_name("service", service)
    check_name("version", version)
    key = load_private(key_path)
    store = ctx.store()
    staged = store.release(service, version)
    if staged is None:
        raise ConfigError(f"{service}@{version} is not staged")
    envelope = release_signature(store, key, service, version, staged.sha256, staged.size,
                                 kind="rollback" if rollback else "release")
    store.put_release_blob(service, version, SIGNATURE_BLOB, envelope)
    say(f"signed {service}@{version} (sequence {seq_of(envelope)}{', rollback' if rollback else ''})")
