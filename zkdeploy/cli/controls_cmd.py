"""Controlled deployment, the operator's side: release marks, pins, and the promotion of a wave.

These commands only write intent (a mark record, a pin, a wave's approval);
the agents act on it by the one rule of docs/controlled-deployment.md, under
the quorum rules.  Each refuses bad input (exit 2) before writing anything.
Marks and pins are signed with ``--sign KEYFILE`` like releases; agents with
trusted keys act only on signed ones (docs/security.md).
"""

from __future__ import annotations

import time
from datetime import datetime

import click

from zkdeploy.cli.commands import who
from zkdeploy.cli.context import (
    Ctx,
    confirm,
    deploy_name as full_deploy_name,
    force_option,
    handle_errors,
    json_option,
    pass_ctx,
)
from zkdeploy.cli.output import emit_json, say
from zkdeploy.cli.views import pin_dict
from zkdeploy.config.schema import parse_duration
from zkdeploy.coordination import Store
from zkdeploy.errors import ConfigError, ConflictError
from zkdeploy.model import PENDING, DeployEntry, Mark, Pin
from zkdeploy.names import check_name
from zkdeploy.policy import marks as rules
from zkdeploy.policy.lifecycle import TERMINAL, Actor, transition
from zkdeploy.policy.waves import passed_first_wave
from zkdeploy.signing import load_private, next_pin_seq, sign_mark, sign_pin

#: conditional writes of a deploy entry tried before giving up (agents write it too)
PROMOTE_ATTEMPTS = 5


def _known_release(store: Store, service: str, version: str) -> None:
    """ConfigError unless ``service`` is in the catalog and ``version`` of it is staged."""
    check_name("service", service)
    check_name("version", version)
    catalog, _ = store.catalog()
    services = (catalog or {}).get("services", {})
    if service not in services:
        known = ", ".join(sorted(services)) or "none: zkdeploy services apply FILE"
        raise ConfigError(f"unknown service {service!r} (known: {known}); nothing was changed")
    if store.release(service, version) is None:
        staged = ", ".join(sorted(store.staged_versions(service))) or "none"
        raise ConfigError(f"{service}@{version} is not staged (staged: {staged}); nothing was changed")


def _effect(store: Store, service: str, version: str, how: str, marks: dict[str, Mark]) -> tuple[list[str], str]:
    """The nodes running ``service@version`` and, in words, where the mark ``how`` sends them."""
    running = sorted(n for n, e in store.current(service).items() if e.version == version)
    if how == rules.GOOD:
        return running, "waves that require a good release accept it"
    with_mark = {**marks, version: Mark(service=service, version=version, mark=how)}
    staged = {v: r.staged_at for v, r in store.releases(service).items()}
    passed = {e.version for e in store.deploys() if e.service == service and passed_first_wave(e)}
    decision = rules.decide(version, None, with_mark, staged, passed, time.time())
    where = (f"they go to {decision.target} under the quorum rules" if decision.target
             else "they hold where they are: " + decision.why.split(": ", 1)[-1])
    return running, f"{len(running)} node(s) run it{' (' + ', '.join(running) + ')' if running else ''}; {where}; " \
                    f"an open deploy of it is aborted by the agents"


def _mark_seq(store: Store, service: str) -> int:
    """A new signed mark's sequence number: above every mark record of the service."""
    return max((m.seq for m in store.marks(service).values()), default=0) + 1


def _unsigned_note(signed_before: bool, signing: bool, undo: str) -> str:
    """What to tell an operator who replaces a signed record with an unsigned one."""
    if signed_before and not signing:
        return (f"; note: the record it replaces was signed, and agents with trusted keys act only on signed "
                f"records: they ignore this one ({undo} --sign KEYFILE)")
    return ""


sign_option = click.option(
    "--sign", "sign_key", metavar="KEYFILE", type=click.Path(exists=True, dir_okay=False),
    help="Sign the record with this key (zkdeploy keys generate); agents with trusted keys act only on "
         "signed marks and pins.")


@click.command("mark")
@click.argument("service")
@click.argument("version")
@click.argument("how", metavar="bad|badfwd|good", type=click.Choice([rules.BAD, rules.BADFWD, rules.GOOD]))
@click.option("-m", "--message", "why", required=True, help="Why (kept with the mark, shown by status).")
@force_option
@sign_option
@json_option
@pass_ctx
@handle_errors
def mark(ctx: Ctx, service: str, version: str, how: str, why: str, force: bool, sign_key: str | None,
         as_json: bool) -> None:
    """Mark VERSION of SERVICE bad, badfwd or good (an append-only record: who, when, why).

    \b
    bad     nodes running it go back, under the quorum rules, to the newest
            older release not marked bad; the others hold; a deploy of it stops
    badfwd  nodes running it go forward to the next newer release not marked
            bad that passed its first wave (they hold until there is one)
    good    waves with `require_good` accept it

    The latest mark of a version counts; `zkdeploy unmark` clears it.
    Refused (exit 2, nothing written) for an unknown service or a version that
    is not staged.
    """
    check_name("service", service)
    check_name("version", version)
    if not why.strip():
        raise ConfigError("a mark needs a reason: -m WHY")
    key = load_private(sign_key) if sign_key else None
    store = ctx.store()
    _known_release(store, service, version)
    marks = rules.effective(store.marks(service).values())
    running, effect = _effect(store, service, version, how, marks)
    if how != rules.GOOD:
        confirm(f"mark {service}@{version} {how}? {effect}", force)
    record = Mark(service=service, version=version, mark=how, by=who(), at=time.time(), why=why)
    if key is not None:
        record = sign_mark(key, record, _mark_seq(store, service))
    name = store.add_mark(record)
    before = marks.get(version)
    note = _unsigned_note(before is not None and before.signed, key is not None, f"zkdeploy mark {service} {version}")
    if as_json:
        emit_json({"record": name, "service": service, "version": version, "mark": how, "by": record.by,
                   "at": record.at, "why": why, "running": running, "effect": effect, "signed": record.signed,
                   "seq": record.seq, "key": record.key or None})
    else:
        signed = f" (signed, sequence {record.seq})" if record.signed else ""
        say(f"marked {service}@{version} {how}{signed}: {effect}{note}")


@click.command("unmark")
@click.argument("service")
@click.argument("version")
@click.option("-m", "--message", "why", required=True, help="Why (kept with the record).")
@sign_option
@json_option
@pass_ctx
@handle_errors
def unmark(ctx: Ctx, service: str, version: str, why: str, sign_key: str | None, as_json: bool) -> None:
    """Clear the mark of VERSION of SERVICE (appends a record with mark `none`).

    Nodes already moved away from it stay where they are; a node that returns
    may run it again if it is the most popular version.  Refused (exit 2,
    nothing written) for an unknown service, an unstaged version, or a
    version that is not marked.
    """
    if not why.strip():
        raise ConfigError("unmark needs a reason: -m WHY")
    check_name("service", service)
    check_name("version", version)
    key = load_private(sign_key) if sign_key else None
    store = ctx.store()
    _known_release(store, service, version)
    current = rules.effective(store.marks(service).values()).get(version)
    if current is None:
        raise ConfigError(f"{service}@{version} is not marked; nothing was changed")
    record = Mark(service=service, version=version, mark="none", by=who(), at=time.time(), why=why)
    if key is not None:
        record = sign_mark(key, record, _mark_seq(store, service))
    name = store.add_mark(record)
    note = _unsigned_note(current.signed, key is not None, f"zkdeploy unmark {service} {version}")
    if as_json:
        emit_json({"record": name, "service": service, "version": version, "mark": "none", "was": current.mark,
                   "by": record.by, "at": record.at, "why": why, "signed": record.signed, "seq": record.seq,
                   "key": record.key or None})
    else:
        signed = f" (signed, sequence {record.seq})" if record.signed else ""
        say(f"unmarked {service}@{version}{signed} (was {current.mark}, by {current.by}: {current.why}){note}")


# -- pins -----------------------------------------------------------------------------------
def _until(until: str | None, for_: str | None, forever: bool) -> float | None:
    """The pin's expiry (None: forever) from exactly one of the three options."""
    if sum((until is not None, for_ is not None, forever)) != 1:
        raise ConfigError("give exactly one of --until TIME, --for DURATION or --forever")
    now = time.time()
    if forever:
        return None
    if for_ is not None:
        try:
            seconds = parse_duration(for_, "--for")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if seconds <= 0:
            raise ConfigError(f"--for {for_}: must be longer than nothing")
        return now + seconds
    assert until is not None
    try:
        when = datetime.fromisoformat(until.strip())
    except ValueError:
        raise ConfigError(f"--until {until!r}: expected a date and time like 2026-12-01T18:00 "
                          f"(local time unless it has an offset)") from None
    at = when.timestamp()  # a naive time is local time
    if at <= now:
        raise ConfigError(f"--until {until}: that is in the past")
    return at


def _runs(store: Store, node: str, service: str) -> bool:
    """Whether ``node`` is known to run ``service``: its agent lists it, or it is a member of it."""
    record = store.nodes().get(node)
    return (record is not None and service in record.services) or node in store.member_nodes(service) \
        or node in store.current(service)


@click.command("pin")
@click.argument("node")
@click.argument("service")
@click.argument("version")
@click.option("--until", metavar="TIME", help="The pin lapses at TIME (ISO 8601, local time unless an offset).")
@click.option("--for", "for_", metavar="DURATION", help="The pin lapses after DURATION (e.g. 2h, 30m, 1h30m).")
@click.option("--forever", is_flag=True, help="The pin stays until `zkdeploy unpin`.")
@click.option("-m", "--message", "why", required=True, help="Why (shown by status and nodes).")
@sign_option
@json_option
@pass_ctx
@handle_errors
def pin(ctx: Ctx, node: str, service: str, version: str, until: str | None, for_: str | None, forever: bool,
        why: str, sign_key: str | None, as_json: bool) -> None:
    """Pin NODE to VERSION of SERVICE: it runs that release whatever deploys, waves, marks and
    the most-popular rule say (it still restarts under the quorum rules).

    A pin with an expiry lapses by itself, and the node then converges like a
    node that returns.  Replaces an earlier pin of NODE for SERVICE.  Refused
    (exit 2, nothing written) for an unknown node or service, a node that
    does not run SERVICE, or a version that is not staged.
    """
    check_name("node", node)
    check_name("service", service)
    check_name("version", version)
    if not why.strip():
        raise ConfigError("a pin needs a reason: -m WHY")
    expiry = _until(until, for_, forever)
    key = load_private(sign_key) if sign_key else None
    store = ctx.store()
    _known_release(store, service, version)
    present = store.nodes()
    members = {n for s in store.member_services() for n in store.member_nodes(s)}
    if node not in present and node not in members:
        raise ConfigError(f"unknown node {node!r}: no agent of that name is registered or a member of any "
                          f"service (zkdeploy nodes); nothing was changed")
    if not _runs(store, node, service):
        raise ConfigError(f"{node} does not run {service}; nothing was changed")
    previous = store.pin(node, service)  # a pin, or a signed unpin that keeps the sequence going
    before = previous if previous is not None and previous.kind == "pin" else None
    record = Pin(node=node, service=service, version=version, until=expiry, by=who(), at=time.time(), why=why)
    if key is not None:
        record = sign_pin(key, record, next_pin_seq(previous))
    store.set_pin(record)
    entry = store.current(service).get(node)
    running = entry.version if entry else None
    what = ("it runs it already" if running == version
            else f"it runs {running or 'nothing yet'}: it restarts into {version} under the quorum rules")
    note = _unsigned_note(previous is not None and previous.signed, key is not None, f"zkdeploy pin {node} {service}")
    if as_json:
        emit_json({**pin_dict(record), "replaced": pin_dict(before) if before else None, "running": running,
                   "signed": record.signed, "seq": record.seq, "key": record.key or None})
    else:
        lapse = f"until {seen_at(expiry)}" if expiry is not None else "until unpinned"
        signed = f" (signed, sequence {record.seq})" if record.signed else ""
        say(f"pinned {node} to {service}@{version} {lapse}{signed}; {what}"
            + (f" (replaces the pin to {before.version})" if before else "") + note)


@click.command("unpin")
@click.argument("node")
@click.argument("service")
@sign_option
@json_option
@pass_ctx
@handle_errors
def unpin(ctx: Ctx, node: str, service: str, sign_key: str | None, as_json: bool) -> None:
    """Remove NODE's pin for SERVICE: the node then converges like a node that returns (the
    open wave of a deploy, else the most popular version not marked bad), under the quorum rules.

    With --sign, a signed unpin record takes the pin's place (agents with
    trusted keys keep a signed pin until they see one).  Refused (exit 2) when
    NODE has no pin for SERVICE.
    """
    check_name("node", node)
    check_name("service", service)
    key = load_private(sign_key) if sign_key else None
    store = ctx.store()
    before = store.pin(node, service)
    if before is None or before.kind != "pin":
        raise ConfigError(f"{node} has no pin for {service}; nothing was changed")
    if key is not None:
        store.set_pin(sign_pin(key, Pin(node=node, service=service, version=before.version, by=who(),
                                         at=time.time(), kind="unpin"), next_pin_seq(before)))
    elif not store.remove_pin(node, service):
        raise ConfigError(f"{node} has no pin for {service}; nothing was changed")
    note = _unsigned_note(before.signed, key is not None, f"zkdeploy unpin {node} {service}")
    if as_json:
        emit_json({"removed": pin_dict(before), "signed": key is not None})
    else:
        say(f"unpinned {node} from {service}@{before.version}{' (signed)' if key else ''}{note}")


def seen_at(when: float | None) -> str:
    """A time, for people: local date and time."""
    return "-" if when is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when))


# -- promote ---------------------------------------------------------------------------------
def _wave_index(entry: DeployEntry, wave: str | None) -> int:
    """The wave to approve: ``wave`` (its number as status shows it, from 1, or its name), or the
    next one that waits for approval.  ConfigError when there is none or it cannot be approved."""
    log = [dict(x) for x in entry.wave_log] + [{} for _ in range(len(entry.waves) - len(entry.wave_log))]
    names = [str(w["name"]) for w in entry.waves]
    if wave is None:
        for index in range(entry.wave, len(entry.waves)):
            if entry.waves[index].get("approval") and not log[index].get("opened") \
                    and not log[index].get("approved_by"):
                return index
        raise ConfigError(f"no wave of deploy {entry.name} waits for approval (waves: {', '.join(names)}); "
                          f"nothing was changed")
    if wave.isdigit() and 1 <= int(wave) <= len(names):
        index = int(wave) - 1
    elif wave in names:
        index = names.index(wave)
    else:
        raise ConfigError(f"deploy {entry.name} has no wave {wave!r} (waves, by number or name: "
                          + ", ".join(f"{i} {n}" for i, n in enumerate(names, 1)) + "); nothing was changed")
    if index < entry.wave or log[index].get("opened"):
        raise ConfigError(f"wave {names[index]} of deploy {entry.name} is already open; nothing was changed")
    if not entry.waves[index].get("approval"):
        raise ConfigError(f"wave {names[index]} of deploy {entry.name} does not wait for approval "
                          f"(its plan has no `approval: true`); nothing was changed")
    return index


@click.command("promote")
@click.argument("deploy_name", metavar="DEPLOY")
@click.option("--wave", metavar="N|NAME",
              help="The wave to approve, by number (from 1, as status shows) or name; default: the next "
                   "wave that waits for approval.")
@json_option
@pass_ctx
@handle_errors
def promote(ctx: Ctx, deploy_name: str, wave: str | None, as_json: bool) -> None:
    """Approve the next wave of DEPLOY that waits for approval (`approval: true`), or --wave N.

    The wave still opens only when its other gates allow (minimum age, soak
    after the previous wave, a release marked good if it requires one); the
    approval is recorded (who, when) in the deploy's wave log.  Refused
    (exit 2, nothing written) for an unknown deploy, one without waves or not
    pending, and a wave that is open already or needs no approval.
    """
    deploy_name = full_deploy_name(deploy_name)
    store = ctx.store()
    by = who()
    for _ in range(PROMOTE_ATTEMPTS):
        entry = store.deploy(deploy_name)
        if entry is None:
            raise ConfigError(f"no deploy {deploy_name}")
        if not entry.waves:
            raise ConfigError(f"deploy {deploy_name} ({entry.service}@{entry.version}) has no waves; "
                              f"nothing to promote")
        if entry.state != PENDING:
            hint = "which is final" if entry.state in TERMINAL else f"resume it first (zkdeploy resume {deploy_name})"
            raise ConfigError(f"deploy {deploy_name} is {entry.state}: {hint}; nothing was changed")
        index = _wave_index(entry, wave)
        name = str(entry.waves[index]["name"])
        log = [dict(x) for x in entry.wave_log] + [{} for _ in range(len(entry.waves) - len(entry.wave_log))]
        log[index] = {**log[index], "approved_by": by, "approved_at": time.time()}
        try:
            store.update_deploy(transition(entry, PENDING, by=Actor.OPERATOR, wave_log=tuple(log),
                                           message=f"wave {name} approved by {by}"))
            break
        except ConflictError:
            continue  # an agent moved it meanwhile: read it again
    else:
        raise ConflictError(f"deploy {deploy_name} kept changing while promoting it; nothing was changed, "
                                f"try again")
    mark_of = rules.effective(store.marks(entry.service).values()).get(entry.version)
    note = ""
    if entry.waves[index].get("require_good") and (mark_of is None or mark_of.mark != rules.GOOD):
        note = (f"; it also takes only a release marked good, and {entry.service}@{entry.version} is "
                f"{mark_of.mark if mark_of else 'unmarked'} (zkdeploy mark {entry.service} {entry.version} good)")
    if as_json:
        emit_json({"deploy": deploy_name, "wave": index + 1, "name": name, "approved_by": by, "note": note})
    else:
        say(f"approved wave {index + 1} ({name}) of {deploy_name} ({entry.service}@{entry.version}); it opens "
            f"when its other gates allow{note}")
