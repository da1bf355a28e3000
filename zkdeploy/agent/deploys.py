"""What agents write on deploy entries: failures, completion, and stalls.

Any agent may do any of these; every write is conditional on the entry's
znode version, so concurrent agents never overwrite each other and the loser
of a race simply re-reads.  Every write of an entry is a move of its
lifecycle (zkdeploy.policy.lifecycle), made by ``Actor.AGENT``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from tenacity import RetryError, retry, retry_if_exception_type, stop_after_attempt, wait_random

from zkdeploy.coordination import Store
from zkdeploy.errors import AccessDeniedError, ConflictError, CoordinationError, DeployTransitionError
from zkdeploy.model import ABORTED, DONE, FAILED, HALTED, PENDING, ROLLED_BACK, DeployEntry, Mark, Pin
from zkdeploy.policy.discovery import answers
from zkdeploy.policy.lifecycle import Actor, can, transition
from zkdeploy.policy.marks import effective
from zkdeploy.policy.progress import explain, is_complete
from zkdeploy.policy.quorum import failure_budget
from zkdeploy.policy.waves import advance

log = logging.getLogger(__name__)

#: whether a pin record is one this agent accepts (its signature verifies against the trusted keys)
PinCheck = Callable[[Pin], bool]

#: attempts at a conditional write that keeps losing races before giving up until the next cycle
RETRIES = 10


def report_failure(store: Store, node: str, name: str, error: str, *, halt: bool = False) -> None:
    """Record ``node``'s failed restart on deploy ``name``; past its budget, halt it or roll it back.
    ``halt``: halt it whatever the budget (a scenario's failed check bails out the deploy).

    ``on_failure: rollback`` closes the deploy, aborts the open deploys of the
    same request (they depend on it) and queues a rollback deploy to the
    version it replaced, all in one transaction.  ``pause`` halts it until an
    operator resumes or aborts it.
    """
    try:
        _record_failure(store, node, name, error, halt)
    except RetryError:
        log.error("could not record the failure on deploy %s: it kept changing under %d attempts", name, RETRIES)
    except DeployTransitionError as exc:  # the entry holds what the table does not expect: say so, go on
        log.error("could not record %s's failure on deploy %s: %s", node, name, exc)


@retry(retry=retry_if_exception_type(ConflictError), stop=stop_after_attempt(RETRIES),
       wait=wait_random(0, 0.2))
def _record_failure(store: Store, node: str, name: str, error: str, halt: bool = False) -> None:
    """One conditional attempt; ConflictError when another agent changed the entry first."""
    entry = store.deploy(name)
    if entry is None or not can(entry, entry.state, by=Actor.AGENT):
        return  # gone, or closed: a failure no longer changes it
    if any(f.get("node") == node for f in entry.failures):
        return  # recorded already (by this node before a restart): the budget counts nodes, not events
    failures = (*entry.failures, {"node": node, "error": error, "at": time.time()})
    fleet = set(store.member_nodes(entry.service)) | set(store.current_nodes(entry.service))
    over_budget = len(failures) > failure_budget(entry.max_failures, len(fleet)) or halt  # a share of the members
    summary = (f"a scenario check failed on {node}" if halt
               else f"{len(failures)} node(s) failed (max_failures {entry.max_failures})")
    previous = entry.previous if entry.on_failure == "rollback" and entry.previous != entry.version else None
    if over_budget and not halt and previous:
        try:
            _roll_back(store, node, transition(
                entry, ROLLED_BACK, by=Actor.AGENT, failures=failures,
                message=f"{summary}; rolling back to {previous}; last: {node}: {error}"), previous)
            return
        except AccessDeniedError:  # ACL roles: agents may not queue deploys; the rollback is the operator's
            summary += (f"; on_failure rollback: an operator must queue it (zkdeploy rollback {entry.service}): "
                        "agents may not queue deploys under ACL roles")
    if over_budget:
        updated = transition(entry, HALTED, by=Actor.AGENT, failures=failures,
                             message=f"{summary}; last: {node}: {error}")
    else:
        updated = transition(entry, entry.state, by=Actor.AGENT, failures=failures, message=entry.message)
    store.update_deploy(updated)  # the halt first: a refused or failed mark must not keep the deploy going
    if over_budget and entry.on_failure == "mark_bad":  # the service's policy: a failed gate marks it bad
        _mark_bad(store, node, entry, summary)


def _mark_bad(store: Store, node: str, entry: DeployEntry, summary: str) -> None:
    """Append a bad mark of the entry's release unless its latest mark already says bad."""
    latest = effective(store.marks(entry.service).values()).get(entry.version)
    if latest is not None and latest.mark == "bad":
        return
    try:
        store.add_mark(Mark(service=entry.service, version=entry.version, mark="bad", by=f"zkdeploy on {node}",
                            at=time.time(), why=f"deploy {entry.name}: {summary}"))
        log.error("%s@%s marked bad (on_failure: mark_bad): %s", entry.service, entry.version, summary)
    except CoordinationError as exc:
        log.error("could not mark %s@%s bad: %s", entry.service, entry.version, exc)


def _roll_back(store: Store, node: str, failed: DeployEntry, previous: str) -> None:
    rollback = DeployEntry(service=failed.service, version=previous, group=failed.group,
                           requested_by=f"zkdeploy on {node}", created=time.time(),
                           max_failures=failed.max_failures, previous=failed.version, on_failure="pause",
                           progress_deadline=failed.progress_deadline, kind="rollback",
                           message=f"rollback of {failed.name}")
    dependants = [transition(d, ABORTED, by=Actor.AGENT, message=f"aborted: {failed.name} failed")
                  for d in store.deploys()
                  if d.group == failed.group and d.name > failed.name and can(d, ABORTED, by=Actor.AGENT)]
    name = store.replace_with_rollback(failed, rollback, dependants)
    log.error("deploy %s failed; queued rollback %s to %s", failed.name, name, previous)


def advance_waves(store: Store, head: DeployEntry, mark: Mark | None, trusted: PinCheck | None = None) -> str:
    """Move ``head``'s waves one step on when they may (zkdeploy.policy.waves.advance); returns what
    the next step waits for.  A conditional write: the loser of a race re-reads next cycle."""
    entry = store.deploy(head.name)
    if entry is None or entry.state != PENDING or not entry.waves:
        return ""
    release = store.release(entry.service, entry.version)
    labels = {n: dict(r.labels) for n, r in store.nodes().items()}
    failed = {f["node"] for f in entry.failures}
    moved, why = advance(entry, store.current(entry.service), labels, release.staged_at if release else 0.0,
                         mark.mark if mark else None, excused=failed | _pinned_elsewhere(store, entry, trusted))
    if moved is not None:
        try:
            store.update_deploy(transition(moved, PENDING, by=Actor.AGENT, message=why))
            log.info("deploy %s of %s@%s: %s", entry.name, entry.service, entry.version, why)
        except ConflictError:
            pass
    return why


def _pinned_elsewhere(store: Store, entry: DeployEntry, trusted: PinCheck | None) -> set[str]:
    """Nodes pinned to another release of the entry's service: a deploy does not wait for them.
    With ``trusted`` (an agent that verifies signed controls), only pins it accepts count: a forged
    pin that its node ignores must not let a deploy stop waiting for that node either."""
    return {p.node for p in store.pins() if p.service == entry.service and p.version != entry.version
            and p.active(time.time()) and (trusted is None or trusted(p))}


def maybe_complete(store: Store, head: DeployEntry, trusted: PinCheck | None = None) -> None:
    """Mark the head done when every present node of its service is online at its version.

    Nodes whose restart failed within the failure budget keep the previous
    release and are not waited for; the deploy's message names them.  An entry
    that cannot become done (only a pending one can) is left alone.
    """
    if not can(head, DONE, by=Actor.AGENT):
        return
    if head.waves and (head.wave < len(head.waves) - 1 or len(head.wave_log) < len(head.waves)
                       or not head.wave_log[-1].get("verified")):
        return  # with waves, done once the last wave is verified
    if store.slot_count(head.service) or store.queue_length(head.service):
        return  # restarts under way or queued: not done, and no need to read every entry to know it
    entries = store.current(head.service)
    failed = {f["node"] for f in head.failures}
    # a deploy of discovered nodes (--select) waits for those only: the others do not restart for it
    unselected = set(entries) - set(head.nodes) if head.nodes else set()
    if store.slot_count(head.service) or not is_complete(
            entries, head.version, excused=failed | _pinned_elsewhere(store, head, trusted) | unselected):
        return
    left = sorted(failed & set(entries))
    message = (f"done; {len(left)} node(s) failed within the failure budget and run the previous "
               f"release: {', '.join(left)}") if left else head.message
    if head.nodes:
        seen = answers(head.nodes, head.version, entries, failed)
        message = (f"done on {len(seen.answered)} of {len(head.nodes)} discovered node(s)"
                   + (f"; no response from: {', '.join(seen.no_response)}" if seen.no_response else "")
                   + (f"; unexpected: {', '.join(seen.unexpected)}" if seen.unexpected else "")
                   + (f"; {message}" if left else ""))
    try:
        store.update_deploy(transition(head, DONE, by=Actor.AGENT, message=message))
        log.info("deploy %s of %s@%s complete on %d node(s)", head.name, head.service, head.version, len(entries))
    except ConflictError:
        pass  # another agent completed it first (or it changed): the next cycle sees


def watch_progress(store: Store, head: DeployEntry, quorum: int | str | None) -> None:
    """Record on the deploy when no node made progress for its progress deadline, and why; clear it after.

    Only a pending deploy stalls (the stall bookkeeping is the table's pending → pending move,
    the only move to pending an agent makes); any other entry is left alone.
    """
    if not can(head, PENDING, by=Actor.AGENT):
        return
    entries = store.current(head.service)
    last = max([head.created] + [e.since for e in entries.values()])
    stalled = time.time() - last > head.progress_deadline
    if stalled == (head.stalled_since is not None):
        return
    message = ""
    if stalled:
        why = explain(head.evolve(stalled_since=None), entries, quorum, store.slots(head.service),
                      store.queue(head.service), members=set(store.member_nodes(head.service)) | set(entries))
        failing = sorted(n for n, e in entries.items() if e.state == FAILED)
        message = (f"stalled: no progress for {int(time.time() - last)}s: {why}"
                   + (f"; failing health checks: {', '.join(failing)}" if failing else ""))
    try:
        store.update_deploy(transition(head, PENDING, by=Actor.AGENT, stalled_since=last if stalled else None,
                                       message=message))
        if stalled:
            log.warning("deploy %s %s", head.name, message)
    except ConflictError:
        pass  # changed meanwhile: judged again at the next look


def seal_refusal(store: Store, entry: DeployEntry, known: dict[str, str]) -> str | None:
    """Why ``entry`` must not be acted on, or None: what it asks for is not what was queued.

    An entry's seal (``seals/<seal>``, made with it in one transaction) holds the digest of its
    spec: service, version, steps, waves, nodes and the rest that agents never change
    (``DeployEntry.spec_digest``).  Agents may write an entry's progress, and ZooKeeper cannot
    limit a write to some fields, so an agent credential could rewrite the rest (another version,
    commands for every host to run): the digest says so.  Under ACL roles an entry without a seal
    is refused too (without them, an entry queued before seals is acted on).  ``known`` caches the
    digests read (a seal never changes)."""
    if not entry.seal:
        if store.guarded:
            return "it has no seal: under ACL roles only an entry queued with its seal is acted on"
        return None
    digest = known.get(entry.seal)
    if digest is None:
        digest = store.seal_digest(entry.seal)
        if digest is None:
            return f"its seal {entry.seal} does not exist"
        known[entry.seal] = digest
    if digest != entry.spec_digest():
        return ("what it asks for (service, version, steps, waves, nodes...) is not what was queued: "
                "the entry was rewritten after it was queued")
    return None


def refuse(store: Store, entry: DeployEntry, reason: str) -> DeployEntry:
    """Halt a pending ``entry`` that must not be acted on, saying why; the entry as it now stands
    (halted here even when the write failed, so that nothing acts on it this cycle).  An entry not
    pending is not acted on anyway: it is left as it is, and not logged again every cycle."""
    if entry.state != PENDING:
        return entry
    log.error("deploy %s (%s@%s) refused: %s", entry.name, entry.service, entry.version, reason)
    try:
        halted = transition(entry, HALTED, by=Actor.AGENT, message=f"refused: {reason}")
    except DeployTransitionError:
        return entry
    try:
        return store.update_deploy(halted)
    except CoordinationError as exc:
        log.warning("deploy %s: could not record the refusal: %s", entry.name, exc)
        return halted

